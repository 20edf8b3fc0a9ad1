"""Degenerate but valid data is data: a constant target, a constant feature column.

Statistics that are undefined are recorded as null with the reason, never NaN in JSON
and never a crash; what float64 can hold is trained and reported.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from conftest import run_cli, script

from reglab.run_files import write_json


def _table(path: Path, rows: list[tuple[float, ...]], header: str) -> Path:
    path.write_text(header + "\n" + "".join(",".join(map(repr, r)) + "\n" for r in rows))
    return path


def test_a_constant_target_trains_and_records_r2_as_undefined(tmp_path: Path):
    _table(tmp_path / "c.csv", [(float(i), 5.0) for i in range(30)], "x,y")
    out = run_cli([script("reglab-train"), "data=csv", "data.source.path=c.csv",
                   "data.source.target=y", "trainer.max_epochs=2", "logger=none",
                   "hydra.run.dir=run"], tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "r2 —" in out.stdout
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    why = "the target is constant on these rows: R² divides by its variation, which is 0"
    for test in (metrics["test"], metrics["closed_form"]["test"]):
        assert test["r2"] is None and test["r2_undefined"] == why
    assert metrics["closed_form"]["params_data_units"]["const"] == 5.0


def test_a_constant_feature_column_trains_and_reports_its_rank(tmp_path: Path):
    _table(tmp_path / "k.csv", [(float(i), 7.0, 2.0 * i + 1) for i in range(30)], "x,k,y")
    out = run_cli([script("reglab-train"), "data=csv", "data.source.path=k.csv",
                   "data.source.target=y", "trainer.max_epochs=2", "logger=none",
                   "hydra.run.dir=run"], tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    report = json.loads((tmp_path / "run" / "metrics.json").read_text())[
        "closed_form"]["report"]
    assert report["rank"] == 2 and "rank 2 of 3" in out.stdout
    coef = {r["name"]: r["coef"] for r in report["coef"]}
    assert math.isclose(coef["x"], 2.0, rel_tol=1e-12)


def test_a_record_with_a_non_finite_statistic_is_still_standard_json(tmp_path: Path):
    write_json(tmp_path / "m.json", {"a": 1.0, "b": {"c": float("nan")},
                                     "d": [float("inf"), 2.0]})
    data = json.loads((tmp_path / "m.json").read_text())
    assert data == {"a": 1.0, "b": {"c": None}, "d": [None, 2.0],
                    "non_finite": ["b.c", "d[0]"]}
    assert [p.name for p in tmp_path.iterdir()] == ["m.json"]
