"""reglab's import paths before the subpackage layout, mapped to today's.

Run dirs, ``model.pt`` files and checkpoints written by earlier versions name reglab's
classes and functions by the old paths (``reglab.models.LinearRegression``,
``reglab.datagen.line``); everything that reads such a name back goes through
:func:`current`, so those files still evaluate, predict and resume.
"""

from __future__ import annotations

from typing import Any

#: Every path a config, model file or checkpoint of the flat layout could name.
RENAMED: dict[str, str] = {
    **{f"reglab.models.{n}": f"reglab.models.regressors.{n}"
       for n in ("LinearRegression", "PolynomialRegression", "MLP")},
    **{f"reglab.datagen.{n}": f"reglab.data.synthetic.{n}"
       for n in ("line", "linear", "uniform_line", "quadratic", "sine", "polynomial")},
    **{f"reglab.callbacks.{n}": f"reglab.training.callbacks.{n}"
       for n in ("AtomicCheckpointIO", "FitPlots", "FitProgressBar", "LastCheckpoint")},
    "reglab.datamodule.RegressionDataModule": "reglab.data.datamodule.RegressionDataModule",
    "reglab.tables.read_table": "reglab.data.tables.read_table",
    "reglab.tables.diabetes": "reglab.data.bundled.diabetes",
    "reglab.exact.ExactLeastSquares": "reglab.training.exact.ExactLeastSquares",
    "reglab.sweep_callbacks.SweepReport": "reglab.reporting.sweep_callback.SweepReport",
}


def current(path: str) -> str:
    """Today's path for a dotted name an older reglab wrote; any other name as it is."""
    return RENAMED.get(path, path)


def current_targets(node: Any) -> Any:
    """``node`` (plain dicts and lists, as read from YAML, JSON or a checkpoint) with each
    ``_target_`` an older reglab wrote replaced by today's path, at any depth."""
    if isinstance(node, dict):
        return {k: current(v) if k == "_target_" and isinstance(v, str)
                else current_targets(v) for k, v in node.items()}
    if isinstance(node, list):
        return [current_targets(v) for v in node]
    return node
