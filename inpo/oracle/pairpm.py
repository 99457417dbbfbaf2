"""Pairwise preference model in the RLHFlow pair-pm format (pair-preference-model-LLaMA3-8B).

The judge is a causal LM trained on one user turn
    "[CONTEXT] {context} [RESPONSE A] {a} [RESPONSE B] {b} \\n"
answered by the single token "A" or "B". As in the model card's usage:
- the context is the conversation rendered turn by turn as "\\n\\n<turn> {role}\\n {content}"
  (a string prompt is one user turn), framed by "\\n" before and "\\n\\n\\n" after;
- the user turn goes through the judge's own chat template with the generation prompt,
  the template's BOS text is dropped and the rest is tokenized without special tokens;
- P(A > B) = softmax over the next-token logits of "A" and "B" at the last position.

Inputs longer than oracle.max_length tokens lose the oldest part of the context first (the
responses are what is judged); only when the context is gone are both responses cut at the
end, by the same number of tokens.
"""

from __future__ import annotations

from collections.abc import Sequence

from inpo.data import Prompt
from inpo.oracle.base import Oracle, OracleError
from inpo.oracle.hf import chunks, forward_last, load_judge

PAIRPM_TEMPLATE = "[CONTEXT] {context} [RESPONSE A] {a} [RESPONSE B] {b} \n"


def render_context(prompt: Prompt) -> str:
    """The conversation as pair-pm models saw it in training."""
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
    turns = "".join(f"\n\n<turn> {m['role']}\n {m['content']}" for m in messages)
    return f"\n{turns}\n\n\n"


def single_token_id(tok, text: str, model_dir: str) -> int:
    ids = tok.encode(text, add_special_tokens=False)
    if len(ids) != 1:
        raise OracleError(
            f"oracle.model = {model_dir}: the judge tokenizer encodes {text!r} as {len(ids)} "
            f"tokens {ids}; the pairpm format needs 'A' and 'B' to be single tokens"
        )
    return ids[0]


class PairPM(Oracle):
    position_biased = True

    def __init__(self, model_dir: str, device: str, batch_size: int, max_length: int):
        self.tok, self.model = load_judge(model_dir, device, reward=False)
        if not self.tok.chat_template:
            raise OracleError(
                f"oracle.model = {model_dir}: the judge's tokenizer has no chat template; "
                "the pairpm format asks the question as a user turn of it"
            )
        self.model_dir = model_dir
        self.batch_size = batch_size
        self.max_length = max_length
        self.choice_ids = [single_token_id(self.tok, c, model_dir) for c in ("A", "B")]

    def judge_ids(self, context: str, a: str, b: str) -> list[int]:
        """Token ids of the judge input, untruncated."""
        turn = PAIRPM_TEMPLATE.format(context=context, a=a, b=b)
        text = self.tok.apply_chat_template(
            [{"role": "user", "content": turn}], tokenize=False, add_generation_prompt=True
        )
        if self.tok.bos_token:
            text = text.replace(self.tok.bos_token, "")
        return self.tok(text, add_special_tokens=False).input_ids

    def fitted_ids(self, prompt: Prompt, a: str, b: str) -> list[int]:
        """Judge input ids within oracle.max_length: context cut first, then responses."""
        context = render_context(prompt)
        ids = self.judge_ids(context, a, b)
        while len(ids) > self.max_length:
            excess = len(ids) - self.max_length
            if context:
                context = self._drop(context, excess, from_start=True)
            elif a or b:
                half = -(-excess // 2)
                a, b = self._drop(a, half, from_start=False), self._drop(b, half, from_start=False)
            else:
                raise OracleError(
                    f"oracle.max_length = {self.max_length}: shorter than the judge template "
                    f"alone ({len(ids)} tokens with empty context and responses)"
                )
            shorter = self.judge_ids(context, a, b)
            if len(shorter) >= len(ids):  # a tokenizer whose decode/encode does not shrink
                raise OracleError(
                    f"cannot truncate the judge input to oracle.max_length = {self.max_length} "
                    f"tokens with the tokenizer of oracle.model = {self.model_dir}"
                )
            ids = shorter
        return ids

    def _drop(self, text: str, n: int, *, from_start: bool) -> str:
        ids = self.tok(text, add_special_tokens=False).input_ids
        kept = ids[n:] if from_start else ids[: max(len(ids) - n, 0)]
        return self.tok.decode(kept)

    def prob(self, prompts: Sequence[Prompt], a: Sequence[str], b: Sequence[str]) -> list[float]:
        out: list[float] = []
        for s in chunks(len(prompts), self.batch_size):
            seqs = [self.fitted_ids(*t) for t in zip(prompts[s], a[s], b[s], strict=True)]
            output = forward_last(self.model, seqs, self.tok.pad_token_id, logits_to_keep=1)
            pair = output.logits[:, -1, self.choice_ids].float()
            out += pair.softmax(-1)[:, 0].tolist()
        return out
