"""The study loop behind ``hydra/sweeper=optuna``: ask a trial, launch its job, tell the
study what the job's record says, until the study holds ``n_trials`` trials.

With a launcher that runs jobs in other processes (joblib, submitit), ``n_jobs`` trials
are in flight at once, a new one asked for as each ends: one thread per slot, each
launching one job at a time through the configured launcher. A job's outcome is read
from its ``metrics.json``: completed → its val loss, pruned → PRUNED, anything else
(diverged, failed, a process that died) → FAIL, so no made-up value reaches the sampler.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reglab import run_files
from reglab.errors import ConfigError
from reglab.search import space as spaces
from reglab.search import study as studies

log = logging.getLogger("reglab")

#: hydra-optuna-sweeper's keys reglab's sweeper does not take, and what to use instead.
_OLD_KEYS = {"search_space": "params", "custom_search_space": "params"}


#: The launchers' "Launching 1 jobs" lines, once per trial here.
_LAUNCHER_LOGGERS = ("hydra._internal.core_plugins.basic_launcher",
                     "hydra_plugins.hydra_joblib_launcher.joblib_launcher",
                     "hydra_plugins.hydra_joblib_launcher._core",
                     "hydra_plugins.hydra_submitit_launcher.submitit_launcher")


@dataclass
class Outcome:
    state: str  # COMPLETE, PRUNED or FAIL
    value: float | None
    status: str
    detail: str = ""


def _sweep_dir(cfg: Any, name: str) -> Path:
    """The study's dir: ``hydra.sweep.dir`` when the command names it, else
    ``<output_dir>/<task>/studies/<study name>``, the same every time the command runs."""
    named = any(str(o).split("=", 1)[0].lstrip("+~") == "hydra.sweep.dir"
                for o in cfg.hydra.overrides.hydra)
    if named:
        return Path(str(cfg.hydra.sweep.dir))
    return Path(str(cfg.paths.output_dir)) / str(cfg.task_name) / "studies" / name


def _slots(settings: dict[str, Any], launcher: Any) -> int:
    """Trials in flight: ``n_jobs``, else the joblib launcher's worker count, else 1."""
    n_jobs = settings.get("n_jobs")
    kind = type(launcher).__name__
    if n_jobs is None:
        n_jobs = 1
        if kind == "JoblibLauncher":
            wanted = launcher.joblib.get("n_jobs") if hasattr(launcher, "joblib") else None
            n_jobs = (os.cpu_count() or 1) if wanted in (None, -1) else int(wanted)
    if not isinstance(n_jobs, int) or isinstance(n_jobs, bool) or n_jobs < 1:
        raise ConfigError(f"hydra.sweeper.n_jobs: {n_jobs!r} is not a whole number ≥ 1")
    if n_jobs > 1 and kind == "BasicLauncher":
        raise ConfigError(f"hydra.sweeper.n_jobs={n_jobs}: the basic launcher runs one job at a "
                          "time in this process; add hydra/launcher=joblib (local cores) or "
                          "hydra/launcher=slurm")
    return n_jobs


def outcome(ret: Any) -> Outcome:
    """What a finished job means to the study, from the record it left."""
    from hydra.core.utils import JobStatus

    run_dir = Path(str(ret.hydra_cfg.hydra.runtime.output_dir))
    try:
        metrics = json.loads((run_dir / run_files.METRICS_FILE).read_text())
    except (OSError, ValueError) as exc:
        why = "the job raised" if ret.status == JobStatus.FAILED else f"no record ({exc})"
        return Outcome("FAIL", None, "failed", why)
    status = str(metrics.get("status"))
    if status == "pruned":
        return Outcome("PRUNED", None, status, f"after {metrics.get('pruned_at')} epochs")
    if status != "completed":
        return Outcome("FAIL", None, status, str(metrics.get("error") or status))
    value = (metrics.get("cv") or {}).get("val_loss_mean", metrics.get("val_loss"))
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        return Outcome("FAIL", None, status, "no finite val loss")
    return Outcome("COMPLETE", float(value), status)


class StudyLoop:
    """One sweep process's share of a study (others may share the same storage)."""

    def __init__(self, sweeper: Any, arguments: list[str]) -> None:
        from omegaconf import OmegaConf, open_dict

        self.launcher = sweeper.launcher
        cfg = self.cfg = sweeper.config
        settings = {k: v for k, v in sweeper.settings.items()}
        for old, new in _OLD_KEYS.items():
            if settings.get(old) is not None:
                raise ConfigError(f"hydra.sweeper.{old}: not read by reglab's Optuna sweeper; "
                                  f"give the search space as hydra.sweeper.{new}")
        params = settings.get("params")
        if params is not None and not isinstance(params, dict):
            params = OmegaConf.to_container(params, resolve=True)
        self.space = spaces.parse(params, list(arguments))
        self.direction = str(settings.get("direction") or "minimize").lower()
        if self.direction not in ("minimize", "maximize"):
            raise ConfigError(f"hydra.sweeper.direction: {self.direction!r} is not minimize or "
                              "maximize (one objective: the job's val loss)")
        self.name = str(settings.get("study_name") or spaces.study_name(str(cfg.task_name),
                                                                         self.space))
        self.n_trials = settings.get("n_trials", 20)
        if not isinstance(self.n_trials, int) or self.n_trials < 1:
            raise ConfigError(f"hydra.sweeper.n_trials: {self.n_trials!r} is not a whole "
                              "number ≥ 1 (the study's total)")
        rate = settings.get("max_failure_rate", 1.0)
        if not isinstance(rate, (int, float)) or not 0 <= rate <= 1:
            raise ConfigError(f"hydra.sweeper.max_failure_rate: {rate!r} is not between 0 and 1")
        self.max_failure_rate = float(rate)
        self.retries = int(settings.get("retries", 1) or 0)
        self.slots = _slots(settings, self.launcher)
        self.sweep_dir = _sweep_dir(cfg, self.name).absolute()
        self.url = studies.absolute(str(settings.get("storage")
                                        or studies.default_storage(self.sweep_dir)))
        with open_dict(cfg):  # the launcher and the sweep report read the study's dir
            cfg.hydra.sweep.dir = str(self.sweep_dir)
        self.sampler_cfg, self.pruner_cfg = settings.get("sampler"), settings.get("pruner")
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.in_flight: dict[int, int] = {}  # trial number → trial id (heartbeats)
        self.in_flight_ids: dict[int, int] = {}  # every trial this process asked for
        self.results: list[Any] = []

    # -- the study -------------------------------------------------------------------
    def _check_dir(self) -> None:
        from reglab import run_files

        found = studies.read_study_file(self.sweep_dir)
        if found is None:
            held = run_files.holds_sweep(self.sweep_dir)
            if held is not None:
                raise ConfigError(f"hydra.sweep.dir: {self.sweep_dir} already holds {held}, not "
                                  "an Optuna study; name another hydra.sweep.dir")
        elif found.get("study_name") != self.name or found.get("storage") != studies.shown(
                self.url):
            raise ConfigError(f"hydra.sweep.dir: {self.sweep_dir} holds study "
                              f"{found.get('study_name')!r} in {found.get('storage')}; this "
                              f"command runs study {self.name!r} in {studies.shown(self.url)}: "
                              "name another hydra.sweep.dir")

    def open(self) -> None:
        """Open (or start) the study; a refused or failed command removes the dirs it
        made."""
        made = next((p for p in reversed([self.sweep_dir, *self.sweep_dir.parents])
                     if not p.exists()), None)
        try:
            self._open()
        except (ConfigError, OSError):  # a bad setting, or a file system that refused
            if made is not None:
                shutil.rmtree(made, ignore_errors=True)  # nothing in it was there before
            raise

    def _open(self) -> None:
        from optuna.trial import TrialState

        self._check_dir()
        studies.quiet_optuna()
        self.storage = studies.open_storage(self.url, heartbeat=True)
        sampler, pruner = self._build()
        command = {"overrides": sorted(self.space.fixed),
                   "space": {k: repr(d) for k, d in sorted(self.space.distributions.items())}}
        self.study = studies.open_study(self.storage, self.name, direction=self.direction,
                                        sampler=sampler, pruner=pruner,
                                        command=command)
        self.study_id = self.storage.get_study_id_from_name(self.name)
        running = len(self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))
        stale, queued = studies.fail_stale(self.study, self.storage, retries=self.retries,
                                           room=self.n_trials - self._counted() + running)
        if stale:
            again = (f"trial(s) {', '.join(map(str, queued))} queued once more" if queued else
                     f"no room left in hydra.sweeper.n_trials={self.n_trials} to try them "
                     "again")
            log.warning("study %s: trial(s) %s were left running by a sweep that stopped: "
                        "failed; %s", self.name, ", ".join(map(str, stale)), again)
        self.sweep_dir.mkdir(parents=True, exist_ok=True)
        studies.write_study_file(self.sweep_dir, self.url, self.name, self.direction)
        # As Hydra's own sweeper does: the command's config, which resume=<dir> reads.
        from omegaconf import OmegaConf

        OmegaConf.save(self.cfg, self.sweep_dir / "multirun.yaml")
        done = self._counted()
        log.info("study %s (%s): %d of %d trials already run; results in %s", self.name,
                 studies.shown(self.url), done, self.n_trials, self.sweep_dir)

    def _build(self) -> tuple[Any, Any]:
        """Sampler and pruner from their ``_target_`` nodes. A seeded sampler continuing a
        study is seeded with ``seed + trials so far``: the same seed again would propose
        the trials it has already run."""
        from hydra.utils import instantiate
        from omegaconf import DictConfig, OmegaConf

        def node(value: Any, key: str) -> Any:
            if value is None:
                return None
            if isinstance(value, DictConfig):
                value = OmegaConf.to_container(value, resolve=True)
            if not isinstance(value, dict) or "_target_" not in value:
                raise ConfigError(f"hydra.sweeper.{key}: needs a _target_ (an optuna.{key}s "
                                  "class) or null")
            return value

        sampler_cfg = node(self.sampler_cfg, "sampler")
        if sampler_cfg is not None and isinstance(sampler_cfg.get("seed"), int):
            import optuna

            try:
                before = len(optuna.load_study(study_name=self.name,
                                               storage=self.storage).trials)
            except KeyError:  # a new study
                before = 0
            sampler_cfg["seed"] += before
        built = []
        for key, cfg in (("sampler", sampler_cfg), ("pruner", node(self.pruner_cfg, "pruner"))):
            try:
                built.append(None if cfg is None else instantiate(cfg))
            except Exception as exc:
                raise ConfigError(f"hydra.sweeper.{key}: cannot build {cfg.get('_target_')}: "
                                  f"{str(exc).splitlines()[0][:200]}") from None
        return built[0], built[1]

    def _states(self) -> dict[str, int]:
        """How many of the study's trials are in each state (one query)."""
        counts: dict[str, int] = {}
        for trial in self.study.get_trials(deepcopy=False):
            counts[trial.state.name] = counts.get(trial.state.name, 0) + 1
        return counts

    def _counted(self, counts: dict[str, int] | None = None) -> int:
        """Trials that count toward ``n_trials``: run, running or failed (not queued)."""
        counts = self._states() if counts is None else counts
        return sum(counts.get(s, 0) for s in ("COMPLETE", "PRUNED", "FAIL", "RUNNING"))

    def _ask(self) -> Any | None:
        with self.lock:
            counts = self._states()
            if self.stop.is_set() or (self._counted(counts) >= self.n_trials
                                      and not counts.get("WAITING")):
                return None  # a queued retry runs even when the count is reached
            with warnings.catch_warnings():
                # Optuna warns that heartbeats belong to Study.optimize; this loop keeps
                # them itself (_heartbeats), for trials asked for one by one.
                warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed")
                trial = self.study.ask(self.space.distributions)
            trial.set_user_attr(studies.OWNER, studies.owner())
            trial_id = self.storage.get_trial_id_from_study_id_trial_number(self.study_id,
                                                                            trial.number)
            self.in_flight[trial.number] = self.in_flight_ids[trial.number] = trial_id
            if self.storage_heartbeat:
                self.storage.record_heartbeat(trial_id)
            return trial

    @property
    def storage_heartbeat(self) -> bool:
        return studies.heartbeat_enabled(self.storage)

    def _tell(self, trial: Any, result: Outcome) -> None:
        from optuna.trial import TrialState

        with self.lock:
            self.in_flight.pop(trial.number, None)
            trial.set_user_attr("status", result.status)
            if result.detail:
                trial.set_user_attr("detail", result.detail[:500])
            state = getattr(TrialState, result.state)
            try:
                self.study.tell(trial, result.value if result.state == "COMPLETE" else None,
                                state=state)
            except RuntimeError as exc:
                if "Study.stop" not in str(exc):
                    raise
                # A sampler that has tried everything (BruteForceSampler) stops the study
                # from its after_trial, which Optuna allows only inside optimize(); the
                # trial is recorded (made sure of here) and no more are asked for.
                trial_id = self.in_flight_ids[trial.number]
                if self.storage.get_trial(trial_id).state == TrialState.RUNNING:
                    values = [result.value] if result.state == "COMPLETE" else None
                    self.storage.set_trial_state_values(trial_id, state, values)
                self.stop.set()
            self._report(trial, result)

    def _report(self, trial: Any, result: Outcome) -> None:
        """One line per finished trial, and the failure-rate stop (one query for both)."""
        trials = self.study.get_trials(deepcopy=False)
        counts: dict[str, int] = {}
        for t in trials:
            counts[t.state.name] = counts.get(t.state.name, 0) + 1
        shown = " ".join(f"{k}={v}" for k, v in trial.params.items())
        done = self._counted(counts) - len(self.in_flight)
        what = (f"val/loss {result.value:.4g}" if result.state == "COMPLETE"
                else f"{result.state.lower()}: {result.detail}")
        complete = [t for t in trials if t.state.name == "COMPLETE" and t.value is not None]
        best = ""
        if complete:
            pick = min if self.direction == "minimize" else max
            top = pick(complete, key=lambda t: t.value)
            best = f" (best {top.value:.4g}, trial {top.number})"
        log.info("trial %d [%d/%d] %s → %s%s", trial.number, done, self.n_trials, shown,
                 what, best)
        finished = sum(counts.get(s, 0) for s in ("COMPLETE", "PRUNED", "FAIL"))
        failed = counts.get("FAIL", 0)
        if finished and failed / finished > self.max_failure_rate and not self.stop.is_set():
            log.error("study %s: %d of %d trials failed, above hydra.sweeper.max_failure_rate="
                      "%g; no more trials are started", self.name, failed, finished,
                      self.max_failure_rate)
            self.stop.set()

    # -- the jobs --------------------------------------------------------------------
    def _overrides(self, trial: Any) -> list[str]:
        return [*self.space.overrides(trial.params),
                f"hydra.sweeper.storage={spaces.quoted(self.url)}",
                f"hydra.sweeper.study_name={spaces.quoted(self.name)}",
                f"hydra.sweep.dir={spaces.quoted(str(self.sweep_dir))}"]

    def _run_one(self, trial: Any) -> None:
        try:
            rets = self.launcher.launch([self._overrides(trial)], initial_job_idx=trial.number)
            self.results.extend(rets)
            result = outcome(rets[0])
        except Exception as exc:  # the job's process died (an abort, an OOM kill)
            result = Outcome("FAIL", None, "failed", f"{type(exc).__name__}: {exc}"[:300])
            log.error("trial %d: the job did not return: %s", trial.number, result.detail)
        self._tell(trial, result)

    def _worker(self) -> None:
        while (trial := self._ask()) is not None:
            self._run_one(trial)

    def _heartbeats(self) -> None:
        while not self.stop.wait(studies.HEARTBEAT_SECONDS / 2):
            with self.lock:
                ids = list(self.in_flight.values())
            for trial_id in ids:
                try:
                    self.storage.record_heartbeat(trial_id)
                except Exception as exc:  # a storage that hiccups; the trial runs on
                    log.warning("heartbeat not recorded: %s", exc)

    def run(self) -> list[Any]:
        self.open()
        for name in _LAUNCHER_LOGGERS:  # each trial is one line of this loop's own
            logging.getLogger(name).setLevel(logging.WARNING)
        beat = None
        if self.storage_heartbeat:
            beat = threading.Thread(target=self._heartbeats, daemon=True)
            beat.start()
        try:
            with studies.live(self.url, self.storage, self.study):
                self._trials()
        except BaseException:
            self.stop.set()
            raise
        finally:
            self.stop.set()
            if beat is not None:
                beat.join(timeout=5)
        return self.results

    def _trials(self) -> None:
        if self.slots == 1:
            self._worker()
        else:
            workers = [threading.Thread(target=self._worker, daemon=True)
                       for _ in range(self.slots)]
            for w in workers:
                w.start()
            for w in workers:
                while w.is_alive():
                    w.join(timeout=0.5)


def run_study(sweeper: Any, arguments: list[str]) -> list[Any]:
    """Hydra's ``Sweeper.sweep``: the study's trials, until it holds ``n_trials``."""
    return StudyLoop(sweeper, arguments).run()
