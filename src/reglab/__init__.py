"""reglab: config-driven regression experiments with Hydra, Lightning and TensorBoard.

``import reglab`` stays light: torch is imported only when ``load_model`` is first used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["__version__", "load_model", "save_model"]

if TYPE_CHECKING:
    from reglab.artifacts import load_model, save_model


def __getattr__(name: str) -> Any:
    if name in ("load_model", "save_model"):
        from reglab import artifacts

        return getattr(artifacts, name)
    raise AttributeError(f"module 'reglab' has no attribute {name!r}")
