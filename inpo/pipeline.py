"""The online INPO loop: one driver, T iterations, every stage resumable.

    for t in 1..T:
        generate  K samples per prompt from pi_t (vLLM generators)
        judge     oracle + pairing -> (y_w, y_l) per prompt
        logps     log pi_ref, log pi_t of every pair (cached)
        learn     E epochs of the INPO loss (DeepSpeed ranks; step checkpoints)
        save      pi_{t+1} as a Hugging Face directory
        sync      push pi_{t+1} into the generators, verified on a probe sequence
        eval      win rate of pi_{t+1} vs pi_ref and vs pi_t on held-out prompts

Each stage writes under run_dir/iter_<t>/ and is then marked done in
state.json; a resumed run skips what is done. The learner checkpoints every N
steps, so a crash mid-epoch loses at most N steps.
"""

from __future__ import annotations

import json
import random
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from inpo.config import TINY, InpoConfig
from inpo.data import (
    Prompt,
    builtin_prompts,
    load_prompts,
    read_rows,
    tokenize_pairs,
    write_jsonl_atomic,
)
from inpo.errors import InpoError
from inpo.faults import crash_point
from inpo.state import STAGES, RunState, write_json_atomic

CONFIG_FILE = "config.yaml"
STATE_FILE = "state.json"


def split_prompts(
    cfg: InpoConfig, pool: list[Prompt], eval_pool: list[Prompt] | None
) -> tuple[list[int], list[int]]:
    """(train ids, eval ids) as indices into ``pool`` (eval ids index ``eval_pool`` if given).

    Held-out prompts are a seeded sample of the pool, taken before any
    training prompt is drawn; training prompts keep file order ("slice") or
    a seeded permutation ("sample", i.e. sampling without replacement).
    """
    rng = random.Random(f"{cfg.run.seed}/split")
    ids = list(range(len(pool)))
    if eval_pool is not None:
        eval_ids = list(range(min(cfg.data.eval_size, len(eval_pool))))
        train = ids
    else:
        eval_ids = sorted(rng.sample(ids, min(cfg.data.eval_size, len(ids) - 1)))
        held = set(eval_ids)
        train = [i for i in ids if i not in held]
    if cfg.data.selection == "sample":
        rng.shuffle(train)
    return train, eval_ids


def iteration_prompts(train_ids: list[int], per_iter: int, t: int) -> list[int]:
    """Prompt ids of iteration t: the t-th slice, wrapping around an exhausted pool."""
    start = (t - 1) * per_iter
    return [train_ids[(start + i) % len(train_ids)] for i in range(min(per_iter, len(train_ids)))]


class Trainer:
    def __init__(self, cfg: InpoConfig, run_dir: Path, state: RunState):
        self.cfg, self.run_dir, self.state = cfg, run_dir, state
        self.generators = None
        self.gen_policy: str | None = None
        self.learner = None
        self.learner_iteration: int | None = None  # whose pairs the learner holds
        self.engine_iteration: int | None = None  # whose trained engine is live
        self.oracle = None
        self.tb = self.wandb = None

    # --- paths --------------------------------------------------------------
    def iter_dir(self, t: int) -> Path:
        return self.run_dir / f"iter_{t}"

    def policy_dir(self, t: int) -> str:
        """pi_{t+1}'s directory; t = 0 is the initial policy pi_1."""
        return str(self.iter_dir(t) / "policy") if t > 0 else self.base_policy

    # --- set-up ---------------------------------------------------------------
    def prepare(self) -> None:
        from transformers import AutoTokenizer

        from inpo.models import require_model_dir
        from inpo.rollout.generator import probe_sequence

        cfg = self.cfg
        if cfg.model.policy == TINY:
            base = self.run_dir / "base_model"
            if not (base / "config.json").exists():
                from inpo.models.tiny import build_tiny_model

                tmp = self.run_dir / "base_model.tmp"
                shutil.rmtree(tmp, ignore_errors=True)
                build_tiny_model(
                    tmp,
                    layers=cfg.model.tiny_layers,
                    hidden=cfg.model.tiny_hidden,
                    tied_embeddings=cfg.model.tiny_tied_embeddings,
                    seed=cfg.run.seed,
                )
                tmp.rename(base)
            self.base_policy = str(base)
        else:
            self.base_policy = str(require_model_dir(cfg.model.policy, "model.policy"))
        ref = cfg.model.reference or cfg.model.policy
        self.reference = (
            self.base_policy
            if ref == cfg.model.policy
            else str(require_model_dir(ref, "model.reference"))
        )
        self.tokenizer = AutoTokenizer.from_pretrained(self.base_policy)
        self.probe = probe_sequence(self.tokenizer)
        self.pool = self._prompts(cfg.data.prompts)
        self.eval_pool = self._prompts(cfg.data.eval_prompts) if cfg.data.eval_prompts else None
        self.train_ids, self.eval_ids = split_prompts(cfg, self.pool, self.eval_pool)
        if not self.train_ids:
            raise InpoError(f"data.prompts = {cfg.data.prompts!r}: no training prompts left")
        write_json_atomic(
            self.run_dir / "splits.json", {"train": self.train_ids, "eval": self.eval_ids}
        )

    def _prompts(self, source: str) -> list[Prompt]:
        if source.startswith("builtin:"):
            return builtin_prompts(source)
        return load_prompts(source, self.cfg.data.prompt_field)

    def start_actors(self, device: str) -> None:
        from inpo.generate import start_generators
        from inpo.learn import start_learner
        from inpo.oracle import build_oracle
        from inpo.oracle.base import MODEL_BACKENDS
        from inpo.placement import plan_for

        cfg = self.cfg
        demand = {
            "learner": (cfg.learner.num_ranks, 1),
            "generator": (cfg.generation.num_generators, cfg.generation.tensor_parallel_size),
        }
        if cfg.oracle.backend in MODEL_BACKENDS:
            demand["oracle"] = (cfg.oracle.num_actors, 1)
        plan = plan_for(device, demand)
        self.oracle = build_oracle(cfg, device, slots=plan.get("oracle"))
        self.learner = start_learner(cfg, device, slots=plan["learner"])
        # Generators hold the newest saved policy; the pending stage decides what happens next.
        self.gen_policy = self.policy_dir(self._last_saved())
        if (
            self.eval_ids
            and not self.state.is_done(0, "eval_ref")
            and (self.reference != self.gen_policy)
        ):
            self.gen_policy = self.reference
        self.generators = start_generators(cfg, device, self.gen_policy, slots=plan["generator"])

    def _last_saved(self) -> int:
        saved = [t for t in range(1, self.cfg.run.iterations + 1) if self.state.is_done(t, "save")]
        return max(saved, default=0)

    def shutdown(self) -> None:
        for actor in (self.generators, self.learner):
            if actor is not None:
                actor.shutdown()
        if self.oracle is not None:
            self.oracle.close()
        if self.tb is not None:
            self.tb.close()

    # --- stages ---------------------------------------------------------------
    def stage(self, t: int, name: str, fn: Callable[[], dict[str, Any] | None]) -> dict:
        if self.state.is_done(t, name):
            return self.state.info(t, name)
        self.state.start(t, name)
        t0 = time.perf_counter()
        info = fn() or {}
        info["seconds"] = time.perf_counter() - t0
        self.state.finish(t, name, info)
        label = f"iter {t}" if t else "setup"
        extra = ", ".join(f"{k}={_fmt(v)}" for k, v in info.items() if k != "seconds")
        print(f"[{label}] {name} done in {info['seconds']:.1f}s" + (f" ({extra})" if extra else ""))
        return info

    def _generate(
        self,
        ids: list[int],
        pool: list[Prompt],
        purpose: str,
        n: int,
        temperature: float,
        max_tokens: int,
    ) -> list[dict]:
        from inpo.generate import generate_rows, request_seed, tokenize_prompts

        prompts = [pool[i] for i in ids]
        kept, token_ids = tokenize_prompts(
            self.tokenizer, prompts, self.cfg.data.max_prompt_tokens, source=f"{purpose} prompts"
        )
        pids = [ids[i] for i in kept]
        return generate_rows(
            self.generators,
            [prompts[i] for i in kept],
            pids,
            token_ids,
            seeds=[request_seed(self.cfg.run.seed, purpose, p) for p in pids],
            n=n,
            temperature=temperature,
            top_p=self.cfg.generation.top_p,
            max_tokens=max_tokens,
            desc=purpose,
        )

    def _eval_generate(self, purpose: str) -> list[dict]:
        from inpo.evaluate import eval_rows

        cfg = self.cfg
        pool = self.eval_pool if self.eval_pool is not None else self.pool
        rows = self._generate(
            self.eval_ids,
            pool,
            purpose,
            1,
            cfg.eval.temperature,
            cfg.eval.max_new_tokens or cfg.generation.max_new_tokens,
        )
        return eval_rows(rows)

    def eval_reference(self) -> None:
        """pi_ref's held-out responses, sampled once, before any training."""
        if not self.eval_ids:
            return

        def run():
            rows = self._eval_generate("eval_ref")
            write_jsonl_atomic(self.run_dir / "eval_ref.jsonl", rows)
            return {"prompts": len(rows)}

        self.stage(0, "eval_ref", run)
        target = self.policy_dir(self._last_saved())
        if self.gen_policy != target:  # the generators held pi_ref != pi_1 for eval_ref
            self.generators.sync(target, self.probe, self._learner_probe_of(target))
            self.gen_policy = target

    def _learner_probe_of(self, model_dir: str) -> float:
        return self.learner.probe_logprob_dir(model_dir, *self.probe)

    def iteration(self, t: int) -> None:
        from inpo.judge import pair_rows, select_pairs

        cfg, d = self.cfg, self.iter_dir(t)
        d.mkdir(parents=True, exist_ok=True)
        gen_path, pairs_path = d / "generations.jsonl", d / "pairs.jsonl"

        def generate():
            ids = iteration_prompts(self.train_ids, cfg.data.prompts_per_iteration, t)
            g = cfg.generation
            rows = self._generate(
                ids, self.pool, f"generate{t}", g.num_samples, g.temperature, g.max_new_tokens
            )
            crash_point("generate")
            write_jsonl_atomic(gen_path, rows)
            n_tok = sum(len(x) for r in rows for x in r["response_ids"])
            return {"prompts": len(rows), "skipped": len(ids) - len(rows), "tokens": n_tok}

        def judge():
            rows = read_rows(gen_path)
            results = select_pairs(
                rows, self.oracle, cfg.pairing.strategy, cfg.run.seed, desc=f"judge{t}"
            )
            pairs, dropped = pair_rows(rows, results)
            write_jsonl_atomic(pairs_path, pairs)
            return {
                "pairs": len(pairs),
                "dropped": dict(dropped),
                "comparisons": sum(r.n_comparisons for r in results),
            }

        self.stage(t, "generate", generate)
        self.stage(t, "judge", judge)
        pairs = self._load_learner_data(t)
        self.stage(t, "logps", lambda: {"pairs": len(self._logps(t, pairs)["ref_chosen"])})
        self.stage(t, "learn", lambda: self._learn(t, pairs))
        save = self.stage(t, "save", lambda: self._save(t, pairs))
        self.stage(t, "sync", lambda: self._sync(t, save["probe_logp"]))
        self.stage(t, "eval", lambda: self._eval(t))

    def _load_learner_data(self, t: int):
        if self.state.is_done(t, "save"):
            return None
        from inpo.learn import total_steps

        rows = read_rows(self.iter_dir(t) / "pairs.jsonl")
        total_steps(
            self.cfg,
            len(rows),
            where=f"iteration {t}: ",
            hint="; raise data.prompts_per_iteration or lower the batch (dropped prompts by "
            "reason: the judge stage in state.json)",
        )
        pairs = tokenize_pairs(self.tokenizer, rows)
        if self.learner_iteration != t:
            from inpo.learn import pad_id_of

            self.learner.set_data(pairs, pad_id_of(self.tokenizer))
            self.learner_iteration = t
        return pairs

    def _logps(self, t: int, pairs):
        from inpo.learn import cache_logprobs

        return cache_logprobs(
            self.learner,
            pairs,
            self.policy_dir(t - 1),
            self.reference,
            self.iter_dir(t) / "logps.safetensors",
        )

    def _learn(self, t: int, pairs) -> dict:
        from inpo.learn import train_policy

        rows = train_policy(
            self.cfg,
            self.learner,
            len(pairs),
            self._logps(t, pairs),
            self.policy_dir(t - 1),
            self.iter_dir(t),
            desc=f"learn{t}",
            on_step=lambda m: self._tb_step(t, m),
        )
        self.engine_iteration = t
        first, last = rows[0], rows[-1]
        return {
            "steps": len(rows),
            "loss_first": first["loss"],
            "loss_last": last["loss"],
            "margin_last": last["margin"],
            "margin_target": last.get("margin_target"),
        }

    def _save(self, t: int, pairs) -> dict:
        from inpo.learn import export_policy

        expected = export_policy(
            self.cfg,
            self.learner,
            len(pairs),
            self.policy_dir(t - 1),
            self.iter_dir(t),
            self.probe,
            engine_ready=self.engine_iteration == t,
        )
        return {"probe_logp": expected}

    def _sync(self, t: int, expected: float) -> dict:
        target = self.policy_dir(t)
        if self.gen_policy == target:  # a resumed run started the generators from it
            info = self.generators.verify(self.probe, expected)
        else:
            info = self.generators.sync(target, self.probe, expected)
        self.gen_policy = target
        return info

    def _eval(self, t: int) -> dict:
        from inpo.evaluate import compare, mean_length, win_rate

        if not self.eval_ids:
            return {}
        new = self._eval_generate(f"eval{t}")
        ref = read_rows(self.run_dir / "eval_ref.jsonl")
        prev = ref if t == 1 else read_rows(self.iter_dir(t - 1) / "eval.jsonl")
        p_ref = compare(self.oracle, new, ref)
        p_prev = p_ref if t == 1 else compare(self.oracle, new, prev)
        for row, a, b in zip(new, p_ref, p_prev, strict=True):
            row["p_vs_ref"], row["p_vs_prev"] = a, b
        write_jsonl_atomic(self.iter_dir(t) / "eval.jsonl", new)
        vs_ref, vs_prev = win_rate(p_ref), win_rate(p_prev)
        return {
            "win_vs_ref": vs_ref["mean"],
            "win_vs_ref_ci": [vs_ref["ci_low"], vs_ref["ci_high"]],
            "win_vs_prev": vs_prev["mean"],
            "win_vs_prev_ci": [vs_prev["ci_low"], vs_prev["ci_high"]],
            "mean_length": mean_length(new),
            "ref_mean_length": mean_length(ref),
        }

    # --- reporting ------------------------------------------------------------
    def _tb_step(self, t: int, m: dict) -> None:
        if self.tb is not None:
            step = (t - 1) * 100_000 + m["step"]  # separates iterations on one axis
            for k in ("loss", "margin", "grad_norm", "lr"):
                self.tb.add_scalar(f"learn/{k}", m[k], step)

    def iteration_metrics(self, t: int) -> dict[str, Any]:
        row: dict[str, Any] = {"iteration": t}
        for stage in STAGES:
            if self.state.is_done(t, stage):
                info = self.state.info(t, stage)
                row[f"{stage}_seconds"] = info.get("seconds")
                row.update({k: v for k, v in info.items() if k != "seconds"})
        return row

    def report(self) -> list[dict[str, Any]]:
        rows = [
            self.iteration_metrics(t)
            for t in range(1, self.cfg.run.iterations + 1)
            if self.state.iteration_done(t)
        ]
        write_jsonl_atomic(self.run_dir / "metrics.jsonl", rows)
        if self.tb is not None and rows:
            r = rows[-1]
            for k in ("win_vs_ref", "win_vs_prev", "mean_length", "loss_last", "pairs"):
                if r.get(k) is not None:
                    self.tb.add_scalar(f"iteration/{k}", r[k], r["iteration"])
            self.tb.flush()
        if self.wandb is not None and rows:
            self.wandb.log({k: v for k, v in rows[-1].items() if isinstance(v, int | float)})
        return rows

    def run(self) -> list[dict[str, Any]]:
        from inpo.cluster import start_ray
        from inpo.report import plot, table

        self.prepare()
        todo = [
            t for t in range(1, self.cfg.run.iterations + 1) if not self.state.iteration_done(t)
        ]
        if todo:  # a finished run only reports: no actors to start
            self.tb = _tensorboard(self.cfg, self.run_dir)
            self.wandb = _wandb(self.cfg, self.run_dir)
            device = start_ray(self.cfg)
            try:
                self.start_actors(device)
                self.eval_reference()
                for t in todo:
                    self.iteration(t)
                    self.report()
            finally:
                self.shutdown()
        rows = self.report()
        print(table(rows))
        png = plot(rows, self.run_dir)
        print(f"final policy: {self.policy_dir(self.cfg.run.iterations)}; plot: {png}")
        return rows


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, list):
        return "[" + ", ".join(_fmt(x) for x in v) + "]"
    return str(v)


def _tensorboard(cfg: InpoConfig, run_dir: Path):
    if not cfg.run.tensorboard:
        return None
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(str(run_dir / "tb"))


def _wandb(cfg: InpoConfig, run_dir: Path):
    if not cfg.run.wandb_project:
        return None
    try:
        import wandb
    except ImportError as e:
        raise InpoError("run.wandb_project is set but wandb is not installed") from e
    return wandb.init(
        project=cfg.run.wandb_project,
        dir=str(run_dir),
        config=cfg.model_dump(mode="json"),
        resume="allow",
        id=json.loads((run_dir / STATE_FILE).read_text())["run_id"],
    )


def train(
    config_path: str | None = None, overrides: list[str] | None = None, resume: Path | None = None
) -> list[dict[str, Any]]:
    """`inpo train`: start a run, or resume one from its run directory."""
    from inpo.config import config_or_exit

    overrides = overrides or []
    if resume is not None:
        run_dir = resume
        if not (run_dir / STATE_FILE).exists():
            raise InpoError(f"{run_dir}: no {STATE_FILE}; not a run directory to resume")
        bad = [o for o in overrides if not o.startswith("run.") or o.startswith("run.seed")]
        if bad:
            raise InpoError(
                f"--resume keeps the run's config; only run.* overrides (not run.seed) are "
                f"allowed, got {bad[0]!r}"
            )
        cfg = config_or_exit(run_dir / CONFIG_FILE, overrides + [f"run.dir={run_dir}"])
        state = RunState.load(run_dir / STATE_FILE)
        print(f"resuming {run_dir}: {_describe_progress(state, cfg)}")
    else:
        cfg = config_or_exit(config_path, overrides)
        run_dir = Path(cfg.run.dir)
        if (run_dir / STATE_FILE).exists():
            raise InpoError(
                f"run.dir = {str(run_dir)!r} already holds a run; continue it with "
                f"`inpo train --resume {run_dir}` or choose another run.dir"
            )
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / CONFIG_FILE).write_text(cfg.to_yaml())
        state = RunState(run_dir / STATE_FILE)
        state.data["run_id"] = f"inpo-{int(time.time())}"
        state.save()
    return Trainer(cfg, run_dir, state).run()


def _describe_progress(state: RunState, cfg: InpoConfig) -> str:
    for t in range(1, cfg.run.iterations + 1):
        for stage in STAGES:
            if not state.is_done(t, stage):
                return f"continuing at iteration {t}, stage {stage}"
    return "all iterations done"
