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
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run a command the way a user would, capturing its output."""
    full_env = {**os.environ, **(env or {})}
    full_env.pop("HYDRA_FULL_ERROR", None)
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env=full_env, stdin=subprocess.DEVNULL)


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
