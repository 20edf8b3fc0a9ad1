"""The TensorBoard logger of ``logger=tensorboard``: Lightning's, with its bookkeeping
``epoch`` scalar filed after the losses.

TensorBoard's SCALARS tab sorts its groups by tag name and opens the first two. Lightning
adds ``epoch`` to every write, so a stock logger opens the tab on an epoch-against-step
line; reglab writes it as ``x-axis/epoch`` (it says what step each epoch reached), so the
tab opens on the loss groups. Every other tag, and what callbacks read, is Lightning's.
"""

from __future__ import annotations

from collections.abc import Mapping

from pytorch_lightning.loggers import TensorBoardLogger as LightningTensorBoardLogger

#: Where Lightning's ``epoch`` scalar goes: a group that sorts after ``train``, ``val``
#: and ``weights``.
EPOCH_TAG = "x-axis/epoch"


class TensorBoardLogger(LightningTensorBoardLogger):
    """``pytorch_lightning.loggers.TensorBoardLogger`` with ``epoch`` as ``x-axis/epoch``."""

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        if "epoch" in metrics:
            metrics = {EPOCH_TAG if key == "epoch" else key: value
                       for key, value in metrics.items()}
        super().log_metrics(metrics, step)
