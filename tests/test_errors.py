"""Bad input through the real command: one line naming the key, exit status 2, no run dir."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import has_cuda, run_cli, script

BAD = [
    (["optimizer.lr=-1"], "optimizer.lr: expected a finite number > 0, got -1"),
    # Refused before a byte of it is allocated, whatever the machine.
    (["data=linear", "data.source.num_samples=1000000000000"], "data.source.num_samples: "
     "1,000,000,000,000 rows of 3 float64 columns need about 67055.2 GB"),
    (["data.source.num=1000000000000"], "data.source.num: 1,000,000,000,000 rows of 2 "
     "float64 columns need about 44703.5 GB"),
    (["optimizer.lr=0"], "optimizer.lr: expected a finite number > 0"),
    (["optimizer.lr=inf"], "optimizer.lr: expected a finite number > 0, got inf"),
    (["optimizer.weight_decay=nan"], "optimizer.weight_decay: expected a finite number >= 0"),
    (["task_name=../../escape"], "task_name: expected a plain folder name"),
    (["trainer.precision=7"], "trainer: Precision 7 is invalid"),
    (["seed=99999999999"], "seed: expected a whole number from 0 to 4294967295, or null "
                           "for a fresh one, got 99999999999"),
    (["trainer.check_val_every_n_epoch=0"],
     "trainer.check_val_every_n_epoch: expected a whole number >= 1, or null"),
    (["trainer.accelerator=tpu"], "trainer: Requirement 'torch_xla>=1.13' not met"),
    (["trainer.devices=0"], "trainer: `Trainer(devices=0)` value is not a valid input"),
    (["+logger.tensorboard.bogus=1"], "logger.tensorboard: unexpected keyword argument 'bogus'"),
    (["+optimizer.foo=1"], "optimizer: SGD.__init__() got an unexpected keyword argument 'foo'"),
    (["+loss.bogus=2"], "loss: _Loss.__init__() got an unexpected keyword argument 'bogus'"),
    (["scheduler=step", "+scheduler.scheduler.foo=1"],
     "scheduler: StepLR.__init__() got an unexpected keyword argument 'foo'"),
    (["scheduler=onecycle", "scheduler.scheduler.pct_start=2"],
     "scheduler: Expected float between 0 and 1 pct_start, but got 2"),
    (["scheduler=plateau", "scheduler.monitor=nope"], "scheduler.monitor: expected one of"),
    (["+callbacks.es._target_=pytorch_lightning.callbacks.EarlyStopping",
      "+callbacks.es.monitor=val_loss"], "callbacks.es.monitor: expected one of the metrics"),
    (["tuner=lr_find", "tuner.lr_find.num_training=0"],
     "tuner.lr_find.num_training: expected a whole number >= 2, got 0"),
    (["data.batch_size=0"], "data.batch_size: expected a whole number > 0"),
    (["optimizer.lr=${nope}"], "optimizer.lr: Interpolation key 'nope' not found"),
    (["trainer.max_epochs=0"], "trainer.max_epochs: expected a whole number >= 1"),
    (["data.val_fraction=1.5"], "data.val_fraction: expected a fraction in [0, 1]"),
    (["data.test_fraction=-0.1"], "data.test_fraction: expected a fraction in [0, 1]"),
    (["data.val_fraction=0.6", "data.test_fraction=0.5"], "expected a sum below 1"),
    (["model=mlp", "model.hidden=[10,0]"], "model.hidden: expected a list of whole numbers"),
    (["model=mlp", "model.activation=swish2"], "model.activation: expected one of relu"),
    (["loss.reduction=avg"], "loss.reduction: expected mean or sum"),
    (["experiment=d2l", "data.source.num_samples=0"], "data.source.num_samples"),
    (["experiment=origin", "data.test_fraction=0.1"], "3 rows cannot be split"),
    (["data.nosuchkey=1"], "data.nosuchkey: not a key of the config; to add it, write "
                           "+data.nosuchkey=1"),
    (["experiment=nope"], "experiment=nope: no such option in experiment/; the options are "),
    (["optimizer=rmsprop"], "optimizer=rmsprop: no such option in optimizer/; the options are "
                            "adam, adamw, exact, lbfgs, sgd"),
    (["trainer.max_epoch=3"], "trainer.max_epoch: not a key of the config; did you mean "
                              "trainer.max_epochs? or, to add it, write +trainer.max_epoch=3"),
    (["model=lienar"], "(did you mean model=linear?)"),
    (["data=linear", "data.source.noise=inf"], "data.source.noise: expected a finite number, "
                                               "got inf"),
    (["data=linear", "data.source.weight=[2,nan]"], "data.source.weight[1]: expected a "
                                                    "finite number, got nan"),
    (["model=polynomial", "model.degree=0"], "model.degree: expected a whole number >= 1"),
    (["experiment=d2l", "model=polynomial"], "a polynomial model takes one input column, "
                                             "but the data has 2"),
    (["data=csv"], "data.source.path: required but not set"),
    (["data=csv", "data.source.path=missing.csv", "data.source.target=y"],
     "data.source.path: expected an existing file"),
    (["data=csv", "data.source.path=good.csv", "data.source.target=price"],
     "good.csv: no column 'price' (the file has: a, b, y)"),
    (["data=csv", "data.source.path=good.csv", "data.source.target=y",
      "data.source.features=[a,q]"], "good.csv: no column 'q'"),
    (["data=csv", "data.source.path=good.csv", "data.source.target=y",
      "data.source.delimiter=';;'"],
     "data.source.delimiter: expected one character such as ',' or ';' (\\t for a tab), "
     "got ';;'"),
    (["data=csv", "data.source.path=text.csv", "data.source.target=y"],
     "text.csv, line 3, column 'b': 'x' is not a number"),
    (["data=csv", "data.source.path=hole.csv", "data.source.target=y"],
     "hole.csv, line 2, column 'a': empty cell (expected a number)"),
    (["data=csv", "data.source.path=nan.csv", "data.source.target=y"],
     "nan.csv, line 4, column 'y': 'nan' is not a finite number"),
    (["data=csv", "data.source.path=header.csv", "data.source.target=y"],
     "header.csv: no data rows below the header"),
]

#: Tables the data-file cases above read, written into each test's working directory.
FILES = {
    "good.csv": "a,b,y\n" + "".join(f"{i},{i % 3},{2 * i + 1}\n" for i in range(20)),
    "text.csv": "a,b,y\n1,2,3\n2,x,5\n",
    "hole.csv": "a,b,y\n,2,3\n2,1,5\n",
    "nan.csv": "a,b,y\n1,2,3\n2,1,5\n3,3,nan\n",
    "header.csv": "a,b,y\n",
}


@pytest.mark.parametrize(("args", "message"), BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_input_is_one_clear_line(tmp_path: Path, args: list[str], message: str):
    for name, text in FILES.items():
        (tmp_path / name).write_text(text)
    out = run_cli([script("reglab-train"), *args], cwd=tmp_path, timeout=120)
    assert out.returncode == 2, (out.returncode, out.stderr[-2000:])
    assert message in out.stderr
    assert "Traceback" not in out.stderr
    errors = [line for line in out.stderr.splitlines() if not line.startswith("[")]
    assert len(errors) == 1 and errors[0].startswith("reglab-train: error: "), out.stderr
    # Nothing left behind: no run dir, nor the outputs/<task>/runs folders made for it.
    left = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*"))
    assert left == sorted(FILES), left


def test_divergence_stops_at_once_and_keeps_the_last_finite_checkpoint(tmp_path: Path):
    # last.ckpt is written after the first epoch (8 steps); the loss overflows later.
    out = run_cli([script("reglab-train"), "experiment=noisy_line", "optimizer.lr=10",
                   "logger=none"], cwd=tmp_path)
    assert out.returncode == 1
    assert "reglab-train: error: training diverged at step" in out.stderr
    run_dir = next((tmp_path / "outputs" / "noisy_line" / "runs").iterdir())
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "diverged"
    assert metrics["epochs"] < 5  # not after the remaining 100 epochs
    assert metrics["steps"] <= metrics["diverged_at_step"] + 1  # stopped at that step
    import torch

    state = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert all(torch.isfinite(v).all() for v in state["state_dict"].values())
    assert state["global_step"] < metrics["diverged_at_step"]
    assert not list((run_dir / "checkpoints").glob("*.part"))


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() if p.is_file() else b"<dir>"
            for p in sorted(folder.rglob("*"))}


@pytest.mark.slow
def test_a_rejected_command_leaves_existing_folders_as_they_were(tmp_path: Path):
    """A folder of the user's, or an earlier run, is never deleted or rewritten by a
    command that is then rejected (exit 2)."""
    mine = tmp_path / "u"
    mine.mkdir()
    (mine / "train.log").write_text("notes\n")
    out = run_cli([script("reglab-train"), f"hydra.run.dir={mine}", "optimizer.lr=-1"],
                  cwd=tmp_path)
    assert out.returncode == 2
    assert _snapshot(mine) == {"train.log": b"notes\n"}
    out = run_cli([script("reglab-train"), "hydra.run.dir=.", "optimizer.lr=-1"],
                  cwd=mine)
    assert out.returncode == 2 and _snapshot(mine) == {"train.log": b"notes\n"}

    out = run_cli([script("reglab-train"), "experiment=origin", "logger=none",
                   "callbacks.plots=null"], cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    run_dir = next((tmp_path / "outputs" / "origin" / "runs").iterdir())
    before = _snapshot(run_dir)
    for args in (["model=mlp"], ["data.source.num=0", "trainer.max_epochs=-1"]):
        out = run_cli([script("reglab-train"), f"resume={run_dir}", *args], cwd=tmp_path)
        assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-2000:]
        assert _snapshot(run_dir) == before, args
    out = run_cli([script("reglab-train"), f"hydra.run.dir={run_dir}", "experiment=origin",
                   "ckpt_path=hpc"], cwd=tmp_path)
    assert out.returncode == 2 and _snapshot(run_dir) == before
    assert "ckpt_path=hpc: Lightning resolves 'hpc' only within the fit" in out.stderr
    out = run_cli([script("reglab-train"), f"resume={run_dir}", "trainer.max_epochs=150",
                   "logger=none", "callbacks.plots=null"], cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]  # and a later resume still works


@pytest.mark.slow
@pytest.mark.skipif(has_cuda(), reason="trainer=gpu runs where there is a GPU")
def test_gpu_trainer_without_a_gpu_says_what_to_use(tmp_path: Path):
    out = run_cli([script("reglab-train"), "trainer=gpu"], cwd=tmp_path, timeout=120)
    assert out.returncode == 2, out.stderr[-2000:]
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("reglab-train: error: trainer:")
    assert "use trainer=cpu" in lines[0]
    assert not any((tmp_path / "outputs").rglob("metrics.json"))
    out = run_cli([script("reglab-train"), "trainer=ddp"], cwd=tmp_path, timeout=120)
    assert out.returncode == 2 and "use trainer=ddp_cpu (data-parallel processes on the " \
        "CPU), trainer=cpu, or trainer=default" in out.stderr, out.stderr[-2000:]


@pytest.mark.parametrize("body, line", [
    ("trainer:\n  max_epochs: [3\n", "line 4, column 1: expected ',' or ']', but got "
                                     "'<stream end>'"),
    ("trainer:\n\tmax_epochs: 3\n", "line 3, column 1: found character '\\t' that cannot "
                                    "start any token"),
    ("trainer:\n  max_epochs: 3\n  max_epochs: 4\n", "line 4, column 3: found duplicate key "
                                                      "max_epochs"),
    (b"trainer:\n  max_epochs: \xff\n", "not UTF-8 text (byte 43); save it as UTF-8"),
])
def test_a_broken_yaml_file_of_yours_is_one_line(tmp_path: Path, body, line):
    """PyYAML's error names no file (Hydra parses text it read): reglab finds the file."""
    conf = tmp_path / "conf" / "experiment"
    conf.mkdir(parents=True)
    header = b"# @package _global_\n"
    (conf / "mine.yaml").write_bytes(header + (body if isinstance(body, bytes)
                                               else body.encode()))
    out = run_cli([script("reglab-train"), "experiment=mine",
                   f"hydra.searchpath=[file://{tmp_path / 'conf'}]", "hydra.run.dir=run"],
                  tmp_path)
    assert out.returncode == 2, out.stderr[-2000:]
    joint = ", " if line.startswith("line") else ": "
    assert out.stderr.strip() == f"reglab-train: error: {conf / 'mine.yaml'}{joint}{line}"
    assert not (tmp_path / "run").exists()


def test_a_rejected_command_keeps_the_empty_folders_it_found(tmp_path: Path):
    """The folders above a fresh run dir are removed with it only where the command made
    them: an empty ``outputs/line`` of the user's stays."""
    (tmp_path / "outputs" / "line").mkdir(parents=True)
    out = run_cli([script("reglab-train"), "optimizer.lr=-1"], cwd=tmp_path)
    assert out.returncode == 2, out.stderr[-2000:]
    left = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*"))
    assert left == ["outputs", "outputs/line"]
