"""Faults: the record of the real ones (run_dir/faults.jsonl) and injection for the tests.

INPO_CRASH_AT=<point>[#n] SIGKILLs the driver the n-th time (default: the first) it
reaches <point>; INPO_KILL_AT=<role>:<index>@<point>[#n][,...] SIGKILLs that actor's
process there instead (role and index as in placement.json), and the driver carries on.

Points: generate, generate.chunk, judge, logps, learn.step<N>, save (inside those stages),
and <stage>.written for every stage (its output written, not yet marked done). A real
SIGKILL (no cleanup, no atexit) is the harshest crash a run can meet. Each run reads the
variables once, into the `Faults` it hands its stages: no state outlives it.
"""

from __future__ import annotations

import json
import os
import signal
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from inpo.durable import write_jsonl_atomic

FAULTS_FILE = "faults.jsonl"


class Faults:
    """The kill points of one run (or command), read from the environment when it starts;
    handed to every stage function that has a point, and by the fleet the actor killer."""

    def __init__(self, crash_at: str = "", kill_at: str = ""):
        self.specs = {"crash": crash_at, "kill": kill_at}
        self.seen: Counter[str] = Counter()
        #: SIGKILLs an actor named "role:index" (set by inpo.run.fleet while actors run)
        self.killer: Callable[[str], None] | None = None

    @classmethod
    def from_env(cls) -> Faults:
        return cls(os.environ.get("INPO_CRASH_AT", ""), os.environ.get("INPO_KILL_AT", ""))

    def _reached(self, kind: str, name: str) -> list[str]:
        """The specs of ``kind`` (comma-separated) due at ``name`` now: what precedes
        their "@" ("" for a crash of the driver)."""
        due = []
        for spec in filter(None, self.specs[kind].split(",")):
            target, _, point = spec.rpartition("@")
            want, _, nth = point.partition("#")
            if want != name:
                continue
            self.seen[kind + spec] += 1
            if self.seen[kind + spec] == int(nth or 1):
                due.append(target)
        return due

    def point(self, name: str) -> None:
        """A kill point: SIGKILL this process, or the actors named, when one is due."""
        if self._reached("crash", name):
            os.kill(os.getpid(), signal.SIGKILL)
        for actor in self._reached("kill", name):
            if self.killer is not None:
                self.killer(actor)


#: for stage functions called outside a run or command (tests, benchmarks): no points
NO_FAULTS = Faults()


def record_fault(run_dir: Path, **row: Any) -> dict[str, Any]:
    """Append one fault (time first) to run_dir/faults.jsonl, durably; returns the row."""
    path = run_dir / FAULTS_FILE
    rows = [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []
    row = {"time": datetime.now(UTC).isoformat(timespec="seconds"), **row}
    write_jsonl_atomic(path, [*rows, row])
    return row
