"""Real data: a numeric table from a CSV or Parquet file, and scikit-learn's diabetes set.

Every cell is checked while it is read, so a bad one is reported by file, line (or row)
and column instead of surfacing later as a NaN loss.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path

import torch

from reglab.datagen import Dataset
from reglab.validate import DataError


def _columns(path: Path, header: list[str], features: Sequence[str] | None,
             target: str | None) -> list[str]:
    """The feature columns to read, then the target (if any); names every missing one."""
    wanted = list(features) if features is not None else [c for c in header if c != target]
    targets = [] if target is None else [target]
    missing = [c for c in [*wanted, *targets] if c not in header]
    if missing:
        raise DataError(f"{path}: no column {', '.join(map(repr, missing))} "
                        f"(the file has: {', '.join(header)})")
    if target in wanted:
        raise DataError(f"{path}: column {target!r} is both the target and a feature")
    if not wanted:
        raise DataError(f"{path}: no feature columns left besides the target {target!r}")
    return [*wanted, *targets]


def _number(text: str, where: str) -> float:
    text = text.strip()
    if not text:
        raise DataError(f"{where}: empty cell (expected a number)")
    try:
        value = float(text)
    except ValueError:
        raise DataError(f"{where}: {text[:40]!r} is not a number") from None
    if not math.isfinite(value):
        raise DataError(f"{where}: {text!r} is not a finite number")
    return value


def _read_csv(path: Path, features: Sequence[str] | None, target: str | None,
              delimiter: str) -> tuple[list[str], list[list[float]]]:
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.reader(handle, delimiter=delimiter)
        header = [h.strip() for h in next(reader, [])]
        if not header:
            raise DataError(f"{path}: the file is empty (expected a header line)")
        names = _columns(path, header, features, target)
        index = [header.index(c) for c in names]
        rows: list[list[float]] = []
        for row in reader:
            line = reader.line_num
            if not row or all(not cell.strip() for cell in row):
                continue  # blank lines, e.g. at the end of the file
            if len(row) != len(header):
                raise DataError(f"{path}, line {line}: {len(row)} fields, but the header has "
                                f"{len(header)} (delimiter {delimiter!r})")
            rows.append([_number(row[i], f"{path}, line {line}, column {c!r}")
                         for i, c in zip(index, names, strict=True)])
    return names, rows


def _read_parquet(path: Path, features: Sequence[str] | None,
                  target: str | None) -> tuple[list[str], list[list[float]]]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError(f"{path}: reading Parquet needs pyarrow (pip install pyarrow)") from None
    table = pq.read_table(path)
    names = _columns(path, list(table.column_names), features, target)
    columns = []
    for name in names:
        values = table.column(name).to_pylist()
        for row, value in enumerate(values, start=1):
            where = f"{path}, row {row}, column {name!r}"
            if value is None:
                raise DataError(f"{where}: empty cell (expected a number)")
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise DataError(f"{where}: {str(value)[:40]!r} is not a number")
            if not math.isfinite(value):
                raise DataError(f"{where}: {value!r} is not a finite number")
        columns.append(values)
    return names, [list(r) for r in zip(*columns, strict=True)]


def _read(file: Path, features: Sequence[str] | None, target: str | None, delimiter: str,
          key: str) -> tuple[list[str], torch.Tensor]:
    """(column names, float64 rows) of a CSV or Parquet table; ``key`` names the setting
    that gave the path, for the error when the file is missing."""
    if not file.is_file():
        raise DataError(f"{key}: {file}: no such file")
    if file.suffix.lower() in (".parquet", ".pq"):
        names, rows = _read_parquet(file, features, target)
    else:
        names, rows = _read_csv(file, features, target, delimiter)
    if not rows:
        raise DataError(f"{file}: no data rows below the header")
    return names, torch.tensor(rows, dtype=torch.float64)


def read_table(path: str, target: str, features: Sequence[str] | None = None,
               delimiter: str = ",") -> Dataset:
    """Read ``features`` (default: every other column) and ``target`` from a table.

    ``.parquet``/``.pq`` files are read with pyarrow; anything else as delimited text
    with a header line.
    """
    names, table = _read(Path(path).expanduser(), features, target, delimiter,
                         "data.source.path")
    return Dataset(table[:, :-1].float().contiguous(), table[:, -1:].float().contiguous(),
                   None, feature_names=names[:-1], target_name=names[-1])


def read_inputs(path: str | Path, features: Sequence[str] | None,
                delimiter: str = ",") -> tuple[list[str], torch.Tensor]:
    """The named feature columns of a table (for prediction): (names, float32 rows)."""
    names, table = _read(Path(path).expanduser(), features, None, delimiter, "input_path")
    return names, table.float()


def read_rows(path: str | Path, delimiter: str = ",") -> tuple[list[str], list[list[str]]]:
    """A delimited file's header and non-blank rows as text, to copy into an output."""
    file = Path(path)
    if file.suffix.lower() in (".parquet", ".pq"):
        import pyarrow.parquet as pq

        table = pq.read_table(file)
        columns = [[str(v) for v in table.column(c).to_pylist()] for c in table.column_names]
        return list(table.column_names), [list(r) for r in zip(*columns, strict=True)]
    with file.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.reader(handle, delimiter=delimiter)
        header = next(reader, [])
        return header, [row for row in reader if row and any(c.strip() for c in row)]


def diabetes() -> Dataset:
    """scikit-learn's bundled diabetes set: 442 patients × 10 baseline measurements, and a
    measure of disease progression one year later. Raw units (not pre-scaled)."""
    from sklearn.datasets import load_diabetes

    bunch = load_diabetes(scaled=False)
    x = torch.as_tensor(bunch.data, dtype=torch.float64)
    y = torch.as_tensor(bunch.target, dtype=torch.float64).unsqueeze(1)
    return Dataset(x.float().contiguous(), y.float().contiguous(), None,
                   feature_names=list(bunch.feature_names), target_name="progression")
