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


class SweepReport(Callback):
    """Writes the sweep summary, heat map and curves when a multirun ends."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if not self.enabled:
            return
        from reglab.reporting.sweep_report import write_report

        sweep_dir = Path(str(config.hydra.sweep.dir))
        try:
            report = write_report(sweep_dir)
        except Exception as exc:  # the jobs' own results are on disk whatever happens here
            log.error("sweep report failed: %s: %s", type(exc).__name__, exc, exc_info=True)
            raise JobsFailed(["(sweep report)"]) from None  # unknown outcome: no success
        print(report.markdown, flush=True)
        failed = [row["job"] for row in report.rows
                  if row["status"] not in ("completed", "fast_dev_run", "pruned", "retried")]
        if failed:
            raise JobsFailed(failed)
