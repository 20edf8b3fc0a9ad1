"""Optuna studies through ``reglab-train``: what pruning saves, a killed study continued,
the sweeper's cost per trial, and trials in flight on two workers.

    python benchmarks/study.py                       # all four, into benchmarks/results.md
    python benchmarks/study.py pruning --trials 20   # one figure, a smaller study

Each figure runs real commands side by side in this one run and is given as a ratio (or
a count). Not part of the test suite: timings belong to a quiet machine.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent
MARK = "<!-- benchmarks/study.py -->"
#: Per-trial overhead of the sweep on main before reglab's sweeper replaced
#: hydra-optuna-sweeper 1.3.0 (commit 0451d9e, optuna 2.10.1, in-memory storage), measured
#: on this machine on 2026-12-07 by the same command as :func:`overhead`: three runs,
#: 1.712, 1.423 and 1.230 s per trial.
BEFORE_OVERHEAD_S = 1.423
QUIET = ["logger=none", "callbacks.plots=null"]


def train(args: list[str], cwd: Path, env: dict[str, str] | None = None,
          bin_dir: Path = BIN) -> tuple[float, str]:
    start = time.perf_counter()
    out = subprocess.run([str(bin_dir / "reglab-train"), *args], cwd=cwd, text=True,
                         capture_output=True, env=env)
    return time.perf_counter() - start, out.stdout + out.stderr


def study(sweep: Path) -> Any:
    import optuna

    found = json.loads((sweep / "study.json").read_text())
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.load_study(study_name=found["study_name"], storage=found["storage"])


def records(sweep: Path) -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sweep.glob("*/metrics.json")]


def pruning(root: Path, trials: int, epochs: int) -> dict[str, Any]:
    """The same TPE study with the median pruner (as configured by default, and with
    five warm-up epochs) and without a pruner."""
    # quadratic_mlp on 2,000 points in batches of 100 (16 steps an epoch, a 20 % val
    # split): a job whose epochs matter, as the issue asks.
    base = ["-m", "hydra/sweeper=optuna", "experiment=quadratic_mlp", "model.hidden=[64,64]",
            "data.source.num=2000", "data.batch_size=100", "data.val_fraction=0.2",
            "data.shuffle=true", f"trainer.max_epochs={epochs}",
            "optimizer.lr=tag(log, interval(1e-4, 1.0))",
            f"hydra.sweeper.n_trials={trials}", "hydra.sweeper.sampler.seed=0", *QUIET]
    out: dict[str, Any] = {}
    variants = (("unpruned", ["hydra.sweeper.pruner=null"]), ("pruned", []),
                ("pruned_warmup_5", ["hydra.sweeper.pruner.n_warmup_steps=5"]))
    for name, extra in variants:
        sweep = root / name
        seconds, _ = train([*base, *extra, f"hydra.sweep.dir={sweep}"], root)
        found = study(sweep)
        states = [t.state.name for t in found.trials]
        out[name] = {"wall_s": round(seconds, 1),
                     "epochs": sum(r.get("epochs") or 0 for r in records(sweep)),
                     "best_val": found.best_value,
                     "pruned": states.count("PRUNED"), "failed": states.count("FAIL")}
    u = out["unpruned"]
    for name in ("pruned", "pruned_warmup_5"):
        p, tail = out[name], name.removeprefix("pruned")
        out[f"epochs_ratio{tail}"] = round(p["epochs"] / u["epochs"], 3)
        out[f"wall_ratio{tail}"] = round(p["wall_s"] / u["wall_s"], 3)
        out[f"best_val_gap{tail}"] = round(p["best_val"] / u["best_val"] - 1, 4)
    return out


def resume(root: Path, trials: int = 30, kill_after: int = 10) -> dict[str, Any]:
    """A study killed with SIGKILL after its 10th trial, then the same command again."""
    sweep = root / "resume"
    args = ["hparams_search=optuna", f"hydra.sweeper.n_trials={trials}",
            "trainer.max_epochs=5", "hydra.sweeper.pruner=null", *QUIET,
            f"hydra.sweep.dir={sweep}"]
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    proc = subprocess.Popen([str(BIN / "reglab-train"), *args], cwd=root, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    seen = 0
    assert proc.stdout is not None
    for line in proc.stdout:
        seen += "] trial " in line
        if seen == kill_after:
            time.sleep(0.3)  # the 11th trial has been asked for and is running
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait()
    proc.stdout.close()
    killed_states = [t.state.name for t in study(sweep).trials]
    seconds, _ = train(args, root, env)
    states = [t.state.name for t in study(sweep).trials]
    rows = (sweep / "sweep_summary.csv").read_text().strip().splitlines()[1:]
    return {"trials_when_killed": len(killed_states),
            "running_when_killed": killed_states.count("RUNNING"),
            "trials_after": len(states),
            "finished_or_failed": sum(s in ("COMPLETE", "PRUNED", "FAIL") for s in states),
            "failed": states.count("FAIL"), "report_rows": len(rows),
            "second_command_s": round(seconds, 1)}


def overhead(root: Path, trials: int = 20, reps: int = 5,
             before: Path | None = None) -> dict[str, Any]:
    """Wall time of a study of 1-epoch jobs minus the jobs' own fit seconds, per trial;
    with ``before`` (the bin dir of a venv holding main before this sweeper, with
    hydra-optuna-sweeper), the same command there, the two alternating."""
    args = ["hparams_search=optuna", f"hydra.sweeper.n_trials={trials}",
            "trainer.max_epochs=1", "optimizer.lr=interval(0.001,0.05)"]
    ours, theirs = [], []
    for _ in range(reps):
        for bin_dir, found in ((BIN, ours), *(((before, theirs),) if before else ())):
            sweep = root / f"overhead-{len(found)}-{bin_dir.parent.name}"
            seconds, _ = train([*args, f"hydra.sweep.dir={sweep}"], root, bin_dir=bin_dir)
            fits = sum(r.get("fit_seconds") or 0.0 for r in records(sweep))
            found.append((seconds - fits) / trials)
    mine = statistics.median(ours)
    base = statistics.median(theirs) if theirs else BEFORE_OVERHEAD_S
    return {"per_trial_s": [round(x, 3) for x in ours], "median_s": round(mine, 3),
            "before_per_trial_s": [round(x, 3) for x in theirs] or "recorded",
            "before_s": round(base, 3), "ratio": round(mine / base, 3),
            **storage_share(root, trials)}


def storage_share(root: Path, trials: int) -> dict[str, Any]:
    """The study's own part of that overhead: ask and tell on the SQLite storage in the
    sweeper, and opening the study in each job (pruning callback)."""
    import optuna

    from reglab.search import study as studies

    studies.quiet_optuna()
    url = f"sqlite:///{root / 'share.db'}"
    storage = studies.open_storage(url, heartbeat=True)
    found = optuna.create_study(storage=storage, study_name="share")
    space = {"lr": optuna.distributions.FloatDistribution(1e-3, 1e-1, log=True)}
    start = time.perf_counter()
    for _ in range(trials):
        trial = found.ask(space)
        found.tell(trial, 1.0)
    ask_tell = (time.perf_counter() - start) / trials
    start = time.perf_counter()
    for _ in range(5):
        optuna.load_study(study_name="share", storage=studies.open_storage(url))
    opening = (time.perf_counter() - start) / 5
    return {"ask_tell_s": round(ask_tell, 4), "job_opens_study_s": round(opening, 4)}


def parallel(root: Path, trials: int = 20) -> dict[str, Any]:
    """20 trials of unequal length, one worker against two: short trials (20 or 200
    epochs of noisy_line, 0.5 or 4 s each, where the per-trial cost weighs) and five
    times longer ones (100 or 1000 epochs, where the fits dominate)."""
    out: dict[str, Any] = {}
    for name, lengths in (("short", "20,200"), ("long", "100,1000")):
        base = ["-m", "hydra/sweeper=optuna", "experiment=noisy_line",
                "optimizer.lr=tag(log, interval(0.001, 0.05))",
                f"trainer.max_epochs=choice({lengths})", f"hydra.sweeper.n_trials={trials}",
                "hydra.sweeper.pruner=null",
                "hydra.sweeper.sampler._target_=optuna.samplers.RandomSampler",
                "hydra.sweeper.sampler.seed=0", *QUIET]
        seq, _ = train([*base, f"hydra.sweep.dir={root / name / 'seq'}"], root)
        par, _ = train([*base, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
                        f"hydra.sweep.dir={root / name / 'par'}"], root)
        out[name] = {"epochs": lengths, "sequential_s": round(seq, 1),
                     "joblib_2_s": round(par, 1), "ratio": round(par / seq, 3)}
    return out


def render(results: dict[str, dict[str, Any]]) -> str:
    import optuna
    import torch

    lines = [MARK, "## Optuna studies (benchmarks/study.py)", "",
             f"- date: {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC; machine: "
             f"{platform.machine()}, {os.cpu_count()} cores; python {platform.python_version()}"
             f"; torch {torch.__version__}; optuna {optuna.__version__}", ""]
    targets = {
        "pruning": [("epochs pruned ÷ unpruned", "epochs_ratio", "<= 0.4"),
                    ("wall pruned ÷ unpruned", "wall_ratio", "<= 0.6"),
                    ("best val/loss pruned ÷ unpruned − 1", "best_val_gap", "<= 0.02"),
                    ("epochs, n_warmup_steps=5 ÷ unpruned", "epochs_ratio_warmup_5", "—"),
                    ("wall, n_warmup_steps=5 ÷ unpruned", "wall_ratio_warmup_5", "—"),
                    ("best val/loss, n_warmup_steps=5 ÷ unpruned − 1", "best_val_gap_warmup_5",
                     "—")],
        "resume": [("trials in storage after kill -9 and rerun (of 30)", "trials_after", "30"),
                   ("rows in the report", "report_rows", "30")],
        "overhead": [("sweep overhead per trial ÷ before (hydra-optuna-sweeper)", "ratio",
                      "<= 1.0")],
        "parallel": [("joblib 2 workers ÷ sequential wall, 20/200-epoch trials", "short",
                      "<= 0.6"),
                     ("joblib 2 workers ÷ sequential wall, 100/1000-epoch trials", "long",
                      "<= 0.6")],
    }
    lines += ["| figure | target | measured |", "| --- | --- | --- |"]
    for name, rows in targets.items():
        for label, key, target in rows:
            if name in results:
                found = results[name].get(key)
                found = found.get("ratio") if isinstance(found, dict) else found
                lines.append(f"| {label} | {target} | {found} |")
    for name, found in results.items():
        lines += ["", f"### {name}", "", "```json", json.dumps(found, indent=1), "```"]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("figures", nargs="*", default=[],
                        choices=[[], "pruning", "resume", "overhead", "parallel"])
    parser.add_argument("--trials", type=int, default=40, help="trials of the pruning study")
    parser.add_argument("--epochs", type=int, default=200, help="epochs of a pruning trial")
    parser.add_argument("--reps", type=int, default=5, help="runs of each overhead study")
    parser.add_argument("--out", type=Path, default=HERE / "results.md")
    parser.add_argument("--before", type=Path, default=None,
                        help="bin dir of a venv with main before reglab's sweeper (its "
                             "reglab-train), for the overhead figure side by side")
    args = parser.parse_args()
    wanted = args.figures or ["pruning", "resume", "overhead", "parallel"]
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="reglab-study-") as tmp:
        for name in wanted:
            root = Path(tmp) / name
            root.mkdir()
            print(f"[study] {name} …", flush=True)
            if name == "pruning":
                results[name] = pruning(root, args.trials, args.epochs)
            elif name == "overhead":
                results[name] = overhead(root, reps=args.reps, before=args.before)
            else:
                results[name] = globals()[name](root)
            print(json.dumps(results[name], indent=1), flush=True)
    text = render(results)
    old = args.out.read_text() if args.out.is_file() else ""
    head = old.split(MARK)[0].rstrip("\n")
    args.out.write_text((head + "\n\n" if head else "") + text)
    print(text)


if __name__ == "__main__":
    sys.exit(main())
