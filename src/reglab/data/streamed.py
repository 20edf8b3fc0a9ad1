"""A Lightning data module over a table too large to hold: read a unit at a time.

Memory is bounded by one block of a unit (65,536 rows of a Parquet row group, or a block
of a CSV file), one shuffle window and a few batches, not by the table's rows:

- **Splits** follow from each row's global number and the seed (``row_split``), so no
  permutation of the table is ever formed and every rank agrees on every row.
- **Scaling** statistics come from one pass (the *census*) that also counts each unit's
  rows per split and checks every cell; under data-parallel training each rank reads its
  own units and the per-unit results are gathered, then merged in unit order, so the
  statistics are the same bits whatever the number of ranks.
- **Training order**: epoch ``e`` visits the units in a permutation seeded by
  ``(seed, e)``; the training rows in that order are cut into ``lanes`` contiguous
  stretches, each shuffled a window of ``shuffle_rows`` rows at a time. Global batch ``k``
  is the ``k``-th piece of every lane; under DDP each rank reads only its own lanes, so
  the rows are read once and by one rank, every rank takes the same number of batches,
  and a run gives the same batches on any number of ranks that divides ``lanes``.
  An epoch is ``train rows // batch_size`` full batches: the few rows past the last full
  batch (different ones each epoch) wait for a later epoch, as with ``drop_last``.
- **Validation and test** are divided across ranks by rows; the module's sums are
  reduced across ranks, so the figures are those of one process.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch

from reglab.data import row_split
from reglab.data.datamodule import TrainBatches, _serve_dtype
from reglab.data.moments import Moments
from reglab.data.scaling import Scaling
from reglab.data.table_stream import Block, TableStream, Unit
from reglab.errors import DataError

#: Rows of a block: its columns and the indices of the rows wanted.
Piece = tuple[list[np.ndarray], np.ndarray]

#: A callable the census hands every block to: (block, split codes). One whose
#: ``gives_moments`` is true gives the training rows' moments (``train_moments()``);
#: under data parallelism its ``merge_ranks(world)`` is called after the pass.
Sink = Callable[[Block, np.ndarray], None]


class Census:
    """What one pass learned: each unit's rows per split, its training rows' moments
    (features then targets) and each column's least and greatest value in it."""

    def __init__(self, counts: np.ndarray, moments: list[Moments],
                 extremes: np.ndarray) -> None:
        self.counts = counts  # (units, 3): train, val, test rows
        self.moments = moments
        self.extremes = extremes  # (units, 2, columns): min, max over every row

    def total(self, split: int) -> int:
        return int(self.counts[:, split].sum())

    def merged(self) -> Moments:
        out = self.moments[0]
        for m in self.moments[1:]:
            out = out.merge(m)
        return out


class SplitRows:
    """The rows of one split in a given order of units, addressed by their position in
    that sequence; a stretch of them is read front to back, each unit it overlaps once."""

    def __init__(self, dm: StreamedDataModule, split: int, order: np.ndarray,
                 purpose: str = "eval") -> None:
        self.dm, self.split, self.order, self.purpose = dm, split, order, purpose
        counts = dm.census.counts[order, split]
        self.cum = np.concatenate([[0], np.cumsum(counts)])

    def __len__(self) -> int:
        return int(self.cum[-1])

    def units(self, lo: int, hi: int) -> list[int]:
        """The units :meth:`stream` reads for rows ``lo`` to ``hi``."""
        first = int(np.searchsorted(self.cum, lo, side="right")) - 1
        last = int(np.searchsorted(self.cum, hi, side="left"))
        return [int(self.order[j]) for j in range(max(first, 0), min(last, len(self.order)))
                if self.cum[j + 1] > self.cum[j]]

    def stream(self, lo: int, hi: int) -> Iterator[Piece]:
        """Rows ``lo`` to ``hi`` (exclusive) of the sequence, as (a block's columns, the
        indices of its rows wanted) in reading order; units wholly before ``lo`` are
        skipped unread (their counts are known)."""
        dm = self.dm
        j = int(np.searchsorted(self.cum, lo, side="right")) - 1
        while lo < hi and j < len(self.order) and int(self.cum[j]) < hi:
            seen = int(self.cum[j])
            if int(self.cum[j + 1]) > lo:  # holds rows of the stretch
                for block in dm._read(dm.table.units[int(self.order[j])], self.purpose):
                    rows = np.flatnonzero(dm.codes(block) == self.split)
                    a, b = max(lo - seen, 0), min(hi - seen, len(rows))
                    if a < b:
                        yield block.columns, rows[a:b]
                    seen += len(rows)
                    if seen >= hi:
                        break
            j += 1


def _windows(pieces: Iterator[Piece], width: int, sizes: Iterator[int]
             ) -> Iterator[np.ndarray]:
    """The pieces' rows repacked into consecutive windows of ``next(sizes)`` rows (the
    last may be shorter), one row per column: (columns, rows), float64, in reading
    order. One buffer is reused: windows stay a few MB and the allocator reuses their
    memory instead of mapping fresh pages for each."""
    buffer = np.empty((width, 0))
    rest: Piece | None = None
    for size in sizes:
        if buffer.shape[1] < size:
            buffer = np.empty((width, size))
        filled = 0
        while filled < size:
            if rest is None or len(rest[1]) == 0:
                rest = next(pieces, None)
                if rest is None:
                    break
            columns, rows = rest
            take = rows[:size - filled]
            for j, column in enumerate(columns):
                np.take(column, take, out=buffer[j, filled:filled + len(take)])
            rest = (columns, rows[size - filled:])
            filled += len(take)
        if filled == 0:
            return
        yield buffer[:, :filled]
        if filled < size:
            return


def _ahead(produce: Iterator[Any], pool: Any, depth: int = 2) -> Iterator[Any]:
    """``produce``'s items, made on a thread of ``pool`` up to ``depth`` ahead: decoding
    the next row group (pyarrow and numpy release the GIL) overlaps the training steps
    on the current window. The order is ``produce``'s own; an error there is raised
    here; a consumer that stops early stops the producer.

    The pool's threads live as long as the data module: glibc gives each new thread a
    heap arena of its own, and a fresh thread per epoch grew the process by an arena's
    worth of retained memory every epoch (~20 MB at 3·10⁷ rows)."""
    import queue
    import threading

    items: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: tuple[str, Any]) -> bool:
        while not stop.is_set():
            try:
                items.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def run() -> None:
        try:
            for item in produce:
                if not put(("item", item)):
                    return
            put(("end", None))
        except BaseException as exc:  # handed to the consumer, raised there
            put(("error", exc))

    worker = pool.submit(run)
    try:
        while True:
            kind, value = items.get()
            if kind == "end":
                return
            if kind == "error":
                raise value
            yield value
    finally:
        stop.set()
        worker.result()


class StreamedBatches:
    """This rank's training batches: ``num_minibatches`` and ``minibatches(epoch,
    start)``, the shape :class:`~reglab.data.datamodule.TrainBatches` serves and resumes."""

    def __init__(self, dm: StreamedDataModule, rank: int, world: int, shuffle: bool) -> None:
        self.dm, self.shuffle = dm, shuffle
        train = dm.census.total(row_split.TRAIN)
        lanes = dm.lane_count(world)
        batch = min(int(dm.batch_size), train)
        self.num_minibatches = max(1, train // batch)
        sizes = [batch * (i + 1) // lanes - batch * i // lanes for i in range(lanes)]
        if min(sizes) < 1:
            raise DataError(f"data.batch_size: {batch} rows cannot be shared by "
                            f"{lanes} lanes (data.lanes); every lane needs a row")
        starts = [self.num_minibatches * (batch * i // lanes) for i in range(lanes)]
        self.lanes = [(i, starts[i], sizes[i]) for i in range(rank, lanes, world)]

    def minibatches(self, epoch: int, start: int = 0
                    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        dm = self.dm
        units = len(dm.table.units)
        order = (np.random.default_rng([dm.seed, int(epoch)]).permutation(units)
                 if self.shuffle else np.arange(units))
        rows = SplitRows(dm, row_split.TRAIN, order, "train")
        lanes = [self._lane(rows, epoch, i, first, size, start)
                 for i, first, size in self.lanes]
        for parts in zip(*lanes, strict=True):
            if len(parts) == 1:
                yield parts[0]
            else:
                yield torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])

    def _lane(self, rows: SplitRows, epoch: int, lane: int, first: int, size: int,
              start: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """One lane's batches of ``size`` rows from batch ``start`` on, shuffled a window
        at a time (windows sit at fixed places in the lane, so a resume finds them)."""
        dm = self.dm
        length = self.num_minibatches * size
        window = max(size, int(dm.shuffle_rows) // size * size)
        w = start * size // window
        skip = start * size - w * window
        starts = range(w * window, length, window)

        def windows(convert: Callable[..., Any]) -> Iterator[Any]:
            pieces = rows.stream(first + w * window, first + length)
            blocks = _windows(pieces, len(dm.table.names),
                              (min(window, length - lo) for lo in starts))
            cut = skip
            for lo, block in zip(starts, blocks, strict=False):
                order = None
                if self.shuffle:  # the window's seeded shuffle, then the resume's cut
                    order = np.random.default_rng([dm.seed, int(epoch), lane, lo]
                                                  ).permutation(block.shape[1])[cut:]
                elif cut:
                    order = np.arange(cut, block.shape[1])
                yield convert(block, order)
                cut = 0

        device = dm.device()
        if dm.workers:  # read in the worker: counted here, where the record is written
            dm.note_reads(rows.units(first + w * window, first + length), "train")
            ring = _Ring(window, dm.table.width, len(dm.table.targets),
                         _serve_dtype(dm.trainer))
            made = (ring.window(item) for item in _in_worker(lambda: windows(ring.fill_from(dm))))
        else:
            made = _ahead(windows(lambda block, order: dm.convert(block, order, on_device=False)),
                          dm.pool("train", len(self.lanes)))
        for x, y in made:
            # Out of the ring (or off to the device): a batch never shares a slot the
            # worker writes again, whatever a callback keeps of it.
            x, y = x.to(device, non_blocking=True, copy=dm.workers > 0), \
                y.to(device, non_blocking=True, copy=dm.workers > 0)
            for i in range(0, int(x.shape[0]), size):
                yield x[i:i + size], y[i:i + size]


class _Ring:
    """Window slots in memory shared with a forked loader worker: the worker writes its
    ``j``-th window into slot ``j`` mod the slot count, and only (slot, rows) crosses to
    the trainer's process. No window is allocated, pickled or mapped afresh, so the
    worker's memory stays flat and its pages are not faulted in again each window.

    Slots enough that none is written while read: the loader keeps ``PREFETCH`` windows
    requested ahead of the one the trainer reads, and asks for the next only once the
    trainer has moved past a window (its batches are copied out, see ``_lane``)."""

    def __init__(self, rows: int, width: int, targets: int, dtype: torch.dtype) -> None:
        slots = PREFETCH + 2
        try:
            self.x = torch.empty((slots, rows, width), dtype=dtype).share_memory_()
            self.y = torch.empty((slots, rows, targets), dtype=dtype).share_memory_()
        except RuntimeError as exc:  # /dev/shm too small (64 MB in a default container)
            size = slots * rows * (width + targets) * dtype.itemsize / 2**20
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            raise DataError(f"data.workers: the loader worker's {slots} window slots "
                            f"({size:,.0f} MB) do not fit in shared memory ({reason}); use "
                            "data.workers=0 (a thread) or a smaller data.shuffle_rows"
                            ) from None
        self.made = 0  # counted in the worker, which has its own copy

    def fill_from(self, dm: StreamedDataModule) -> Callable[..., tuple[int, int]]:
        """``convert(block, order)`` writing into the next slot (in the worker)."""

        def fill(block: np.ndarray, order: np.ndarray | None) -> tuple[int, int]:
            slot = self.made % len(self.x)
            self.made += 1
            x, _ = dm.convert(block, order, on_device=False, out=(self.x[slot], self.y[slot]))
            return slot, int(x.shape[0])

        return fill

    def window(self, item: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        slot, rows = item
        return self.x[slot, :rows], self.y[slot, :rows]


#: Windows the loader worker makes ahead of the one being trained on.
PREFETCH = 2
#: Seconds a pass over the table runs before its progress bar appears.
BAR_DELAY = 0.5


class _Produced(torch.utils.data.IterableDataset):
    """A producer's items for a loader worker; an error is handed over as an item, so
    it is raised in the trainer's process as itself (one line), not as the multi-line
    report a worker's exception becomes."""

    def __init__(self, produce: Callable[[], Iterator[Any]]) -> None:
        self.produce = produce

    def __iter__(self) -> Iterator[Any]:
        try:
            for item in self.produce():
                yield ("item", item)
        except Exception as exc:  # raised again by _in_worker, in the trainer's process
            yield ("error", exc)


def _worker_memory(_: int) -> None:
    """A forked worker's memory kept to its own windows: the objects it inherited leave
    the garbage collector's generations, so no collection walks them and copies their
    pages. (Its windows go into the ring's shared slots, so nothing window-sized is
    allocated per window: its private memory measured 106 MB at 10⁶ rows, 123 MB at
    3·10⁷.)"""
    import gc

    gc.freeze()


def _in_worker(produce: Callable[[], Iterator[Any]]) -> Iterator[Any]:
    """``produce()``'s items made in a forked loader worker process, two ahead: the
    training loop holds the GIL most of the time, so a thread of this process would
    wait its turn, where a process reads, shuffles and casts on the other core."""
    loader = torch.utils.data.DataLoader(_Produced(produce), batch_size=None, num_workers=1,
                                         prefetch_factor=PREFETCH, worker_init_fn=_worker_memory,
                                         multiprocessing_context="fork")
    for kind, value in loader:
        if kind == "error":
            raise value
        yield value


class EvalBatches:
    """This rank's share of a split's rows (a contiguous stretch in unit order), in
    batches of ``rows``."""

    def __init__(self, dm: StreamedDataModule, split: int, rank: int, world: int,
                 rows: int, name: str = "validation") -> None:
        self.dm, self.rows, self.rank, self.name = dm, int(rows), rank, name
        self.seq = SplitRows(dm, split, np.arange(len(dm.table.units)))
        total = len(self.seq)
        self.lo, self.hi = total * rank // world, total * (rank + 1) // world

    def __len__(self) -> int:
        return math.ceil((self.hi - self.lo) / self.rows)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        sizes = (min(self.rows, self.hi - lo) for lo in range(self.lo, self.hi, self.rows))
        blocks = _windows(self.seq.stream(self.lo, self.hi), len(self.dm.table.names), sizes)
        # The pass reads the whole table (every unit holds some of the split's rows):
        # seconds to minutes on a large one, shown on a terminal like the census.
        bar = self.dm._bar(f"{self.name}: reading the table", self.hi - self.lo, self.rank)
        try:
            for x, y in _ahead((self.dm.convert(block) for block in blocks),
                               self.dm.pool("eval")):
                if bar is not None:
                    bar.update(int(x.shape[0]))
                yield x, y
        finally:
            if bar is not None:
                bar.close()


class StreamedDataModule(pl.LightningDataModule):
    """Train, validate and test on a table read a unit at a time (see the module's
    docstring). ``path``: a Parquet or CSV file, a directory of them or a glob.

    ``lanes``: the number of stretches each epoch's training rows are cut into (default:
    one per rank); fix it to get the same batches on any number of ranks dividing it.
    ``workers``: 1 makes the training windows in a loader worker process, 0 on a thread.
    ``folds``: K-fold cross-validation with ``optimizer=exact`` (in the same pass).
    ``scaling``: a trained model's own (evaluation), applied instead of fitting one.
    """

    #: Validation and test rows are divided across ranks, their sums reduced.
    divides_evaluation = True

    def __init__(self, path: str, target: str | Sequence[str],
                 features: Sequence[str] | None = None, delimiter: str = ",",
                 batch_size: int = 4096, shuffle: bool = True, val_fraction: float = 0.1,
                 test_fraction: float = 0.2, seed: int = 0, standardize: bool = True,
                 standardize_target: bool = False, shuffle_rows: int = 1 << 16,
                 lanes: int | None = None, eval_batch_rows: int = 1 << 16,
                 workers: int = 1, folds: int | None = None,
                 scaling: Scaling | None = None) -> None:
        super().__init__()
        for key, value, low in (("batch_size", batch_size, 1), ("shuffle_rows", shuffle_rows, 1),
                                ("eval_batch_rows", eval_batch_rows, 1),
                                ("lanes", 1 if lanes is None else lanes, 1),
                                ("workers", workers, 0)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise DataError(f"data.{key}: expected an integer ≥ {low}, got {value!r}")
        for key, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or \
                    not 0 <= value < 1:
                raise DataError(f"data.{key}: expected a number in [0, 1), got {value!r}")
        if val_fraction + test_fraction >= 1:
            raise DataError("data: val_fraction + test_fraction must leave rows to train on")
        if folds is not None:
            from reglab.config.checks import check_folds

            check_folds(folds, float(val_fraction))
        #: K: K-fold cross-validation of the exact fit, each training row's fold drawn
        #: from its row number and the seed (``row_split.fold_codes``).
        self.folds = folds
        self.table = TableStream(path, target, features, delimiter)
        self.batch_size, self.shuffle = int(batch_size), bool(shuffle)
        self.val_fraction, self.test_fraction = float(val_fraction), float(test_fraction)
        self.seed = int(seed)
        self.standardize, self.standardize_target = bool(standardize), bool(standardize_target)
        self.shuffle_rows, self.lanes, self.eval_batch_rows = shuffle_rows, lanes, eval_batch_rows
        #: 1: training windows are made in a loader worker process; 0: on a thread.
        self.workers = int(workers)
        self._scaling_given = scaling is not None
        #: Filled in place by the census: the module holds this very object.
        self.scaling = scaling if scaling is not None else Scaling()
        self.census: Census | None = None
        #: Also handed every block of the census fit starts (the exact fit's factors).
        self.sink: Sink | None = None
        self.units_read: list[int] = []  # every unit read, in order (tests count them)
        #: Units read per purpose (census, train, eval): the record shows a rank's share.
        self.reads: dict[str, int] = {}
        self._pools: dict[str, tuple[Any, int]] = {}

    # -- what reglab asks of any data module ----------------------------------------------
    @property
    def num_features(self) -> int:
        return self.table.width

    @property
    def feature_names(self) -> list[str]:
        return self.table.feature_names

    @property
    def target_name(self) -> str | list[str]:
        t = self.table.targets
        return t[0] if len(t) == 1 else list(t)

    @property
    def has_test(self) -> bool:
        return self.test_fraction > 0 and (self.census is None or
                                           self.census.total(row_split.TEST) > 0)

    @property
    def val_is_train(self) -> bool:
        return self.val_fraction == 0

    def lane_count(self, world: int) -> int:
        lanes = int(self.lanes or world)
        if lanes % world:
            raise DataError(f"data.lanes: {lanes} lanes cannot be shared by {world} ranks; "
                            "use a multiple of the number of ranks")
        return lanes

    def pool(self, purpose: str, threads: int = 1) -> Any:
        """The long-lived reading threads for ``purpose`` (census, train, eval)."""
        from concurrent.futures import ThreadPoolExecutor

        held = self._pools.get(purpose)
        if held is None or held[1] < threads:
            held = (ThreadPoolExecutor(threads, thread_name_prefix=f"reglab-{purpose}"),
                    threads)
            self._pools[purpose] = held
        return held[0]

    def __getstate__(self) -> dict[str, Any]:  # threads do not travel
        return {**self.__dict__, "_pools": {}}

    # -- reading --------------------------------------------------------------------------
    def codes(self, block: Block) -> np.ndarray:
        return row_split.split_codes(block.rows, self.seed, self.val_fraction,
                                     self.test_fraction)

    def _read(self, unit: Unit, purpose: str = "eval") -> Iterator[Block]:
        self.note_reads([unit.index], purpose)
        return self.table.read(unit)

    def note_reads(self, units: list[int], purpose: str) -> None:
        self.units_read.extend(units)
        self.reads[purpose] = self.reads.get(purpose, 0) + len(units)

    def device(self) -> torch.device:
        t = self.trainer
        return t.strategy.root_device if t is not None else torch.device("cpu")

    def convert(self, block: np.ndarray, order: np.ndarray | None = None,
                on_device: bool = True, out: tuple[torch.Tensor, torch.Tensor] | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows given one per column, (columns, rows) float64, as the model sees them:
        scaled, in the trainer's precision, row-major, on its device; never sharing the
        given memory, a reused buffer that is scaled in place (no temporary of its size
        per window: the eval thread's heap stays the size of one). ``order``: the rows
        to serve, in order (a shuffle), default all. ``out``: CPU (x, y) buffers of at
        least that many rows to write into (a ring slot); the rows written are
        returned."""
        dtype = _serve_dtype(self.trainer) if out is None else out[0].dtype
        device = self.device() if on_device and out is None else torch.device("cpu")
        raw = torch.from_numpy(block).T  # (rows, columns), column-major
        d = self.table.width
        served_rows = raw.shape[0] if order is None else len(order)
        result = []
        for k, (part, scale) in enumerate(((raw[:, :d], self.scaling.x_),
                                           (raw[:, d:], self.scaling.y_))):
            scaled = scale(part)
            target = (out[k][:served_rows] if out is not None else
                      torch.empty((served_rows, part.shape[1]), dtype=dtype))
            if order is None:  # one pass: cast and laid out row by row
                target.copy_(scaled)
            else:  # cast, then rows of a few dozen bytes gathered: a cheap shuffle
                cast = torch.empty(tuple(part.shape), dtype=dtype)
                cast.copy_(scaled)
                torch.index_select(cast, 0, torch.from_numpy(order), out=target)
            result.append(target.to(device, non_blocking=True))
        x, y = result
        # A finite sum means every value is finite (one reduction, no mask); only an
        # overflowing sum needs the cell by cell check.
        if not all(bool(torch.isfinite(t.sum())) or bool(torch.isfinite(t).all())
                   for t in (x, y)):
            raise DataError(f"data: a value is beyond {str(dtype).removeprefix('torch.')}'s "
                            "range as the model sees it; use data.standardize=true or "
                            "trainer.precision=64-true")
        return x, y

    def use_scaling(self, scaling: Scaling) -> None:
        """A trained model's own scaling, kept instead of fitting one (evaluation)."""
        self.scaling, self._scaling_given = scaling, True

    def raw_rows(self, split: str) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(x, y) of ``split`` (``train``, ``val``, ``test`` or ``all``) in data units and
        float64, a unit at a time."""
        code = {"train": row_split.TRAIN, "test": row_split.TEST,
                "val": row_split.TRAIN if self.val_is_train else row_split.VAL}.get(split)
        d = self.table.width
        for unit in self.table.units:
            for block in self._read(unit):
                rows = block.values if code is None else block.values[self.codes(block) == code]
                if len(rows):
                    t = torch.from_numpy(rows)
                    yield t[:, :d], t[:, d:]

    # -- the census -----------------------------------------------------------------------
    def take_census(self, rank: int = 0, world: int = 1, sink: Sink | None = None) -> Census:
        """One pass over this rank's units (every ``world``-th): rows per split, the
        training rows' moments, every cell checked; gathered from all ranks when a
        process group is running. ``sink`` also gets each block (the exact fit)."""
        width = len(self.table.names)
        mine: dict[int, tuple[np.ndarray, Moments, np.ndarray]] = {
            unit.index: (np.zeros(3, dtype=np.int64), Moments.empty(width),
                         np.array([[np.inf] * width, [-np.inf] * width]))
            for unit in self.table.units[rank::world]}

        # With a sink that can give the moments (the exact fit's R), they are not
        # summed twice.
        summed = not getattr(sink, "gives_moments", False)

        def blocks() -> Iterator[tuple[int, Block, np.ndarray, np.ndarray | None]]:
            # Read, checked and split on the reading thread; summed on this one.
            for unit in self.table.units[rank::world]:
                for block in self._read(unit, "census"):
                    codes = self.codes(block)
                    if len(block):
                        low, high = mine[unit.index][2]
                        np.minimum(low, [c.min() for c in block.columns], out=low)
                        np.maximum(high, [c.max() for c in block.columns], out=high)
                    yield unit.index, block, codes, (
                        block.values[codes == row_split.TRAIN] if summed else None)

        bar = self._bar("census: reading every row once",
                        sum(u.rows for u in self.table.units[rank::world]), rank)
        for index, block, codes, train in _ahead(blocks(), self.pool("census"), depth=4):
            if bar is not None:
                bar.update(len(block))
            counts, moments, extremes = mine[index]
            counts += np.bincount(codes, minlength=3)[:3]
            if train is not None:
                mine[index] = (counts, moments.merge(Moments.of(train)), extremes)
            if sink is not None:
                sink(block, codes)
        if bar is not None:
            bar.close()
        if world > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
            gathered: list[Any] = [None] * world
            torch.distributed.all_gather_object(gathered, mine)
            for part in gathered:
                mine.update(part)
            if sink is not None:
                sink.merge_ranks(world)
        units = len(self.table.units)
        census = Census(np.stack([mine[i][0] for i in range(units)]),
                        [mine[i][1] for i in range(units)] if summed
                        else [sink.train_moments()],
                        np.stack([mine[i][2] for i in range(units)]))
        if census.total(row_split.TRAIN) == 0:
            raise DataError(f"data: {self.table.files[0]}: no training rows (the table has "
                            f"{int(census.counts.sum())} rows)")
        self.census = census
        if not self._scaling_given:
            self._fit_scaling(census.merged())
        return census

    def _bar(self, what: str, rows: int, rank: int) -> Any:
        """A bar over a pass's rows (the census, validation, test), on a terminal only,
        from rank 0, once the pass has run ``BAR_DELAY`` seconds (a small table's pass
        ends without one); none when the trainer shows no progress bar
        (``callbacks.progress_bar=null``)."""
        import sys

        t = self.trainer
        if rank != 0 or (t is not None and t.progress_bar_callback is None):
            return None
        try:
            if not sys.stderr.isatty():
                return None
        except (AttributeError, ValueError):  # replaced or closed streams
            return None
        from reglab.compat import tqdm_with_thread_lock

        bar = tqdm_with_thread_lock()
        return bar(total=rows, desc=what, unit="row", unit_scale=True, delay=BAR_DELAY,
                   leave=False, file=sys.stderr, dynamic_ncols=True)

    def _fit_scaling(self, moments: Moments) -> None:
        d = self.table.width
        std = moments.std()
        std = np.where(std > 0, std, 1.0)
        if self.standardize:
            self.scaling.x_mean = moments.mean[:d].tolist()
            self.scaling.x_std = std[:d].tolist()
        if self.standardize_target:
            mean, scale = moments.mean[d:].tolist(), std[d:].tolist()
            self.scaling.y_mean = mean[0] if len(mean) == 1 else mean
            self.scaling.y_std = scale[0] if len(scale) == 1 else scale

    def check_range(self, dtype: torch.dtype) -> None:
        """Values finite as read but not in ``dtype`` once scaled (1e39 in float32),
        refused before any batch is served and named by file, row and column as every
        bad cell is, with the setting that helps. Scaling is affine in each column, so
        each unit's least and greatest values (the census's) decide."""
        census, d = self.census, self.table.width
        limit = torch.finfo(dtype).max
        low, high = census.extremes[:, 0], census.extremes[:, 1]  # (units, columns)
        seen = np.isfinite(low)  # a unit without rows has none
        for part, scale, cols, scaled, key in (
                (slice(0, d), self.scaling.x, range(d), self.standardize, "data.standardize"),
                (slice(d, None), self.scaling.y, range(d, low.shape[1]),
                 self.standardize_target, "data.standardize_target")):
            if not len(cols):
                continue
            both = np.concatenate([np.where(seen, low, 0.0), np.where(seen, high, 0.0)])
            out = scale(torch.from_numpy(both[:, part])).abs().numpy()
            bad = np.argwhere(~(out <= limit))
            if len(bad) == 0:
                continue
            row, col = (int(v) for v in bad[0])
            unit = self.table.units[row % len(low)]
            value = both[row, cols[col]]
            fix = "trainer.precision=64-true" if scaled else \
                f"{key}=true or trainer.precision=64-true"
            raise DataError(f"{self._find(unit, cols[col], value)}: {value:g} is beyond "
                            f"{str(dtype).removeprefix('torch.')}'s range as the model "
                            f"sees it; use {fix}")

    def _find(self, unit: Unit, column: int, value: float) -> str:
        """The first cell of ``column`` in ``unit`` holding ``value`` (error path only)."""
        first = 0
        for block in self.table.read(unit):
            hit = np.flatnonzero(block.columns[column] == value)
            if len(hit):
                return self.table.cell(unit, first + int(hit[0]), self.table.names[column])
            first += len(block)
        return f"{unit.file}, column {self.table.names[column]!r}"

    def describe(self) -> dict[str, Any]:
        """What the run record says of the stream: its files and units, rows per split,
        the epoch's shape, and the units this process read."""
        c = self.census
        _, world = self._rank_world()
        train = c.total(row_split.TRAIN) if c is not None else None
        batch = min(self.batch_size, train) if train else None
        epoch = max(1, train // batch) if batch else None
        return {
            "files": len(self.table.files), "units": len(self.table.units),
            "unit": "row group" if self.table.parquet else "file",
            "rows": None if c is None else {"train": train, "val": c.total(row_split.VAL),
                                            "test": c.total(row_split.TEST)},
            "batches_per_epoch": epoch,
            "rows_left_per_epoch": None if epoch is None else train - epoch * batch,
            "lanes": int(self.lanes or world),
            # Units this process (rank 0) read, by purpose: its share of the table.
            "units_read": dict(self.reads),
        }

    # -- Lightning hooks ------------------------------------------------------------------
    def _rank_world(self) -> tuple[int, int]:
        t = self.trainer
        return (int(t.global_rank), int(t.world_size)) if t is not None else (0, 1)

    def setup(self, stage: str | None = None) -> None:
        if self.census is None:
            self.take_census(*self._rank_world(), sink=self.sink)
        self.check_range(_serve_dtype(self.trainer))
        _, world = self._rank_world()
        for split, name, used in ((row_split.VAL, "val", self.val_fraction > 0),
                                  (row_split.TEST, "test", self.test_fraction > 0)):
            if used and self.census.total(split) < world:
                raise DataError(f"data.{name}_fraction: the {name} split has "
                                f"{self.census.total(split)} rows, fewer than the {world} "
                                "ranks sharing it")

    def train_dataloader(self) -> TrainBatches:
        t = self.trainer
        rank, world = self._rank_world()
        shuffle = self.shuffle and not (t is not None and t.overfit_batches)
        return TrainBatches(StreamedBatches(self, rank, world, shuffle),
                            lambda: t.current_epoch if t is not None else 0)

    def _eval(self, split: int, name: str) -> EvalBatches:
        rank, world = self._rank_world()
        return EvalBatches(self, split, rank, world,
                           max(self.eval_batch_rows, self.batch_size), name)

    def val_dataloader(self) -> EvalBatches:
        return self._eval(row_split.TRAIN if self.val_is_train else row_split.VAL,
                          "validation")

    def test_dataloader(self) -> EvalBatches | list[Any]:
        return self._eval(row_split.TEST, "test") if self.has_test else []
