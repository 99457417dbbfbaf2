"""One weight sync both ways, from a learner engine to a generator: files vs memory.

The learner (one DeepSpeed rank, a Ray actor, as in a run) holds pi_{t+1}; the generator
(a vLLM engine in a Ray actor) holds pi_t. Each way is timed from the learner's engine to
the generator's verified weights, and both end with the checks every sync runs: the
generator's tensor hash must equal the learner's and its probe log-prob the learner's.

  files   `save_policy` into run_dir-like storage (gather, hash, write, fsync: the save
          stage) + `GeneratorGroup.sync` (reload from the directory, hashed, probe);
  memory  `gather_policy` (gather, hash) + `GeneratorGroup.sync_from` (broadcast over the
          weight-update group, hashed as loaded, probe).

The policy must still be written once for resume; the memory side does not count that
write, which is printed on its own line ("resume write": the save stage still runs it
before the sync in this version, a background write would take it off the path). Nor
the weight-update group's set-up, once per pair of actor groups (its own line too).
Each of --repeat rounds syncs both ways, the generator put back on pi_t before each;
the best time of each part is kept (the machine is shared), and every round must give
the same hash and the same probe log-prob both ways.

The model is built offline (random weights) from the Llama-3.2-1B config: 1.24B
parameters, tied embeddings, float32 as on CPU, with inpo's tiny tokenizer. pi_{t+1} is
pi_t with every tensor perturbed by 1% of its scale: the learner's engine is built from
it without a training step, because Adam's state and the gradients of 1.24B parameters
(15 GB in float32) do not fit beside the engine and a generator in 24 GiB. ZeRO-0 for the
same reason (ZeRO-1/2 keep a second float32 copy for the optimizer).

    .venv/bin/python bench/sync.py               the ~1B model (about 5 minutes, 12 GB)
    .venv/bin/python bench/sync.py --layers 4    the same shape with 4 layers (0.5B)
    .venv/bin/python bench/sync.py --shape tiny  the same path in a minute
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch
from gpu_learner import SHAPES as LEARNER_SHAPES  # bench/gpu_learner.py
from gpu_learner import llama_config

#: (hidden, layers, intermediate, heads, kv heads, vocab, tied): Llama-3.2-1B's published
#: shape (bench/gpu_learner.py's) and a tiny one with tied embeddings
SHAPES = {"1b": LEARNER_SHAPES["1b"], "tiny": (128, 2, 256, 2, 1, 512, True)}


def build_models(root: Path, shape: str, layers: int | None) -> tuple[Path, Path, int]:
    """pi_t (random) and pi_{t+1} (perturbed), each a Hugging Face directory whose tied
    head is also written explicitly (what a reload into vLLM needs); returns both and the
    parameter count."""
    from safetensors.torch import save_file
    from transformers import LlamaForCausalLM

    from inpo.models.tiny import build_tokenizer

    tied = SHAPES[shape][-1]
    tok = build_tokenizer()
    config = llama_config(
        SHAPES[shape],
        layers,
        bos_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        torch_dtype="float32",
    )
    torch.manual_seed(0)
    state = LlamaForCausalLM(config).float().state_dict()
    params = sum(t.numel() for k, t in state.items() if k != "lm_head.weight" or not tied)
    dirs = root / "pi_t", root / "pi_t1"
    for i, out in enumerate(dirs):
        if i:  # pi_{t+1}: every tensor moved by 1% of its scale, in place
            gen = torch.Generator().manual_seed(1)
            for t in state.values():
                if t.is_floating_point() and t.numel() > 1:
                    t.add_(torch.randn(t.shape, generator=gen), alpha=0.01 * t.std().item())
        out.mkdir(parents=True)
        tensors = {k: v.contiguous() for k, v in state.items()}
        if tied:  # one tensor in memory, two in the file
            tensors["lm_head.weight"] = tensors["model.embed_tokens.weight"].clone()
        save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
        del tensors
        config.save_pretrained(out)
        tok.save_pretrained(out)
    return dirs[0], dirs[1], params


def one_round(root: Path, learner, gens, probe, expected: float, back: tuple[str, float]) -> dict:
    """One sync each way from the learner's engine, the generator put back on pi_t before
    each (untimed); seconds of each part, the hash and the generator's probe log-prob."""
    from inpo.durable import write_atomic

    out: dict = {}
    gens.sync(back[0], probe, back[1])
    # files: the save stage (gather, hash, write, fsync), then a reload from the directory
    t0 = time.perf_counter()
    write_atomic(
        root / "policy_files", lambda tmp: out.update(digest=learner.save_policy(str(tmp)))
    )
    out["save_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    files = gens.sync(str(root / "policy_files"), probe, expected, out["digest"])
    out["reload_s"] = time.perf_counter() - t0
    out["probe"], out["token_diff"] = gens.scores(*probe)[0], files["sync_max_token_diff"]
    shutil.rmtree(root / "policy_files")
    gens.sync(back[0], probe, back[1])
    # memory: gather (and hash), then the broadcast; the resume write timed on its own
    t0 = time.perf_counter()
    digest = learner.call("gather_policy")[0]
    out["gather_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    write_atomic(root / "policy_memory", lambda tmp: learner.call("write_policy", str(tmp)))
    out["write_s"] = time.perf_counter() - t0
    shutil.rmtree(root / "policy_memory")
    t0 = time.perf_counter()
    memory = gens.sync_from(learner, probe, expected, digest)
    out["broadcast_s"] = time.perf_counter() - t0
    assert digest == out["digest"], "the two ways hashed other tensors"
    assert gens.scores(*probe)[0] == out["probe"], "the two ways load other weights"
    assert (files["sync_via"], memory["sync_via"]) == ("files", "memory")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", choices=sorted(SHAPES), default="1b")
    ap.add_argument("--layers", type=int, help="fewer layers than the shape's (less memory)")
    ap.add_argument("--repeat", type=int, default=3, help="rounds; the best of each is kept")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = ap.parse_args()

    import ray

    from inpo.config import load_config
    from inpo.data import probe_sequence
    from inpo.engines.vllm import kv_bytes_per_token
    from inpo.generation.generator import GeneratorGroup, engine_settings
    from inpo.learning.stage import start_learner
    from inpo.plan.cluster import QUIET_ENV
    from inpo.plan.placement import plan_placement

    root = Path(tempfile.mkdtemp(prefix="inpo-bench-sync-"))
    learner = gens = None
    try:
        t0 = time.perf_counter()
        pi_t, pi_t1, params = build_models(root, args.shape, args.layers)
        size = (pi_t1 / "model.safetensors").stat().st_size
        print(
            f"model: the {args.shape} shape with {args.layers or SHAPES[args.shape][1]} layers, "
            f"{params / 1e9:.2f}B parameters, "
            f"float32, tied embeddings; {size / 1e9:.2f} GB of safetensors "
            f"(built in {time.perf_counter() - t0:.0f} s)",
            flush=True,
        )
        cfg = load_config(
            None,
            [
                "model.dtype=float32",
                "learner.num_ranks=1",
                "deepspeed.zero_stage=0",
                "generation.num_generators=1",
                "generation.sync_timeout_s=1800",
            ],
        )
        os.environ.update({k: v for k, v in QUIET_ENV.items() if k not in os.environ})
        ray.init(
            address="local",
            num_cpus=8,
            object_store_memory=256 << 20,
            include_dashboard=False,
            log_to_driver=False,
            runtime_env={"env_vars": dict(QUIET_ENV)},
        )
        from transformers import AutoTokenizer

        probe = probe_sequence(AutoTokenizer.from_pretrained(pi_t))
        slots = plan_placement([], {"generator": (1, 1)}).slots["generator"]
        settings = engine_settings(str(pi_t), cfg, "cpu", slots, len(probe[0]))
        # room for a few sequences only: the probe is all the generator runs here
        max_len = settings["max_model_len"]
        settings["kv_cache_bytes"] = 4 * max_len * kv_bytes_per_token(str(pi_t), "float32")
        gens = GeneratorGroup(str(pi_t), cfg, "cpu", slots, len(probe[0]), settings)
        before = gens.scores(*probe)[0]  # pi_t, for going back between the two ways
        learner = start_learner(cfg, "cpu")
        learner.build_engine(str(pi_t1), total_steps=1)
        expected = learner.probe_logp(*probe)
        print(f"probe log-prob: pi_t {before:.4f}, pi_t+1 {expected:.4f} (learner)", flush=True)
        t0 = time.perf_counter()
        gens.link(learner)  # once per pair of actor groups, not per sync
        link_s = time.perf_counter() - t0

        runs: list[dict] = []
        for r in range(args.repeat):
            runs.append(one_round(root, learner, gens, probe, expected, (str(pi_t), before)))
            row = runs[-1]
            print(
                f"round {r + 1}: files {row['save_s']:.2f} + {row['reload_s']:.2f} s, memory "
                f"{row['gather_s']:.2f} + {row['broadcast_s']:.2f} s, resume write "
                f"{row['write_s']:.2f} s",
                flush=True,
            )
        best = {k: min(row[k] for row in runs) for k in runs[0] if k.endswith("_s")}
        digests = {row["digest"] for row in runs}
        probes = {row["probe"] for row in runs}
        assert len(digests) == 1 and len(probes) == 1, (digests, probes)
        file_s = min(row["save_s"] + row["reload_s"] for row in runs)
        memory_s = min(row["gather_s"] + row["broadcast_s"] for row in runs)
        print(f"hash (learner = generator, both ways, every round): {digests.pop()[:16]}")
        print(
            f"probe log-prob on the generator: {probes.pop():.6f} both ways (learner "
            f"{expected:.6f}; mean per-token difference {runs[0]['token_diff']:.1e})"
        )
        print(f"best of {args.repeat} rounds:")
        print(
            f"files:  save {best['save_s']:6.2f} s + reload {best['reload_s']:6.2f} s "
            f"= {file_s:6.2f} s"
        )
        print(
            f"memory: gather {best['gather_s']:6.2f} s + broadcast {best['broadcast_s']:6.2f} "
            f"s = {memory_s:6.2f} s"
        )
        print(f"resume write (not counted in memory): {best['write_s']:.2f} s")
        print(f"weight-update group set-up (once per generator group, not counted): {link_s:.2f} s")
        times = {"files_s": file_s, "memory_s": memory_s, "resume_write_s": best["write_s"]}
        print(json.dumps({k: round(v, 3) for k, v in times.items()}))
        print(f"{file_s / memory_s:.2f}x")
    finally:
        if learner is not None:
            learner.shutdown()
        if gens is not None:
            gens.shutdown()
        if ray.is_initialized():
            ray.shutdown()
        if args.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
