"""What a run leaves on disk: TensorBoard events, checkpoints, model.pt, metrics.json."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import reglab
from reglab.models.regressors import LinearRegression


def _events(run_dir: Path) -> EventAccumulator:
    acc = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0})
    acc.Reload()
    return acc


def test_tensorboard_scalars_and_hparams(run_train):
    m, run_dir = run_train("experiment=line", "trainer.max_epochs=200",
                           "trainer.log_every_n_steps=10")
    acc = _events(run_dir)
    tags = set(acc.Tags()["scalars"])
    assert {"train/loss", "train/loss_epoch", "val/loss", "weights/weight_0",
            "weights/bias", "train/lr-SGD", "x-axis/epoch"} <= tags
    # SCALARS sorts its groups by name and opens the first two: the losses.
    groups = list(dict.fromkeys(tag.split("/")[0] for tag in sorted(tags)))
    assert groups[:2] == ["train", "val"], groups
    loss = [e.value for e in acc.Scalars("train/loss")]
    # Lightning's pacing: after steps 9, 19, ..., 199 (x = the steps taken before them).
    assert [e.step for e in acc.Scalars("train/loss")] == list(range(9, 200, 10))
    assert loss[-1] < loss[0]
    # train/loss_epoch for every epoch; the parameters for the epochs holding a logging
    # step, the last included.
    assert sorted({int(e.value) for e in acc.Scalars("x-axis/epoch")}) == list(range(200))
    assert len(acc.Scalars("train/loss_epoch")) == 200
    bias = acc.Scalars("weights/bias")
    assert len(bias) == 20 and abs(bias[-1].value - m["params"]["bias"]) < 1e-6
    # The HPARAMS tab: hyper-parameters with real metrics, not a placeholder hp_metric.
    assert "hp_metric" not in tags
    hp = acc.PluginTagToContent("hparams")
    assert "_hparams_/session_start_info" in hp and "_hparams_/experiment" in hp
    assert b"val/loss" in hp["_hparams_/experiment"] and b"lr" in hp["_hparams_/experiment"]


def test_metrics_json(run_train):
    m, run_dir = run_train("experiment=d2l")
    on_disk = json.loads((run_dir / "metrics.json").read_text())
    assert on_disk == json.loads(json.dumps(m))
    assert on_disk["status"] == "completed"
    for key in ("epochs", "steps", "fit_seconds", "train_loss", "val_loss", "test", "params",
                "true_params", "param_error", "hparams"):
        assert key in on_disk, key
    assert set(on_disk["test"]) == {"mse", "rmse", "mae", "r2", "adjusted_r2"}
    closed = on_disk["closed_form"]
    assert closed["train_loss"] <= on_disk["train_loss"]
    assert closed["optimality_gap"]["absolute"] >= 0
    hp = on_disk["hparams"]
    assert hp["lr"] == 0.03 and hp["batch_size"] == 10 and hp["optimizer"] == "sgd"
    assert hp["model"] == "linear" and hp["max_epochs"] == 3 and hp["seed"] == 42


def test_checkpoints_and_model_pt_predict_like_the_run(run_train):
    m, run_dir = run_train("experiment=d2l")
    ckpts = run_dir / "checkpoints"
    assert (ckpts / "last.ckpt").is_file()
    assert [p.name for p in ckpts.glob("best-*.ckpt")], "no best checkpoint"
    x = torch.randn(16, 2)

    model = reglab.load_model(run_dir / "model.pt")
    raw = torch.load(run_dir / "model.pt", weights_only=True)
    assert raw["model"]["class"] == "reglab.models.regressors.LinearRegression"
    expected = x @ torch.tensor(m["params"]["weight"]).T + m["params"]["bias"]

    state = torch.load(ckpts / "last.ckpt", weights_only=True)["state_dict"]
    from_ckpt = LinearRegression(in_features=2)
    from_ckpt.load_state_dict({k.removeprefix("model."): v for k, v in state.items()
                               if k.startswith("model.")})
    with torch.no_grad():
        assert torch.allclose(model(x), expected, atol=1e-5)
        assert torch.equal(from_ckpt(x), model(x))


def test_resume_from_last_checkpoint(run_train):
    import warnings

    first, run_dir = run_train("experiment=noisy_line", "trainer.max_epochs=5")
    assert first["epochs"] == 5
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    with warnings.catch_warnings(record=True) as said:  # a new run from the checkpoint:
        warnings.simplefilter("always")  # its own dir, nothing for the user to act on
        resumed, _ = run_train("experiment=noisy_line", "trainer.max_epochs=8",
                               f"ckpt_path={ckpt}")
    assert not [str(w.message) for w in said if "dirpath" in str(w.message)]
    assert resumed["epochs"] == 8
    assert resumed["steps"] == first["steps"] * 8 // 5
    # The record covers the whole run, the epochs before the resume included.
    assert [e for e, _ in resumed["history"]["train_loss"]] == list(range(8))
    assert resumed["history"]["train_loss"][:5] == first["history"]["train_loss"]
    assert resumed["train_loss"] < first["train_loss"]
    # Same data order after resume: identical to an uninterrupted 8-epoch run.
    straight, _ = run_train("experiment=noisy_line", "trainer.max_epochs=8")
    assert resumed["params"] == straight["params"]


@pytest.mark.slow
def test_seed_null_draws_a_seed_that_repeats_the_run_and_resumes_with_it(run_train,
                                                                          tmp_path: Path):
    from conftest import run_cli, script

    args = ["experiment=noisy_line", "trainer.max_epochs=3", "callbacks.plots=null"]
    first, _ = run_train(*args, "seed=null")
    second, _ = run_train(*args, "seed=null")
    seed = first["hparams"]["seed"]
    assert isinstance(seed, int) and 0 <= seed < 2**32
    assert seed != second["hparams"]["seed"]
    again, _ = run_train(*args, f"seed={seed}")  # the recorded seed repeats the run
    assert again["params"] == first["params"] and again["train_loss"] == first["train_loss"]

    # resume= takes the drawn seed, so the resumed run keeps its splits.
    run_dir = tmp_path / "cli"
    out = run_cli([script("reglab-train"), *args, "seed=null", f"hydra.run.dir={run_dir}"],
                  tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    drawn = json.loads((run_dir / "metrics.json").read_text())["hparams"]["seed"]
    assert f"drew seed {drawn}" in out.stdout
    out = run_cli([script("reglab-train"), f"resume={run_dir}", "trainer.max_epochs=5"],
                  tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    resumed = json.loads((run_dir / "metrics.json").read_text())
    assert resumed["hparams"]["seed"] == drawn and resumed["epochs"] == 5
    assert "drew seed" not in out.stdout
    # reglab-eval rebuilds the same splits: its val MSE is the run's val loss.
    ev = tmp_path / "ev"
    out = run_cli([script("reglab-eval"), f"ckpt_path={run_dir / 'model.pt'}", "split=val",
                   f"hydra.run.dir={ev}"], tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    scored = json.loads((ev / "eval_metrics.json").read_text())["metrics"]
    assert abs(scored["mse"] - resumed["val_loss"]) <= 1e-5 * resumed["val_loss"]


def test_the_summary_names_what_the_run_wrote(run_train, capsys):
    m, run_dir = run_train("trainer.max_epochs=2", "logger=csv", "callbacks.plots=null")
    out = capsys.readouterr().out
    table = run_dir / "csv" / "metrics.csv"
    assert table.is_file() and m["logs"] == {"csv": str(table)}
    assert f"metrics: {table}" in out and "tensorboard --logdir" not in out
    m, run_dir = run_train("trainer.max_epochs=2", "logger=none", "callbacks.plots=null")
    out = capsys.readouterr().out
    assert m["logs"] == {} and "review:" not in out and "metrics:" not in out
    m, run_dir = run_train("trainer.max_epochs=2", "callbacks.plots=null")
    assert f"review:  tensorboard --logdir {run_dir}" in capsys.readouterr().out
    assert m["logs"] == {"tensorboard": str(run_dir / "tensorboard")}


def test_train_from_python_without_a_run_dir_gets_a_stamped_one(tmp_path: Path, monkeypatch):
    from reglab.cli.train import train
    from reglab.config.compose import compose

    monkeypatch.chdir(tmp_path)
    metrics = train(compose(["experiment=origin", "trainer.max_epochs=3",
                             "callbacks.plots=null", "logger=none"]))
    assert metrics["status"] == "completed"
    (run_dir,) = (tmp_path / "outputs" / "origin" / "runs").iterdir()
    assert json.loads((run_dir / "metrics.json").read_text())["epochs"] == 3
    assert (run_dir / "model.pt").is_file()


def test_ckpt_path_last_continues_the_run_in_its_dir(run_train, tmp_path: Path):
    import pytest
    from conftest import compose_config

    from reglab.cli.train import train
    from reglab.errors import ConfigError

    first, run_dir = run_train("experiment=noisy_line", "trainer.max_epochs=5",
                               "callbacks.plots=null")
    again = train(compose_config(["experiment=noisy_line", "trainer.max_epochs=8",
                                  "callbacks.plots=null", "ckpt_path=last"], run_dir))
    assert again["epochs"] == 8 and len(again["history"]["train_loss"]) == 8
    assert again["history"]["train_loss"][:5] == first["history"]["train_loss"]
    with pytest.raises(ConfigError, match=r"ckpt_path=last: no checkpoints/last.ckpt in the "
                                          r"run dir .*resume=<run dir>"):
        train(compose_config(["experiment=noisy_line", "ckpt_path=last"], tmp_path / "new"))


@pytest.mark.slow
def test_a_run_without_hydra_files_can_be_evaluated_and_resumed(tmp_path: Path):
    """hydra.output_subdir=null writes no .hydra/; the run's own record in metrics.json
    (config, overrides, launch dir) is enough for reglab-eval and resume=."""
    from conftest import run_cli, script

    run_dir = tmp_path / "run"
    args = ["experiment=d2l", "trainer.max_epochs=4", "callbacks.plots=null",
            "hydra.output_subdir=null"]
    out = run_cli([script("reglab-train"), *args, f"hydra.run.dir={run_dir}"], tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    assert not (run_dir / ".hydra").exists()
    trained = json.loads((run_dir / "metrics.json").read_text())
    assert trained["run"]["overrides"][:2] == ["experiment=d2l", "trainer.max_epochs=4"]
    ev = tmp_path / "ev"
    out = run_cli([script("reglab-eval"), f"ckpt_path={run_dir / 'model.pt'}",
                   f"hydra.run.dir={ev}"], tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    scored = json.loads((ev / "eval_metrics.json").read_text())["metrics"]
    assert abs(scored["mse"] - trained["test"]["mse"]) <= 1e-6 * trained["test"]["mse"]
    out = run_cli([script("reglab-train"), f"resume={run_dir}", "trainer.max_epochs=6",
                   "hydra.output_subdir=null"], tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    resumed = json.loads((run_dir / "metrics.json").read_text())
    assert resumed["epochs"] == 6 and len(resumed["history"]["train_loss"]) == 6


def test_hydras_files_read_back_as_pyyamls_own_parser_reads_them(tmp_path: Path):
    """``run_files.read_yaml`` (libyaml) gives what PyYAML's pure-Python safe loader gives,
    on the files a run and a sweep leave, with values YAML 1.1 reads oddly (``1e-3`` is a
    string there, ``0.5e-2`` a number) and a path with a space in it."""
    import yaml
    from conftest import run_cli, script

    from reglab.run_files import read_yaml

    (tmp_path / "my data.csv").write_text("x,y\n1,3\n2,5\n3,7\n4,9\n5,11\n6,13\n7,15\n8,17\n")
    out = run_cli([script("reglab-train"), "-m", "data=csv", "data.source.path=my data.csv",
                   "data.source.target=y", "optimizer.lr=1e-3,0.5e-2", "trainer.max_epochs=1",
                   "logger=none", "callbacks=none", "+note='on: yes, off: [1, ~]'"], tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    files = sorted(tmp_path.glob("outputs/**/*.yaml"))
    assert len(files) >= 7  # multirun.yaml, and each job's config, hydra and overrides
    for file in files:
        assert read_yaml(file) == yaml.safe_load(file.read_text()), file


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["a: [1,\n\t", "", "just text\n"],
                         ids=["unparsable", "empty", "a-string"])
def test_a_run_whose_hydra_files_are_damaged_is_read_from_its_record(tmp_path: Path,
                                                                      damage: str):
    """A ``.hydra`` file that is empty, does not parse or holds a string: reglab-eval and
    resume= read the run from ``metrics.json``'s record instead, with the numbers of the
    intact run. Only ``hydra.yaml``'s search path is nowhere else: a resume then refuses
    in one line naming the file, the run dir byte for byte as it was. With no record
    either, the refusal says no *readable* config."""
    import hashlib
    import shutil

    from conftest import run_cli, script

    def files(d: Path) -> dict[str, str]:
        return {str(p.relative_to(d)): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in sorted(d.rglob("*")) if p.is_file()}

    intact = tmp_path / "intact"
    out = run_cli([script("reglab-train"), "trainer.max_epochs=3", "callbacks.plots=null",
                   f"hydra.run.dir={intact}"], tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    scored = run_cli([script("reglab-eval"), f"ckpt_path={intact}/model.pt", "split=all",
                      f"hydra.run.dir={tmp_path / 'ev'}"], tmp_path)
    assert scored.returncode == 0, scored.stderr[-2000:]
    expected = json.loads((tmp_path / "ev" / "eval_metrics.json").read_text())["metrics"]
    for name in ("config.yaml", "overrides.yaml", "hydra.yaml"):
        run = tmp_path / name
        shutil.copytree(intact, run)
        (run / ".hydra" / name).write_text(damage)
        ev = tmp_path / f"ev-{name}"
        out = run_cli([script("reglab-eval"), f"ckpt_path={run}/model.pt", "split=all",
                       f"hydra.run.dir={ev}"], tmp_path)
        assert out.returncode == 0, (name, out.stderr[-2000:])
        assert json.loads((ev / "eval_metrics.json").read_text())["metrics"] == expected
        before = files(run)
        out = run_cli([script("reglab-train"), f"resume={run}", "trainer.max_epochs=5",
                       "callbacks.plots=null"], tmp_path)
        if name == "hydra.yaml" and damage != "":  # an empty one holds no search path
            assert out.returncode == 2 and out.stderr.strip().splitlines() == [
                f"reglab-train: error: resume: {run / '.hydra' / name}: cannot be read "
                f"({'ParserError' if damage.startswith('a:') else 'AttributeError'}); put "
                "Hydra's copy back, or give the run's search path yourself "
                "(hydra.searchpath=[] if it had none)"], out.stderr
            assert files(run) == before
        else:
            assert out.returncode == 0, (name, out.stderr[-2000:])
            assert json.loads((run / "metrics.json").read_text())["epochs"] == 5
    # No record to fall back on: one line, and it says what was missing.
    run = tmp_path / "bare"
    shutil.copytree(intact, run)
    (run / ".hydra" / "config.yaml").write_text(damage)
    (run / "metrics.json").unlink()
    before = files(run)
    out = run_cli([script("reglab-eval"), f"ckpt_path={run}/model.pt", "split=all"], tmp_path)
    assert out.returncode == 2 and "(no readable " in out.stderr.strip(), out.stderr
    assert len(out.stderr.strip().splitlines()) == 1 and files(run) == before
