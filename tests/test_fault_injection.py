"""Faults of the machine through the real command: a file-size limit that makes a
checkpoint or record write fail, stdout on a full device, a run dir that is a file.

Each ends in one line naming the path (or the console) and the OS's reason, never a
traceback, and nothing claims a success it did not have.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from conftest import run_cli, script

ARGS = ["experiment=noisy_line", "trainer.max_epochs=5", "callbacks.progress_bar=null"]


def _run(args: list[str], cwd: Path, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """``reglab-train`` forked from the suite's server (:func:`conftest.run_cli`: a
    file-size limit with ``fsize=``, stdout elsewhere with ``stdout_to=``)."""
    return run_cli([script("reglab-train"), *args], cwd, **kwargs)


@pytest.mark.slow
def test_a_file_size_limit_is_one_line_and_the_record_says_failed(tmp_path: Path):
    out = _run([*ARGS, "hydra.run.dir=run"], tmp_path, fsize=20 * 1024)  # 20 KiB a file
    assert out.returncode == 1, out.stderr[-2000:]
    assert "Traceback" not in out.stderr
    errors = [line for line in out.stderr.splitlines() if "error:" in line]
    assert errors == [f"reglab-train: error: a file under {tmp_path / 'run'}: File too "
                      "large"], out.stderr[-2000:]
    record = tmp_path / "run" / "metrics.json"
    assert not record.exists() or json.loads(record.read_text())["status"] == "failed"


@pytest.mark.slow
def test_stdout_on_a_full_device_is_one_line_after_the_run_is_recorded(tmp_path: Path):
    out = _run([*ARGS, "hydra.run.dir=run"], tmp_path, stdout_to="/dev/full")
    assert out.returncode == 1
    assert "Traceback" not in out.stderr and "Logging error" not in out.stderr
    assert out.stderr.strip().splitlines()[-1] == \
        "reglab-train: error: stdout: No space left on device"
    # The run itself finished and says so; only the console could not be written.
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["status"] == \
        "completed"


def test_a_run_dir_that_is_a_file_is_one_line(tmp_path: Path):
    (tmp_path / "taken").write_text("a user's file")
    for run_dir in ("taken", "taken/run"):
        out = _run([*ARGS, f"hydra.run.dir={run_dir}"], tmp_path)
        assert out.returncode == 2, out.stderr[-2000:]
        assert out.stderr.strip() == ("reglab-train: error: hydra.run.dir: taken is a "
                                      "file, not a folder; name another run dir")
    assert (tmp_path / "taken").read_text() == "a user's file"


def _mount(tmp_path: Path, options: str) -> Path:
    """A tmpfs of its own (read-only, or a few KiB), where the machine lets us mount."""
    where = tmp_path / "mnt"
    where.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)],
                          capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {made.stderr.strip()}")
    return where


@pytest.mark.slow
@pytest.mark.parametrize("options, code, reason", [
    ("ro,size=1m", 2, "Read-only file system"),
    ("size=40k", 1, "No space left on device"),
])
def test_a_read_only_or_full_file_system_is_one_line(tmp_path: Path, options: str,
                                                     code: int, reason: str):
    where = _mount(tmp_path, options)
    try:
        out = _run([*ARGS, f"hydra.run.dir={where / 'run'}"], tmp_path)
        assert out.returncode == code, out.stderr[-2000:]
        assert "Traceback" not in out.stderr and "warn" not in out.stderr
        errors = [line for line in out.stderr.splitlines() if "error:" in line]
        assert len(errors) == 1 and errors[0].endswith(f": {reason}"), out.stderr[-2000:]
        record = where / "run" / "metrics.json"
        assert not record.exists() or json.loads(record.read_text())["status"] == "failed"
    finally:
        subprocess.run(["umount", str(where)], capture_output=True)


@pytest.mark.slow
def test_eval_predict_and_sweep_report_on_a_read_only_file_system_are_one_line(
        tmp_path: Path):
    """The other three commands meet a read-only file system the way reglab-train does:
    one line naming the path and the OS's reason, and what was there left as it was."""
    where = _mount(tmp_path, "size=64m")
    try:
        sweep = where / "sweep"
        made = run_cli([script("reglab-train"), "-m", *ARGS, "optimizer.lr=0.01,0.02",
                        "logger=none", "callbacks.plots=null", f"hydra.sweep.dir={sweep}"],
                       tmp_path)
        assert made.returncode == 0, made.stderr[-2000:]
        (where / "new.csv").write_text("x\n1.5\n")
        before = {p: p.read_bytes() for p in where.rglob("*") if p.is_file()}
        subprocess.run(["mount", "-o", "remount,ro", str(where)], check=True)
        model = sweep / "0" / "model.pt"
        commands = [
            [script("reglab-sweep-report"), str(sweep)],
            [script("reglab-eval"), f"ckpt_path={model}", "split=all",
             f"hydra.run.dir={where / 'eval'}"],
            [script("reglab-predict"), f"ckpt_path={model}", f"input_path={where / 'new.csv'}",
             f"output_path={where / 'pred.csv'}"],
        ]
        for command in commands:
            out = run_cli(command, tmp_path)
            assert out.returncode in (1, 2), (command[0], out.stderr[-2000:])
            assert "Traceback" not in out.stderr, out.stderr[-2000:]
            lines = out.stderr.strip().splitlines()
            assert len(lines) == 1 and lines[0].endswith(": Read-only file system"), lines
            assert ".tmp-" not in lines[0]  # the file asked for, not a temporary name
        assert {p: p.read_bytes() for p in where.rglob("*") if p.is_file()} == before
    finally:
        subprocess.run(["umount", str(where)], capture_output=True)


@pytest.mark.slow
def test_eval_predict_and_sweep_report_under_a_file_size_limit_or_a_full_stdout(
        tmp_path: Path):
    """A file-size limit (``RLIMIT_FSIZE`` in the command's process) that stops each
    command's own writes, and stdout on ``/dev/full``: one line naming the path (or
    stdout) and the OS's reason, no traceback, and no output file left half-written or
    claiming more. The commands are forked from the suite's server, the limit set in
    the command's process alone."""
    sweep = tmp_path / "sweep"
    made = run_cli([script("reglab-train"), "-m", *ARGS, "optimizer.lr=0.01,0.02",
                    "logger=none", "callbacks.plots=null", f"hydra.sweep.dir={sweep}"],
                   tmp_path)
    assert made.returncode == 0, made.stderr[-2000:]
    (tmp_path / "new.csv").write_text("x\n" + "".join(f"{i / 7:.6f}\n" for i in range(3000)))
    (tmp_path / "folder").mkdir()  # a folder is predicted streamed, by pyarrow's writers
    (tmp_path / "folder" / "new.csv").write_text((tmp_path / "new.csv").read_text())
    model = sweep / "0" / "model.pt"
    before = {p: p.read_bytes() for p in sweep.rglob("*") if p.is_file()}

    commands = {
        "reglab-sweep-report": [str(sweep)],
        "reglab-eval": [f"ckpt_path={model}", "split=all", "hydra.run.dir=eval"],
        "reglab-predict": [f"ckpt_path={model}", "input_path=new.csv",
                           "output_path=pred.csv"],
        "reglab-predict streamed to CSV": [f"ckpt_path={model}", "input_path=folder",
                                           "output_path=pred.csv"],
        "reglab-predict streamed to Parquet": [f"ckpt_path={model}", "input_path=folder",
                                               "output_path=pred.parquet"],
    }
    for name, args in commands.items():
        name = name.split()[0]
        out = run_cli([script(name), *args], tmp_path, fsize=2048)  # 2 KiB per file
        assert out.returncode in (1, 2), (name, out.stderr[-2000:])
        lines = out.stderr.strip().splitlines()
        assert "Traceback" not in out.stderr and len(lines) == 1, (name, lines)
        assert lines[0].startswith(f"{name}: error: ") and \
            lines[0].endswith(": File too large"), (name, lines)
        assert ".tmp-" not in lines[0] and "error: a file:" not in lines[0]  # names a path
    assert not (tmp_path / "pred.csv").exists()  # never half of it
    assert not (tmp_path / "pred.parquet").exists()
    assert not (tmp_path / "eval").exists()  # as before: the same command can run again
    assert not list(tmp_path.glob("**/.tmp-*")) and not list(tmp_path.glob("**/*.tmp"))

    for name, args in commands.items():
        if name == "reglab-sweep-report" or "streamed" in name:
            continue  # writes files, prints a line or two; covered by the limit above
        out = run_cli([script(name), *args], tmp_path, stdout_to="/dev/full")
        assert out.returncode == 1, (name, out.stderr[-2000:])
        assert "Traceback" not in out.stderr
        assert out.stderr.strip().splitlines()[-1] == \
            f"{name}: error: stdout: No space left on device", (name, out.stderr)
    assert {p: p.read_bytes() for p in sweep.rglob("*") if p.is_file()
            if p in before} == before


def test_write_whole_names_the_file_asked_for_and_keeps_a_librarys_own_message(
        tmp_path: Path):
    """A write() that fails without a file name (a size limit, a full disk) is named by
    the file asked for, not the temporary one; an OSError with no errno (a library's
    complaint, Pillow's "cannot write mode RGBA as JPEG") passes through as it was."""
    import errno

    from reglab.run_files import write_whole

    def full(tmp: Path) -> None:
        tmp.write_text("half")
        raise OSError(errno.EFBIG, "File too large")

    with pytest.raises(OSError) as caught:
        write_whole(tmp_path / "out.csv", full)
    assert caught.value.filename == str(tmp_path / "out.csv")
    assert caught.value.strerror == "File too large"

    def library(tmp: Path) -> None:
        raise OSError("cannot write mode RGBA as JPEG")

    with pytest.raises(OSError, match="cannot write mode RGBA as JPEG"):
        write_whole(tmp_path / "out.jpg", library)
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing left, half or whole
