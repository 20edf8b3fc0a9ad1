"""The command line as a user meets it: subprocesses in a fresh working directory."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
from conftest import run_cli, script

STAMP = re.compile(r"^\d{4}-\d{2}-\d{2}_\d{2}-\d{2}-\d{2}")


def test_help_lists_groups_without_importing_torch(tmp_path: Path):
    code = ("import sys; sys.argv = ['reglab-train', '--help']\n"
            "from reglab.cli.train import main\n"
            "try:\n    main()\nexcept SystemExit:\n    pass\n"
            "print('HEAVY', sorted(m for m in ('torch', 'pytorch_lightning', 'matplotlib')"
            " if m in sys.modules))")
    out = run_cli([sys.executable, "-c", code], cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "HEAVY []" in out.stdout
    for line in ("experiment: d2l, d2l_lbfgs, diabetes, line, noisy_line, origin, poly_ill, "
                 "poly_select, quadratic_mlp", "optimizer: adam, adamw, exact, lbfgs, sgd",
                 "model: linear, mlp, polynomial",
                 "logger: csv, none, tensorboard", "trainer: cpu, ddp, ddp_cpu, default, gpu"):
        assert line in out.stdout
    assert not (tmp_path / "outputs").exists()


@pytest.mark.slow
def test_help_page_is_hydras_own(tmp_path: Path):
    """--help is Hydra's own page (its path costs well under a second): the app's config
    groups and the composed config, for train, eval and predict; a group option that does
    not exist is one line and exit 2."""
    pages = {}
    for args in (["--help"], ["experiment=d2l", "--help", "--resolve"],
                 ["-m", "hparams_search=lr_batch", "--help"]):
        ours = pages[" ".join(args)] = run_cli([script("reglab-train"), *args], cwd=tmp_path)
        assert ours.returncode == 0, ours.stderr
        assert "== Config groups" in ours.stdout and "== Config (" in ours.stdout, args
        assert "hydra/launcher" not in ours.stdout  # the app's groups, not Hydra's own
    assert "lr: 0.03" in pages["experiment=d2l --help --resolve"].stdout
    for command in ("eval", "predict"):
        ours = run_cli([script(f"reglab-{command}"), "--help"], cwd=tmp_path)
        assert ours.returncode == 0 and f"reglab-{command}:" in ours.stdout, command
    bad = run_cli([script("reglab-train"), "experiment=nope", "--help"], cwd=tmp_path)
    assert bad.returncode == 2 and "experiment=nope: no such option" in bad.stderr
    assert "Traceback" not in bad.stderr
    assert not (tmp_path / "outputs").exists()


@pytest.mark.slow
def test_default_run_from_any_directory(tmp_path: Path):
    out = run_cli([script("reglab-train"), "trainer.max_epochs=300"], cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    runs = list((tmp_path / "outputs" / "line" / "runs").iterdir())
    assert len(runs) == 1 and STAMP.match(runs[0].name)
    run_dir = runs[0]
    for name in (".hydra/config.yaml", "checkpoints/last.ckpt", "model.pt", "metrics.json"):
        assert (run_dir / name).is_file(), name
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["epochs"] == 300
    # train.log holds what the console showed, the summary included.
    summary = out.stdout[out.stdout.index("reglab: line completed"):]
    assert (run_dir / "train.log").read_text().endswith(summary)
    # The command ends its process without Python's teardown: everything is on disk.
    from tensorboard.backend.event_processing.event_multiplexer import EventMultiplexer

    events = EventMultiplexer(size_guidance={"images": 0})  # 0: keep every image
    events.AddRunsFromDirectory(str(run_dir / "tensorboard"))
    events.Reload()
    acc = events.GetAccumulator(".")
    assert [e.step for e in acc.Scalars("val/loss")] == [199]  # every 200 epochs (line)
    assert acc.Scalars("train/loss_epoch")[-1].step == 299  # as Lightning writes it
    assert "_hparams_/session_end_info" in acc.PluginTagToContent("hparams")
    assert len(acc.Images("plots/fit")) == 10
    # The closing summary names the run dir and how to review it.
    assert "learned weight" in out.stdout
    assert f"tensorboard --logdir {run_dir}" in out.stdout
    assert "Warning" not in out.stderr and "transfer_batch_to_device" not in out.stderr


@pytest.mark.slow
def test_module_entry_point_multirun(tmp_path: Path):
    out = run_cli([sys.executable, "-m", "reglab.cli.train", "-m", "experiment=origin",
                   "optimizer.lr=0.01,0.02", "trainer.max_epochs=20", "logger=none"],
                  cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    sweeps = list((tmp_path / "outputs" / "origin" / "multiruns").iterdir())
    assert len(sweeps) == 1 and STAMP.match(sweeps[0].name)
    lrs = sorted(json.loads((sweeps[0] / str(i) / "metrics.json").read_text())["hparams"]["lr"]
                 for i in (0, 1))
    assert lrs == [0.01, 0.02]


def test_unknown_experiment_is_a_short_error(tmp_path: Path):
    out = run_cli([script("reglab-train"), "experiment=nope"], cwd=tmp_path)
    assert out.returncode != 0
    assert out.stderr.startswith("reglab-train: error: experiment=nope: no such option in "
                                 "experiment/; the options are ")
    assert "noisy_line" in out.stderr and len(out.stderr.strip().splitlines()) == 1
    assert "Traceback" not in out.stderr
    assert not (tmp_path / "outputs").exists()


def test_unknown_group_option_is_a_short_error(tmp_path: Path):
    out = run_cli([script("reglab-train"), "optimizer=rmsprop"], cwd=tmp_path)
    assert out.returncode != 0
    assert "optimizer=rmsprop: no such option in optimizer/" in out.stderr
    assert "Traceback" not in out.stderr


def test_eval_and_predict_help_and_errors_stay_light(tmp_path: Path):
    missing = f"ckpt_path={tmp_path / 'missing.pt'}"
    for command, module, extra in (("reglab-eval", "eval", []),
                                   ("reglab-predict", "predict", ["x=[1]"])):
        for args in (["--help"], [missing, *extra]):
            code = (f"import sys; sys.argv = ['{command}', *{args!r}]\n"
                    f"from reglab.cli.{module} import main\n"
                    "try:\n    main()\nexcept SystemExit as e:\n    print('EXIT', e.code)\n"
                    "print('HEAVY', sorted(m for m in ('torch', 'pytorch_lightning',"
                    " 'matplotlib') if m in sys.modules))")
            out = run_cli([sys.executable, "-c", code], cwd=tmp_path)
            assert "HEAVY []" in out.stdout, (command, args, out.stdout, out.stderr)
            if args == ["--help"]:
                assert f"{command}:" in out.stdout
            else:
                assert "EXIT 2" in out.stdout and "no such file" in out.stderr


def test_no_progress_bar_where_there_is_no_terminal(tmp_path: Path):
    """Captured output (a pipe, a log file, CI) gets the summary, not redrawn bars."""
    args = [script("reglab-train"), "experiment=noisy_line", "trainer.max_epochs=40",
            "logger=none", "callbacks.plots=null", "callbacks.progress_bar.refresh_seconds=0.01"]
    out = run_cli(args, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "step/s" not in out.stderr + out.stdout
    forced = run_cli([*args, "callbacks.progress_bar.only_on_terminal=false", "overwrite=true",
                      "hydra.run.dir=forced"], cwd=tmp_path)
    assert "step/s" in forced.stderr, forced.stderr[-2000:]
