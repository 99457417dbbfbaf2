"""Pairwise preference model in the RLHFlow pair-pm format (pair-preference-model-LLaMA3-8B).

The judge is a causal LM trained on one user turn
    "[CONTEXT] {context} [RESPONSE A] {a} [RESPONSE B] {b} \\n"
answered by the single token "A" or "B". As RLHFlow's own code (RLHF-Reward-Modeling
pair-pm/process_pair_data.py for training, its README and the INPO/Online-RLHF scripts for
judging) builds it:
- the context is the conversation through their context template, rendered by
  transformers' Jinja (trim_blocks, lstrip_blocks): "\\n" + "\\n<turn> {label}\\n {content}"
  per turn + "\\n", labels by position (user, assistant, user, ...); a string prompt is one
  user turn; system turns are left out (`render_context`);
- the user turn goes through the judge's own chat template WITHOUT the generation prompt
  (for Llama 3 the text ends with <|eot_id|>), the template's BOS text is dropped and the
  rest is tokenized without special tokens;
- P(A > B) = softmax over the next-token logits of "A" and "B" at the last position.

RLHFlow never truncates. Inputs longer than oracle.max_length keep the whole context (the
question) and cut both responses from their ends, the longer first; each cut input is
counted (`truncated`, reported by the judge stage).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from inpo.data import Prompt
from inpo.judging.model_judge import ModelJudge, forward_last
from inpo.judging.oracle import Oracle, OracleError

PAIRPM_TEMPLATE = "[CONTEXT] {context} [RESPONSE A] {a} [RESPONSE B] {b} \n"


def render_context(prompt: Prompt) -> str:
    """The conversation as RLHFlow renders it for its pair-pm judges: exactly their context
    template through transformers' Jinja. System turns are left out: RLHFlow trained on
    user/assistant alternations only (process_pair_data.py filters out everything else),
    and their position labels would call a system turn "user" and the question "assistant"."""
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
    turns = [m["content"] for m in messages if m["role"] != "system"]
    labels = ("user", "assistant")
    # Their template's "\n\n" before each turn and "\n\n\n" at the end lose one newline to
    # trim_blocks, and the end one more: Jinja drops a template's final newline.
    return "\n" + "".join(f"\n<turn> {labels[i % 2]}\n {c}" for i, c in enumerate(turns)) + "\n"


def response_budget(len_a: int, len_b: int, room: int) -> tuple[int, int]:
    """Tokens kept of two responses that share ``room`` tokens: both are cut from the end
    to one common length, so a response shorter than half the room stays whole."""
    room = max(room, 0)
    if len_a + len_b <= room:
        return len_a, len_b
    half = room // 2
    if min(len_a, len_b) <= half:
        return (len_a, room - len_a) if len_a <= len_b else (room - len_b, len_b)
    return half, half


def single_token_id(tok, text: str, model_dir: str) -> int:
    ids = tok.encode(text, add_special_tokens=False)
    if len(ids) != 1:
        raise OracleError(
            f"oracle.model = {model_dir}: the judge tokenizer encodes {text!r} as {len(ids)} "
            f"tokens {ids}; the pairpm format needs 'A' and 'B' to be single tokens"
        )
    return ids[0]


class PairPM(ModelJudge, Oracle):
    position_biased = True
    reward = False

    def check(self) -> None:
        if not self.tok.chat_template:
            raise OracleError(
                f"oracle.model = {self.model_dir}: the judge's tokenizer has no chat "
                "template; the pairpm format asks the question as a user turn of it"
            )
        self.choice_ids = [single_token_id(self.tok, c, self.model_dir) for c in ("A", "B")]

    def question(self, prompt: Prompt) -> str:
        """The prompt as this format shows it to the judge (never cut)."""
        return render_context(prompt)

    def judge_ids(self, context: str, a: str, b: str) -> list[int]:
        """Token ids of the judge input, untruncated."""
        turn = PAIRPM_TEMPLATE.format(context=context, a=a, b=b)
        # No generation prompt: RLHFlow reads the logits after the closed user turn.
        text = self.tok.apply_chat_template([{"role": "user", "content": turn}], tokenize=False)
        if self.tok.bos_token:
            text = text.replace(self.tok.bos_token, "")
        return self.tok(text, add_special_tokens=False).input_ids

    def fitted_ids(self, prompt: Prompt, a: str, b: str) -> list[int]:
        """Judge input ids within oracle.max_length: the context whole, both responses cut
        from their ends (the longer first) when needed; a cut input is counted."""
        context = self.question(prompt)
        ids = self.judge_ids(context, a, b)
        if len(ids) <= self.max_length:
            return ids
        frame = len(self.judge_ids(context, "", ""))
        if frame > self.max_length:
            raise OracleError(
                f"oracle.max_length = {self.max_length}: the judge template and the prompt "
                f"alone take {frame} tokens (the question is never cut); raise "
                "oracle.max_length to the judge's context or lower data.max_prompt_tokens"
            )
        self.n_truncated += 1
        a_ids, b_ids = (self.tok(r, add_special_tokens=False).input_ids for r in (a, b))
        room = self.max_length - frame
        while True:
            keep_a, keep_b = response_budget(len(a_ids), len(b_ids), room)
            cut_a, cut_b = self.tok.decode(a_ids[:keep_a]), self.tok.decode(b_ids[:keep_b])
            ids = self.judge_ids(context, cut_a, cut_b)
            if len(ids) <= self.max_length:  # at room 0 it is the frame, which fits
                return ids
            room -= len(ids) - self.max_length  # tokens merged differently at the seams

    def _vllm(self, seqs: list[list[int]]) -> list[list[float]]:
        return self.vllm.next_token_logprobs(seqs, self.choice_ids)

    def _hf(self, seqs: list[list[int]]) -> list[list[float]]:
        """Log-probs of the choice tokens, as vLLM's (a judge's verdict mass needs them)."""
        output = forward_last(self.model, seqs, self.tok.pad_token_id, logits_to_keep=1)
        logprobs = output.logits[:, -1].float().log_softmax(-1)
        return logprobs[:, self.choice_ids].tolist()

    def prob(self, prompts: Sequence[Prompt], a: Sequence[str], b: Sequence[str]) -> list[float]:
        seqs = [self.fitted_ids(*t) for t in zip(prompts, a, b, strict=True)]
        return [1.0 / (1.0 + math.exp(lb - la)) for la, lb in self.outputs(seqs)]
