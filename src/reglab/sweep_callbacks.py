"""Hydra callbacks. Imported by Hydra at start-up, so nothing heavy is imported here."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

log = logging.getLogger("reglab")

#: Jobs of the last sweep in this process that did not complete; ``reglab-train`` exits
#: non-zero when there are any, after the whole sweep and its report are done.
failed_jobs: list[str] = []


class SweepReport(Callback):
    """Writes the sweep summary, heat map and curves when a multirun ends."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if not self.enabled:
            return
        from reglab.sweep_report import write_report

        sweep_dir = Path(str(config.hydra.sweep.dir))
        try:
            report = write_report(sweep_dir)
        except Exception as exc:  # the jobs' own results are on disk whatever happens here
            log.error("sweep report failed: %s: %s", type(exc).__name__, exc, exc_info=True)
            failed_jobs[:] = ["(sweep report)"]  # unknown outcome: do not claim success
            return
        print(report.markdown, flush=True)
        failed_jobs[:] = [row["job"] for row in report.rows
                          if row["status"] not in ("completed", "fast_dev_run")]
