"""Wall time of one iteration, split by stage, and the orchestration overhead.

Runs the real loop (Ray, vLLM generator, DeepSpeed learner, the configured oracle) for
one iteration and prints each stage's share of the iteration's wall time; "outside
stages" is what the driver spends between them (loading pairs, tokenising, Ray calls
that belong to no stage). Actors are started (and pi_ref evaluated) before the clock.

    .venv/bin/python bench/iteration.py [CONFIG] [overrides...]     (default: quickstart)
    .venv/bin/python bench/iteration.py configs/smollm2.yaml        (the real model)
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

from inpo.config import load_config
from inpo.run.state import RunState
from inpo.run.trainer import Trainer
from inpo.stages import STAGES, Role


def main(args: list[str]) -> None:
    config = args.pop(0) if args and "=" not in args[0] else None
    run_dir = Path(tempfile.mkdtemp(prefix="inpo-bench-"))
    cfg = load_config(
        config, [*args, f"run.dir={run_dir}", "run.iterations=1", "run.tensorboard=false"]
    )
    trainer = Trainer(cfg, run_dir, RunState(run_dir / "state.json"))
    t0 = time.perf_counter()
    trainer.prepare()
    trainer.start("bench")
    try:
        trainer.setup()
        trainer.fleet.ensure(list(Role), policy=trainer.policy(1))
        setup = time.perf_counter() - t0
        t1 = time.perf_counter()
        trainer.iteration(1)
        wall = time.perf_counter() - t1
    finally:
        trainer.shutdown()
    stages = {s: trainer.state.info(1, s)["seconds"] for s in STAGES}
    outside = wall - sum(stages.values())
    print(
        f"\none iteration of {config or 'the quickstart'} on {trainer.fleet.device}: {wall:.2f} s "
        f"(plus {setup:.1f} s start-up: Ray, actors, pi_ref eval)"
    )
    print(f"{'stage':<16}{'seconds':>9}{'share':>8}")
    for name, sec in [*stages.items(), ("outside stages", outside)]:
        print(f"{name:<16}{sec:>9.2f}{sec / wall:>8.1%}")
    print(f"orchestration overhead: {outside / wall:.1%} of the iteration")


if __name__ == "__main__":
    main(sys.argv[1:])
