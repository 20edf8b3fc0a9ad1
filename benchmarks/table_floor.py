"""The floor for `reglab-train data=csv` on a table: what the same job costs written by hand.

    python benchmarks/table_floor.py TABLE.csv|TABLE.parquet [--target y]

Imports torch and pytorch_lightning (as reglab-train does, so both processes pay the
same imports) and pyarrow, reads the file with pyarrow into one float64 numpy array, keeps a
shuffled 70 % of the rows, and runs one epoch of plain SGD (batches of 1024,
``nn.Linear(features, 1)``, MSE, lr 0.01) in float32: a plain torch loop, no Trainer.

Prints one JSON line: the seconds of each phase, the rows, the final loss and the
process's peak RSS so far (VmHWM). Run by ``benchmarks/run.py tables``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

START = time.perf_counter()

import numpy as np  # noqa: E402
import pyarrow.csv as pcsv  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import pytorch_lightning  # noqa: E402, F401  (the same imports as reglab-train)
import torch  # noqa: E402

BATCH, LR, TRAIN_FRACTION = 1024, 0.01, 0.7


def read_float64(path: Path, target: str) -> np.ndarray:
    """The table's columns, features first and the target last, as float64 rows."""
    table = pq.read_table(path) if path.suffix.lower() in (".parquet", ".pq") \
        else pcsv.read_csv(path)
    names = [c for c in table.column_names if c != target] + [target]
    return np.column_stack([table.column(c).to_numpy().astype(np.float64, copy=False)
                            for c in names])


def peak_rss_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM"):
            return int(line.split()[1])
    return -1


def command_line(doc: str | None) -> argparse.Namespace:
    """``TABLE [--target y]``, as both floor scripts take it."""
    parser = argparse.ArgumentParser(description=(doc or "").splitlines()[0])
    parser.add_argument("path", type=Path)
    parser.add_argument("--target", default="y")
    return parser.parse_args()


def main() -> None:
    args = command_line(__doc__)
    imported = time.perf_counter()

    data = read_float64(args.path, args.target)
    read = time.perf_counter()

    torch.manual_seed(0)
    rows = data.shape[0]
    keep = torch.randperm(rows)[: round(TRAIN_FRACTION * rows)].numpy()
    train = torch.from_numpy(data[keep].astype(np.float32))
    del data
    x, y = train[:, :-1], train[:, -1:]
    model = torch.nn.Linear(x.shape[1], 1)
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    loss_fn = torch.nn.MSELoss()
    split = time.perf_counter()

    order = torch.randperm(x.shape[0])
    loss = torch.tensor(float("nan"))
    for i in range(0, x.shape[0], BATCH):
        idx = order[i:i + BATCH]
        opt.zero_grad()
        loss = loss_fn(model(x[idx]), y[idx])
        loss.backward()
        opt.step()
    done = time.perf_counter()

    print(json.dumps({"import_s": imported - START, "read_s": read - imported,
                      "split_s": split - read, "epoch_s": done - split,
                      "train_rows": int(x.shape[0]), "features": int(x.shape[1]),
                      "torch_threads": torch.get_num_threads(),
                      "last_loss": float(loss), "peak_rss_kb": peak_rss_kb()}), flush=True)


if __name__ == "__main__":
    sys.exit(main())
