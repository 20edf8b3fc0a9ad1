"""reglab's regressors: linear, polynomial and MLP, plain ``torch.nn.Module`` classes.

Each class records the keyword arguments it was built with (``init_kwargs``) so that
``model.pt`` can rebuild it with no config system at all (see :mod:`reglab.artifacts`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from reglab.errors import ConfigError
from reglab.models.activations import make_activation


class LinearRegression(nn.Module):
    """y = x·wᵀ + b, with the bias optional (regression through the origin)."""

    def __init__(self, in_features: int, bias: bool = True, out_features: int = 1) -> None:
        super().__init__()
        self.init_kwargs = {"in_features": int(in_features), "bias": bool(bias),
                            "out_features": int(out_features)}
        self.linear = nn.Linear(in_features, out_features, bias=bias)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The columns the weights multiply: the design matrix of least squares."""
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The functional form skips a second module call, a third of a tiny step's
        # forward time; ``self.linear`` still holds the parameters.
        linear = self.linear
        weight = linear.weight
        if x.dtype != weight.dtype and x.is_floating_point():
            x = x.to(weight.dtype)  # a float64 model (64-true, exact) takes float32 input too
        return nn.functional.linear(self.features(x), weight, linear.bias)

    @property
    def has_bias(self) -> bool:
        return self.linear.bias is not None

    def param_scalars(self) -> dict[str, float]:
        """Every learned number by name, for per-epoch TensorBoard scalars."""
        out = {f"weight_{i}": float(v) for i, v in enumerate(self.linear.weight.detach().
                                                              flatten().tolist())}
        bias = self.linear.bias
        if bias is not None:
            values = bias.detach().flatten().tolist()
            out.update({"bias": values[0]} if len(values) == 1 else
                       {f"bias_{i}": v for i, v in enumerate(values)})
        return out

    def params(self) -> dict[str, list[list[float]] | float | None]:
        """Weight as a nested list (out × in) and bias (a number, or one per output), as
        metrics.json reports them."""
        bias = self.linear.bias
        if bias is not None:
            values = bias.detach().cpu().tolist()
            bias = values[0] if len(values) == 1 else values  # a list for several targets
        return {"weight": self.linear.weight.detach().cpu().tolist(), "bias": bias}


class PolynomialRegression(LinearRegression):
    """y = w₁x + w₂x² + … + w_d·x^d + b on a single input column."""

    def __init__(self, in_features: int = 1, degree: int = 2, bias: bool = True,
                 out_features: int = 1) -> None:
        if in_features != 1:
            raise ConfigError(f"model.degree: a polynomial model takes one input column, "
                              f"but the data has {in_features}")
        if int(degree) < 1:
            raise ConfigError(f"model.degree: expected a whole number >= 1, got {degree!r}")
        super().__init__(int(degree), bias=bias, out_features=out_features)
        self.degree = int(degree)
        self.init_kwargs = {"in_features": 1, "degree": self.degree, "bias": bool(bias),
                            "out_features": int(out_features)}
        self.register_buffer("powers", torch.arange(1, self.degree + 1), persistent=False)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return x.pow(self.powers.to(x.dtype))


class MLP(nn.Module):
    """A fully connected network with one activation between its layers."""

    def __init__(self, in_features: int, hidden: Sequence[int] = (10,),
                 activation: str = "relu", out_features: int = 1) -> None:
        super().__init__()
        hidden = [int(h) for h in hidden]
        self.init_kwargs = {"in_features": int(in_features), "hidden": hidden,
                            "activation": str(activation), "out_features": int(out_features)}
        layers: list[nn.Module] = []
        width = in_features
        for h in hidden:
            layers += [nn.Linear(width, h), make_activation(activation)]
            width = h
        layers.append(nn.Linear(width, out_features))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


#: Classes that ``reglab.load_model`` may rebuild; a file naming anything else is refused.
MODEL_CLASSES: dict[str, type[nn.Module]] = {
    "LinearRegression": LinearRegression,
    "PolynomialRegression": PolynomialRegression,
    "MLP": MLP,
}
