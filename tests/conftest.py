"""Shared fixtures: compose the real config with Hydra's API and run the real ``train``."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from omegaconf import DictConfig, open_dict

from reglab.config.compose import compose

REPO = Path(__file__).resolve().parents[1]


@pytest.hookimpl(wrapper=True)
def pytest_collection(session: pytest.Session) -> Any:
    """Collection imports torch, Lightning and the rest with the cyclic garbage collector
    paused, then freezes what they made, as a command does
    (:func:`reglab.startup.heavy_imports`): the tests' own collections then skip the
    libraries (~0.3 s a full pass here, a dozen passes a worker)."""
    import gc

    enabled = gc.isenabled()
    gc.disable()
    try:
        return (yield)
    finally:
        gc.freeze()
        if enabled:
            gc.enable()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Slow tests first (a stable sort: the order within each kind is kept). pytest-xdist
    deals the first quarter of the items out one by one, so the long tests are shared
    between the workers from the start instead of one of them running a 50 s test at
    the end while the other core waits idle."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


#: Configs composed in this worker, by (overrides, working directory).
_COMPOSED: dict[tuple[tuple[str, ...], str], DictConfig] = {}


def compose_config(overrides: list[str], run_dir: Path) -> DictConfig:
    """The config ``reglab-train <overrides>`` would get, with its run dir at ``run_dir``.

    What Hydra composes follows from the overrides, reglab's config files and the working
    directory (``hydra.runtime.cwd``); the suite asks for the same command up to 40 times
    (a property test's examples, a conformance test's two runs), so each is composed once
    per worker and handed out as a deep copy, ~5 % of a composition's time. Overrides that
    name a search path are composed every time: the files there are the test's to change.
    Interpolations stay unresolved in the copy (``${now:…}`` included)."""
    import copy

    from hydra.core.hydra_config import HydraConfig

    if any("searchpath" in o for o in overrides):
        return compose(overrides, run_dir)
    key = (tuple(overrides), os.getcwd())
    if key not in _COMPOSED:
        _COMPOSED[key] = compose(overrides)
    cfg = copy.deepcopy(_COMPOSED[key])
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        cfg.paths.run_dir = str(run_dir)
    return cfg


@pytest.fixture
def run_train(tmp_path: Path) -> Callable[..., tuple[dict[str, Any], Path]]:
    """Run ``train`` in-process; returns (metrics, run dir). Each call gets its own dir."""
    from reglab.cli.train import train

    counter = iter(range(1000))

    def _run(*overrides: str, quiet: bool = True) -> tuple[dict[str, Any], Path]:
        run_dir = tmp_path / f"run{next(counter)}"
        cfg = compose_config(list(overrides), run_dir)
        if quiet and cfg.get("callbacks") and "progress_bar" in cfg.callbacks:
            with open_dict(cfg):
                del cfg.callbacks["progress_bar"]
        return train(cfg), run_dir

    return _run


def run_cli(args: list[str], cwd: Path, timeout: float = 240,
            env: dict[str, str] | None = None, fork: bool | None = None, *,
            stdout_to: str | None = None,
            fsize: int | None = None) -> subprocess.CompletedProcess[str]:
    """Run a command the way a user would, capturing its output.

    ``stdout_to`` sends stdout to that file or device instead (``/dev/full``; the
    result's stdout is then empty), ``fsize`` limits every file the command writes to
    that many bytes (``RLIMIT_FSIZE``, as a full disk would).

    reglab's own commands run forked from a server that has imported torch and Lightning
    once (:mod:`forked_cli`): a process of their own all the same. A ``ddp`` trainer too:
    Lightning's launcher starts the other ranks as fresh interpreters from ``sys.argv``,
    which the forked command holds as a fresh one would. ``fork=False``, any other
    program (``python -c`` too, unless ``fork=True``) or ``REGLAB_TEST_FORK=0`` give a
    fresh interpreter instead."""
    full_env = {**os.environ, **(env or {})}
    full_env.pop("HYDRA_FULL_ERROR", None)
    target = _console_target(args[0])
    if fork and args[0] == sys.executable and args[1:2] == ["-c"]:
        target = "forked_cli:python_c"  # a snippet that imports what the server has
    if fork is False or target is None or os.environ.get("REGLAB_TEST_FORK") == "0":
        def limit() -> None:
            if fsize is not None:
                import resource

                resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))

        if fsize is not None:  # a .pyc cut short by the limit would break later imports
            full_env["PYTHONDONTWRITEBYTECODE"] = "1"
        with open(stdout_to or os.devnull, "w") as sink:
            done = subprocess.run(args, cwd=cwd, text=True, timeout=timeout, env=full_env,
                                  stdin=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                  stdout=sink if stdout_to else subprocess.PIPE,
                                  preexec_fn=limit if fsize is not None else None)
        return subprocess.CompletedProcess(args, done.returncode, done.stdout or "",
                                           done.stderr)
    started = Started(args, target, cwd, full_env, stdout_to=stdout_to, fsize=fsize)
    try:
        out, err = started.communicate(timeout)
    except subprocess.TimeoutExpired:
        started.kill()
        started.communicate()
        raise
    return subprocess.CompletedProcess(args, started.returncode, out, err)


def start_cli(args: list[str], cwd: Path, env: dict[str, str] | None = None, *,
              new_session: bool = False) -> Started:
    """A reglab command started in the background, forked as :func:`run_cli` runs it;
    ``new_session`` makes it lead a process group of its own (as ``Popen``'s
    ``start_new_session``), so ``os.killpg`` reaches the ranks it starts."""
    full_env = {**os.environ, **(env or {})}
    full_env.pop("HYDRA_FULL_ERROR", None)
    target = _console_target(args[0])
    assert target is not None, f"{args[0]} is not a reglab command"
    return Started(args, target, cwd, full_env, new_session=new_session)


class Started:
    """A forked reglab command: the part of ``subprocess.Popen`` the tests use, its
    stdout and stderr in files (``output()`` reads them as they grow)."""

    def __init__(self, args: list[str], target: str, cwd: Path, env: dict[str, str],
                 stdout_to: str | None = None, fsize: int | None = None,
                 new_session: bool = False) -> None:
        import tempfile

        import forked_cli

        self.args = args
        self._tmp = tempfile.TemporaryDirectory(prefix="reglab-cli-")
        self._out = stdout_to or os.path.join(self._tmp.name, "out")
        self._read_out = stdout_to is None  # a device (/dev/full) is not read back
        self._err = os.path.join(self._tmp.name, "err")
        self._proc = forked_cli.start(_fork_server(), target, [str(a) for a in args],
                                      str(cwd), env, self._out, self._err, fsize,
                                      new_session)
        self.pid: int = self._proc.pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None and not self._proc.is_alive():
            self.returncode = self._proc.exitcode
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        self._proc.join(timeout)
        if self.poll() is None:
            raise subprocess.TimeoutExpired(self.args, timeout or 0)
        return int(self.returncode or 0)

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, sig)

    def kill(self) -> None:
        import signal

        self.send_signal(signal.SIGKILL)

    def output(self) -> tuple[str, str]:
        def text(path: str, read: bool) -> str:
            return Path(path).read_text() if read and os.path.exists(path) else ""

        return text(self._out, self._read_out), text(self._err, True)

    def communicate(self, timeout: float | None = None) -> tuple[str, str]:
        self.wait(timeout)
        texts = self.output()
        self._tmp.cleanup()
        return texts


_SERVER: list[Any] = []


def _fork_server() -> Any:
    """The multiprocessing context whose fork server has imported what commands need
    (started once per test process, on first use)."""
    if not _SERVER:
        import multiprocessing
        from multiprocessing import forkserver

        import forked_cli

        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(forked_cli.PRELOAD)
        # Python 3.11's fork server ignores the sys.path it is handed (fixed in 3.12), so
        # the suite's own preloads (forked_start, forked_cli, forked_warm) are found through
        # PYTHONPATH, set for the server's start only; commands get their own env.
        before = os.environ.get("PYTHONPATH")
        os.environ["PYTHONPATH"] = os.pathsep.join(
            [str(Path(__file__).parent), *([before] if before else [])])
        try:
            forkserver.ensure_running()
        finally:
            if before is None:
                del os.environ["PYTHONPATH"]
            else:
                os.environ["PYTHONPATH"] = before
        _SERVER.append(ctx)
    return _SERVER[0]


def _console_target(program: str) -> str | None:
    """``module:function`` of a reglab console script given by its path, else None."""
    from importlib.metadata import entry_points

    name = Path(str(program)).name
    if not name.startswith("reglab-"):
        return None
    found = [ep.value for ep in entry_points(group="console_scripts") if ep.name == name]
    return found[0] if found else None


def script(name: str) -> str:
    """Path of a console script installed beside this interpreter."""
    return str(Path(sys.executable).parent / name)


def has_cuda() -> bool:
    try:
        import torch
    except ImportError:  # pragma: no cover
        return False
    return torch.cuda.is_available()


cuda = pytest.mark.skipif(not has_cuda(), reason="needs a CUDA GPU")


def two_nodes(args: list[str], cwd: Path) -> None:
    """Run ``reglab-train args`` as two "nodes" on this machine (``trainer.num_nodes=2``,
    one process each, started as SLURM or torchrun would start them: MASTER_ADDR/PORT,
    NODE_RANK); node 1 keeps its Hydra files and log beside node 0's. Both must succeed."""
    import socket

    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    args = [script("reglab-train"), *args, "trainer=ddp_cpu", "trainer.devices=1",
            "trainer.num_nodes=2"]
    env = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    node1 = start_cli([*args, "hydra.output_subdir=.hydra_node1",
                       "hydra.job.name=train_node1"], cwd, env={**env, "NODE_RANK": "1"})
    try:
        out = run_cli(args, cwd=cwd, timeout=300, env={**env, "NODE_RANK": "0"})
        _, err1 = node1.communicate(timeout=120)
    finally:
        node1.kill()
    assert out.returncode == 0, out.stderr[-3000:]
    assert node1.returncode == 0, err1[-3000:]
