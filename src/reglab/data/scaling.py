"""Standardization fitted on the training split and carried with the model.

The statistics are plain lists, so they travel inside checkpoints and ``model.pt``
(which load with ``weights_only=True``) and are applied again at prediction time.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn


def _moments(t: torch.Tensor, chunk: int = 1 << 16) -> tuple[torch.Tensor, torch.Tensor]:
    """Column means and (population) standard deviations in float64, two passes a block
    of rows at a time: no temporary the size of a million-row split. Sums or squares
    that pass float64's range (values near 1e300) are summed again scaled down, so such
    a column's statistics stay finite (short of values near ±1.7e308 at both ends); so are
    squares that fall below it (deviations near 1e-300), so such a column is not taken
    for a constant one."""
    n = int(t.shape[0])

    def blocks() -> Any:
        return (t[i:i + chunk].double().cpu() for i in range(0, n, chunk))

    mean = sum((b.sum(dim=0) for b in blocks()), torch.zeros(t.shape[1],
                                                             dtype=torch.float64)) / n
    if not bool(torch.isfinite(mean).all()):
        mean = sum((b.div(n).sum(dim=0) for b in blocks()), torch.zeros_like(mean))
    std = (sum(((b - mean).pow(2).sum(dim=0) for b in blocks()), torch.zeros_like(mean))
           / n).sqrt()
    # Deviations below ~1e-154 have squares in float64's subnormal range or under it.
    wide = ~torch.isfinite(std) | (std < 1e-140)
    if bool(wide.any()):
        top = torch.stack([(b - mean).abs().amax(dim=0) for b in blocks()]).amax(dim=0)
        top = torch.where(top > 0, top, torch.ones_like(top))
        scaled = sum((((b - mean) / top).pow(2).sum(dim=0) for b in blocks()),
                     torch.zeros_like(mean))
        std = torch.where(wide, top * (scaled / n).sqrt(), std)
    return mean, std


def _standardize_(t: torch.Tensor, mean: Any, std: Any) -> torch.Tensor:
    """(t − mean) / std written into ``t``."""
    return t.sub_(mean).div_(std)


@dataclass
class Scaling:
    """x' = (x − x_mean) / x_std and y' = (y − y_mean) / y_std; ``None`` leaves one as is."""

    x_mean: list[float] | None = None
    x_std: list[float] | None = None
    #: One number for one target (as model.pt files have always held), a list for several.
    y_mean: float | list[float] | None = None
    y_std: float | list[float] | None = None

    @classmethod
    def fit(cls, x: torch.Tensor, y: torch.Tensor, features: bool, target: bool) -> Scaling:
        """Statistics of the training rows; a constant column keeps scale 1."""
        out = cls()
        if features:
            mean, std = _moments(x)
            out.x_mean = mean.tolist()
            out.x_std = torch.where(std > 0, std, torch.ones_like(std)).tolist()
        if target:
            mean, std = _moments(y.reshape(y.shape[0], -1))
            std = torch.where(std > 0, std, torch.ones_like(std))
            if mean.shape[0] == 1:
                out.y_mean, out.y_std = float(mean[0]), float(std[0])
            else:
                out.y_mean, out.y_std = mean.tolist(), std.tolist()
        return out

    def target(self, j: int) -> Scaling:
        """The same scaling restricted to target column ``j`` (features unchanged)."""
        if not isinstance(self.y_mean, list):
            return self
        return Scaling(self.x_mean, self.x_std, float(self.y_mean[j]), float(self.y_std[j]))

    @property
    def active(self) -> bool:
        return self.x_mean is not None or self.y_mean is not None

    def _x_stats(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return (torch.tensor(self.x_mean, dtype=x.dtype, device=x.device),
                torch.tensor(self.x_std, dtype=x.dtype, device=x.device))

    def x(self, x: torch.Tensor) -> torch.Tensor:
        if self.x_mean is None:
            return x
        mean, std = self._x_stats(x)
        return (x - mean) / std

    def _y_stats(self, y: torch.Tensor) -> tuple[torch.Tensor | float, torch.Tensor | float]:
        if isinstance(self.y_mean, list):
            return (torch.tensor(self.y_mean, dtype=y.dtype, device=y.device),
                    torch.tensor(self.y_std, dtype=y.dtype, device=y.device))
        return self.y_mean, self.y_std

    def y(self, y: torch.Tensor) -> torch.Tensor:
        if self.y_mean is None:
            return y
        mean, std = self._y_stats(y)
        return (y - mean) / std

    def x_(self, x: torch.Tensor) -> torch.Tensor:
        """:meth:`x` in place (the same two roundings): a reused buffer is scaled
        without a temporary of its size."""
        return x if self.x_mean is None else _standardize_(x, *self._x_stats(x))

    def y_(self, y: torch.Tensor) -> torch.Tensor:
        """:meth:`y` in place."""
        return y if self.y_mean is None else _standardize_(y, *self._y_stats(y))

    def y_inverse(self, y: torch.Tensor) -> torch.Tensor:
        if self.y_mean is None:
            return y
        mean, std = self._y_stats(y)
        return y * std + mean

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
