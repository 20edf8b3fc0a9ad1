"""reglab's Optuna sweeper through the real command: a study in SQLite that a killed
sweep continues, pruning from inside the job (basic and joblib launchers), FAIL for a
diverged trial, the search space read as Hydra's sweepers read it, and the dashboard
reading the study back over HTTP."""

from __future__ import annotations

import contextlib
import csv
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from conftest import run_cli, script, start_cli

from reglab.errors import ConfigError
from reglab.search import space as spaces

optuna = pytest.importorskip("optuna")

SMALL = ["experiment=noisy_line", "data.source.num_samples=60", "logger=none",
         "callbacks.plots=null"]
#: Two learning rates, one good and one far too small, and one that diverges; tried in
#: a fixed order by the brute-force sampler. The threshold pruner stops the small one.
THREE_RATES = ["-m", "hydra/sweeper=optuna", *SMALL, "trainer.max_epochs=12",
               "optimizer.lr=choice(0.03,0.00001,1000.0)", "hydra.sweeper.n_trials=3",
               "hydra.sweeper.sampler._target_=optuna.samplers.BruteForceSampler",
               "hydra.sweeper.sampler.seed=0",
               "hydra.sweeper.pruner._target_=optuna.pruners.ThresholdPruner",
               "~hydra.sweeper.pruner.n_startup_trials", "+hydra.sweeper.pruner.upper=20",
               "hydra.sweeper.pruner.n_warmup_steps=2"]


def _study(sweep: Path) -> optuna.Study:
    found = json.loads((sweep / "study.json").read_text())
    from reglab.search import study as studies

    return optuna.load_study(study_name=found["study_name"],
                             storage=studies.open_storage(found["storage"]))


def _wait_for_a_running_trial(root: Path, timeout: float = 240.0, complete: int = 0,
                              proc: Any = None) -> None:
    """Until the study under ``root`` holds a RUNNING trial (its next job has started)
    after ``complete`` complete ones."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for found in root.glob("outputs/*/studies/*/study.db"):
            try:  # read straight from Optuna's tables: a poll must cost next to nothing
                with contextlib.closing(sqlite3.connect(found, timeout=5)) as db:
                    rows = list(db.execute(
                        "SELECT state, EXISTS (SELECT 1 FROM trial_user_attributes a WHERE "
                        "a.trial_id = t.trial_id AND a.key = 'reglab_owner') FROM trials t"))
            except sqlite3.Error:  # the study is still being created
                continue
            states = [state for state, _ in rows]
            # Running, and marked as this sweep's (a trial killed before its owner is
            # recorded waits out a grace period: test_an_ownerless_running_trial_...).
            if ("RUNNING", 1) in rows and states.count("COMPLETE") == complete:
                return
            assert states.count("COMPLETE") <= complete, f"missed it: {states}"
        assert proc is None or proc.poll() is None, proc.output()
        time.sleep(0.05)
    raise AssertionError("no trial started running")


def _rows(sweep: Path) -> list[dict[str, str]]:
    return list(csv.DictReader((sweep / "sweep_summary.csv").read_text().splitlines()))


# -- the search space ------------------------------------------------------------------
def test_the_search_space_reads_hydras_grammar():
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    space = spaces.parse({"optimizer.lr": "tag(log, interval(1e-4, 1.0))",
                          "data.batch_size": "choice(10, 20, 50)",
                          "trainer.max_epochs": "range(5, 20, 5)",
                          "model.hidden": "choice([8],[16,16])",
                          "seed": 3},
                         ["optimizer.weight_decay=int(interval(0, 4))", "data.batch_size=8,16"])
    d = space.distributions
    assert d["optimizer.lr"] == FloatDistribution(1e-4, 1.0, log=True)
    assert d["data.batch_size"] == CategoricalDistribution([8, 16])  # the command line wins
    assert d["trainer.max_epochs"] == IntDistribution(5, 15, step=5)
    assert d["optimizer.weight_decay"] == IntDistribution(0, 4)
    assert d["model.hidden"] == CategoricalDistribution(["[8]", "[16,16]"])
    assert space.fixed == ["seed=3"]
    overrides = space.overrides({"optimizer.lr": 0.1234567890123, "model.hidden": "[16,16]",
                                 "data.batch_size": 8})
    assert overrides == ["seed=3", "optimizer.lr=0.1234567890123", "model.hidden=[16,16]",
                         "data.batch_size=8"]


@pytest.mark.parametrize("value, why", [
    ("interval(1.0, 0.1)", "the first the smaller"),
    ("tag(log, interval(0, 1))", "positive lower end"),
    ("tag(log, choice(1, 2))", "needs interval"),
    ("range(5, 5)", "holds no value"),
])
def test_a_search_space_optuna_cannot_sample_is_refused(value: str, why: str):
    with pytest.raises(ConfigError, match=why):
        spaces.parse({"optimizer.lr": value}, [])


def test_nothing_to_search_is_refused():
    with pytest.raises(ConfigError, match="nothing to search"):
        spaces.parse({"optimizer.lr": 0.1}, [])


# -- studies through the command -------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("launcher", [[], ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"]],
                         ids=["basic", "joblib"])
def test_pruned_failed_and_complete_trials_keep_optunas_states(tmp_path: Path, launcher):
    out = run_cli([script("reglab-train"), *THREE_RATES, *launcher,
                   "hydra.sweeper.direction=maximize" if not launcher else "seed=1"],
                  cwd=tmp_path)
    assert out.returncode == 1, out.stderr[-3000:]  # the diverged trial failed
    sweep = next((tmp_path / "outputs/noisy_line/studies").iterdir())
    study = _study(sweep)
    states = {t.params["optimizer.lr"]: t.state.name for t in study.trials}
    assert states == {0.03: "COMPLETE", 1e-05: "PRUNED", 1000.0: "FAIL"}, states
    pruned = next(t for t in study.trials if t.state.name == "PRUNED")
    assert max(pruned.intermediate_values) == 2  # stopped at the first epoch allowed
    record = json.loads((sweep / str(pruned.number) / "metrics.json").read_text())
    assert record["status"] == "pruned" and record["pruned_at"] == 3 and record["epochs"] == 3
    assert (sweep / str(pruned.number) / "checkpoints" / "last.ckpt").is_file()
    # A diverged trial is FAIL, never a value: maximizing does not make it the best.
    assert study.best_trial.params["optimizer.lr"] == 0.03
    rows = {r["optimizer.lr"]: r["status"] for r in _rows(sweep)}
    assert rows == {"0.03": "completed", "1e-05": "pruned", "1000.0": "diverged"}
    report = (sweep / "sweep_summary.md").read_text()
    assert "3 jobs: 1 completed, 1 pruned, 1 not" in report
    assert "1 complete, 1 fail, 1 pruned" in report


@pytest.mark.slow
def test_a_killed_study_continues_where_it_stopped_and_the_dashboard_reads_it(tmp_path: Path):
    args = [script("reglab-train"), "hparams_search=optuna", *SMALL, "trainer.max_epochs=25",
            "hydra.sweeper.n_trials=3", "hydra.sweeper.pruner=null"]
    first = start_cli(args, tmp_path)
    _wait_for_a_running_trial(tmp_path, complete=1, proc=first)  # its 2nd trial runs
    first.send_signal(signal.SIGKILL)
    first.communicate(timeout=60)
    again = run_cli(args, cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "were left running by a sweep that stopped" in again.stdout + again.stderr
    sweep = next((tmp_path / "outputs/noisy_line/studies").iterdir())
    study = _study(sweep)
    states = [t.state.name for t in study.trials]
    assert states == ["COMPLETE", "FAIL", "COMPLETE"], states  # 3 in all, as asked
    killed = next(t for t in study.trials if t.state.name == "FAIL")
    retry = next(t for t in study.trials if t.user_attrs.get("reglab_retry_of") == killed.number)
    assert retry.params == killed.params and retry.state.name == "COMPLETE"
    rows = _rows(sweep)
    assert sorted(r["status"] for r in rows) == ["completed", "completed", "retried"]
    # A third run of the same command finds the study whole and adds nothing.
    third = run_cli(args, cwd=tmp_path)
    assert third.returncode == 0 and len(_study(sweep).trials) == 3

    pytest.importorskip("optuna_dashboard")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = json.loads((sweep / "study.json").read_text())["storage"]
    dashboard = Path(sys.executable).parent / "optuna-dashboard"
    server = subprocess.Popen([str(dashboard), url, "--host", "127.0.0.1", "--port", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        studies = None
        for _ in range(100):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=2) as r:
                    studies = json.loads(r.read())["study_summaries"]
                break
            except OSError:
                time.sleep(0.2)
        assert studies and studies[0]["study_name"] == study.study_name
        sid = studies[0]["study_id"]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies/{sid}", timeout=5) as r:
            detail = json.loads(r.read())
        assert len(detail["trials"]) == 3
        assert sorted(t["state"] for t in detail["trials"]) == ["Complete"] * 2 + ["Fail"]
    finally:
        server.terminate()
        server.wait(timeout=10)
    # resume=<study dir>, from anywhere, runs the study's own command in its dir again.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    more = run_cli([script("reglab-train"), f"resume={sweep}", "hydra.sweeper.n_trials=4"],
                   cwd=elsewhere)
    assert more.returncode == 0, more.stderr[-2000:]
    assert len(_study(sweep).trials) == 4 and not (elsewhere / "outputs").exists()


def test_an_ownerless_running_trial_is_stale_after_the_grace_period(tmp_path: Path):
    """A sweep killed between asking for a trial and recording whose it is leaves a
    RUNNING trial naming no owner: failed (and queued again) once it is older than a
    live sweep could take to record it, never while it may still be recorded."""
    import datetime as dt

    from optuna.distributions import FloatDistribution
    from optuna.trial import FrozenTrial, TrialState

    from reglab.search import study as studies

    storage = studies.open_storage(f"sqlite:///{tmp_path / 's.db'}")
    study = optuna.create_study(storage=storage, study_name="s")
    now = dt.datetime.now()
    for number, age in enumerate((2, studies.ASK_GRACE_SECONDS + 5)):
        study.add_trial(FrozenTrial(
            number=number, state=TrialState.RUNNING, value=None,
            datetime_start=now - dt.timedelta(seconds=age), datetime_complete=None,
            params={"x": 0.5}, distributions={"x": FloatDistribution(0, 1)}, user_attrs={},
            system_attrs={}, intermediate_values={}, trial_id=number))
    failed, queued = studies.fail_stale(study, storage, retries=1, room=5)
    assert failed == [1] and queued == [1]
    assert [t.state.name for t in study.trials] == ["RUNNING", "FAIL", "WAITING"]


@pytest.mark.slow
@pytest.mark.parametrize("storage, made", [
    ("sqlite:///study.db", "study.db"),  # relative: to the launch dir, as SQLAlchemy reads it
    ("journals/noisy.log", "journals/noisy.log"),  # an Optuna journal file
])
def test_a_storage_the_user_names_holds_the_study(tmp_path: Path, storage: str, made: str):
    args = [script("reglab-train"), "hparams_search=optuna", *SMALL, "trainer.max_epochs=3",
            "hydra.sweeper.n_trials=2", f"hydra.sweeper.storage={storage}"]
    out = run_cli(args, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert (tmp_path / made).is_file()
    sweep = next((tmp_path / "outputs/noisy_line/studies").iterdir())
    assert not (sweep / "study.db").exists()  # the study is where it was told to be
    assert [t.state.name for t in _study(sweep).trials] == ["COMPLETE", "COMPLETE"]
    # Continued from another directory: the same file, one more trial.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    again = run_cli([script("reglab-train"), f"resume={sweep}", "hydra.sweeper.n_trials=3"],
                    cwd=elsewhere)
    assert again.returncode == 0, again.stderr[-3000:]
    assert len(_study(sweep).trials) == 3 and not list(elsewhere.iterdir())


@pytest.mark.slow
def test_a_study_that_fails_too_often_stops_starting_trials(tmp_path: Path):
    out = run_cli([script("reglab-train"), "-m", "hydra/sweeper=optuna", *SMALL,
                   "trainer.max_epochs=3", "optimizer.lr=choice(1000.0,2000.0)",
                   "hydra.sweeper.n_trials=5", "hydra.sweeper.max_failure_rate=0.5"],
                  cwd=tmp_path)
    assert out.returncode == 1
    assert "above hydra.sweeper.max_failure_rate=0.5; no more trials are started" in (
        out.stdout + out.stderr)
    sweep = next((tmp_path / "outputs/noisy_line/studies").iterdir())
    assert [t.state.name for t in _study(sweep).trials] == ["FAIL"]


@pytest.mark.slow
def test_a_study_refuses_a_command_with_other_settings(tmp_path: Path):
    base = [script("reglab-train"), "hparams_search=optuna", *SMALL, "trainer.max_epochs=2",
            "hydra.sweeper.n_trials=1"]
    assert run_cli(base, cwd=tmp_path).returncode == 0
    other = run_cli([*base, "optimizer.momentum=0.5"], cwd=tmp_path)
    assert other.returncode == 2, other.stderr[-2000:]
    line = other.stderr.strip().splitlines()[-1]
    assert line.startswith("reglab-train: error: hydra.sweeper.study_name: study ")
    assert "optimizer.momentum=0.5" in line
    parallel = run_cli([*base, "hydra.sweeper.n_jobs=2"], cwd=tmp_path)
    assert parallel.returncode == 2
    assert "hydra/launcher=joblib" in parallel.stderr.strip().splitlines()[-1]


@pytest.mark.parametrize("name, kwargs", [
    ("MedianPruner", {"n_startup_trials": 2, "n_warmup_steps": 1}),
    ("PercentilePruner", {"percentile": 25.0}),
    ("SuccessiveHalvingPruner", {}),
    ("HyperbandPruner", {"min_resource": 1, "max_resource": 12}),
    ("ThresholdPruner", {"upper": 3.0}),
    ("NopPruner", {})], ids=lambda v: v if isinstance(v, str) else "")
def test_the_jobs_pruning_decisions_are_optunas_own(tmp_path: Path, name: str, kwargs: dict):
    """The callback decides on an in-memory copy of the study; at every step its answer
    is what Optuna's own ``Trial.should_prune`` gives on the stored study."""
    import math

    from optuna.distributions import FloatDistribution

    from reglab.search.pruning import TrialPruning

    def pruner() -> optuna.pruners.BasePruner:
        return getattr(optuna.pruners, name)(**kwargs)

    url = f"sqlite:///{tmp_path / 'study.db'}"
    study = optuna.create_study(storage=url, study_name="s", pruner=pruner())
    space = {"lr": FloatDistribution(1e-3, 1.0, log=True)}
    for n in range(6):  # finished trials with curves of several heights
        trial = study.ask(space)
        for step in range(12):
            trial.report(1.0 + n * 0.5 + 2.0 / (step + 1), step)
        study.tell(trial, 1.0 + n * 0.5)
    mine = study.ask(space)
    storage = optuna.storages.RDBStorage(url)
    trial_id = storage.get_trial_id_from_study_id_trial_number(
        storage.get_study_id_from_name("s"), mine.number)
    reference = optuna.load_study(study_name="s", storage=url, pruner=pruner())
    callback = TrialPruning(url, "s", mine.number, pruner())
    for step in range(12):
        value = 2.2 + 3.0 / (step + 1) + 0.1 * math.sin(step)
        ours = callback._should_prune(value, step)
        callback._flush()
        # A Trial object reads the stored trial when made: one per step sees this value.
        theirs = optuna.trial.Trial(reference, trial_id).should_prune()
        assert ours == theirs, (name, step)
    callback.teardown(None, None, "fit")  # type: ignore[arg-type]
    stored = optuna.load_study(study_name="s", storage=url).trials[-1].intermediate_values
    assert sorted(stored) == list(range(12))  # every value reached the storage


def test_trials_in_flight_follow_the_launchers_workers():
    from reglab.search.sweeper import _slots

    def launcher(name: str, **joblib: object) -> object:
        return type(name, (), {"joblib": joblib})()

    assert _slots({}, launcher("JoblibLauncher", n_jobs=2)) == 2
    assert _slots({}, launcher("JoblibLauncher", n_jobs=1)) == 1  # not every core
    assert _slots({}, launcher("JoblibLauncher", n_jobs=-1)) == (os.cpu_count() or 1)
    assert _slots({"n_jobs": 3}, launcher("JoblibLauncher", n_jobs=2)) == 3
    assert _slots({}, launcher("BasicLauncher")) == 1
    with pytest.raises(ConfigError, match="hydra/launcher=joblib"):
        _slots({"n_jobs": 2}, launcher("BasicLauncher"))
    assert spaces.quoted("/a b/it's") == "'/a b/it\\'s'"


@pytest.mark.parametrize("bad, says", [
    ("hydra.sweeper.sampler._target_=optuna.samplers.Nope", "hydra.sweeper.sampler: cannot build"),
    ("hydra.sweeper.storage=notes.txt", "hydra.sweeper.storage: 'notes.txt' is neither"),
    ("hydra.sweeper.n_trials=0", "hydra.sweeper.n_trials: 0 is not a whole number"),
])
def test_a_bad_study_setting_is_one_line_and_leaves_nothing(tmp_path: Path, bad: str, says: str):
    (tmp_path / "outputs").mkdir()
    (tmp_path / "outputs" / "mine.txt").write_text("keep\n")
    out = run_cli([script("reglab-train"), "hparams_search=optuna", bad], cwd=tmp_path)
    assert out.returncode == 2
    (line,) = out.stderr.strip().splitlines()
    assert line.startswith(f"reglab-train: error: {says}"), line
    assert [p.name for p in (tmp_path / "outputs").iterdir()] == ["mine.txt"]
    assert (tmp_path / "outputs" / "mine.txt").read_text() == "keep\n"


def test_a_study_database_the_disk_refuses_is_one_line_and_leaves_nothing(tmp_path: Path):
    """A file-size limit (as a full disk) stops the database's first write: a fault named
    by its path, exit 1, and the dirs the command made are gone."""
    import resource

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (40 * 1024, 40 * 1024))

    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    env["PYTHONDONTWRITEBYTECODE"] = "1"  # a .pyc cut short by the limit breaks imports
    out = subprocess.run([script("reglab-train"), "hparams_search=optuna",
                          "hydra.sweeper.n_trials=1"], cwd=tmp_path, env=env, text=True,
                         capture_output=True, preexec_fn=limit, timeout=240,
                         stdin=subprocess.DEVNULL)
    assert out.returncode == 1, out.stderr[-2000:]
    (line,) = out.stderr.strip().splitlines()
    assert line.startswith("reglab-train: error: ") and line.endswith("study.db: disk I/O error")
    assert not (tmp_path / "outputs").exists()
