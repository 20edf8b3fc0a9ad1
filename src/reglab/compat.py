"""Every use reglab makes of another library's private names, in one place.

Each has no public equivalent; ``tests/test_compat.py`` fails as soon as the library
renames or drops what is used here, instead of the feature quietly stopping.
"""

from __future__ import annotations

import sys
from typing import Any

#: The module of joblib's bundled loky that holds the process-wide reusable executor.
LOKY_EXECUTOR_MODULE = "joblib.externals.loky.reusable_executor"


def stop_idle_joblib_workers() -> None:
    """Shut down the worker processes a joblib sweep left idle.

    They would otherwise be torn down by the interpreter at exit, 1.5–2 s while each
    unloads torch. loky's public ``get_reusable_executor()`` would start (or resize) an
    executor to hand one back, so the one it already made is read from its private
    ``_executor``; nothing is done when no sweep ran through joblib in this process.
    """
    module = sys.modules.get(LOKY_EXECUTOR_MODULE)
    executor = getattr(module, "_executor", None)
    if executor is not None:
        executor.shutdown(wait=True, kill_workers=True)


def tqdm_with_thread_lock() -> Any:
    """tqdm's bar class, its lock set to a thread lock (one set of bars per process).
    tqdm's default also makes a multiprocessing lock, which a sweep's joblib worker,
    stopped at the end, would leave behind ("leaked semaphore" warnings at exit); its
    private ``_lock`` says whether a lock is set already."""
    import threading

    from tqdm.auto import tqdm

    if getattr(tqdm, "_lock", None) is None:
        tqdm.set_lock(threading.RLock())
    return tqdm
