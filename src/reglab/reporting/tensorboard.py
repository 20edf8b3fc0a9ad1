"""What reglab adds to a run's TensorBoard logs after the fit: HPARAMS, a custom chart, text."""

from __future__ import annotations

import os
from typing import Any

from reglab.reporting.summary import report_table

#: The run beside a run's own that holds the least-squares optimum as ``train/loss_epoch``:
#: TensorBoard colours and names lines by run, so the two read apart on one chart.
OPTIMUM_RUN = "least_squares_optimum"


def log_hparams(loggers: list[Any], hp: dict[str, Any], metric_tags: list[str],
                reference_layout: bool = False, report: dict[str, Any] | None = None,
                per_target: dict[str, Any] | None = None,
                optimum: tuple[float, int] | None = None) -> None:
    """Fill TensorBoard's HPARAMS tab with this run's hyper-parameters.

    The tab shows, for each metric tag named here, the last value of that scalar series
    in the run, so it lists the run's real final losses rather than a placeholder. With
    ``reference_layout``, a Custom Scalars chart also puts the training loss and the
    least-squares optimum on one set of axes. A least-squares ``report`` goes to the TEXT
    tab as a table.

    Everything goes to a new event file in the run's own log dir (Lightning has closed
    its writer by now; TensorBoard reads every event file of a dir as one run), through
    torch's public ``FileWriter`` and summary builders: ``SummaryWriter.add_hparams``
    would put the record in a run of its own.
    """
    from torch.utils.tensorboard.summary import custom_scalars, hparams, text
    from torch.utils.tensorboard.writer import FileWriter

    # TensorBoard takes no None: a null batch size is a full batch; anything else unset
    # (the lr of optimizer=exact) reads "none".
    clean = {k: (("full" if k == "batch_size" else "none") if v is None else v)
             for k, v in hp.items()}
    tables = {}
    if report:  # TensorBoard's TEXT tab renders markdown tables
        tables["least_squares/report"] = report
    tables.update({f"least_squares/report/{name}": own["report"]
                   for name, own in (per_target or {}).items()})
    for log_dir in _tensorboard_dirs(loggers):
        beside = optimum is not None and not _in_a_sweep(log_dir)
        # With the optimum's own run, one regex draws both runs' train/loss_epoch: two
        # colours, each named by its run. Without it (a sweep's jobs), the two tags.
        tags = ["^train/loss_epoch$"] if beside else ["train/loss_epoch",
                                                       "train/loss_closed_form"]
        layout = {"reglab": {"train loss vs least-squares optimum": ["Multiline", tags]}}
        writer = FileWriter(log_dir)
        try:
            for summary in hparams(clean, dict.fromkeys(metric_tags, 0.0)):
                writer.add_summary(summary)
            if reference_layout:
                writer.add_summary(custom_scalars(layout))
            for tag, table in tables.items():
                writer.add_summary(text(tag, "\n".join(
                    report_table(table, markdown=True, limit=None))))
        finally:
            writer.close()
        if beside and optimum is not None:
            _optimum_run(os.path.join(log_dir, OPTIMUM_RUN), *optimum)


def _optimum_run(log_dir: str, value: float, last_step: int) -> None:
    """A flat ``train/loss_epoch`` line at the optimum, from step 0 to the run's last."""
    from torch.utils.tensorboard.summary import scalar
    from torch.utils.tensorboard.writer import FileWriter

    writer = FileWriter(log_dir)
    try:
        for step in sorted({0, max(last_step, 0)}):
            writer.add_summary(scalar("train/loss_epoch", value), step)
    finally:
        writer.close()


def log_run(loggers: list[Any], metrics: dict[str, Any],
            closed: dict[str, Any] | None) -> None:
    """:func:`log_hparams` for a finished run: its hyper-parameters beside its final
    losses (and cross-validated and test figures where it has them)."""
    tags = ["train/loss_epoch", "val/loss"]
    if metrics.get("cv"):
        tags += ["cv/val_loss", "cv/val_loss_std"]
    if metrics.get("test"):
        tags += ["test/mse", "test/r2"]
    closed = closed or {}
    optimum = None
    if closed.get("train_loss") is not None:
        optimum = (float(closed["train_loss"]), int(metrics.get("steps") or 1) - 1)
    log_hparams(loggers, metrics["hparams"], tags, reference_layout="train_loss" in closed,
                report=closed.get("report"), per_target=closed.get("per_target"),
                optimum=optimum)


def _in_a_sweep(log_dir: str) -> bool:
    """A sweep's job (run by the sweep, or resumed alone later): its sweep's TensorBoard
    view holds one run per job, and an optimum run beside each would double them."""
    from pathlib import Path

    return any((p / "multirun.yaml").is_file() for p in list(Path(log_dir).parents)[:4])


def _tensorboard_dirs(loggers: list[Any]) -> list[str]:
    from pytorch_lightning.loggers import TensorBoardLogger

    return [lg.log_dir for lg in loggers if isinstance(lg, TensorBoardLogger)]
