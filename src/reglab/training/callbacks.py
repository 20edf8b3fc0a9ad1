"""Lightning callbacks that stay cheap when a step takes microseconds.

Stock Lightning redraws its progress bar and may write a checkpoint every epoch; on a
1000-epoch fit of an 11-point line those cost far more than the model. These keep the
same behaviour a person relies on, paced by wall-clock time instead of by step, through
Lightning's public callback and plugin APIs only.
"""

from __future__ import annotations

import math
import os
import sys
import time
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import ProgressBar
from pytorch_lightning.plugins import TorchCheckpointIO


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writer, writing to a temporary file renamed into place, so
    a kill mid-write never leaves a truncated checkpoint where the last good one was.

    A ``CheckpointIO`` plugin (``trainer.plugins``): every checkpoint Lightning writes,
    from any callback or ``trainer.save_checkpoint``, goes through it.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any,
                        storage_options: Any | None = None) -> None:
        path = os.fspath(path)
        partial = f"{path}.part"
        super().save_checkpoint(checkpoint, partial, storage_options)
        os.replace(partial, path)


class LastCheckpoint(pl.Callback):
    """Keeps ``<dirpath>/last.ckpt`` current: at the end of a training epoch when
    ``every_seconds`` have passed since the last write, and always when the fit ends
    (finished, stopped early or interrupted by a signal), so a run can be resumed.

    After a divergence it writes nothing more: the last finite state is the one kept.
    Stock ``ModelCheckpoint(save_last=True)`` writes ``last.ckpt`` every epoch, which on
    a 1000-epoch fit of a two-parameter model costs far more than the fit itself.
    """

    def __init__(self, dirpath: str, filename: str = "last.ckpt",
                 every_seconds: float = 5.0) -> None:
        super().__init__()
        self.dirpath = str(dirpath)
        self.filename = filename
        self.every_seconds = float(every_seconds)
        self._last_write: float | None = None
        self._saved_step: int | None = None

    @property
    def path(self) -> str:
        return os.path.join(self.dirpath, self.filename)

    @staticmethod
    def _may_save(trainer: pl.Trainer) -> bool:
        module = trainer.lightning_module
        return (not trainer.fast_dev_run and not trainer.sanity_checking
                and getattr(module, "diverged_at_step", None) is None)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._may_save(trainer) or self._saved_step == trainer.global_step:
            return  # (an epoch cut short was saved at its last batch, mid-epoch)
        due = (self._last_write is None
               or time.monotonic() - self._last_write >= self.every_seconds)
        if trainer.world_size > 1:  # clocks differ: every rank follows rank 0
            due = bool(trainer.strategy.broadcast(due, src=0))
        if due:
            # The epoch's record first, written where the loggers keep it, then the
            # checkpoint: a kill at any moment resumes into the same history.
            close = getattr(pl_module, "close_epoch", None)
            if callable(close):
                close()
            for logger in trainer.loggers:
                logger.save()
            self._save(trainer)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           outputs: Any, batch: Any, batch_idx: int) -> None:
        """A fit that stops part-way through an epoch (a signal, max_steps) is saved
        here, while Lightning still counts that epoch as unfinished: resuming then serves
        the epoch's remaining batches instead of starting the next epoch."""
        final = trainer.should_stop or 0 <= trainer.max_steps <= trainer.global_step
        if final and self._may_save(trainer):
            self._save(trainer)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._may_save(trainer) and self._saved_step != trainer.global_step:
            self._save(trainer)

    def _save(self, trainer: pl.Trainer) -> None:
        trainer.save_checkpoint(self.path, weights_only=False)  # optimizer and loops too
        self._saved_step = trainer.global_step
        self._last_write = time.monotonic()


def _is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # replaced or closed streams
        return False


class FitProgressBar(ProgressBar):
    """One bar over every optimizer step of the fit, redrawn every ``refresh_seconds``.

    Shows the epoch, the latest train/val loss and the training rows per second (the
    figure that compares across batch sizes). The bar appears once the fit has run
    ``refresh_seconds``: a fit done sooner ends with reglab's summary alone. Validation
    and test passes over in-memory data take milliseconds and get no bar of their own.
    """

    def __init__(self, refresh_seconds: float = 0.5, only_on_terminal: bool = True) -> None:
        super().__init__()
        self.refresh_seconds = float(refresh_seconds)
        # Redrawn bars in a log file, a pipe or CI's output are noise: a terminal only.
        self.only_on_terminal = bool(only_on_terminal)
        self._enabled = True
        self._bar: Any = None
        self._wanted = False  # a bar opens once the fit has run refresh_seconds
        self._last_draw = 0.0
        self._rows = 0  # training rows since the fit started (this process's share)
        self._started = 0.0

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._wanted = self._enabled and trainer.is_global_zero and (
            not self.only_on_terminal or _is_terminal(sys.stderr))
        self._last_draw = self._started = time.monotonic()
        self._rows = 0

    def _open(self, trainer: pl.Trainer) -> None:
        from reglab.compat import tqdm_with_thread_lock

        tqdm = tqdm_with_thread_lock()
        total = float(trainer.estimated_stepping_batches)  # optimizer steps in the fit
        self._bar = tqdm(total=None if not math.isfinite(total) else int(total),
                         initial=trainer.global_step, unit="step", dynamic_ncols=True,
                         file=sys.stderr, mininterval=self.refresh_seconds, leave=True)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           outputs: Any, batch: Any, batch_idx: int) -> None:
        if not self._wanted:
            return
        first = batch[0] if isinstance(batch, (tuple, list)) and batch else batch
        self._rows += int(getattr(first, "shape", (0,))[0] or 0) if getattr(
            first, "ndim", 0) else 0
        now = time.monotonic()
        if now - self._last_draw >= self.refresh_seconds:
            if self._bar is None:
                self._open(trainer)
            self._draw(trainer)
            self._last_draw = now

    def _draw(self, trainer: pl.Trainer) -> None:
        latest = trainer.callback_metrics
        shown = {name: f"{float(latest[key]):.4g}" for key, name in
                 (("train/loss", "train"), ("val/loss", "val")) if key in latest}
        elapsed = time.monotonic() - self._started
        if self._rows and elapsed > 0:
            shown["rows/s"] = f"{self._rows * trainer.world_size / elapsed:,.0f}"
        epoch = trainer.current_epoch + 1
        if trainer.max_epochs is not None and trainer.max_epochs > 0:
            epoch = min(epoch, trainer.max_epochs)
            self._bar.set_description(f"epoch {epoch}/{trainer.max_epochs}", refresh=False)
        else:
            self._bar.set_description(f"epoch {epoch}", refresh=False)
        self._bar.set_postfix(shown, refresh=False)
        self._bar.update(max(0, trainer.global_step - self._bar.n))

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


class FitPlots(pl.Callback):
    """Pictures of the fit: TensorBoard images as it evolves, and PNGs in the run dir.

    Model states are copied ``frames`` times over the fit, first and last included (and
    a one-input linear model's (w, b) every epoch, for the landscape path); drawing waits
    until training ends, so the figures cost nothing per step. See
    :mod:`reglab.reporting.figures.run_figures` for which pictures a run gets; a data
    module other than reglab's gets none.
    """

    def __init__(self, dirpath: str, frames: int = 10) -> None:
        super().__init__()
        self.dirpath = dirpath
        self.frames = max(1, int(frames))
        self._states: list[tuple[int, int, dict[str, Any]]] = []
        self._path: list[list[float]] = []
        self._every = 1
        self._param_vector: Any = None  # set when the landscape applies
        #: Wall time spent drawing, which the run reports apart from the fit's own time.
        self.draw_seconds = 0.0

    @staticmethod
    def _state(pl_module: pl.LightningModule) -> dict[str, Any]:
        return {k: v.detach().cpu().clone() for k, v in pl_module.model.state_dict().items()}

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        from reglab.reporting.figures import run_figures as figures

        max_epochs = trainer.max_epochs if trainer.max_epochs and trainer.max_epochs > 0 else 1
        # ``frames`` images in all, the start and the end included: TensorBoard shows up
        # to 10 per tag unless started with --samples_per_plugin images=N.
        self._every = max(1, math.ceil(max_epochs / max(1, self.frames - 1)))
        self._states = [(trainer.current_epoch, trainer.global_step, self._state(pl_module))]
        # Read every data epoch, so resolved once here rather than imported each time.
        self._param_vector = (figures.param_vector if figures.landscape_applies(
            pl_module.model, pl_module.loss_fn) else None)
        self._path = [] if self._param_vector is None else [self._param_vector(pl_module.model)]

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        done = trainer.current_epoch + 1
        if self._param_vector is not None:
            self._path.append(self._param_vector(pl_module.model))
        if done % self._every == 0:
            self._states.append((done, trainer.global_step, self._state(pl_module)))
            if len(self._states) > 2 * self.frames:
                # A fit of no known length (max_epochs=-1 with max_time or max_steps):
                # every other copy dropped and the interval doubled, so the copies stay
                # evenly spread and bounded whatever the number of epochs.
                self._states = self._states[::2]
                self._every *= 2

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.draw(trainer, pl_module)

    def draw(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
             final_title: str | None = None) -> float:
        """Draw the run's pictures now (at train end, or after an exact fit, which has no
        training loop); returns the seconds it took."""
        if not trainer.is_global_zero:
            return 0.0
        start = time.perf_counter()
        try:
            self._draw(trainer, pl_module, final_title)
        except Exception as exc:  # a picture must never cost the run its results
            import logging

            logging.getLogger("reglab").warning("plots skipped: %s: %s",
                                                type(exc).__name__, exc)
        seconds = time.perf_counter() - start
        self.draw_seconds += seconds
        return seconds

    def _draw(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
              final_title: str | None = None) -> None:
        from pathlib import Path

        from reglab.reporting.figures import run_figures as figures
        from reglab.reporting.figures import run_plots as plots

        datamodule = trainer.datamodule
        if getattr(datamodule, "splits", None) is None or getattr(datamodule, "data", None) is None:
            return  # not reglab's data module: no in-memory splits to draw
        out = Path(self.dirpath)
        out.mkdir(parents=True, exist_ok=True)
        writers = [w for w in (getattr(lg, "experiment", None) for lg in trainer.loggers)
                   if w is not None and hasattr(w, "add_image")]
        model, closed = pl_module.model, getattr(pl_module, "closed_form", None)

        def publish(tag: str, fig: Any, step: int, filename: str | None = None,
                    image: Any = None) -> None:
            image = plots.to_array(fig) if image is None else image
            for writer in writers:
                writer.add_image(tag, image, step, dataformats="HWC")
            if filename:
                plots.save(fig, str(out / filename), image)

        if datamodule.data.num_features == 1:
            if self._states and self._states[-1][1] == trainer.global_step:
                self._states.pop()  # the final state is drawn below, from the model itself
            keep = self.frames - 1
            if len(self._states) > keep:  # an open-ended fit kept up to twice as many
                last = len(self._states) - 1
                picked = sorted({round(i * last / max(1, keep - 1)) for i in range(keep)})
                self._states = [self._states[i] for i in picked] if keep else []
            frames = [(f"epoch {epoch}", state) for epoch, _, state in self._states]
            final_title = final_title or f"epoch {trainer.current_epoch} (final)"
            drawn = figures.fit_frames(model, frames, datamodule, closed, final_title)
            if drawn is not None:
                animation, images, last = drawn
                for (_, step, _), image in zip(self._states, images, strict=True):
                    for writer in writers:
                        writer.add_image("plots/fit", image, step, dataformats="HWC")
                publish("plots/fit", animation.fig, trainer.global_step, "fit.png", last)
        else:
            fig = figures.pred_vs_actual(model, datamodule)
            if fig is not None:
                publish("plots/pred_vs_actual", fig, trainer.global_step, "pred_vs_actual.png")
        fig = figures.landscape(model, pl_module.loss_fn, datamodule, self._path, closed)
        if fig is not None:
            publish("plots/landscape", fig, trainer.global_step, "landscape.png")
        for writer in writers:
            writer.flush()


class AtSetup(pl.Callback):
    """Calls ``action(trainer, pl_module)`` in the callbacks' setup: after the data
    module's own setup and, under data parallelism, once the ranks are connected."""

    def __init__(self, action: Any) -> None:
        self.action = action

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self.action(trainer, pl_module)
