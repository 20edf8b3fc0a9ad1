"""Faults through the real command: SIGTERM, kill -9 and resume, untrusted checkpoints."""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from conftest import Started, run_cli, script, start_cli

# Long enough that a signal sent half a second after the first checkpoint lands mid-fit.
LONG = ["experiment=noisy_line", "trainer.max_epochs=20000", "logger=none",
        "callbacks.last_checkpoint.every_seconds=0", "callbacks.progress_bar=null"]


def _trained_checkpoint(tmp_path: Path, proc: subprocess.Popen | Started,
                        timeout: float = 120) -> Path:
    """The run dir, once its ``last.ckpt`` records at least one finished epoch: the fit
    is under way and has checkpointed, whatever the machine's speed. Checkpoints are
    renamed into place whole, so each one read here is complete."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for ckpt in (tmp_path / "outputs").glob("*/runs/*/checkpoints/last.ckpt"):
            try:
                epoch = torch.load(ckpt, weights_only=True)["epoch"]
            except FileNotFoundError:  # between the old file's removal and the rename
                continue
            if epoch >= 1:
                return ckpt.parents[1]
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)  # polling interval, not a wait for the fit
    proc.kill()
    raise AssertionError("no checkpoint of a finished epoch appeared")


def _start(tmp_path: Path, *args: str) -> tuple[Started, Path]:
    proc = start_cli([script("reglab-train"), *args], tmp_path)
    return proc, _trained_checkpoint(tmp_path, proc)


def test_sigterm_checkpoints_and_reports_interrupted(tmp_path: Path):
    proc, run_dir = _start(tmp_path, *LONG)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)  # exits promptly
    assert proc.returncode == 143
    assert f"resume={run_dir}" in err
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "interrupted" and metrics["interrupted_by"] == "SIGTERM"
    assert 0 < metrics["epochs"] < 20000
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == metrics["steps"]  # the checkpoint is the stopping point


def test_a_second_ctrl_c_stops_at_once_and_says_so(tmp_path: Path):
    proc, run_dir = _start(tmp_path, *LONG)
    proc.send_signal(signal.SIGINT)
    proc.send_signal(signal.SIGINT)  # impatient: both land while the step runs
    proc.communicate(timeout=60)
    assert proc.returncode == 130
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "interrupted" and metrics["interrupted_by"] == "SIGINT"
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()  # what a resume starts from


@pytest.mark.slow
def test_kill_9_then_resume_matches_an_uninterrupted_run(tmp_path: Path, run_train):
    args = [*LONG[:1], "trainer.max_epochs=300", *LONG[2:]]
    proc, run_dir = _start(tmp_path, *args)
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=30)
    assert not (run_dir / "metrics.json").exists()
    # A kill mid-write may leave a .part file behind, never a truncated last.ckpt.
    saved = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert 0 < saved["epoch"] < 300  # it really stopped part-way

    out = run_cli([script("reglab-train"), f"resume={run_dir}"], cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    resumed = json.loads((run_dir / "metrics.json").read_text())
    assert resumed["status"] == "completed" and resumed["epochs"] == 300

    straight, _ = run_train("experiment=noisy_line", "trainer.max_epochs=300", "logger=none")
    assert resumed["params"] == straight["params"]  # bit for bit


@pytest.mark.slow
def test_ddp_killed_with_kill_9_then_resumed_matches_an_uninterrupted_ddp_run(
        tmp_path: Path, run_train):
    """Both ranks killed at once (the process group, as a node failure would), then
    resume=: the data-parallel fit ends where one that was never killed ends. That
    uninterrupted run is also held to what trainer=ddp_cpu promises: one run dir, one
    record, one summary, from rank 0, and the result one process reaches."""
    # Two steps an epoch (160 training rows): a DDP step on CPU costs ~20 ms, the point
    # is where the kill lands and what resume makes of it, not how many steps there are.
    args = [*LONG[:1], "trainer.max_epochs=60", "data.batch_size=80", *LONG[2:],
            "trainer=ddp_cpu"]
    proc = start_cli([script("reglab-train"), *args], tmp_path, new_session=True)
    try:
        run_dir = _trained_checkpoint(tmp_path, proc)
    finally:
        with contextlib.suppress(ProcessLookupError):  # already gone, if the wait failed
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=30)
    saved = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert 0 < saved["epoch"] < 60 and not (run_dir / "metrics.json").exists()

    out = run_cli([script("reglab-train"), f"resume={run_dir}"], cwd=tmp_path, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    resumed = json.loads((run_dir / "metrics.json").read_text())
    assert resumed["status"] == "completed" and resumed["epochs"] == 60
    assert resumed["world_size"] == 2
    straight_dir = tmp_path / "straight"
    out = run_cli([script("reglab-train"), *args, f"hydra.run.dir={straight_dir}"],
                  cwd=tmp_path, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    straight = json.loads((straight_dir / "metrics.json").read_text())
    assert resumed["params"] == straight["params"]  # bit for bit

    # One run dir: rank 1 ran in rank 0's, not in one of its own.
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == ["outputs", "straight"]
    assert list((tmp_path / "outputs").glob("*/runs/*")) == [run_dir]
    assert straight["world_size"] == 2
    assert len(list(straight_dir.rglob("metrics.json"))) == 1
    assert len(list(straight_dir.rglob("model.pt"))) == 1
    assert [p.name for p in (straight_dir / "checkpoints").iterdir()
            if p.name.startswith("last")] == ["last.ckpt"]
    assert out.stdout.count("reglab: noisy_line completed") == 1  # one summary, rank 0's
    # Global batches of data.batch_size rows across the ranks: one process's steps and,
    # to float rounding, its result.
    single, _ = run_train("experiment=noisy_line", "trainer.max_epochs=60", "data.batch_size=80",
                          "logger=none", "callbacks=none")
    assert straight["steps"] == single["steps"]
    for got, want in zip(straight["params"]["weight"][0], single["params"]["weight"][0],
                         strict=True):
        assert got == pytest.approx(want, abs=1e-4)
    assert straight["params"]["bias"] == pytest.approx(single["params"]["bias"], abs=1e-4)


def _malicious_checkpoint(path: Path, marker: Path) -> None:
    class Payload:
        def __reduce__(self):
            return (marker.write_text, ("code ran",))

    with path.open("wb") as fh:
        pickle.dump({"state_dict": {}, "x": Payload()}, fh)


def test_checkpoint_that_would_run_code_is_refused(tmp_path: Path):
    ckpt, marker = tmp_path / "evil.ckpt", tmp_path / "marker.txt"
    _malicious_checkpoint(ckpt, marker)
    out = run_cli([script("reglab-train"), f"ckpt_path={ckpt}", "logger=none"], cwd=tmp_path)
    assert out.returncode == 2 and "refused" in out.stderr and "Traceback" not in out.stderr
    assert not marker.exists()

    import reglab

    with pytest.raises(ValueError, match="refused"):
        reglab.load_model(ckpt)
    assert not marker.exists()


@pytest.mark.slow
def test_truncated_and_mismatched_checkpoints_are_clear_errors(tmp_path: Path, run_train):
    _, run_dir = run_train("experiment=d2l", "trainer.max_epochs=1", "logger=none")
    good = run_dir / "checkpoints" / "last.ckpt"
    cut = tmp_path / "cut.ckpt"
    cut.write_bytes(good.read_bytes()[:200])
    out = run_cli([script("reglab-train"), f"ckpt_path={cut}"], cwd=tmp_path)
    assert out.returncode == 2 and "truncated or corrupt" in out.stderr

    # A two-feature model's checkpoint offered to the one-feature line experiment.
    out = run_cli([script("reglab-train"), f"ckpt_path={good}"], cwd=tmp_path)
    assert out.returncode == 2
    assert "model.linear.weight has shape (1, 2) in the checkpoint but (1, 1)" in out.stderr


def test_checkpoint_of_another_model_class_names_both(tmp_path: Path, run_train):
    _, run_dir = run_train("experiment=quadratic_mlp", "trainer.max_epochs=1", "logger=none")
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    assert torch.load(ckpt, weights_only=True)["reglab"]["model"] == "MLP"
    out = run_cli([script("reglab-train"), f"ckpt_path={ckpt}"], cwd=tmp_path)
    assert out.returncode == 2
    assert "holds a MLP" in out.stderr and "builds a LinearRegression" in out.stderr
