"""The run state: which stages of which iteration are done, kept in state.json.

Written atomically (temp file, fsync, rename), so a crash leaves either the old
or the new state, never a torn one. Resume = continue at the first stage that
is not marked done.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

STAGES = ("generate", "judge", "logps", "learn", "save", "sync", "eval")


def write_json_atomic(path: Path, data: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w") as f:
        json.dump(data, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)


class RunState:
    def __init__(self, path: Path, data: dict[str, Any] | None = None):
        self.path = path
        self.data = data or {"version": 1, "done": {}, "running": None, "setup": []}

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

    def iteration_done(self, iteration: int) -> bool:
        return all(self.is_done(iteration, s) for s in STAGES)
