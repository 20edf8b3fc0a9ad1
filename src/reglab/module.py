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


class RegressionModule(pl.LightningModule):
    """Trains ``model`` with ``loss``; logs losses, learning rate and linear parameters.

    ``optimizer`` is a factory (a ``functools.partial`` from the config) bound to the
    model's parameters here, so the optimizer config never needs to know the model.

    Training scalars go straight to the loggers rather than through ``self.log``: that
    path costs about a millisecond per call, more than a whole step of a small model.
    The step loss is read from the device only every ``log_every_n_steps`` steps and the
    epoch mean once per epoch, so there is no host sync per step.
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
        self._test_sums = RegressionSums()
        self._epoch_loss: torch.Tensor | None = None
        self._epoch_rows = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return self.optimizer_factory(self.model.parameters())

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
        }

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
    def _log(self, metrics: dict[str, float], step: int) -> None:
        self.latest.update(metrics)
        if self.diverged_at_step is None and not all(math.isfinite(v) for v in metrics.values()):
            # Checked where values reach the host anyway: no extra sync per step.
            self.diverged_at_step = step
            self.trainer.should_stop = True
        for logger in self.loggers:
            logger.log_metrics(metrics, step=step)

    def on_train_epoch_start(self) -> None:
        self._epoch_loss = None
        self._epoch_rows = 0

    def training_step(self, batch: Batch | list[Batch], batch_idx: int) -> None:
        """Optimizer steps, driven here (manual optimization).

        Lightning's automatic optimization wraps every step in a closure and a dozen
        hook dispatches, which cost more than the whole step of a small model; here each
        step is the plain zero_grad → backward → step, still through Lightning's
        optimizer wrapper so precision, devices and the step counter stay Lightning's.
        A batch may be a list of mini-batches (see ``RegressionDataModule``): one step
        each, so Lightning's per-batch bookkeeping is paid once for all of them.
        """
        opt = self.optimizers()
        for x, y in batch if isinstance(batch, list) else [batch]:
            if not self._step(opt, x, y):
                break  # diverged: no further steps in this batch

    def _step(self, opt: Any, x: torch.Tensor, y: torch.Tensor) -> bool:
        step = self.trainer.global_step
        every = max(1, int(self.trainer.log_every_n_steps))
        if isinstance(opt.optimizer, torch.optim.LBFGS):  # evaluates the loss many times
            def closure() -> torch.Tensor:
                opt.zero_grad()
                loss = self.loss_fn(self.model(x), y)
                self.manual_backward(loss)
                return loss

            loss = opt.step(closure=closure).detach()
            value: float | None = loss.item()
        else:
            loss = self.loss_fn(self.model(x), y)
            # Reading a CPU scalar is free; on a GPU it is a sync, so only at log points.
            value = loss.item() if x.device.type == "cpu" or step % every == 0 else None
            if value is not None and not math.isfinite(value):
                self._diverged(step, value)  # before the step: the weights stay finite
                return False
            if self._plain_step:
                # Lightning's own path adds precision and hook dispatch that do nothing
                # here; its step counter (and profiler) is still kept.
                opt._on_before_step()
                opt.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                opt.optimizer.step()
                opt._on_after_step()
            else:
                opt.zero_grad(set_to_none=True)
                self.manual_backward(loss)
                opt.step()
        if value is not None:
            if not math.isfinite(value):  # L-BFGS: seen only after its step
                self._diverged(step, value)
                return False
            if step % every == 0:
                self._log({"train/loss": value}, step)
        rows = x.shape[0]
        weighted = loss.detach() * rows
        self._epoch_loss = weighted if self._epoch_loss is None else self._epoch_loss + weighted
        self._epoch_rows += rows
        # An interruption is honoured at the end of the Lightning batch (a few ms away),
        # so the checkpoint sits on a batch boundary and a resumed run skips no step.
        return True

    def _diverged(self, step: int, value: float) -> None:
        self.diverged_at_step = step
        self.latest["train/loss"] = value
        self.trainer.should_stop = True

    def on_train_epoch_end(self) -> None:
        metrics: dict[str, float] = {"epoch": float(self.current_epoch)}
        if self._epoch_loss is not None and self._epoch_rows:
            metrics["train/loss_epoch"] = float(self._epoch_loss) / self._epoch_rows
            self.history["train_loss"].append([self.current_epoch, metrics["train/loss_epoch"]])
        for i, opt in enumerate(self.trainer.optimizers):
            suffix = "" if len(opt.param_groups) == 1 else "/pg{}"
            for j, group in enumerate(opt.param_groups):
                name = f"lr-{type(opt).__name__}" + ("" if i == 0 else f"-{i}")
                metrics[name + suffix.format(j)] = float(group["lr"])
        scalars = getattr(self.model, "param_scalars", None)
        if scalars is not None:
            # w and b converging, epoch by epoch, as the seed documents print them.
            metrics.update({f"params/{k}": v for k, v in scalars().items()})
        self._log(metrics, self.trainer.global_step)

    # -- validation and test ------------------------------------------------------------
    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        x, y = batch
        # self.log here: checkpointing and early stopping monitor val/loss.
        # Every rank validates the whole split, so the sync (data-parallel) averages
        # equal values; it keeps Lightning's checkpoint monitor in step on all ranks.
        self.log("val/loss", self.loss_fn(self.model(x), y), on_step=False, on_epoch=True,
                 batch_size=x.shape[0], sync_dist=self.trainer.world_size > 1)

    def on_validation_epoch_end(self) -> None:
        value = self.trainer.callback_metrics.get("val/loss")
        if value is not None and not self.trainer.sanity_checking:
            self.latest["val/loss"] = float(value)
            self.history["val_loss"].append([self.current_epoch, float(value)])

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
