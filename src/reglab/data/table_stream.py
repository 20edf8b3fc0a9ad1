"""A table read a piece at a time: one Parquet file, a directory of them or a glob.

The table is a list of *units*, each read whole when asked: a Parquet row group, or a
CSV file (streamed a block at a time). Units have fixed places in the table, so every row
has a global row number (the row's split, its shuffle, its reader under data-parallel
training all follow from it) and nothing but one unit is held at a time. Cells are
checked as the in-memory reader checks them and named by file, row group, row (or CSV
line) and column.
"""

from __future__ import annotations

import glob
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from reglab.data import tables
from reglab.errors import DataError

#: Rows per block read from a Parquet row group.
BLOCK_ROWS = 1 << 16

#: File names a directory's table is made of; others (``_SUCCESS``, ``.crc``) are skipped.
_SUFFIXES = (".parquet", ".pq", ".csv", ".tsv", ".txt")


@dataclass(frozen=True)
class Unit:
    """A piece of the table read in one go."""

    index: int
    file: Path
    group: int | None  # the Parquet row group; None for a CSV file
    first_row: int  # its first row's place in its file (0-based)
    start: int  # its first row's global row number
    rows: int  # rows (for CSV an upper bound: the file's lines)


class Block:
    """Rows of one unit: their columns (features, then targets; float64, each contiguous)
    and their global row numbers. ``values`` is the (rows × columns) matrix, made on
    first use: the exact fit reads the columns alone."""

    def __init__(self, columns: list[np.ndarray], rows: np.ndarray) -> None:
        self.columns, self.rows = columns, rows
        self._values: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def values(self) -> np.ndarray:
        if self._values is None:
            # Column-major: each column is copied whole (a row-major fill writes every
            # value with a stride and was most of a block's time).
            out = np.empty((len(self.columns), len(self.rows)), dtype=np.float64)
            for j, column in enumerate(self.columns):
                out[j] = column
            self._values = out.T
        return self._values


def resolve(path: str | Path, key: str = "data.path") -> list[Path]:
    """The files a path names: the file itself, every table file under a directory
    (hive-style subdirectories included) or the files a glob matches, sorted."""
    text = str(path)
    if any(c in text for c in "*?["):
        files = sorted(Path(p) for p in glob.glob(text, recursive=True) if Path(p).is_file())
        what = f"the glob {text!r} matches no file"
    else:
        p = Path(text)
        if p.is_file():
            return [p]
        if not p.exists():
            raise DataError(f"{key}: {p}: no such file or directory")
        files = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in _SUFFIXES
                       and not any(part.startswith(("_", ".")) for part in
                                   f.relative_to(p).parts))
        what = f"{p} holds no .parquet or .csv file"
    files = [f for f in files if not f.name.startswith(("_", "."))]
    if not files:
        raise DataError(f"{key}: {what}")
    kinds = {tables._is_parquet(f) for f in files}
    if len(kinds) > 1:
        raise DataError(f"{key}: {text} mixes Parquet and delimited text files; one table "
                        "is one format")
    return files


class TableStream:
    """The units of a table and a reader for each; ``names`` are the feature columns,
    then the targets."""

    def __init__(self, path: str | Path, target: str | Sequence[str],
                 features: Sequence[str] | None = None, delimiter: str = ",",
                 key: str = "data.path") -> None:
        self.files = resolve(path, key)
        self.targets = tables._targets(target)
        self.delimiter = delimiter
        self.parquet = tables._is_parquet(self.files[0])
        self._meta: dict[Path, Any] = {}
        self._checked: set[int] = set()  # units read whole once: every cell checked
        units: list[Unit] = []
        names: list[str] | None = None
        start = 0
        for file in self.files:
            header, groups = self._layout(file)
            own = tables._columns(file, header, features, self.targets,
                                  None if self.parquet else delimiter)
            if names is None:
                names = own
            elif own != names:
                raise DataError(f"{file}: its columns {own} differ from {self.files[0]}'s "
                                f"{names}; every file of a table has the same columns")
            first = 0
            for group, rows in groups:
                units.append(Unit(len(units), file, group, first, start + first, rows))
                first += rows
            start += first
        self.names: list[str] = names or []
        self.units = units
        self.width = len(self.names) - len(self.targets)

    @property
    def feature_names(self) -> list[str]:
        return self.names[:self.width]

    def _layout(self, file: Path) -> tuple[list[str], list[tuple[int | None, int]]]:
        """(header, [(row group, rows)]) of one file."""
        if self.parquet:
            meta = self._metadata(file)
            return (list(meta.schema.to_arrow_schema().names),
                    [(g, meta.row_group(g).num_rows) for g in range(meta.num_row_groups)])
        header = [h.strip() for h in tables._csv_header(file, self.delimiter)]
        return header, [(None, tables._line_count(file))]

    def cell(self, unit: Unit, row: int, name: str) -> str:
        """Where row ``row`` (0-based, within ``unit``) of column ``name`` sits, as every
        message names a cell: file, row group and row (Parquet) or line (CSV)."""
        if self.parquet:
            return (f"{unit.file}, row group {unit.group}, row {unit.first_row + row + 1}, "
                    f"column {name!r}")
        return tables.cell_location(unit.file, row, name, self.delimiter)

    def _metadata(self, file: Path) -> Any:
        """A Parquet file's footer, read once (no file is kept open: a table may have
        more files than the process may open)."""
        import pyarrow.parquet as pq

        if file not in self._meta:
            try:
                self._meta[file] = pq.read_metadata(file)
            except (OSError, ValueError) as exc:
                first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
                raise DataError(f"{file}: not a readable Parquet file ({first})") from None
        return self._meta[file]

    def read(self, unit: Unit) -> Iterator[Block]:
        """The unit's rows, a block at a time, every cell checked (once: a Parquet
        group read again, already checked, has its float64 columns taken as they are)."""
        if self.parquet:
            yield from self._row_group(unit)
            self._checked.add(unit.index)
        else:
            yield from self._csv(unit)

    def _row_group(self, unit: Unit) -> Iterator[Block]:
        """A row group in blocks of ``BLOCK_ROWS``: a few MB each, so their memory is
        reused from block to block rather than mapped afresh (a 1M-row group as one
        block spent more time in page faults than in decoding)."""
        import pyarrow.parquet as pq

        # A reader of its own, closed after the group: an open ParquetFile keeps the
        # last group's pages (~90 MB for a million rows), and a table of many files
        # would hold one such copy per file. Buffered, not pre-buffered, reads hold a
        # column chunk a MB at a time instead of the whole group's (121 -> 41 MB of
        # pyarrow's memory at a million rows a group, as fast).
        reader = pq.ParquetFile(unit.file, metadata=self._metadata(unit.file),
                                buffer_size=1 << 20, pre_buffer=False)
        batches = reader.iter_batches(batch_size=BLOCK_ROWS, row_groups=[unit.group],
                                      columns=self.names)
        try:
            yield from self._blocks(unit, batches)
        finally:
            reader.close()

    def _blocks(self, unit: Unit, batches: Iterator[Any]) -> Iterator[Block]:
        first = 0
        checked = unit.index in self._checked
        for batch in batches:
            columns = []
            for j, name in enumerate(self.names):
                column = batch.column(j)
                if checked and column.type == "double" and not column.null_count:
                    columns.append(tables._float64_values(column))
                    continue

                def where(row: int, name: str = name, first: int = first) -> str:
                    return self.cell(unit, first + row, name)

                columns.append(tables._to_float64(column, where))
            n = batch.num_rows
            yield Block(columns, np.arange(unit.start + first, unit.start + first + n,
                                           dtype=np.int64))
            first += n

    def _csv(self, unit: Unit) -> Iterator[Block]:
        raw_header = tables._csv_header(unit.file, self.delimiter)
        as_written = {h.strip(): h for h in raw_header}
        raw = [as_written[n] for n in self.names]
        first = 0
        pieces: dict[int, list[np.ndarray]] = {}
        try:
            for row, _, values in tables._csv_pieces(unit.file, self.delimiter, raw,
                                                     self.names):
                pieces.setdefault(row, []).append(values)
                if len(pieces[row]) == len(self.names):
                    columns = pieces.pop(row)
                    n = len(columns[0])
                    first = row + n
                    yield Block(columns, np.arange(unit.start + row, unit.start + first,
                                                   dtype=np.int64))
        except tables._Unclean:
            self._locate(unit, raw, first)

    def _locate(self, unit: Unit, raw: list[str], first: int) -> None:
        """A cell the fast reader refused: read the file as text to name it (the error
        path only)."""
        table = tables._read_csv_table(unit.file, self.delimiter, raw, as_text=True)
        table = table.rename_columns([str(c).strip() for c in table.column_names])
        for name in self.names:
            def where(row: int, name: str = name) -> str:
                return tables.cell_location(unit.file, row, name, self.delimiter)

            tables._to_float64(table.column(name), where)
        raise DataError(f"{unit.file}: cannot read the rows after data row {first}")
