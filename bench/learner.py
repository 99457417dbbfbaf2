"""Learner training throughput: our LearnerGroup (Ray + DeepSpeed) vs a plain PyTorch loop.

Measures non-padding tokens per second (sum of attention_mask over the chosen and
rejected rows) of INPO training steps, on the same ~20M-parameter tiny Llama and the
same synthetic pairs, in one run on this machine:

  ours           inpo.learning.stage.start_learner -> LearnerGroup (--ranks Ray actors, one
                 DeepSpeed rank each, ZeRO stage --zero-stage), driven through
                 set_data / set_cache / build_engine / train_step as `inpo learn` does.
  plain PyTorch  this process, no Ray, no DeepSpeed: the same batches
                 (global_batch_indices + collate), forward_logps + objective, gradient
                 accumulation, grad clipping, torch AdamW and the cosine LR schedule,
                 all read from the same config.

Both sides use the whole machine: each Ray rank sets cpu_count // ranks torch threads
(LearnerRank), the baseline uses ranks times that. The two sides take turns, one
optimizer step each, so a load change on a shared machine hits both alike. Warmup
steps, Ray start-up and engine construction are not timed; both sides time the same
--steps optimizer steps. The cached log-probs (ref = prev) are those of the uniform
distribution, -log(V) per response token, computed once without a forward pass (not
group.compute_logps): the freshly initialised model is close to uniform, so the loss
is realistic, and the first-step loss checks that both sides computed the same math on
the same batches (the last-step loss, that they followed the same trajectory).

With --lora R it compares LoRA (rank R) against full fine-tuning instead, both through
LearnerGroup on the same model and batches: peak resident memory of a learner rank,
training tokens/s, and the time of the logps stage of an iteration t >= 2 done the old
way (frozen copies of pi_t and pi_ref loaded on every rank) against the new one (pi_t
from the training model itself; pi_ref with the adapter off under LoRA, a frozen copy of
pi_ref only for full fine-tuning).

Run:  .venv/bin/python bench/learner.py            (about 80 s with defaults here)
      .venv/bin/python bench/learner.py --ranks 2
      .venv/bin/python bench/learner.py --lora 16
      .venv/bin/python bench/learner.py --autocast
"""

from __future__ import annotations

import argparse
import math
import os
import tempfile
import time

import torch
import transformers

from inpo.algo.loss import objective
from inpo.data import TokenizedPairs
from inpo.learning.batching import collate, cosine_lr_lambda, forward_logps, global_batch_indices
from inpo.models.tiny import build_tiny_model, build_tokenizer, count_parameters


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--layers", type=int, default=6)
    p.add_argument("--steps", type=int, default=10, help="timed optimizer steps")
    p.add_argument("--warmup", type=int, default=2, help="untimed optimizer steps first")
    p.add_argument("--global-batch", type=int, default=8, help="pairs per optimizer step")
    p.add_argument("--micro-batch", type=int, default=4, help="pairs per forward, per rank")
    p.add_argument("--ranks", type=int, default=1)
    p.add_argument("--zero-stage", type=int, default=2)
    p.add_argument("--seq-len", type=int, default=192, help="longest prompt+response")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lora", type=int, default=0, help="compare LoRA rank R with full FT")
    p.add_argument("--autocast", action="store_true", help="compare bf16 autocast with fp32")
    return p.parse_args()


def bench_config(args: argparse.Namespace, *overrides: str):
    """The learner config both sides read, from the command line's sizes."""
    from inpo.config import load_config

    return load_config(
        None,
        [
            f"learner.num_ranks={args.ranks}",
            f"learner.global_batch_size={args.global_batch}",
            f"learner.micro_batch_size={args.micro_batch}",
            f"learner.max_length={args.seq_len}",
            f"deepspeed.zero_stage={args.zero_stage}",
            "model.dtype=float32",
            f"run.seed={args.seed}",
            "learner.heldout_fraction=0",  # the plain loop steps on every pair
            *overrides,
        ],
    )


def synthetic_pairs(n: int, vocab: int, seq_len: int, seed: int) -> TokenizedPairs:
    """Prompts of seq_len/3 tokens, responses of seq_len/3 .. 2*seq_len/3 tokens."""
    g = torch.Generator().manual_seed(seed)
    plen = seq_len // 3

    def seq(length: int) -> list[int]:  # ids past the 3 specials: plain characters
        return torch.randint(3, vocab, (length,), generator=g).tolist()

    def rlen() -> int:
        return int(torch.randint(plen, seq_len - plen + 1, (1,), generator=g))

    return TokenizedPairs(
        prompt=[seq(plen) for _ in range(n)],
        chosen=[seq(rlen()) for _ in range(n)],
        rejected=[seq(rlen()) for _ in range(n)],
        p_label=[1.0] * n,
    )


def uniform_cache(pairs: TokenizedPairs, vocab: int) -> dict[str, torch.Tensor]:
    lp = -math.log(vocab)
    chosen = torch.tensor([lp * len(r) for r in pairs.chosen])
    rejected = torch.tensor([lp * len(r) for r in pairs.rejected])
    return {
        "ref_chosen": chosen,
        "ref_rejected": rejected,
        "pi_t_chosen": chosen,
        "pi_t_rejected": rejected,
    }


class PlainLoop:
    """The same training step as LearnerRank.train_step, in plain PyTorch."""

    def __init__(self, cfg, model_dir, pairs, pad_id, cache, total):
        self.cfg, self.pairs, self.pad_id, self.cache = cfg, pairs, pad_id, cache
        lc = cfg.learner
        model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
        model.config.use_cache = False
        if lc.gradient_checkpointing:
            model.gradient_checkpointing_enable()
        self.model = model.train()
        self.opt = torch.optim.AdamW(
            model.parameters(), lr=lc.lr, betas=tuple(lc.adam_betas), weight_decay=lc.weight_decay
        )
        lam = cosine_lr_lambda(total, lc.warmup_ratio, lc.min_lr_ratio)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lam)
        # DeepSpeed divides each micro-batch loss by its accumulation steps and averages
        # the gradients over ranks: over all ranks that is one division by this.
        self.accum = lc.global_batch_size // lc.micro_batch_size

    def train_step(self, step: int) -> dict[str, float]:
        lc, loss_cfg = self.cfg.learner, self.cfg.loss.model_dump()
        idx = global_batch_indices(len(self.pairs), lc.global_batch_size, self.cfg.run.seed, step)
        loss_sum, tokens = 0.0, 0
        for i in range(0, len(idx), lc.micro_batch_size):
            mb = idx[i : i + lc.micro_batch_size]
            batch = collate(self.pairs, mb, self.pad_id, lc.max_length)
            tokens += int(batch["attention_mask"].sum())
            chosen, rejected = forward_logps(self.model, batch, loss_cfg["normalize_length"])
            cache = {k: v[mb] for k, v in self.cache.items()}
            losses, _, _ = objective(loss_cfg, chosen, rejected, cache)
            (losses.mean() / self.accum).backward()
            loss_sum += losses.sum().item()
        if lc.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), lc.grad_clip)
        self.opt.step()
        self.sched.step()
        self.opt.zero_grad(set_to_none=True)
        return {"loss": loss_sum / len(idx), "tokens": tokens}


def main(args: argparse.Namespace) -> None:
    import ray

    from inpo.learning.stage import start_learner
    from inpo.plan.cluster import start_ray

    transformers.utils.logging.disable_progress_bar()
    total = args.warmup + args.steps
    cfg = bench_config(args)
    tok = build_tokenizer()
    vocab, pad_id = len(tok), tok.pad_token_id
    pairs = synthetic_pairs(total * args.global_batch, vocab, args.seq_len, args.seed)
    cache = uniform_cache(pairs, vocab)
    base_threads = max(1, (os.cpu_count() or 1) // args.ranks) * args.ranks
    torch.set_num_threads(base_threads)
    plen = args.seq_len // 3
    print(
        f"data: {len(pairs)} pairs, prompt {plen} + responses {plen}-{args.seq_len - plen} "
        f"tokens; global batch {args.global_batch}, micro {args.micro_batch}, grad accum "
        f"{cfg.learner.grad_accum} x {args.ranks} rank(s); {args.warmup} warmup + "
        f"{args.steps} timed steps; cache ref = prev = uniform log-probs"
    )

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = str(build_tiny_model(tmp, layers=args.layers, hidden=args.hidden))
        print(
            f"model: {count_parameters(model_dir) / 1e6:.1f}M params (hidden {args.hidden}, "
            f"layers {args.layers}, intermediate {3 * args.hidden}, vocab {vocab}), float32"
        )
        plain = PlainLoop(cfg, model_dir, pairs, pad_id, cache, total)
        group = start_learner(cfg, start_ray(cfg))
        try:
            group.set_data(pairs, pad_id)
            group.set_cache(cache)
            group.build_engine(model_dir, total)
            get_threads = [
                r.__ray_call__.remote(lambda _: torch.get_num_threads()) for r in group.actors
            ]
            threads = ray.get(get_threads)
            load0 = os.getloadavg()[0]
            secs, tokens, losses, first = [0.0, 0.0], [0.0, 0.0], ([], []), [0.0, 0.0]
            for step in range(total):
                for side, learner in enumerate((group, plain)):  # take turns
                    t0 = time.perf_counter()
                    m = learner.train_step(step)
                    dt = time.perf_counter() - t0
                    losses[side].append(m["loss"])
                    first[side] = first[side] or dt
                    if step >= args.warmup:
                        secs[side] += dt
                        tokens[side] += m["tokens"]
        finally:
            group.shutdown()

    print(
        f"torch threads: ours {args.ranks} rank(s) x {'/'.join(map(str, threads))} "
        f"(ZeRO-{args.zero_stage}), baseline {base_threads}; 1-min load avg "
        f"{load0:.2f} -> {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores"
    )
    print(f"untimed first step: ours {first[0]:.2f} s, baseline {first[1]:.2f} s")
    assert tokens[0] == tokens[1], tokens
    tps = [t / s for t, s in zip(tokens, secs, strict=True)]
    print(f"\n{'':20s}{'tokens/s':>10s}{'s/step':>10s}")
    for name, side in (
        (f"ours ({args.ranks} rank{'s' * (args.ranks > 1)})", 0),
        ("plain PyTorch", 1),
    ):
        print(f"{name:20s}{tps[side]:10.1f}{secs[side] / args.steps:10.3f}")
    print(f"({tokens[0]:.0f} tokens in {args.steps} steps each)\n")
    for name, i in (("first", 0), ("last", total - 1)):
        a, b = losses[0][i], losses[1][i]
        rel = abs(a - b) / max(abs(b), 1e-12)
        print(f"{name}-step loss: ours {a:.6f}  baseline {b:.6f}  (rel diff {rel:.1e})")
    ok = math.isclose(losses[0][0], losses[1][0], rel_tol=1e-4)
    print(f"sanity: first-step losses agree (rel 1e-4): {'OK' if ok else 'MISMATCH'}")
    print(f"ratio ours/baseline: {tps[0] / tps[1]:.2f}x")
    if not ok:
        raise SystemExit(1)


def peak_rss_mib(_actor) -> float:
    """Runs inside a learner rank (Ray's __ray_call__): its peak resident memory."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def side_by_side(cfgs, model_dir, pairs, cache, pad_id, args):
    """Fresh learners, one per config, taking turns one optimizer step each (a load change
    on a shared machine hits all alike): ({name: tokens/s}, {name: peak RSS MiB of a
    rank}, {name: [loss per step]})."""
    from inpo.learning.stage import start_learner, total_steps
    from inpo.plan.cluster import start_ray

    total = args.warmup + args.steps
    groups = {}
    secs, tokens = dict.fromkeys(cfgs, 0.0), dict.fromkeys(cfgs, 0.0)
    losses = {name: [] for name in cfgs}
    try:
        for name, cfg in cfgs.items():
            groups[name] = start_learner(cfg, start_ray(cfg))
            groups[name].set_data(pairs, pad_id)
            groups[name].set_cache(cache)
            groups[name].build_engine(model_dir, total_steps(cfg, pairs))
        for step in range(total):
            for name, group in groups.items():
                t0 = time.perf_counter()
                m = group.train_step(step)
                losses[name].append(m["loss"])
                if step >= args.warmup:
                    secs[name] += time.perf_counter() - t0
                    tokens[name] += m["tokens"]
        peak = {
            name: max(group.get([a.__ray_call__.remote(peak_rss_mib) for a in group.actors]))
            for name, group in groups.items()
        }
    finally:
        for group in groups.values():
            group.shutdown()
    return {name: tokens[name] / secs[name] for name in cfgs}, peak, losses


def autocast_main(args: argparse.Namespace) -> None:
    """learner.autocast = bfloat16 vs off, float32 weights both: tokens/s, and how far
    apart their losses are (the same batches, from the same weights)."""
    total = args.warmup + args.steps
    tok = build_tokenizer()
    pairs = synthetic_pairs(total * args.global_batch, len(tok), args.seq_len, args.seed)
    cache = uniform_cache(pairs, len(tok))
    cfgs = {
        "float32": bench_config(args),
        "bf16 autocast": bench_config(args, "learner.autocast=bfloat16"),
    }
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = str(build_tiny_model(tmp, layers=args.layers, hidden=args.hidden))
        print(f"model: {count_parameters(model_dir) / 1e6:.1f}M params, {len(pairs)} pairs")
        tps, peak, losses = side_by_side(cfgs, model_dir, pairs, cache, tok.pad_token_id, args)
    print(f"\n{'':16s}{'tokens/s':>10s}{'peak RSS MiB':>14s}{'first loss':>12s}{'last loss':>12s}")
    for name in cfgs:
        row = f"{tps[name]:10.1f}{peak[name]:14.0f}{losses[name][0]:12.5f}{losses[name][-1]:12.5f}"
        print(f"{name:16s}{row}")
    print(f"ratio bf16 autocast / float32: tokens/s {tps['bf16 autocast'] / tps['float32']:.2f}x")


def lora_main(args: argparse.Namespace) -> None:
    """LoRA rank args.lora vs full fine-tuning: memory, tokens/s, logps stage time. The
    two learners train side by side, one optimizer step each in turn, so a load change
    on a shared machine hits both alike."""
    from inpo.learning.stage import start_learner, total_steps
    from inpo.plan.cluster import start_ray

    total = args.warmup + args.steps
    tok = build_tokenizer()
    pairs = synthetic_pairs(total * args.global_batch, len(tok), args.seq_len, args.seed)
    cache = uniform_cache(pairs, len(tok))
    modes = {"full fine-tuning": 0, f"LoRA r={args.lora}": args.lora}
    logps = {}
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = str(build_tiny_model(tmp, layers=args.layers, hidden=args.hidden))
        print(f"model: {count_parameters(model_dir) / 1e6:.1f}M params, {len(pairs)} pairs")
        cfgs = {name: bench_config(args, f"model.lora.r={r}") for name, r in modes.items()}
        steps = total_steps(cfgs["full fine-tuning"], pairs)
        for name, cfg in cfgs.items():  # the logps stage of an iteration t >= 2, two ways
            group = start_learner(cfg, start_ray(cfg))
            try:
                group.set_data(pairs, tok.pad_token_id)
                t0 = time.perf_counter()  # before: frozen copies of pi_t and pi_ref
                group.compute_logps(len(pairs), "frozen", model_dir, desc="frozen pi_t")
                group.compute_logps(len(pairs), "frozen", model_dir, desc="frozen pi_ref")
                old = time.perf_counter() - t0
                t0 = time.perf_counter()  # now: the training model is pi_t
                group.build_engine(model_dir, steps)
                group.compute_logps(len(pairs), "engine", desc="engine pi_t")
                source = "base" if modes[name] else "frozen"
                group.compute_logps(len(pairs), source, model_dir, desc=f"{source} pi_ref")
                logps[name] = (old, time.perf_counter() - t0)
            finally:
                group.shutdown()
        tps, peak, _ = side_by_side(cfgs, model_dir, pairs, cache, tok.pad_token_id, args)
    print(
        f"\n{'':22s}{'tokens/s':>10s}{'peak RSS MiB':>14s}{'logps old s':>13s}{'logps new s':>13s}"
    )
    for name in modes:
        print(
            f"{name:22s}{tps[name]:10.1f}{peak[name]:14.0f}"
            f"{logps[name][0]:13.2f}{logps[name][1]:13.2f}"
        )
    full, lora = list(modes)
    print(
        f"LoRA / full: tokens/s {tps[lora] / tps[full]:.2f}x, "
        f"peak memory {peak[lora] / peak[full]:.2f}x; logps stage now / before: full "
        f"{logps[full][1] / logps[full][0]:.2f}x, LoRA {logps[lora][1] / logps[lora][0]:.2f}x"
    )


if __name__ == "__main__":
    args = parse_args()
    if args.lora:
        lora_main(args)
    elif args.autocast:
        autocast_main(args)
    else:
        main(args)
