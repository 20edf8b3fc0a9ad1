"""Sweeps through the real command: grid, report, failures, Optuna, joblib."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import pytest
from conftest import compose_config, run_cli, script, start_cli
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from reglab.config.compose import compose
from reglab.reporting import sweep_report

SMALL = ["experiment=noisy_line", "trainer.max_epochs=4", "data.source.num_samples=60"]
PNG = b"\x89PNG\r\n\x1a\n"


def _sweep(tmp_path: Path, *args: str) -> tuple[object, Path]:
    out = run_cli([script("reglab-train"), "-m", *SMALL, *args], cwd=tmp_path)
    sweeps = list((tmp_path / "outputs" / "noisy_line" / "multiruns").iterdir())
    assert len(sweeps) == 1, out.stderr[-3000:]
    return out, sweeps[0]


def _is_png(path: Path) -> bool:
    return path.is_file() and path.read_bytes()[:8] == PNG and path.stat().st_size > 5000


@pytest.mark.slow
def test_grid_sweep_report_and_tensorboard(tmp_path: Path):
    out, sweep = _sweep(tmp_path, "optimizer.lr=0.01,0.1", "data.batch_size=20,50")
    assert out.returncode == 0, out.stderr[-3000:]
    with (sweep / "sweep_summary.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 4
    assert {(r["optimizer.lr"], r["data.batch_size"]) for r in rows} == {
        ("0.01", "20"), ("0.01", "50"), ("0.1", "20"), ("0.1", "50")}
    assert all(r["status"] == "completed" for r in rows)
    best = min(rows, key=lambda r: float(r["val_loss"]))
    md = (sweep / "sweep_summary.md").read_text()
    best_line = next(line for line in md.splitlines() if "★ best" in line)
    assert f"| {best['job']} |" in best_line
    assert "★ best" in out.stdout  # printed to the console too
    assert _is_png(sweep / "sweep_heatmap.png") and _is_png(sweep / "sweep_curves.png")

    # Each job's TensorBoard run is named by its overrides and carries its hparams.
    for row in rows:
        runs = [p for p in (Path(row["run_dir"]) / "tensorboard").iterdir() if p.is_dir()]
        assert len(runs) == 1 and f"optimizer.lr={row['optimizer.lr']}" in runs[0].name
        acc = EventAccumulator(str(runs[0]))
        acc.Reload()
        hp = acc.PluginTagToContent("hparams")
        assert b"batch_size" in hp["_hparams_/session_start_info"]
        assert b"val/loss" in hp["_hparams_/experiment"]

    # The report rebuilds from disk alone.
    for name in ("sweep_summary.csv", "sweep_summary.md", "sweep_heatmap.png"):
        (sweep / name).unlink()
    again = run_cli([script("reglab-sweep-report"), str(sweep)], cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert _is_png(sweep / "sweep_heatmap.png") and (sweep / "sweep_summary.csv").is_file()


@pytest.mark.slow
def test_a_diverging_job_does_not_stop_the_sweep(tmp_path: Path):
    out, sweep = _sweep(tmp_path, "optimizer.lr=0.01,1000")
    assert out.returncode == 1  # the sweep's status says a job failed ...
    table = (sweep / "sweep_summary.csv").read_text().splitlines()
    rows = {r["optimizer.lr"]: r for r in csv.DictReader(table)}
    assert rows["0.01"]["status"] == "completed"  # ... and the other one completed
    assert rows["1000"]["status"] == "diverged" and "diverged" in rows["1000"]["error"]
    metrics = json.loads((sweep / rows["1000"]["job"] / "metrics.json").read_text())
    assert metrics["diverged_at_step"] is not None
    assert metrics["epochs"] < 4  # stopped early, not after every remaining epoch


@pytest.mark.slow
def test_jobs_named_by_any_subdir_pattern_are_reported(tmp_path: Path):
    """Hydra lets a sweep name its job folders by a pattern; the report finds jobs by
    their files, not by numbered names."""
    out, sweep = _sweep(tmp_path, "optimizer.lr=0.01,0.05", "callbacks.plots=null",
                        "hydra.sweep.subdir=${hydra.job.override_dirname}")
    assert out.returncode == 0, out.stderr[-3000:]
    rows = list(csv.DictReader((sweep / "sweep_summary.csv").read_text().splitlines()))
    assert sorted(r["optimizer.lr"] for r in rows) == ["0.01", "0.05"]
    assert all(f"optimizer.lr={r['optimizer.lr']}" in r["job"] for r in rows)  # its folder
    assert all(r["status"] == "completed" for r in rows)
    assert all((sweep / r["job"] / "metrics.json").is_file() for r in rows)
    again = run_cli([script("reglab-sweep-report"), str(sweep)], cwd=tmp_path)
    assert again.returncode == 0 and "★ best" in again.stdout, again.stderr[-2000:]


@pytest.mark.slow
def test_optuna_sweep_completes(tmp_path: Path):
    out = run_cli([script("reglab-train"), "hparams_search=optuna", "hydra.sweeper.n_trials=3",
                   "trainer.max_epochs=3", "logger=none",
                   "optimizer.lr=tag(log, interval(0.001, 0.05))"],
                  cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    sweep = tmp_path / "outputs/noisy_line/studies/noisy_line-data.batch_size-optimizer.lr"
    assert (sweep / "study.db").is_file() and (sweep / "study.json").is_file()
    rows = list(csv.DictReader((sweep / "sweep_summary.csv").read_text().splitlines()))
    assert len(rows) == 3 and all(r["status"] == "completed" for r in rows)
    assert len({r["optimizer.lr"] for r in rows}) == 3  # the sampler proposed lr values
    assert _is_png(sweep / "study_history.png")
    # Each job prints a short paragraph; its whole summary is in its train.log.
    assert out.stdout.count("(summary in train.log)") == 3
    assert "least squares on the training split" not in out.stdout
    assert "least squares on the training split" in (sweep / "0" / "train.log").read_text()


def test_run_dirs_started_together_differ(tmp_path: Path):
    from hydra.core.hydra_config import HydraConfig

    dirs = set()
    for _ in range(3):  # three compositions (compose_config would hand out copies of one)
        compose([], tmp_path)
        dirs.add(HydraConfig.get().run.dir)
    assert len(dirs) == 3


@pytest.mark.slow
def test_two_parallel_sweeps_started_at_once_never_share_files(tmp_path: Path):
    """Two joblib sweeps (two jobs each, on two workers) started together: separate dirs
    and files, each report its own two jobs, and every job ends where the same job run in
    turn by the basic launcher ends."""
    grid = ["optimizer.lr=0.01,0.05", "callbacks.plots=null"]
    args = [script("reglab-train"), "-m", *SMALL, *grid, "hydra/launcher=joblib",
            "hydra.launcher.n_jobs=2"]
    procs = [start_cli(args, tmp_path) for _ in range(2)]
    (tmp_path / "seq").mkdir()
    seq, seq_sweep = _sweep(tmp_path / "seq", *grid)
    assert seq.returncode == 0, seq.stderr[-3000:]
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-3000:]
    sweeps = sorted((tmp_path / "outputs" / "noisy_line" / "multiruns").iterdir())
    assert len(sweeps) == 2  # one dir per sweep, though both started together
    jobs = [d for sweep in sweeps for d in sorted(sweep.iterdir()) if d.is_dir()]
    assert len(jobs) == 4
    files: list[Path] = []
    for job in jobs:
        metrics = json.loads((job / "metrics.json").read_text())
        assert metrics["status"] == "completed"
        events = list((job / "tensorboard").rglob("events.out.tfevents.*"))
        assert events and (job / "checkpoints" / "last.ckpt").is_file()
        files += [*events, job / "checkpoints" / "last.ckpt", job / "model.pt"]
    assert len({f.resolve() for f in files}) == len(files)
    for sweep in sweeps:  # each sweep's report sees its own two jobs, and only those
        rows = list(csv.DictReader((sweep / "sweep_summary.csv").read_text().splitlines()))
        assert len(rows) == 2 and all(r["status"] == "completed" for r in rows)
        for job in ("0", "1"):  # the joblib launcher changes where a job runs, not what
            a = json.loads((seq_sweep / job / "metrics.json").read_text())
            b = json.loads((sweep / job / "metrics.json").read_text())
            assert a["params"] == b["params"] and a["train_loss"] == b["train_loss"]


def test_report_on_a_folder_that_is_not_a_sweep(tmp_path: Path):
    with pytest.raises(ValueError, match="not a sweep directory"):
        sweep_report.write_report(tmp_path)
    out = run_cli([script("reglab-sweep-report"), str(tmp_path / "missing")], cwd=tmp_path)
    assert out.returncode == 2 and "no such sweep directory" in out.stderr


def test_lr_batch_preset_is_the_three_by_three_grid(tmp_path: Path):
    cfg = compose_config(["hparams_search=lr_batch"], tmp_path)
    params = cfg.hydra.sweeper.params
    assert params["optimizer.lr"] == "0.001,0.01,0.1"
    assert params["data.batch_size"] == "10,20,50"
    assert str(cfg.hydra.mode) == "RunMode.MULTIRUN" and cfg.task_name == "noisy_line"


def _fake_job(sweep: Path, num: int, overrides: list[str], metrics: dict | None) -> None:
    job = sweep / str(num)
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    if metrics is not None:
        (job / "metrics.json").write_text(json.dumps(metrics))


def test_report_for_one_swept_key_with_a_failed_and_a_missing_job(tmp_path: Path):
    def done(val: float) -> dict:
        return {"status": "completed", "train_loss": val, "val_loss": val, "epochs": 3,
                "history": {"val_loss": [[0, val * 4], [1, val * 2], [2, val]]}}

    _fake_job(tmp_path, 0, ["optimizer.lr=0.001"], done(0.5))
    _fake_job(tmp_path, 1, ["optimizer.lr=0.01"], done(0.1))
    _fake_job(tmp_path, 2, ["optimizer.lr=1.0"], {"status": "failed", "error": "boom"})
    _fake_job(tmp_path, 3, ["optimizer.lr=10.0"], None)  # cut short: never wrote metrics
    report = sweep_report.write_report(tmp_path)
    assert report.swept == ["optimizer.lr"]
    assert report.best["job"] == "1"
    assert [r["status"] for r in report.rows] == ["completed", "completed", "failed", "missing"]
    assert "job 2 (optimizer.lr=1.0): boom" in report.markdown
    assert _is_png(tmp_path / "sweep_heatmap.png") and _is_png(tmp_path / "sweep_curves.png")


def test_fast_dev_run_jobs_are_smoke_tests_not_failures(tmp_path: Path):
    smoke = {"status": "fast_dev_run", "train_loss": 0.3, "val_loss": 0.3, "epochs": 1}
    _fake_job(tmp_path, 0, ["optimizer.lr=0.01"], smoke)
    _fake_job(tmp_path, 1, ["optimizer.lr=0.1"], {"status": "failed", "error": "boom"})
    report = sweep_report.write_report(tmp_path)
    assert "2 jobs: 0 completed, 1 fast_dev_run smoke tests, 1 not" in report.markdown


def test_a_job_with_an_unreadable_record_is_reported_by_name(tmp_path: Path):
    """A truncated metrics.json, or one that is not a record, is that job's row only."""
    done = {"status": "completed", "train_loss": 0.2, "val_loss": 0.2, "epochs": 3}
    _fake_job(tmp_path, 0, ["optimizer.lr=0.001"], done)
    _fake_job(tmp_path, 1, ["optimizer.lr=0.01"], done)
    _fake_job(tmp_path, 2, ["optimizer.lr=0.1"], done)
    (tmp_path / "1" / "metrics.json").write_text('{"status": "compl')  # cut mid-write
    (tmp_path / "2" / "metrics.json").write_text("[1, 2]")
    report = sweep_report.write_report(tmp_path)
    assert [r["status"] for r in report.rows] == ["completed", "unreadable", "unreadable"]
    assert report.best["job"] == "0"
    assert "1/metrics.json: unreadable (JSONDecodeError" in report.markdown
    assert "2/metrics.json: unreadable (holds a list" in report.markdown


@pytest.mark.slow
def test_resuming_a_sweep_job_keeps_one_tensorboard_run(tmp_path: Path):
    out, sweep = _sweep(tmp_path, "optimizer.lr=0.01", "callbacks.plots=null",
                        "trainer.max_epochs=3")
    assert out.returncode == 0, out.stderr[-3000:]
    job = sweep / "0"
    out = run_cli([script("reglab-train"), f"resume={job}", "trainer.max_epochs=5"], tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    events = list((job / "tensorboard").rglob("events.*"))
    assert {e.parent for e in events} == {next((job / "tensorboard").iterdir())}
    acc = EventAccumulator(str(events[0].parent), size_guidance={"scalars": 0})
    acc.Reload()
    assert [e.step for e in acc.Scalars("train/loss_epoch")][-1] > 0
    assert len({round(e.value, 9) for e in acc.Scalars("train/loss_epoch")}) == 5


def test_keys_resume_adds_are_not_swept_columns(tmp_path: Path):
    done = {"status": "completed", "train_loss": 0.2, "val_loss": 0.2, "epochs": 3}
    _fake_job(tmp_path, 0, ["optimizer.lr=0.001"], done)
    _fake_job(tmp_path, 1, ["optimizer.lr=0.01", "ckpt_path=/x/1/checkpoints/last.ckpt",
                            "logger.tensorboard.version='optimizer.lr=0.01'"], done)
    assert sweep_report.write_report(tmp_path).swept == ["optimizer.lr"]


@pytest.mark.slow
def test_a_sweep_over_experiments_is_one_sweep_with_one_report(tmp_path: Path):
    """Each experiment names its own task; the jobs still share the sweep's dir."""
    out = run_cli([script("reglab-train"), "-m", "experiment=noisy_line,origin",
                   "trainer.max_epochs=2", "logger=none", "callbacks.plots=null"], cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    (sweep,) = list(tmp_path.glob("outputs/*/multiruns/*"))
    rows = list(csv.DictReader((sweep / "sweep_summary.csv").read_text().splitlines()))
    assert sorted(r["experiment"] for r in rows) == ["noisy_line", "origin"]


def test_slurm_without_slurm_is_one_line_and_leaves_nothing(tmp_path: Path):
    out = run_cli([script("reglab-train"), "-m", "hydra/launcher=slurm",
                   "optimizer.lr=0.01,0.02"], cwd=tmp_path,
                  env={"PATH": "/usr/bin:/bin"})
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        "reglab-train: error: hydra/launcher=slurm: no SLURM here (sbatch is not on the PATH);"
        " run from a SLURM login node, or run the jobs on this machine with "
        "hydra/launcher=local or hydra/launcher=joblib"]
    assert not (tmp_path / "outputs").exists()


@pytest.mark.slow
def test_a_job_process_that_dies_under_joblib_ends_the_sweep_with_a_report(tmp_path: Path):
    (tmp_path / "aborting.py").write_text(
        "import os\nimport pytorch_lightning as pl\n\n\n"
        "class Boom(pl.Callback):\n"
        "    def __init__(self, lr):\n        self.lr = lr\n\n"
        "    def on_train_start(self, trainer, module):\n"
        "        if self.lr == 0.1:\n            os.abort()\n")
    env = {"PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    out = run_cli([script("reglab-train"), "-m", *SMALL, "logger=none", "callbacks.plots=null",
                   "+callbacks.boom._target_=aborting.Boom", "+callbacks.boom.lr=${optimizer.lr}",
                   "optimizer.lr=0.1,0.01", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2"],
                  cwd=tmp_path, env=env)
    assert out.returncode == 1
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("reglab-train: error: the sweep stopped: a job's process died "
                           "(TerminatedWorkerError"), last
    (sweep,) = list(tmp_path.glob("outputs/*/multiruns/*"))
    assert (sweep / "sweep_summary.csv").is_file()


def test_curves_by_optimizer_step_and_in_panels_when_many(tmp_path: Path):
    """Steps are epochs times a run's steps per epoch (exact); 12 curves over two keys are
    split into one panel per batch size."""
    from reglab.reporting.figures import sweep_plots

    for n, (bs, lr) in enumerate((b, r) for b in (10, 20, 50) for r in (0.001, 0.003, 0.01, 0.03)):
        hist = [[e, 10 / (1 + e * lr * bs)] for e in range(5)]
        _fake_job(tmp_path, n, [f"data.batch_size={bs}", f"optimizer.lr={lr}"],
                  {"status": "completed", "val_loss": hist[-1][1], "train_loss": hist[-1][1],
                   "epochs": 5, "steps": 5 * (150 // bs), "history": {"val_loss": hist}})
    report = sweep_report.write_report(tmp_path, x_axis="step")
    assert _is_png(tmp_path / "sweep_curves.png")
    metrics = json.loads((tmp_path / "0" / "metrics.json").read_text())
    assert [p[0] for p in sweep_plots._curve(report.rows[0], metrics, "step")] == [
        15, 30, 45, 60, 75]
    out = run_cli([script("reglab-sweep-report"), str(tmp_path), "--x-axis", "step"],
                  cwd=tmp_path)
    assert out.returncode == 0, out.stderr
