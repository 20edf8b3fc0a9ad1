"""Hydra callbacks. Imported by Hydra at start-up, so nothing heavy is imported here."""

from __future__ import annotations

import logging
import threading
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

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        """When the jobs run in other processes (joblib, submitit), this one only waits:
        load the charts' plotting library meanwhile, so the report follows the last job
        at once instead of paying that import (about 0.4 s) after it."""
        launcher = str((config.hydra.get("launcher") or {}).get("_target_", ""))
        if self.enabled and launcher and "BasicLauncher" not in launcher:
            threading.Thread(target=_preload_report, name="reglab-report-preload",
                             daemon=True).start()

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
        failed_jobs[:] = [row["job"] for row in report.rows if row["status"] != "completed"]


def _preload_report() -> None:
    try:
        from reglab.sweep_report import preload

        preload()
    except Exception:  # the report imports it again and reports any failure there
        log.debug("sweep report preload failed", exc_info=True)
