"""`inpo train`: start a run, or resume one from its run directory, and hand it to the
Trainer. A config the run cannot use is refused (ConfigError) before anything is written
(or, found once models are resolved, with what was written removed)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from inpo.config import ConfigError, InpoConfig, config_or_exit
from inpo.durable import write_text_atomic
from inpo.errors import InpoError
from inpo.run.state import RunState
from inpo.run.trainer import Trainer

CONFIG_FILE = "config.yaml"
STATE_FILE = "state.json"


def train(
    config_path: str | None = None, overrides: list[str] | None = None, resume: Path | None = None
) -> list[dict[str, Any]]:
    """`inpo train`: start a run, or resume one from its run directory."""
    overrides = overrides or []
    if resume is not None:
        run_dir = resume
        if not (run_dir / STATE_FILE).exists():
            raise InpoError(f"{run_dir}: no {STATE_FILE}; not a run directory to resume")
        # data.allow_reuse only lets the iterations still to come draw prompts again (a run
        # extended past its pool), like run.iterations it changes nothing already done.
        bad = [
            o
            for o in overrides
            if not o.startswith(("run.", "data.allow_reuse=")) or o.startswith("run.seed")
        ]
        if bad:
            raise InpoError(
                f"--resume keeps the run's config; only run.* overrides (not run.seed) and "
                f"data.allow_reuse are allowed, got {bad[0]!r}"
            )
        cfg = config_or_exit(run_dir / CONFIG_FILE, overrides + [f"run.dir={run_dir}"])
        state = RunState.load(run_dir / STATE_FILE)
        print(f"resuming {run_dir}: {state.progress(cfg.run.iterations)}")
    else:
        cfg = config_or_exit(config_path, overrides)
        cfg.check_train_lengths()  # ConfigError: the CLI prints it and exits 2
        run_dir = Path(cfg.run.dir)
        if (run_dir / STATE_FILE).exists():
            raise InpoError(
                f"run.dir = {str(run_dir)!r} already holds a run; continue it with "
                f"`inpo train --resume {run_dir}` or choose another run.dir"
            )
        run_dir.mkdir(parents=True, exist_ok=True)
        write_text_atomic(run_dir / CONFIG_FILE, cfg.to_yaml())
        state = RunState(run_dir / STATE_FILE)
        state.data["run_id"] = f"inpo-{int(time.time())}"
        state.save()
    trainer = Trainer(cfg, run_dir, state)
    try:
        trainer.prepare()
        if resume is not None:
            save_config(run_dir, cfg)
        return trainer.run()  # refuses a layout the cluster's GPUs cannot colocate
    except ConfigError:
        if resume is None and not state.data.get("done"):
            # nothing ran: leave no run behind, so the fixed config can start
            (run_dir / STATE_FILE).unlink()
            (run_dir / CONFIG_FILE).unlink()
        raise


def save_config(run_dir: Path, cfg: InpoConfig) -> None:
    """Record a resumed run's config with its overrides (run.iterations=5), durably: a
    later plain `--resume` (a requeued SLURM job) reads config.yaml and must keep them."""
    text = cfg.to_yaml()
    if (run_dir / CONFIG_FILE).read_text() != text:
        write_text_atomic(run_dir / CONFIG_FILE, text)
