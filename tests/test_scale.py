"""Scaling out on existing engines: DDP on two CPU processes, submitit sweeps, presets."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from conftest import compose_config, run_cli, script, two_nodes


@pytest.mark.slow
def test_two_nodes_on_one_machine_match_one_process(tmp_path: Path, run_train):
    """trainer.num_nodes=2, one process per "node", started as SLURM or torchrun would
    start them (MASTER_ADDR/PORT, NODE_RANK): one run, equal to one process."""
    run_dir = tmp_path / "run"
    two_nodes(["experiment=d2l", "callbacks.plots=null", f"hydra.run.dir={run_dir}"],
              tmp_path)
    ddp = json.loads((run_dir / "metrics.json").read_text())
    assert ddp["world_size"] == 2 and ddp["steps"] == 240
    assert len(list(tmp_path.rglob("metrics.json"))) == 1  # node 1 wrote no record
    single, _ = run_train("experiment=d2l", "logger=none", "callbacks=none")
    for got, want in zip(ddp["params"]["weight"][0], single["params"]["weight"][0],
                         strict=True):
        assert got == pytest.approx(want, abs=1e-4)
    assert ddp["params"]["bias"] == pytest.approx(single["params"]["bias"], abs=1e-4)


@pytest.mark.slow
def test_submitit_local_sweep_runs_both_jobs_and_reports(tmp_path: Path):
    out = run_cli([script("reglab-train"), "-m", "experiment=noisy_line",
                   "trainer.max_epochs=3", "optimizer.lr=0.01,0.05", "hydra/launcher=local",
                   "callbacks.plots=null"], cwd=tmp_path, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    (sweep,) = list((tmp_path / "outputs" / "noisy_line" / "multiruns").iterdir())
    for job in ("0", "1"):
        metrics = json.loads((sweep / job / "metrics.json").read_text())
        assert metrics["status"] == "completed"
    assert (sweep / ".submitit").is_dir()  # the jobs really went through submitit
    rows = list(csv.DictReader((sweep / "sweep_summary.csv").read_text().splitlines()))
    assert sorted(r["optimizer.lr"] for r in rows) == ["0.01", "0.05"]


def test_cluster_and_device_presets_compose(tmp_path: Path):
    cfg = compose_config(["hydra/launcher=slurm", "hydra.launcher.partition=gpu",
                          "hydra.launcher.timeout_min=30", "hydra.launcher.mem_gb=64",
                          "trainer=ddp", "trainer.num_nodes=2"], tmp_path)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert (launcher.partition, launcher.timeout_min, launcher.mem_gb) == ("gpu", 30, 64)
    assert launcher.gpus_per_node == 1 and launcher.cpus_per_task == 4
    assert cfg.trainer.strategy == "ddp" and cfg.trainer.num_nodes == 2
    assert cfg.trainer.devices == -1 and cfg.trainer.accelerator == "gpu"
    cpu = compose_config(["trainer=ddp_cpu"], tmp_path)
    assert cpu.trainer.devices == 2 and cpu.trainer.strategy.process_group_backend == "gloo"


def test_data_parallel_inside_a_local_sweep_is_refused_per_job(tmp_path: Path):
    """Lightning relaunches the command line per rank, which would rerun the sweep."""
    out = run_cli([script("reglab-train"), "-m", "experiment=d2l", "trainer=ddp_cpu",
                   "optimizer.lr=0.01,0.03"], cwd=tmp_path, timeout=120)
    assert out.returncode == 1  # every job failed, and the sweep says so
    (sweep,) = list((tmp_path / "outputs" / "d2l" / "multiruns").iterdir())
    rows = list(csv.DictReader((sweep / "sweep_summary.csv").read_text().splitlines()))
    assert [r["status"] for r in rows] == ["failed", "failed"]
    assert all("hydra/launcher=slurm" in r["error"] for r in rows)
    assert not list(sweep.glob("*/checkpoints"))  # refused before any training
