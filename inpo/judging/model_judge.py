"""Where the two model judges (pairpm, reward) compute: a vLLM engine or a Hugging Face model.

vLLM (`oracle.engine=vllm`, the default where it can serve the judge) reads what a judge
needs without a full forward's outputs: the pair-PM judge asks for exactly the two choice
tokens' log-probs, the reward judge runs vLLM's pooling runner (classify, raw). Queries are
sent in token order, so a prompt's comparisons and both orders of a pair follow each other
and the prefix cache reuses what they share (the question, the first response).

The Hugging Face judge (`oracle.engine=hf`, the fallback and the baseline) reads the
model's output at the LAST position of each sequence, so batches are padded on the left:
the last position is then the last real token of every row, which lets the causal judge
compute logits for that position only (a 128K vocabulary times 2048 positions times a
batch would not fit in memory otherwise). Its batches are sorted by length (less padding).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from inpo.engines.vllm import VLLMEngine, device_settings
from inpo.judging.oracle import OracleError
from inpo.models import dtype_name, torch_dtype

SEQ_CLS = "ForSequenceClassification"
# vLLM's prefix cache reuses whole blocks: the CPU default (128 tokens) is longer than most
# questions; 32 is the smallest block vLLM-CPU's attention takes (16 is refused)
CPU_BLOCK = 32


def check_dir(model_dir: str) -> None:
    if model_dir.startswith(("/", ".")) and not Path(model_dir).is_dir():
        # Else transformers takes it for a malformed hub id and says so, confusingly.
        raise OracleError(f"oracle.model = {model_dir}: no such directory")


def load_tokenizer(model_dir: str) -> Any:
    from transformers import AutoTokenizer

    check_dir(model_dir)
    try:
        tok = AutoTokenizer.from_pretrained(model_dir)
    except (OSError, ValueError) as e:
        raise OracleError(f"oracle.model = {model_dir}: cannot load the judge: {e}") from e
    if tok.pad_token_id is None:
        # Only fills the left padding, which the attention mask hides: outputs are read by
        # position (the last one), never by looking for the last non-pad id.
        tok.pad_token = tok.eos_token
    return tok


def judge_config(model_dir: str) -> dict[str, Any]:
    check_dir(model_dir)
    path = Path(model_dir) / "config.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise OracleError(f"oracle.model = {model_dir}: cannot read {path.name}: {e}") from e


def judge_positions(model_dir: str) -> int | None:
    """The judge's context in tokens (max_position_embeddings), when its config says."""
    return judge_config(model_dir).get("max_position_embeddings")


def vllm_cannot_serve(model_dir: str, *, reward: bool) -> str | None:
    """Why this vLLM cannot serve the judge (one line), or None when it can."""
    from vllm import ModelRegistry

    archs = judge_config(model_dir).get("architectures") or []
    arch = archs[0] if archs else "(none in config.json)"
    supported = set(ModelRegistry.get_supported_archs())
    if not reward:
        return None if arch in supported else f"vLLM has no model for architecture {arch}"
    # vLLM builds a sequence classifier from its causal model of the same family.
    base = arch.removesuffix(SEQ_CLS) + "ForCausalLM"
    if arch.endswith(SEQ_CLS) and (arch in supported or base in supported):
        return None
    return f"vLLM has no pooling model for architecture {arch}"


def choose_engine(engine: str | None, model_dir: str, *, reward: bool) -> str:
    """oracle.engine resolved: None means vllm where it can serve the judge, else hf (said
    in one line); an explicit vllm that cannot serve it is an error naming why."""
    if engine == "hf":
        return "hf"
    why = vllm_cannot_serve(model_dir, reward=reward)
    if why is None:
        return "vllm"
    if engine == "vllm":
        raise OracleError(f"oracle.engine = vllm: {why} (oracle.model = {model_dir})")
    print(f"[judge] {why}: judging with Hugging Face (oracle.engine=hf)", flush=True)
    return "hf"


def start_vllm_judge(
    model_dir: str,
    device: str,
    max_len: int,
    *,
    reward: bool,
    shared_gpu: bool = False,
    prefix_caching: bool = True,
    sleep_mode: bool = False,
) -> Any:
    """A vLLM engine for a judge: bf16 on GPU, fp32 on CPU (as the Hugging Face judge),
    sized for inputs of at most ``max_len`` tokens."""

    dtype = dtype_name("auto", device)
    settings = device_settings(model_dir, device, dtype, max_len, shared_gpu, sleep_mode)
    try:
        return VLLMEngine(
            model_dir,
            **settings,
            seed=0,
            runner="pooling" if reward else "generate",
            prefix_caching=prefix_caching,
            sleep_mode=sleep_mode,
            block_size=CPU_BLOCK if device == "cpu" else None,
        )
    except (OSError, ValueError, RuntimeError) as e:
        raise OracleError(f"oracle.model = {model_dir}: vLLM cannot start the judge: {e}") from e


def load_hf_judge(model_dir: str, device: str, *, reward: bool) -> Any:
    """The judge as a Hugging Face model in eval mode on ``device``: bf16 on GPU, fp32 on
    CPU."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    check_dir(model_dir)
    cls = AutoModelForSequenceClassification if reward else AutoModelForCausalLM
    try:
        model = cls.from_pretrained(model_dir, dtype=torch_dtype("auto", device))
    except (OSError, ValueError) as e:
        raise OracleError(f"oracle.model = {model_dir}: cannot load the judge: {e}") from e
    if reward and not hasattr(model, "score"):
        raise OracleError(
            f"oracle.model = {model_dir}: {type(model).__name__} has no 'score' head; the "
            "reward backend reads a decoder's sequence classifier"
        )
    return model.to(device).eval()


def query_order(seqs: Sequence[list[int]], engine: str) -> list[int]:
    """The order queries are computed in (answers go back to their own places): by tokens
    for vLLM (shared prefixes next to each other), by length for Hugging Face batches."""
    key = (lambda i: seqs[i]) if engine == "vllm" else (lambda i: len(seqs[i]))
    return sorted(range(len(seqs)), key=key)


def chunks(n: int, size: int) -> Iterator[slice]:
    """Consecutive slices of at most ``size`` covering range(n)."""
    for lo in range(0, n, size):
        yield slice(lo, min(lo + size, n))


def forward_last(model, seqs: Sequence[list[int]], pad_id: int, **kwargs):
    """The model's output for a left-padded batch of token id lists (inference mode)."""
    import torch

    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, s in enumerate(seqs):
        ids[i, width - len(s) :] = torch.tensor(s)
        mask[i, width - len(s) :] = 1
    # Positions count real tokens only, so a padded row sees what it would see alone.
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.inference_mode():
        return model(
            input_ids=ids.to(model.device),
            attention_mask=mask.to(model.device),
            position_ids=positions.to(model.device),
            use_cache=False,  # one forward: a KV cache would only hold memory
            **kwargs,
        )


class ModelJudge:
    """What a model judge holds: its tokenizer, the input limit (oracle.max_length, at
    most the judge's context), a cut-input count and one engine; subclasses say how to
    read an answer off each engine (`_vllm`, `_hf`, one list of floats per query)."""

    reward: bool

    def __init__(
        self,
        model_dir: str,
        device: str,
        batch_size: int,
        max_length: int,
        *,
        engine: str | None = "hf",
        shared_gpu: bool = False,
        prefix_caching: bool = True,
        sleep_mode: bool = False,
    ):
        self.model_dir, self.device = model_dir, device
        self.batch_size = batch_size
        self.engine = choose_engine(engine, model_dir, reward=self.reward)
        self.tok = load_tokenizer(model_dir)
        answer = self.answer_tokens()
        positions = judge_positions(model_dir)
        self.max_length = min(max_length, positions - answer) if positions else max_length
        self.n_truncated = 0
        self.check()
        if self.engine == "vllm":
            self.vllm = start_vllm_judge(
                model_dir,
                device,
                self.max_length + answer,
                reward=self.reward,
                shared_gpu=shared_gpu,
                prefix_caching=prefix_caching,
                sleep_mode=sleep_mode,
            )
        else:
            self.model = load_hf_judge(model_dir, device, reward=self.reward)
            self.model.config.pad_token_id = self.tok.pad_token_id

    def answer_tokens(self) -> int:
        """Positions the judge's answer takes after its input (vLLM counts them in
        max_model_len): none for a reward, one verdict token for a pairwise judge."""
        return 0 if self.reward else 1

    def check(self) -> None:
        """Refuse a judge this format cannot use, before any engine starts."""

    def sleep(self) -> bool:
        """Free the GPU between judge stages of a colocated run: vLLM sleep level 1 (the
        weights wait in host memory: the judge is never re-synced, so they must come back
        as they were), the Hugging Face model moved to host memory. False on CPU."""
        if self.engine == "vllm":
            return self.vllm.sleep(1)
        if self.device != "cuda":
            return False
        import torch

        self.model.to("cpu")
        torch.cuda.empty_cache()
        return True

    def wake(self) -> bool:
        if self.engine == "vllm":
            return self.vllm.wake()
        if self.device != "cuda":
            return False
        self.model.to(self.device)
        return True

    def outputs(self, seqs: Sequence[list[int]]) -> list[list[float]]:
        """The judge's raw answer to every query, in the order given."""
        order = query_order(seqs, self.engine)
        ordered = [seqs[i] for i in order]
        if self.engine == "vllm":
            answers = self._vllm(ordered)
        else:
            answers = [
                a for s in chunks(len(ordered), self.batch_size) for a in self._hf(ordered[s])
            ]
        out: list[list[float]] = [[] for _ in seqs]
        for i, a in zip(order, answers, strict=True):
            out[i] = a
        return out

    def _vllm(self, seqs: list[list[int]]) -> list[list[float]]:
        raise NotImplementedError

    def _hf(self, seqs: list[list[int]]) -> list[list[float]]:
        raise NotImplementedError

    def truncated(self) -> int:
        return self.n_truncated
