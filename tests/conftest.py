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


def compose_config(overrides: list[str], run_dir: Path) -> DictConfig:
    """The config ``reglab-train <overrides>`` would get, with its run dir at ``run_dir``."""
    return compose(overrides, run_dir)


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
            env: dict[str, str] | None = None,
            fork: bool | None = None) -> subprocess.CompletedProcess[str]:
    """Run a command the way a user would, capturing its output.

    reglab's own commands run forked from a server that has imported torch and Lightning
    once (:mod:`forked_cli`): a process of their own all the same. ``fork=False``, any
    other program, a ``ddp`` trainer (Lightning re-runs ``sys.argv`` for each rank) or
    ``REGLAB_TEST_FORK=0`` give a fresh interpreter instead."""
    full_env = {**os.environ, **(env or {})}
    full_env.pop("HYDRA_FULL_ERROR", None)
    target = _console_target(args[0])
    if (fork is False or target is None or os.environ.get("REGLAB_TEST_FORK") == "0"
            or (fork is None and any("ddp" in str(a) for a in args))):
        return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                              env=full_env, stdin=subprocess.DEVNULL)
    import tempfile

    import forked_cli

    with tempfile.TemporaryDirectory(prefix="reglab-cli-") as tmp:
        out, err = os.path.join(tmp, "out"), os.path.join(tmp, "err")
        proc = forked_cli.start(_fork_server(), target, [str(a) for a in args], str(cwd),
                                full_env, out, err)
        proc.join(timeout)
        if proc.is_alive():
            proc.kill()
            proc.join()
            raise subprocess.TimeoutExpired(args, timeout)
        texts = [Path(p).read_text() if os.path.exists(p) else "" for p in (out, err)]
        return subprocess.CompletedProcess(args, proc.exitcode, texts[0], texts[1])


_SERVER: list[Any] = []


def _fork_server() -> Any:
    """The multiprocessing context whose fork server has imported what commands need
    (started once per test process, on first use)."""
    if not _SERVER:
        import multiprocessing

        import forked_cli

        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(forked_cli.PRELOAD)
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
