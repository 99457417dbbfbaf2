"""Faults: the record of the real ones (run_dir/faults.jsonl) and injection for the tests.

INPO_CRASH_AT=<point>[#n] SIGKILLs the driver the n-th time (default: the first) it
reaches <point>; INPO_KILL_AT=<role>:<index>@<point>[#n][,...] SIGKILLs that actor's
process there instead (role and index as in placement.json), and the driver carries on.

Points: generate, generate.chunk, judge, logps, learn.step<N>, save (inside those stages),
and <stage>.written for every stage (its output written, not yet marked done). A real
SIGKILL (no cleanup, no atexit) is the harshest crash a run can meet.
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

_seen: Counter[str] = Counter()
#: SIGKILLs an actor named "role:index" (set by inpo.run.fleet while actors run)
killer: Callable[[str], None] | None = None


def _reached(var: str, name: str) -> list[str]:
    """The specs of INPO_<var> (comma-separated) due at ``name`` now: what precedes their
    "@" ("" for INPO_CRASH_AT)."""
    due = []
    for spec in filter(None, os.environ.get(var, "").split(",")):
        target, _, point = spec.rpartition("@")
        want, _, nth = point.partition("#")
        if want != name:
            continue
        _seen[spec] += 1
        if _seen[spec] == int(nth or 1):
            due.append(target)
    return due


def reset() -> None:
    """Forget the points reached and the actor killer: a new run in the same process (the
    tests' in-process runs) counts its kill points from zero."""
    global killer
    _seen.clear()
    killer = None


def crash_point(name: str) -> None:
    if _reached("INPO_CRASH_AT", name):
        os.kill(os.getpid(), signal.SIGKILL)
    for actor in _reached("INPO_KILL_AT", name):
        if killer is not None:
            killer(actor)


def record_fault(run_dir: Path, **row: Any) -> dict[str, Any]:
    """Append one fault (time first) to run_dir/faults.jsonl, durably; returns the row."""
    path = run_dir / FAULTS_FILE
    rows = [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []
    row = {"time": datetime.now(UTC).isoformat(timespec="seconds"), **row}
    write_jsonl_atomic(path, [*rows, row])
    return row
