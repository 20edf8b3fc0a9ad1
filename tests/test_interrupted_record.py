"""An interruption at any moment resumes into the record an uninterrupted run makes.

A callback of the user's own (defined here, outside the package) kills the run with
``kill -9`` just after ``last.ckpt`` is written at an epoch's end, or sends SIGTERM in
the middle of an epoch; ``resume=`` then finishes the run. Its ``metrics.json`` history
and its TensorBoard ``train/loss_epoch`` curve must equal those of a run never stopped.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import run_cli, script

pytestmark = pytest.mark.slow

KILLER = '''
import os
import signal

import pytorch_lightning as pl


class Killer(pl.Callback):
    """kill -9 after the epoch-end hooks that come before it (last.ckpt written), or
    SIGTERM after a chosen optimizer step."""

    def __init__(self, kill_after_epoch: int = -1, term_at_step: int = -1) -> None:
        self.kill_after_epoch, self.term_at_step = kill_after_epoch, term_at_step

    def on_train_epoch_end(self, trainer, pl_module):
        if trainer.current_epoch == self.kill_after_epoch:
            os.kill(os.getpid(), signal.SIGKILL)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.term_at_step:
            os.kill(os.getpid(), signal.SIGTERM)
'''

# noisy_line: 105 training rows in batches of 20, 6 steps an epoch.
BASE = ["experiment=noisy_line", "trainer.max_epochs=8", "callbacks.plots=null",
        "callbacks.progress_bar=null", "callbacks.last_checkpoint.every_seconds=0"]


def _curve(run_dir: Path) -> list[tuple[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0})
    acc.Reload()
    # One point per step: a resumed run may write an epoch's point again, same value.
    return sorted({(e.step, e.value) for e in acc.Scalars("train/loss_epoch")})


def _run(tmp_path: Path, name: str, *args: str) -> tuple[int, str]:
    out = run_cli([script("reglab-train"), *BASE, *args, f"hydra.run.dir={name}"],
                  tmp_path, env={"PYTHONPATH": str(tmp_path)})
    return out.returncode, out.stderr


@pytest.fixture(scope="module")
def straight(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The run never stopped, once for every way of stopping one."""
    root = tmp_path_factory.mktemp("straight")
    rc, err = _run(root, "straight")
    assert rc == 0, err[-2000:]
    return root / "straight"


@pytest.mark.parametrize("killer, code", [
    ("+callbacks.killer.kill_after_epoch=3", -9),  # right after the epoch's last.ckpt
    ("+callbacks.killer.term_at_step=16", 143),  # SIGTERM mid-epoch (epoch 2, 4 of 6)
])
def test_a_run_interrupted_anywhere_resumes_into_the_same_history(tmp_path: Path,
                                                                  straight: Path,
                                                                  killer: str, code: int):
    (tmp_path / "killer.py").write_text(KILLER)
    rc, err = _run(tmp_path, "cut", "+callbacks.killer._target_=killer.Killer", killer)
    assert rc in (code, 128 - code), err[-2000:]
    out = run_cli([script("reglab-train"), f"resume={tmp_path / 'cut'}"], tmp_path,
                  env={"PYTHONPATH": str(tmp_path)})
    assert out.returncode == 0, out.stderr[-2000:]

    whole = json.loads((straight / "metrics.json").read_text())
    resumed = json.loads((tmp_path / "cut" / "metrics.json").read_text())
    assert resumed["status"] == "completed"
    assert [e for e, _ in resumed["history"]["train_loss"]] == list(range(8))
    assert resumed["history"] == whole["history"]
    assert resumed["params"] == whole["params"]
    assert _curve(tmp_path / "cut") == _curve(straight)
