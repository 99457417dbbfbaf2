"""Fault injection for the resume tests: INPO_CRASH_AT=<point>[#n] SIGKILLs the driver the
n-th time (default: the first) it reaches <point>.

Points: generate, judge, logps, learn.step<N>, save (inside those stages), and
<stage>.written for every stage (its output written, not yet marked done). A real
SIGKILL (no cleanup, no atexit) is the harshest crash a run can meet.
"""

from __future__ import annotations

import os
import signal
from collections import Counter

_seen: Counter[str] = Counter()


def crash_point(name: str) -> None:
    want, _, nth = os.environ.get("INPO_CRASH_AT", "").partition("#")
    if want != name:
        return
    _seen[name] += 1
    if _seen[name] == int(nth or 1):
        os.kill(os.getpid(), signal.SIGKILL)
