"""Streamed tables (``data=stream``) at scale, side by side with their baselines.

    python benchmarks/stream.py                  # 3·10⁷ rows (2.6 GB of Parquet)
    python benchmarks/stream.py --rows 5000000   # a smaller table

Writes the tables (ten standard-normal features x0..x9 and y, float64, 2²⁰-row row
groups; the large one in six files), then runs, each in its own process:

- ``reglab-train`` for one SGD epoch at batch 4096 on the in-memory path (``data=csv``)
  at 10⁶ rows and on the streamed path at 10⁶ rows and at ``--rows``; an epoch timer
  (a callback defined here) reports the training loop's seconds apart from validation;
- ``reglab-train optimizer=exact`` on the large table (one pass: the fit and its report);
- a bare ``pyarrow.dataset`` scan of the same columns to float64, against the exact
  fit's pass alone (census and TSQR) in a process of its own, alternated ``--reps`` times.

Peak RSS is each process's own; "beyond imports" subtracts a process that only imports
torch and Lightning. Prints a Markdown section for ``benchmarks/results.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl

HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent
FEATURES, GROUP_ROWS, BATCH = 10, 1 << 20, 4096


class EpochTimer(pl.Callback):
    """Seconds of the first training loop (its batches) and of the validation after it,
    written as JSON to ``path``."""

    def __init__(self, path: str) -> None:
        self.path, self.marks = path, {}

    def on_train_epoch_start(self, trainer: pl.Trainer, module: Any) -> None:
        self.marks.setdefault("train_start", time.perf_counter())

    def on_validation_epoch_start(self, trainer: pl.Trainer, module: Any) -> None:
        if not trainer.sanity_checking and "train_start" in self.marks:
            self.marks.setdefault("val_start", time.perf_counter())

    def on_validation_epoch_end(self, trainer: pl.Trainer, module: Any) -> None:
        if "val_start" in self.marks:
            self.marks.setdefault("val_end", time.perf_counter())
            m = self.marks
            Path(self.path).write_text(json.dumps({
                "train_s": m["val_start"] - m["train_start"],
                "val_s": m["val_end"] - m["val_start"]}))


def write(folder: Path, rows: int, files: int) -> Path:
    """y = X·w + 1 + noise, in ``files`` Parquet files written a row group at a time."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    w = np.linspace(-2.0, 2.0, FEATURES)
    per = rows // files
    for f in range(files):
        n = per if f < files - 1 else rows - per * (files - 1)
        writer = None
        for lo in range(0, n, GROUP_ROWS):
            m = min(GROUP_ROWS, n - lo)
            x = rng.standard_normal((m, FEATURES))
            y = x @ w + 1.0 + 0.1 * rng.standard_normal(m)
            table = pa.table({**{f"x{j}": x[:, j] for j in range(FEATURES)}, "y": y})
            if writer is None:
                writer = pq.ParquetWriter(folder / f"part-{f}.parquet", table.schema)
            writer.write_table(table, row_group_size=GROUP_ROWS)
        writer.close()
    return folder


def peak(cmd: list[str], cwd: Path, env: dict[str, str] | None = None) -> tuple[float, int, str]:
    """Wall seconds, peak RSS (bytes) and stdout of one child (GNU time's %M)."""
    rss = cwd / ".rss"
    start = time.perf_counter()
    out = subprocess.run(["/usr/bin/time", "-f", "%M", "-o", str(rss), *cmd], cwd=cwd,
                         capture_output=True, text=True, stdin=subprocess.DEVNULL,
                         env={**os.environ, **(env or {})})
    wall = time.perf_counter() - start
    if out.returncode != 0:
        raise RuntimeError(f"{cmd} failed: {out.stderr[-3000:]}")
    return wall, int(rss.read_text().split()[-1]) * 1024, out.stdout


def train(cwd: Path, name: str, data: list[str], extra: list[str] = ()) -> dict[str, Any]:
    timer = cwd / f"{name}.timer.json"
    run_dir = cwd / f"run-{name}"
    cmd = [str(BIN / "reglab-train"), *data, f"data.batch_size={BATCH}",
           "trainer.max_epochs=1", "logger=none", "callbacks=none",
           "+callbacks.epoch_timer._target_=stream.EpochTimer",
           f"+callbacks.epoch_timer.path={timer}", f"hydra.run.dir={run_dir}", "overwrite=true",
           *extra]
    wall, rss, _ = peak(cmd, cwd, {"PYTHONPATH": str(HERE)})
    metrics = json.loads((run_dir / "metrics.json").read_text())
    rows = (metrics.get("rows") or {}).get("train")
    out = {"wall_s": wall, "peak_rss_mb": rss / 2**20, "fit_s": metrics["fit_seconds"],
           "train_rows": rows}
    if timer.is_file():
        out.update(json.loads(timer.read_text()))
        out["train_rows_per_s"] = rows / out["train_s"] if rows else None
    return out


BARE = """
import sys, time, numpy as np, pyarrow.dataset as ds
start = time.perf_counter()
for batch in ds.dataset(sys.argv[1], format="parquet").to_batches(columns=sys.argv[2:]):
    for column in batch.columns:
        column.to_numpy().astype(np.float64, copy=False)
print(time.perf_counter() - start)
"""

PASS = """
import sys, time
from reglab.analysis.streamed_fit import StreamedLeastSquares
from reglab.data.streamed import StreamedDataModule
dm = StreamedDataModule(sys.argv[1], target="y")
start = time.perf_counter()
dm.take_census(sink=StreamedLeastSquares(dm.num_features, True, False))
print(time.perf_counter() - start)
"""


def child_seconds(code: str, *args: str) -> float:
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                         check=True, stdin=subprocess.DEVNULL)
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=30_000_000)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--keep", type=Path, default=None,
                        help="write (or reuse) the tables here instead of a temporary dir")
    args = parser.parse_args()
    root = args.keep or Path(tempfile.mkdtemp(prefix="reglab-stream-"))
    root.mkdir(parents=True, exist_ok=True)
    big, small = root / f"big{args.rows}", root / "small1000000"
    for folder, rows, files in ((big, args.rows, 6), (small, 1_000_000, 1)):
        if not folder.is_dir():
            print(f"[stream] writing {rows:,} rows to {folder} …", flush=True)
            write(folder, rows, files)
    size = sum(f.stat().st_size for f in big.iterdir())
    _, base, _ = peak([sys.executable, "-c", "import torch, pytorch_lightning"], root)
    res: dict[str, Any] = {"rows": args.rows, "parquet_gb": size / 1e9,
                           "imports_peak_mb": base / 2**20}
    print("[stream] SGD epochs …", flush=True)
    target = ["data.target=y"]
    runs = {
        "memory_1e6": train(root, "memory_1e6", ["data=csv",
                                                 f"data.source.path={small}/part-0.parquet",
                                                 "data.source.target=y"]),
        "stream_1e6": train(root, "stream_1e6", ["data=stream", f"data.path={small}", *target]),
        "stream_big": train(root, "stream_big", ["data=stream", f"data.path={big}", *target]),
    }
    for name, run in runs.items():
        res.update({f"{name}_{k}": v for k, v in run.items()})
    res["stream_big_over_memory_1e6_rows_per_s"] = (
        runs["stream_big"]["train_rows_per_s"] / runs["memory_1e6"]["train_rows_per_s"])
    for name in ("stream_1e6", "stream_big"):
        res[f"{name}_beyond_imports_mb"] = runs[name]["peak_rss_mb"] - base / 2**20
    res["memory_big_over_1e6_beyond_imports"] = (res["stream_big_beyond_imports_mb"]
                                                 / res["stream_1e6_beyond_imports_mb"])
    print("[stream] exact fit …", flush=True)
    run_dir = root / "run-exact"
    wall, rss, _ = peak([str(BIN / "reglab-train"), "data=stream", f"data.path={big}", *target,
                         "optimizer=exact", "logger=none", "callbacks=none",
                         f"hydra.run.dir={run_dir}", "overwrite=true"], root)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    res.update({"exact_wall_s": wall, "exact_solve_s": metrics["fit_seconds"],
                "exact_peak_rss_mb": rss / 2**20,
                "exact_beyond_imports_mb": (rss - base) / 2**20})
    columns = [f"x{j}" for j in range(FEATURES)] + ["y"]
    bare, ours = [], []
    for _ in range(args.reps):
        bare.append(child_seconds(BARE, str(big), *columns))
        ours.append(child_seconds(PASS, str(big)))
    res.update({"bare_scan_s": statistics.median(bare), "exact_pass_s": statistics.median(ours),
                "bare_scan_runs": bare, "exact_pass_runs": ours})
    res["exact_pass_over_bare_scan"] = res["exact_pass_s"] / res["bare_scan_s"]
    res["exact_solve_over_bare_scan"] = res["exact_solve_s"] / res["bare_scan_s"]
    print(json.dumps(res, indent=1))
    print("\n| quantity | value |\n| --- | --- |")
    for key, value in res.items():
        shown = f"{value:.4g}" if isinstance(value, float) else str(value)
        print(f"| {key} | {shown} |")


if __name__ == "__main__":
    main()
