"""Pruning from inside a trial's job: report ``val/loss`` after every validation and stop
when the study's pruner says so.

A job learns that it is a trial from Hydra's config: reglab's Optuna sweeper launches it
with the study's storage, the study's name and ``hydra.job.num`` set to the trial number.
Written against ``pytorch_lightning`` (optuna-integration's callback targets the
``lightning`` namespace, whose Trainer is another class).
"""

from __future__ import annotations

import math
import queue
import threading
import time
from typing import Any

import pytorch_lightning as pl

#: The Hydra sweeper whose jobs are trials (the shell around :mod:`reglab.search.sweeper`).
SWEEPER = "hydra_plugins.reglab_optuna_sweeper.optuna_sweeper.OptunaSweeper"


class TrialPruning(pl.Callback):
    """Reports the monitored metric to the trial at each validation (step = epoch) and
    stops the fit, as an early stop does, when the pruner prunes the trial.

    ``pruned_at`` is the number of epochs it had trained when pruned (None while it runs
    on); the run's record says ``"status": "pruned"``. Only rank 0 talks to the storage;
    the decision is broadcast so every data-parallel rank stops at the same step.

    A database round trip per epoch (Optuna's ``trial.report`` and ``should_prune``,
    ~10 ms on SQLite) would cost more than a small model's epoch. So the pruner decides
    on an in-memory copy of the study (every trial, numbered as in storage), taken when
    the fit starts and again every ``refresh_seconds``, with this trial's values added as
    they come; the values reach the storage from a writer thread, in bursts a few seconds
    apart and all of them before the fit ends, for the dashboard and the other trials'
    pruners.
    """

    def __init__(self, storage: str, study_name: str, number: int, pruner: Any,
                 monitor: str = "val/loss", refresh_seconds: float = 10.0,
                 write_seconds: float = 2.0) -> None:
        self.storage, self.study_name, self.number = storage, study_name, number
        self.pruner, self.monitor = pruner, monitor
        self.refresh_seconds = float(refresh_seconds)
        self.write_seconds = float(write_seconds)
        self.pruned_at: int | None = None
        self._db: Any = None  # the study's storage, and this trial's id there
        self._live: Any = None  # the sweep's own study, when it runs in this process
        self._trial_id = -1
        self._copy: Any = None  # the in-memory study and storage, this trial's id there
        self._memory: Any = None
        self._copy_id = -1
        self._copied_at = -math.inf
        self._writes: queue.Queue[tuple[int, float] | None] = queue.Queue()
        self._flushing = threading.Event()  # set: write what is queued now
        self._writer: threading.Thread | None = None
        self._failed: BaseException | None = None

    # -- the storage -----------------------------------------------------------------
    def _open(self) -> None:
        from reglab.search import study as studies

        studies.quiet_optuna()
        shared = studies.live_study(self.storage, self.study_name)
        if shared is not None:  # the basic launcher: the sweep's open study, its cache warm
            self._db, self._live = shared
        else:
            self._db = studies.open_storage(self.storage, checked=True)
        study_id = self._db.get_study_id_from_name(self.study_name)
        self._trial_id = self._db.get_trial_id_from_study_id_trial_number(study_id, self.number)
        self._writer = threading.Thread(target=self._write, name="reglab-trial-values",
                                        daemon=True)
        self._writer.start()

    def _write(self) -> None:
        """Values reach the storage in bursts every ``write_seconds``: each write holds
        the GIL for a few milliseconds, and one burst costs the training thread fewer
        hand-overs than a write per epoch would."""
        done = False
        while not done:
            item = self._writes.get()
            batch = [item]
            if item is not None and not self._flushing.is_set():
                self._flushing.wait(self.write_seconds)
            while not self._writes.empty():
                batch.append(self._writes.get_nowait())
            for item in batch:
                try:
                    if item is None:
                        done = True
                    elif self._failed is None:
                        self._db.set_trial_intermediate_value(self._trial_id, *item)
                except Exception as exc:  # said once the fit ends; the fit goes on
                    self._failed = exc
                finally:
                    self._writes.task_done()

    def _flush(self) -> None:
        if self._writer is not None:
            self._flushing.set()
            self._writes.join()
            self._flushing.clear()


    def _snapshot(self) -> None:
        """The in-memory copy the pruner decides on: the study's trials as stored now
        (this trial's values flushed first), numbered as in storage."""
        import optuna

        self._flush()
        real = self._live or optuna.load_study(study_name=self.study_name, storage=self._db)
        memory = optuna.storages.InMemoryStorage()
        copy = optuna.create_study(storage=memory, study_name=self.study_name,
                                   directions=real.directions, pruner=self.pruner)
        copy.add_trials(real.get_trials(deepcopy=False))
        self._copy, self._memory = copy, memory
        self._copy_id = memory.get_trial_id_from_study_id_trial_number(
            memory.get_study_id_from_name(self.study_name), self.number)
        self._copied_at = time.monotonic()

    def _should_prune(self, value: float, step: int) -> bool:
        if self._db is None:
            self._open()
        self._writes.put((step, value))
        if time.monotonic() - self._copied_at > self.refresh_seconds:
            self._snapshot()
        self._memory.set_trial_intermediate_value(self._copy_id, step, value)
        return bool(self.pruner.prune(self._copy, self._memory.get_trial(self._copy_id)))

    # -- Lightning -------------------------------------------------------------------
    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or self.pruned_at is not None:
            return
        prune = False
        if trainer.is_global_zero:
            value = trainer.callback_metrics.get(self.monitor)
            if value is not None and math.isfinite(float(value)):
                prune = self._should_prune(float(value), int(trainer.current_epoch))
        prune = bool(trainer.strategy.broadcast(prune, 0))
        if prune:
            self.pruned_at = int(trainer.current_epoch) + 1
            trainer.should_stop = True

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Every reported value in storage before the job returns to the sweeper."""
        if self._writer is not None:
            self._flushing.set()
            self._writes.put(None)
            self._writer.join()
            self._writer = None
        if self._failed is not None:
            import logging

            logging.getLogger("reglab").warning(
                "trial %d: its val/loss values did not all reach the study: %s: %s",
                self.number, type(self._failed).__name__, self._failed)


def from_hydra() -> TrialPruning | None:
    """The pruning callback when this job is a trial of a study with a pruner."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from hydra.utils import instantiate

    if not HydraConfig.initialized():
        return None
    hc = HydraConfig.get()
    sweeper = hc.sweeper
    if hc.mode != RunMode.MULTIRUN or str(sweeper.get("_target_")) != SWEEPER:
        return None
    if sweeper.get("pruner") is None or sweeper.get("storage") is None:
        return None
    return TrialPruning(str(sweeper.storage), str(sweeper.study_name), int(hc.job.num),
                        instantiate(sweeper.pruner), str(sweeper.get("monitor") or "val/loss"))


def pruned_at(trainer: Any) -> int | None:
    """The epochs a fit had trained when it was pruned, or None."""
    for callback in getattr(trainer, "callbacks", []):
        if isinstance(callback, TrialPruning) and callback.pruned_at is not None:
            return callback.pruned_at
    return None
