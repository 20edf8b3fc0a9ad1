"""reglab-eval and reglab-predict through the real commands, on real training runs."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from conftest import run_cli, script


def train(cwd: Path, *args: str) -> Path:
    out = run_cli([script("reglab-train"), *args], cwd=cwd)
    assert out.returncode == 0, out.stderr[-3000:]
    runs = sorted((cwd / "outputs").glob("*/runs/*"))
    return runs[-1]


def only_eval_dir(cwd: Path) -> Path:
    (found,) = list((cwd / "outputs" / "eval" / "runs").iterdir())
    return found


@pytest.fixture(scope="module")
def d2l_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cwd = tmp_path_factory.mktemp("d2l")
    return train(cwd, "experiment=d2l", "trainer.max_epochs=2", "callbacks.plots=null")


@pytest.mark.parametrize("artifact", ["model.pt", "checkpoints/last.ckpt"])
def test_eval_reproduces_the_training_test_mse(d2l_run: Path, tmp_path: Path, artifact: str):
    out = run_cli([script("reglab-eval"), f"ckpt_path={d2l_run / artifact}"], cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    for name in ("mse", "rmse", "mae", "r2", "adjusted_r2"):
        assert f"  {name}" in out.stdout
    evaluated = json.loads((only_eval_dir(tmp_path) / "eval_metrics.json").read_text())
    trained = json.loads((d2l_run / "metrics.json").read_text())
    assert evaluated["rows"] == trained["rows"]["test"] == 200
    assert evaluated["metrics"]["mse"] == pytest.approx(trained["test"]["mse"], rel=1e-6)
    assert evaluated["metrics"]["r2"] == pytest.approx(trained["test"]["r2"], rel=1e-6)


def test_eval_on_other_data_and_all_rows(d2l_run: Path, tmp_path: Path):
    out = run_cli([script("reglab-eval"), f"ckpt_path={d2l_run / 'model.pt'}", "split=all",
                   "data.source.num_samples=50", "data.source.seed=7"], cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    evaluated = json.loads((only_eval_dir(tmp_path) / "eval_metrics.json").read_text())
    assert evaluated["rows"] == 50 and evaluated["data"]["source"]["seed"] == 7
    assert evaluated["metrics"]["r2"] > 0.99


@pytest.mark.parametrize(("args", "message"), [
    (["split=holdout"], "split: expected one of test, val, train, all"),
    (["data=diabetes"], "data: 10 feature columns, but the model takes 2"),
])
def test_eval_bad_input(d2l_run: Path, tmp_path: Path, args: list[str], message: str):
    out = run_cli([script("reglab-eval"), f"ckpt_path={d2l_run / 'model.pt'}", *args],
                  cwd=tmp_path)
    assert out.returncode == 2 and message in out.stderr, out.stderr[-2000:]
    assert "Traceback" not in out.stderr
    assert not list((tmp_path / "outputs").glob("eval/runs/*"))  # nothing half-written


@pytest.mark.slow
def test_predict_origin_model_at_four(tmp_path: Path):
    run = train(tmp_path, "experiment=origin", "callbacks.plots=null")
    for artifact in ("model.pt", "checkpoints/last.ckpt"):
        out = run_cli([script("reglab-predict"), f"ckpt_path={run / artifact}",
                       "x=[[4.0]]"], cwd=tmp_path)
        assert out.returncode == 0, out.stderr[-2000:]
        header, row = out.stdout.strip().splitlines()
        assert header == "x,y_predicted"
        assert float(row.split(",")[1]) == pytest.approx(8.0, abs=0.01)

    (tmp_path / "in.csv").write_text("x,note\n4,a\n5,b\n")
    out = run_cli([script("reglab-predict"), f"ckpt_path={run / 'model.pt'}",
                   "input_path=in.csv", "output_path=pred/out.csv"], cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    rows = list(csv.DictReader((tmp_path / "pred" / "out.csv").read_text().splitlines()))
    assert [r["note"] for r in rows] == ["a", "b"]  # every input column kept
    assert [round(float(r["y_predicted"]), 2) for r in rows] == [8.0, 10.0]

    # An input that already holds the prediction's name: a new name, said, and a
    # header reglab itself reads back.
    (tmp_path / "again.csv").write_text("x,y_predicted,y_predicted_2\n4,1,2\n")
    out = run_cli([script("reglab-predict"), f"ckpt_path={run / 'model.pt'}",
                   "input_path=again.csv", "output_path=again_out.csv"], cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "again.csv already has a column y_predicted; the predictions are in " \
           "y_predicted_3" in out.stdout
    rows = list(csv.DictReader((tmp_path / "again_out.csv").read_text().splitlines()))
    assert list(rows[0]) == ["x", "y_predicted", "y_predicted_2", "y_predicted_3"]
    assert (rows[0]["y_predicted"], round(float(rows[0]["y_predicted_3"]), 2)) == ("1", 8.0)
    out = run_cli([script("reglab-predict"), f"ckpt_path={run / 'model.pt'}",
                   "input_path=again_out.csv"], cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]

    out = run_cli([script("reglab-predict"), f"ckpt_path={run / 'model.pt'}",
                   "x=[[4.0,1.0]]"], cwd=tmp_path)
    assert out.returncode == 2
    assert "x: row 0 has 2 values, but the model takes 1 per row" in out.stderr
    (tmp_path / "wide.csv").write_text("a,b\n1,2\n")
    out = run_cli([script("reglab-predict"), f"ckpt_path={run / 'model.pt'}",
                   "input_path=wide.csv", "output_path=wide_out.csv"], cwd=tmp_path)
    assert out.returncode == 2 and "wide.csv: no column 'x'" in out.stderr
    assert not (tmp_path / "wide_out.csv").exists()

    # Inputs the float32 model cannot represent, and outputs that cannot be written:
    # one line, exit 2, nothing left behind.
    (tmp_path / "a_dir").mkdir()
    (tmp_path / "a_file").write_text("x")
    (tmp_path / "big.csv").write_text("x\n4\n1e39\n")
    for args, message in [(["x=[[nan]]"], "x: row 0 holds nan; expected a finite number"),
                          (["x=[[inf]]"], "x: row 0 holds inf"),
                          (["x=[[1e39]]"], "x: row 0, column 'x': 1e+39 is beyond "
                                            "float32's range once scaled"),
                          (["input_path=big.csv"], "big.csv: data row 2, column 'x': 1e+39 "
                                                   "is beyond float32's range"),
                          (["x=[[4.0]]", "allow_modules=5"],
                           "allow_modules: expected a list of package names"),
                          (["input_path=in.csv", "output_path=a_dir"], "a_dir is a directory"),
                          (["input_path=in.csv", "output_path=a_file/out.csv"],
                           "a_file is a file, not a folder")]:
        out = run_cli([script("reglab-predict"), f"ckpt_path={run / 'model.pt'}", *args],
                      cwd=tmp_path)
        assert out.returncode == 2 and message in out.stderr, (args, out.stderr[-1000:])
        assert "Traceback" not in out.stderr
    assert list((tmp_path / "a_dir").iterdir()) == []
    assert not list(tmp_path.glob(".*tmp-*"))


@pytest.mark.slow
def test_standardized_model_predicts_in_data_units(tmp_path: Path):
    import numpy as np

    rng = np.random.default_rng(0)
    a, b = rng.normal(50, 10, 300), rng.normal(-200, 40, 300)
    y = 3 * a - 0.5 * b + 100 + rng.normal(0, 0.01, 300)
    lines = ["a,b,target"] + [f"{float(u)!r},{float(v)!r},{float(t)!r}"
                              for u, v, t in zip(a, b, y, strict=True)]
    (tmp_path / "table.csv").write_text("\n".join(lines) + "\n")
    run = train(tmp_path, "data=csv", "data.source.path=table.csv", "data.source.target=target",
                "data.standardize_target=true", "data.batch_size=null", "optimizer=lbfgs",
                "trainer.max_epochs=10", "trainer.precision=64-true", "callbacks.plots=null")
    metrics = json.loads((run / "metrics.json").read_text())
    scaling = metrics["data"]["scaling"]
    assert scaling["x_mean"][0] == pytest.approx(50, abs=3) and scaling["y_std"] > 10
    data_units = metrics["params_data_units"]
    assert data_units["weight"][0] == pytest.approx([3.0, -0.5], abs=1e-3)
    assert data_units["bias"] == pytest.approx(100, abs=0.5)

    (tmp_path / "new.csv").write_text("b,a\n-200,50\n-100,60\n")  # column order is by name
    out = run_cli([script("reglab-predict"), f"ckpt_path={run / 'model.pt'}",
                   "input_path=new.csv"], cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    preds = [float(r.split(",")[-1]) for r in out.stdout.strip().splitlines()[1:]]
    assert preds == pytest.approx([350.0, 330.0], abs=0.05)

    import torch

    import reglab

    model = reglab.load_model(run / "model.pt")
    assert float(model(torch.tensor([[50.0, -200.0]])).detach()) == pytest.approx(350.0, abs=0.05)


@pytest.mark.slow
def test_eval_finds_a_relative_data_file_from_another_directory(tmp_path: Path):
    (tmp_path / "t.csv").write_text("a,y\n" + "".join(f"{i},{3 * i + 1}\n" for i in range(40)))
    run = train(tmp_path, "data=csv", "data.source.path=t.csv", "data.source.target=y",
                "trainer.max_epochs=2", "callbacks.plots=null")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    out = run_cli([script("reglab-eval"), f"ckpt_path={run / 'model.pt'}"], cwd=elsewhere)
    assert out.returncode == 0, out.stderr[-2000:]
    evaluated = json.loads((only_eval_dir(elsewhere) / "eval_metrics.json").read_text())
    trained = json.loads((run / "metrics.json").read_text())
    assert evaluated["metrics"]["mse"] == pytest.approx(trained["test"]["mse"], rel=1e-6)


@pytest.mark.slow
def test_a_file_the_run_never_saw_is_scored_whole(tmp_path: Path):
    """Its 'test split' would be a fifth of rows the model never saw anyway."""
    (tmp_path / "t.csv").write_text("a,y\n" + "".join(f"{i},{3 * i + 1}\n" for i in range(40)))
    run = train(tmp_path, "data=csv", "data.source.path=t.csv", "data.source.target=y",
                "trainer.max_epochs=2", "callbacks.plots=null")
    (tmp_path / "next.csv").write_text("a,y\n" + "".join(f"{i},{3 * i + 1}\n"
                                                          for i in range(40, 90)))
    out = run_cli([script("reglab-eval"), f"ckpt_path={run / 'model.pt'}",
                   "data.source.path=next.csv", "hydra.run.dir=whole"], cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    record = json.loads((tmp_path / "whole" / "eval_metrics.json").read_text())
    assert record["split"] == "all" and record["rows"] == 50
    assert "a file the run did not train on" in out.stdout
    asked = run_cli([script("reglab-eval"), f"ckpt_path={run / 'model.pt'}",
                     "data.source.path=next.csv", "split=test", "hydra.run.dir=part"],
                    cwd=tmp_path)
    assert asked.returncode == 0, asked.stderr[-2000:]
    part = json.loads((tmp_path / "part" / "eval_metrics.json").read_text())
    assert part["split"] == "test" and part["rows"] == 10  # as asked: its own test split
    same = run_cli([script("reglab-eval"), f"ckpt_path={run / 'model.pt'}",
                    "hydra.run.dir=own"], cwd=tmp_path)
    assert json.loads((tmp_path / "own" / "eval_metrics.json").read_text())["split"] == "test"
    assert same.returncode == 0
