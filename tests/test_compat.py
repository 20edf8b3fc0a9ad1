"""What :mod:`reglab.compat` relies on in other libraries is still there.

Each private name reglab uses is checked directly, so an upgrade that renames it fails
here, by name, instead of a feature quietly stopping.
"""

from __future__ import annotations

import importlib
import subprocess
import sys

from reglab import compat


def test_loky_still_keeps_its_reusable_executor_where_compat_reads_it():
    module = importlib.import_module(compat.LOKY_EXECUTOR_MODULE)
    assert hasattr(module, "_executor")


def test_idle_joblib_workers_are_stopped():
    """After a joblib map, the executor compat finds is shut down and its workers gone."""
    code = (
        "import joblib\n"
        "from joblib.externals.loky import reusable_executor as r\n"
        "joblib.Parallel(n_jobs=2, backend='loky')(joblib.delayed(abs)(i) for i in range(4))\n"
        "ex = r._executor\n"
        "assert ex is not None\n"
        "procs = list(ex._processes.values())\n"
        "from reglab import compat\n"
        "compat.stop_idle_joblib_workers()\n"
        "assert all(not p.is_alive() for p in procs), procs\n"
        "print('STOPPED', len(procs))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert "STOPPED" in out.stdout


def test_nothing_happens_without_a_joblib_sweep():
    code = ("import sys\nfrom reglab import compat\ncompat.stop_idle_joblib_workers()\n"
            "print('LOKY', 'joblib.externals.loky.reusable_executor' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0 and "LOKY False" in out.stdout, out.stderr


def test_tqdm_still_keeps_its_lock_where_compat_reads_it():
    import threading

    from tqdm.auto import tqdm

    bar = compat.tqdm_with_thread_lock()
    assert bar is tqdm and hasattr(tqdm, "_lock")
    assert isinstance(tqdm.get_lock(), type(threading.RLock()))
