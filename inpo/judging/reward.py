"""Bradley-Terry reward model: a sequence classifier with one label scores each response.

The input is what the policy saw plus the response: for chat prompts the judge's chat
template over the messages and an assistant turn; for string prompts the plain text
prompt + response (with the tokenizer's special tokens, as `inpo.data` tokenizes string
prompts). P(a > b) = sigmoid(r(a) - r(b)). The reward is the classifier head at the last
real token of each input, found by position in a left-padded batch: the classifier's own
pooling takes the last token whose id is not the pad id, one token early when the pad is
EOS (a tokenizer without a pad token) and EOS also closes the turn (Llama 3's <|eot_id|>
templates). Inputs longer than oracle.max_length keep their last tokens (the reward is
read at the end, and the response is at the end) and are counted.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from inpo.data import Prompt
from inpo.judging.model_judge import ModelJudge, forward_last
from inpo.judging.oracle import Oracle, OracleError


class RewardModel(ModelJudge, Oracle):
    reward = True

    def check(self) -> None:
        from transformers import AutoConfig

        labels = AutoConfig.from_pretrained(self.model_dir).num_labels
        if labels != 1:
            raise OracleError(
                f"oracle.model = {self.model_dir}: a reward model has one output, this model "
                f"has num_labels = {labels}"
            )

    def input_ids(self, prompt: Prompt, response: str) -> list[int]:
        if isinstance(prompt, str):
            ids = self.tok(prompt + response, add_special_tokens=True).input_ids
        else:
            if not self.tok.chat_template:
                raise OracleError(
                    f"oracle.model = {self.model_dir}: the prompts are chat messages but the "
                    "reward model's tokenizer has no chat template"
                )
            messages = [*prompt, {"role": "assistant", "content": response}]
            text = self.tok.apply_chat_template(messages, tokenize=False)
            ids = self.tok(text, add_special_tokens=False).input_ids
        self.n_truncated += len(ids) > self.max_length
        return ids[-self.max_length :]

    def _vllm(self, seqs: list[list[int]]) -> list[list[float]]:
        return self.vllm.classify(seqs)

    def _hf(self, seqs: list[list[int]]) -> list[list[float]]:
        hidden = forward_last(self.model.base_model, seqs, self.tok.pad_token_id)
        with torch.inference_mode():
            return self.model.score(hidden.last_hidden_state[:, -1]).float().tolist()

    def rewards(self, prompts: Sequence[Prompt], responses: Sequence[str]) -> torch.Tensor:
        seqs = [self.input_ids(p, r) for p, r in zip(prompts, responses, strict=True)]
        return torch.tensor([r[0] for r in self.outputs(seqs)], dtype=torch.float32)

    def scores(self, prompts: Sequence[Prompt], responses: Sequence[str]) -> list[float]:
        return self.rewards(prompts, responses).tolist()

    def prob(self, prompts: Sequence[Prompt], a: Sequence[str], b: Sequence[str]) -> list[float]:
        n = len(prompts)
        r = self.rewards([*prompts, *prompts], [*a, *b])
        return torch.sigmoid(r[:n] - r[n:]).tolist()
