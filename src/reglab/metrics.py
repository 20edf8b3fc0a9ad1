"""Regression metrics accumulated batch by batch in float64.

Sums rather than stored predictions keep evaluation O(1) in memory on large data.
"""

from __future__ import annotations

import math
from typing import Any

import torch


class RegressionSums:
    """Running sums from which MSE, RMSE, MAE and R² follow exactly."""

    def __init__(self) -> None:
        self.n = 0
        self.sse = 0.0
        self.sae = 0.0
        self.sy = 0.0
        self.syy = 0.0

    def update(self, pred: torch.Tensor, y: torch.Tensor) -> None:
        err = (pred.detach().double() - y.double())
        yd = y.double()
        # One host transfer per batch for all five sums.
        sums = torch.stack([err.pow(2).sum(), err.abs().sum(), yd.sum(), yd.pow(2).sum()])
        sse, sae, sy, syy = sums.tolist()
        self.n += int(y.shape[0])
        self.sse += sse
        self.sae += sae
        self.sy += sy
        self.syy += syy

    def compute(self, centered: bool = True) -> dict[str, float]:
        """MSE, RMSE, MAE and R². ``centered=False`` gives the uncentred R² (1 − RSS/Σy²)
        that statistics packages report for a model without intercept."""
        if self.n == 0:
            raise ValueError("no rows were evaluated")
        mse = self.sse / self.n
        total = self.syy - self.sy ** 2 / self.n if centered else self.syy
        r2 = 1.0 - self.sse / total if total > 0 else float("nan")
        return {"mse": mse, "rmse": math.sqrt(mse), "mae": self.sae / self.n, "r2": r2}


def adjusted_r2(r2: float, n: int, p: int, intercept: bool) -> dict[str, float]:
    """Adjusted R² for ``p`` regressors on ``n`` rows; empty where it is undefined."""
    dof = n - p - (1 if intercept else 0)
    if dof <= 0 or not math.isfinite(r2):
        return {}
    return {"adjusted_r2": 1.0 - (1.0 - r2) * (n - (1 if intercept else 0)) / dof}


def score(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, scaling: Any = None,
          chunk: int = 1 << 16) -> RegressionSums:
    """Sums over a whole split in data units, predicting a chunk at a time.

    ``x``, ``y`` are in data units; ``scaling`` (the model's standardization) takes each
    chunk of inputs to the units the model was trained in and its predictions back.
    Inputs are cast to the model's own dtype, so float64 data scores a float32 model.
    """
    sums = RegressionSums()
    param = next(iter(model.parameters()), None)
    dtype = param.dtype if param is not None else x.dtype
    device = param.device if param is not None else x.device
    with torch.no_grad():
        for i in range(0, int(x.shape[0]), chunk):
            xs = x[i:i + chunk]
            if scaling is not None:
                xs = scaling.x(xs.double())
            pred = model(xs.to(device, dtype)).double().cpu()
            if scaling is not None:
                pred = scaling.y_inverse(pred)
            sums.update(pred, y[i:i + chunk].cpu())
    return sums
