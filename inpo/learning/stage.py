"""One INPO iteration from preference pairs: cache log-probs, train, save pi_{t+1}.

Output directory layout (the same as run_dir/iter_<t>/ of `inpo train`):

    logps.safetensors     log pi_ref and log pi_t of every pair (frozen, cached once)
    checkpoints/step_N/   resumable learner state every learner.checkpoint_every steps
    learn_metrics.jsonl   one row per optimizer step (with learner.epochs = auto, an epoch's
                          last row also holds the held-out excess after it)
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

from inpo.algo.loss import objective, objective_floor
from inpo.config import InpoConfig
from inpo.data import TokenizedPairs, probe_sequence, tokenize_pairs
from inpo.durable import write_atomic, write_json_atomic, write_jsonl_atomic
from inpo.errors import InpoError
from inpo.faults import NO_FAULTS, Faults
from inpo.learning.batching import by_prompt, heldout_split, objective_inputs, steps_per_epoch
from inpo.learning.group import LearnerGroup, cache_from_logps
from inpo.learning.rank import adapter_base
from inpo.models import require_model_dir
from inpo.plan.cluster import start_ray
from inpo.plan.placement import plan_for
from inpo.plan.pool import start_or_reuse, stop
from inpo.rows import read_pairs
from inpo.stages import Role


def digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


def model_identity(model_dir: str) -> str:
    """A model directory's identity: its path and the name, size and mtime of every file.
    Cheap (no hashing of gigabytes) and changes whenever the weights are rewritten."""
    root = Path(model_dir).resolve()
    files = sorted(
        (f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in root.iterdir() if f.is_file()
    )
    return digest([str(root), files])


def pairs_fingerprint(pairs: TokenizedPairs) -> str:
    return digest([pairs.prompt, pairs.chosen, pairs.rejected, pairs.p_label, pairs.p_win])


def fit_pairs(pairs: TokenizedPairs, max_length: int) -> tuple[TokenizedPairs, int]:
    """The pairs whose prompt + longer response fit ``max_length``, and how many did not
    (a cut response is not the response the oracle judged)."""
    keep = [i for i in range(len(pairs)) if pairs.longest(i) <= max_length]
    return pairs.subset(keep), len(pairs) - len(keep)


def _differs(old: dict[str, str], new: dict[str, str]) -> str:
    return ", ".join(k for k in new if old.get(k) != new[k]) or "unknown"


def cache_logps(
    group: LearnerGroup,
    pairs: TokenizedPairs,
    pi_t_dir: str,
    reference_dir: str,
    path: Path,
    faults: Faults = NO_FAULTS,
    history: list[str] | None = None,
) -> dict[str, torch.Tensor]:
    """log pi_ref, log pi_t and (MNPO) the log-probs of ``history``, the past iterates
    pi_{t-1}, pi_{t-2}, ... of every pair, computed once and kept in ``path``; a cache
    computed from other inputs (pairs, models, dtype, autocast, length normalisation) is
    redone.

    pi_t is the training model itself before its first step (the engine is built here and
    kept for the learn stage), so no frozen copy of pi_t is ever loaded. Any other model is
    pi_t under another name (pi_ref in iteration 1), the same model with its adapter off
    under LoRA (the base), and only otherwise a frozen copy, scored before the engine
    exists; each model is scored once whatever roles it plays.
    """
    from safetensors.torch import load_file, save_file

    cfg = group.cfg
    history = history or []
    inputs = {
        "pairs": pairs_fingerprint(pairs),
        "pi_t": model_identity(pi_t_dir),
        "pi_ref": model_identity(reference_dir),
        "dtype": group.dtype,
        "autocast": str(group.autocast),
        "normalize_length": str(cfg.loss.normalize_length),
        "lora": digest(cfg.model.lora.model_dump(mode="json")),
    }
    if history:
        inputs["history"] = digest([model_identity(h) for h in history])
    if path.exists():
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            old = json.loads((f.metadata() or {}).get("inputs", "{}"))
        if old == inputs:
            return load_file(str(path))
        print(f"{path}: computed for other inputs ({_differs(old, inputs)}); recomputing")
    n = len(pairs)
    base = Path(adapter_base(pi_t_dir)).resolve() if cfg.model.lora.r else None
    names = {reference_dir: "pi_ref"} | {h: f"pi_t-{j}" for j, h in enumerate(history, 1)}

    def source(model_dir: str) -> str:
        if model_identity(model_dir) == inputs["pi_t"]:
            return "engine"
        return "base" if Path(model_dir).resolve() == base else "frozen"

    scored: dict[str, torch.Tensor] = {}  # by model identity

    def score(model_dir: str, how: str) -> None:
        key = model_identity(model_dir)
        if source(model_dir) == how and key not in scored:
            name = "pi_t" if how == "engine" else names[model_dir]
            scored[key] = group.compute_logps(n, how, model_dir, desc=f"logps {name}")

    if any(source(d) == "frozen" for d in names):
        group.release()  # the previous iteration's engine and Adam state, before a copy
    for d in names:
        score(d, "frozen")
    group.build_engine(pi_t_dir, total_steps(cfg, pairs))
    score(pi_t_dir, "engine")
    faults.point("logps")
    for d in names:
        score(d, "base")
    of = [scored[model_identity(d)] for d in (reference_dir, pi_t_dir, *history)]
    cache = cache_from_logps(*of)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"inputs": json.dumps(inputs)}
    write_atomic(path, lambda tmp: save_file(cache, str(tmp), metadata=meta))
    return cache


def learn_inputs(cfg: InpoConfig, cache: dict[str, torch.Tensor], pairs: TokenizedPairs) -> dict:
    """Everything that changes the trajectory of a learn stage, by component."""
    dropped = {"logps_batch_size", "checkpoint_every", "keep_checkpoints"}
    return {
        "pairs": pairs_fingerprint(pairs),
        # by name: a cache the logps stage just computed and one read back from its file
        # (safetensors sorts the names) are the same inputs
        "logps": hashlib.sha256(
            torch.stack([cache[k] for k in sorted(cache)]).numpy().tobytes()
        ).hexdigest(),
        "learner": digest(cfg.learner.model_dump(mode="json", exclude=dropped)),
        "loss": digest(cfg.loss.model_dump(mode="json")),
        "deepspeed": digest(cfg.deepspeed.model_dump(mode="json")),
        "model.dtype": cfg.model.dtype,
        "run.seed": str(cfg.run.seed),
    }


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
    def write(tmp: Path) -> None:
        tmp.mkdir(parents=True)
        group.save_checkpoint(str(tmp), step)

    write_atomic(ckpt_root / f"step_{step:06d}", write)
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


def _resume_step(group: LearnerGroup, ckpt_root: Path, inputs: dict[str, str]) -> int:
    """The step to continue from: the newest complete checkpoint written for these inputs,
    else 0 (checkpoints of other inputs are removed, saying so)."""
    stamp = ckpt_root / "inputs.json"
    done = complete_checkpoints(ckpt_root)
    old = json.loads(stamp.read_text()) if stamp.exists() else {}
    if done and old != inputs:
        print(
            f"{ckpt_root}: step checkpoints of other inputs ({_differs(old, inputs)}); "
            "starting from step 0"
        )
        shutil.rmtree(ckpt_root)
        done = []
    if not done:
        ckpt_root.mkdir(parents=True, exist_ok=True)
        write_json_atomic(stamp, inputs)
        return 0
    step = group.load_checkpoint(str(done[-1][1]))
    print(f"[learn] continuing from the step {step} checkpoint in {ckpt_root}", flush=True)
    return step


def split_pairs(cfg: InpoConfig, pairs: TokenizedPairs) -> tuple[list[int], list[int]]:
    """(training, held-out) pair indices of an iteration (learner.heldout_fraction, at most
    learner.heldout_max_prompts prompts)."""
    lc = cfg.learner
    return heldout_split(pairs.prompt, lc.heldout_fraction, cfg.run.seed, lc.heldout_max_prompts)


def excesses(
    cfg: InpoConfig,
    pairs: TokenizedPairs,
    cache: dict[str, torch.Tensor],
    logps: torch.Tensor,
    ids: list[int],
) -> torch.Tensor:
    """Per pair ``ids``: the objective at the policy log-probs ``logps`` ([N, 2]
    chosen/rejected) minus its per-pair floor, 0 when the margin sits at its target."""
    cols, p, p_win = objective_inputs(pairs, cache, ids)
    cols = {k: v.double() for k, v in cols.items()}
    loss_cfg = cfg.loss.model_dump()
    x = logps[torch.tensor(ids, dtype=torch.long)].double()
    losses = objective(loss_cfg, x[:, 0], x[:, 1], cols, p, p_win)[0]
    return losses - objective_floor(loss_cfg, p, p_win)


def mean_excess(cfg: InpoConfig, pairs: TokenizedPairs, cache, logps, ids: list[int]) -> float:
    """The mean of `excesses` over pairs ``ids``."""
    return excesses(cfg, pairs, cache, logps, ids).mean().item()


def standard_error(values: torch.Tensor, prompts: list[list[int]]) -> float | None:
    """Standard error of the mean of per-pair ``values`` over their prompts (pairs of one
    prompt are not independent draws: each prompt's mean is one), None under 2 prompts."""
    means = torch.stack([values[g].mean() for g in by_prompt(prompts)])
    return (means.std() / len(means) ** 0.5).item() if len(means) > 1 else None


def keeps_improving(excesses: list[float]) -> bool:
    """learner.epochs = auto: train on while the held-out excess after the last epoch is
    below the one before it (``excesses``: the start value, then one per epoch)."""
    return len(excesses) < 2 or excesses[-1] < excesses[-2]


def train_policy(
    cfg: InpoConfig,
    group: LearnerGroup,
    pairs: TokenizedPairs,
    cache: dict[str, torch.Tensor],
    policy_dir: str,
    out: Path,
    *,
    desc: str = "learn",
    on_step: Callable[[dict[str, Any]], None] | None = None,
    faults: Faults = NO_FAULTS,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Train from policy_dir (pi_t) on the training pairs; the last step is always
    checkpointed. Returns the step rows and the summary: epochs trained and the objective's
    excess over its floor on held-out and training pairs before the first step (from the
    cached pi_t log-probs, which the training model computed before its first step) and
    after the last (a no-grad forward of the trained model; no RNG is drawn).

    learner.epochs = auto evaluates the held-out pairs after every epoch and stops when
    the excess did not improve (the policy is that epoch's), at most learner.max_epochs.
    The group already holds the pairs (set_data). Resumes from the newest complete
    checkpoint under out/checkpoints written for the same inputs; `export_policy`
    then writes pi_{t+1}.
    """
    lc = cfg.learner
    auto = lc.epochs == "auto"
    train_ids, held_ids = split_pairs(cfg, pairs)
    total = total_steps(cfg, pairs)
    ckpt_root = out / "checkpoints"
    metrics_path = out / "learn_metrics.jsonl"
    group.set_cache(cache)
    group.build_engine(policy_dir, total)
    start = _resume_step(group, ckpt_root, learn_inputs(cfg, cache, pairs))
    rows = [r for r in _metrics_rows(metrics_path) if r["step"] <= start]
    write_jsonl_atomic(metrics_path, rows)
    pi_t = torch.stack([cache["pi_t_chosen"], cache["pi_t_rejected"]], dim=1)
    excess_start = {"train": mean_excess(cfg, pairs, cache, pi_t, train_ids)}
    if held_ids:
        excess_start["heldout"] = mean_excess(cfg, pairs, cache, pi_t, held_ids)
    curve = [excess_start.get("heldout")] + [
        r["heldout_excess"] for r in rows if "heldout_excess" in r
    ]
    per_epoch = total // lc.epoch_cap
    # closed on a failure too, so the run's error line is the last thing printed
    bar = tqdm(total=total, initial=start, desc=desc, unit="step", dynamic_ncols=True)
    with bar, metrics_path.open("a") as mf:
        for step in range(start, total):
            if auto and not keeps_improving(curve):
                break  # a resumed run that had stopped
            t0 = time.perf_counter()
            m = group.train_step(step)
            m.update(step=step + 1, epoch=step // per_epoch + 1, seconds=time.perf_counter() - t0)
            if auto and (step + 1) % per_epoch == 0:
                logps = group.compute_logps(len(pairs), "engine", desc="held-out", ids=held_ids)
                m["heldout_excess"] = mean_excess(cfg, pairs, cache, logps, held_ids)
                curve.append(m["heldout_excess"])
            mf.write(json.dumps(m) + "\n")
            mf.flush()
            rows.append(m)
            if on_step:
                on_step(m)
            faults.point(f"learn.step{step + 1}")
            bar.set_postfix(loss=f"{m['loss']:.4g}", margin=f"{m['margin']:.3g}")
            bar.update(1)
            every = lc.checkpoint_every
            last = step + 1 == total or (auto and not keeps_improving(curve))
            if last or (every and (step + 1) % every == 0):
                _save_checkpoint(group, ckpt_root, step + 1, lc.keep_checkpoints)
    logps = group.compute_logps(len(pairs), "engine", desc="excess")
    summary: dict[str, Any] = {"epochs": rows[-1]["epoch"], "heldout_pairs": len(held_ids)}
    for name, ids in (("train", train_ids), ("heldout", held_ids)):
        if not ids:
            continue
        end = excesses(cfg, pairs, cache, logps, ids)
        summary[f"{name}_excess_start"] = excess_start[name]
        summary[f"{name}_excess_end"] = end.mean().item()
        se = standard_error(end, [pairs.prompt[i] for i in ids])
        if name == "heldout" and se is not None:  # what a capped held-out set measures to
            summary["heldout_excess_end_se"] = se
    return rows, summary


def check_win_rates(cfg: InpoConfig, rows: list[dict], path: Path) -> None:
    """loss.type = sppo trains each response toward its own P(y > pi_t): every pair row must
    carry both (the judge stage writes them; a preference file from elsewhere may not)."""
    if cfg.loss.type != "sppo":
        return
    for n, row in enumerate(rows, start=1):
        for field in ("chosen_p_win", "rejected_p_win"):
            if field not in row:
                raise InpoError(
                    f"{path}: row {n}: field '{field}': missing; loss.type=sppo needs each "
                    "response's estimated P(y > pi_t), which inpo's judge stage writes"
                )


def total_steps(cfg: InpoConfig, pairs: TokenizedPairs, where: str = "", hint: str = "") -> int:
    """Optimizer steps the lr schedule of one iteration is laid out over (learner.epochs,
    or max_epochs for auto) on its training pairs; too few for a batch is an error."""
    train = len(split_pairs(cfg, pairs)[0])
    per_epoch = steps_per_epoch(train, cfg.learner.global_batch_size)
    if per_epoch == 0:
        raise InpoError(
            f"{where}{train} training pairs ({len(pairs)} less the held-out ones, "
            f"learner.heldout_fraction = {cfg.learner.heldout_fraction}) are fewer than "
            f"learner.global_batch_size = {cfg.learner.global_batch_size}: nothing to train "
            f"on{hint}"
        )
    return per_epoch * cfg.learner.epoch_cap


def export_policy(
    cfg: InpoConfig,
    group: LearnerGroup,
    pairs: TokenizedPairs,
    policy_dir: str,
    out: Path,
    probe: tuple[list[int], int],
    engine_ready: bool,
    faults: Faults = NO_FAULTS,
    keep: bool = False,
) -> dict[str, Any]:
    """Write out/policy from the final learner state; returns the learner's probe log-prob
    (probe_logp) and the hash of the saved tensors (weights_sha256), which every weight
    sync checks. With ``keep`` learner rank 0 also holds the policy for the in-memory sync
    that follows (`GeneratorGroup.sync_from`).

    With ``engine_ready`` False (a resumed run) the engine is rebuilt from the final
    checkpoint first. The step checkpoints stay until the caller has recorded that the
    policy is saved (`drop_checkpoints`), so a crash in between can redo this.
    """
    if not engine_ready:
        done = complete_checkpoints(out / "checkpoints")
        if not done:
            raise InpoError(f"{out / 'checkpoints'}: no step checkpoint to save the policy from")
        group.build_engine(policy_dir, total_steps(cfg, pairs))
        group.load_checkpoint(str(done[-1][1]))

    saved = {}

    def write(tmp: Path) -> None:
        saved["weights_sha256"] = group.save_policy(str(tmp), keep=keep)
        faults.point("save")

    write_atomic(out / "policy", write)
    return {"probe_logp": group.probe_logp(*probe), **saved}


def drop_checkpoints(out: Path) -> None:
    """Step state is moot once pi_{t+1} is saved and recorded."""
    shutil.rmtree(out / "checkpoints", ignore_errors=True)


def start_learner(cfg: InpoConfig, device: str, slots=None) -> LearnerGroup:
    """The learner ranks, or those of an earlier run with the same process group
    (`inpo.plan.pool`); end with `inpo.plan.pool.stop`."""
    if slots is None:
        slots = plan_for(cfg, device, [Role.LEARNER]).slots[Role.LEARNER]
    key = (cfg.learner.ranks, cfg.learner.collective_timeout_s, device)
    return start_or_reuse(
        Role.LEARNER,
        key,
        slots,
        start=lambda: LearnerGroup(cfg, device, slots),
        reuse=lambda g: g.configure(cfg),
    )


def learn_from_pairs(cfg: InpoConfig, pairs_path: Path, out: Path) -> list[dict[str, Any]]:
    """`inpo learn`: everything is checked before Ray or DeepSpeed start."""
    from transformers import AutoTokenizer

    rows = read_pairs(pairs_path)
    check_win_rates(cfg, rows, pairs_path)
    policy = str(require_model_dir(cfg.model.policy, "model.policy"))
    reference = str(require_model_dir(cfg.model.reference or policy, "model.reference"))
    tokenizer = AutoTokenizer.from_pretrained(policy)
    pairs, too_long = fit_pairs(tokenize_pairs(tokenizer, rows), cfg.learner.max_length)
    if too_long:
        print(
            f"{pairs_path}: dropped {too_long} of {len(rows)} pairs longer than "
            f"learner.max_length = {cfg.learner.max_length} tokens (prompt + response)"
        )
    total_steps(cfg, pairs, where=f"{pairs_path}: ")  # before Ray or DeepSpeed start
    faults = Faults.from_env()
    out.mkdir(parents=True, exist_ok=True)
    group = start_learner(cfg, start_ray(cfg))
    try:
        group.set_data(pairs, pad_id_of(tokenizer))
        cache = cache_logps(group, pairs, policy, reference, out / "logps.safetensors")
        metrics, summary = train_policy(cfg, group, pairs, cache, policy, out, faults=faults)
        export_policy(cfg, group, pairs, policy, out, _probe(tokenizer), engine_ready=True)
        drop_checkpoints(out)
    finally:
        stop(group)
    print(
        f"learned {len(metrics)} steps ({summary['epochs']} epochs) on {len(pairs)} pairs; "
        f"{excess_line(summary)}; policy in {out / 'policy'}"
    )
    return metrics


def excess_line(summary: dict[str, Any]) -> str:
    """The objective's excess over its floor, start -> end, as `inpo learn` prints it."""
    return ", ".join(
        f"{name} excess {summary[f'{key}_excess_start']:.4g} -> {summary[f'{key}_excess_end']:.4g}"
        for key, name in (("heldout", "held-out"), ("train", "training"))
        if f"{key}_excess_start" in summary
    )


def _probe(tokenizer):

    return probe_sequence(tokenizer)


def pad_id_of(tokenizer) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
