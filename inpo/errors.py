"""User-facing errors: the CLI prints them as one line and exits non-zero."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager


class InpoError(Exception):
    """A problem the user can fix; the message names what and where."""


class ActorError(InpoError):
    """An actor failed; the message names it and the root cause. ``actor`` is its role and
    index as in placement.json ("generator 0"), ``died`` whether its process is gone."""

    def __init__(self, message: str, actor: str = "", died: bool = False):
        super().__init__(message)
        self.actor, self.died = actor, died


@contextmanager
def user_errors() -> Iterator[None]:
    try:
        yield
    except InpoError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(1) from None
    except KeyboardInterrupt:
        print("interrupted; resume with `inpo train --resume RUN_DIR`", file=sys.stderr)
        raise SystemExit(130) from None
