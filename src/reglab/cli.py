"""What reglab's console commands share: one-line errors and exit statuses.

Imports nothing heavy: these run before (or instead of) torch.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import NoReturn

#: Exit status for input reglab (or Hydra) rejects.
BAD_INPUT = 2


def fail(prog: str, exc: BaseException) -> NoReturn:
    """Report a user error as one line and exit 2 (the traceback with HYDRA_FULL_ERROR=1)."""
    if os.environ.get("HYDRA_FULL_ERROR") == "1":
        raise exc
    print(f"{prog}: error: {exc}", file=sys.stderr, flush=True)
    sys.exit(BAD_INPUT)


def run_hydra_app(app: Callable[[], object]) -> None:
    """Run a ``hydra.main`` app; Hydra's own exit 1 (a config it cannot compose) is bad
    input, so it becomes 2."""
    try:
        app()
    except SystemExit as exc:
        if exc.code == 1:
            sys.exit(BAD_INPUT)
        raise
