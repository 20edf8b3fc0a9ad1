"""Synthetic regression data sets, each reproducible from a seed.

Each returns a :class:`~reglab.data.dataset.Dataset` in float64 and carries the
parameters that produced it, so a run can report how far its learned ones are.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from reglab.data.dataset import Dataset
from reglab.errors import DataError

#: Rows per block when drawing large synthetic sets (a multiple of 16).
_BLOCK = 1 << 16


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(seed))


#: Bytes a run holds per float64 cell of its data at its peak: the table, its splits and
#: the copy training casts (2.8x measured at 10**6 rows, benchmarks/results.md).
_PEAK_COPIES = 3


def available_memory() -> int | None:
    """Bytes this process may still take: the smaller of the kernel's MemAvailable and
    the address-space limit (``ulimit -v``), or None where neither can be read."""
    import resource

    limits = []
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    limits.append(int(line.split()[1]) * 1024)
    except OSError:
        pass
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft != resource.RLIM_INFINITY:
        limits.append(soft)
    return min(limits) if limits else None


def _fits(num_samples: int, columns: int, key: str = "num_samples") -> None:
    """Refuse, in one line, a generated table this machine cannot hold, before any of it
    is allocated (2e9 rows would otherwise end in the kernel's OOM killer or a MemoryError
    traceback minutes later)."""
    if num_samples < 1:
        raise ValueError(f"{key} must be at least 1, got {num_samples}")
    need = num_samples * columns * 8 * _PEAK_COPIES
    have = available_memory()
    if have is not None and need > have:
        raise DataError(f"data.source.{key}: {num_samples:,} rows of {columns} float64 "
                        f"columns need about {need / 2**30:.1f} GB (the table, its splits and "
                        f"the copy training makes); {have / 2**30:.1f} GB is available")


def _grid(start: float, stop: float, num: int) -> torch.Tensor:
    _fits(num, 2, "num")
    return torch.linspace(start, stop, num, dtype=torch.float64).unsqueeze(1)


def _truth(weight: Sequence[float], bias: float | None) -> dict:
    return {"weight": [[float(w) for w in weight]], "bias": None if bias is None else float(bias)}


def _finish(x: torch.Tensor, y: torch.Tensor, truth: dict | None) -> Dataset:
    # Kept in float64: the truth is exact and the least-squares report sees these values.
    # Nobody else holds these tensors, so the split may reuse their storage.
    return Dataset(x.contiguous(), y.contiguous(), truth, owns_memory=True)


def line(a: float = 2.0, b: float = 1.0, start: float = 0.0, stop: float = 10.0,
         num: int = 11) -> Dataset:
    """y = a·x + b on ``num`` evenly spaced points, no noise."""
    x = _grid(start, stop, num)
    return _finish(x, a * x + b, _truth([a], b))


def linear(weight: Sequence[float] = (2.0, -3.4), bias: float = 4.2, noise: float = 0.01,
           num_samples: int = 1000, seed: int = 0) -> Dataset:
    """y = X·w + b + N(0, noise²) with standard normal features.

    Drawn a block of rows at a time (the values are the same as one draw of the whole
    set: blocks are whole multiples of the generator's 16-value batch), so no temporary
    the size of the set is made besides the set itself.
    """
    _fits(num_samples, len(weight) + 1)
    g = _generator(seed)
    w = torch.tensor(list(weight), dtype=torch.float64).unsqueeze(1)
    x = torch.empty(num_samples, w.shape[0], dtype=torch.float64)
    y = torch.empty(num_samples, 1, dtype=torch.float64)
    for i in range(0, num_samples, _BLOCK):
        block = torch.randn(min(_BLOCK, num_samples - i), w.shape[0], generator=g,
                            dtype=torch.float64)
        x[i:i + len(block)] = block
        y[i:i + len(block)] = block @ w + bias
    for i in range(0, num_samples, _BLOCK):
        rows = min(_BLOCK, num_samples - i)
        y[i:i + rows] += noise * torch.randn(rows, 1, generator=g, dtype=torch.float64)
    return Dataset(x, y, _truth(list(weight), bias), owns_memory=True)


def uniform_line(a: float = 2.0, b: float = 6.0, low: float = 0.0, high: float = 5.0,
                 noise: float = 0.3, num_samples: int = 150, seed: int = 0) -> Dataset:
    """y = a·x + b + N(0, noise²) with x ~ U[low, high)."""
    _fits(num_samples, 2)
    g = _generator(seed)
    x = low + (high - low) * torch.rand(num_samples, 1, generator=g, dtype=torch.float64)
    y = a * x + b + noise * torch.randn(num_samples, 1, generator=g, dtype=torch.float64)
    return _finish(x, y, _truth([a], b))


def quadratic(start: float = -1.0, stop: float = 1.0, num: int = 100, noise: float = 0.2,
              seed: int = 0) -> Dataset:
    """y = x² + noise·U(0, 1) on an evenly spaced grid; no linear truth to report."""
    g = _generator(seed)
    x = _grid(start, stop, num)
    y = x.pow(2) + noise * torch.rand(num, 1, generator=g, dtype=torch.float64)
    return _finish(x, y, None)


def sine(start: float = -3.0, stop: float = 3.0, num: int = 60, noise: float = 0.1,
         seed: int = 0) -> Dataset:
    """y = sin(x) + N(0, noise²) on an evenly spaced grid: a curve for polynomial fits."""
    g = _generator(seed)
    x = _grid(start, stop, num)
    y = torch.sin(x) + noise * torch.randn(num, 1, generator=g, dtype=torch.float64)
    return _finish(x, y, None)


def polynomial(coefficients: Sequence[float] = (1.0, -2.0, 0.0, 1.0), low: float = -2.5,
               high: float = 2.5, noise: float = 1.0, num_samples: int = 60,
               seed: int = 0) -> Dataset:
    """y = c₀ + c₁x + c₂x² + … + N(0, noise²) with x ~ U[low, high): a known degree, so a
    model-selection sweep can be checked against the truth. Random x (not a grid) puts
    few rows near the ends, where a too-flexible polynomial swings."""
    if not coefficients:
        raise ValueError("coefficients: expected at least one (the constant term)")
    _fits(num_samples, 2)
    g = _generator(seed)
    x = low + (high - low) * torch.rand(num_samples, 1, generator=g, dtype=torch.float64)
    clean = sum(float(c) * x ** k for k, c in enumerate(coefficients))
    y = clean + noise * torch.randn(num_samples, 1, generator=g, dtype=torch.float64)
    truth = None if len(coefficients) > 2 else _truth([float(coefficients[1])],
                                                        float(coefficients[0]))
    return _finish(x, y, truth)
