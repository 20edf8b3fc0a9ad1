"""The activation names ``model.activation`` accepts, as ``torch.nn`` class names.

A plain table, so the config checks can name the choices before torch is imported.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from reglab.errors import ConfigError

if TYPE_CHECKING:
    from torch import nn

#: Activation names accepted by ``model.activation`` → ``torch.nn`` class names.
ACTIVATIONS: dict[str, str] = {
    "relu": "ReLU", "tanh": "Tanh", "sigmoid": "Sigmoid", "gelu": "GELU", "silu": "SiLU",
    "elu": "ELU", "leaky_relu": "LeakyReLU", "softplus": "Softplus", "identity": "Identity",
}


def make_activation(name: str) -> nn.Module:
    """A fresh ``torch.nn`` activation module for ``name`` (any letter case)."""
    from torch import nn

    try:
        return getattr(nn, ACTIVATIONS[name.lower()])()
    except KeyError:
        raise ConfigError(f"model.activation: expected one of {', '.join(ACTIVATIONS)}, "
                          f"got {name!r}") from None
