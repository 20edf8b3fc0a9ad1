"""reglab's console commands run in processes forked from a server that has imported
torch, Lightning and reglab once, instead of each command importing them afresh (~5 s a
command on two cores; the suite runs ~150 of them).

Each command is still a process of its own: its own pid, working dir, environment,
stdin (/dev/null), stdout and stderr (files), exit status and signals; nothing of one
command reaches the next (every child is forked from the server as it was after its
imports). Lightning's DDP launcher re-runs ``sys.argv`` (set here as a fresh interpreter
sets it) for the other ranks, which start as fresh interpreters of their own. What a fresh
interpreter would do differently is kept out: commands that look at what is imported run
as real subprocesses (:func:`conftest.run_cli` decides).
A file-size limit is set in the forked command's process alone, with bytecode writing
off there (Python's unchecked write of a ``.pyc`` would leave a truncated one).
"""

from __future__ import annotations

import importlib
import os
import sys
import traceback
from typing import Any

#: What the server imports before forking (a fresh ``reglab-train`` imports these).
PRELOAD = ["forked_start", "torch", "pytorch_lightning", "hydra", "omegaconf",
           "matplotlib.figure", "matplotlib.backends.backend_agg", "torch.utils.tensorboard",
           "reglab.cli.train", "reglab.cli.eval", "reglab.cli.predict",
           "reglab.cli.sweep_report", "reglab.training.module", "reglab.data.datamodule",
           "forked_cli", "forked_warm"]


def _exit_code(exc: SystemExit) -> int:
    """What the interpreter makes of ``sys.exit(value)``."""
    if exc.code is None:
        return 0
    if isinstance(exc.code, int):
        return exc.code
    print(exc.code, file=sys.stderr)
    return 1


def run(target: str, argv: list[str], cwd: str, env: dict[str, str], out: str,
        err: str, fsize: int | None = None, new_session: bool = False) -> None:
    """In the forked child: become the console script ``target`` (``module:function``)
    run as ``argv`` in ``cwd`` with ``env``, its output in the files ``out`` and ``err``
    (``out`` may be a device: ``/dev/full``); ``fsize`` limits the size of every file it
    writes (``RLIMIT_FSIZE``), as a disk that refuses more would; ``new_session``: a
    session and process group of its own, as ``Popen(start_new_session=True)`` gives."""
    if new_session:
        os.setsid()
    if fsize is not None:
        import resource

        resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
        sys.dont_write_bytecode = True  # a .pyc cut short by the limit would break imports
    for fd, path, flags in ((0, os.devnull, os.O_RDONLY),
                            (1, out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC),
                            (2, err, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)):
        opened = os.open(path, flags, 0o644)
        os.dup2(opened, fd)
        os.close(opened)
    os.environ.clear()
    os.environ.update(env)
    os.chdir(cwd)
    extra = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    sys.path[:0] = [os.path.abspath(p) for p in extra]
    sys.argv = list(argv)
    code = 0
    try:
        module, _, name = target.partition(":")
        raise SystemExit(getattr(importlib.import_module(module), name)())
    except SystemExit as exc:
        code = _exit_code(exc)
    except BaseException:  # as the interpreter does with an uncaught exception
        traceback.print_exc()
        code = 1
    _finish(code)


def python_c() -> None:
    """``python -c <code>``: the code run as ``__main__`` (``sys.argv`` = ``["-c", …]``)."""
    code = sys.argv[2]
    sys.argv = ["-c", *sys.argv[3:]]
    exec(compile(code, "<string>", "exec"), {"__name__": "__main__"})


def _finish(code: int) -> None:
    """The interpreter's own way out: non-daemon threads joined, atexit handlers run,
    streams flushed; then the process ends with ``code``."""
    import atexit
    import contextlib
    import threading

    try:
        threading._shutdown()  # type: ignore[attr-defined]
        atexit._run_exitfuncs()
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):  # a closed stream: nothing to write
                stream.flush()
        os._exit(code)


def start(ctx: Any, target: str, argv: list[str], cwd: str, env: dict[str, str],
          out: str, err: str, fsize: int | None = None, new_session: bool = False) -> Any:
    """A started child process running :func:`run`."""
    proc = ctx.Process(target=run, args=(target, argv, cwd, env, out, err, fsize, new_session),
                       daemon=False)
    proc.start()
    return proc
