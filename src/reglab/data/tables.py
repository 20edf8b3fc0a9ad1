"""Real data: a numeric table from a CSV or Parquet file.

Files are read by pyarrow straight into preallocated float64 columns: a CSV streamed a
block at a time, a Parquet file a row group and a column at a time, so the table is held
about once. Cells are checked a whole column at a time (nulls, text, non-finite values);
only when a check fails is the first bad cell located, so it is still reported by file,
line (or row), column and its text instead of surfacing later as a NaN loss.
"""

from __future__ import annotations

import csv
import sys
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from reglab.config.checks import delimiter as validate_delimiter
from reglab.data.dataset import Dataset
from reglab.errors import DataError

#: A decimal number as Python's ``float`` reads it (after trimming), for locating bad text.
_NUMBER = (r"^[+-]?(([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?|"
           r"[iI][nN][fF]([iI][nN][iI][tT][yY])?|[nN][aA][nN])$")


def _is_parquet(path: Path) -> bool:
    return path.suffix.lower() in (".parquet", ".pq")


def _columns(path: Path, header: list[str], features: Sequence[str] | None,
             targets: Sequence[str], delimiter: str | None = None) -> list[str]:
    """The feature columns to read, then the targets; names every missing one."""
    counts = Counter(header)
    dup = next((c for c in header if counts[c] > 1), None)
    if dup is not None:
        raise DataError(f"{path}: duplicate column {dup!r} in the header")
    wanted = list(features) if features is not None else [c for c in header
                                                          if c not in targets]
    present = set(header)  # a set: a 10,000-column header is searched 10,000 times
    missing = [c for c in [*wanted, *targets] if c not in present]
    if missing:
        hint = ""
        if delimiter is not None and len(header) == 1:
            hint = (f"; only one column was found with delimiter {delimiter!r}: "
                    "set data.source.delimiter")
        raise DataError(f"{path}: no column {', '.join(map(repr, missing))} "
                        f"(the file has: {', '.join(header)}){hint}")
    chosen = set(wanted)
    both = [c for c in targets if c in chosen]
    if both:
        raise DataError(f"{path}: column {both[0]!r} is both a target and a feature")
    if len(set(targets)) != len(targets):
        raise DataError(f"{path}: a target column is named twice: {list(targets)}")
    if not wanted:
        raise DataError(f"{path}: no feature columns left besides the target "
                        f"{', '.join(map(repr, targets))}")
    return [*wanted, *targets]


@contextmanager
def _long_fields() -> Iterator[None]:
    """Let Python's ``csv`` read fields of any length while inside: pyarrow reads them,
    so the error paths that re-read a file must too (``csv`` stops at 131,072
    characters). The limit is process-wide, so it is put back on the way out."""
    old = csv.field_size_limit(sys.maxsize)
    try:
        yield
    finally:
        csv.field_size_limit(old)


def _csv_line(path: Path, row: int, delimiter: str) -> int:
    """The file line holding data row ``row`` (0-based, blank lines skipped as pyarrow
    does). Only called on the error path, so it may read the file in Python."""
    with _long_fields(), path.open(newline="", encoding="utf-8-sig",
                                   errors="replace") as handle:
        reader = csv.reader(handle, delimiter=delimiter)
        next(reader, None)
        seen = -1
        for fields in reader:
            if fields and any(f.strip() for f in fields):
                seen += 1
                if seen == row:
                    return reader.line_num
    return row + 2


def _first(mask: Any) -> int | None:
    """Index of the first true value of a boolean pyarrow array, or None."""
    import pyarrow.compute as pc

    index = pc.index(mask, True).as_py()
    return None if index < 0 else int(index)


def _to_float64(column: Any, where: Any) -> np.ndarray:
    """A pyarrow column as float64, or a DataError naming its first bad cell.

    ``where(row)`` renders the location of a 0-based data row for the message.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    column = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    kind = column.type
    written = None  # the cells as written, for a message about a value they overflow to
    if pa.types.is_null(kind) or column.null_count:
        row = 0 if pa.types.is_null(kind) else _first(pc.is_null(column))
        raise DataError(f"{where(row)}: empty cell (expected a number)")
    if pa.types.is_binary(kind) or pa.types.is_large_binary(kind):
        # pyarrow reads a column holding bytes that are not UTF-8 as binary.
        try:
            column, kind = pc.cast(column, pa.string()), pa.string()
        except pa.ArrowInvalid:
            for row, raw in enumerate(column.to_pylist()):  # the error path only
                try:
                    raw.decode("utf-8")
                except UnicodeDecodeError:
                    raise DataError(f"{where(row)}: {raw[:40]!r} is not UTF-8 text (save "
                                    "the file as UTF-8)") from None
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        text = pc.utf8_trim_whitespace(column)
        row = _first(pc.equal(text, ""))
        if row is not None:
            raise DataError(f"{where(row)}: empty cell (expected a number)")
        row = _first(pc.invert(pc.match_substring_regex(text, _NUMBER)))
        if row is not None:
            raise DataError(f"{where(row)}: {column[row].as_py()[:40]!r} is not a number")
        column, written = pc.cast(text, pa.float64()), text
    elif pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_decimal(kind):
        # Integers past 2**53 (int64, uint64) and wide decimals round to the nearest float64,
        # as the same digits in a CSV do: pyarrow's safe cast would refuse them instead.
        column = pc.cast(column, pa.float64(), safe=False)
    else:  # booleans, dates, nested values: nothing a regression should take as a number
        raise DataError(f"{where(0)}: {str(column[0].as_py())[:40]!r} is not a number "
                        f"(the column holds {kind})")
    values = _float64_values(column)
    with np.errstate(over="ignore", invalid="ignore"):
        if np.isfinite(values.sum()):  # every value finite: one pass, no mask built
            return values
    bad = ~np.isfinite(values)
    if bad.any():
        row = int(np.argmax(bad))
        cell = str(values[row]) if written is None else written[row].as_py()
        if "n" in cell.lower():  # nan, inf, infinity, as written
            raise DataError(f"{where(row)}: {cell[:40]!r} is not a finite number")
        shown = cell if len(cell) <= 40 else f"{cell[:20]}… ({len(cell)} characters)"
        raise DataError(f"{where(row)}: {shown!r} is beyond float64's range")
    return values


#: Bytes of CSV text pyarrow parses per batch when streaming: bounds the reader's own
#: memory to one such block (read on this thread: no blocks parsed ahead).
_CSV_BLOCK = 1 << 20

#: (first row, column index, float64 values): a piece of one column of the table.
Piece = tuple[int, int, np.ndarray]


class _Unclean(Exception):
    """A cell the streaming path cannot take (text, empty, non-finite): the whole-table
    path then reads the file again to name it."""


def _line_count(path: Path) -> int:
    """Newlines in the file, plus one: a bound on its data rows, known before parsing."""
    count = 1
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 24):
            count += chunk.count(b"\n")
    return count


def _float64_values(column: Any) -> np.ndarray:
    """A float64 pyarrow array (or chunked array) as numpy, read through its data buffers
    where it has no nulls: ``to_numpy`` imports pandas on first use, half a second."""
    if column.null_count:
        return column.to_numpy(zero_copy_only=False)
    chunks = getattr(column, "chunks", None)
    if chunks is not None:
        parts = [_float64_values(c) for c in chunks]
        return np.concatenate(parts) if parts else np.empty(0, np.float64)
    return np.frombuffer(column.buffers()[1], dtype=np.float64, count=len(column),
                         offset=column.offset * 8)


def _csv_pieces(path: Path, delimiter: str, raw_names: list[str], names: list[str]
                ) -> Iterator[Piece]:
    """The fast path: every wanted column parsed straight to float64 while streaming, one
    block at a time; raises :class:`_Unclean` at the first cell that does not fit."""
    import pyarrow as pa
    import pyarrow.csv as pcsv

    convert = pcsv.ConvertOptions(
        column_types=dict.fromkeys(raw_names, pa.float64()), include_columns=raw_names,
        null_values=[""], strings_can_be_null=False, quoted_strings_can_be_null=False)
    try:
        reader = pcsv.open_csv(
            path, read_options=pcsv.ReadOptions(block_size=_CSV_BLOCK, use_threads=False),
            parse_options=pcsv.ParseOptions(delimiter=delimiter), convert_options=convert)
        row = 0
        for batch in reader:
            for j in range(len(names)):
                column = batch.column(j)
                if column.null_count:
                    raise _Unclean
                values = _float64_values(column)
                if not np.isfinite(values).all():
                    raise _Unclean
                yield row, j, values
            row += batch.num_rows
    except (pa.ArrowInvalid, UnicodeDecodeError):
        raise _Unclean from None


def _read_csv_table(path: Path, delimiter: str, columns: Sequence[str] | None = None,
                    as_text: bool = False) -> Any:
    """The file as a pyarrow table (every column, or ``columns``), errors as DataError.
    ``as_text`` keeps the cells as written (bytes: a cell that is not UTF-8 is named
    too), so a message can quote them: ``1e400``, not the ``inf`` it reads as."""
    import pyarrow as pa
    import pyarrow.csv as pcsv

    convert = pcsv.ConvertOptions(
        column_types={c: pa.binary() for c in columns} if as_text and columns else None,
        # Only an empty cell is missing: "nan" or "NA" reach the checks as text or NaN
        # and are reported as such instead of as an empty cell.
        null_values=[""], strings_can_be_null=False, quoted_strings_can_be_null=False,
        include_columns=None if columns is None else list(columns))
    try:
        return pcsv.read_csv(path, parse_options=pcsv.ParseOptions(delimiter=delimiter),
                             convert_options=convert)
    except pa.ArrowInvalid as exc:
        message = str(exc)
        if (line := _open_quote_line(path)) is not None:
            raise DataError(f"{path}, line {line}: a quote opens here and is never "
                            "closed") from None
        if "Expected" in message and "columns" in message:
            line, count, width = _ragged_line(path, delimiter)
            raise DataError(f"{path}, line {line}: {count} fields, but the header has "
                            f"{width} (delimiter {delimiter!r})") from None
        if "UTF8" in message or "UTF-8" in message:
            raise DataError(f"{path}: not UTF-8 text (save the file as UTF-8)") from None
        if "Empty CSV file" in message:
            raise DataError(f"{path}: the file is empty (expected a header line)") from None
        raise DataError(f"{path}: cannot read as delimited text "
                        f"(delimiter {delimiter!r}): {message.splitlines()[0]}") from None


def _ragged_line(path: Path, delimiter: str) -> tuple[int, int, int]:
    """(line, fields on it, header fields) of the first row whose width differs."""
    with _long_fields(), path.open(newline="", encoding="utf-8-sig",
                                   errors="replace") as handle:
        reader = csv.reader(handle, delimiter=delimiter)
        width = len(next(reader, []))
        for fields in reader:
            if fields and any(f.strip() for f in fields) and len(fields) != width:
                return reader.line_num, len(fields), width
    return 0, 0, width


#: The first bytes of files that are not delimited text, and what they are.
_NOT_TEXT = ((b"\x1f\x8b", "a gzip-compressed file: decompress it first (gunzip)"),
             (b"BZh", "a bzip2-compressed file: decompress it first (bunzip2)"),
             (b"\xfd7zXZ\x00", "an xz-compressed file: decompress it first (unxz)"),
             (b"\x28\xb5\x2f\xfd", "a zstd-compressed file: decompress it first (unzstd)"),
             (b"PK\x03\x04", "a zip archive: extract the table from it first"),
             (b"PAR1", "a Parquet file: name it with a .parquet suffix"))


def _refuse_non_text(path: Path) -> None:
    """A compressed file or an archive read as text would only say 'not UTF-8': say what
    it is instead."""
    with path.open("rb") as raw:
        start = raw.read(8)
    for magic, what in _NOT_TEXT:
        if start.startswith(magic):
            raise DataError(f"{path}: {what}")


def _open_quote_line(path: Path) -> int | None:
    """The line where a quote opens that is never closed, or None. Inside a quoted field
    a quote is doubled, so an odd count on a line turns quoting on or off."""
    open_at, inside = None, False
    with path.open("rb") as handle:
        for number, line in enumerate(handle, start=1):
            if line.count(b'"') % 2:
                inside = not inside
                open_at = number if inside else None
    return open_at if inside else None


def cell_location(path: Path, row: int, column: str, delimiter: str = ",") -> str:
    """Where data row ``row`` (0-based) of a table sits, as messages name a cell: file,
    line (CSV) or row (Parquet) and column."""
    if _is_parquet(path):
        return f"{path}, row {row}, column {column!r}"
    return f"{path}, line {_csv_line(path, row, delimiter)}, column {column!r}"


def _csv_header(path: Path, delimiter: str) -> list[str]:
    _refuse_non_text(path)
    with path.open("rb") as raw:
        first = raw.readline()
    try:
        first.decode("utf-8")
    except UnicodeDecodeError:  # names that are not UTF-8 would not match pyarrow's own
        raise DataError(f"{path}, line 1: the header is not UTF-8 text (save the file as "
                        "UTF-8)") from None
    with _long_fields(), path.open(newline="", encoding="utf-8-sig",
                                   errors="replace") as handle:
        header = next(csv.reader(handle, delimiter=delimiter), [])
    if not header:
        raise DataError(f"{path}: the file is empty (expected a header line)")
    return header


def _parquet_pieces(file: Path, names: list[str]) -> Iterator[Piece]:
    """A Parquet file one row group and one column at a time (its row count is known up
    front), each checked as it is read, so no second copy of the table is ever held."""
    import pyarrow.parquet as pq

    parquet = pq.ParquetFile(file)
    first = 0
    for group in range(parquet.num_row_groups):
        for j, name in enumerate(names):
            column = parquet.read_row_group(group, columns=[name]).column(0)

            def where(row: int, name: str = name, first: int = first) -> str:
                return f"{file}, row {first + row + 1}, column {name!r}"

            yield first, j, _to_float64(column, where)
            del column
        first += parquet.metadata.row_group(group).num_rows


def _read(file: Path, features: Sequence[str] | None, targets: Sequence[str], delimiter: str,
          key: str, widths: Callable[[int], list[int]]) -> tuple[list[str], list[torch.Tensor]]:
    """(column names, float64 tensors) of a CSV or Parquet table: the features, then the
    targets, in tensors of ``widths(len(names))`` columns each. ``key`` names the setting
    that gave the path."""
    if not file.is_file():
        raise DataError(f"{key}: {file}: no such file")
    if _is_parquet(file):
        try:
            import pyarrow.parquet as pq

            meta = pq.ParquetFile(file)
            header = list(meta.schema_arrow.names)
            rows = int(meta.metadata.num_rows)
        except (OSError, ValueError) as exc:  # pyarrow's ArrowInvalid is a ValueError
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
            raise DataError(f"{file}: not a readable Parquet file ({first})") from None
        names = _columns(file, header, features, targets)
        try:
            return names, _assemble(file, rows, _parquet_pieces(file, names),
                                    widths(len(names)))
        finally:
            _release_arrow_memory()
    raw_header = _csv_header(file, delimiter)
    header = [h.strip() for h in raw_header]
    names = _columns(file, header, features, targets, delimiter)
    # Only the wanted columns are converted; pyarrow knows them by their raw names.
    as_written = dict(zip(header, raw_header, strict=True))
    raw = [as_written[n] for n in names]
    try:
        return names, _assemble(file, _line_count(file), _csv_pieces(file, delimiter, raw, names),
                                widths(len(names)))
    except _Unclean:
        pass
    finally:
        _release_arrow_memory()
    # Something is off: read the whole table as found, to name the bad cell.
    table = _read_csv_table(file, delimiter, raw, as_text=True)
    table = table.rename_columns([str(c).strip() for c in table.column_names])

    def where(name: str) -> Any:
        return lambda row: f"{file}, line {_csv_line(file, row, delimiter)}, column {name!r}"

    pieces = [(0, j, _to_float64(table.column(name), where(name)))
              for j, name in enumerate(names)]
    rows = table.num_rows
    del table
    return names, _assemble(file, rows, _drain(pieces[::-1]), widths(len(names)))


def _release_arrow_memory() -> None:
    """Hand the pages pyarrow's allocator kept from the read back to the system: they
    would otherwise stay in the process for the whole fit."""
    import pyarrow as pa

    pa.default_memory_pool().release_unused()


def _assemble(file: Path, rows: int, pieces: Iterator[Piece], widths: Sequence[int]
              ) -> list[torch.Tensor]:
    """Column pieces into C-ordered float64 tensors of ``widths`` columns each.

    ``rows`` may be an upper bound: the result is cut to the rows filled. Its pages are
    only touched as it fills and each piece is released once copied, so the table is
    held about once, never a second full copy beside it."""
    outs = [np.empty((rows, w), dtype=np.float64) for w in widths]
    where = [(k, c) for k, w in enumerate(widths) for c in range(w)]
    filled = 0
    for first, j, values in pieces:
        k, c = where[j]
        outs[k][first:first + len(values), c] = values
        filled = max(filled, first + len(values))
        del values
    if filled == 0:
        raise DataError(f"{file}: no data rows below the header")
    return [torch.from_numpy(out[:filled]) for out in outs]


def _drain(pieces: list[Piece]) -> Iterator[Piece]:
    """Pieces from the end of a list, each dropped from it as it is handed out."""
    while pieces:
        yield pieces.pop()


#: The digest new runs record: SHA-256 runs at about 1 GB/s where the CPU has SHA
#: instructions, twice BLAKE2b's speed here (runs that recorded "blake2b" still check).
DIGEST = "sha256"


def file_identity(path: str | Path, algorithm: str = DIGEST) -> dict[str, Any]:
    """What says a data file is the one a run read: its absolute path, size and digest,
    recorded in ``metrics.json`` and ``model.pt``."""
    import hashlib

    file = Path(path).expanduser().resolve()
    with file.open("rb") as handle:
        digest = hashlib.file_digest(handle, algorithm).hexdigest()
    return {"path": str(file), "bytes": file.stat().st_size, algorithm: digest}


def _targets(target: str | Sequence[str]) -> list[str]:
    return [target] if isinstance(target, str) else [str(t) for t in target]


def read_table(path: str, target: str | Sequence[str], features: Sequence[str] | None = None,
               delimiter: str = ",") -> Dataset:
    """Read ``features`` (default: every other column) and ``target`` (one column or a
    list) from a table, in float64 as read.

    ``.parquet``/``.pq`` files are read as Parquet; anything else as delimited text with
    a header line.
    """
    from concurrent.futures import ThreadPoolExecutor

    file = Path(path).expanduser()
    delimiter = validate_delimiter(delimiter, "data.source.delimiter")
    targets = _targets(target)
    k = len(targets)
    # The digest is taken on the other core while this one parses (hashlib releases the
    # GIL): the file's identity costs no wall time on a machine with two.
    with ThreadPoolExecutor(1) as pool:
        identity = pool.submit(file_identity, file) if file.is_file() else None
        names, (x, y) = _read(file, features, targets, delimiter, "data.source.path",
                              lambda n: [n - k, k])
        source = identity.result() if identity is not None else file_identity(file)
    if not _is_parquet(file):  # how to find a line again, for a later message
        source["delimiter"] = delimiter
    return Dataset(x, y, None, feature_names=names[:-k],
                   target_name=names[-1] if k == 1 else names[-k:], owns_memory=True,
                   source_file=source)


def read_inputs(path: str | Path, features: Sequence[str] | None,
                delimiter: str = ",") -> tuple[list[str], torch.Tensor]:
    """The named feature columns of a table (for prediction): (names, float64 rows)."""
    delimiter = validate_delimiter(delimiter, "delimiter")
    names, (x,) = _read(Path(path).expanduser(), features, [], delimiter, "input_path",
                        lambda n: [n])
    return names, x


def read_rows(path: str | Path, delimiter: str = ",") -> tuple[list[str], list[list[str]]]:
    """A table's header and non-blank rows as text (a CSV's cells exactly as written), to
    copy into a prediction output."""
    delimiter = validate_delimiter(delimiter, "delimiter")
    file = Path(path)
    if _is_parquet(file):
        import pyarrow.parquet as pq

        table = pq.read_table(file)
        columns = [[str(v) for v in table.column(c).to_pylist()] for c in table.column_names]
        return list(table.column_names), [list(r) for r in zip(*columns, strict=True)]
    _refuse_non_text(file)
    with _long_fields(), file.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.reader(handle, delimiter=delimiter)
        header = next(reader, [])
        return header, [row for row in reader if row and any(c.strip() for c in row)]
