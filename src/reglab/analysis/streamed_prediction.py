"""``reglab-predict`` over a table of any size: read a unit, predict, write, repeat.

The output (CSV or Parquet, by ``output_path``'s suffix) holds the model's feature
columns and one prediction column per target; it is written under a temporary name and
renamed into place when every row is done, so a fault leaves no half-written file that
looks finished.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from reglab import errors
from reglab.run_files import write_whole


def wants_streaming(cfg: Any) -> bool:
    """Streamed when asked (``stream=true``), or by default when the input is a folder or
    a glob (many files), or the output is Parquet."""
    if cfg.get("stream") is not None:
        return bool(cfg.stream)
    text = str(cfg.input_path)
    out = str(cfg.output_path or "")
    return (any(c in text for c in "*?[") or Path(text).is_dir()
            or Path(out).suffix.lower() in (".parquet", ".pq"))


def predict(cfg: Any, trained: Any, delimiter: str) -> tuple[int, list[str]]:
    """Write predictions for every row of ``cfg.input_path`` to ``cfg.output_path``;
    (rows written, prediction column names)."""
    import numpy as np
    import pyarrow as pa
    import torch

    from reglab.analysis.prediction import unique_columns
    from reglab.data.scaling import Standardized
    from reglab.data.table_stream import TableStream

    if cfg.output_path is None:
        raise errors.ConfigError("output_path: a streamed prediction is written to a file; "
                                 "add output_path=<.csv or .parquet>")
    table = TableStream(cfg.input_path, [], trained.features, delimiter, key="input_path")
    width = trained.in_features
    if width is not None and table.width != width:
        raise errors.DataError(f"{cfg.input_path}: {table.width} feature columns "
                               f"({', '.join(table.names)}), but the model takes {width}")
    model = Standardized(trained.model, trained.scaling).eval()
    targets = trained.target if isinstance(trained.target, list) else [trained.target or "y"]
    columns = unique_columns([f"{t}_predicted" for t in targets], table.names)
    out = Path(cfg.output_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    parquet = out.suffix.lower() in (".parquet", ".pq")
    rows = 0

    def write(tmp: Path) -> None:
        nonlocal rows
        import pyarrow.csv as pcsv
        import pyarrow.parquet as pq

        writer: Any = None
        try:
            for unit in table.units:
                for block in table.read(unit):
                    with torch.no_grad():
                        pred = model(torch.from_numpy(block.values)).double().numpy()
                    pred = pred.reshape(len(block.values), -1)
                    if len(targets) != pred.shape[1]:
                        raise errors.DataError(f"{cfg.output_path}: the model gives "
                                               f"{pred.shape[1]} outputs for "
                                               f"{len(targets)} targets")
                    bad = ~np.isfinite(pred)
                    if bad.any():
                        i = int(bad.any(axis=1).nonzero()[0][0])
                        raise errors.DataError(
                            f"{unit.file}: data row "
                            f"{int(block.rows[i]) - unit.start + unit.first_row + 1}: "
                            f"the model's prediction is {pred[i].tolist()}, not a finite "
                            "number")
                    batch = pa.table({**{n: block.values[:, j] for j, n in
                                         enumerate(table.names)},
                                      **{c: pred[:, j] for j, c in enumerate(columns)}})
                    if writer is None:
                        writer = (pq.ParquetWriter(tmp, batch.schema) if parquet else
                                  pcsv.CSVWriter(tmp, batch.schema, write_options=pcsv
                                                 .WriteOptions(delimiter=delimiter)))
                    writer.write_table(batch)
                    rows += len(block.values)
        finally:
            if writer is not None:
                writer.close()

    write_whole(out, write)
    return rows, columns

