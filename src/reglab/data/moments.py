"""Column means and variances that merge: one streamed pass, any number of parts.

Each part keeps (count, mean, sum of squared deviations) in float64, found exactly
within its block by two passes over that block; parts combine by Chan et al.'s update,
which never subtracts two large sums, so a column near 1e8 with spread 1 keeps its
digits where Σx² − n·x̄² would lose them all.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Moments:
    """Per-column count, mean and M2 (Σ(x − mean)²) of the rows seen so far."""

    count: int
    mean: np.ndarray
    m2: np.ndarray

    @classmethod
    def empty(cls, width: int) -> Moments:
        return cls(0, np.zeros(width), np.zeros(width))

    @classmethod
    def of(cls, block: np.ndarray) -> Moments:
        """The moments of a (rows × columns) float64 block."""
        n = int(block.shape[0])
        if n == 0:
            return cls.empty(int(block.shape[1]))
        mean = block.mean(axis=0)
        dev = block - mean
        return cls(n, mean, np.einsum("ij,ij->j", dev, dev))

    def merge(self, other: Moments) -> Moments:
        """These rows and ``other``'s together."""
        if other.count == 0:
            return self
        if self.count == 0:
            return other
        n = self.count + other.count
        delta = other.mean - self.mean
        mean = self.mean + delta * (other.count / n)
        m2 = self.m2 + other.m2 + delta * delta * (self.count * (other.count / n))
        return Moments(n, mean, m2)

    def std(self) -> np.ndarray:
        """Population standard deviations (divided by the count, as the in-memory
        scaling is)."""
        return np.sqrt(self.m2 / max(self.count, 1))
