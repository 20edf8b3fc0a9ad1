"""How a reglab process imports torch and Lightning: once, with the cyclic garbage
collector paused, then frozen.

Their import creates ~680,000 objects; with the collector on it makes ~1,000 passes over
them (0.95 s of a 10.4 s default ``reglab-train``, measured; a fresh ``reglab-eval`` took
4.0–5.4 s that way, 3.2–3.9 s this way), and every later pass walks them again.
:func:`heavy_imports` wraps a command's first import of them; :func:`arm` marks the
processes where that is reglab's to decide. Imports nothing heavy itself, so any module may use it.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager

#: Whether this process runs a reglab command or job and has yet to import Lightning
#: (and torch with it) through :func:`heavy_imports`.
_due = False

#: The last of the heavy imports: once it is loaded, there is nothing left to pause for.
_LAST = "pytorch_lightning"


def arm() -> None:
    """Mark this process as reglab's own: a console command (``cli.common.run``), or a
    process a sweep's launcher started to run reglab's jobs (joblib's workers, submitit's,
    a SLURM job), which imports torch and Lightning afresh for its first job. Once
    Lightning is imported, arming changes nothing."""
    global _due
    _due = _LAST not in sys.modules


@contextmanager
def heavy_imports() -> Iterator[None]:
    """Around a command's first import of torch and Lightning: the collector off for it,
    then what exists frozen (``gc.freeze``), so later passes skip the libraries' objects,
    and the collector back on. Frozen objects are never freed: the libraries themselves,
    plus ~13,000 objects their import left unreachable (~8 MB), not worth the full pass
    (~0.5 s) that would find them.

    Until Lightning is imported (a first import of torch alone, reading a checkpoint,
    leaves it due), and only where :func:`arm` marked the process reglab's own:
    ``train()``, ``evaluate()`` or ``predict()`` called from the user's own Python (a
    notebook, a test, a process pool of the user's) leaves the user's collector alone, and
    a command whose user turned the collector off keeps it off."""
    import gc

    global _due
    if not (_due and gc.isenabled()):
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        _due = _LAST not in sys.modules
        gc.freeze()
        gc.enable()
