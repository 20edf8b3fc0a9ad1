"""The one shape every data source returns: inputs, targets, names and, if known, the truth.

A source returns its data in the precision it was made or read in (float64 for reglab's
own): the least-squares report is computed from it as is, and training casts a copy to
the trainer's precision.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class Dataset:
    """Inputs ``x`` (rows × features), targets ``y`` (rows × targets) and, if known, the
    truth. ``target_name`` is one name, or a list with one per target column."""

    x: torch.Tensor
    y: torch.Tensor
    true_params: dict[str, list[list[float]] | float | None] | None = None
    #: Column names, for tables read from files and for prediction CSVs.
    feature_names: list[str] | None = None
    target_name: str | list[str] | None = None
    #: Whether ``x`` and ``y`` were made for this data set alone (a table just read), so
    #: splitting may rearrange their rows in place instead of copying the whole set.
    owns_memory: bool = False
    #: A table's file as read (``tables.file_identity``): path, size and digest.
    source_file: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if self.x.ndim != 2 or self.y.ndim != 2 or self.y.shape[1] < 1:
            raise ValueError(f"expected x (n, d) and y (n, k), got {tuple(self.x.shape)} and "
                             f"{tuple(self.y.shape)}")
        if self.x.shape[0] != self.y.shape[0]:
            raise ValueError(f"x has {self.x.shape[0]} rows but y has {self.y.shape[0]}")
        if self.feature_names is None:
            self.feature_names = ["x"] if self.x.shape[1] == 1 else [
                f"x{i}" for i in range(self.x.shape[1])]
        if self.target_name is None:
            k = self.y.shape[1]
            self.target_name = "y" if k == 1 else [f"y{i}" for i in range(k)]

    @property
    def target_names(self) -> list[str]:
        name = self.target_name
        return [name] if isinstance(name, str) else list(name or [])

    @property
    def num_features(self) -> int:
        return int(self.x.shape[1])

    def __len__(self) -> int:
        return int(self.x.shape[0])
