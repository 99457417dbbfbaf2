"""One INPO iteration from preference pairs: cache log-probs, train, save pi_{t+1}.

Output directory layout (the same as run_dir/iter_<t>/ of `inpo train`):

    logps.safetensors     log pi_ref and log pi_t of every pair (frozen, cached once)
    checkpoints/step_N/   resumable learner state every learner.checkpoint_every steps
    learn_metrics.jsonl   one row per optimizer step
    policy/               pi_{t+1} as a Hugging Face directory (written last, atomically)
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from inpo.config import InpoConfig
from inpo.data import TokenizedPairs
from inpo.errors import InpoError
from inpo.faults import crash_point
from inpo.learner.batching import steps_per_epoch
from inpo.learner.group import LearnerGroup, cache_from_logps
from inpo.learner.rank import loss_target


def pairs_fingerprint(pairs: TokenizedPairs) -> str:
    h = hashlib.sha256()
    for seqs in (pairs.prompt, pairs.chosen, pairs.rejected):
        h.update(json.dumps(seqs).encode())
    return h.hexdigest()[:16]


def cache_logprobs(
    group: LearnerGroup, pairs: TokenizedPairs, policy_dir: str, reference_dir: str, path: Path
) -> dict[str, torch.Tensor]:
    """log pi_ref and log pi_t of every pair, computed once and kept in ``path``."""
    from safetensors.torch import load_file, save_file

    fingerprint = pairs_fingerprint(pairs)
    if path.exists():
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
        if meta.get("pairs") == fingerprint:
            return load_file(str(path))
        path.unlink()  # computed for other pairs: stale
    ref = group.compute_logps(reference_dir, len(pairs), desc="logps pi_ref")
    crash_point("logps")
    same = Path(policy_dir).resolve() == Path(reference_dir).resolve()
    prev = ref if same else group.compute_logps(policy_dir, len(pairs), desc="logps pi_t")
    cache = cache_from_logps(ref, prev)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file(cache, str(tmp), metadata={"pairs": fingerprint})
    tmp.replace(path)
    return cache


def complete_checkpoints(ckpt_root: Path) -> list[tuple[int, Path]]:
    """Finished step checkpoints, oldest first (a checkpoint still named *.tmp never counts)."""
    if not ckpt_root.exists():
        return []
    found = []
    for d in ckpt_root.iterdir():
        if d.is_dir() and d.name.startswith("step_") and d.name[5:].isdigit():
            found.append((int(d.name[5:]), d))
    return sorted(found)


def _save_checkpoint(group: LearnerGroup, ckpt_root: Path, step: int, keep: int) -> None:
    final = ckpt_root / f"step_{step:06d}"
    tmp = ckpt_root / f"step_{step:06d}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    group.save_checkpoint(str(tmp), step)
    tmp.rename(final)
    for _, old in complete_checkpoints(ckpt_root)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def _metrics_rows(path: Path) -> list[dict[str, Any]]:
    rows = []
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                break  # a line cut by a crash; everything after it is redone
    return rows


def train_policy(
    cfg: InpoConfig,
    group: LearnerGroup,
    num_pairs: int,
    cache: dict[str, torch.Tensor],
    policy_dir: str,
    out: Path,
    *,
    desc: str = "learn",
    on_step: Callable[[dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """Train E epochs from policy_dir (pi_t); the last step is always checkpointed.

    The group already holds the pairs (set_data). Resumes from the newest
    complete checkpoint under out/checkpoints; `export_policy` then writes pi_{t+1}.
    """
    lc = cfg.learner
    total = total_steps(cfg, num_pairs)
    ckpt_root = out / "checkpoints"
    metrics_path = out / "learn_metrics.jsonl"
    group.set_cache(cache)
    group.build_engine(policy_dir, total)
    start = 0
    done = complete_checkpoints(ckpt_root)
    if done:
        start = group.load_checkpoint(str(done[-1][1]))
    rows = [r for r in _metrics_rows(metrics_path) if r["step"] <= start]
    metrics_path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    target = loss_target(cfg.loss.model_dump())
    per_epoch = total // lc.epochs
    bar = tqdm(total=total, initial=start, desc=desc, unit="step", dynamic_ncols=True)
    with metrics_path.open("a") as mf:
        for step in range(start, total):
            t0 = time.perf_counter()
            m = group.train_step(step)
            m.update(step=step + 1, epoch=step // per_epoch + 1, seconds=time.perf_counter() - t0)
            if target is not None:
                m["margin_target"] = target
            mf.write(json.dumps(m) + "\n")
            mf.flush()
            rows.append(m)
            if on_step:
                on_step(m)
            crash_point(f"learn.step{step + 1}")
            bar.set_postfix(loss=f"{m['loss']:.4g}", margin=f"{m['margin']:.3g}")
            bar.update(1)
            every = lc.checkpoint_every
            if step + 1 == total or (every and (step + 1) % every == 0):
                _save_checkpoint(group, ckpt_root, step + 1, lc.keep_checkpoints)
    bar.close()
    return rows


def total_steps(cfg: InpoConfig, num_pairs: int, where: str = "", hint: str = "") -> int:
    """Optimizer steps of one iteration; too few pairs for a batch is an error."""
    per_epoch = steps_per_epoch(num_pairs, cfg.learner.global_batch_size)
    if per_epoch == 0:
        raise InpoError(
            f"{where}{num_pairs} pairs are fewer than learner.global_batch_size = "
            f"{cfg.learner.global_batch_size}: nothing to train on{hint}"
        )
    return per_epoch * cfg.learner.epochs


def export_policy(
    cfg: InpoConfig,
    group: LearnerGroup,
    num_pairs: int,
    policy_dir: str,
    out: Path,
    probe: tuple[list[int], int],
    engine_ready: bool,
) -> float:
    """Write out/policy from the final learner state; returns the learner's probe log-prob.

    With ``engine_ready`` False (a resumed run) the engine is rebuilt from the
    final checkpoint first.
    """
    ckpt_root = out / "checkpoints"
    if not engine_ready:
        group.build_engine(policy_dir, total_steps(cfg, num_pairs))
        group.load_checkpoint(str(complete_checkpoints(ckpt_root)[-1][1]))
    save_policy_atomic(group, out / "policy")
    expected = group.probe_logprob(*probe)
    shutil.rmtree(ckpt_root, ignore_errors=True)  # pi_{t+1} is saved: step state is moot
    return expected


def save_policy_atomic(group: LearnerGroup, policy: Path) -> None:
    tmp = policy.with_name(policy.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    group.save_policy(str(tmp))
    crash_point("save")
    shutil.rmtree(policy, ignore_errors=True)
    tmp.rename(policy)


def start_learner(cfg: InpoConfig, device: str, slots=None) -> LearnerGroup:
    from inpo.placement import plan_for

    if slots is None:
        slots = plan_for(device, {"learner": (cfg.learner.num_ranks, 1)})["learner"]
    return LearnerGroup(cfg.model_dump(mode="json"), device, slots)


def learn_from_pairs(cfg: InpoConfig, pairs_path: Path, out: Path) -> list[dict[str, Any]]:
    """`inpo learn`: everything is checked before Ray or DeepSpeed start."""
    from transformers import AutoTokenizer

    from inpo.cluster import start_ray
    from inpo.data import load_pairs, tokenize_pairs
    from inpo.models import require_model_dir

    rows = load_pairs(pairs_path)
    policy = str(require_model_dir(cfg.model.policy, "model.policy"))
    reference = str(require_model_dir(cfg.model.reference or policy, "model.reference"))
    tokenizer = AutoTokenizer.from_pretrained(policy)
    pairs = tokenize_pairs(tokenizer, rows)
    total_steps(cfg, len(pairs), where=f"{pairs_path}: ")  # before Ray or DeepSpeed start
    out.mkdir(parents=True, exist_ok=True)
    group = start_learner(cfg, start_ray(cfg))
    try:
        group.set_data(pairs, pad_id_of(tokenizer))
        cache = cache_logprobs(group, pairs, policy, reference, out / "logps.safetensors")
        metrics = train_policy(cfg, group, len(pairs), cache, policy, out)
        export_policy(cfg, group, len(pairs), policy, out, _probe(tokenizer), engine_ready=True)
    finally:
        group.shutdown()
    first, last = metrics[0], metrics[-1]
    print(
        f"learned {len(metrics)} steps on {len(pairs)} pairs: loss {first['loss']:.4g} -> "
        f"{last['loss']:.4g}, margin {first['margin']:.3g} -> {last['margin']:.3g}"
        + (f" (target {last['margin_target']:.3g})" if "margin_target" in last else "")
        + f"; policy in {out / 'policy'}"
    )
    return metrics


def _probe(tokenizer):
    from inpo.rollout.generator import probe_sequence

    return probe_sequence(tokenizer)


def pad_id_of(tokenizer) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
