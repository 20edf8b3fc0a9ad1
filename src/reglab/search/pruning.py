"""Pruning from inside a trial's job: report ``val/loss`` after every validation and stop
when the study's pruner says so.

A job learns that it is a trial from Hydra's config: reglab's Optuna sweeper launches it
with the study's storage, the study's name and ``hydra.job.num`` set to the trial number.
Written against ``pytorch_lightning`` (optuna-integration's callback targets the
``lightning`` namespace, whose Trainer is another class).
"""

from __future__ import annotations

import math
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
    """

    def __init__(self, storage: str, study_name: str, number: int, pruner: Any,
                 monitor: str = "val/loss") -> None:
        self.storage, self.study_name, self.number = storage, study_name, number
        self.pruner, self.monitor = pruner, monitor
        self.pruned_at: int | None = None
        self._trial: Any = None

    def _open(self) -> Any:
        if self._trial is None:
            import optuna

            from reglab.search import study as studies

            studies.quiet_optuna()
            storage = studies.open_storage(self.storage)
            study = optuna.load_study(study_name=self.study_name, storage=storage,
                                      pruner=self.pruner)
            study_id = storage.get_study_id_from_name(self.study_name)
            trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, self.number)
            self._trial = optuna.trial.Trial(study, trial_id)
        return self._trial

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or self.pruned_at is not None:
            return
        prune = False
        if trainer.is_global_zero:
            value = trainer.callback_metrics.get(self.monitor)
            if value is not None and math.isfinite(float(value)):
                trial = self._open()
                trial.report(float(value), step=int(trainer.current_epoch))
                prune = bool(trial.should_prune())
        prune = bool(trainer.strategy.broadcast(prune, 0))
        if prune:
            self.pruned_at = int(trainer.current_epoch) + 1
            trainer.should_stop = True


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
