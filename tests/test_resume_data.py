"""``resume=`` continues the same run on the same data, from any directory.

Another data setting, another seed or a table changed on disk would make a resumed run's
record describe data its weights never saw: refused in one line before anything is
written, naming the way to do it on purpose (a new run started from the checkpoint).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from pathlib import Path

import pytest
from conftest import run_cli, script


def _hashes(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and not p.is_symlink()}


@pytest.mark.slow
def test_a_resume_that_would_change_the_data_is_refused(tmp_path: Path):
    done = run_cli([script("reglab-train"), "experiment=noisy_line", "trainer.max_epochs=3",
                    "logger=none", "callbacks.plots=null", "hydra.run.dir=d4"], tmp_path)
    assert done.returncode == 0, done.stderr
    run = tmp_path / "d4"
    before = _hashes(run)
    way = (f"a resume continues the run on the data it trained on; to train on other data, "
           f"start a new run from its checkpoint: ckpt_path={run}/checkpoints/last.ckpt "
           "hydra.run.dir=<new dir>")
    for args, what in ((["resume=d4", "data.source.num_samples=3000"],
                        "data.source.num_samples is 3000, but {run} trained with 150"),
                       (["resume=d4", "seed=7"], "seed is 7, but {run} trained with 42"),
                       (["hydra.run.dir=d4", "ckpt_path=last", "experiment=noisy_line",
                         "data.source.noise=1.0"],
                        "data.source.noise is 1.0, but {run} trained with 0.3")):
        out = run_cli([script("reglab-train"), *args], tmp_path)
        assert out.returncode == 2, out.stderr
        assert out.stderr.strip() == (f"reglab-train: error: resume: {what.format(run=run)}; "
                                      f"{way}"), out.stderr
        assert _hashes(run) == before  # byte for byte: nothing written

    # The way to do it on purpose: a new run from the checkpoint, which it records.
    new = run_cli([script("reglab-train"), "experiment=noisy_line", "trainer.max_epochs=4",
                   "data.source.num_samples=3000", "logger=none", "callbacks.plots=null",
                   f"ckpt_path={run}/checkpoints/last.ckpt", "hydra.run.dir=more"], tmp_path)
    assert new.returncode == 0, new.stderr
    record = json.loads((tmp_path / "more" / "metrics.json").read_text())
    assert record["started_from"] == str(run / "checkpoints" / "last.ckpt")
    assert record["epochs"] == 4 and record["rows"]["train"] > 150


@pytest.mark.slow
def test_a_resume_from_another_directory_reads_the_runs_own_file(tmp_path: Path):
    rng = random.Random(1)
    rows = [(x, 3 * x + 1 + rng.gauss(0, 0.1)) for x in (rng.random() for _ in range(60))]
    (tmp_path / "d.csv").write_text("x,y\n" + "".join(f"{a},{b}\n" for a, b in rows))
    args = ["data=csv", "data.source.path=d.csv", "data.source.target=y", "logger=none",
            "callbacks.plots=null"]
    done = run_cli([script("reglab-train"), *args, "trainer.max_epochs=3", "hydra.run.dir=r"],
                   tmp_path)
    assert done.returncode == 0, done.stderr
    other = tmp_path / "other"
    other.mkdir()
    (other / "d.csv").write_text("x,y\n1,2\n")  # a file of the same name that is not the run's
    out = run_cli([script("reglab-train"), "resume=../r", "trainer.max_epochs=5"], other)
    assert out.returncode == 0, out.stderr
    record = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert record["epochs"] == 5 and record["data"]["file"]["path"] == str(tmp_path / "d.csv")

    # The same file changed on disk since: refused, whichever dir the resume starts from.
    with (tmp_path / "d.csv").open("a") as table:
        table.write("0.5,2.5\n")
    before = _hashes(tmp_path / "r")
    for cwd, run in ((tmp_path, "r"), (other, "../r")):
        out = run_cli([script("reglab-train"), f"resume={run}", "trainer.max_epochs=6"], cwd)
        assert out.returncode == 2, out.stderr
        line = out.stderr.strip()
        assert line.startswith(f"reglab-train: error: resume: {tmp_path / 'd.csv'} changed "
                               f"since {tmp_path / 'r'} trained on it ("), line
        assert _hashes(tmp_path / "r") == before
    assert os.path.isdir(other)
