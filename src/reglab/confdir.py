"""Where reglab's Hydra configs live, from any working directory.

An editable install reads the repository's top-level ``conf/``; a built wheel carries
the same files inside the package as ``reglab/conf``.
"""

from __future__ import annotations

from pathlib import Path

_HERE = Path(__file__).resolve().parent


def _find() -> Path:
    for candidate in (_HERE / "conf", _HERE.parents[1] / "conf"):
        if (candidate / "train.yaml").is_file():
            return candidate
    raise FileNotFoundError(f"reglab: cannot find its conf/ directory near {_HERE}")


CONF_DIR: Path = _find()
