"""Fault injection for the resume tests: INPO_CRASH_AT=<point> SIGKILLs the driver there.

Points: generate, judge, logps, learn.step<N>, save. A real SIGKILL (no
cleanup, no atexit) is the harshest crash a run can meet.
"""

from __future__ import annotations

import os
import signal


def crash_point(name: str) -> None:
    if os.environ.get("INPO_CRASH_AT") == name:
        os.kill(os.getpid(), signal.SIGKILL)
