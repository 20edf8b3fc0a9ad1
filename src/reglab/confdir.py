"""Where reglab's Hydra configs live, and the resolvers they use.

An editable install reads the repository's top-level ``conf/``; a built wheel carries
the same files inside the package as ``reglab/conf``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

_HERE = Path(__file__).resolve().parent


def _find() -> Path:
    for candidate in (_HERE / "conf", _HERE.parents[1] / "conf"):
        if (candidate / "train.yaml").is_file():
            return candidate
    raise FileNotFoundError(f"reglab: cannot find its conf/ directory near {_HERE}")


def _sweep_label(mode: Any, override_dirname: str) -> str:
    """A sweep job's overrides (its TensorBoard run name); empty for a single run."""
    return str(override_dirname or "") if "MULTIRUN" in str(mode) else ""


CONF_DIR: Path = _find()
OmegaConf.register_new_resolver("reglab.sweep_label", _sweep_label, replace=True)
