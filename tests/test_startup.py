"""A console command imports torch and Lightning with the cyclic garbage collector paused,
then freezes what they created (:func:`reglab.cli.common.heavy_imports`): the fit runs
with the collector on, and ``train()`` called from the user's Python leaves the user's
collector as it was."""

from __future__ import annotations

import gc
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import run_cli, script

from reglab.cli import common

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
    monkeypatch.setattr(common, "_heavy_imports_done", False)
    monkeypatch.setattr(common, "_heavy_imports_due", False)
    common.arm_heavy_imports()  # as common.run and a sweep's job do
    before = gc.get_freeze_count()
    with common.heavy_imports():
        assert not gc.isenabled()
        made = [[i] for i in range(1000)]  # objects the collector tracks
    assert gc.isenabled() and made
    frozen = gc.get_freeze_count()
    assert frozen >= before + 1000  # what existed, the imports' objects among it
    # Once per process: the next job of a sweep arms it again, and nothing changes.
    common.arm_heavy_imports()
    with common.heavy_imports():
        assert gc.isenabled()
    assert gc.get_freeze_count() <= frozen


@pytest.mark.parametrize("enabled", [True, False])
def test_outside_a_command_the_users_collector_is_left_alone(
        collector_as_it_was: None, monkeypatch: pytest.MonkeyPatch, enabled: bool):
    (gc.enable if enabled else gc.disable)()
    monkeypatch.setattr(common, "_heavy_imports_done", False)
    monkeypatch.setattr(common, "_heavy_imports_due", False)  # train() from Python
    before = gc.get_freeze_count()
    with common.heavy_imports():
        assert gc.isenabled() is enabled
    # Frozen objects can be freed, never added (as a freeze of all there is would).
    assert gc.isenabled() is enabled and gc.get_freeze_count() <= before
    if not enabled:  # a command whose user turned the collector off keeps it off
        monkeypatch.setattr(common, "_heavy_imports_due", True)
        with common.heavy_imports():
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
