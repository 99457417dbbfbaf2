"""User-facing errors: the CLI prints them as one line and exits non-zero."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager


class InpoError(Exception):
    """A problem the user can fix; the message names what and where."""


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
