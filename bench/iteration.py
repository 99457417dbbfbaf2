"""Wall time of one quickstart iteration, split by stage, and the orchestration overhead.

Runs the real loop (Ray, vLLM generator, DeepSpeed learner, synthetic oracle) for one
iteration of the CPU quickstart and prints each stage's share of the iteration's wall
time; "outside stages" is what the driver spends between them (loading pairs,
tokenising, Ray calls that belong to no stage).

    .venv/bin/python bench/iteration.py [overrides...]
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

from inpo.cluster import start_ray
from inpo.config import load_config
from inpo.pipeline import Trainer
from inpo.state import STAGES, RunState


def main(overrides: list[str]) -> None:
    run_dir = Path(tempfile.mkdtemp(prefix="inpo-bench-"))
    cfg = load_config(
        None, [f"run.dir={run_dir}", "run.iterations=1", "run.tensorboard=false", *overrides]
    )
    trainer = Trainer(cfg, run_dir, RunState(run_dir / "state.json"))
    t0 = time.perf_counter()
    trainer.prepare()
    device = start_ray(cfg)
    trainer.start_actors(device)
    trainer.eval_reference()
    setup = time.perf_counter() - t0
    t1 = time.perf_counter()
    try:
        trainer.iteration(1)
    finally:
        wall = time.perf_counter() - t1
        trainer.shutdown()
    stages = {s: trainer.state.info(1, s)["seconds"] for s in STAGES}
    outside = wall - sum(stages.values())
    print(
        f"\nquickstart iteration on {device}: {wall:.2f} s "
        f"(plus {setup:.1f} s start-up: Ray, actors, pi_ref eval)"
    )
    print(f"{'stage':<16}{'seconds':>9}{'share':>8}")
    for name, sec in [*stages.items(), ("outside stages", outside)]:
        print(f"{name:<16}{sec:>9.2f}{sec / wall:>8.1%}")
    print(f"orchestration overhead: {outside / wall:.1%} of the iteration")


if __name__ == "__main__":
    main(sys.argv[1:])
