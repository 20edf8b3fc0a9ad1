"""A Lightning data module that keeps the whole data set in memory as tensors.

Batches are cut by slicing whole tensors (after one seeded permutation per epoch when
shuffling) instead of a ``DataLoader`` that fetches and collates rows one at a time:
on small models the per-row path costs more than the model itself.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import pytorch_lightning as pl
import torch

from reglab.datagen import Dataset
from reglab.scaling import Scaling
from reglab.validate import DataError


class TensorBatches:
    """An iterable of ``(x, y)`` batches over in-memory tensors, re-iterable each epoch.

    When shuffling, epoch ``e`` uses a permutation seeded by ``(seed, e)``, so the order
    depends on the epoch number alone and a resumed run sees the same batches.
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int | None,
                 shuffle: bool = False, seed: int = 0,
                 epoch_fn: Callable[[], int] | None = None) -> None:
        self.x, self.y = x, y
        n = int(x.shape[0])
        self.batch_size = n if batch_size is None else min(int(batch_size), n)
        self.shuffle = shuffle
        self.seed = int(seed)
        self.epoch_fn = epoch_fn
        self._iterations = 0

    def __len__(self) -> int:
        return math.ceil(self.x.shape[0] / self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        x, y = self.x, self.y
        epoch = self.epoch_fn() if self.epoch_fn is not None else self._iterations
        self._iterations += 1
        if self.shuffle and x.shape[0] > 1:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + int(epoch))
            perm = torch.randperm(x.shape[0], generator=g).to(x.device, non_blocking=True)
            x, y = x[perm], y[perm]
        bs, n = self.batch_size, x.shape[0]
        if bs >= n:
            yield x, y
            return
        for start in range(0, n, bs):
            yield x[start:start + bs], y[start:start + bs]


class RegressionDataModule(pl.LightningDataModule):
    """Splits one in-memory data set into train/val/test and serves tensor batches.

    ``val_fraction=0`` validates on the training rows, so problems of a handful of points
    (3 or 11) still get a validation loss; ``test_fraction=0`` means no test split.
    ``standardize`` (features) and ``standardize_target`` fit their statistics on the
    training split only; every split is then served in those units. A given ``scaling``
    (from a trained model, at evaluation time) is applied instead of fitting one.
    """

    def __init__(self, source: Callable[[], Dataset], batch_size: int | None = None,
                 shuffle: bool = False, val_fraction: float = 0.0,
                 test_fraction: float = 0.0, seed: int = 0, standardize: bool = False,
                 standardize_target: bool = False, scaling: Scaling | None = None) -> None:
        super().__init__()
        self.source = source
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.val_fraction = float(val_fraction)
        self.test_fraction = float(test_fraction)
        self.seed = int(seed)
        self.standardize = bool(standardize)
        self.standardize_target = bool(standardize_target)
        self.scaling = scaling
        self.data: Dataset | None = None
        self.splits: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    # -- data ---------------------------------------------------------------------------
    def prepare(self) -> Dataset:
        """Generate or load the data and split it; safe to call more than once."""
        if self.data is None:
            data = self.source()
            if len(data) == 0:
                raise DataError("data: the data set is empty (0 rows)")
            bad = ~(torch.isfinite(data.x).all(dim=1) & torch.isfinite(data.y).flatten())
            if bool(bad.any()):
                row = int(bad.nonzero()[0])
                raise DataError(f"data: row {row} holds a non-finite value "
                                f"(x={data.x[row].tolist()}, y={float(data.y[row])})")
            splits = self._split(data)
            if self.scaling is None:
                self.scaling = Scaling.fit(*splits["train"], features=self.standardize,
                                           target=self.standardize_target)
            if self.scaling.x_mean is not None and len(self.scaling.x_mean) != data.num_features:
                raise DataError(f"data: {data.num_features} feature columns, but the model was "
                                f"trained on {len(self.scaling.x_mean)}")
            if self.scaling.active:
                val_is_train = splits["val"] is splits["train"]
                splits = {k: (self.scaling.x(x), self.scaling.y(y)) for k, (x, y) in
                          splits.items() if not (k == "val" and val_is_train)}
                if val_is_train:
                    splits["val"] = splits["train"]
            self.data = data
            self.splits = splits
        return self.data

    def _split(self, data: Dataset) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        n = len(data)
        n_test = round(n * self.test_fraction)
        n_val = round(n * self.val_fraction)
        n_train = n - n_test - n_val
        if n_train < 1 or (self.test_fraction > 0 and n_test < 1) or (
                self.val_fraction > 0 and n_val < 1):
            raise DataError(
                f"data: {n} rows cannot be split into train/val/test with val_fraction="
                f"{self.val_fraction} and test_fraction={self.test_fraction}; every split "
                "needs at least one row")
        if n_val == 0 and n_test == 0:
            order = torch.arange(n)
        else:
            order = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed))
        train = order[:n_train]
        splits = {"train": (data.x[train], data.y[train])}
        if n_val:
            idx = order[n_train:n_train + n_val]
            splits["val"] = (data.x[idx], data.y[idx])
        else:
            splits["val"] = splits["train"]
        if n_test:
            idx = order[n_train + n_val:]
            splits["test"] = (data.x[idx], data.y[idx])
        return splits

    @property
    def num_features(self) -> int:
        return self.prepare().num_features

    @property
    def has_test(self) -> bool:
        self.prepare()
        return "test" in self.splits

    # -- Lightning hooks ----------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        self.prepare()
        device = self.trainer.strategy.root_device if self.trainer is not None else None
        if device is not None and device.type != "cpu":
            # Move the whole data set once; batches are then cut on the device.
            self.splits = {k: (x.to(device), y.to(device)) for k, (x, y) in self.splits.items()}

    def _current_epoch(self) -> int:
        return self.trainer.current_epoch if self.trainer is not None else 0

    def _batches(self, split: str, shuffle: bool) -> TensorBatches:
        x, y = self.splits[split]
        return TensorBatches(x, y, self.batch_size, shuffle=shuffle, seed=self.seed,
                             epoch_fn=self._current_epoch)

    def train_dataloader(self) -> TensorBatches:
        return self._batches("train", self.shuffle)

    def val_dataloader(self) -> TensorBatches:
        return self._batches("val", False)

    def test_dataloader(self) -> TensorBatches:
        return self._batches("test", False)
