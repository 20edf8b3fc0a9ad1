"""The sweep report for model-selection sweeps: ranking by the K-fold mean and the
validation curve, from fake multirun dirs (no training runs)."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from reglab.reporting import sweep_report
from reglab.reporting.figures import sweep_plots
from reglab.reporting.figures.sweep_plots import draw_validation_curve
from reglab.reporting.sweep_report import VALIDATION_CURVE_PNG, job_rows, write_report

PNG = b"\x89PNG\r\n\x1a\n"


def _job(sweep: Path, num: int, overrides: list[str], metrics: dict[str, Any] | None) -> None:
    job = sweep / str(num)
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    if metrics is not None:
        (job / "metrics.json").write_text(json.dumps(metrics))


def _exact(val: float | None, train: float | None, status: str = "completed",
           **extra: Any) -> dict[str, Any]:
    """A metrics.json as an ``optimizer=exact`` job writes it: no epochs."""
    return {"status": status, "train_loss": train, "val_loss": val, "epochs": 0,
            "fit_seconds": 0.01, **extra}


def _cv(vals: list[float], trains: list[float]) -> dict[str, Any]:
    """The ``cv`` record of a k-fold job (std with numpy's default ddof=0)."""
    return {"folds": len(vals), "rows": 80, "val_loss": vals, "train_loss": trains,
            "val_loss_mean": float(np.mean(vals)), "val_loss_std": float(np.std(vals)),
            "train_loss_mean": float(np.mean(trains))}


def _assert_png(path: Path) -> None:
    from matplotlib.image import imread

    assert path.is_file() and path.read_bytes()[:8] == PNG and path.stat().st_size > 5000
    height, width = imread(path).shape[:2]
    assert height > 200 and width > 300


def _lowest_val(fig: Any) -> tuple[float, str]:
    """The x of the star that marks the lowest val loss, and its annotation's text."""
    ax = fig.axes[0]
    (star,) = [line for line in ax.get_lines() if line.get_gid() == "lowest_val"]
    (note,) = [t.get_text() for t in ax.texts if t.get_text().startswith("lowest val")]
    return float(star.get_xdata()[0]), note


# Degree 5 has the lowest val loss on its one split (a lucky draw); degree 3 has the
# lowest 5-fold mean, so a report that ignored the cv record would pick the wrong job.
DEGREE_FOLDS = {
    1: ([0.90, 1.00, 0.95, 1.05, 0.98], [0.90, 0.92, 0.91, 0.93, 0.90], 0.97),
    2: ([0.30, 0.34, 0.28, 0.36, 0.32], [0.25, 0.26, 0.24, 0.27, 0.25], 0.31),
    3: ([0.110, 0.125, 0.118, 0.130, 0.120], [0.09, 0.10, 0.095, 0.10, 0.092], 0.119),
    4: ([0.130, 0.150, 0.140, 0.160, 0.135], [0.085, 0.09, 0.088, 0.09, 0.086], 0.125),
    5: ([0.160, 0.220, 0.180, 0.260, 0.200], [0.080, 0.085, 0.082, 0.084, 0.081], 0.090),
    6: ([0.300, 0.450, 0.380, 0.520, 0.400], [0.070, 0.075, 0.072, 0.074, 0.071], 0.350),
}


@pytest.fixture
def degree_cv_sweep(tmp_path: Path) -> Path:
    for num, (degree, (vals, trains, split_val)) in enumerate(DEGREE_FOLDS.items()):
        metrics = _exact(split_val, float(np.mean(trains)), cv=_cv(vals, trains))
        _job(tmp_path, num, [f"model.degree={degree}"], metrics)
    return tmp_path


def test_a_k_fold_sweep_is_decided_by_the_cv_mean(degree_cv_sweep: Path):
    report = write_report(degree_cv_sweep)
    assert report.swept == ["model.degree"]
    lowest_split = min(report.rows, key=lambda r: r["val_loss"])
    assert lowest_split["model.degree"] == 5  # the lucky split ...
    assert report.best is not None and report.best["model.degree"] == 3  # ... loses
    assert report.best["cv_val_loss"] == pytest.approx(np.mean(DEGREE_FOLDS[3][0]))
    assert report.best["folds"] == 5

    md = report.markdown
    assert "cv val_loss" in md and "5-fold mean ± std" in md
    best_line = next(line for line in md.splitlines() if "★ best" in line)
    mean, std = np.mean(DEGREE_FOLDS[3][0]), np.std(DEGREE_FOLDS[3][0])
    assert f"| {report.best['job']} |" in best_line and f"{mean:.4g} ± {std:.4g}" in best_line
    table = [line for line in md.splitlines() if line.startswith("| ") and "---" not in line]
    assert [line.split(" | ")[2] for line in table[1:]] == ["3", "4", "5", "2", "6", "1"]

    with (degree_cv_sweep / "sweep_summary.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    header = list(rows[0])
    assert header.index("cv_val_loss") == header.index("val_loss") + 1
    for row in rows:
        vals, trains, _ = DEGREE_FOLDS[int(row["model.degree"])]
        assert float(row["cv_val_loss"]) == float(np.mean(vals))
        assert float(row["cv_val_std"]) == float(np.std(vals))
        assert float(row["cv_train_loss"]) == float(np.mean(trains))
        assert row["folds"] == "5" and row["epochs"] == "0"

    path = degree_cv_sweep / VALIDATION_CURVE_PNG
    assert path in report.files
    _assert_png(path)


def test_the_curve_marks_the_lowest_cv_mean_with_error_bars(degree_cv_sweep: Path):
    rows, swept, _ = job_rows(degree_cv_sweep)
    fig = draw_validation_curve(rows, swept[0])
    assert fig is not None
    ax = fig.axes[0]
    x, note = _lowest_val(fig)
    assert x == 3 and note == f"lowest val {np.mean(DEGREE_FOLDS[3][0]):.4g} at model.degree=3"
    assert ax.containers  # the ±std error bars
    assert ax.get_xscale() == "linear" and ax.get_yscale() == "log"
    assert ax.get_ylabel() == "loss (log scale)" and ax.get_xlabel() == "model.degree"
    assert ax.get_title() == "Validation curve: model.degree"
    labels = ax.get_legend_handles_labels()[1]
    assert "train (5-fold mean)" in labels and "validation (5-fold mean ± std)" in labels


def test_without_cv_the_table_is_unchanged_and_ranked_by_val_loss(tmp_path: Path):
    for num, (degree, val) in enumerate([(1, 0.9), (2, 0.2), (3, 0.4)]):
        _job(tmp_path, num, [f"model.degree={degree}"], _exact(val, val / 2))
    report = write_report(tmp_path)
    assert report.best is not None and report.best["job"] == "1"
    assert "cv val_loss" not in report.markdown and "fold" not in report.markdown
    assert "best val_loss 0.2 (job 1)" in report.markdown
    with (tmp_path / "sweep_summary.csv").open() as fh:
        header = next(csv.reader(fh))
    assert header == ["job", "overrides", "model.degree", *sweep_report.COLUMNS[2:]]
    _assert_png(tmp_path / VALIDATION_CURVE_PNG)


def test_a_log_grid_of_weight_decay_gets_a_log_x_axis(tmp_path: Path):
    # Written the way Hydra writes them: 1e-06 and 1e-05, which YAML reads as strings.
    grid = ["1e-06", "1e-05", "0.0001", "0.001", "0.01", "0.1", "1"]
    vals = [0.30, 0.20, 0.12, 0.05, 0.09, 0.40, 0.90]
    for num, (wd, val) in enumerate(zip(grid, vals, strict=True)):
        _job(tmp_path, num, [f"optimizer.weight_decay={wd}"], _exact(val, val * 0.6))
    rows, swept, _ = job_rows(tmp_path)
    assert [r["optimizer.weight_decay"] for r in rows] == [float(g) for g in grid]
    fig = draw_validation_curve(rows, swept[0])
    assert fig is not None and fig.axes[0].get_xscale() == "log"
    x, note = _lowest_val(fig)
    assert x == 0.001 and note.endswith("at optimizer.weight_decay=0.001")
    report = write_report(tmp_path)
    _assert_png(tmp_path / VALIDATION_CURVE_PNG)
    assert report.best is not None and report.best["optimizer.weight_decay"] == 0.001


def test_degrees_one_to_twelve_stay_linear_with_integer_ticks(tmp_path: Path):
    vals = [0.9, 0.5, 0.1, 0.12, 0.15, 0.2, 0.3, 0.5, 0.8, 1.5, 3.0, 9.0]
    for num, val in enumerate(vals):
        _job(tmp_path, num, [f"model.degree={num + 1}"], _exact(val, 0.1 / (num + 1)))
    rows, swept, _ = job_rows(tmp_path)
    fig = draw_validation_curve(rows, swept[0])
    assert fig is not None
    ax = fig.axes[0]
    assert ax.get_xscale() == "linear"
    assert list(ax.get_xticks()) == list(range(1, 13))
    assert _lowest_val(fig)[0] == 3


def test_a_zero_train_loss_keeps_the_y_axis_linear(tmp_path: Path):
    """An interpolating fit has train loss 0, which a log axis cannot show."""
    for num, (degree, val, train) in enumerate([(1, 0.5, 0.4), (2, 0.3, 0.1), (3, 2.0, 0.0)]):
        _job(tmp_path, num, [f"model.degree={degree}"], _exact(val, train))
    rows, swept, _ = job_rows(tmp_path)
    fig = draw_validation_curve(rows, swept[0])
    assert fig is not None
    assert fig.axes[0].get_yscale() == "linear" and fig.axes[0].get_ylabel() == "loss"


def test_failed_diverged_and_missing_jobs_are_red_dotted_lines(tmp_path: Path):
    _job(tmp_path, 0, ["model.degree=1"], _exact(0.5, 0.4))
    _job(tmp_path, 1, ["model.degree=2"], _exact(0.2, 0.1))
    _job(tmp_path, 2, ["model.degree=3"],
         _exact(None, None, status="failed", error="LinAlgError: singular matrix"))
    _job(tmp_path, 3, ["model.degree=4"], _exact(None, 1e30, status="diverged",
                                                 diverged_at_step=3))
    _job(tmp_path, 4, ["model.degree=5"], None)  # cut short: never wrote metrics
    report = write_report(tmp_path)
    assert [r["status"] for r in report.rows] == [
        "completed", "completed", "failed", "diverged", "missing"]
    assert report.best is not None and report.best["job"] == "1"
    _assert_png(tmp_path / VALIDATION_CURVE_PNG)

    fig = draw_validation_curve(report.rows, "model.degree")
    assert fig is not None
    ax = fig.axes[0]
    red = [line for line in ax.get_lines()
           if line.get_linestyle() == ":" and line.get_color() == "tab:red"]
    assert sorted(line.get_xdata()[0] for line in red) == [3, 4, 5]
    assert {"failed", "diverged", "missing"} <= {t.get_text().strip() for t in ax.texts}


@pytest.mark.parametrize("grid", [
    [["optimizer=sgd"], ["optimizer=adam"]],  # not numeric
    [["data.shuffle=true"], ["data.shuffle=false"]],  # bools are not numbers here
    [["model.degree=1", "optimizer.lr=0.1"], ["model.degree=2", "optimizer.lr=0.01"]],  # 2 keys
], ids=["names", "bools", "two-keys"])
def test_no_validation_curve_without_one_numeric_swept_key(tmp_path: Path,
                                                           grid: list[list[str]]):
    for num, overrides in enumerate(grid):
        _job(tmp_path, num, overrides, _exact(0.1 * (num + 1), 0.05))
    report = write_report(tmp_path)
    assert not (tmp_path / VALIDATION_CURVE_PNG).exists()
    assert all(f.name != VALIDATION_CURVE_PNG for f in report.files)
    assert (tmp_path / "sweep_summary.md").is_file() and report.best is not None


def test_a_curve_that_cannot_be_drawn_does_not_cost_the_table(
        degree_cv_sweep: Path, monkeypatch: pytest.MonkeyPatch):
    def broken(rows: Any, key: str) -> None:
        raise RuntimeError("no fonts")

    monkeypatch.setattr(sweep_plots, "draw_validation_curve", broken)
    report = write_report(degree_cv_sweep)
    assert not (degree_cv_sweep / VALIDATION_CURVE_PNG).exists()
    assert (degree_cv_sweep / "sweep_summary.csv").is_file() and "★ best" in report.markdown
