"""Which pictures a run gets, drawn from its model and data in the data's own units.

* one input column: the fitted curve through the data (``fit.png``, and frames in
  TensorBoard as the fit evolves), with the least-squares curve where one applies;
* several inputs: predicted against actual, and residuals (``pred_vs_actual.png``);
* a linear model with one or two parameters: the loss landscape around the optimum
  with the optimizer's path over it (``landscape.png``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from reglab.data.scaling import Standardized
from reglab.models.regressors import LinearRegression

#: At most this many points are scattered; curves and sums always use every row.
MAX_POINTS = 2000


def _subsample(n: int, k: int = MAX_POINTS) -> torch.Tensor:
    if n <= k:
        return torch.arange(n)
    return torch.randperm(n, generator=torch.Generator().manual_seed(0))[:k].sort().values


def _raw(datamodule: Any, split: str, rows: torch.Tensor | None = None
         ) -> tuple[torch.Tensor, torch.Tensor]:
    """A split (or some of its ``rows``) in the data's own units, on the CPU in float64."""
    x, y = datamodule.splits[split]  # as read: already in data units
    if rows is not None:
        x, y = x[rows.to(x.device)], y[rows.to(y.device)]
    return x.detach().cpu().double(), y.detach().cpu().double()


def _in_data_units(model: nn.Module, scaling: Any) -> nn.Module:
    import copy

    cpu = copy.deepcopy(model).cpu().double().eval()
    return Standardized(cpu, scaling) if scaling.active else cpu


def fit_frames(model: nn.Module, states: list[tuple[str, dict[str, Any]]], datamodule: Any,
               closed_form: Any = None, final_title: str = ""
               ) -> tuple[Any, list[np.ndarray], np.ndarray] | None:
    """For one-input data: the final fit (a ``run_plots.FitAnimation`` showing ``model``),
    one image per (title, model state) and the final fit's image, all on the same axes;
    None for several inputs."""
    import copy

    from reglab.reporting.figures import run_plots as plots

    data = datamodule.data
    if data is None or data.num_features != 1:
        return None
    x, y = _raw(datamodule, "train", _subsample(len(datamodule.splits["train"][0])))
    grid = torch.linspace(float(x.min()), float(x.max()), 300, dtype=torch.float64)[:, None]
    scaling = datamodule.scaling
    frame_model = copy.deepcopy(model)
    with torch.no_grad():
        final = _in_data_units(model, scaling)(grid)[:, 0].numpy()
        curves = []
        for _, state in states:
            frame_model.load_state_dict(state)
            curves.append(_in_data_units(frame_model, scaling)(grid)[:, 0].numpy())
        optimum = None
        if closed_form is not None and isinstance(model, LinearRegression):
            optimum = scaling.y_inverse(closed_form.predict(scaling.x(grid), model.features))
            optimum = optimum[:, 0].numpy()
    animation = plots.FitAnimation(x[:, 0].numpy(), y[:, 0].numpy(), grid[:, 0].numpy(),
                                   optimum, final, xlabel=data.feature_names[0],
                                   ylabel=data.target_names[0])
    images = [animation.frame(c, title) for (title, _), c in zip(states, curves, strict=True)]
    last = animation.frame(final, final_title)  # the figure left showing the trained model
    return animation, images, last


def pred_vs_actual(model: nn.Module, datamodule: Any) -> Any:
    """Predicted against actual on the test split (else validation), for several inputs."""
    from reglab.reporting.figures import run_plots as plots

    data = datamodule.data
    if data is None or data.num_features == 1:
        return None
    split = "test" if "test" in datamodule.splits else "val"
    x, y = _raw(datamodule, split, _subsample(len(datamodule.splits[split][0])))
    with torch.no_grad():
        pred = _in_data_units(model, datamodule.scaling)(x)
    return plots.pred_vs_actual(y[:, 0].numpy(), pred[:, 0].numpy(),
                                title=f"{split} split: predicted vs actual",
                                target=data.target_names[0])


def landscape_applies(model: nn.Module, loss_fn: nn.Module) -> bool:
    return (type(model) is LinearRegression and model.linear.in_features == 1
            and model.linear.out_features == 1 and isinstance(loss_fn, nn.MSELoss))


def param_vector(model: nn.Module) -> list[float]:
    """(w) or (w, b) of a one-input linear model, as the landscape's axes.

    Read with ``item()`` on the one-element parameters: recorded every epoch, and any
    view or copy first would cost more than the training step.
    """
    out = [model.linear.weight.item()]
    if model.linear.bias is not None:
        out.append(model.linear.bias.item())
    return out


def landscape(model: nn.Module, loss_fn: nn.Module, datamodule: Any,
              path: list[list[float]], closed_form: Any) -> Any:
    """MSE over (w) or (w, b) in the training space, with the path the optimizer took."""
    from reglab.reporting.figures import run_plots as plots

    if not landscape_applies(model, loss_fn) or closed_form is None or not path:
        return None
    x, y = (t.detach().cpu().double()[:, 0]
            for t in datamodule.training_units("train", torch.float64))
    n = len(x)
    # MSE(w, b) from sufficient statistics: exact, and O(1) per grid point.
    sxx, sx, sxy = float((x * x).mean()), float(x.mean()), float((x * y).mean())
    sy, syy = float(y.mean()), float((y * y).mean())
    factor = n if loss_fn.reduction == "sum" else 1.0

    def loss_at(w: np.ndarray, b: np.ndarray | float = 0.0) -> np.ndarray:
        return factor * (w * w * sxx + 2 * w * b * sx + b * b - 2 * w * sxy - 2 * b * sy + syy)

    optimum = [float(closed_form.weight[0])]
    if closed_form.bias is not None:
        optimum.append(float(closed_form.bias))
    names = ["weight w", "bias b"][:len(optimum)]
    steps = np.asarray(path, dtype=float)
    finite = np.isfinite(steps).all(axis=1)
    return plots.landscape(steps[finite], optimum, loss_at, names,
                           title=f"loss landscape and {len(steps) - 1} epochs of the optimizer")
