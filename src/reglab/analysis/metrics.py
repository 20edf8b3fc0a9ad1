"""Regression metrics accumulated batch by batch in float64: the one place they are
computed, for training's test step, reglab-eval, the run record and the least-squares fit.

Sums rather than stored predictions keep evaluation O(1) in memory on large data.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn


class RegressionSums:
    """Running per-target sums from which MSE, RMSE, MAE and R² follow exactly."""

    def __init__(self) -> None:
        self.n = 0
        self._sums: torch.Tensor | None = None  # (4, targets): Σe², Σ|e|, Σy, Σy²

    def update(self, pred: torch.Tensor, y: torch.Tensor) -> None:
        yd = y.double().reshape(y.shape[0], -1)
        err = pred.detach().double().reshape(yd.shape) - yd
        # One host transfer per batch for all the sums.
        sums = torch.stack([err.pow(2).sum(0), err.abs().sum(0), yd.sum(0),
                            yd.pow(2).sum(0)]).cpu()
        self.n += int(yd.shape[0])
        self._sums = sums if self._sums is None else self._sums + sums

    def reduce(self, total: Callable[[torch.Tensor], torch.Tensor]) -> None:
        """Replace the sums by ``total`` of them (an all-reduce across ranks that each
        scored their own rows)."""
        packed = torch.cat([torch.tensor([float(self.n)], dtype=torch.float64),
                            self._sums.reshape(-1)])
        packed = total(packed)
        self.n = round(float(packed[0]))
        self._sums = packed[1:].reshape(self._sums.shape)

    def compute(self, centered: bool = True, names: list[str] | None = None
                ) -> dict[str, Any]:
        """MSE, RMSE, MAE and R². ``centered=False`` gives the uncentred R² (1 − RSS/Σy²)
        that statistics packages report for a model without intercept.

        With several targets, MSE and MAE are means over every value, R² the mean of the
        targets' R² (scikit-learn's ``uniform_average``), and ``per_target`` holds each
        target's own figures under its name."""
        if self.n == 0 or self._sums is None:
            raise ValueError("no rows were evaluated")
        per = [self._one(self._sums[:, j].tolist(), centered)
               for j in range(self._sums.shape[1])]
        if len(per) == 1:
            return per[0]
        mse = sum(p["mse"] for p in per) / len(per)
        r2s = [p["r2"] for p in per]
        out: dict[str, Any] = {
            "mse": mse, "rmse": math.sqrt(mse), "mae": sum(p["mae"] for p in per) / len(per),
            "r2": None if None in r2s else sum(r2s) / len(r2s)}
        if None in r2s:
            out["r2_undefined"] = "a target is constant on these rows (see per_target)"
        labels = names if names is not None and len(names) == len(per) else [
            f"y{j}" for j in range(len(per))]
        out["per_target"] = dict(zip(labels, per, strict=True))
        return out

    def _one(self, sums: list[float], centered: bool) -> dict[str, Any]:
        sse, sae, sy, syy = sums
        mse = sse / self.n
        total = syy - sy ** 2 / self.n if centered else syy
        out: dict[str, Any] = {"mse": mse, "rmse": math.sqrt(mse), "mae": sae / self.n}
        # R² compares the error with the target's own variation: none, no R² (null, and
        # why, rather than NaN, or scikit-learn's stand-in of 0 or 1).
        if total > 0:
            out["r2"] = 1.0 - sse / total
        else:
            out["r2"] = None
            out["r2_undefined"] = ("the target is constant on these rows: R² divides by "
                                   "its variation, which is 0")
        return out


def adjusted_r2(r2: float | None, n: int, p: int, intercept: bool) -> dict[str, float]:
    """Adjusted R² for ``p`` regressors on ``n`` rows; empty where it is undefined."""
    dof = n - p - (1 if intercept else 0)
    if dof <= 0 or r2 is None or not math.isfinite(r2):
        return {}
    return {"adjusted_r2": 1.0 - (1.0 - r2) * (n - (1 if intercept else 0)) / dof}


def predictions(model: nn.Module, x: torch.Tensor, y: torch.Tensor, scaling: Any = None,
                chunk: int = 1 << 16) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(the model's prediction, in training units; the rows' targets as given) a chunk at
    a time: the one walk over a split that :func:`score` and :func:`split_loss` share.

    ``x`` is in data units; ``scaling`` (the model's standardization) takes each chunk to
    the units the model was trained in. Inputs are cast to the model's own dtype and
    device, so float64 data scores a float32 model. Call it under ``torch.no_grad()``.
    """
    param = next(iter(model.parameters()), None)
    dtype = param.dtype if param is not None else x.dtype
    device = param.device if param is not None else x.device
    for i in range(0, int(x.shape[0]), chunk):
        xs = x[i:i + chunk]
        if scaling is not None:
            xs = scaling.x(xs.double())
        yield model(xs.to(device, dtype)), y[i:i + chunk]


def score(model: nn.Module, x: torch.Tensor, y: torch.Tensor, scaling: Any = None,
          chunk: int = 1 << 16, sums: RegressionSums | None = None) -> RegressionSums:
    """Sums over a whole split in data units: predictions are taken back to the data's
    units, so MSE and MAE read as the target does. ``sums``: add to these (a split
    scored a piece at a time)."""
    sums = sums if sums is not None else RegressionSums()
    with torch.no_grad():
        for pred, ys in predictions(model, x, y, scaling, chunk):
            pred = pred.double().cpu()
            if scaling is not None:
                pred = scaling.y_inverse(pred)
            sums.update(pred, ys.cpu())
    return sums


def split_loss(model: nn.Module, loss_fn: nn.Module, x: torch.Tensor, y: torch.Tensor,
               scaling: Any = None, chunk: int = 1 << 14) -> float:
    """The loss of ``model`` over a whole split, evaluated in float64 a chunk at a time.

    ``x``, ``y`` are in data units; ``scaling`` takes each chunk to training units, where
    the loss is defined. Float64 so that the comparison with the least-squares optimum is
    not blurred by float32 rounding of the predictions (about 1e-4 of a small MSE);
    chunked sums so a million-row split costs no full-size temporaries.
    """
    import copy

    model64 = copy.deepcopy(model).double().eval()
    summed = copy.copy(loss_fn)
    summed.reduction = "sum"
    total = 0.0
    with torch.no_grad():
        for pred, ys in predictions(model64, x, y, scaling, chunk):
            ys = ys.to(pred.device, torch.float64)
            total += float(summed(pred, ys if scaling is None else scaling.y(ys)))
    mean = getattr(loss_fn, "reduction", "mean") == "mean"
    return total / (int(y.numel()) if mean else 1)


def cv_record(folds: int, rows: int, train_losses: list[float], val_losses: list[float]
              ) -> dict[str, Any]:
    """The ``cv`` record of a K-fold cross-validation (in memory or streamed): each fold's
    losses and their mean; ``std`` is numpy's default (ddof=0), as scikit-learn's
    ``GridSearchCV`` reports ``std_test_score``."""
    import numpy as np

    return {"folds": folds, "rows": int(rows),
            "val_loss": val_losses, "train_loss": train_losses,
            "val_loss_mean": float(np.mean(val_losses)),
            "val_loss_std": float(np.std(val_losses)),
            "train_loss_mean": float(np.mean(train_losses))}
