"""The online loop: one driver walks the stage table (`inpo.stages`: setup, then T
iterations of generate judge logps learn save sync eval), one method `_<name>` per stage.

A stage writes under run_dir/iter_<t>/, flushes its files to disk and records their
checksums, then is marked done in state.json; a resumed run checks the checksums of what
it will read, redoes a stage whose output is damaged, and continues at the first stage not
done. A stage redone after a crash between "written" and "marked done" gives the same
output (seeded sampling, deterministic data order). Actors start when a stage first needs
them (`inpo.run.fleet`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from transformers import AutoTokenizer

from inpo.config import InpoConfig
from inpo.data import PromptSets, load_prompt_sets, probe_sequence, tokenize_pairs
from inpo.durable import (
    fsync_tree,
    manifest,
    read_jsonl_prefix,
    write_json_atomic,
    write_jsonl_atomic,
)
from inpo.faults import Faults
from inpo.generation.stage import sample
from inpo.judging.stage import pair_rows, parse_info, select_in_chunks
from inpo.learning.stage import (
    cache_logps,
    check_win_rates,
    drop_checkpoints,
    export_policy,
    pad_id_of,
    total_steps,
    train_policy,
)
from inpo.models import resolve_model
from inpo.plan.cluster import start_ray
from inpo.plan.placement import laid_out
from inpo.rows import (
    AnswerRow,
    GenerationRow,
    read_answers,
    read_generations,
    read_pairs,
    write_rows,
)
from inpo.run.evaluate import eval_rows, judge_against, response_metrics
from inpo.run.fleet import Fleet
from inpo.run.report import Reporter, format_value, init_row, iteration_row, plot, table
from inpo.run.state import RunState, redo_damaged
from inpo.stages import BY_NAME, ITERATION, Role


class Trainer:
    def __init__(self, cfg: InpoConfig, run_dir: Path, state: RunState):
        self.cfg, self.run_dir, self.state = cfg, run_dir, state
        self.fleet: Fleet | None = None  # the actors, once Ray is up
        self.learner_pairs: int | None = None  # the iteration whose pairs the learner holds
        self.engine_iteration: int | None = None  # the iteration the learner's engine trained
        self.reporter = None
        self.pairs: dict[int, Any] = {}
        self.base_policy = self.reference = ""
        self.tokenizer = self.probe = None
        self.prompts = PromptSets([], [], [], [])
        self.faults = Faults.from_env()  # the tests' kill points

    # --- paths ----------------------------------------------------------------
    def iter_dir(self, t: int) -> Path:
        return self.run_dir / f"iter_{t}"

    def policy(self, t: int) -> str:
        """pi_t's directory: the initial policy for t = 1, else iteration t-1's output."""
        return self.base_policy if t == 1 else str(self.iter_dir(t - 1) / "policy")

    def reset_at(self, t: int) -> int:
        """The iteration whose starting policy is iteration t's pi_ref under COMAL's
        loss.reference_reset_every = K (pi_{K+1} for t in K+1..2K, ...); 0: model.reference."""
        k = self.cfg.loss.reference_reset_every
        return k * ((t - 1) // k) + 1 if k and t > k else 0

    def reference_for(self, t: int) -> str:
        """pi_ref of iteration t's loss (eval's win rate stays against model.reference).
        SPPO anchors to pi_t alone: its pi_ref columns are pi_t's, at no extra forward."""
        if self.cfg.loss.type == "sppo":
            return self.policy(t)
        return self.policy(self.reset_at(t)) if self.reset_at(t) else self.reference

    def history(self, t: int) -> list[str]:
        """MNPO's past iterates pi_{t-1}, pi_{t-2}, ... that loss.history_weights weighs and
        that exist at iteration t."""
        weights = self.cfg.loss.history_weights or []
        return [self.policy(t - j) for j in range(1, min(len(weights), t))]

    def objective(self, t: int) -> dict[str, Any]:
        """What iteration t's loss trains against, for metrics.jsonl: the loss type, the
        normalised weights of the iterates it mixes (MNPO) and pi_ref's iteration (COMAL)."""
        loss, info = self.cfg.loss, {"loss_type": self.cfg.loss.type}
        label = loss.type
        if loss.history_weights:
            used = loss.history_weights[: len(self.history(t)) + 1]
            info["history_weights"] = [w / sum(used) for w in used]
            label += " " + "/".join(f"{w:.2f}" for w in info["history_weights"])
        if loss.reference_reset_every:
            info["reference_iteration"] = self.reset_at(t)  # 0: model.reference
            label += f", pi_ref=pi_{self.reset_at(t)}" if self.reset_at(t) else ", pi_ref"
        if label != "inpo":
            info["objective"] = label
        return info

    # --- set-up ---------------------------------------------------------------
    def prepare(self) -> None:
        cfg = self.cfg
        # First, before any model is built: a run short of prompts is refused (ConfigError).
        self.prompts = load_prompt_sets(cfg.data, cfg.run.iterations, cfg.run.seed)
        tiny = {
            "layers": cfg.model.tiny_layers,
            "hidden": cfg.model.tiny_hidden,
            "tied_embeddings": cfg.model.tiny_tied_embeddings,
            "seed": cfg.run.seed,
        }
        self.base_policy = str(resolve_model(cfg.model.policy, "model.policy", self.run_dir, tiny))
        ref = cfg.model.reference or cfg.model.policy
        self.reference = str(resolve_model(ref, "model.reference", self.run_dir, tiny))
        self.tokenizer = AutoTokenizer.from_pretrained(self.base_policy)
        self.probe = probe_sequence(self.tokenizer)
        write_json_atomic(
            self.run_dir / "splits.json",
            {"train": self.prompts.train_ids, "eval": self.prompts.eval_ids},
        )

    def hold(self, t: int) -> dict[str, Any]:
        """The generators hold pi_t, checked against the probe log-prob and weights hash
        the learner recorded when iteration t-1 saved it (pi_1, the user's: none)."""
        if t == 1:
            return self.fleet.hold(self.policy(1))
        info = self.state.info(t - 1, "save")
        return self.fleet.hold(self.policy(t), info["probe_logp"], info["weights_sha256"])

    def shutdown(self) -> None:
        try:
            if self.fleet is not None:
                self.fleet.shutdown()
        finally:
            if self.reporter is not None:
                self.reporter.close()

    # --- the stage runner -------------------------------------------------------
    def stage(self, t: int, name: str, fn: Callable[[], dict[str, Any] | None]) -> dict:
        """Run a stage unless done: time it, flush and checksum its outputs, mark it done
        and print one line."""
        if self.state.is_done(t, name):
            return self.state.info(t, name)
        spec = BY_NAME[name]
        self.state.start(t, name)
        t0 = time.perf_counter()
        self.fleet.enter(name)
        info = self.fleet.until_done(t, name, fn, self._restarted)
        self.fleet.leave(t, name)
        root = self.iter_dir(t) if t else self.run_dir
        outputs = [root / o for o in spec.outputs if (root / o).exists()]
        for path in outputs:
            fsync_tree(path)
        info["seconds"] = time.perf_counter() - t0
        info["outputs"] = manifest(root, outputs)
        self.faults.point(f"{name}.written")
        self.state.finish(t, name, info)
        label = f"iter {t}" if t else "setup"
        shown = {k: v for k, v in info.items() if k not in ("seconds", "outputs")}
        extra = ", ".join(f"{k}={format_value(v)}" for k, v in shown.items())
        print(f"[{label}] {name} done in {info['seconds']:.1f}s" + (f" ({extra})" if extra else ""))
        return info

    def _restarted(self, role: str) -> None:
        if role == "learner":
            self.learner_pairs = self.engine_iteration = None  # a new group holds none

    # --- stages -----------------------------------------------------------------
    def _sample(self, pool: list, ids: list[int], purpose: str, *args, **kw) -> list[GenerationRow]:
        prompts = [pool[i] for i in ids]
        gens, cfg, tok = self.fleet.generators, self.cfg, self.tokenizer
        return sample(gens, cfg, tok, prompts, ids, purpose, *args, **kw, faults=self.faults)

    def _eval_rows(self, purpose: str) -> list[AnswerRow]:
        """One answer per held-out prompt from the policy the generators hold."""
        cfg = self.cfg
        pool, ids = self.prompts.eval_pool, self.prompts.eval_ids
        max_tokens = cfg.eval.max_new_tokens or cfg.generation.max_new_tokens
        rows = self._sample(pool, ids, purpose, 1, cfg.eval.temperature, max_tokens)
        return eval_rows(rows)

    def _judge_against(self, new: list[AnswerRow], old: dict[str, list[AnswerRow]]) -> dict:
        self.fleet.ensure([Role.JUDGE])
        return judge_against(self.fleet.oracle, self.cfg, new, old)

    def _eval_ref(self) -> dict:
        self.fleet.hold(self.reference)  # the user's: no recorded probe or hash
        rows = self._eval_rows("eval_ref")
        write_rows(self.run_dir / "eval_ref.jsonl", rows)
        return {"prompts": len(rows), **response_metrics(self.cfg, rows)}

    def _eval_init(self) -> dict:
        self.hold(1)
        rows = self._eval_rows("eval_init")
        info = self._judge_against(rows, {"ref": read_answers(self.run_dir / "eval_ref.jsonl")})
        write_rows(self.run_dir / "eval_init.jsonl", rows)
        return info

    def _generate(self, t: int) -> dict:
        self.hold(t)
        g = self.cfg.generation
        pool, ids = self.prompts.iteration(t, self.cfg.data)
        partial = self.iter_dir(t) / "generations.partial.jsonl"
        kept = len(read_jsonl_prefix(partial))  # what generate_rows will keep of it
        rows = self._sample(
            pool, ids, f"generate{t}", g.num_samples, g.temperature, g.max_new_tokens, partial
        )
        self.faults.point("generate")
        write_rows(self.iter_dir(t) / "generations.jsonl", rows)
        partial.unlink(missing_ok=True)
        n_tok = sum(len(x) for r in rows for x in r["response_ids"])
        kept_info = {"kept_prompts": kept} if kept else {}
        return {"prompts": len(rows), "skipped": len(ids) - len(rows), "tokens": n_tok, **kept_info}

    def _judge(self, t: int) -> dict:
        cfg = self.cfg
        self.fleet.ensure([Role.JUDGE])
        rows = read_generations(self.iter_dir(t) / "generations.jsonl")
        cut_before = self.fleet.oracle.truncated()  # the oracle also serves eval
        mass_before, verdicts_before = self.fleet.oracle.verdicts()
        parsed_before = self.fleet.oracle.parse_counts()
        partial = self.iter_dir(t) / "judge.partial.jsonl"
        selections, kept = select_in_chunks(
            rows, self.fleet.oracle, cfg, partial, f"judge{t}", self.faults
        )
        pairs, dropped = pair_rows(rows, selections, cfg.pairing.label, cfg.run.seed)
        write_rows(self.iter_dir(t) / "pairs.jsonl", pairs)
        partial.unlink(missing_ok=True)
        info = {
            "pairs": len(pairs),
            "dropped": dict(dropped),
            "comparisons": sum(s.n_comparisons for s in selections),
            "truncated": self.fleet.oracle.truncated() - cut_before,
        }
        mass, verdicts = self.fleet.oracle.verdicts()
        if verdicts > verdicts_before:  # judges that read P off choice tokens (llm, http)
            info["verdict_mass"] = (mass - mass_before) / (verdicts - verdicts_before)
        info |= parse_info(self.fleet.oracle.parse_counts().minus(parsed_before))
        return info | ({"kept_prompts": kept} if kept else {})

    def _learner_pairs(self, t: int):
        """Iteration t's pairs, held by the learner."""
        if t not in self.pairs:
            path = self.iter_dir(t) / "pairs.jsonl"
            rows = read_pairs(path)
            check_win_rates(self.cfg, rows, path)
            pairs = tokenize_pairs(self.tokenizer, rows)
            total_steps(
                self.cfg,
                pairs,
                where=f"iteration {t}: ",
                hint="; raise data.prompts_per_iteration or lower the batch (dropped pairs "
                "by reason: the judge stage in state.json)",
            )
            self.pairs = {t: pairs}
        self.fleet.ensure([Role.LEARNER])
        if self.learner_pairs != t:
            self.fleet.learner.set_data(self.pairs[t], pad_id_of(self.tokenizer))
            self.learner_pairs = t
        return self.pairs[t]

    def _cache(self, t: int):
        pairs = self._learner_pairs(t)
        path = self.iter_dir(t) / "logps.safetensors"
        learner, ref = self.fleet.learner, self.reference_for(t)
        return cache_logps(learner, pairs, self.policy(t), ref, path, self.faults, self.history(t))

    def _logps(self, t: int) -> dict:
        return {"pairs": len(self._cache(t)["ref_chosen"]), **self.objective(t)}

    def _learn(self, t: int) -> dict:
        cache = self._cache(t)
        rows, summary = train_policy(
            self.cfg,
            self.fleet.learner,
            self._learner_pairs(t),
            cache,
            self.policy(t),
            self.iter_dir(t),
            desc=f"learn{t}",
            on_step=lambda m: self.reporter.learn_step(t, m),
            faults=self.faults,
        )
        self.engine_iteration = t
        return {"steps": len(rows), **summary, "margin_last": rows[-1]["margin"]}

    def _save(self, t: int) -> dict:
        pairs = self._learner_pairs(t)
        return export_policy(
            self.cfg,
            self.fleet.learner,
            pairs,
            self.policy(t),
            self.iter_dir(t),
            self.probe,
            engine_ready=self.engine_iteration == t,
            faults=self.faults,
            keep=self.cfg.generation.sync_in_memory,  # for the sync stage, next
        )

    def _sync(self, t: int) -> dict:
        return self.hold(t + 1)

    def _eval(self, t: int) -> dict:
        if not self.prompts.eval_ids:
            return {}
        self.hold(t + 1)
        new = self._eval_rows(f"eval{t}")
        ref = read_answers(self.run_dir / "eval_ref.jsonl")
        if t > 1:
            prev = read_answers(self.iter_dir(t - 1) / "eval.jsonl")
        elif self.state.is_done(0, "eval_init"):
            prev = read_answers(self.run_dir / "eval_init.jsonl")
        else:
            prev = ref  # pi_1 = pi_ref
        info = self._judge_against(new, {"ref": ref, "prev": prev})
        write_rows(self.iter_dir(t) / "eval.jsonl", new)
        return info

    # --- the loop -----------------------------------------------------------------
    def setup(self) -> None:
        if not self.prompts.eval_ids:
            return
        self.stage(0, "eval_ref", self._eval_ref)
        if self.reference != self.policy(1):
            self.stage(0, "eval_init", self._eval_init)

    def iteration(self, t: int) -> None:
        self.iter_dir(t).mkdir(parents=True, exist_ok=True)
        for spec in ITERATION:
            self.stage(t, spec.name, lambda run=getattr(self, f"_{spec.name}"): run(t))
            if spec.name == "save":  # only once pi_{t+1} is saved and recorded
                drop_checkpoints(self.iter_dir(t))

    def rows(self) -> list[dict[str, Any]]:
        first = init_row(self.state)
        return ([first] if first else []) + [
            iteration_row(self.state, t)
            for t in range(1, self.cfg.run.iterations + 1)
            if self.state.iteration_done(t)
        ]

    def start(self, run_id: str) -> None:
        """Ray, the (not yet started) actors and the reporter."""
        self.reporter = Reporter(self.cfg, self.run_dir, run_id)
        device = start_ray(self.cfg)
        self.cfg = laid_out(self.cfg, device)  # run.colocate, and the counts it fills in
        self.fleet = Fleet(self.cfg, self.run_dir, device, self.probe, self.faults)

    def run(self) -> list[dict[str, Any]]:
        """The loop, once `prepare` has run."""
        redo_damaged(self.state, self.run_dir, self.cfg.run.iterations)
        todo = [
            t for t in range(1, self.cfg.run.iterations + 1) if not self.state.iteration_done(t)
        ]
        if todo:  # a finished run only reports: no actors to start
            self.start(self.state.data["run_id"])
            try:
                self.setup()
                for t in todo:
                    self.iteration(t)
                    rows = self.rows()
                    write_jsonl_atomic(self.run_dir / "metrics.jsonl", rows)
                    self.reporter.iteration(rows[-1])
            finally:
                self.shutdown()
        rows = self.rows()
        write_jsonl_atomic(self.run_dir / "metrics.jsonl", rows)
        print(table(rows))
        png = plot(rows, self.run_dir)
        print(f"final policy: {self.policy(self.cfg.run.iterations + 1)}; plot: {png}")
        return rows
