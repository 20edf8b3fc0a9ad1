"""A Lightning data module that keeps the whole data set in memory as tensors.

Batches are cut by slicing whole tensors (after one seeded permutation per epoch when
shuffling) instead of a ``DataLoader`` that fetches and collates rows one at a time:
on small models the per-row path costs more than the model itself. Training batches
are lists of mini-batches, and a Lightning epoch may hold several short data epochs,
so Lightning's own per-batch and per-epoch costs are paid once for many steps.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any

import pytorch_lightning as pl
import torch

from reglab.datagen import Dataset
from reglab.scaling import Scaling
from reglab.validate import DataError

#: Rows per validation/test batch (at least the training batch size).
EVAL_BATCH_ROWS = 1 << 14


#: One training step's worth of data: ``(x, y, data epoch, last mini-batch of that epoch)``.
Entry = tuple[torch.Tensor, torch.Tensor, int, bool]


class TensorBatches:
    """``(x, y)`` mini-batches over in-memory tensors, cut by slicing, re-iterable.

    When shuffling, data epoch ``e`` uses a permutation seeded by ``(seed, e)``, so the
    order depends on the epoch number alone and a resumed run sees the same batches.
    Iterating the object itself gives epoch 0's batches (validation and test).
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int | None,
                 shuffle: bool = False, seed: int = 0, rank: int = 0,
                 world_size: int = 1) -> None:
        self.x, self.y = x, y
        n = int(x.shape[0])
        self.batch_size = n if batch_size is None else min(int(batch_size), n)
        self.shuffle = shuffle
        self.seed = int(seed)
        #: Data-parallel training: every rank walks the same (global) batches and keeps
        #: its own share of each; gradient averaging makes the step the global batch's.
        self.rank, self.world_size = int(rank), max(1, int(world_size))

    @property
    def num_minibatches(self) -> int:
        n, bs = int(self.x.shape[0]), self.batch_size
        if self.world_size > 1 and n % bs and n % bs < self.world_size:
            return n // bs  # a last batch too small to give every rank a row is dropped
        return math.ceil(n / bs)

    def __len__(self) -> int:
        return self.num_minibatches

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self.minibatches(0)

    def minibatches(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """This rank's mini-batches of data epoch ``epoch``."""
        batches = self._global(epoch)
        if self.world_size == 1:
            return batches
        return self._shard(batches)

    def _shard(self, batches: Iterator[tuple[torch.Tensor, torch.Tensor]]
               ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """This rank's share of each global batch (shares differ by at most one row)."""
        for i, (x, y) in enumerate(batches):
            if i >= self.num_minibatches:
                return
            lo = x.shape[0] * self.rank // self.world_size
            hi = x.shape[0] * (self.rank + 1) // self.world_size
            yield x[lo:hi], y[lo:hi]

    def _global(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        x, y = self.x, self.y
        bs, n = self.batch_size, x.shape[0]
        if bs >= n:  # one batch: its gradient does not depend on the row order
            yield x, y
            return
        if not self.shuffle:
            for start in range(0, n, bs):
                yield x[start:start + bs], y[start:start + bs]
            return
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + int(epoch))
        perm = torch.randperm(n, generator=g).to(x.device, non_blocking=True)
        # Gather each batch's rows as it is needed: no shuffled copy of the whole set.
        for start in range(0, n, bs):
            idx = perm[start:start + bs]
            yield x.index_select(0, idx), y.index_select(0, idx)


class TrainRounds:
    """The training iterable: one pass per Lightning epoch (a *round*) over
    ``epochs_per_round`` data epochs, handed over as lists of ``block`` entries.

    Lightning pays a fixed cost per batch and a larger one per epoch; a list of many
    optimizer steps per batch, and several short data epochs per Lightning epoch, pay
    them once for all. ``claim`` names the data epochs of the round about to start.
    """

    def __init__(self, batches: TensorBatches, block: int, epochs_per_round: int,
                 claim: Callable[[], range]) -> None:
        self.batches = batches
        self.block = max(1, int(block))
        self.epochs_per_round = max(1, int(epochs_per_round))
        self.claim = claim

    @property
    def num_minibatches(self) -> int:
        """Optimizer steps per data epoch."""
        return self.batches.num_minibatches

    def __len__(self) -> int:
        """Lightning batches in a full round (a final, shorter round has fewer)."""
        return math.ceil(self.num_minibatches * self.epochs_per_round / self.block)

    def __iter__(self) -> Iterator[list[Entry]]:
        # A generator: the epochs are claimed at the first batch, not when Lightning
        # merely creates an iterator (it does so once more than it reads one).
        yield from self._blocks(self.claim())

    def _entries(self, epochs: range) -> Iterator[Entry]:
        for epoch in epochs:
            pending: tuple[torch.Tensor, torch.Tensor] | None = None
            for pair in self.batches.minibatches(epoch):
                if pending is not None:
                    yield pending[0], pending[1], epoch, False
                pending = pair
            if pending is not None:
                yield pending[0], pending[1], epoch, True

    def _blocks(self, epochs: range) -> Iterator[list[Entry]]:
        group: list[Entry] = []
        for entry in self._entries(epochs):
            group.append(entry)
            if len(group) == self.block:
                yield group
                group = []
        if group:
            yield group


def plan_rounds(steps_per_epoch: int, block: int, check_val_every_n_epoch: int | None
                ) -> tuple[int, int | None]:
    """Data epochs per Lightning epoch, and Lightning's validation interval in rounds.

    Whole epochs go to a round while they fit in one Lightning batch. The round length
    is a multiple or a divisor of the validation interval, so validation still falls on
    multiples of ``check_val_every_n_epoch`` data epochs (at most once per round).
    """
    every = check_val_every_n_epoch
    if block <= 1 or every is None or steps_per_epoch >= block:
        return 1, every
    most = block // steps_per_epoch
    if every <= most:
        return most // every * every, 1
    k = max(d for d in range(1, most + 1) if every % d == 0)
    return k, every // k


def _first_nonfinite_row(x: torch.Tensor, y: torch.Tensor, chunk: int = 1 << 16) -> int | None:
    """The first row holding a NaN or infinity, checked a block at a time: ``isfinite``
    on a whole million-row set would briefly cost more memory than the set itself."""
    for start in range(0, int(x.shape[0]), chunk):
        ok = torch.isfinite(x[start:start + chunk]).all(dim=1) & torch.isfinite(
            y[start:start + chunk]).all(dim=1)
        if not bool(ok.all()):
            return start + int((~ok).nonzero()[0])
    return None


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
                 standardize_target: bool = False, scaling: Scaling | None = None,
                 steps_per_batch: int = 100) -> None:
        super().__init__()
        self.source = source
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.val_fraction = float(val_fraction)
        self.test_fraction = float(test_fraction)
        self.seed = int(seed)
        self.standardize = bool(standardize)
        self.standardize_target = bool(standardize_target)
        #: Optimizer steps the module takes per Lightning batch: Lightning's per-batch
        #: bookkeeping is paid once per group of mini-batches instead of once per step.
        self.steps_per_batch = max(1, int(steps_per_batch))
        self.scaling = scaling
        #: Data epochs per Lightning epoch, planned in ``setup``; 1 until then.
        self.epochs_per_round = 1
        #: Data epochs served to training so far (a checkpoint restores it).
        self.epochs_done: int | None = None
        self._check_val_every: int | None = None
        self.data: Dataset | None = None
        self.splits: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    # -- data ---------------------------------------------------------------------------
    def prepare(self) -> Dataset:
        """Generate or load the data and split it; safe to call more than once."""
        if self.data is None:
            data = self.source()
            if len(data) == 0:
                raise DataError("data: the data set is empty (0 rows)")
            row = _first_nonfinite_row(data.x, data.y)
            if row is not None:
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
            x, y = data.x, data.y  # one split: views, no copy
        else:
            # One permuted copy; each split is then a contiguous view of it.
            order = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed))
            x, y = data.x[order], data.y[order]
            data.x, data.y = x, y  # the unpermuted original can be freed
        splits = {"train": (x[:n_train], y[:n_train])}
        if n_val:
            splits["val"] = (x[n_train:n_train + n_val], y[n_train:n_train + n_val])
        else:
            splits["val"] = splits["train"]
        if n_test:
            splits["test"] = (x[n_train + n_val:], y[n_train + n_val:])
        return splits

    @property
    def num_features(self) -> int:
        return self.prepare().num_features

    @property
    def val_is_train(self) -> bool:
        """Whether validation uses the training rows (``val_fraction=0``)."""
        self.prepare()
        return self.splits["val"] is self.splits["train"]

    @property
    def has_test(self) -> bool:
        self.prepare()
        return "test" in self.splits

    # -- Lightning hooks ----------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        """Prepare the data; for a fit, also plan its rounds (see :func:`plan_rounds`).

        When several data epochs make one Lightning epoch, the trainer's
        ``check_val_every_n_epoch`` is restated in rounds for the fit (and restored in
        ``teardown``), so validation still falls on the data epochs it names.
        """
        self.prepare()
        t = self.trainer
        device = t.strategy.root_device if t is not None else None
        if device is not None and device.type != "cpu":
            # Move the whole data set once; batches are then cut on the device.
            self.splits = {k: (x.to(device), y.to(device)) for k, (x, y) in self.splits.items()}
        if t is not None and stage == "fit":
            steps = self._batches("train", self.shuffle, self.batch_size).num_minibatches
            self.epochs_per_round, every = plan_rounds(
                steps, self._train_block(), t.check_val_every_n_epoch)
            if self.epochs_per_round > 1:
                self._check_val_every = t.check_val_every_n_epoch
                t.check_val_every_n_epoch = every

    def teardown(self, stage: str | None = None) -> None:
        if stage == "fit" and self._check_val_every is not None and self.trainer is not None:
            self.trainer.check_val_every_n_epoch = self._check_val_every
            self._check_val_every = None

    def state_dict(self) -> dict[str, Any]:
        """Stored in checkpoints: the data epochs already served, where a resume goes on."""
        return {"epochs_done": self.epochs_done}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.epochs_done = state_dict.get("epochs_done")

    def _claim_epochs(self) -> range:
        """The data epochs of the round that is starting, never past ``max_epochs``."""
        t = self.trainer
        start = self.epochs_done
        if start is None:  # a checkpoint from before rounds: one epoch per Lightning epoch
            start = t.current_epoch if t is not None else 0
        stop = start + self.epochs_per_round
        if t is not None and t.max_epochs is not None and t.max_epochs > 0:
            stop = max(start, min(stop, t.max_epochs))
        self.epochs_done = stop
        return range(start, stop)

    def _batches(self, split: str, shuffle: bool, batch_size: int | None) -> TensorBatches:
        x, y = self.splits[split]
        t = self.trainer
        # Only training is sharded: every rank evaluates whole splits, so validation and
        # test figures agree across ranks without any collective.
        shard = split == "train" and t is not None and t.world_size > 1
        return TensorBatches(x, y, batch_size, shuffle=shuffle, seed=self.seed,
                             rank=t.global_rank if shard else 0,
                             world_size=t.world_size if shard else 1)

    def _train_block(self) -> int:
        """Mini-batches per Lightning batch: several, unless a Trainer option counts
        batches (limit_train_batches, overfit_batches, fast_dev_run) or validates
        within an epoch (val_check_interval)."""
        t = self.trainer
        if t is None or self.steps_per_batch <= 1:
            return 1
        counted = (t.limit_train_batches not in (1.0, None) or t.overfit_batches
                   or t.fast_dev_run or t.val_check_interval not in (1.0, None))
        return 1 if counted else self.steps_per_batch

    def _eval_batch_size(self) -> int | None:
        """Evaluation needs no gradient, so its batches can be far larger than training's:
        each batch costs Lightning a fixed dispatch overhead that dwarfs a small model."""
        if self.batch_size is None:
            return None
        return max(int(self.batch_size), EVAL_BATCH_ROWS)

    def train_dataloader(self) -> TrainRounds:
        return TrainRounds(self._batches("train", self.shuffle, self.batch_size),
                           self._train_block(), self.epochs_per_round, self._claim_epochs)

    def val_dataloader(self) -> TensorBatches:
        return self._batches("val", False, self._eval_batch_size())

    def test_dataloader(self) -> TensorBatches:
        return self._batches("test", False, self._eval_batch_size())
