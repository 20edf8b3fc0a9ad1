"""The Hydra callback that writes the sweep report when a multirun ends.

Hydra imports it at start-up, so nothing heavy is imported at module level.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

log = logging.getLogger("reglab")


class JobsFailed(SystemExit):
    """Ends a sweep whose report shows jobs that did not complete: exit status 1.

    Raised after every job has run and the report is written. A ``SystemExit`` so that
    Hydra, which turns a callback's ``Exception`` into a warning, lets it reach the
    command; its ``jobs`` name who failed. Hydra ends a multirun's callbacks in reverse
    order, so callbacks added after ``sweep_report`` in ``hydra.callbacks`` (the usual
    ``+hydra.callbacks.<name>=…``) still run before it.
    """

    def __init__(self, jobs: list[str]) -> None:
        super().__init__(1)
        self.jobs = jobs


#: The sweep dir of the multirun this process runs, once Hydra has started it: a sweep a
#: launcher aborts (a job's process killed) is still reported from here.
_RUNNING: list[Path] = []


def report_cut_short(exc: BaseException) -> Path | None:
    """After a launcher raised mid-sweep (a joblib or submitit job's process died):
    write the report of the jobs on disk and return the sweep dir; None when no sweep
    was running."""
    if not _RUNNING:
        return None
    from reglab.reporting.sweep_report import write_report

    sweep_dir = _RUNNING.pop()
    try:
        print(write_report(sweep_dir).markdown, flush=True)
    except Exception as again:  # the jobs' own files are on disk whatever happens here
        log.error("sweep report failed: %s: %s", type(again).__name__, again)
    return sweep_dir


class SweepReport(Callback):
    """Writes the sweep summary, heat map and curves when a multirun ends."""

    def __init__(self, enabled: bool = True, x_axis: str = "epoch") -> None:
        self.enabled = enabled
        self.x_axis = x_axis

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        """Pin the sweep dir, resolved once here, for every job: a job that picks another
        experiment (``-m experiment=noisy_line,origin``) has another ``task_name``, and
        would otherwise resolve ``hydra.sweep.dir`` to a dir of its own, away from the
        report. (reglab's Optuna sweeper pins its study's dir itself.)"""
        from omegaconf import flag_override

        if "reglab_optuna_sweeper" in str(config.hydra.sweeper.get("_target_", "")):
            _RUNNING.append(Path(str(config.hydra.sweep.dir)))  # the study's, once pinned
            return
        resolved = str(config.hydra.sweep.dir)
        _RUNNING.append(Path(resolved))
        from reglab.search.space import quoted

        with flag_override(config, ["readonly", "struct"], [False, False]):
            config.hydra.sweep.dir = resolved
            config.hydra.overrides.hydra.append(f"hydra.sweep.dir={quoted(resolved)}")

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if not self.enabled:
            return
        from reglab.reporting.sweep_report import write_report

        sweep_dir = Path(str(config.hydra.sweep.dir))
        _RUNNING.clear()
        try:
            report = write_report(sweep_dir, self.x_axis)
        except Exception as exc:  # the jobs' own results are on disk whatever happens here
            log.error("sweep report failed: %s: %s", type(exc).__name__, exc, exc_info=True)
            raise JobsFailed(["(sweep report)"]) from None  # unknown outcome: no success
        print(report.markdown, flush=True)
        failed = [row["job"] for row in report.rows
                  if row["status"] not in ("completed", "fast_dev_run", "pruned", "retried")]
        if failed:
            raise JobsFailed(failed)
