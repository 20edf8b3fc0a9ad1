"""Lightning callbacks that stay cheap when a step takes microseconds.

Stock Lightning redraws its progress bar and may write a checkpoint every epoch; on a
1000-epoch fit of an 11-point line those cost far more than the model. These keep the
same behaviour a person relies on, paced by wall-clock time instead of by step.
"""

from __future__ import annotations

import math
import os
import sys
import time
from typing import Any
from weakref import proxy

import pytorch_lightning as pl
from pytorch_lightning.callbacks import ModelCheckpoint, ProgressBar


class ThrottledCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` that writes at most once every ``min_interval_seconds``.

    The final epoch, an exception and the end of training always write, so
    ``last.ckpt`` is current when a run ends; in between, the best checkpoint is the best
    among the epochs at which a write was due.
    """

    def __init__(self, *args: Any, min_interval_seconds: float = 5.0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.min_interval_seconds = float(min_interval_seconds)
        self._last_write: float | None = None

    @staticmethod
    def _diverged(trainer: pl.Trainer) -> bool:
        return getattr(trainer.lightning_module, "diverged_at_step", None) is not None

    def _should_skip_saving_checkpoint(self, trainer: pl.Trainer) -> bool:
        if super()._should_skip_saving_checkpoint(trainer) or self._diverged(trainer):
            return True  # after divergence, the last finite checkpoint is the one to keep
        if self.min_interval_seconds <= 0 or self._last_write is None:
            return False
        max_epochs = trainer.max_epochs if trainer.max_epochs and trainer.max_epochs > 0 else None
        final = trainer.should_stop or (
            max_epochs is not None and trainer.current_epoch + 1 >= max_epochs)
        return not final and time.monotonic() - self._last_write < self.min_interval_seconds

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Make ``last.ckpt`` current however the fit ended (but never after divergence)."""
        if self.save_last and not self._diverged(trainer) and (
                self._last_global_step_saved != trainer.global_step):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def _save_checkpoint(self, trainer: pl.Trainer, filepath: str) -> None:
        """Write to a temporary file and rename it, so a kill mid-write never leaves a
        truncated checkpoint where the last good one was."""
        partial = f"{filepath}.part"
        trainer.save_checkpoint(partial, self.save_weights_only)
        if trainer.is_global_zero:
            os.replace(partial, filepath)
        # The bookkeeping ModelCheckpoint._save_checkpoint does after writing:
        self._last_global_step_saved = trainer.global_step
        self._last_checkpoint_saved = filepath
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.after_save_checkpoint(proxy(self))
        self._last_write = time.monotonic()


class FitProgressBar(ProgressBar):
    """One bar over every optimizer step of the fit, redrawn every ``refresh_seconds``.

    Shows the epoch and the latest train/val loss. Validation and test passes over
    in-memory data take milliseconds and get no bar of their own.
    """

    def __init__(self, refresh_seconds: float = 0.5) -> None:
        super().__init__()
        self.refresh_seconds = float(refresh_seconds)
        self._enabled = True
        self._bar: Any = None
        self._pending = 0
        self._last_draw = 0.0

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._enabled or not trainer.is_global_zero:
            return
        from tqdm.auto import tqdm

        total = trainer.estimated_stepping_batches
        self._bar = tqdm(total=None if not math.isfinite(total) else int(total),
                         initial=trainer.global_step, unit="step", dynamic_ncols=True,
                         file=sys.stderr, mininterval=self.refresh_seconds, leave=True)
        self._last_draw = time.monotonic()

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           outputs: Any, batch: Any, batch_idx: int) -> None:
        if self._bar is None:
            return
        self._pending += 1
        now = time.monotonic()
        if now - self._last_draw >= self.refresh_seconds:
            self._draw(trainer)
            self._last_draw = now

    def _draw(self, trainer: pl.Trainer) -> None:
        latest = getattr(trainer.lightning_module, "latest", {})
        shown = {name: f"{latest[key]:.4g}" for key, name in
                 (("train/loss", "train"), ("val/loss", "val")) if key in latest}
        epoch = min(trainer.current_epoch + 1, trainer.max_epochs or trainer.current_epoch + 1)
        self._bar.set_description(f"epoch {epoch}/{trainer.max_epochs}", refresh=False)
        self._bar.set_postfix(shown, refresh=False)
        self._bar.update(self._pending)
        self._pending = 0

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._bar is None:
            return
        self._draw(trainer)
        self._bar.close()
        self._bar = None

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                     exception: BaseException) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
