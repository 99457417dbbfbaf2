"""The learner path on one GPU: measured peak memory and tokens/s beside `inpo plan`'s estimate.

For the lent GPU hosts, which have torch, transformers and peft but no vLLM or Ray:
`launch/gpu_check.sh` installs the carried DeepSpeed wheels and runs this. One
`inpo.learning.rank.LearnerRank` in this process (1 rank, as bench/learner.py drives its
ranks, without Ray) trains a randomly initialised Llama built from a config (default: the
Llama-3.2-1B shape, 1.24B parameters) on synthetic pairs, in bf16, for each of ZeRO-2 and
ZeRO-3, full fine-tuning and LoRA. Printed per run: training tokens/s over the timed
steps, the peak of torch.cuda.max_memory_allocated over engine build and steps, and the
learn-stage estimate of `inpo.plan.memory` for the same config, without its CUDA-context
allowance (which max_memory_allocated does not see).

  python bench/gpu_learner.py                 on a GPU (a few minutes on an H100)
  python bench/gpu_learner.py --cpu --tiny    the same code path on CPU, fp32, a tiny
                                              shape; peak resident memory instead
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

sys.path.insert(0, str(Path(__file__).resolve().parent))
from learner import synthetic_pairs, uniform_cache  # noqa: E402  (bench/learner.py)

from inpo.config import load_config  # noqa: E402
from inpo.learning.rank import LearnerRank  # noqa: E402
from inpo.plan.memory import GiB, Shape, estimate  # noqa: E402

#: (hidden, layers, intermediate, heads, kv heads, vocab, tied): Llama-3.2-1B's published
#: shape, and a tiny one for the CPU run.
SHAPES = {
    "1b": (2048, 16, 8192, 32, 8, 128256, True),
    "tiny": (128, 2, 256, 2, 1, 512, False),
}
RUNS = [(2, 0), (3, 0), (2, 16), (3, 16)]  # (ZeRO stage, LoRA rank)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cpu", action="store_true", help="run on CPU in float32")
    p.add_argument("--tiny", action="store_true", help="a tiny shape instead of Llama-3.2-1B")
    p.add_argument("--seq-len", type=int, help="longest prompt + response (1024; tiny: 96)")
    p.add_argument("--global-batch", type=int, default=8, help="pairs per optimizer step")
    p.add_argument("--micro-batch", type=int, default=2, help="pairs per forward")
    p.add_argument("--steps", type=int, default=4, help="timed optimizer steps")
    p.add_argument("--warmup", type=int, default=1, help="untimed optimizer steps first")
    p.add_argument("--gradient-checkpointing", action="store_true")
    return p.parse_args()


def llama_config(shape: tuple, layers: int | None = None, **extra) -> LlamaConfig:
    """A Llama config of ``shape`` (hidden, layers, intermediate, heads, kv heads, vocab,
    tied), with ``layers`` of them when given (bench/sync.py builds one too)."""
    hidden, default_layers, inter, heads, kv, vocab, tied = shape
    return LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=inter,
        num_hidden_layers=layers or default_layers,
        num_attention_heads=heads,
        num_key_value_heads=kv,
        head_dim=hidden // heads,
        tie_word_embeddings=tied,
        max_position_embeddings=4096,
        **extra,
    )


def build_model(out: Path, shape: str, dtype: torch.dtype, device: str) -> LlamaConfig:
    config = llama_config(SHAPES[shape])
    torch.manual_seed(0)
    with torch.device(device):  # initialising 1B parameters on the GPU takes a second
        model = LlamaForCausalLM(config).to(dtype)
    model.save_pretrained(out)
    del model
    return config


def run_config(args: argparse.Namespace, seq: int, zero: int, lora: int):
    """The config a run reads; prompt + response lengths make the estimate's sequence seq."""
    return load_config(
        None,
        [
            "learner.num_ranks=1",
            f"learner.global_batch_size={args.global_batch}",
            f"learner.micro_batch_size={args.micro_batch}",
            f"learner.max_length={seq}",
            f"learner.gradient_checkpointing={args.gradient_checkpointing}",
            "learner.heldout_fraction=0",
            f"data.max_prompt_tokens={seq // 3}",
            f"generation.max_new_tokens={seq - seq // 3}",
            f"deepspeed.zero_stage={zero}",
            f"model.lora.r={lora}",
            f"model.dtype={'float32' if args.cpu else 'bfloat16'}",
        ],
    )


def estimated_learn_bytes(cfg, shape: Shape, gpu_bytes: float) -> float:
    """inpo.plan.memory's learn-stage figure for learner rank 0, less its CUDA-context allowance."""
    est = estimate(cfg, [1], gpu_bytes, shapes={"policy": shape})
    rank = next(a for row in est.rows for a in row.actors if a.role == "learner")
    return sum(b for name, b in rank.parts("learn") if name != "CUDA context")


def main(args: argparse.Namespace) -> None:
    device = "cpu" if args.cpu else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: pass --cpu (and --tiny) to check the code path")
    shape_name = "tiny" if args.tiny else "1b"
    seq = args.seq_len or (96 if args.tiny else 1024)
    dtype = torch.float32 if args.cpu else torch.bfloat16
    gpu_bytes = torch.cuda.get_device_properties(0).total_memory if device == "cuda" else 80 * GiB
    if device == "cuda":
        print(f"GPU: {torch.cuda.get_device_name(0)}, {gpu_bytes / GiB:.1f} GiB")
    total = args.warmup + args.steps
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(tmp) / "model"
        config = build_model(model_dir, shape_name, dtype, device)
        shape = Shape.from_config(config.to_dict(), name=f"Llama {shape_name}")
        vocab = config.vocab_size
        pairs = synthetic_pairs(total * args.global_batch, vocab, seq, seed=0)
        cache = uniform_cache(pairs, vocab)
        print(
            f"model: {shape.name}, {shape.params / 1e6:,.1f}M parameters, {dtype}; pairs of up "
            f"to {seq} tokens, global batch {args.global_batch}, micro batch {args.micro_batch}, "
            f"{args.warmup} warmup + {args.steps} timed steps, gradient checkpointing "
            f"{args.gradient_checkpointing}"
        )
        peak_name = "peak alloc GiB" if device == "cuda" else "peak RSS GiB"
        print(f"\n{'run':<18}{'tokens/s':>10}{peak_name:>16}{'estimate GiB':>14}{'est/meas':>10}")
        for i, (zero, lora) in enumerate(RUNS):
            cfg = run_config(args, seq, zero, lora)
            rank = LearnerRank(0, 1, cfg, device)
            if i == 0:  # one process group for every run
                rank.init_distributed(*rank.address())
            rank.set_data(pairs, pad_id=0)
            rank.set_cache(cache)
            if device == "cuda":
                torch.cuda.reset_peak_memory_stats()
            rank.build_engine(str(model_dir), total)
            secs = tokens = 0.0
            for step in range(total):
                t0 = time.perf_counter()
                m = rank.train_step(step)
                if device == "cuda":
                    torch.cuda.synchronize()
                if step >= args.warmup:
                    secs += time.perf_counter() - t0
                    tokens += m["tokens"]
            if device == "cuda":
                peak = torch.cuda.max_memory_allocated()
            else:  # the process's high-water mark: every run so far, the model build included
                peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
            est = estimated_learn_bytes(cfg, shape, gpu_bytes)
            name = f"ZeRO-{zero} " + (f"LoRA r={lora}" if lora else "full")
            print(
                f"{name:<18}{tokens / secs:>10.0f}{peak / GiB:>16.2f}{est / GiB:>14.2f}"
                f"{est / peak:>10.2f}"
            )
            rank.release()
    if device == "cpu":
        print("(CPU: resident memory of the whole process, not comparable to the estimate)")


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main(parse_args())
