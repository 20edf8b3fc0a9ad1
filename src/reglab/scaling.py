"""Standardization fitted on the training split and carried with the model.

The statistics are plain lists, so they travel inside checkpoints and ``model.pt``
(which load with ``weights_only=True``) and are applied again at prediction time.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn


@dataclass
class Scaling:
    """x' = (x − x_mean) / x_std and y' = (y − y_mean) / y_std; ``None`` leaves one as is."""

    x_mean: list[float] | None = None
    x_std: list[float] | None = None
    y_mean: float | None = None
    y_std: float | None = None

    @classmethod
    def fit(cls, x: torch.Tensor, y: torch.Tensor, features: bool, target: bool) -> Scaling:
        """Statistics of the training rows; a constant column keeps scale 1."""
        out = cls()
        if features:
            xd = x.double()
            std = xd.std(dim=0, unbiased=False)
            out.x_mean = xd.mean(dim=0).tolist()
            out.x_std = torch.where(std > 0, std, torch.ones_like(std)).tolist()
        if target:
            yd = y.double()
            std = float(yd.std(unbiased=False))
            out.y_mean, out.y_std = float(yd.mean()), std if std > 0 else 1.0
        return out

    @property
    def active(self) -> bool:
        return self.x_mean is not None or self.y_mean is not None

    def x(self, x: torch.Tensor) -> torch.Tensor:
        if self.x_mean is None:
            return x
        mean = torch.tensor(self.x_mean, dtype=x.dtype, device=x.device)
        std = torch.tensor(self.x_std, dtype=x.dtype, device=x.device)
        return (x - mean) / std

    def y(self, y: torch.Tensor) -> torch.Tensor:
        return y if self.y_mean is None else (y - self.y_mean) / self.y_std

    def y_inverse(self, y: torch.Tensor) -> torch.Tensor:
        return y if self.y_mean is None else y * self.y_std + self.y_mean

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> Scaling:
        return cls(**(data or {}))


class Standardized(nn.Module):
    """A trained model that takes and returns data in its original units."""

    def __init__(self, model: nn.Module, scaling: Scaling) -> None:
        super().__init__()
        self.model = model
        self.scaling = scaling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Scaled in the input's precision, then cast to the model's (float64 data into a
        # float32 model); predictions come back in the input's precision.
        z = self.scaling.x(x)
        param = next(iter(self.model.parameters()), None)
        if param is not None and z.dtype != param.dtype:
            z = z.to(param.dtype)
        out = self.model(z)
        if x.is_floating_point() and out.dtype != x.dtype:
            out = out.to(x.dtype)
        return self.scaling.y_inverse(out)
