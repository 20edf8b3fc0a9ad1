"""The Lightning module: any ``torch.nn.Module`` regressor, a loss, an optimizer and an
optional learning-rate scheduler, trained by Lightning's automatic optimization."""

from __future__ import annotations

import math
import os
import signal
import threading
from collections.abc import Callable
from typing import Any

import pytorch_lightning as pl
import torch
from torch import nn

from reglab.analysis.metrics import RegressionSums
from reglab.data.scaling import Scaling

#: TensorBoard's group for a linear model's weights and bias: after ``train`` and ``val``
#: in the SCALARS tab, which sorts groups by name and opens the first two.
PARAMS_GROUP = "weights"

Batch = tuple[torch.Tensor, torch.Tensor]


class RegressionModule(pl.LightningModule):
    """Trains ``model`` with ``loss``: a stock LightningModule, so every ``Trainer``
    argument and callback means what the Lightning docs say.

    ``optimizer`` and ``scheduler`` are factories (``functools.partial`` from the config)
    bound to the model's parameters here, so their configs never need to know the model.
    ``scheduler`` is Lightning's ``lr_scheduler_config`` dict whose ``scheduler`` entry
    is such a factory (``interval``, ``frequency``, ``monitor`` as Lightning reads them).

    ``training_step`` returns the loss and logs ``train/loss`` (every
    ``log_every_n_steps`` steps) and ``train/loss_epoch`` (the epoch's row-weighted
    mean) through ``self.log``, so ``EarlyStopping`` and ``ModelCheckpoint`` can monitor
    either, as they can ``val/loss``. On an accelerator the loss stays on the device
    between logging steps: no host sync per step.
    """

    def __init__(self, model: nn.Module, optimizer: Callable[..., torch.optim.Optimizer],
                 loss: nn.Module, scaling: Scaling | None = None,
                 data_info: dict[str, Any] | None = None,
                 scheduler: dict[str, Any] | None = None,
                 model_spec: dict[str, Any] | None = None,
                 parts: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.model = model
        self.loss_fn = loss
        self.optimizer_factory = optimizer
        self.scheduler_config = dict(scheduler) if scheduler else None
        #: ``{"class": "pkg.mod.Class", "kwargs": {...}}``: how to rebuild ``model``.
        self.model_spec = model_spec or {}
        #: The loss, optimizer and scheduler as config nodes (``_target_`` and arguments),
        #: stored in checkpoints so ``load_from_checkpoint`` can rebuild them.
        self.parts = dict(parts or {})
        #: The data's standardization, undone for test metrics and stored in checkpoints.
        self.scaling = scaling or Scaling()
        #: Feature and target names, stored with checkpoints for prediction files.
        self.data_info = data_info or {}
        #: The least-squares optimum's training loss, drawn beside the loss curve.
        self.reference_loss: float | None = None
        #: That optimum itself (a ``reglab.analysis.least_squares.LeastSquares``), for the fit plot.
        self.closed_form: Any = None
        self.test_metrics: dict[str, float] | None = None
        #: Epoch means of the train loss and each validation loss, as [epoch, value] pairs.
        self.history: dict[str, list[list[float]]] = {"train_loss": [], "val_loss": []}
        #: The optimizer step at which the loss was first seen non-finite, if ever.
        self.diverged_at_step: int | None = None
        #: SIGINT or SIGTERM, when one asked the fit to stop.
        self.interrupted_by: str | None = None
        self._previous_handlers: dict[int, Any] = {}
        self._test_sums = RegressionSums()
        self._epoch_start_step = 0
        self._params_step: int | None = None
        self._epoch_sum: torch.Tensor | float = 0.0
        self._epoch_rows = 0
        self._epoch_batches = 0
        #: The epoch whose train/loss_epoch is logged (once, whoever asks first).
        self._closed_epoch: int | None = None
        #: Whether that epoch's record (history, TensorBoard) was left to the resume.
        self._left_open = False
        #: A part-done epoch's sums read from the checkpoint a resume started from.
        self._carried: dict[str, Any] | None = None
        self._log_every = 1
        self._every_step = True  # train/loss to callback_metrics at every step
        self._lr_each_step = False
        self._lr_own = True
        self._on_host = True

    def reset_records(self) -> None:
        """Forget what a tuning run (``Tuner.lr_find``) recorded, before the real fit."""
        self.history = {"train_loss": [], "val_loss": []}
        self.diverged_at_step = None
        self._params_step = None
        self._val_sums = torch.zeros(2, dtype=torch.float64)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer_factory(self.model.parameters())
        if not self.scheduler_config:
            return optimizer
        config = dict(self.scheduler_config)
        # OneCycleLR needs the fit's length: Lightning knows it (max_epochs, max_steps,
        # limit_train_batches, accumulation and devices included).
        config["scheduler"] = self.make_scheduler(
            optimizer, lambda: int(self.trainer.estimated_stepping_batches))
        return {"optimizer": optimizer, "lr_scheduler": config}

    def make_scheduler(self, optimizer: torch.optim.Optimizer,
                       total_steps: Callable[[], int]) -> Any:
        """The configured scheduler on ``optimizer``; ``total_steps`` is asked only by a
        scheduler that takes that argument and was not given it."""
        factory = self.scheduler_config["scheduler"]
        if _takes(factory, "total_steps") and _bound(factory, "total_steps") is None:
            return factory(optimizer, total_steps=total_steps())
        return factory(optimizer)

    # -- checkpoints --------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Stamp which reglab and which model wrote it, so a mismatch can be named and the
        model rebuilt without this module."""
        from reglab import __version__
        from reglab.artifacts import FORMAT_VERSION

        checkpoint["reglab"] = {
            "version": __version__, "format_version": FORMAT_VERSION,
            "model": type(self.model).__name__,
            "model_class": self.model_spec.get("class"),
            "model_kwargs": dict(self.model_spec.get("kwargs") or {}),
            "scaling": self.scaling.to_dict(),
            "data": dict(self.data_info),
            "parts": dict(self.parts),
            # The run's seed (seed_everything's), so a seed=null run killed before it
            # wrote metrics.json is resumed on the same splits.
            "seed": int(os.environ["PL_GLOBAL_SEED"]) if os.environ.get(
                "PL_GLOBAL_SEED", "").isdigit() else None,
            # The epochs so far, so a resumed run's record covers the whole run.
            "history": {k: [list(p) for p in v] for k, v in self.history.items()},
            # A part-done epoch's running sums, so the resumed epoch's mean is the mean
            # over all its rows, as an uninterrupted run's is.
            "epoch_partial": self._partial_epoch(),
        }

    def _partial_epoch(self) -> dict[str, Any] | None:
        trainer = self.trainer
        epoch = trainer.current_epoch
        if not self._epoch_rows or (self._closed_epoch == epoch and not self._left_open):
            return None
        if trainer.world_size > 1:
            # Each rank's share would need a collective that a rank saving alone (a
            # signal) cannot make: a data-parallel resume starts its epoch's sums afresh.
            return None
        return {"epoch": epoch, "sum": float(self._epoch_sum), "rows": self._epoch_rows,
                "batches": self._epoch_batches, "start_step": self._epoch_start_step}

    @classmethod
    def load_from_checkpoint(cls, checkpoint_path: Any, *args: Any,
                             allow_modules: Any = (), **kwargs: Any) -> Any:
        """Rebuild a module from its checkpoint alone, as ``save_hyperparameters`` lets a
        stock module: the model from its recorded class and arguments, the loss,
        optimizer and scheduler from their recorded configs, and the data's scaling, so
        ``trainer.test`` reports in the data's units. Arguments given here win. A class
        outside reglab and torch is imported only when its package is in
        ``allow_modules`` (importing runs its code)."""
        from reglab.artifacts import module_arguments

        rebuilt = module_arguments(checkpoint_path, allow_modules, skip=set(kwargs))
        return super().load_from_checkpoint(checkpoint_path, *args, **rebuilt, **kwargs)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Take back the per-epoch history of the run this checkpoint continues."""
        stamp = checkpoint.get("reglab") or {}
        history = stamp.get("history")
        if isinstance(history, dict):
            self.history = {k: [list(p) for p in history.get(k) or []]
                            for k in ("train_loss", "val_loss")}
        partial = stamp.get("epoch_partial")
        self._carried = partial if isinstance(partial, dict) else None

    # -- signals ------------------------------------------------------------------------
    def on_train_start(self) -> None:
        """Turn SIGINT/SIGTERM into a clean stop: finish the step, checkpoint, report.

        Installed here, after Lightning registers its own SIGTERM handler (which would
        end the fit with an exception and no report), and removed at train end.
        """
        trainer = self.trainer
        self._log_every = max(1, int(trainer.log_every_n_steps))
        self._every_step = train_loss_watched(trainer)
        self._lr_each_step = any(getattr(c, "interval", None) == "step"
                                 for c in trainer.lr_scheduler_configs)
        # One owner per tag: with Lightning's LearningRateMonitor added, lr-* are its.
        self._lr_own = not any(isinstance(c, pl.callbacks.LearningRateMonitor)
                               for c in trainer.callbacks)
        self._on_host = self.device.type == "cpu"
        if self.reference_loss is not None:
            self._write({"train/loss_closed_form": self.reference_loss}, trainer.global_step)
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous_handlers[sig] = signal.signal(sig, self._on_signal)

    def on_train_end(self) -> None:
        step = self.trainer.global_step
        if self.reference_loss is not None:  # two points: a flat reference line
            self._write({"train/loss_closed_form": self.reference_loss}, step)
        self._write_params(step)  # the final parameters and rate, always
        for sig, handler in self._previous_handlers.items():
            signal.signal(sig, handler)
        self._previous_handlers = {}

    def _on_signal(self, signum: int, frame: Any) -> None:
        if self.interrupted_by is not None:  # asked twice: stop now, no clean-up
            raise KeyboardInterrupt
        self.interrupted_by = signal.Signals(signum).name
        self.trainer.should_stop = True

    # -- training -----------------------------------------------------------------------
    def _write(self, metrics: dict[str, float], step: int) -> None:
        """Scalars the module writes itself (no monitor needs them): straight to loggers."""
        if metrics:
            for logger in self.loggers:
                logger.log_metrics(metrics, step=step)

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor | None:
        x, y = batch
        loss = self.loss_fn(self.model(x), y)
        step = self.trainer.global_step
        # Lightning writes step scalars after the steps where (step + 1) is a multiple of
        # log_every_n_steps; ``self.log`` costs about half a millisecond a call, more than
        # a small model's whole step. So where nothing but the loggers can read train/loss
        # (see train_loss_watched) it is handed over at those steps only; a callback or
        # monitor that could read callback_metrics finds it there after every step, as a
        # stock module's self.log(on_step=True) puts it (benchmarks/NOTES.md).
        due = (step + 1) % self._log_every == 0
        # A CPU scalar reads for free; on an accelerator only at logging steps.
        if (self._on_host or due) and not torch.isfinite(loss):
            self.diverged_at_step = step
            self.trainer.should_stop = True
            if not isinstance(self.optimizers().optimizer, torch.optim.LBFGS):
                return None  # Lightning skips the step: the weights stay finite
        rows = x.shape[0]
        if due or self._every_step:
            self.log("train/loss", loss, on_step=True, on_epoch=False, batch_size=rows)
        if due and self._lr_each_step and self._lr_own:  # a scheduler stepping every step
            self._write(self._lr_scalars(), step)
        # The epoch's row-weighted sum stays on the device: no sync per step.
        self._epoch_sum = loss.detach() * rows + self._epoch_sum
        self._epoch_rows += rows
        self._epoch_batches += 1
        return loss

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        """The epoch's last batch closes it: ``train/loss_epoch`` is the current epoch's
        before any callback's ``on_train_epoch_end``, as a stock module's
        ``self.log(on_epoch=True)`` is (Lightning runs callbacks' epoch-end hooks before
        the module's). An epoch cut short (max_steps, a stop) is closed there instead."""
        if self.trainer.is_last_batch:
            self.close_epoch()

    def on_train_epoch_start(self) -> None:
        trainer = self.trainer
        self._epoch_start_step = trainer.global_step
        self._epoch_sum, self._epoch_rows, self._epoch_batches = 0.0, 0, 0
        carried, self._carried = self._carried, None
        if carried and carried.get("epoch") == trainer.current_epoch:
            # Resumed part-way through this epoch: its first batches' sums come along.
            self._epoch_sum, self._epoch_rows = float(carried["sum"]), int(carried["rows"])
            self._epoch_batches = int(carried.get("batches") or 0)
            self._epoch_start_step = int(carried.get("start_step", trainer.global_step))

    def on_train_epoch_end(self) -> None:
        """``train/loss_epoch`` and the epoch's record (see :meth:`close_epoch`); the
        parameters' scalars for an epoch that held a logging step."""
        self.close_epoch()
        step = self.trainer.global_step
        # Parameters for the epochs that hold a logging step, as the step scalars are.
        first, last = self._epoch_start_step, step - 1
        if last >= first and (last + 1) // self._log_every > first // self._log_every:
            self._write_params(step)

    def close_epoch(self) -> None:
        """``train/loss_epoch``: the epoch's mean loss per row, for monitors (Lightning
        calls the module's epoch-end hook before ``EarlyStopping`` and ``ModelCheckpoint``
        look) and for the loggers, and its entry in the history; once per epoch.

        ``LastCheckpoint`` calls it before writing ``last.ckpt`` at an epoch's end, so the
        checkpoint holds the epoch's record and a run killed just after resumes into the
        same history as one never killed. An epoch cut short by a signal is logged for
        the monitors but not recorded: the resume finishes it, from the sums its
        checkpoint carries, and records it whole."""
        trainer = self.trainer
        epoch, step = trainer.current_epoch, trainer.global_step
        if self._closed_epoch == epoch:
            return
        self._closed_epoch, self._left_open = epoch, False
        total, rows = self._epoch_sum, self._epoch_rows
        if trainer.world_size > 1:  # every rank's share: the global mean, alike on all ranks
            packed = torch.stack([torch.as_tensor(total, dtype=torch.float64,
                                                  device=self.device).reshape(()),
                                  torch.tensor(float(rows), dtype=torch.float64,
                                               device=self.device)])
            packed = trainer.strategy.reduce(packed, reduce_op="sum")
            total, rows = packed[0], int(packed[1])
        if rows:
            mean = total / rows
            # logger=False: written below without Lightning's flush of every logger.
            # Already the global mean on every rank: sync_dist averages equal numbers
            # (the same value), as Lightning asks of an epoch metric under DDP.
            self.log("train/loss_epoch", mean, on_step=False, on_epoch=True, logger=False,
                     sync_dist=trainer.world_size > 1)
            cut_short = (self.interrupted_by is not None and trainer.world_size == 1
                         and self._epoch_batches < trainer.num_training_batches)
            if cut_short:
                self._left_open = True
                return
            value = float(mean)  # one host sync per epoch
            self.history["train_loss"].append([epoch, value])
            # At the step Lightning writes epoch-level metrics: the epoch's last step.
            self._write({"train/loss_epoch": value, "epoch": float(epoch)}, max(step - 1, 0))

    def _write_params(self, step: int) -> None:
        if step != self._params_step:
            self._write({**self._param_scalars(), **self._lr_scalars()}, step)
            self._params_step = step

    def _lr_scalars(self) -> dict[str, float]:
        """``train/lr-<Optimizer>`` (``/pg<i>`` per parameter group): Lightning's
        ``LearningRateMonitor`` names under ``train/``, so TensorBoard files them after the
        losses; written by the module because that callback costs about half a
        millisecond every epoch, more than a small model's epoch."""
        out: dict[str, float] = {}
        if not self._lr_own:
            return out
        for i, opt in enumerate(self.trainer.optimizers):
            name = f"train/lr-{type(opt).__name__}" + ("" if i == 0 else f"-{i}")
            groups = opt.param_groups
            for j, group in enumerate(groups):
                out[name if len(groups) == 1 else f"{name}/pg{j + 1}"] = float(group["lr"])
        return out

    def _param_scalars(self) -> dict[str, float]:
        scalars = getattr(self.model, "param_scalars", None)
        if scalars is None:
            return {}
        # w and b converging, as the seed documents print them.
        return {f"{PARAMS_GROUP}/{k}": v for k, v in scalars().items()}

    # -- validation and test ------------------------------------------------------------
    def _divided_evaluation(self) -> bool:
        """Whether each rank evaluates only its own rows (``data=stream``)."""
        trainer = self.trainer
        return trainer.world_size > 1 and bool(
            getattr(trainer.datamodule, "divides_evaluation", False))

    def on_validation_epoch_start(self) -> None:
        self._val_sums = torch.zeros(2, dtype=torch.float64, device=self.device)

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        x, y = batch
        loss = self.loss_fn(self.model(x), y)
        if self._divided_evaluation():  # summed here, reduced once at the epoch's end
            self._val_sums += torch.stack([loss.detach().double() * x.shape[0],
                                           torch.tensor(float(x.shape[0]),
                                                        dtype=torch.float64,
                                                        device=self.device)])
            return
        # Every rank validates the whole split, so the sync (data-parallel) averages
        # equal values; it keeps the monitors of ModelCheckpoint and EarlyStopping in
        # step on all ranks.
        self.log("val/loss", loss, on_step=False, on_epoch=True, batch_size=x.shape[0],
                 sync_dist=self.trainer.world_size > 1)

    def on_validation_epoch_end(self) -> None:
        trainer = self.trainer
        value = None
        if self._divided_evaluation():
            # The rows of every rank: Lightning's own sync of an epoch mean divides the
            # summed row count by the number of ranks in integers, which is off when
            # the ranks hold different numbers of rows.
            total = trainer.strategy.reduce(self._val_sums.clone(), reduce_op="sum")
            value = total[0] / total[1]
            # Alike on every rank already: the sync averages equal values (and is what
            # Lightning asks of an epoch metric under DDP).
            self.log("val/loss", value.float(), on_step=False, on_epoch=True, sync_dist=True)
        if trainer.sanity_checking or trainer.state.fn != "fit":
            return
        value = trainer.callback_metrics.get("val/loss") if value is None else value
        if value is not None:
            self.history["val_loss"].append([trainer.current_epoch, float(value)])

    def on_test_epoch_start(self) -> None:
        self._test_sums = RegressionSums()

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        x, y = batch
        # In the data's own units, so MSE and MAE read as the target does.
        self._test_sums.update(self.scaling.y_inverse(self.model(x)), self.scaling.y_inverse(y))

    def on_test_epoch_end(self) -> None:
        trainer = self.trainer
        if trainer.world_size > 1 and getattr(trainer.datamodule, "divides_evaluation", False):
            # Each rank tested its own rows: the sums of all of them, alike on every rank.
            self._test_sums.reduce(lambda t: trainer.strategy.reduce(
                t.to(self.device), reduce_op="sum").cpu())
        bias = getattr(self.model, "has_bias", None)
        centered = True if bias is None else bool(bias)
        targets = self.data_info.get("target")
        self.test_metrics = self._test_sums.compute(
            centered=centered, names=targets if isinstance(targets, list) else None)
        finite = {f"test/{k}": v for k, v in self.test_metrics.items()
                  if isinstance(v, float) and math.isfinite(v)}
        for name, own in (self.test_metrics.get("per_target") or {}).items():
            finite.update({f"test/{name}/{k}": v for k, v in own.items()
                           if isinstance(v, float) and math.isfinite(v)})
        for name, value in finite.items():
            # The same value on every rank (each tested the whole split, or the sums were
            # reduced): averaging equal values under DDP changes nothing, and Lightning
            # asks for it (a warning per metric otherwise).
            self.log(name, value, sync_dist=self.trainer.world_size > 1)


def _takes(factory: Any, name: str) -> bool:
    """Whether the callable ``factory`` (a class or ``functools.partial``) accepts ``name``."""
    import inspect

    target = getattr(factory, "func", factory)
    try:
        return name in inspect.signature(target).parameters
    except (TypeError, ValueError):
        return False


def _bound(factory: Any, name: str) -> Any:
    return (getattr(factory, "keywords", None) or {}).get(name)


#: Stock callbacks that read no metric but the one they monitor (if any).
_STOCK = ("pytorch_lightning.callbacks.", "lightning.pytorch.callbacks.")


def train_loss_watched(trainer: pl.Trainer) -> bool:
    """Whether anything but the loggers may read ``train/loss`` from ``callback_metrics``
    between logging steps: a callback that is neither reglab's own nor a stock one
    (stock ones read only their ``monitor``), a stock one monitoring ``train/loss``, or a
    scheduler monitoring it."""
    for callback in trainer.callbacks:
        module = type(callback).__module__ + "."
        if module.startswith("reglab."):
            continue
        if not module.startswith(_STOCK) or getattr(callback, "monitor", None) == "train/loss":
            return True
    return any(getattr(c, "monitor", None) == "train/loss" for c in trainer.lr_scheduler_configs)
