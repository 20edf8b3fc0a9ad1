"""Which split a row belongs to, from its global row number and the seed alone.

A streamed table is never held whole, so it cannot be permuted to cut train, val and test
as the in-memory path does. Each row's split is instead a pure function of (seed, row):
every rank, every epoch, every later ``reglab-eval`` agrees on it without talking to the
others, and reading the rows in any order gives the same answer.
"""

from __future__ import annotations

import numpy as np

TRAIN, VAL, TEST = 0, 1, 2

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


def _mix(z: np.ndarray) -> np.ndarray:
    """SplitMix64's finalizer: consecutive inputs give independent-looking 64-bit words."""
    z = (z ^ (z >> np.uint64(30))) * _M1
    z = (z ^ (z >> np.uint64(27))) * _M2
    return z ^ (z >> np.uint64(31))


def uniform(rows: np.ndarray, seed: int, stream: int = 0) -> np.ndarray:
    """A number in [0, 1) per row, fixed by (seed, stream, row)."""
    key = _mix(np.array([(int(seed) * 1_000_003 + int(stream)) % 2**64], dtype=np.uint64))
    with np.errstate(over="ignore"):
        z = _mix(rows.astype(np.int64, copy=False).view(np.uint64) * _GOLDEN + key[0])
    return (z >> np.uint64(11)).astype(np.float64) * (1.0 / 2**53)


def split_codes(rows: np.ndarray, seed: int, val_fraction: float, test_fraction: float
                ) -> np.ndarray:
    """``TRAIN``, ``VAL`` or ``TEST`` for each global row number in ``rows``: each row is
    a test row with probability ``test_fraction`` and a validation row with
    ``val_fraction``, so the splits' sizes are those shares up to sampling noise."""
    u = uniform(rows, seed)
    codes = np.zeros(len(rows), dtype=np.uint8)
    codes[u < test_fraction + val_fraction] = VAL
    codes[u < test_fraction] = TEST
    return codes


def fold_codes(rows: np.ndarray, seed: int, folds: int) -> np.ndarray:
    """The cross-validation fold (0 to ``folds`` − 1) of each global row number: drawn
    from a stream of its own, so a row's fold says nothing of its split."""
    return np.minimum((uniform(rows, seed, stream=1) * folds).astype(np.int64), folds - 1)
