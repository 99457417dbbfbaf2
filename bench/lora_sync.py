"""LoRA policy sync: the merged weights reloaded in place vs a vLLM LoRA adapter swap.

A LoRA run has two ways to hand each iteration's policy to the generators:

  merged   (what inpo does) the learner writes W + (alpha/r) B A as a full Hugging Face
           directory and every vLLM engine reloads it in place (hashed, as
           VLLMEngine.reload does), then generates with plain weights.
  adapter  the learner writes only the adapter (peft format) and the engine, started
           with enable_lora, serves the base model with that adapter; each iteration a
           new LoRARequest (new id) replaces the last one, and every request carries it.

For each side, in its own process (one vLLM engine per process, like a generator
actor), --cycles iterations of: write the policy (timed, in this process), hand it to
the engine (timed: reload, or the first request that loads the adapter), generate the
recipe's rollout (--prompts x K=--k x --new-tokens, seeded, timed), and score a probe
response. The probe's log-prob must equal the one plain transformers gives the merged
weights (the verified-sync check; the adapter path has no tensor hash, so the probe is
its only check). Engine start-up is not timed. Prints per-iteration seconds side by
side and the ratio adapter / merged.

    .venv/bin/python bench/lora_sync.py [--model builtin:smollm2] [--rank 16] [--cycles 2]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch


def write_policies(base: Path, root: Path, rank: int, cycles: int) -> dict:
    """Per cycle, a random (seeded, non-zero) adapter on the base model, saved twice: as
    the adapter and as merged full weights. Returns the seconds each write took and the
    probe log-prob under plain transformers of each merged model."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from inpo.algo.loss import sequence_logps
    from inpo.data import probe_sequence

    tok = AutoTokenizer.from_pretrained(base)
    ids, prompt_len = probe_sequence(tok)  # the probe every sync is checked with
    x = torch.tensor([ids])
    mask = (torch.arange(len(ids) - 1) >= prompt_len - 1).long()[None]
    out: dict = {"adapter_s": [], "merged_s": [], "probe": [], "ids": ids, "prompt_len": prompt_len}
    for c in range(cycles):
        torch.manual_seed(c)
        model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
        cfg = LoraConfig(r=rank, lora_alpha=2 * rank, target_modules="all-linear", lora_dropout=0.0)
        model = get_peft_model(model, cfg)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.normal_(0, 0.02)  # peft starts B at 0: the adapter would do nothing
        t0 = time.perf_counter()
        model.save_pretrained(root / f"adapter{c}")
        out["adapter_s"].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        merged = model.merge_and_unload()
        merged.save_pretrained(root / f"merged{c}")
        tok.save_pretrained(root / f"merged{c}")
        out["merged_s"].append(time.perf_counter() - t0)
        with torch.no_grad():
            logits = merged(input_ids=x).logits
        out["probe"].append(sequence_logps(logits[:, :-1], x[:, 1:], mask).item())
    return out


def run_side(side: str, base: str, root: Path, args: argparse.Namespace) -> dict:
    """One engine, --cycles syncs + rollouts; runs in its own process."""
    from transformers import AutoTokenizer

    from inpo.config import load_config
    from inpo.data import prompt_token_ids
    from inpo.engines.vllm import VLLMEngine, cpu_kv_cache_bytes
    from inpo.generation.stage import request_seed

    meta = json.loads((root / "policies.json").read_text())
    cfg = load_config(None, [])
    tok = AutoTokenizer.from_pretrained(base)
    prompts = [
        prompt_token_ids(tok, [{"role": "user", "content": f"Describe the number {i} briefly."}])
        for i in range(args.prompts)
    ]
    max_len = max(max(map(len, prompts)) + args.new_tokens, len(meta["ids"]) + 1)
    kwargs = dict(
        dtype="float32",
        seed=cfg.run.seed,
        gpu_memory_utilization=0.9,
        max_model_len=max_len,
        kv_cache_bytes=cpu_kv_cache_bytes(base, "float32", max_len),
        enforce_eager=True,
        chunked_prefill=False,
    )
    if side == "merged":
        engine = VLLMEngine(base, **kwargs)
        llm = engine.llm
    else:
        # VLLMEngine's own arguments plus LoRA; the engine is otherwise the same.
        from vllm import LLM

        llm = LLM(
            model=base,
            dtype="float32",
            seed=cfg.run.seed,
            max_model_len=max_len,
            kv_cache_memory_bytes=kwargs["kv_cache_bytes"],
            enforce_eager=True,
            enable_prefix_caching=True,
            enable_chunked_prefill=False,
            max_num_batched_tokens=16384,
            enable_lora=True,
            max_lora_rank=args.rank,
            max_loras=1,
        )
    sampling = dict(n=args.k, temperature=1.0, top_p=1.0, max_tokens=args.new_tokens)
    lora = None
    generate(llm, prompts[:2], [0, 1], sampling, lora)  # warm-up
    result: dict = {"sync_s": [], "generate_s": [], "tokens": [], "probe": []}
    for c in range(args.cycles):
        t0 = time.perf_counter()
        if side == "merged":
            engine.reload(str(root / f"merged{c}"))
        else:
            from vllm.lora.request import LoRARequest

            lora = LoRARequest(f"policy{c}", c + 1, str(root / f"adapter{c}"))
            generate(llm, prompts[:1], [0], {**sampling, "n": 1, "max_tokens": 1}, lora)
        result["sync_s"].append(time.perf_counter() - t0)
        seeds = [request_seed(cfg.run.seed, f"bench{c}", i) for i in range(len(prompts))]
        t0 = time.perf_counter()
        outs = generate(llm, prompts, seeds, sampling, lora)
        result["generate_s"].append(time.perf_counter() - t0)
        result["tokens"].append(sum(len(x.token_ids) for o in outs for x in o.outputs))
        result["probe"].append(score(llm, meta["ids"], meta["prompt_len"], lora))
    return result


def generate(llm, prompts: list[list[int]], seeds: list[int], sampling: dict, lora) -> list:
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    params = [SamplingParams(seed=s, **sampling) for s in seeds]
    batch = [TokensPrompt(prompt_token_ids=p) for p in prompts]
    return llm.generate(batch, params, use_tqdm=False, lora_request=lora)


def score(llm, ids: list[int], prompt_len: int, lora) -> float:
    """VLLMEngine.score, with the side's LoRA request."""
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    params = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0)
    batch = [TokensPrompt(prompt_token_ids=ids)]
    plp = llm.generate(batch, params, use_tqdm=False, lora_request=lora)[0].prompt_logprobs
    return sum(plp[i][ids[i]].logprob for i in range(prompt_len, len(ids)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="builtin:smollm2", help="builtin:NAME or a directory")
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--cycles", type=int, default=2)
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--side", choices=["merged", "adapter"], help=argparse.SUPPRESS)
    ap.add_argument("--root", help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.side:  # a child: one engine
        root = Path(args.root)
        base = (root / "base").read_text()
        print("RESULT " + json.dumps(run_side(args.side, base, root, args)), flush=True)
        return

    from inpo.models import resolve_model

    root = Path(tempfile.mkdtemp(prefix="inpo-bench-lora-sync-"))
    base = str(resolve_model(args.model, "model.policy", root))
    (root / "base").write_text(base)
    meta = write_policies(Path(base), root, args.rank, args.cycles)
    (root / "policies.json").write_text(json.dumps(meta))
    results = {}
    for side in ("merged", "adapter"):
        child = [sys.executable, __file__, "--side", side, "--root", str(root)]
        child += [f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items() if v is not None]
        proc = subprocess.run(child, capture_output=True, text=True, env=os.environ)
        line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
        if proc.returncode or not line:
            sys.exit(f"{side} side failed:\n{proc.stderr[-3000:]}")
        results[side] = json.loads(line[0][len("RESULT ") :])

    m, a = results["merged"], results["adapter"]
    print(
        f"{os.cpu_count()} CPU cores; {args.model}, LoRA rank {args.rank}, fp32; per iteration: "
        f"{args.prompts} prompts x K={args.k} x {args.new_tokens} tokens"
    )
    head = ("iter", "", "write s", "load s", "generate s", "tokens", "total s", "probe - HF")
    print("  ".join(f"{h:>{w}}" for h, w in zip(head, (4, 8, 8, 7, 10, 6, 8, 10), strict=True)))
    totals = {"merged": 0.0, "adapter": 0.0}
    for c in range(args.cycles):
        for side, r, write in (("merged", m, meta["merged_s"]), ("adapter", a, meta["adapter_s"])):
            total = write[c] + r["sync_s"][c] + r["generate_s"][c]
            totals[side] += total
            err = r["probe"][c] - meta["probe"][c]
            print(
                f"{c + 1:>4}  {side:>8}  {write[c]:>8.2f}  {r['sync_s'][c]:>7.2f}  "
                f"{r['generate_s'][c]:>10.2f}  {r['tokens'][c]:>6}  {total:>8.2f}  {err:>10.1e}"
            )
    ratio = totals["adapter"] / totals["merged"]
    print(f"adapter / merged, an iteration's write + load + rollout: {ratio:.2f}x")


if __name__ == "__main__":
    main()
