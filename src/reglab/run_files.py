"""A run dir's files as the commands read and write them: the record's name, a run's
config read back, and writes that a reader never sees half done.

Beside the packages (like :mod:`reglab.artifacts`): training writes these files,
evaluation, ``resume=`` and the sweep report read them.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from reglab.legacy import current_targets

#: The run's record: status, losses, parameters, the config that made it.
METRICS_FILE = "metrics.json"


def saved_run(run_dir: Path) -> dict[str, Any] | None:
    """A run's config, overrides and launch dir, from ``.hydra/`` where Hydra wrote it,
    else from the ``run`` record in ``metrics.json``; None when neither is there.

    A run started with ``seed=null`` drew its seed after Hydra saved the config: the seed
    is filled in from ``metrics.json`` or, for a run killed before writing one, from its
    ``last.ckpt`` (``seed_drawn`` says so), so its data is rebuilt with the same splits.
    """
    import yaml

    def load(name: str, empty: Any) -> Any:
        file = run_dir / ".hydra" / name
        return (yaml.safe_load(file.read_text()) or empty) if file.is_file() else empty

    try:
        if (run_dir / ".hydra").is_dir():
            hydra = (load("hydra.yaml", {}).get("hydra") or {}).get("runtime") or {}
            saved = {"config": load("config.yaml", {}), "overrides": load("overrides.yaml", []),
                     "launch_dir": hydra.get("cwd")}
        else:
            saved = json.loads((run_dir / METRICS_FILE).read_text()).get("run")
    except (OSError, ValueError, AttributeError, yaml.YAMLError):
        return None
    if not isinstance(saved, dict) or not isinstance(saved.get("config"), dict):
        return None
    asked = [str(o).split("=", 1)[1] for o in saved.get("overrides") or []
             if str(o).split("=", 1)[0] == "seed"]
    if ("seed" in saved["config"] and saved["config"]["seed"] is None) or \
            (asked and asked[-1] == "null"):
        saved["config"]["seed"] = _recorded_seed(run_dir)
        saved["seed_drawn"] = True
    saved["run_dir"] = str(run_dir)
    saved["config"] = current_targets(saved["config"])  # a run of an older reglab
    return saved


def _recorded_seed(run_dir: Path) -> int | None:
    """The seed a ``seed=null`` run drew: ``metrics.json`` ``hparams.seed``, else the
    ``seed`` its checkpoint's reglab stamp holds."""
    try:
        seed = json.loads((run_dir / METRICS_FILE).read_text())["hparams"]["seed"]
    except (OSError, ValueError, KeyError, TypeError):
        seed = None
    if not isinstance(seed, int) and (run_dir / "checkpoints" / "last.ckpt").is_file():
        import torch

        try:
            stamp = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu",
                               weights_only=True).get("reglab") or {}
            seed = stamp.get("seed")
        except Exception:  # an unreadable checkpoint: resume reports it in its own words
            seed = None
    return seed if isinstance(seed, int) and not isinstance(seed, bool) else None


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write atomically, so a reader never sees half a file."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2, allow_nan=False) + "\n")
    os.replace(tmp, path)
