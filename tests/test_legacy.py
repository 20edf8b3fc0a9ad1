"""A run dir written before the subpackage layout (old import paths in its config, its
model.pt and its checkpoint) still loads, evaluates and rebuilds its module."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from conftest import run_cli, script

import reglab
from reglab.legacy import RENAMED

OLD = {new: old for old, new in RENAMED.items()}


def _as_written_before(node: Any) -> Any:
    """``node`` with every ``_target_`` (and model class) named by its old path."""
    if isinstance(node, dict):
        return {k: OLD.get(v, v) if k in ("_target_", "class", "model_class")
                and isinstance(v, str) else _as_written_before(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_as_written_before(v) for v in node]
    return node


def test_a_run_of_the_flat_layout_still_loads_and_evaluates(run_train, tmp_path: Path):
    metrics, run_dir = run_train("experiment=d2l", "trainer.max_epochs=1", "logger=none")
    record = json.loads((run_dir / "metrics.json").read_text())
    old = _as_written_before(record)
    assert old["run"]["config"]["data"]["_target_"] == "reglab.datamodule.RegressionDataModule"
    (run_dir / "metrics.json").write_text(json.dumps(old))
    for name in ("model.pt", "checkpoints/last.ckpt"):
        payload = torch.load(run_dir / name, weights_only=True)
        torch.save(_as_written_before(payload), run_dir / name)
    assert torch.load(run_dir / "model.pt", weights_only=True)["model"]["class"] == \
        "reglab.models.LinearRegression"

    model = reglab.load_model(run_dir / "model.pt")
    assert type(model).__module__ == "reglab.models.regressors"

    from reglab.training.module import RegressionModule

    module = RegressionModule.load_from_checkpoint(run_dir / "checkpoints" / "last.ckpt")
    assert type(module.model).__name__ == "LinearRegression"

    out = run_cli([script("reglab-eval"), f"ckpt_path={run_dir / 'model.pt'}"], cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    scored = json.loads(next((tmp_path / "outputs").rglob("eval_metrics.json")).read_text())
    assert abs(scored["metrics"]["mse"] - metrics["test"]["mse"]) <= 1e-12 * metrics["test"]["mse"]


def test_a_config_naming_an_old_path_gets_the_new_one_in_one_line(tmp_path: Path):
    out = run_cli([script("reglab-train"),
                   "data._target_=reglab.datamodule.RegressionDataModule"], cwd=tmp_path)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert ("data._target_: reglab.datamodule.RegressionDataModule is now "
            "reglab.data.datamodule.RegressionDataModule") in out.stderr
    assert not list((tmp_path / "outputs").glob("*/runs/*"))  # no run dir left behind
