"""What reglab's console commands share: one-line errors and exit statuses.

Imports nothing heavy: these run before (or instead of) torch.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any, NoReturn

from reglab import startup

#: Exit status for input reglab (or Hydra) rejects.
BAD_INPUT = 2


def fail(prog: str, exc: BaseException) -> NoReturn:
    """Report a user error as one line and exit 2 (the traceback with HYDRA_FULL_ERROR=1)."""
    from reglab.cli.hydra_errors import full_error_asked

    if full_error_asked():
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
    import logging

    # A console that cannot be written (stdout on a full disk, a closed pipe) must not
    # bury the command's own outcome under a traceback per log line.
    logging.raiseExceptions = False
    _quiet_thread_faults()
    startup.arm()  # torch and Lightning imported with the collector paused, then frozen
    try:
        main()
    finally:
        gc.freeze()


def _quiet_thread_faults() -> None:
    """A writer thread (TensorBoard's) that hits a full disk re-raises it in the main
    thread at its next write, where the command reports it in one line: its own
    traceback would only repeat it. Other thread errors keep Python's report."""
    import threading

    default = threading.excepthook

    def hook(args: threading.ExceptHookArgs) -> None:
        if not isinstance(args.exc_value, OSError):
            default(args)

    threading.excepthook = hook


def _console_broken() -> bool:
    try:
        sys.stdout.flush()
    except (OSError, ValueError):
        return True
    return False


class FaultExit(SystemExit):
    """Exit 1 for a fault of the machine, told apart from Hydra's own exit 1 (a config it
    cannot compose), which :func:`run_hydra_app` makes bad input (2)."""


def say(text: str) -> None:
    """Print a command's result; a console that cannot take it (stdout on a full device)
    is an ``OSError`` naming stdout, which :func:`fault` turns into the command's line."""
    try:
        print(text, flush=True)
    except OSError as exc:
        raise OSError(exc.errno, exc.strerror, "stdout") from None


def fault(prog: str, exc: OSError, under: object = None) -> NoReturn:
    """A fault of the machine (disk full, a file-size limit, a read-only folder): one line
    naming the path (else the console, or the folder ``under`` whose files were being
    written) and the OS's reason, exit 1 (the traceback with HYDRA_FULL_ERROR=1)."""
    from reglab.cli.hydra_errors import full_error_asked

    if full_error_asked():
        raise exc
    where = exc.filename or ("stdout" if _console_broken() else
                             f"a file under {under}" if under else "a file")
    reason = exc.strerror or type(exc).__name__
    try:
        print(f"{prog}: error: {where}: {reason}", file=sys.stderr, flush=True)
    finally:
        raise FaultExit(1)


def experiment_argv(argv: list[str]) -> list[str]:
    """``+experiment=NAME`` (the form Hydra's docs use for a group with no default) as
    ``experiment=NAME``: the root config lists ``experiment: null``, where Hydra would
    reject the ``+`` form as a second value."""
    return [a.removeprefix("+") if a.startswith("+experiment=") else a for a in argv]


def asks_for_help(argv: list[str]) -> bool:
    """Whether the command line asks Hydra for a help page (``--help``, ``-h``,
    ``--hydra-help``), which composes the config but runs nothing."""
    return any(a in ("--help", "-h", "--hydra-help") for a in argv[1:])


def run_hydra_app(prog: str, app: Callable[[], object], guard: Any = None) -> None:
    """Run a ``hydra.main`` app; Hydra's own exit 1 (a config it cannot compose) is bad
    input, so it becomes 2, and so is a composition error Hydra lets through as it is
    (its ``--help`` page does), reported in one line. A fault while Hydra writes its own
    files (``.hydra/``, the log) names the run dir, which ``guard`` (a
    :class:`reglab.cli.run_guard.RunDirGuard`) puts back as it was."""
    from reglab.cli.hydra_errors import raise_composition_errors

    raise_composition_errors()
    try:
        app()
    except composition_errors() as exc:
        composition_failed(prog, exc)
    except OSError as exc:  # the run dir cannot be made or written (read-only, full)
        run_dir = getattr(guard, "real", None)
        if run_dir is not None:
            guard.restore(run_dir)
        fault(prog, exc, under=run_dir)
    except SystemExit as exc:
        if exc.code == 1 and not isinstance(exc, FaultExit):
            sys.exit(BAD_INPUT)
        raise


def composition_errors() -> tuple[type[BaseException], ...]:
    """What Hydra raises for a config it cannot compose (see :mod:`hydra_errors`)."""
    import yaml
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    return (HydraException, OmegaConfBaseException, yaml.YAMLError, UnicodeDecodeError)


def composition_failed(prog: str, exc: BaseException) -> NoReturn:
    """One line for a config Hydra could not compose, exit 2."""
    from reglab.cli.hydra_errors import full_error_asked, one_line
    from reglab.config.compose import CONF_DIR
    from reglab.errors import ConfigError

    if full_error_asked():
        raise exc
    fail(prog, ConfigError(one_line(exc, sys.argv[1:], CONF_DIR)))
