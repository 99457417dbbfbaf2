"""The run state: which stages (inpo.stages) of which iteration are done.

The state lives in state.json, written atomically (temp file, fsync, rename), so a crash
leaves either the old or the new state, never a torn one. Resume = continue at the first
stage that is not marked done. Each done stage also records a manifest (size and sha256)
of the files it wrote, so a resumed run can prove they are still whole.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from inpo.durable import damaged, write_json_atomic
from inpo.learning.stage import complete_checkpoints
from inpo.stages import STAGES, stages_of


class RunState:
    def __init__(self, path: Path, data: dict[str, Any] | None = None):
        self.path = path
        self.data = data or {"version": 2, "done": {}, "running": None}

    @classmethod
    def load(cls, path: Path) -> RunState:
        return cls(path, json.loads(path.read_text()))

    def save(self) -> None:
        write_json_atomic(self.path, self.data)

    def is_done(self, iteration: int, stage: str) -> bool:
        return stage in self.data["done"].get(str(iteration), {})

    def info(self, iteration: int, stage: str) -> dict[str, Any]:
        return self.data["done"][str(iteration)][stage]

    def start(self, iteration: int, stage: str) -> None:
        self.data["running"] = {"iteration": iteration, "stage": stage, "since": time.time()}
        self.save()

    def finish(self, iteration: int, stage: str, info: dict[str, Any] | None = None) -> None:
        self.data["done"].setdefault(str(iteration), {})[stage] = info or {}
        self.data["running"] = None
        self.save()

    def undo_from(self, iteration: int, stage: str) -> None:
        """Forget ``stage`` of ``iteration`` and every later stage of that iteration."""
        names = [s.name for s in stages_of(iteration)]
        done = self.data["done"].get(str(iteration), {})
        for name in names[names.index(stage) :]:
            done.pop(name, None)
        self.save()

    def iteration_done(self, iteration: int) -> bool:
        return all(self.is_done(iteration, s) for s in STAGES)

    def progress(self, iterations: int) -> str:
        """Where a resumed run of ``iterations`` continues, for its first line."""
        for t in range(1, iterations + 1):
            for stage in STAGES:
                if not self.is_done(t, stage):
                    return f"continuing at iteration {t}, stage {stage}"
        return "all iterations done"


def redo_damaged(state: RunState, run_dir: Path, iterations: int) -> None:
    """Redo what a resumed run would read but is no longer whole on disk (a power loss
    after the mark, a file changed by hand): the setup stages and the done stages of
    the first unfinished iteration and the one before it."""
    first = next((t for t in range(1, iterations + 1) if not state.iteration_done(t)), None)
    if first is None:
        return
    for t in (0, *range(max(1, first - 1), first + 1)):
        root = run_dir / f"iter_{t}" if t else run_dir
        for spec in stages_of(t):
            if not state.is_done(t, spec.name):
                continue
            why = damaged(root, state.info(t, spec.name).get("outputs", {}))
            if why is None:
                continue
            redo = spec.name
            if redo == "save" and not complete_checkpoints(root / "checkpoints"):
                redo = "learn"  # the step checkpoints were dropped once pi_{t+1} was saved
            where = f"iteration {t}" if t else "setup"
            print(f"{where}: stage {spec.name} is marked done but {why}; redoing from {redo}")
            state.undo_from(t, redo)
            break
