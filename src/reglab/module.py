"""The Lightning module: any ``torch.nn.Module`` regressor, a loss and an optimizer."""

from __future__ import annotations

import math
import signal
import threading
from collections.abc import Callable
from typing import Any

import pytorch_lightning as pl
import torch
from torch import nn

from reglab.metrics import RegressionSums
from reglab.scaling import Scaling

Batch = tuple[torch.Tensor, torch.Tensor]
#: ``(x, y, data epoch, last mini-batch of that epoch)``, as ``TrainRounds`` hands them.
Entry = tuple[torch.Tensor, torch.Tensor, int, bool]


class _EpochTally:
    """The running data epoch's loss sum and rows, and the count of epochs done.

    A plain object: attribute writes on an ``nn.Module`` go through its ``__setattr__``,
    which costs microseconds each, several times per step.
    """

    __slots__ = ("device_sum", "done", "host_sum", "log_due", "open_epoch", "rows")

    def __init__(self) -> None:
        self.done = 0
        self.open_epoch: int | None = None  # the data epoch whose steps are running
        self.reset()

    def reset(self) -> None:
        self.host_sum = 0.0  # loss × rows, from values already on the host ...
        self.device_sum: torch.Tensor | None = None  # ... or left on the device
        self.rows = 0
        self.log_due = False  # the open epoch holds a logging step

    def add(self, loss: torch.Tensor, value: float | None, rows: int) -> None:
        if value is not None:
            self.host_sum += value * rows
        else:
            weighted = loss.detach() * rows
            self.device_sum = weighted if self.device_sum is None else self.device_sum + weighted
        self.rows += rows

    def mean(self) -> float:
        total = self.host_sum + (0.0 if self.device_sum is None else float(self.device_sum))
        return total / self.rows


class RegressionModule(pl.LightningModule):
    """Trains ``model`` with ``loss``; logs losses, learning rate and linear parameters.

    ``optimizer`` is a factory (a ``functools.partial`` from the config) bound to the
    model's parameters here, so the optimizer config never needs to know the model.

    Training scalars go straight to the loggers rather than through ``self.log``: that
    path costs about a millisecond per call, more than a whole step of a small model.
    The step loss is read from the device only every ``log_every_n_steps`` steps, and
    epoch scalars are written for the epochs that hold such a step (and the last), so
    there is no host sync per step and a 1000-epoch fit of one step each writes 21 points.

    Epochs here are *data* epochs: a Lightning epoch may hold several (see
    ``reglab.datamodule.TrainRounds``). Each batch entry says which epoch it belongs to;
    callbacks that define ``on_data_epoch_end(trainer, module)`` hear of every one.
    """

    def __init__(self, model: nn.Module, optimizer: Callable[..., torch.optim.Optimizer],
                 loss: nn.Module, scaling: Scaling | None = None,
                 data_info: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.automatic_optimization = False  # see training_step
        self._plain: bool | None = None
        self.model = model
        self.loss_fn = loss
        self.optimizer_factory = optimizer
        #: The data's standardization, undone for test metrics and stored in checkpoints.
        self.scaling = scaling or Scaling()
        #: Feature and target names, stored with checkpoints for prediction files.
        self.data_info = data_info or {}
        #: The least-squares optimum's training loss, drawn beside the loss curve.
        self.reference_loss: float | None = None
        #: That optimum itself (a ``closed_form.LeastSquares``), for the fit plot.
        self.closed_form: Any = None
        self.test_metrics: dict[str, float] | None = None
        #: The latest logged values, for the progress bar and the end-of-run summary.
        self.latest: dict[str, float] = {}
        #: Epoch means of the train loss and each validation loss, as [epoch, value] pairs.
        self.history: dict[str, list[list[float]]] = {"train_loss": [], "val_loss": []}
        #: The optimizer step at which the loss was first seen non-finite, if ever.
        self.diverged_at_step: int | None = None
        #: SIGINT or SIGTERM, when one asked the fit to stop.
        self.interrupted_by: str | None = None
        self._previous_handlers: dict[int, Any] = {}
        self._tally = _EpochTally()
        self._test_sums = RegressionSums()
        self._epoch_listeners: list[Any] = []

    @property
    def epochs_done(self) -> int:
        """Data epochs completed (a checkpoint restores it)."""
        return self._tally.done

    @epochs_done.setter
    def epochs_done(self, value: int) -> None:
        self._tally.done = int(value)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return self.optimizer_factory(self.model.parameters())

    def transfer_batch_to_device(self, batch: Any, device: torch.device,
                                 dataloader_idx: int) -> Any:
        """Training entries are cut from tensors already on the device: pass them through.

        Lightning's default walks every element of a batch, which for a list of a
        hundred entries costs more than the steps it holds.
        """
        if isinstance(batch, list) and batch and isinstance(batch[0], tuple) and (
                batch[0][0].device == device):
            return batch
        return super().transfer_batch_to_device(batch, device, dataloader_idx)

    # -- checkpoints --------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Stamp which reglab and which model wrote it, so a mismatch can be named."""
        from reglab import __version__
        from reglab.artifacts import FORMAT_VERSION

        checkpoint["reglab"] = {
            "version": __version__, "format_version": FORMAT_VERSION,
            "model": type(self.model).__name__,
            "model_kwargs": dict(getattr(self.model, "init_kwargs", {})),
            "scaling": self.scaling.to_dict(),
            "data": dict(self.data_info),
            "epochs_done": self.epochs_done,
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.epochs_done = int(checkpoint.get("reglab", {}).get(
            "epochs_done", checkpoint.get("epoch", 0)))

    # -- signals ------------------------------------------------------------------------
    @property
    def _plain_step(self) -> bool:
        """Whether a step may bypass Lightning's backward/step dispatch: one device, full
        or double precision, and no callback listening to the hooks it would skip."""
        if self._plain is None:
            from pytorch_lightning.plugins.precision import DoublePrecision, Precision
            from pytorch_lightning.strategies import SingleDeviceStrategy

            hooks = ("on_before_backward", "on_after_backward", "on_before_optimizer_step",
                     "on_before_zero_grad")
            listening = any(getattr(type(cb), h) is not getattr(pl.Callback, h)
                            for cb in self.trainer.callbacks for h in hooks)
            self._plain = (isinstance(self.trainer.strategy, SingleDeviceStrategy)
                           and type(self.trainer.precision_plugin) in (Precision,
                                                                       DoublePrecision)
                           and not listening)
        return self._plain

    def on_train_start(self) -> None:
        """Turn SIGINT/SIGTERM into a clean stop: finish the step, checkpoint, report.

        Installed here, after Lightning registers its own SIGTERM handler (which would
        end the fit with an exception and no report), and removed at train end.
        """
        if self.reference_loss is not None:
            self._log({"train/loss_closed_form": self.reference_loss}, self.trainer.global_step)
        self._epoch_listeners = [cb for cb in self.trainer.callbacks
                                 if callable(getattr(cb, "on_data_epoch_end", None))]
        max_epochs = self.trainer.max_epochs
        if max_epochs is not None and 0 < max_epochs <= self.epochs_done:
            self.trainer.should_stop = True  # resumed from a finished run: nothing to do
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous_handlers[sig] = signal.signal(sig, self._on_signal)

    def on_train_end(self) -> None:
        if self.reference_loss is not None:  # two points: a flat reference line
            self._log({"train/loss_closed_form": self.reference_loss}, self.trainer.global_step)
        for sig, handler in self._previous_handlers.items():
            signal.signal(sig, handler)
        self._previous_handlers = {}

    def _on_signal(self, signum: int, frame: Any) -> None:
        if self.interrupted_by is not None:  # asked twice: stop now, no clean-up
            raise KeyboardInterrupt
        self.interrupted_by = signal.Signals(signum).name
        self.trainer.should_stop = True

    # -- training -----------------------------------------------------------------------
    def _log(self, metrics: dict[str, float], step: int, watch: bool = True) -> None:
        """Write scalars; with ``watch``, a non-finite one stops the fit as diverged."""
        self.latest.update(metrics)
        if watch and self.diverged_at_step is None and not all(
                math.isfinite(v) for v in metrics.values()):
            # Checked where values reach the host anyway: no extra sync per step.
            self.diverged_at_step = step
            self.trainer.should_stop = True
        for logger in self.loggers:
            logger.log_metrics(metrics, step=step)

    def training_step(self, batch: Batch | list[Entry], batch_idx: int) -> None:
        """Optimizer steps, driven here (manual optimization).

        Lightning's automatic optimization wraps every step in a closure and a dozen
        hook dispatches, which cost more than the whole step of a small model; here each
        step is the plain zero_grad → backward → step, still through Lightning's
        optimizer wrapper so precision, devices and the step counter stay Lightning's.
        A batch is a list of entries (see ``RegressionDataModule``), one step each, so
        Lightning's per-batch bookkeeping is paid once for all of them; a plain
        ``(x, y)`` batch from any other loader is one step of the current epoch.
        """
        opt = self.optimizers()
        tally = self._tally
        if len(batch) == 2 and isinstance(batch[0], torch.Tensor):  # (x, y), or [x, y]
            batch = [(batch[0], batch[1], self.current_epoch, False)]
        every = max(1, int(self.trainer.log_every_n_steps))
        step_fn = (self._lbfgs_step if isinstance(opt.optimizer, torch.optim.LBFGS)
                   else self._gradient_step)
        # Read once per batch: every entry's tensors sit on one device, and each step
        # below advances Lightning's step counter by one.
        on_host = not batch or batch[0][0].device.type == "cpu"
        step = self.trainer.global_step
        for x, y, epoch, last in batch:
            if epoch != tally.open_epoch:
                if tally.open_epoch is not None:
                    self._end_epoch()
                tally.open_epoch = epoch
            due = step % every == 0
            loss, value = step_fn(opt, x, y, due or on_host)
            if value is not None:
                if not math.isfinite(value):
                    self._diverged(step, value)
                    break  # no further steps in this batch
                if due:
                    self._log({"train/loss": value}, step)
                    tally.log_due = True
            tally.add(loss, value, x.shape[0])
            step += 1
            if last:
                self._end_epoch()
        # An interruption is honoured here, at the end of the Lightning batch (a few ms
        # away), so the checkpoint sits on a batch boundary and a resume skips no step.

    # Each returns the loss and, where it is on the host (CPU) or wanted (a logging
    # step), its value. A non-finite value is caught before the weights take the step,
    # except with L-BFGS, which only shows its loss after.
    def _gradient_step(self, opt: Any, x: torch.Tensor, y: torch.Tensor, read: bool
                       ) -> tuple[torch.Tensor, float | None]:
        loss = self.loss_fn(self.model(x), y)
        # Reading a CPU scalar is free; on a GPU it is a sync, so only at log points.
        value = loss.item() if read else None
        if value is not None and not math.isfinite(value):
            return loss, value
        if self._plain_step:
            # Lightning's precision and hook dispatch do nothing here; its step counter
            # (and profiler) is still kept.
            opt._on_before_step()
            opt.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            opt.optimizer.step()
            opt._on_after_step()
        else:
            opt.zero_grad(set_to_none=True)
            self.manual_backward(loss)
            opt.step()
        return loss, value

    def _lbfgs_step(self, opt: Any, x: torch.Tensor, y: torch.Tensor, read: bool
                    ) -> tuple[torch.Tensor, float | None]:
        def closure() -> torch.Tensor:  # L-BFGS evaluates the loss many times
            opt.zero_grad()
            loss = self.loss_fn(self.model(x), y)
            self.manual_backward(loss)
            return loss

        loss = opt.step(closure=closure).detach()
        return loss, loss.item()

    def _diverged(self, step: int, value: float) -> None:
        self.diverged_at_step = step
        self.latest["train/loss"] = value
        self.trainer.should_stop = True

    def on_train_epoch_end(self) -> None:
        if self._tally.open_epoch is not None:  # a round cut short (interrupted, diverged)
            self._end_epoch()

    def _end_epoch(self) -> None:
        """Close the open data epoch: count it, write its scalars when due, tell listeners.

        Also stops the fit after ``max_epochs`` data epochs: Lightning counts rounds.
        """
        tally = self._tally
        epoch = int(tally.open_epoch or 0)
        tally.open_epoch = None
        tally.done = epoch + 1
        trainer = self.trainer
        max_epochs = trainer.max_epochs
        if max_epochs is not None and 0 < max_epochs <= tally.done:
            trainer.should_stop = True
        if tally.log_due or trainer.should_stop:
            metrics = self._epoch_metrics(epoch)
            if "train/loss_epoch" in metrics:
                self.history["train_loss"].append([epoch, metrics["train/loss_epoch"]])
            self._log(metrics, trainer.global_step)
        tally.reset()
        for listener in self._epoch_listeners:
            listener.on_data_epoch_end(trainer, self)

    def _epoch_metrics(self, epoch: int) -> dict[str, float]:
        metrics: dict[str, float] = {"epoch": float(epoch)}
        if self._tally.rows:
            metrics["train/loss_epoch"] = self._tally.mean()
        for i, opt in enumerate(self.trainer.optimizers):
            suffix = "" if len(opt.param_groups) == 1 else "/pg{}"
            for j, group in enumerate(opt.param_groups):
                name = f"lr-{type(opt).__name__}" + ("" if i == 0 else f"-{i}")
                metrics[name + suffix.format(j)] = float(group["lr"])
        scalars = getattr(self.model, "param_scalars", None)
        if scalars is not None:
            # w and b converging, as the seed documents print them.
            metrics.update({f"params/{k}": v for k, v in scalars().items()})
        return metrics

    # -- validation and test ------------------------------------------------------------
    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        x, y = batch
        # self.log here: checkpointing and early stopping monitor val/loss.
        # Every rank validates the whole split, so the sync (data-parallel) averages
        # equal values; it keeps Lightning's checkpoint monitor in step on all ranks.
        # The loggers get it from on_validation_epoch_end, at the optimizer step (Lightning
        # would log it at its own batch count and round number).
        self.log("val/loss", self.loss_fn(self.model(x), y), on_step=False, on_epoch=True,
                 batch_size=x.shape[0], sync_dist=self.trainer.world_size > 1, logger=False)

    def on_validation_epoch_end(self) -> None:
        value = self.trainer.callback_metrics.get("val/loss")
        if value is not None and not self.trainer.sanity_checking:
            epoch = max(0, self.epochs_done - 1)
            self.history["val_loss"].append([epoch, float(value)])
            # Divergence is the training loss's to call: a validation loss can overflow
            # while the weights are still finite (and worth the checkpoint it triggers).
            self._log({"val/loss": float(value)}, self.trainer.global_step, watch=False)

    def on_test_epoch_start(self) -> None:
        self._test_sums = RegressionSums()

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        x, y = batch
        # In the data's own units, so MSE and MAE read as the target does.
        self._test_sums.update(self.scaling.y_inverse(self.model(x)), self.scaling.y_inverse(y))

    def on_test_epoch_end(self) -> None:
        centered = getattr(self.model, "init_kwargs", {}).get("bias", True)
        self.test_metrics = self._test_sums.compute(centered=centered)
        self._log({f"test/{k}": v for k, v in self.test_metrics.items()},
                  self.trainer.global_step)
