"""The floor for `reglab-train data=csv ... optimizer=exact`: the same least squares by hand.

    python benchmarks/exact_floor.py TABLE.csv|TABLE.parquet [--target y]

Imports torch and pytorch_lightning (as reglab-train does, so both processes pay the
same imports) and pyarrow, reads the file with pyarrow into one float64 numpy array
(features first, the target last) and calls ``numpy.linalg.lstsq`` on ``[X, 1]`` against
the target: every row, no split, no scaling, no report, no files written.

Prints one JSON line: the seconds of each phase, the rows, the coefficients by name
("const", then the feature columns as named in the table, as reglab's
``params_data_units`` names them) and the process's peak RSS so far (VmHWM).
Run by ``benchmarks/run.py exact``.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

START = time.perf_counter()

import numpy as np  # noqa: E402
import pyarrow.csv as pcsv  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import pytorch_lightning  # noqa: E402, F401  (the same imports as reglab-train)
import torch  # noqa: E402, F401


def read_float64(path: Path, target: str) -> tuple[np.ndarray, list[str]]:
    """The table's columns, features first and the target last, as float64 rows, and
    the feature names."""
    table = pq.read_table(path) if path.suffix.lower() in (".parquet", ".pq") \
        else pcsv.read_csv(path)
    names = [c for c in table.column_names if c != target]
    data = np.column_stack([table.column(c).to_numpy().astype(np.float64, copy=False)
                            for c in [*names, target]])
    return data, names


def main() -> None:
    from table_floor import command_line, peak_rss_kb  # the same command line and RSS probe

    args = command_line(__doc__)
    imported = time.perf_counter()

    data, names = read_float64(args.path, args.target)
    read = time.perf_counter()

    design = np.empty((data.shape[0], data.shape[1]), dtype=np.float64)
    design[:, :-1] = data[:, :-1]
    design[:, -1] = 1.0
    coef, _, rank, _ = np.linalg.lstsq(design, data[:, -1], rcond=None)
    done = time.perf_counter()

    params = {"const": float(coef[-1]),
              **{n: float(c) for n, c in zip(names, coef[:-1], strict=True)}}
    print(json.dumps({"import_s": imported - START, "read_s": read - imported,
                      "solve_s": done - read, "rows": int(data.shape[0]),
                      "features": len(names), "rank": int(rank), "params": params,
                      "peak_rss_kb": peak_rss_kb()}), flush=True)


if __name__ == "__main__":
    sys.exit(main())
