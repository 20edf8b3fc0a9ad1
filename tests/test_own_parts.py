"""Bring your own parts: the docs' worked example, run the way a user runs it.

The package, the conf files, the commands and the Python snippet are all read from
docs/own-parts.md, so the example there is the one tested here: a
model, a data module, a loss, an optimizer, a callback and a logger that are not reglab's
train, checkpoint, resume, evaluate and predict through reglab's own commands.
"""

from __future__ import annotations

import csv
import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from subprocess import CompletedProcess

import pytest
from conftest import REPO, compose_config, run_cli, script
from omegaconf import OmegaConf


def _section() -> str:
    return (REPO / "docs" / "own-parts.md").read_text()


def _blocks(lang: str) -> list[str]:
    return [body for kind, body in re.findall(r"```(\w+)\n(.*?)```", _section(), re.S)
            if kind == lang]


def _files() -> dict[str, str]:
    """The page's files: fenced blocks whose first line is ``# <path>``."""
    out = {}
    for lang in ("python", "yaml"):
        for body in _blocks(lang):
            first = body.splitlines()[0]
            if re.fullmatch(r"# [\w/]+\.(py|yaml)", first):
                out[first[2:]] = body
    return out


def _commands(block: str, project: Path) -> tuple[dict[str, str], list[list[str]]]:
    """A bash block of the page as (exported environment, commands), ``$PWD`` = ``project``:
    the docs' own reader (:func:`docs_blocks.commands`), every step a reglab command."""
    from docs_blocks import commands

    env, steps = commands(block.replace("$PWD", str(project)))
    assert all(step.argv for step in steps), block
    return env, [step.argv for step in steps]


def _run(words: list[str], project: Path, env: dict[str, str]) -> CompletedProcess[str]:
    assert words[0].startswith("reglab-"), words
    return run_cli([script(words[0]), *words[1:]], cwd=project, env=env)


def _only(folder: Path) -> Path:
    (found,) = list(folder.iterdir())
    return found


def _metrics(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("own_parts")
    files = _files()
    assert set(files) == {"mymodels/__init__.py", "mymodels/data.py", "conf/model/cubic.yaml",
                          "conf/data/cubic.yaml"}
    for name, body in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(body)
    return root


@pytest.fixture
def importable(project: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """``mymodels`` importable in this process too, and forgotten afterwards."""
    monkeypatch.syspath_prepend(str(project))
    yield
    for name in [m for m in sys.modules if m.split(".")[0] == "mymodels"]:
        del sys.modules[name]


@pytest.mark.slow
def test_yaml_files_train_resume_evaluate_predict(project: Path, importable: None):
    import torch

    import reglab
    from reglab.errors import ReglabError

    env, commands = _commands(_blocks("bash")[0], project)
    assert env == {"PYTHONPATH": str(project)}
    assert [c[0] for c in commands] == ["reglab-train", "reglab-train", "reglab-eval",
                                        "reglab-predict"]
    fit, resume, evaluate, predict = commands

    # The user's model and data module, picked as options from the user's conf dir.
    out = _run(fit, project, env)
    assert out.returncode == 0, out.stderr[-3000:]
    run_dir = _only(project / "outputs" / "cubic" / "runs")
    m = _metrics(run_dir)
    assert m["status"] == "completed" and m["epochs"] == 20 and m["steps"] == 40
    assert (m["hparams"]["data"], m["hparams"]["model"]) == ("cubic", "cubic")
    # Read from the module's own records: trainer.test() clears Lightning's metrics.
    assert m["train_loss"] == m["history"]["train_loss"][-1][1]
    assert m["val_loss"] == m["history"]["val_loss"][-1][1]
    assert len(m["history"]["val_loss"]) == 20  # validated every epoch, not every 200
    assert m["history"]["train_loss"][-1][1] < m["history"]["train_loss"][0][1]
    assert m["test"]["mse"] > 0 and m["closed_form"] is None
    payload = torch.load(run_dir / "model.pt", weights_only=True)
    assert payload["model"] == {"class": "mymodels.Cubic",
                                "kwargs": {"width": 16, "in_features": 1}}
    assert list((run_dir / "checkpoints").glob("best-epoch*.ckpt"))
    last = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["reglab"]["model_class"] == "mymodels.Cubic"

    # resume=<run dir>: the same dir, continued from epoch 20 rather than restarted.
    resume = [w.replace("<stamp>", run_dir.name) for w in resume]
    out = _run(resume, project, env)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "Warning" not in out.stdout + out.stderr, out.stderr[-3000:]  # nothing to act on
    assert _only(project / "outputs" / "cubic" / "runs") == run_dir
    m = _metrics(run_dir)
    assert m["status"] == "completed" and m["epochs"] == 30 and m["steps"] == 60
    assert [e for e, _ in m["history"]["train_loss"]] == list(range(30))  # the whole run

    # reglab-eval reads the user's test_dataloader and scores the model on it.
    evaluate = [w.replace("<stamp>", run_dir.name) for w in evaluate]
    out = _run(evaluate, project, env)
    assert out.returncode == 0, out.stderr[-3000:]
    evaluated = json.loads((_only(project / "outputs" / "eval" / "runs")
                            / "eval_metrics.json").read_text())
    assert evaluated["rows"] == 16 and evaluated["split"] == "test"
    assert evaluated["metrics"]["mse"] == pytest.approx(m["test"]["mse"], rel=1e-5)

    # reglab-predict imports mymodels only when allowed to.
    predict = [w.replace("<stamp>", run_dir.name) for w in predict]
    assert "allow_modules=[mymodels]" in predict
    out = _run(predict, project, env)
    assert out.returncode == 0, out.stderr[-3000:]
    header, *rows = out.stdout.strip().splitlines()
    assert header == "x0,y_predicted" and len(rows) == 2
    printed = [float(r.split(",")[1]) for r in rows]
    refused = _run([w for w in predict if not w.startswith("allow_modules=")], project, env)
    assert refused.returncode == 2 and refused.stdout == ""
    (line,) = refused.stderr.strip().splitlines()
    assert line.startswith("reglab-predict: error: ") and "mymodels.Cubic" in line
    assert "allow_modules=[mymodels]" in line

    # In-process: refused without importing the module, the same predictions with it.
    model_pt = run_dir / "model.pt"
    with pytest.raises(ReglabError, match=r"allow_modules=\['mymodels'\]"):
        reglab.load_model(model_pt)
    assert "mymodels" not in sys.modules
    model = reglab.load_model(model_pt, allow_modules=["mymodels"])
    assert type(model).__module__ == "mymodels"
    with torch.no_grad():
        ours = model(torch.tensor([[0.5], [1.0]])).flatten().tolist()
    assert ours == pytest.approx(printed, rel=1e-6)


def test_command_line_targets_callbacks_and_loggers(project: Path, importable: None,
                                                    tmp_path: Path):
    import torch

    import reglab
    from reglab import errors
    from reglab.config import checks

    _, (command,) = _commands(_blocks("bash")[1], project)
    assert {"loss._target_=torch.nn.SmoothL1Loss", "optimizer._target_=torch.optim.RMSprop",
            "+model.hidden=2", "+data._target_=mymodels.data.CubicData"} <= set(command)
    # The hidden=2 the user's Cubic takes is a value reglab's MLP refuses.
    mlp = compose_config(["model=mlp", "model.hidden=2"], tmp_path).model
    with pytest.raises(errors.ConfigError, match=r"model\.hidden: expected a list"):
        checks.check(OmegaConf.create({"model": OmegaConf.to_container(mlp)}))

    out = _run(command, project, {"PYTHONPATH": str(project)})
    assert out.returncode == 0, out.stderr[-3000:]
    run_dir = _only(project / "outputs" / "CubicData" / "runs")  # named by its data class
    m = _metrics(run_dir)
    assert m["status"] == "completed" and m["epochs"] == 20 and m["steps"] == 80
    hp = m["hparams"]
    assert (hp["data"], hp["model"], hp["loss"], hp["optimizer"], hp["batch_size"]) == (
        "CubicData", "Cubic", "SmoothL1Loss", "RMSprop", 8)

    payload = torch.load(run_dir / "model.pt", weights_only=True)
    assert payload["model"] == {"class": "mymodels.Cubic",
                                "kwargs": {"hidden": 2, "in_features": 1}}
    model = reglab.load_model(run_dir / "model.pt", allow_modules=["mymodels"])
    assert sum(isinstance(layer, torch.nn.Linear) for layer in model.modules()) == 3

    # RMSprop did the steps (SGD keeps no square_avg) ...
    last = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    (state,) = last["optimizer_states"]
    assert all("square_avg" in s for s in state["state"].values())
    # ... and SmoothL1Loss is the loss: the final val loss is it, not the MSE.
    from mymodels.data import CubicData

    data = CubicData(batch_size=8)
    data.setup("validate")
    x, y = data.val_set.tensors
    with torch.no_grad():
        pred = model(x)
    assert m["val_loss"] == pytest.approx(float(torch.nn.SmoothL1Loss()(pred, y)), rel=1e-5)
    assert m["val_loss"] != pytest.approx(float(torch.nn.MSELoss()(pred, y)), rel=0.05)

    # The stock ModelCheckpoint added as +callbacks.snapshots: every 5th epoch kept.
    epochs = sorted(int(re.match(r"epoch=(\d+)-", p.name)[1])
                    for p in (run_dir / "snapshots").glob("*.ckpt"))
    assert epochs == [4, 9, 14, 19]
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()  # reglab's own still run
    # The stock CSVLogger added as +logger.csv, beside the TensorBoard logger.
    with (run_dir / "lightning_logs" / "version_0" / "metrics.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    val = [float(r["val/loss"]) for r in rows if r.get("val/loss")]
    assert len(val) == 20 and val[-1] == pytest.approx(m["val_loss"], rel=1e-6)
    assert any(r.get("train/loss_epoch") for r in rows)
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))


def test_python_api(project: Path, importable: None, monkeypatch: pytest.MonkeyPatch):
    import torch

    (code,) = [b for b in _blocks("python") if not b.startswith("# ")]
    monkeypatch.chdir(project)
    namespace: dict = {}
    exec(compile(code, "docs/own-parts.md", "exec"), namespace)

    metrics, run_dir = namespace["metrics"], project / "outputs" / "api" / "cubic"
    # The user's model on reglab's data: its losses are recomputed on whole splits.
    assert metrics["status"] == "completed" and metrics["epochs"] == 20
    assert (metrics["hparams"]["data"], metrics["hparams"]["model"]) == ("quadratic", "cubic")
    assert metrics["train_loss"] is not None and metrics["closed_form"] is None
    assert _metrics(run_dir)["train_loss"] == metrics["train_loss"]
    assert (run_dir / "fit.png").is_file()
    payload = torch.load(run_dir / "model.pt", weights_only=True)
    assert payload["model"] == {"class": "mymodels.Cubic",
                                "kwargs": {"width": 8, "in_features": 1}}
    assert tuple(namespace["model"](torch.tensor([[0.5]])).shape) == (1, 1)


def test_in_features_only_when_the_constructor_takes_it(importable: None):
    import torch

    from reglab.config import parts

    node = OmegaConf.create({"_target_": "mymodels.Cubic", "_partial_": True, "width": 4})
    model, spec = parts.build_model(node, 3)
    assert spec == {"class": "mymodels.Cubic", "kwargs": {"width": 4, "in_features": 3}}
    assert model.net[0].in_features == 3
    # torch.nn.LazyLinear takes no in_features: it is built without one.
    node = OmegaConf.create({"_target_": "torch.nn.LazyLinear", "_partial_": True,
                             "out_features": 1})
    model, spec = parts.build_model(node, 3)
    assert isinstance(model, torch.nn.LazyLinear)
    assert spec == {"class": "torch.nn.modules.linear.LazyLinear",
                    "kwargs": {"out_features": 1}}


@pytest.mark.parametrize("group, body", [
    ("experiment", "trainer:\n  max_epochs: 3\n"),
    ("debug", "trainer:\n  fast_dev_run: true\n"),
])
def test_a_global_file_without_its_package_header_is_refused(tmp_path: Path, group: str,
                                                             body: str):
    """Forgetting ``# @package _global_`` must not train the defaults silently."""
    conf = tmp_path / "conf" / group
    conf.mkdir(parents=True)
    (conf / "mine.yaml").write_text(body)
    out = run_cli([script("reglab-train"), f"{group}=mine",
                   f"hydra.searchpath=[file://{tmp_path / 'conf'}]", "hydra.run.dir=run"],
                  tmp_path)
    assert out.returncode == 2, out.stderr
    assert out.stderr.strip() == (
        f"reglab-train: error: {group}=mine: {conf / 'mine.yaml'} does not begin with the "
        f"line '# @package _global_', so its keys landed under {group}. ({group}.trainer) "
        "and would be ignored; add that line at the top of the file")
    assert not (tmp_path / "run").exists()
