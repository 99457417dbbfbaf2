"""User-facing errors: the CLI prints them as one line and exits non-zero."""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager


class InpoError(Exception):
    """A problem the user can fix; the message names what and where."""


class ConfigError(ValueError):
    """A config problem, already phrased as one line naming field and value."""


class ActorError(InpoError):
    """An actor failed; the message names it and the root cause. ``actor`` is its role and
    index as in placement.json ("generator 0"), ``died`` whether its process is gone."""

    def __init__(self, message: str, actor: str = "", died: bool = False):
        super().__init__(message)
        self.actor, self.died = actor, died


#: pydantic's summary line ("1 validation error for ModelConfig"), its footer, and the
#: "[type=..., input_value=...]" tail of an error line
_VALIDATION = re.compile(r"\d+ validation errors? for (\S+)$")
_FOOTER = "For further information visit"
_DETAIL = re.compile(r"\s*\[type=.*\]$")


def message_line(text: str) -> str:
    """An exception's message on one line: for a pydantic validation error (vLLM's engine
    config checks) its first error, the model and field it names and what is wrong; for
    any other its last line (the end of a quoted traceback)."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    lines = [line for line in lines if not line.startswith(_FOOTER)]
    for i, line in enumerate(lines[:-1]):
        if head := _VALIDATION.match(line):
            where, what = head.group(1), lines[i + 1]
            if "[type=" not in what and i + 2 < len(lines):  # a field line, then its error
                where, what = f"{where}.{what}", lines[i + 2]
            return f"{where}: {_DETAIL.sub('', what)}"
    return lines[-1] if lines else ""


@contextmanager
def user_errors() -> Iterator[None]:
    try:
        yield
    except InpoError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(1) from None
    except ConfigError as e:  # a config refused before anything ran
        print(str(e), file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        print("interrupted; resume with `inpo train --resume RUN_DIR`", file=sys.stderr)
        raise SystemExit(130) from None
