"""A Lightning data module that keeps the whole data set in memory as tensors.

Batches are cut by slicing whole tensors (after one seeded permutation per epoch when
shuffling) instead of a ``DataLoader`` that fetches and collates rows one at a time:
on small models the per-row path costs more than the model itself. One Lightning epoch
is one pass over the training split, one batch one optimizer step, as with a
``DataLoader``; the training batches are resumable mid-epoch (Lightning's
``state_dict`` / ``load_state_dict`` protocol for loaders).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from pathlib import Path

import pytorch_lightning as pl
import torch

from reglab.config.checks import check_folds
from reglab.data.dataset import Dataset
from reglab.data.scaling import Scaling
from reglab.errors import DataError

#: Rows per validation/test batch (at least the training batch size).
EVAL_BATCH_ROWS = 1 << 14


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

    def minibatches(self, epoch: int, start: int = 0
                    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """This rank's mini-batches of epoch ``epoch``, from the ``start``-th on."""
        if self.world_size == 1:
            return self._global(epoch, start)
        return self._shard(self._global(epoch, start), start)

    def _shard(self, batches: Iterator[tuple[torch.Tensor, torch.Tensor]], start: int
               ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """This rank's share of each global batch (shares differ by at most one row)."""
        for i, (x, y) in enumerate(batches, start):
            if i >= self.num_minibatches:
                return
            lo = x.shape[0] * self.rank // self.world_size
            hi = x.shape[0] * (self.rank + 1) // self.world_size
            yield x[lo:hi], y[lo:hi]

    def _global(self, epoch: int, start: int = 0
                ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        x, y = self.x, self.y
        bs, n = self.batch_size, x.shape[0]
        first = start * bs
        if bs >= n:  # one batch: its gradient does not depend on the row order
            if start == 0:
                yield x, y
            return
        if not self.shuffle:
            for lo in range(first, n, bs):
                yield x[lo:lo + bs], y[lo:lo + bs]
            return
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + int(epoch))
        perm = torch.randperm(n, generator=g).to(x.device, non_blocking=True)
        # Gather each batch's rows as it is needed: no shuffled copy of the whole set.
        for lo in range(first, n, bs):
            idx = perm[lo:lo + bs]
            yield x.index_select(0, idx), y.index_select(0, idx)


class ConvertedBatches:
    """Evaluation batches cut from the split as stored and converted one batch at a time
    (scaled, cast to the model's dtype, moved to its device): validation and test batches
    are few and large, so this costs nothing per step and saves a copy of both splits."""

    def __init__(self, batches: TensorBatches,
                 convert: Callable[[torch.Tensor, torch.Tensor],
                                   tuple[torch.Tensor, torch.Tensor]]) -> None:
        self.batches = batches
        self.convert = convert

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for x, y in self.batches:
            yield self.convert(x, y)


class TrainBatches:
    """The training split's mini-batches for the epoch Lightning is in.

    Resumable mid-epoch through the ``state_dict`` / ``load_state_dict`` protocol that
    Lightning applies to training loaders: a checkpoint written part-way through an
    epoch records how many batches were served, and a resumed fit serves the rest of
    that epoch's (seeded) order, so it ends where an uninterrupted fit would.
    """

    def __init__(self, batches: TensorBatches, epoch: Callable[[], int]) -> None:
        self.batches = batches
        self._epoch = epoch
        self._served = (0, 0)  # (epoch, batches handed out in it)
        self._resume: tuple[int, int] | None = None

    def __len__(self) -> int:
        return self.batches.num_minibatches

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        # A generator: the epoch is read at the first batch, when Lightning has set it,
        # not when Lightning merely creates the iterator.
        epoch = int(self._epoch())
        start = 0
        if self._resume is not None:
            if self._resume[0] == epoch:
                start = self._resume[1]
            self._resume = None
        self._served = (epoch, start)
        for n, batch in enumerate(self.batches.minibatches(epoch, start), start + 1):
            # Lightning takes batches from a sized loader one at a time (no prefetch),
            # so what was handed out is what was trained on when a checkpoint is written.
            self._served = (epoch, n)
            yield batch

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self._served[0], "batches": self._served[1]}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        self._resume = (int(state_dict["epoch"]), int(state_dict["batches"]))


def _first_nonfinite_row(x: torch.Tensor, y: torch.Tensor, chunk: int = 1 << 16) -> int | None:
    """The first row holding a NaN or infinity, checked a block at a time: ``isfinite``
    on a whole million-row set would briefly cost more memory than the set itself."""
    for start in range(0, int(x.shape[0]), chunk):
        ok = torch.isfinite(x[start:start + chunk]).all(dim=1) & torch.isfinite(
            y[start:start + chunk]).all(dim=1)
        if not bool(ok.all()):
            return start + int((~ok).nonzero()[0])
    return None


def _serve_dtype(trainer: pl.Trainer | None) -> torch.dtype:
    """The dtype batches are served in: the model's under ``64-true``, else float32
    (Lightning's half-precision plugins convert float32 inputs themselves)."""
    precision = str(getattr(trainer, "precision", "32-true")) if trainer is not None else ""
    return torch.float64 if precision.startswith("64") else torch.float32


class RegressionDataModule(pl.LightningDataModule):
    """Splits one in-memory data set into train/val/test and serves tensor batches.

    ``splits`` hold the rows as read (float64 for tables and generated sets, data units),
    which the least-squares report and the final float64 losses use; training, validation
    and test batches come from a copy in training units (standardized when asked) and in
    the trainer's precision, made once in ``setup``.

    ``val_fraction=0`` validates on the training rows, so problems of a handful of points
    (3 or 11) still get a validation loss; ``test_fraction=0`` means no test split.
    ``standardize`` (features) and ``standardize_target`` fit their statistics on the
    training split only. A given ``scaling`` (from a trained model, at evaluation time) is
    applied instead of fitting one.
    """

    def __init__(self, source: Callable[[], Dataset], batch_size: int | None = None,
                 shuffle: bool = False, val_fraction: float = 0.0,
                 test_fraction: float = 0.0, seed: int = 0, standardize: bool = False,
                 standardize_target: bool = False, scaling: Scaling | None = None,
                 folds: int | None = None) -> None:
        super().__init__()
        if folds is not None:
            check_folds(folds, float(val_fraction))
        #: K-fold cross-validation over the training rows (see :meth:`fold`), or None.
        self.folds = folds
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
        self._served: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self._served_key: tuple[torch.dtype, str] | None = None
        self._checked_dtype: torch.dtype | None = None
        self._layout: tuple[str, int, int, int] = ("whole", 0, 0, 0)

    # -- data ---------------------------------------------------------------------------
    def prepare(self) -> Dataset:
        """Generate or load the data and split it; safe to call more than once."""
        if self.data is None:
            data = self.source()
            if len(data) == 0:
                raise DataError("data: the data set is empty (0 rows)")
            # A table reglab read was checked cell by cell already (file, line, column).
            row = None if data.source_file is not None else _first_nonfinite_row(data.x,
                                                                                   data.y)
            if row is not None:
                raise DataError(f"data: row {row} holds a non-finite value "
                                f"(x={data.x[row].tolist()}, y={data.y[row].tolist()})")
            splits = self._split(data)
            if self.scaling is None:
                self.scaling = Scaling.fit(*splits["train"], features=self.standardize,
                                           target=self.standardize_target)
            if self.scaling.x_mean is not None and len(self.scaling.x_mean) != data.num_features:
                raise DataError(f"data: {data.num_features} feature columns, but the model was "
                                f"trained on {len(self.scaling.x_mean)}")
            self.data = data
            self.splits = splits
        return self.data

    def training_units(self, split: str, dtype: torch.dtype | None = None,
                       device: torch.device | str | None = None
                       ) -> tuple[torch.Tensor, torch.Tensor]:
        """A split as the model sees it: scaled, in ``dtype`` (default: as stored), on
        ``device``; built a block of rows at a time, so no float64 scaled copy of a
        large split is ever held beside the result."""
        self.prepare()
        x, y = self.splits[split]
        dtype = dtype or x.dtype
        if not self.scaling.active and x.dtype == dtype and (device is None or
                                                              x.device == torch.device(device)):
            return x, y
        out_x = torch.empty(x.shape, dtype=dtype, device=device)
        out_y = torch.empty(y.shape, dtype=dtype, device=device)
        for i in range(0, int(x.shape[0]), EVAL_BATCH_ROWS * 4):
            j = i + EVAL_BATCH_ROWS * 4
            xs, ys = self.scaling.x(x[i:j]).to(dtype), self.scaling.y(y[i:j]).to(dtype)
            self._representable(split, i, x[i:j], xs, y[i:j], ys, dtype)
            out_x[i:j], out_y[i:j] = xs, ys
        return out_x, out_y

    def _representable(self, split: str, first: int, x: torch.Tensor, xs: torch.Tensor,
                       y: torch.Tensor, ys: torch.Tensor, dtype: torch.dtype) -> None:
        """Values that are finite as read but not in ``dtype`` (1e39 in float32): named by
        file, line and column as every other bad cell is, with the setting that helps for
        that column, instead of surfacing as an infinite loss."""
        for raw, cast, names, scaled, key in (
                (x, xs, self.data.feature_names, self.standardize, "data.standardize"),
                (y, ys, self.data.target_names, self.standardize_target,
                 "data.standardize_target")):
            bad = ~torch.isfinite(cast)
            if bool(bad.any()):
                row, col = (int(v) for v in bad.nonzero()[0])
                name = names[col] if names and col < len(names) else str(col)
                where = self._cell(self.source_row(split, first + row), name)
                fix = "trainer.precision=64-true" if scaled else \
                    f"{key}=true or trainer.precision=64-true"
                raise DataError(
                    f"{where}: {float(raw[row, col]):g} is beyond "
                    f"{str(dtype).removeprefix('torch.')}'s range as the model sees it; use "
                    f"{fix}")

    def source_row(self, split: str, row: int) -> int:
        """The 0-based row of the source (the file's data rows) that ``row`` of ``split``
        came from: the seeded permutation is drawn again rather than kept (error paths
        only)."""
        kind, n, n_train, n_val = self._layout
        if kind == "whole":
            return row
        order = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed))
        if split == "train" or (split == "val" and n_val == 0):
            rows = order[:n_train]
            return int((rows.sort().values if kind == "in_place" else rows)[row])
        return int(order[n_train + row] if split == "val" else order[n_train + n_val + row])

    def _cell(self, row: int, column: str) -> str:
        """Where a value sits: file, line (CSV) or row (Parquet) and column; for generated
        data, its row."""
        file = (self.data.source_file or {}).get("path") if self.data is not None else None
        if file is None:
            return f"data: row {row}, column {column!r}"
        from reglab.data.tables import cell_location

        return cell_location(Path(file), row, column,
                             str((self.data.source_file or {}).get("delimiter", ",")))

    def served(self, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu"
               ) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """The training split in training units, ``dtype`` and on ``device`` (made once:
        training batches are cut from it with no per-step conversion)."""
        self.prepare()
        key = (dtype, str(device))
        if self._served_key != key:
            self._served = {"train": self.training_units("train", dtype, device)}
            self._served_key = key
            self._check_held_out(dtype)
        return self._served

    def _check_held_out(self, dtype: torch.dtype, with_train: bool = False) -> None:
        """Val and test rows (and, ``with_train``, training rows validated without a
        served copy) are converted per batch later: checked here, once."""
        if self._checked_dtype == dtype and not with_train:
            return
        for split in ("train", "val", "test") if with_train else ("val", "test"):
            if split in self.splits and not (split == "val" and self.val_is_train):
                x, y = self.splits[split]
                for i in range(0, int(x.shape[0]), EVAL_BATCH_ROWS * 4):
                    j = i + EVAL_BATCH_ROWS * 4
                    self._representable(split, i, x[i:j], self.scaling.x(x[i:j]).to(dtype),
                                        y[i:j], self.scaling.y(y[i:j]).to(dtype), dtype)
        self._checked_dtype = dtype

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
        # How the rows were laid out, so an error can name a row by its place in the
        # source (see source_row) without keeping the permutation.
        self._layout = ("whole" if n_val == 0 and n_test == 0 else
                        "in_place" if data.owns_memory else "copy", n, n_train, n_val)
        if n_val == 0 and n_test == 0:
            x, y = data.x, data.y  # one split: views, no copy
        elif data.owns_memory:
            return self._split_in_place(data, n_train, n_val)
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

    def _split_in_place(self, data: Dataset, n_train: int, n_val: int
                        ) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """The same split as a permuted copy, without a second copy of the table: val and
        test rows are gathered (in the permutation's order), then the training rows are
        moved to the front of the data's own storage, in their original order."""
        n = len(data)
        order = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed))
        x, y = data.x, data.y
        splits: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        if n_val:
            rows = order[n_train:n_train + n_val]
            splits["val"] = (x[rows], y[rows])
        if n_train + n_val < n:
            rows = order[n_train + n_val:]
            splits["test"] = (x[rows], y[rows])
        keep = order[:n_train].sort().values
        # keep[i] >= i, and sources only grow: a block's writes never land on rows a
        # later block still has to read.
        for lo in range(0, n_train, EVAL_BATCH_ROWS):
            rows = keep[lo:lo + EVAL_BATCH_ROWS]
            x[lo:lo + len(rows)] = x[rows]
            y[lo:lo + len(rows)] = y[rows]
        data.x, data.y = x[:n_train], y[:n_train]
        splits["train"] = (data.x, data.y)
        if not n_val:
            splits["val"] = splits["train"]
        return {k: splits[k] for k in ("train", "val", "test") if k in splits}

    def fold_indices(self) -> list[torch.Tensor]:
        """The training rows of each of the ``folds`` validation folds: a permutation of
        the training split (seeded by ``seed``) cut into near-equal parts, the first
        ``n % folds`` one row longer, as ``numpy.array_split`` cuts."""
        self.prepare()
        if not self.folds:
            raise ValueError("fold_indices: this data module has no folds (data.folds)")
        n = int(self.splits["train"][0].shape[0])
        if n < self.folds:
            raise DataError(f"data.folds: {self.folds} folds need at least {self.folds} "
                            f"training rows, the training split has {n}")
        order = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed + 1))
        return list(torch.tensor_split(order, self.folds))

    def fold(self, j: int, rows: list[torch.Tensor] | None = None) -> RegressionDataModule:
        """A view of this data module whose train split is every training row outside
        fold ``j`` and whose val split is fold ``j``; the scaling stays the run's, so a
        fold's losses are in the run's training units. ``rows``: :meth:`fold_indices`,
        when the caller has them already."""
        import copy

        rows = rows if rows is not None else self.fold_indices()
        x, y = self.splits["train"]
        val = rows[j]
        train = torch.cat([r for i, r in enumerate(rows) if i != j]).sort().values
        view = copy.copy(self)
        view.splits = {"train": (x[train], y[train]), "val": (x[val], y[val])}
        view.folds = None
        view._served, view._served_key, view._checked_dtype = {}, None, None
        return view

    @property
    def num_features(self) -> int:
        return self.prepare().num_features

    @property
    def val_is_train(self) -> bool:
        """Whether validation uses the training rows (``val_fraction=0``)."""
        self.prepare()
        return self.splits["val"] is self.splits["train"]

    @property
    def batch_device(self) -> torch.device:
        """Where batches are cut: the served copy's device once ``setup`` has run."""
        served = self._served.get("train") or self.splits["train"]
        return served[0].device

    @property
    def has_test(self) -> bool:
        self.prepare()
        return "test" in self.splits

    # -- Lightning hooks ----------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        """Prepare the data and its served copy: in the trainer's precision and, on an
        accelerator, on the device, so batches are cut there and nothing is copied per
        step."""
        self.prepare()
        t = self.trainer
        device = t.strategy.root_device if t is not None else torch.device("cpu")
        if stage in (None, "fit"):
            self.served(_serve_dtype(t), device)
        else:  # validate or test alone (an exact fit): no training copy is needed
            self._check_held_out(_serve_dtype(t), with_train=self.val_is_train)

    def _eval_batches(self, split: str) -> TensorBatches | ConvertedBatches:
        """Validation or test batches: the served training copy when validation is on
        the training rows, else the stored split converted a batch at a time."""
        if split == "val" and self.val_is_train:
            if self._served_key is not None:  # during a fit: cut from the served copy
                return self._batches("train", False, self._eval_batch_size())
            split = "train"  # validating alone: converted a batch at a time
        t = self.trainer
        dtype = _serve_dtype(t)
        device = t.strategy.root_device if t is not None else torch.device("cpu")
        scaling = self.scaling
        x, y = self.splits[split]

        def convert(xb: torch.Tensor, yb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return (scaling.x(xb).to(device, dtype, non_blocking=True),
                    scaling.y(yb).to(device, dtype, non_blocking=True))

        return ConvertedBatches(TensorBatches(x, y, self._eval_batch_size()), convert)

    def _batches(self, split: str, shuffle: bool, batch_size: int | None) -> TensorBatches:
        t = self.trainer
        served = self.served(_serve_dtype(t), t.strategy.root_device if t is not None
                             else "cpu")
        x, y = served[split]
        # Only training is sharded: every rank evaluates whole splits, so validation and
        # test figures agree across ranks without any collective.
        shard = split == "train" and t is not None and t.world_size > 1
        return TensorBatches(x, y, batch_size, shuffle=shuffle, seed=self.seed,
                             rank=t.global_rank if shard else 0,
                             world_size=t.world_size if shard else 1)
    def _eval_batch_size(self) -> int | None:
        """Evaluation needs no gradient, so its batches can be far larger than training's:
        each batch costs Lightning a fixed dispatch overhead that dwarfs a small model."""
        if self.batch_size is None:
            return None
        return max(int(self.batch_size), EVAL_BATCH_ROWS)

    def train_dataloader(self) -> TrainBatches:
        t = self.trainer
        # overfit_batches: Lightning trains on the same first batches every epoch (it
        # turns a DataLoader's shuffling off); the same here.
        shuffle = self.shuffle and not (t is not None and t.overfit_batches)
        return TrainBatches(self._batches("train", shuffle, self.batch_size),
                            lambda: t.current_epoch if t is not None else 0)

    def val_dataloader(self) -> TensorBatches | ConvertedBatches:
        return self._eval_batches("val")

    def test_dataloader(self) -> TensorBatches | ConvertedBatches:
        return self._eval_batches("test")
