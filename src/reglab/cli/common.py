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


def run(main: Callable[[], object]) -> None:
    """Run a console command, then let Python exit as usual: ``atexit`` handlers run and
    loggers finish their files.

    What made that exit slow (1–2 s after torch and Lightning are loaded) is the final
    garbage collection walking every object those libraries created; ``gc.freeze()``
    moves them out of the collector's reach first, so the exit costs ~0.2 s.
    """
    import gc

    try:
        main()
    finally:
        gc.freeze()


def experiment_argv(argv: list[str]) -> list[str]:
    """``+experiment=NAME`` (the form Hydra's docs use for a group with no default) as
    ``experiment=NAME``: the root config lists ``experiment: null``, where Hydra would
    reject the ``+`` form as a second value."""
    return [a.removeprefix("+") if a.startswith("+experiment=") else a for a in argv]


def asks_for_help(argv: list[str]) -> bool:
    """Whether the command line asks Hydra for a help page (``--help``, ``-h``,
    ``--hydra-help``), which composes the config but runs nothing."""
    return any(a in ("--help", "-h", "--hydra-help") for a in argv[1:])


def run_hydra_app(prog: str, app: Callable[[], object]) -> None:
    """Run a ``hydra.main`` app; Hydra's own exit 1 (a config it cannot compose) is bad
    input, so it becomes 2, and so is a composition error Hydra lets through as it is
    (its ``--help`` page does), reported in one line."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    try:
        app()
    except (HydraException, OmegaConfBaseException) as exc:
        fail(prog, exc)
    except SystemExit as exc:
        if exc.code == 1:
            sys.exit(BAD_INPUT)
        raise
