"""Tables from files, the polynomial model and the debug presets, through ``train``."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from reglab.errors import DataError


def test_csv_with_chosen_columns_and_delimiter(run_train, tmp_path: Path):
    rows = [f"{i};{i % 7};{2.5 * i - 1};junk" for i in range(60)]
    (tmp_path / "t.csv").write_text("u;v;y;note\n" + "\n".join(rows) + "\n\n")
    metrics, run_dir = run_train("data=csv", f"data.source.path={tmp_path / 't.csv'}",
                                 "data.source.target=y", "data.source.features=[u]",
                                 "data.source.delimiter=';'", "trainer.max_epochs=2")
    assert sum(metrics["rows"][k] for k in ("train", "val", "test")) == 60
    assert metrics["data"]["features"] == ["u"] and metrics["data"]["target"] == "y"
    assert metrics["closed_form"]["train_loss"] == pytest.approx(0.0, abs=1e-6)
    x_mean = metrics["data"]["scaling"]["x_mean"]
    assert len(x_mean) == 1 and 20 < x_mean[0] < 40  # fitted on the training rows only
    assert (run_dir / "fit.png").exists()


def test_parquet_table_and_its_bad_cells(run_train, tmp_path: Path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    n = 50
    table = pa.table({"a": [float(i) for i in range(n)], "b": [i % 5 for i in range(n)],
                      "y": [3.0 * i + (i % 5) for i in range(n)]})
    pq.write_table(table, tmp_path / "t.parquet")
    metrics, _ = run_train("data=csv", f"data.source.path={tmp_path / 't.parquet'}",
                           "data.source.target=y", "trainer.max_epochs=1", "logger=none")
    assert metrics["data"]["features"] == ["a", "b"]
    closed = metrics["closed_form"]
    assert closed["train_loss"] == pytest.approx(0.0, abs=1e-6)

    bad = pa.table({"a": [1.0, None, 3.0], "y": [1.0, 2.0, 3.0]})
    pq.write_table(bad, tmp_path / "bad.parquet")
    with pytest.raises(DataError, match=r"bad.parquet, row 2, column 'a': empty cell"):
        run_train("data=csv", f"data.source.path={tmp_path / 'bad.parquet'}",
                  "data.source.target=y", "logger=none")


def test_polynomial_model_fits_and_reloads(run_train):
    import reglab

    metrics, run_dir = run_train("data=sine", "model=polynomial", "model.degree=3",
                                 "optimizer=lbfgs", "trainer.max_epochs=20",
                                 "trainer.precision=64-true", "logger=none")
    assert len(metrics["params"]["weight"][0]) == 3
    assert metrics["closed_form"]["optimality_gap"]["relative"] < 1e-6
    model = reglab.load_model(run_dir / "model.pt")
    assert type(model).__name__ == "PolynomialRegression" and model.degree == 3
    w = metrics["params"]["weight"][0]
    b = metrics["params"]["bias"]
    x = torch.tensor([[0.5], [2.0]])
    expected = [b + sum(c * v ** (k + 1) for k, c in enumerate(w)) for v in (0.5, 2.0)]
    assert model(x).reshape(-1).tolist() == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize(("preset", "steps"), [("fdr", 1), ("overfit", 300), ("limit", 60),
                                               ("profiler", 240)])
def test_debug_presets(run_train, preset: str, steps: int):
    metrics, run_dir = run_train("experiment=d2l", f"debug={preset}")
    smoke = preset == "fdr"  # fast_dev_run: a smoke test, recorded as one
    assert metrics["status"] == ("fast_dev_run" if smoke else "completed")
    assert metrics["steps"] == steps and (run_dir / "model.pt").exists() != smoke
    if preset == "profiler":
        assert "Profiler Report" in (run_dir / "fit-profile.txt").read_text()


def test_a_debug_presets_summary_says_where_its_run_went(tmp_path: Path):
    """Debug runs land in outputs/debug/, apart from the experiment's own: the summary's
    last lines name that dir."""
    from conftest import run_cli, script

    out = run_cli([script("reglab-train"), "experiment=d2l", "debug=limit"], tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    (run_dir,) = (tmp_path / "outputs" / "debug" / "runs").iterdir()
    assert f"  run dir: {run_dir}\n" in out.stdout
