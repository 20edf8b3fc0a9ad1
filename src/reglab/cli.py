"""What reglab's console commands share: one-line errors, exit statuses, a quick exit.

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


def run_console(main: Callable[[], object]) -> NoReturn:
    """Run a console command, then end the process without Python's teardown.

    Tearing down torch's and Lightning's modules takes 1.5–2 s on a 2-core machine (a
    sweep's parent, with matplotlib and Hydra's plugins loaded, about 0.4 s) and writes
    nothing a finished command needs: its files are closed, its TensorBoard writers
    flushed, and logging is shut down here first. Exceptions other than ``SystemExit``
    propagate as usual, with the usual teardown.
    """
    try:
        main()
        code = 0
    except SystemExit as exc:
        code = _status(exc.code)
    import logging

    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _status(code: object) -> int:
    """The process status ``sys.exit(code)`` would give."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1
