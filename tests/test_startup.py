"""A reglab process imports torch and Lightning with the cyclic garbage collector paused,
then freezes what they created (:func:`reglab.startup.heavy_imports`): every command, and
a sweep's worker processes; the fit runs with the collector on, and ``train()`` called from
the user's Python leaves the user's collector as it was."""

from __future__ import annotations

import gc
import json
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import run_cli, script

from reglab import startup

PROBE = """\
import gc
import json

import pytorch_lightning as pl


class Collector(pl.Callback):
    def __init__(self, path):
        self.path = path
        self.seen = []

    def _look(self, hook):
        self.seen.append([hook, gc.isenabled(), gc.get_freeze_count()])

    def on_train_start(self, trainer, pl_module):
        self._look("on_train_start")

    def on_train_epoch_end(self, trainer, pl_module):
        self._look("on_train_epoch_end")

    def on_train_end(self, trainer, pl_module):
        self._look("on_train_end")
        with open(self.path, "w") as out:
            json.dump(self.seen, out)
"""


@pytest.fixture
def collector_as_it_was() -> Iterator[None]:
    """The collector on or off after a test as before it (what a test froze stays so)."""
    enabled = gc.isenabled()
    yield
    (gc.enable if enabled else gc.disable)()


def test_heavy_imports_pause_the_collector_once_in_a_command(
        collector_as_it_was: None, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(startup, "_due", True)  # as arm() in a fresh command leaves it
    before = gc.get_freeze_count()
    with startup.heavy_imports():
        assert not gc.isenabled()
        import pytorch_lightning  # noqa: F401  (as train() does; loaded already, maybe)

        made = [[i] for i in range(1000)]  # objects the collector tracks
    assert gc.isenabled() and made
    frozen = gc.get_freeze_count()
    assert frozen >= before + 1000  # what existed, the imports' objects among it
    # Lightning is imported: the next job of a sweep arms it again, and nothing changes.
    startup.arm()
    with startup.heavy_imports():
        assert gc.isenabled()
    assert gc.get_freeze_count() <= frozen


def test_a_first_import_of_torch_alone_leaves_lightnings_due(
        collector_as_it_was: None, monkeypatch: pytest.MonkeyPatch):
    """A resume that reads a killed run's checkpoint imports torch before the fit imports
    Lightning: both imports run with the collector paused."""
    monkeypatch.setattr(startup, "_due", True)
    monkeypatch.setattr(startup, "_LAST", "not_imported_yet")  # Lightning, still to come
    with startup.heavy_imports():
        assert not gc.isenabled()
    with startup.heavy_imports():
        assert not gc.isenabled()
    monkeypatch.setattr(startup, "_LAST", "json")  # now it is
    with startup.heavy_imports():
        assert not gc.isenabled()
    with startup.heavy_imports():
        assert gc.isenabled()


@pytest.mark.parametrize("enabled", [True, False])
def test_outside_a_command_the_users_collector_is_left_alone(
        collector_as_it_was: None, monkeypatch: pytest.MonkeyPatch, enabled: bool):
    (gc.enable if enabled else gc.disable)()
    monkeypatch.setattr(startup, "_due", False)  # train() from Python
    before = gc.get_freeze_count()
    with startup.heavy_imports():
        assert gc.isenabled() is enabled
    # Frozen objects can be freed, never added (as a freeze of all there is would).
    assert gc.isenabled() is enabled and gc.get_freeze_count() <= before
    if not enabled:  # a command whose user turned the collector off keeps it off
        monkeypatch.setattr(startup, "_due", True)
        with startup.heavy_imports():
            pass
        assert not gc.isenabled() and gc.get_freeze_count() <= before


def test_train_from_python_leaves_the_collector_alone(run_train, collector_as_it_was: None):
    before = gc.get_freeze_count()
    run_train("trainer.max_epochs=2", "logger=none", "callbacks.plots=null")
    assert gc.isenabled() and gc.get_freeze_count() <= before


def test_a_command_fits_with_the_collector_on(tmp_path: Path):
    (tmp_path / "gcprobe.py").write_text(PROBE)
    seen = tmp_path / "seen.json"
    out = run_cli([script("reglab-train"), "trainer.max_epochs=3", "callbacks.plots=null",
                   "+callbacks.gc._target_=gcprobe.Collector", f"+callbacks.gc.path={seen}"],
                  cwd=tmp_path, env={"PYTHONPATH": str(tmp_path)})
    assert out.returncode == 0, out.stderr[-2000:]
    looks = json.loads(seen.read_text())
    assert [hook for hook, _, _ in looks] == ["on_train_start", *["on_train_epoch_end"] * 3,
                                              "on_train_end"]
    # On through the whole fit, with torch's and Lightning's objects out of its walks.
    assert all(enabled for _, enabled, _ in looks)
    assert all(frozen > 100_000 for _, _, frozen in looks)


@pytest.mark.slow
def test_a_sweeps_worker_processes_fit_with_their_imports_frozen(tmp_path: Path):
    """joblib's workers are fresh interpreters that import torch and Lightning for their
    first job: with the collector paused and frozen after, as the command itself does."""
    (tmp_path / "gcprobe.py").write_text(PROBE)
    out = run_cli([script("reglab-train"), "-m", "trainer.max_epochs=2", "logger=none",
                   "callbacks.plots=null", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
                   "optimizer.lr=0.1,0.2", "+callbacks.gc._target_=gcprobe.Collector",
                   "+callbacks.gc.path=${hydra:runtime.output_dir}/seen.json"],
                  cwd=tmp_path, env={"PYTHONPATH": str(tmp_path)})
    assert out.returncode == 0, out.stderr[-2000:]
    seen = sorted(tmp_path.glob("outputs/*/multiruns/*/*/seen.json"))
    assert len(seen) == 2
    for path in seen:
        looks = json.loads(path.read_text())
        assert [hook for hook, _, _ in looks] == ["on_train_start", *["on_train_epoch_end"] * 2,
                                                  "on_train_end"]
        assert all(enabled and frozen > 100_000 for _, enabled, frozen in looks), looks


PASSES = """\
import atexit, gc, importlib, json, sys
seen = []
gc.callbacks.append(lambda phase, info: phase == "start" and seen.append(
    ["torch" in sys.modules, gc.get_freeze_count()]))
atexit.register(lambda: print("PASSES", json.dumps(seen), file=sys.stderr))
sys.argv = sys.argv[1:]
importlib.import_module("reglab.cli." + sys.argv[0].removeprefix("reglab-")).console()
"""


@pytest.mark.slow
@pytest.mark.parametrize("command", [["reglab-predict", "x=[[4.0]]"],
                                     ["reglab-eval", "split=all"]], ids=lambda c: c[0])
def test_eval_and_predict_import_torch_with_the_collector_paused(
        tmp_path: Path, command: list[str]):
    """No pass of the collector in a fresh ``reglab-eval`` or ``reglab-predict`` walks
    torch's objects: none runs while they are imported, and every one after skips them
    (frozen). Before, a predict made ~400 passes and an eval ~960, 3 and 6 of them full."""
    run = tmp_path / "run"
    done = run_cli([script("reglab-train"), "trainer.max_epochs=2", "logger=none",
                    "callbacks.plots=null", f"hydra.run.dir={run}"], cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    out = run_cli([sys.executable, "-c", PASSES, command[0], f"ckpt_path={run}/model.pt",
                   *command[1:]], cwd=tmp_path, fork=False)
    assert out.returncode == 0, out.stderr[-2000:]
    seen = json.loads(out.stderr.rsplit("PASSES ", 1)[1])
    assert seen  # the collector did run, before torch
    assert not [frozen for loaded, frozen in seen if loaded and frozen < 100_000], seen
