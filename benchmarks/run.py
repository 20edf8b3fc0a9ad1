"""reglab's benchmark suite: each figure measured side by side with its baseline.

    python benchmarks/run.py               # all sections, writes benchmarks/results.md
    python benchmarks/run.py tiny process  # some sections
    python benchmarks/run.py --gpu         # also trainer=gpu, where CUDA is available
    python benchmarks/run.py tables --table-rows 100000  # the table section, a smaller table
    python benchmarks/run.py exact --exact-reps 3  # optimizer=exact against an lstsq floor

Every pair runs in this one process (or in child processes started from it) after a
warm-up, several times; the table shows medians and the ratio the issue targets.
Not part of the test suite: timings belong to a quiet machine, not to CI.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
BIN = Path(sys.executable).parent
TMP = Path(tempfile.mkdtemp(prefix="reglab-bench-"))


def median_of(fn: Callable[[], float], reps: int, warmup: int = 1) -> tuple[float, list[float]]:
    for _ in range(warmup):
        fn()
    runs = [fn() for _ in range(reps)]
    return statistics.median(runs), runs


def quiet_lightning() -> None:
    import logging
    import warnings

    for name in ("pytorch_lightning", "lightning.pytorch", "lightning_fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")


# -- reglab through its own train function -------------------------------------------------
def reglab_fit(overrides: list[str], run_dir: Path) -> dict[str, Any]:
    """One in-process run of ``reglab.cli.train.train`` on the composed config."""
    from reglab.cli.train import train
    from reglab.config.compose import compose

    cfg = compose(overrides, run_dir)
    shutil.rmtree(run_dir, ignore_errors=True)
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        return train(cfg)


# -- 1. tiny -------------------------------------------------------------------------------
def line_tensors(device: str = "cpu") -> tuple[Any, Any]:
    import torch

    x = torch.linspace(0, 10, 11, device=device).unsqueeze(1)
    return x, 2 * x + 1


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def plain_tiny(out: Path, device: str = "cpu") -> float:
    """1000 full-batch SGD steps, a TensorBoard scalar every 50, weights saved at the end."""
    import torch
    from torch.utils.tensorboard import SummaryWriter

    torch.manual_seed(0)
    x, y = line_tensors(device)
    shutil.rmtree(out, ignore_errors=True)
    _sync(device)
    start = time.perf_counter()
    model = torch.nn.Linear(1, 1).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    loss_fn = torch.nn.MSELoss()
    writer = SummaryWriter(str(out))
    for step in range(1000):
        opt.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
        if step % 50 == 0:
            writer.add_scalar("train/loss", loss.item(), step)
    writer.close()
    torch.save(model.state_dict(), out / "model.pt")
    return time.perf_counter() - start


def _line_module(log: dict[str, Any] | None) -> Any:
    """The line job's LightningModule as the Lightning docs teach it; ``log``: the keyword
    arguments of its one ``self.log`` of the loss (None: no logging)."""
    import pytorch_lightning as pl
    import torch

    class Module(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.model = torch.nn.Linear(1, 1)

        def training_step(self, batch: Any, batch_idx: int) -> Any:
            x, y = batch
            loss = torch.nn.functional.mse_loss(self.model(x), y)
            if log is not None:
                self.log(log["name"], loss, **{k: v for k, v in log.items() if k != "name"})
            return loss

        def configure_optimizers(self) -> Any:
            return torch.optim.SGD(self.parameters(), lr=0.01)

    return Module()


def stock_lightning_tiny(out: Path) -> float:
    """What a Lightning user writes: DataLoader(TensorDataset), self.log, default Trainer."""
    import pytorch_lightning as pl
    from torch.utils.data import DataLoader, TensorDataset

    x, y = line_tensors()
    shutil.rmtree(out, ignore_errors=True)
    pl.seed_everything(0, verbose=False)
    start = time.perf_counter()
    trainer = pl.Trainer(max_epochs=1000, default_root_dir=str(out), enable_progress_bar=False,
                         enable_model_summary=False, accelerator="cpu",
                         logger=pl.loggers.TensorBoardLogger(str(out)))
    trainer.fit(_line_module({"name": "train_loss"}),
                DataLoader(TensorDataset(x, y), batch_size=11))
    return time.perf_counter() - start


def lean_lightning_tiny(log: bool = True) -> float:
    """The line job as a lean stock-Lightning script: ``self.log`` of the loss on step and
    epoch (``log=False``: none), no checkpoint, bar, model summary or logger. The floor
    issue 27 measures reglab's default fit against (≤ 1.3×)."""
    import pytorch_lightning as pl
    from torch.utils.data import DataLoader, TensorDataset

    x, y = line_tensors()
    pl.seed_everything(0, verbose=False)
    start = time.perf_counter()
    trainer = pl.Trainer(max_epochs=1000, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False,
                         accelerator="cpu")
    module = _line_module({"name": "train/loss", "on_step": True, "on_epoch": True}
                          if log else None)
    trainer.fit(module, DataLoader(TensorDataset(x, y), batch_size=11))
    return time.perf_counter() - start


#: Lightning's own learning-rate callback, added to the line job: what the module's
#: ``train/lr-<Optimizer>`` scalars stand in for.
LR_MONITOR = ["+callbacks.lr_monitor._target_=pytorch_lightning.callbacks.LearningRateMonitor"]


def bench_tiny(reps: int, device: str = "cpu") -> dict[str, Any]:
    """reglab and the plain loop alternate, run by run: on a shared machine the load
    drifts between minutes, so each ratio compares runs made seconds apart.

    On the CPU each round also runs the lean stock-Lightning script (with and without
    ``self.log``), reglab with Lightning's ``LearningRateMonitor`` added (its cost per
    epoch, from the paired differences), and the first half of the rounds stock Lightning
    in this process.
    """
    quiet_lightning()
    run_dir = TMP / "tiny"
    overrides = ["trainer=gpu"] if device != "cpu" else []
    on_cpu = device == "cpu"

    def fit(extra: list[str]) -> float:
        return reglab_fit([*overrides, *extra], run_dir)["fit_seconds"]

    fit([]), plain_tiny(TMP / "plain", device)  # warm-up
    if on_cpu:
        fit(LR_MONITOR), stock_lightning_tiny(TMP / "stock"), lean_lightning_tiny()
    rounds: list[dict[str, float]] = []
    for i in range(reps):
        r = {"reglab": fit([]), "plain": plain_tiny(TMP / "plain", device)}
        if on_cpu:
            r["lean"] = lean_lightning_tiny()
            r["lean_no_log"] = lean_lightning_tiny(log=False)
            r["lr_monitor"] = fit(LR_MONITOR)
            if i < max(1, reps // 2):
                r["stock"] = stock_lightning_tiny(TMP / "stock")
        rounds.append(r)
    med = statistics.median
    out: dict[str, Any] = {
        "reglab_fit_s": med(r["reglab"] for r in rounds),
        "plain_loop_s": med(r["plain"] for r in rounds),
        "reglab_over_plain": med(r["reglab"] / r["plain"] for r in rounds),
        "reglab_runs": [r["reglab"] for r in rounds]}
    if on_cpu:
        epochs = 1000  # the line job's
        with_stock = [r for r in rounds if "stock" in r]
        out.update(
            lr_monitor_ms_per_epoch=med(r["lr_monitor"] - r["reglab"] for r in rounds)
            / epochs * 1e3,
            lean_lightning_s=med(r["lean"] for r in rounds),
            lean_lightning_no_log_s=med(r["lean_no_log"] for r in rounds),
            reglab_over_lean=med(r["reglab"] / r["lean"] for r in rounds),
            stock_lightning_s=med(r["stock"] for r in with_stock),
            stock_over_plain=med(r["stock"] / r["plain"] for r in with_stock),
            reglab_over_stock=med(r["reglab"] / r["stock"] for r in with_stock))
    return out


def bench_tiny_gpu(reps: int) -> dict[str, Any]:
    return bench_tiny(reps, "cuda")


# -- 2. large ------------------------------------------------------------------------------
LARGE_ROWS, LARGE_DIM, LARGE_BATCH, LARGE_EPOCHS = 1_000_000, 32, 1024, 2


def large_overrides() -> list[str]:
    weight = "[" + ",".join(f"{(i % 7) - 3}.0" for i in range(LARGE_DIM)) + "]"
    return ["data=linear", f"data.source.weight={weight}",
            f"data.source.num_samples={LARGE_ROWS}", f"data.batch_size={LARGE_BATCH}",
            "data.test_fraction=0", "optimizer=sgd", "optimizer.lr=0.01",
            f"trainer.max_epochs={LARGE_EPOCHS}", "trainer.log_every_n_steps=50"]


def large_tensors() -> tuple[Any, Any]:
    import torch

    g = torch.Generator().manual_seed(0)
    x = torch.randn(LARGE_ROWS, LARGE_DIM, generator=g)
    w = torch.tensor([float((i % 7) - 3) for i in range(LARGE_DIM)]).unsqueeze(1)
    return x, x @ w + 4.2 + 0.01 * torch.randn(LARGE_ROWS, 1, generator=g)


def plain_large(x: Any, y: Any) -> float:
    """Shuffled batches cut by indexing, on whichever device ``x`` lives."""
    import torch

    device = str(x.device)
    torch.manual_seed(0)
    model = torch.nn.Linear(LARGE_DIM, 1).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    loss_fn = torch.nn.MSELoss()
    _sync(device)
    start = time.perf_counter()
    for epoch in range(LARGE_EPOCHS):
        perm = torch.randperm(LARGE_ROWS, generator=torch.Generator().manual_seed(epoch))
        perm = perm.to(device)
        for i in range(0, LARGE_ROWS, LARGE_BATCH):
            idx = perm[i:i + LARGE_BATCH]
            opt.zero_grad()
            loss_fn(model(x[idx]), y[idx]).backward()
            opt.step()
    _sync(device)
    return time.perf_counter() - start


def dataloader_large(x: Any, y: Any) -> float:
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    torch.manual_seed(0)
    model = torch.nn.Linear(LARGE_DIM, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    loss_fn = torch.nn.MSELoss()
    loader = DataLoader(TensorDataset(x, y), batch_size=LARGE_BATCH, shuffle=True)
    start = time.perf_counter()
    for _ in range(LARGE_EPOCHS):
        for xb, yb in loader:
            opt.zero_grad()
            loss_fn(model(xb), yb).backward()
            opt.step()
    return time.perf_counter() - start


def bench_large(reps: int, device: str = "cpu") -> dict[str, Any]:
    """reglab and the plain loop alternate, as in the tiny pair; rows/s from the medians,
    the ratio the median of each pair's own."""
    quiet_lightning()
    rows = LARGE_ROWS * LARGE_EPOCHS
    x, y = large_tensors()
    overrides = large_overrides() + (["trainer=gpu"] if device != "cpu" else [])
    out: dict[str, Any] = {}
    if device == "cpu":
        loader_s, _ = median_of(lambda: dataloader_large(x, y), 1, warmup=0)
    xd, yd = x.to(device), y.to(device)

    def reglab_s() -> float:
        return reglab_fit(overrides, TMP / "large")["fit_seconds"]

    reglab_s(), plain_large(xd, yd)  # warm-up
    pairs = [(reglab_s(), plain_large(xd, yd)) for _ in range(reps)]
    plain_s = statistics.median(p for _, p in pairs)
    out.update(reglab_rows_per_s=rows / statistics.median(r for r, _ in pairs),
               plain_rows_per_s=rows / plain_s,
               reglab_over_plain=statistics.median(p / r for r, p in pairs))
    if device == "cpu":
        out.update(dataloader_rows_per_s=rows / loader_s, dataloader_over_plain=plain_s / loader_s)
    return out


def bench_large_gpu(reps: int) -> dict[str, Any]:
    return bench_large(reps, "cuda")


# -- 3. start-up ---------------------------------------------------------------------------
def wall(cmd: list[str], cwd: Path) -> tuple[float, str]:
    start = time.perf_counter()
    out = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    elapsed = time.perf_counter() - start
    if out.returncode != 0:
        raise RuntimeError(f"{cmd} failed: {out.stderr[-2000:]}")
    return elapsed, out.stdout


def wall_and_exit(cmd: list[str], cwd: Path) -> tuple[float, float]:
    """Wall seconds of a child process, and the seconds from its last line of output to
    its end: for a command that prints when its work is done, what its exit cost."""
    with tempfile.TemporaryFile("w+") as err:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=err,
                                stdin=subprocess.DEVNULL, text=True)
        last = start
        assert proc.stdout is not None
        for _ in proc.stdout:
            last = time.perf_counter()
        code = proc.wait()
        end = time.perf_counter()
        if code != 0:
            err.seek(0)
            raise RuntimeError(f"{cmd} failed ({code}): {err.read()[-2000:]}")
    return end - start, end - last


#: Importing torch and Lightning, then the exit reglab's commands make: ``gc.freeze()``
#: and Python's ordinary shutdown (see ``reglab.cli.common.run``). The print marks the imports'
#: end, so the exit is timed too.
IMPORTS_FROZEN = "import gc, torch, pytorch_lightning; print('imported', flush=True); gc.freeze()"
#: The same without ``gc.freeze()``: what any script importing them pays at exit.
IMPORTS_PLAIN = "import torch, pytorch_lightning; print('imported', flush=True)"


def bench_startup(reps: int) -> dict[str, Any]:
    """`--help`, the default run's time beyond importing torch + Lightning, and what
    ``gc.freeze()`` saves at exit.

    Each default run is paired with import-only runs just before it, and the figure is
    the median of the paired differences: the import time alone drifts by a second
    between minutes on a shared machine.
    """
    cwd = TMP / "startup"
    cwd.mkdir(exist_ok=True)
    help_s, _ = median_of(lambda: wall([str(BIN / "reglab-train"), "--help"], cwd)[0], reps)
    imports, runs, beyond, beyond_fit, exit_frozen, exit_plain = [], [], [], [], [], []
    wall([str(BIN / "reglab-train")], cwd)  # warm-up
    for _ in range(reps):
        imp, frozen = wall_and_exit([sys.executable, "-c", IMPORTS_FROZEN], cwd)
        _, plain = wall_and_exit([sys.executable, "-c", IMPORTS_PLAIN], cwd)
        run_s, _ = wall([str(BIN / "reglab-train")], cwd)
        newest = max((cwd / "outputs" / "line" / "runs").iterdir(), key=lambda p: p.name)
        metrics = json.loads((newest / "metrics.json").read_text())
        fit = metrics["fit_seconds"] + metrics.get("plot_seconds", 0.0)
        imports.append(imp)
        runs.append(run_s)
        beyond.append(run_s - imp)
        beyond_fit.append(run_s - imp - fit)
        exit_frozen.append(frozen)
        exit_plain.append(plain)
    med = statistics.median
    return {"help_s": help_s, "import_torch_lightning_s": med(imports),
            "default_run_s": med(runs), "beyond_imports_s": med(beyond),
            "beyond_imports_and_fit_s": med(beyond_fit),
            "exit_after_imports_s": med(exit_plain),
            "exit_after_imports_gc_freeze_s": med(exit_frozen)}


# -- 4. whole processes --------------------------------------------------------------------
#: The line job by hand: what a PyTorch user writes without any framework.
HANDWRITTEN_LINE = """\
import torch
from torch.utils.tensorboard import SummaryWriter

torch.manual_seed(0)
x = torch.linspace(0, 10, 11).unsqueeze(1)
y = 2 * x + 1
model = torch.nn.Linear(1, 1)
optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
loss_fn = torch.nn.MSELoss()
writer = SummaryWriter("tensorboard")
for step in range(1000):
    optimizer.zero_grad()
    loss = loss_fn(model(x), y)
    loss.backward()
    optimizer.step()
    if step % 50 == 0:
        writer.add_scalar("train/loss", loss.item(), step)
writer.close()
torch.save(model.state_dict(), "model.pt")
print("done", flush=True)
"""

#: The line job as the Lightning docs teach it: a LightningModule with self.log, the
#: Trainer's defaults (its own ModelCheckpoint included) but for the progress bar.
STOCK_LIGHTNING_LINE = """\
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, TensorDataset


class Line(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.model = torch.nn.Linear(1, 1)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = torch.nn.functional.mse_loss(self.model(x), y)
        self.log("train/loss", loss)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


if __name__ == "__main__":
    pl.seed_everything(0)
    x = torch.linspace(0, 10, 11).unsqueeze(1)
    data = DataLoader(TensorDataset(x, 2 * x + 1), batch_size=11)  # the full batch
    trainer = pl.Trainer(max_epochs=1000, log_every_n_steps=50, enable_progress_bar=False,
                         logger=pl.loggers.TensorBoardLogger("."))
    trainer.fit(Line(), data)
    print("done", flush=True)
"""


def bench_process(reps: int) -> dict[str, Any]:
    """The default job as three whole processes, start to exit: ``reglab-train``, the
    hand-written loop and stock Lightning. Rounds alternate the three (each round in a
    rotated order) and the ratios are medians of each round's own ratios."""
    root = TMP / "process"
    scripts = {"handwritten": HANDWRITTEN_LINE, "stock": STOCK_LIGHTNING_LINE}
    commands = {"reglab": [str(BIN / "reglab-train")]}
    for name, text in scripts.items():
        path = root / f"{name}.py"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        commands[name] = [sys.executable, str(path)]
    fit_s: list[float] = []

    def one(name: str) -> tuple[float, float]:
        cwd = root / name
        shutil.rmtree(cwd, ignore_errors=True)  # every run starts from an empty folder
        cwd.mkdir()
        timed = wall_and_exit(commands[name], cwd)
        if name == "reglab":
            (run_dir,) = (cwd / "outputs" / "line" / "runs").iterdir()
            metrics = json.loads((run_dir / "metrics.json").read_text())
            fit_s.append(metrics["fit_seconds"] + metrics.get("plot_seconds", 0.0))
            if not (run_dir / "model.pt").is_file():
                raise RuntimeError("reglab-train wrote no model.pt")
        return timed

    names = list(commands)
    for name in names:  # warm-up: the file cache, the byte-code caches
        one(name)
    fit_s.clear()
    rounds: list[dict[str, tuple[float, float]]] = []
    for i in range(reps):
        order = names[i % 3:] + names[:i % 3]
        rounds.append({name: one(name) for name in order})
    med = statistics.median
    out: dict[str, Any] = {f"{name}_s": med(r[name][0] for r in rounds) for name in names}
    out.update(
        reglab_over_handwritten=med(r["reglab"][0] / r["handwritten"][0] for r in rounds),
        reglab_over_stock=med(r["reglab"][0] / r["stock"][0] for r in rounds),
        reglab_fit_and_plots_s=med(fit_s),
        **{f"{name}_exit_s": med(r[name][1] for r in rounds) for name in names},
        runs={name: [round(r[name][0], 3) for r in rounds] for name in names})
    return out


# -- 5. sweep ------------------------------------------------------------------------------
def bench_sweep(reps: int) -> dict[str, Any]:
    """The 9-job grid as shipped, and the same grid with 10× the epochs: with two workers
    the fixed cost each pays first (starting, importing torch and Lightning) is shared by
    fewer seconds of jobs when the jobs are short."""
    cwd = TMP / "sweep"
    cwd.mkdir(exist_ok=True)
    base = [str(BIN / "reglab-train"), "hparams_search=lr_batch"]
    joblib = ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"]
    out: dict[str, Any] = {}
    for label, extra in (("", []), ("long_", ["trainer.max_epochs=1000"])):
        pairs = [(wall([*base, *extra], cwd)[0], wall([*base, *extra, *joblib], cwd)[0])
                 for _ in range(reps)]
        seq_s = statistics.median(a for a, _ in pairs)
        par_s = statistics.median(b for _, b in pairs)
        out.update({f"{label}sequential_s": seq_s, f"{label}joblib_2_s": par_s,
                    f"{label}joblib_over_sequential": statistics.median(b / a for a, b in pairs)})
    return out


# -- 6. memory -----------------------------------------------------------------------------
def child_peak_rss(code: str) -> int:
    """Peak resident set (VmHWM) of a fresh child Python process, in bytes.

    Read from /proc rather than getrusage: ru_maxrss survives exec, so a child of this
    (large) process would report the parent's peak.
    """
    probe = ("\nfrom pathlib import Path\nprint('PEAK', next(ln.split()[1] for ln in "
             "Path('/proc/self/status').read_text().splitlines() if ln.startswith('VmHWM')))")
    out = subprocess.run([sys.executable, "-c", code + probe], capture_output=True, text=True,
                         cwd=TMP)
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-2000:])
    line = [ln for ln in out.stdout.splitlines() if ln.startswith("PEAK")][-1]
    return int(line.split()[1]) * 1024  # kB


def bench_memory(reps: int) -> dict[str, Any]:
    base = child_peak_rss("import torch, pytorch_lightning")
    code = (f"import sys; sys.path.insert(0, {str(HERE)!r})\n"
            "import run\n"
            "run.TMP.rmdir()  # its own, made at import and unused\n"
            f"run.reglab_fit(run.large_overrides(), run.Path({str(TMP / 'mem')!r}))")
    peak = child_peak_rss(code)
    data_bytes = LARGE_ROWS * (LARGE_DIM + 1) * 4
    return {"imports_peak_mb": base / 2**20, "large_run_peak_mb": peak / 2**20,
            "data_mb": data_bytes / 2**20, "beyond_imports_over_data": (peak - base) / data_bytes}


# -- 7. closed form ------------------------------------------------------------------------
def bench_closed_form(reps: int) -> dict[str, Any]:
    from reglab.analysis.least_squares import solve

    x, y = large_tensors()
    solve_s, _ = median_of(lambda: _timed(lambda: solve(x, y)), reps)
    sum_s, _ = median_of(lambda: _timed(lambda: x.sum()), reps)
    return {"solve_s": solve_s, "one_pass_sum_s": sum_s, "solve_over_sum": solve_s / sum_s}


def _timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


# -- 8. tables -----------------------------------------------------------------------------
#: Rows of the tables section's table (``--table-rows``): ten float features x0..x9 and y.
TABLE_ROWS, TABLE_FEATURES = 1_000_000, 10
#: Rounds of the tables section (``--table-reps``): each runs every process pair once.
TABLE_REPS = 3
TABLE_FORMATS = ("csv", "parquet")
#: What a `reglab-train data=csv` run imports: Lightning, Hydra, TensorBoard (the default
#: logger), pyarrow (the reader), scipy.stats (the regression report's t and F tails)
#: and matplotlib (the run's figures). The memory figure is the run's peak beyond this.
TABLE_IMPORTS = ("import torch, pytorch_lightning, hydra, torch.utils.tensorboard, "
                 "reglab.cli.train, pyarrow.csv, pyarrow.parquet, pyarrow.compute, scipy.stats, "
                 "matplotlib.pyplot")
#: The narrower baseline an earlier version used (no pyarrow, scipy or matplotlib).
TABLE_IMPORTS_PYARROW = ("import torch, pytorch_lightning, hydra, torch.utils.tensorboard, "
                         "reglab.cli.train, pyarrow.csv, pyarrow.parquet")
#: Peak RSS of a child when /usr/bin/time is missing: getrusage(RUSAGE_CHILDREN) in a
#: small wrapper process, so the figure is the child's own (ru_maxrss survives exec, so a
#: child started straight from this large process would inherit this process's peak).
_RUSAGE_WRAPPER = (
    "import resource, subprocess, sys\n"
    "code = subprocess.run(sys.argv[2:], stdin=subprocess.DEVNULL).returncode\n"
    "with open(sys.argv[1], 'w') as f:\n"
    "    f.write(str(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss))\n"
    "sys.exit(code)\n")
GNU_TIME = Path("/usr/bin/time")


def write_table(root: Path, rows: int, seed: int = 0) -> dict[str, Path]:
    """``y = X·w + b + noise`` with ten standard-normal features, written once as CSV and
    as Parquet (numpy draws it, pyarrow writes it)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.csv as pcsv
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    x = rng.standard_normal((rows, TABLE_FEATURES))
    w = np.linspace(-2.0, 2.0, TABLE_FEATURES)
    y = x @ w + 4.2 + 0.1 * rng.standard_normal(rows)
    columns = {f"x{i}": x[:, i] for i in range(TABLE_FEATURES)}
    table = pa.table({**columns, "y": y})
    root.mkdir(parents=True, exist_ok=True)
    paths = {"csv": root / f"table{rows}.csv", "parquet": root / f"table{rows}.parquet"}
    pcsv.write_csv(table, paths["csv"])
    pq.write_table(table, paths["parquet"])
    return paths


def measured(cmd: list[str], cwd: Path) -> tuple[float, int, str]:
    """Wall seconds, peak RSS in bytes and stdout of one child process.

    The RSS is the child's ru_maxrss as /usr/bin/time reports it (or, without it, as a
    small wrapper's getrusage(RUSAGE_CHILDREN) does): in both the child is started from
    a process a few MB large, so the figure is its own.
    """
    rss_file = cwd / ".peak_rss"
    rss_file.unlink(missing_ok=True)
    if GNU_TIME.is_file():
        wrapped = [str(GNU_TIME), "-f", "%M", "-o", str(rss_file), *cmd]
    else:
        wrapped = [sys.executable, "-c", _RUSAGE_WRAPPER, str(rss_file), *cmd]
    start = time.perf_counter()
    out = subprocess.run(wrapped, cwd=cwd, capture_output=True, text=True,
                         stdin=subprocess.DEVNULL)
    elapsed = time.perf_counter() - start
    if out.returncode != 0:
        raise RuntimeError(f"{cmd} failed ({out.returncode}): {out.stderr[-3000:]}")
    kb = int(rss_file.read_text().split()[-1])  # GNU time: a status line may come first
    rss_file.unlink()
    return elapsed, kb * 1024, out.stdout


def reglab_table_cmd(path: Path, run_dir: Path) -> list[str]:
    return [str(BIN / "reglab-train"), "data=csv", f"data.source.path={path}",
            "data.source.target=y", "data.batch_size=1024", "trainer.max_epochs=1",
            f"hydra.run.dir={run_dir}"]


def pyarrow_float64(path: Path) -> Any:
    """pyarrow's own read of the table, into one float64 numpy array (rows × columns)."""
    import numpy as np

    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        table = pq.read_table(path)
    else:
        import pyarrow.csv as pcsv

        table = pcsv.read_csv(path)
    return np.column_stack([c.to_numpy().astype(np.float64, copy=False)
                            for c in table.columns])


def _loadavg() -> str:
    try:
        return " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "unknown"


def bench_tables(reps: int) -> dict[str, Any]:
    """`reglab-train data=csv` on a TABLE_ROWS × 11 table, as CSV and as Parquet, against
    `benchmarks/table_floor.py` (pyarrow read, a shuffled 70 %, one plain SGD epoch):
    whole processes, start to exit, and their peak RSS; then the reading alone, in this
    process: ``reglab.data.tables.read_table`` against pyarrow's read into a float64 array.

    Each round runs an imports-only process, then per format reglab and the floor in an
    order that alternates between rounds; ratios are medians of each pair's own ratios.
    Memory: reglab's peak RSS less that of a process that only imports what every
    `reglab-train` run imports (TABLE_IMPORTS), over the table's float64 bytes.
    """
    import reglab.data.tables

    load_start = _loadavg()
    root = TMP / "tables"
    cwd = root / "cwd"  # the children's working directory: must stay empty
    cwd.mkdir(parents=True, exist_ok=True)
    paths = write_table(root, TABLE_ROWS)
    small = write_table(root / "warmup", 1000)
    floor = [sys.executable, str(HERE / "table_floor.py")]
    data_bytes = TABLE_ROWS * (TABLE_FEATURES + 1) * 8
    runs = 0

    def reglab_run(path: Path, rows: int = TABLE_ROWS) -> tuple[float, int, dict[str, Any]]:
        nonlocal runs
        runs += 1
        run_dir = root / "runs" / f"{runs:03d}"
        wall_s, rss, _ = measured(reglab_table_cmd(path, run_dir), cwd)
        metrics = json.loads((run_dir / "metrics.json").read_text())
        shutil.rmtree(run_dir)
        if sum(metrics["rows"].values()) != rows:
            raise RuntimeError(f"reglab-train read {metrics['rows']} rows of {path}")
        return wall_s, rss, metrics

    def floor_run(path: Path) -> tuple[float, int, dict[str, Any]]:
        wall_s, rss, stdout = measured([*floor, str(path)], cwd)
        return wall_s, rss, json.loads(stdout.splitlines()[-1])

    # Warm-up on a 1000-row copy: byte-code and matplotlib's font caches, pyarrow's
    # libraries in the page cache (the big files are there already: just written).
    for fmt in TABLE_FORMATS:
        reglab_run(small[fmt], 1000), floor_run(small[fmt])
    imports_pyarrow_peak = measured([sys.executable, "-c", TABLE_IMPORTS_PYARROW], cwd)[1]

    rounds: list[dict[str, Any]] = []
    for i in range(reps):
        r: dict[str, Any] = {}
        r["imports_s"], r["imports_rss"], _ = measured([sys.executable, "-c", TABLE_IMPORTS],
                                                       cwd)
        for fmt in TABLE_FORMATS:
            order = ("reglab", "floor") if i % 2 == 0 else ("floor", "reglab")
            for who in order:
                run = reglab_run if who == "reglab" else floor_run
                r[f"{fmt}_{who}"] = run(paths[fmt])
        rounds.append(r)
        print(f"[bench] tables round {i + 1}/{reps}: "
              + ", ".join(f"{fmt} reglab {r[f'{fmt}_reglab'][0]:.2f} s / floor "
                          f"{r[f'{fmt}_floor'][0]:.2f} s" for fmt in TABLE_FORMATS), flush=True)
    leftovers = sorted(p.name for p in cwd.iterdir())
    if leftovers:
        raise RuntimeError(f"the runs left files in their working directory: {leftovers}")

    # The reading alone, in this process, the two readers alternating.
    reglab.data.tables.read_table(str(small["csv"]), target="y"), pyarrow_float64(small["csv"])
    reads: dict[str, list[tuple[float, float]]] = {fmt: [] for fmt in TABLE_FORMATS}
    for i in range(reps):
        for fmt in TABLE_FORMATS:
            path = paths[fmt]

            def ours(path: Path = path) -> float:
                return _timed(lambda: reglab.data.tables.read_table(str(path), target="y"))

            def theirs(path: Path = path) -> float:
                return _timed(lambda: pyarrow_float64(path))

            if i % 2 == 0:
                a = ours()
                b = theirs()
            else:
                b = theirs()
                a = ours()
            reads[fmt].append((a, b))

    med = statistics.median
    mb = 2**20
    imports_peak = med(r["imports_rss"] for r in rounds)
    imports_s = med(r["imports_s"] for r in rounds)
    out: dict[str, Any] = {
        "rows": TABLE_ROWS, "data_mb": data_bytes / mb,
        **{f"{fmt}_file_mb": paths[fmt].stat().st_size / mb for fmt in TABLE_FORMATS},
        # Which reader was measured: src/reglab/data/tables.py changes under this benchmark.
        "tables_py_sha1": hashlib.sha1(Path(reglab.data.tables.__file__).read_bytes())
        .hexdigest()[:12],
        "rss_from": str(GNU_TIME) if GNU_TIME.is_file() else "getrusage(RUSAGE_CHILDREN)",
        # Other work on the machine slows torch's threads a lot (the floor's epoch, most).
        "load_average_start": load_start, "load_average_end": _loadavg(),
        "imports_s": imports_s, "imports_peak_mb": imports_peak / mb,
        "imports_and_pyarrow_peak_mb": imports_pyarrow_peak / mb}
    for fmt in TABLE_FORMATS:
        ours_runs = [r[f"{fmt}_reglab"] for r in rounds]
        floor_runs = [r[f"{fmt}_floor"] for r in rounds]
        reglab_peak = med(rss for _, rss, _ in ours_runs)
        fit_s = med(m["fit_seconds"] for _, _, m in ours_runs)
        plot_s = med(m.get("plot_seconds", 0.0) for _, _, m in ours_runs)
        out.update({
            f"{fmt}_reglab_s": med(w for w, _, _ in ours_runs),
            f"{fmt}_floor_s": med(w for w, _, _ in floor_runs),
            f"{fmt}_process_over_floor": med(r[f"{fmt}_reglab"][0] / r[f"{fmt}_floor"][0]
                                             for r in rounds),
            f"{fmt}_reglab_fit_s": fit_s, f"{fmt}_reglab_plot_s": plot_s,
            # Reading, splits, least squares, test, checkpoints, start and exit.
            f"{fmt}_reglab_beyond_imports_fit_plots_s": med(
                r[f"{fmt}_reglab"][0] - r["imports_s"] - r[f"{fmt}_reglab"][2]["fit_seconds"]
                - r[f"{fmt}_reglab"][2].get("plot_seconds", 0.0) for r in rounds),
            f"{fmt}_floor_import_s": med(f["import_s"] for _, _, f in floor_runs),
            f"{fmt}_floor_read_s": med(f["read_s"] for _, _, f in floor_runs),
            f"{fmt}_floor_epoch_s": med(f["epoch_s"] for _, _, f in floor_runs),
            f"{fmt}_read_reglab_s": med(a for a, _ in reads[fmt]),
            f"{fmt}_read_pyarrow_s": med(b for _, b in reads[fmt]),
            f"{fmt}_read_over_pyarrow": med(a / b for a, b in reads[fmt]),
            f"{fmt}_reglab_peak_mb": reglab_peak / mb,
            f"{fmt}_floor_peak_mb": med(rss for _, rss, _ in floor_runs) / mb,
            f"{fmt}_rss_beyond_imports_over_data": (reglab_peak - imports_peak) / data_bytes,
            f"{fmt}_rss_beyond_imports_and_pyarrow_over_data":
                (reglab_peak - imports_pyarrow_peak) / data_bytes,
            f"{fmt}_floor_rss_beyond_imports_over_data":
                (med(rss for _, rss, _ in floor_runs) - imports_peak) / data_bytes,
            f"{fmt}_runs": {"reglab": [round(w, 2) for w, _, _ in ours_runs],
                            "floor": [round(w, 2) for w, _, _ in floor_runs],
                            "read": [[round(a, 3), round(b, 3)] for a, b in reads[fmt]]}})
    return out


# -- 9. exact ------------------------------------------------------------------------------
#: Rows of the exact section's table (``--exact-rows``), read from CSV like the tables
#: section's (ten float features x0..x9 and y, written by ``write_table``).
EXACT_ROWS = 1_000_000
#: Rows the exact section generates with ``data=linear`` (``--exact-gen-rows``).
EXACT_GEN_ROWS = 10_000_000
#: Rounds of the exact section (``--exact-reps``).
EXACT_REPS = 3
#: The generated set's weights: ten features, as the table's.
EXACT_WEIGHT = "[" + ",".join(f"{(i % 7) - 3}.0" for i in range(TABLE_FEATURES)) + "]"
#: The two held-out splits of the generated runs: data=linear's own (no val, 20 % test)
#: and a 10 % validation split without a test split.
EXACT_GEN_SPLITS = {"default": [], "val10": ["data.val_fraction=0.1", "data.test_fraction=0"]}
#: The narrowest baseline: what the floor script and every reglab-train run import.
IMPORTS_TORCH_LIGHTNING = "import torch, pytorch_lightning"


def exact_table_cmd(path: Path, run_dir: Path, split: bool = True) -> list[str]:
    """`reglab-train data=csv ... optimizer=exact`; ``split=False`` solves on every row
    (no val or test split), as the floor does."""
    no_split = [] if split else ["data.val_fraction=0", "data.test_fraction=0"]
    return [str(BIN / "reglab-train"), "data=csv", f"data.source.path={path}",
            "data.source.target=y", "optimizer=exact", *no_split, f"hydra.run.dir={run_dir}"]


def exact_linear_cmd(rows: int, run_dir: Path, extra: list[str]) -> list[str]:
    return [str(BIN / "reglab-train"), "data=linear", f"data.source.weight={EXACT_WEIGHT}",
            f"data.source.num_samples={rows}", "optimizer=exact", *extra,
            f"hydra.run.dir={run_dir}"]


def _relative_difference(ours: dict[str, float], theirs: dict[str, float]) -> dict[str, float]:
    """Largest per-coefficient |a − b| / |b| and ‖a − b‖ / ‖b‖ over the names both have."""
    import numpy as np

    if set(ours) != set(theirs):
        raise RuntimeError(f"coefficient names differ: {sorted(ours)} against {sorted(theirs)}")
    names = sorted(theirs)
    a = np.array([ours[n] for n in names])
    b = np.array([theirs[n] for n in names])
    return {"max": float(np.max(np.abs(a - b) / np.abs(b))),
            "norm": float(np.linalg.norm(a - b) / np.linalg.norm(b))}


def bench_exact(reps: int) -> dict[str, Any]:
    """`reglab-train ... optimizer=exact`, whole processes, start to exit.

    1. On an EXACT_ROWS × 11 CSV table: reglab with data=csv's default split (10 % val,
       20 % test) and with no split, against `benchmarks/exact_floor.py` (imports torch and
       Lightning, pyarrow read to float64, ``numpy.linalg.lstsq`` on [X, 1]). Each round
       runs the three in a rotated order; ratios are medians of each round's own. The
       no-split run solves the floor's problem: its float64 coefficients in data units
       (``closed_form.params_data_units``) are compared with the floor's.
    2. EXACT_GEN_ROWS rows generated by ``data=linear`` (ten features): peak RSS over the
       float64 data's bytes (rows × 11 × 8), whole and beyond a process that only imports
       torch and Lightning, for data=linear's default split and for a 10 % val split.
    """
    load_start = _loadavg()
    root = TMP / "exact"
    cwd = root / "cwd"  # the children's working directory: must stay empty
    cwd.mkdir(parents=True, exist_ok=True)
    path = write_table(root, EXACT_ROWS)["csv"]
    small = write_table(root / "warmup", 1000)["csv"]
    floor = [sys.executable, str(HERE / "exact_floor.py")]
    runs = 0

    def reglab_run(cmd: Callable[[Path], list[str]], rows: int) -> tuple[float, int, dict]:
        nonlocal runs
        runs += 1
        run_dir = root / "runs" / f"{runs:03d}"
        wall_s, rss, _ = measured(cmd(run_dir), cwd)
        metrics = json.loads((run_dir / "metrics.json").read_text())
        missing = [f for f in ("model.pt", "checkpoints/last.ckpt", "tensorboard")
                   if not (run_dir / f).exists()]
        shutil.rmtree(run_dir)
        if missing or metrics.get("method") != "exact" or metrics.get("status") != "completed":
            raise RuntimeError(f"{cmd(run_dir)}: status {metrics.get('status')}, method "
                               f"{metrics.get('method')}, missing {missing}")
        if sum(v for k, v in metrics["rows"].items() if k != "val" or
               not metrics.get("val_is_train")) != rows:
            raise RuntimeError(f"reglab-train saw {metrics['rows']} rows, not {rows}")
        return wall_s, rss, metrics

    def table(split: bool, p: Path = path, rows: int = EXACT_ROWS
              ) -> tuple[float, int, dict]:
        return reglab_run(lambda d: exact_table_cmd(p, d, split), rows)

    def floor_run(p: Path = path) -> tuple[float, int, dict[str, Any]]:
        wall_s, rss, stdout = measured([*floor, str(p)], cwd)
        return wall_s, rss, json.loads(stdout.splitlines()[-1])

    # Warm-up on a 1000-row copy: byte-code and matplotlib's font caches.
    table(True, small, 1000), table(False, small, 1000), floor_run(small)
    reglab_run(lambda d: exact_linear_cmd(1000, d, []), 1000)

    who = {"split": lambda: table(True), "nosplit": lambda: table(False), "floor": floor_run}
    names = list(who)
    rounds: list[dict[str, Any]] = []
    for i in range(reps):
        r: dict[str, Any] = {}
        r["imports_s"], r["imports_rss"], _ = measured(
            [sys.executable, "-c", IMPORTS_TORCH_LIGHTNING], cwd)
        for name in names[i % 3:] + names[:i % 3]:
            r[name] = who[name]()
        rounds.append(r)
        print(f"[bench] exact table round {i + 1}/{reps}: "
              + ", ".join(f"{n} {r[n][0]:.2f} s" for n in names), flush=True)

    gen_bytes = EXACT_GEN_ROWS * (TABLE_FEATURES + 1) * 8
    gen_rounds: list[dict[str, Any]] = []
    for i in range(reps):
        g: dict[str, Any] = {"imports_rss": measured(
            [sys.executable, "-c", IMPORTS_TORCH_LIGHTNING], cwd)[1],
            "reglab_imports_rss": measured([sys.executable, "-c", TABLE_IMPORTS], cwd)[1]}
        for label, extra in EXACT_GEN_SPLITS.items():
            g[label] = reglab_run(lambda d, e=extra: exact_linear_cmd(EXACT_GEN_ROWS, d, e),
                                  EXACT_GEN_ROWS)
        gen_rounds.append(g)
        print(f"[bench] exact generated round {i + 1}/{reps}: "
              + ", ".join(f"{k} {g[k][0]:.1f} s, peak {g[k][1] / 2**20:,.0f} MB"
                          for k in EXACT_GEN_SPLITS), flush=True)
    leftovers = sorted(p.name for p in cwd.iterdir())
    if leftovers:
        raise RuntimeError(f"the runs left files in their working directory: {leftovers}")

    med = statistics.median
    mb = 2**20
    table_bytes = EXACT_ROWS * (TABLE_FEATURES + 1) * 8
    floor_params = rounds[-1]["floor"][2]["params"]
    nosplit = rounds[-1]["nosplit"][2]
    out: dict[str, Any] = {
        "rows": EXACT_ROWS, "csv_file_mb": path.stat().st_size / mb,
        "table_data_mb": table_bytes / mb,
        "closed_form_py_sha1": hashlib.sha1(
            (REPO / "src" / "reglab" / "analysis" / "least_squares.py").read_bytes()
        ).hexdigest()[:12],
        "rss_from": str(GNU_TIME) if GNU_TIME.is_file() else "getrusage(RUSAGE_CHILDREN)",
        "load_average_start": load_start,
        "imports_s": med(r["imports_s"] for r in rounds)}
    for name in names:
        out[f"{name}_s"] = med(r[name][0] for r in rounds)
    for name in ("split", "nosplit"):
        out[f"{name}_over_floor"] = med(r[name][0] / r["floor"][0] for r in rounds)
    for name in ("split", "nosplit"):
        out.update({
            f"{name}_solve_s": med(r[name][2]["fit_seconds"] for r in rounds),
            f"{name}_plot_s": med(r[name][2].get("plot_seconds", 0.0) for r in rounds),
            f"{name}_beyond_imports_solve_plots_s": med(
                r[name][0] - r["imports_s"] - r[name][2]["fit_seconds"]
                - r[name][2].get("plot_seconds", 0.0) for r in rounds)})
    for phase in ("import", "read", "solve"):
        out[f"floor_{phase}_s"] = med(r["floor"][2][f"{phase}_s"] for r in rounds)
    solved = _relative_difference(nosplit["closed_form"]["params_data_units"], floor_params)
    learned = nosplit["params_data_units"]  # the model's weights, in its float32
    model = _relative_difference(
        {"const": learned["bias"][0] if isinstance(learned["bias"], list) else learned["bias"],
         **{f"x{i}": w for i, w in enumerate(learned["weight"][0])}}, floor_params)
    out.update({
        "coef_max_rel_diff": solved["max"], "coef_norm_rel_diff": solved["norm"],
        "model_coef_max_rel_diff": model["max"], "model_coef_norm_rel_diff": model["norm"],
        "imports_peak_mb": med(r["imports_rss"] for r in rounds) / mb,
        **{f"{n}_peak_mb": med(r[n][1] for r in rounds) / mb for n in names},
        "gen_rows": EXACT_GEN_ROWS, "gen_data_mb": gen_bytes / mb})
    gen_imports = med(g["imports_rss"] for g in gen_rounds)
    out["gen_imports_peak_mb"] = gen_imports / mb
    out["gen_reglab_imports_peak_mb"] = med(g["reglab_imports_rss"] for g in gen_rounds) / mb
    for label in EXACT_GEN_SPLITS:
        peak = med(g[label][1] for g in gen_rounds)
        out.update({
            f"gen_{label}_s": med(g[label][0] for g in gen_rounds),
            f"gen_{label}_solve_s": med(g[label][2]["fit_seconds"] for g in gen_rounds),
            f"gen_{label}_peak_mb": peak / mb,
            f"gen_{label}_peak_over_data": peak / gen_bytes,
            f"gen_{label}_beyond_imports_over_data": (peak - gen_imports) / gen_bytes})
    out["load_average_end"] = _loadavg()
    out["runs"] = {**{n: [round(r[n][0], 2) for r in rounds] for n in names},
                   **{f"gen_{k}": [[round(g[k][0], 1), round(g[k][1] / mb)] for g in gen_rounds]
                      for k in EXACT_GEN_SPLITS}}
    out["coefficients"] = {"floor": floor_params,
                           "reglab": nosplit["closed_form"]["params_data_units"]}
    return out


SECTIONS: dict[str, Callable[[int], dict[str, Any]]] = {
    "tiny": bench_tiny, "process": bench_process, "large": bench_large, "startup": bench_startup,
    "sweep": bench_sweep, "memory": bench_memory, "closed_form": bench_closed_form,
    "tables": bench_tables, "exact": bench_exact,
}
#: With --gpu: the same pairs with reglab on trainer=gpu and the plain loops on CUDA.
GPU_SECTIONS: dict[str, Callable[[int], dict[str, Any]]] = {
    "tiny_gpu": bench_tiny_gpu, "large_gpu": bench_large_gpu,
}

#: (section, key, comparison, target, label); a target of None is a figure shown for
#: reference. The rows of the results table, in this order.
TARGETS: list[tuple[str, str, str, float | None, str]] = [
    ("tiny", "reglab_over_plain", "<=", 4.0, "tiny: reglab fit / plain loop"),
    ("tiny", "reglab_over_lean", "<=", 1.3,
     "tiny: reglab's default fit ÷ a lean stock-Lightning script (issue 27)"),
    ("tiny_gpu", "reglab_over_plain", "<=", 4.0, "tiny on the GPU: reglab fit / plain loop"),
    ("process", "reglab_over_handwritten", "<=", 1.8,
     "process: `reglab-train` ÷ hand-written PyTorch script, start to exit"),
    ("process", "reglab_over_stock", "<=", 0.65,
     "process: `reglab-train` ÷ stock Lightning script, start to exit"),
    ("large", "reglab_over_plain", ">=", 0.8, "large: reglab rows/s ÷ plain loop rows/s"),
    ("large_gpu", "reglab_over_plain", ">=", 0.8, "large on the GPU: reglab ÷ plain rows/s"),
    ("startup", "help_s", "<=", 1.0, "`reglab-train --help` (s)"),
    ("startup", "beyond_imports_and_fit_s", "<=", 1.0,
     "default run beyond importing torch + Lightning, fit excluded (s)"),
    ("sweep", "joblib_over_sequential", "<=", 0.7, "sweep: joblib ÷ sequential wall"),
    ("sweep", "long_joblib_over_sequential", "", None,
     "the same sweep with 10× the epochs: joblib ÷ sequential wall"),
    ("memory", "beyond_imports_over_data", "<=", 2.5, "memory beyond imports ÷ data bytes"),
    ("tables", "csv_process_over_floor", "<=", 1.6,
     "tables, CSV: `reglab-train data=csv` ÷ floor script, start to exit"),
    ("tables", "parquet_process_over_floor", "<=", 1.6,
     "tables, Parquet: `reglab-train data=csv` ÷ floor script, start to exit"),
    ("tables", "csv_read_over_pyarrow", "<=", 2.0,
     "tables, CSV: `reglab.data.tables.read_table` ÷ pyarrow read to float64"),
    ("tables", "parquet_read_over_pyarrow", "<=", 2.0,
     "tables, Parquet: `reglab.data.tables.read_table` ÷ pyarrow read to float64"),
    ("tables", "csv_rss_beyond_imports_over_data", "<=", 2.5,
     "tables, CSV: reglab-train peak RSS beyond imports ÷ float64 table bytes"),
    ("tables", "parquet_rss_beyond_imports_over_data", "<=", 2.5,
     "tables, Parquet: reglab-train peak RSS beyond imports ÷ float64 table bytes"),
    ("exact", "split_over_floor", "<=", 1.3,
     "exact, CSV: `reglab-train data=csv optimizer=exact` ÷ lstsq floor script, start to exit"),
    ("exact", "nosplit_over_floor", "<=", 1.3,
     "exact, CSV, no val/test split: `reglab-train` ÷ lstsq floor script, start to exit"),
    ("exact", "coef_max_rel_diff", "", None,
     "exact, CSV, no split: largest relative difference of the 11 coefficients, reglab vs lstsq"),
    ("exact", "gen_default_peak_over_data", "<=", 2.5,
     "exact, generated (data=linear's split): peak RSS ÷ float64 data bytes"),
    ("exact", "gen_val10_peak_over_data", "<=", 2.5,
     "exact, generated (10 % val, no test): peak RSS ÷ float64 data bytes"),
    ("exact", "gen_default_beyond_imports_over_data", "", None,
     "exact, generated (data=linear's split): peak RSS beyond torch + Lightning ÷ data bytes"),
    ("exact", "gen_val10_beyond_imports_over_data", "", None,
     "exact, generated (10 % val, no test): peak RSS beyond torch + Lightning ÷ data bytes"),
]


def environment() -> dict[str, str]:
    import pytorch_lightning
    import torch

    env = {"date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
           "machine": f"{platform.machine()}, {os.cpu_count()} cores, "
                      f"{platform.system()} {platform.release()}",
           "cpu": _cpu_name(), "python": platform.python_version(), "torch": torch.__version__,
           "pytorch_lightning": pytorch_lightning.__version__}
    commit = _commit()
    if commit:
        env["reglab commit"] = commit
    try:
        import pyarrow

        env["pyarrow"] = pyarrow.__version__
    except ImportError:
        pass
    if torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name(0)
    return env


def _commit() -> str | None:
    """The checkout's commit, marked when files differ from it; None outside git."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True,
                              check=True).stdout.strip()

    try:
        head = git("rev-parse", "--short", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.CalledProcessError):
        return None
    return f"{head} (with uncommitted changes)" if dirty else head


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:,.0f}" if abs(v) >= 1e3 else f"{v:.3g}"
    return str(v)


def _series(value: Any) -> bool:
    """Per-run values: printed while the suite runs, left out of the tables."""
    return isinstance(value, (list, dict))


def render(env: dict[str, str], results: dict[str, dict[str, Any]]) -> str:
    lines = ["# reglab benchmark results", "",
             *(f"- {k}: {v}" for k, v in env.items()), "",
             "| figure | target | measured | met |", "| --- | --- | --- | --- |"]
    for section, key, op, target, label in TARGETS:
        value = results.get(section, {}).get(key)
        if value is None:
            continue
        if target is None:
            lines.append(f"| {label} | — | {fmt(value)} | — |")
            continue
        met = value <= target if op == "<=" else value >= target
        lines.append(f"| {label} | {op} {target} | {fmt(value)} | {'yes' if met else 'NO'} |")
    for section, values in results.items():
        lines += ["", f"## {section}", "", "| quantity | value |", "| --- | --- |"]
        lines += [f"| {k} | {fmt(v)} |" for k, v in values.items() if not _series(v)]
    return "\n".join(lines) + "\n"


def main() -> None:
    global TABLE_ROWS, EXACT_ROWS, EXACT_GEN_ROWS
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sections", nargs="*", choices=[*SECTIONS, []], default=[])
    parser.add_argument("--reps", type=int, default=5, help="repetitions per figure")
    parser.add_argument("--out", type=Path, default=HERE / "results.md")
    parser.add_argument("--gpu", action="store_true",
                        help="also tiny and large with trainer=gpu (needs CUDA)")
    parser.add_argument("--table-rows", type=int, default=TABLE_ROWS,
                        help=f"rows of the tables section's table (default {TABLE_ROWS:,})")
    parser.add_argument("--table-reps", type=int, default=TABLE_REPS,
                        help=f"rounds of the tables section (default {TABLE_REPS})")
    parser.add_argument("--exact-rows", type=int, default=EXACT_ROWS,
                        help=f"rows of the exact section's CSV table (default {EXACT_ROWS:,})")
    parser.add_argument("--exact-gen-rows", type=int, default=EXACT_GEN_ROWS,
                        help=f"rows the exact section generates (default {EXACT_GEN_ROWS:,})")
    parser.add_argument("--exact-reps", type=int, default=EXACT_REPS,
                        help=f"rounds of the exact section (default {EXACT_REPS})")
    args = parser.parse_args()
    TABLE_ROWS = args.table_rows
    EXACT_ROWS, EXACT_GEN_ROWS = args.exact_rows, args.exact_gen_rows
    sections = dict(SECTIONS)
    wanted = args.sections or list(SECTIONS)
    if args.gpu:
        import torch

        if not torch.cuda.is_available():
            parser.error("--gpu: no CUDA device is visible to torch")
        sections.update(GPU_SECTIONS)
        wanted += list(GPU_SECTIONS)
    results: dict[str, dict[str, Any]] = {}
    for name in wanted:
        print(f"[bench] {name} …", flush=True)
        if name == "process":
            reps = max(3, args.reps)
        elif name == "tables":
            reps = args.table_reps
        elif name == "exact":
            reps = args.exact_reps
        elif name in ("tiny", "large", "startup", "closed_form", *GPU_SECTIONS):
            reps = args.reps
        else:
            reps = max(2, args.reps // 2)
        results[name] = sections[name](reps)
        print(json.dumps(results[name], indent=1), flush=True)
    text = render(environment(), results)
    # benchmarks/study.py keeps its section after this mark; it is carried over.
    old = args.out.read_text() if args.out.is_file() else ""
    mark = "<!-- benchmarks/study.py -->"
    args.out.write_text(text + ("\n" + old[old.index(mark):] if mark in old else ""))
    print(text)
    shutil.rmtree(TMP, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
