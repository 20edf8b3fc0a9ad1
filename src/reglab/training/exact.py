"""``optimizer=exact``: a linear or polynomial model fitted by solving least squares.

No gradient step is taken. The weights become the optimum
:func:`reglab.analysis.optimum.find_optimum` solves in float64 on the training split as
read (chunked QR with refinement, see :mod:`reglab.analysis.least_squares`): least
squares, or with ``weight_decay`` λ > 0 the ridge optimum
of loss + (λ/2)·(‖w‖² + b²), the very point SGD with that ``weight_decay`` approaches, so an
exact run and a gradient run of one config aim at the same weights.

Lightning still does what it does for every run: its validation and test loops log
``val/loss`` and ``test/*``, and ``trainer.save_checkpoint`` writes ``last.ckpt`` through
the run's checkpoint plugin, so ``reglab-eval``, ``reglab-predict`` and TensorBoard read an
exact run like any other. The run records 0 epochs and 0 steps: none were taken.

``data.folds=K`` adds K-fold cross-validation (:func:`cross_validate`): a model-selection
sweep over ``model.degree`` or ``optimizer.weight_decay`` is then decided by the mean
validation loss over K splits, not by one.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from reglab.errors import ConfigError


class ExactLeastSquares:
    """What ``optimizer=exact`` instantiates: not a torch optimizer, but it is built like
    one (a partial called with the model's parameters), so the ``optimizer`` group keeps
    one contract and ``weight_decay`` keeps torch's meaning (an L2 penalty on every
    parameter, the bias too)."""

    def __init__(self, params: Iterable[Any], weight_decay: float = 0.0) -> None:
        if isinstance(weight_decay, bool) or not isinstance(weight_decay, (int, float)) or \
                not math.isfinite(weight_decay) or weight_decay < 0:
            raise ValueError(f"weight_decay: expected a finite number >= 0, got {weight_decay!r}")
        self.weight_decay = float(weight_decay)
        self.param_groups = [{"params": list(params), "weight_decay": self.weight_decay}]
        #: Read as torch optimizers' defaults are (see ``reglab.analysis.optimum.weight_decay``).
        self.defaults = {"weight_decay": self.weight_decay}


def choose_precision(cfg: Any) -> bool:
    """``optimizer=exact`` keeps the model in float64 unless ``trainer.precision`` was named
    on the command line: the solve is float64, and a float32 model would round its answer
    to 7 digits (on NIST's Filip, every digit of the coefficients in data units). Sets
    ``trainer.precision=64-true`` in ``cfg`` and returns True when it chose."""
    from omegaconf import open_dict

    target = str((cfg.get("optimizer") or {}).get("_target_", ""))
    trainer = cfg.get("trainer")
    if not target.endswith(".ExactLeastSquares") or trainer is None:
        return False
    if str(trainer.get("precision")) != "32-true":
        return False  # bf16, 16, 64 or null: someone chose
    try:
        from hydra.core.hydra_config import HydraConfig

        task = list(HydraConfig.get().overrides.task)
    except ValueError:  # not composed by Hydra: nothing was named
        task = []
    if any(str(o).lstrip("+~").split("=")[0] == "trainer.precision" for o in task):
        return False
    with open_dict(trainer):
        trainer.precision = "64-true"
    return True


def is_exact(optimizer: Any) -> bool:
    """Whether the built ``optimizer`` (or its factory's result) asks for the exact fit."""
    return isinstance(optimizer, ExactLeastSquares)


def refusal(closed: dict[str, Any] | None, model: Any, datamodule: Any) -> str | None:
    """Why this run cannot be fitted exactly, or None when it can."""
    from reglab.config.parts import is_reglab_data, is_streamed

    if not is_reglab_data(datamodule) and not is_streamed(datamodule):
        return (f"optimizer=exact solves on reglab's own data module (its splits as read); "
                f"data is {type(datamodule).__qualname__}: use a gradient optimizer")
    if closed is None:
        return (f"optimizer=exact fits models that are linear in their parameters "
                f"(model=linear, model=polynomial); model is {type(model).__qualname__}: "
                "use a gradient optimizer (optimizer=adam, lbfgs, ...)")
    if "skipped" in closed:
        return f"optimizer=exact: {closed['skipped']}; use loss=mse"
    if "train_loss" not in closed and "pending" not in closed:
        return f"optimizer=exact: {closed.get('why_no_optimum') or 'no optimum to set'}"
    return None


def set_weights(model: Any, params: dict[str, Any]) -> None:
    """Copy the optimum (training units, one row per target) into ``model``'s parameters,
    in the dtype the model already has."""
    import torch

    linear = model.linear
    with torch.no_grad():
        weight = torch.tensor(params["weight"], dtype=torch.float64)
        linear.weight.copy_(weight.reshape(linear.weight.shape).to(linear.weight.dtype))
        if linear.bias is not None:
            bias = params["bias"]
            bias = torch.tensor(bias if isinstance(bias, list) else [bias],
                                dtype=torch.float64)
            linear.bias.copy_(bias.reshape(linear.bias.shape).to(linear.bias.dtype))


def fit(trainer: Any, module: Any, datamodule: Any, closed: dict[str, Any],
        cv: dict[str, Any] | None = None) -> tuple[float, dict[str, Any] | None]:
    """Set the weights to the optimum and record it as a fit would; Lightning's own
    validation loop then logs ``val/loss``. Returns the seconds spent solving here (for
    a streamed table, from here to the weights being set: its pass and the solve) and
    the cross-validation record (``cv``, or a streamed table's, made in its pass).

    A streamed table's record is still pending (:mod:`reglab.analysis.streamed_fit`):
    its pass is the census the data module takes in Lightning's setup, where the ranks
    of a data-parallel run are connected, so each reads its own units and their factors
    merge; the weights are set in the callbacks' setup that follows, before validation.
    """
    if "pending" not in closed:
        _set(trainer, module, closed, cv)
        trainer.validate(module, datamodule=datamodule, verbose=False)
        return 0.0, cv
    import time

    from reglab.analysis import streamed_fit
    from reglab.training.callbacks import AtSetup

    start, seconds = time.perf_counter(), 0.0

    def solve(trainer: Any, module: Any) -> None:
        nonlocal seconds, cv
        if "pending" in closed:
            cv = streamed_fit.solve(closed, module.model, module.loss_fn, trainer.datamodule)
            _set(trainer, module, closed, cv)
            seconds = time.perf_counter() - start  # the census pass and the solve

    hook = AtSetup(solve)
    trainer.callbacks.append(hook)
    try:
        trainer.validate(module, datamodule=datamodule, verbose=False)
    finally:
        trainer.callbacks.remove(hook)
    return seconds, cv


def _set(trainer: Any, module: Any, closed: dict[str, Any], cv: dict[str, Any] | None) -> None:
    """The optimum in the model, its history and scalars written as a fit's are.

    Under ``trainer.precision=64-true`` the model is made float64 first (Lightning would
    do so in its loops anyway), so the weights keep every digit the solver found; in
    other precisions they are rounded to the model's dtype, as a trained model's are.
    """
    if str(trainer.precision).startswith("64"):
        module.double()
    set_weights(module.model, closed["params"])
    module.reference_loss = closed["train_loss"]
    module.history = {"train_loss": [[0, closed["train_loss"]]],
                      "val_loss": [[0, closed["val_loss"]]]}
    # train/loss_epoch and the optimum as any fit writes them: HPARAMS and the Custom
    # Scalars chart read these tags.
    scalars = {"train/loss_epoch": float(closed["train_loss"]),
               "train/loss_closed_form": float(closed["train_loss"]), "epoch": 0.0}
    from reglab.training.module import PARAMS_GROUP

    scalars.update({f"{PARAMS_GROUP}/{k}": v for k, v in module.model.param_scalars().items()})
    if cv is not None:
        scalars.update({"cv/val_loss": cv["val_loss_mean"], "cv/val_loss_std": cv["val_loss_std"],
                        "cv/train_loss": cv["train_loss_mean"]})
    for logger in trainer.loggers:
        logger.log_metrics(scalars, step=0)


def draw_figures(trainer: Any, module: Any) -> float:
    """The pictures a fit gets (``fit.png`` or ``pred_vs_actual.png``), from each
    ``FitPlots`` callback the run has; returns the seconds spent drawing."""
    from reglab.training.callbacks import FitPlots

    return sum(c.draw(trainer, module, final_title="least-squares fit (optimizer=exact)")
               for c in trainer.callbacks if isinstance(c, FitPlots))


def save_checkpoint(trainer: Any, callbacks: list[Any]) -> Path | None:
    """``last.ckpt`` where the run's ``LastCheckpoint`` would write it (none when
    checkpointing is off or under ``fast_dev_run``, as for any fit)."""
    from reglab.training.callbacks import LastCheckpoint

    for callback in callbacks:
        if isinstance(callback, LastCheckpoint) and not trainer.fast_dev_run:
            path = Path(callback.path)
            path.parent.mkdir(parents=True, exist_ok=True)
            trainer.save_checkpoint(path, weights_only=False)
            return path
    return None


def cross_validate(model: Any, loss_fn: Any, datamodule: Any, optimizer: Any,
                   folds: int) -> dict[str, Any]:
    """K-fold cross-validation of the exact fit over the training rows.

    Fold j validates on ``datamodule.fold_indices()[j]`` and is solved on the other rows,
    in the run's training units (the run's scaling), so each fold's loss reads as the
    run's ``val_loss`` does (the record: :func:`reglab.analysis.metrics.cv_record`).
    """
    from reglab.analysis.metrics import cv_record
    from reglab.analysis.optimum import find_optimum

    train_losses, val_losses = [], []
    rows = datamodule.fold_indices()
    for j in range(folds):
        record, _ = find_optimum(model, loss_fn, datamodule.fold(j, rows), optimizer,
                                report=False)
        train_losses.append(float(record["train_loss"]))
        val_losses.append(float(record["val_loss"]))
    return cv_record(folds, datamodule.splits["train"][0].shape[0], train_losses, val_losses)


def check_config(cfg: Any) -> None:
    """What cannot go with ``optimizer=exact``, said before any data is read."""
    target = str((cfg.get("model") or {}).get("_target_", ""))
    if target == "reglab.models.regressors.MLP":
        raise ConfigError("optimizer=exact: fits models linear in their parameters "
                          "(model=linear, model=polynomial), not model=mlp; use a gradient "
                          "optimizer (optimizer=adam, lbfgs, ...)")
    loss = str((cfg.get("loss") or {}).get("_target_", ""))
    if loss.startswith("torch.nn.") and loss != "torch.nn.MSELoss":
        raise ConfigError(f"optimizer=exact: least squares is the optimum of MSE only, not "
                          f"of {loss.rsplit('.', 1)[-1]}; use loss=mse")
    if cfg.get("scheduler"):
        raise ConfigError("scheduler: optimizer=exact takes no steps, so a learning-rate "
                          "schedule has nothing to act on; use scheduler=none")
    if (cfg.get("tuner") or {}).get("lr_find") is not None:
        raise ConfigError("tuner: optimizer=exact has no learning rate to find; use "
                          "tuner=none")
    if cfg.get("ckpt_path"):
        raise ConfigError("ckpt_path: optimizer=exact has no training state to resume; run "
                          "it again (it solves in one pass)")
