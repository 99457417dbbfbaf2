"""Any chat model as a pairwise judge, in process (`oracle.backend=llm`).

The judge prompt (oracle.prompt_template, verdict.py) is filled with the question and both
responses and sent as one user turn through the JUDGE's chat template, generation prompt
added; its answer is read off the next-token log-probabilities of oracle.choices, which must
each be one token right after that prefix (checked at start). P(A > B) comes from the
choices' probabilities (verdict.prob_from_choices); their total, the verdict mass, is
counted (`verdicts`). Engines, batching and truncation (the question whole, both responses
cut from their ends) are the pair-PM judge's.

With oracle.reasoning_tokens = N > 0 the judge instead samples up to N tokens
oracle.verdict_samples times per query on vLLM (each query seeded from run.seed and its
content, verdict.verdict_seed), and P(A > B) is read from the texts (verdict.Verdicts.
read_samples); its engine is sized for the input plus N.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from inpo.data import Prompt
from inpo.judging.model_judge import query_order
from inpo.judging.oracle import OracleError
from inpo.judging.pairpm import PairPM
from inpo.judging.verdict import (
    ReadsVerdicts,
    Verdicting,
    question_text,
    render_prompt,
    verdict_records,
    verdict_seed,
)


def choice_token_id(tok, prefix: str, choice: str, where: str) -> int:
    """The one token ``choice`` adds after ``prefix`` (the judge's rendered input)."""
    before = tok(prefix, add_special_tokens=False).input_ids
    after = tok(prefix + choice, add_special_tokens=False).input_ids
    pairs = enumerate(zip(before, after, strict=False))
    same = next((i for i, (x, y) in pairs if x != y), min(len(before), len(after)))
    if same == len(before) and len(after) == same + 1:
        return after[-1]
    tail = after[same:]
    raise OracleError(
        f"{where}: oracle.choices {choice!r} is not one token after the judge prompt; the "
        f"judge tokenizer ends the prompt with it as {tok.convert_ids_to_tokens(tail)} "
        f"(ids {tail})"
    )


class LLMJudge(ReadsVerdicts, PairPM):
    """A chat model judging in a prompt template's format (PairPM's engines, truncation and
    position bias; its own input and verdict)."""

    def __init__(
        self,
        model_dir: str,
        device: str,
        batch_size: int,
        max_length: int,
        *,
        verdicting: Verdicting = Verdicting(),
        **engine_options: Any,
    ):
        self.read_verdicts(verdicting, f"oracle.model = {model_dir}")
        super().__init__(model_dir, device, batch_size, max_length, **engine_options)

    def answer_tokens(self) -> int:
        return self.verdicting.reasoning_tokens or 1

    def check(self) -> None:
        where = f"oracle.model = {self.model_dir}"
        if not self.tok.chat_template:
            raise OracleError(
                f"{where}: the judge's tokenizer has no chat template; the llm judge asks its "
                "question as a user turn of it"
            )
        if self.verdicting.reasoning_tokens:
            if self.engine != "vllm":
                # seeded sampling lives in the vLLM engine; a Hugging Face sampler would
                # give other verdicts for the same seeds
                raise OracleError(
                    f"{where}: oracle.reasoning_tokens = {self.verdicting.reasoning_tokens} "
                    "samples verdicts on vLLM only (oracle.engine = hf, or vLLM cannot serve it)"
                )
            return
        # The prefix ends with the generation prompt whatever the question and answers are.
        prefix = self.judge_text("question", "answer", "answer")
        self.choice_ids = [
            choice_token_id(self.tok, prefix, c, where) for c in self.verdicting.choices
        ]
        if len(set(self.choice_ids)) < len(self.choice_ids):
            raise OracleError(
                f"{where}: oracle.choices {list(self.verdicting.choices)} are not distinct tokens"
            )

    def question(self, prompt: Prompt) -> str:
        return question_text(prompt)

    def judge_text(self, question: str, a: str, b: str) -> str:
        turn = render_prompt(self.verdicting.template, question, a, b)
        return self.tok.apply_chat_template(
            [{"role": "user", "content": turn}], tokenize=False, add_generation_prompt=True
        )

    def judge_ids(self, question: str, a: str, b: str) -> list[int]:
        # The template writes the BOS text where the judge wants it; nothing is added twice.
        return self.tok(self.judge_text(question, a, b), add_special_tokens=False).input_ids

    def prob(self, prompts: Sequence[Prompt], a: Sequence[str], b: Sequence[str]) -> list[float]:
        seqs = [self.fitted_ids(*t) for t in zip(prompts, a, b, strict=True)]
        if self.verdicting.reasoning_tokens:
            return self.sampled(prompts, a, b, seqs)
        return [self.tally.read([math.exp(x) for x in lps]) for lps in self.outputs(seqs)]

    def sampled(
        self,
        prompts: Sequence[Prompt],
        a: Sequence[str],
        b: Sequence[str],
        seqs: list[list[int]],
    ) -> list[float]:
        """Reasoning mode: verdict_samples seeded samples per query, read as verdicts."""
        seeds = [verdict_seed(self.verdicting.seed, *t) for t in zip(prompts, a, b, strict=True)]
        order = query_order(seqs, self.engine)  # shared prefixes side by side
        out = self.vllm.generate(
            [seqs[i] for i in order],
            n=self.verdicting.samples,
            temperature=self.verdicting.temperature,
            top_p=1.0,
            max_tokens=self.verdicting.reasoning_tokens,
            seeds=[seeds[i] for i in order],
        )
        samples: list[list] = [[] for _ in seqs]
        for i, s in zip(order, out, strict=True):
            samples[i] = s
        about = verdict_records(prompts, a, b, seeds) if self.tally.kept is not None else None
        return self.tally.read_samples(
            [[s.text for s in q] for q in samples],
            [[s.finish_reason for s in q] for q in samples],
            about,
        )
