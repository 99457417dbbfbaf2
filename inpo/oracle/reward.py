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
from inpo.oracle.base import Oracle, OracleError
from inpo.oracle.hf import chunks, forward_last, load_judge


class RewardModel(Oracle):
    def __init__(self, model_dir: str, device: str, batch_size: int, max_length: int):
        self.tok, self.model = load_judge(model_dir, device, reward=True)
        labels = self.model.config.num_labels
        if labels != 1:
            raise OracleError(
                f"oracle.model = {model_dir}: a reward model has one output, this model has "
                f"num_labels = {labels}"
            )
        if not hasattr(self.model, "score"):
            raise OracleError(
                f"oracle.model = {model_dir}: {type(self.model).__name__} has no 'score' "
                "head; the reward backend reads a decoder's sequence classifier"
            )
        self.model_dir = model_dir
        self.batch_size = batch_size
        self.max_length = max_length
        self.n_truncated = 0

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

    def rewards(self, prompts: Sequence[Prompt], responses: Sequence[str]) -> torch.Tensor:
        out = []
        for s in chunks(len(prompts), self.batch_size):
            seqs = [self.input_ids(p, r) for p, r in zip(prompts[s], responses[s], strict=True)]
            hidden = forward_last(self.model.base_model, seqs, self.tok.pad_token_id)
            with torch.inference_mode():
                out.append(self.model.score(hidden.last_hidden_state[:, -1])[:, 0].float())
        return torch.cat(out) if out else torch.zeros(0)

    def truncated(self) -> int:
        return self.n_truncated

    def scores(self, prompts: Sequence[Prompt], responses: Sequence[str]) -> list[float]:
        return self.rewards(prompts, responses).tolist()

    def prob(self, prompts: Sequence[Prompt], a: Sequence[str], b: Sequence[str]) -> list[float]:
        n = len(prompts)
        r = self.rewards([*prompts, *prompts], [*a, *b])
        return torch.sigmoid(r[:n] - r[n:]).tolist()
