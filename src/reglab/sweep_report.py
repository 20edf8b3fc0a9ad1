"""The sweep report: one table, one heat map and one chart of curves per multirun.

Built only from files on disk (each job's ``.hydra/overrides.yaml`` and
``metrics.json``), so the same report comes out at the end of a sweep, for a sweep that
was cut short, and for one that ran on another machine.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

log = logging.getLogger("reglab")

SUMMARY_CSV = "sweep_summary.csv"
SUMMARY_MD = "sweep_summary.md"
HEATMAP_PNG = "sweep_heatmap.png"
CURVES_PNG = "sweep_curves.png"
COLUMNS = ["job", "overrides", "status", "train_loss", "val_loss", "test_loss", "r2",
           "epochs", "fit_seconds", "run_dir", "error"]


@dataclass
class Report:
    rows: list[dict[str, Any]]
    swept: list[str]
    markdown: str
    files: list[Path] = field(default_factory=list)

    @property
    def best(self) -> dict[str, Any] | None:
        done = [r for r in self.rows if _num(r["val_loss"]) is not None]
        return min(done, key=lambda r: r["val_loss"]) if done else None


def _num(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def _parse_override(text: str) -> tuple[str, Any]:
    key, _, raw = text.partition("=")
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        value = raw
    return key.lstrip("+~"), value


def job_dirs(sweep_dir: Path) -> list[Path]:
    """The numbered job folders Hydra made in a multirun dir."""
    if not sweep_dir.is_dir():
        raise FileNotFoundError(f"{sweep_dir}: no such sweep directory")
    jobs = sorted((d for d in sweep_dir.iterdir() if d.is_dir() and d.name.isdigit()),
                  key=lambda d: int(d.name))
    if not jobs:
        raise ValueError(f"{sweep_dir}: not a sweep directory (no numbered job folders)")
    return jobs


def _read_metrics(path: Path) -> tuple[dict[str, Any], str]:
    """A job's metrics.json, or ({}, why it cannot be read): one broken job (a truncated
    file, a disk that filled up) is reported by name, never the whole sweep refused."""
    if not path.is_file():
        return {}, ""
    try:
        metrics = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        return {}, f"{path}: unreadable ({type(exc).__name__}: {str(exc)[:80]})"
    if not isinstance(metrics, dict):
        return {}, f"{path}: unreadable (holds a {type(metrics).__name__}, not a record)"
    return metrics, ""


def collect(sweep_dir: Path) -> tuple[list[dict[str, Any]], list[str],
                                      dict[str, dict[str, Any]]]:
    """One row per job, the swept keys, and each job's metrics.json (for curves)."""
    rows, overrides_by_job, metrics_by_job = [], {}, {}
    for job in job_dirs(sweep_dir):
        ov_file = job / ".hydra" / "overrides.yaml"
        try:
            overrides = yaml.safe_load(ov_file.read_text()) if ov_file.is_file() else []
        except (OSError, UnicodeDecodeError, yaml.YAMLError):
            overrides = []
        if not isinstance(overrides, list):
            overrides = []
        overrides = [str(o) for o in overrides]
        overrides_by_job[job.name] = dict(_parse_override(o) for o in overrides)
        metrics, unreadable = _read_metrics(job / "metrics.json")
        metrics_by_job[job.name] = metrics
        test = metrics.get("test") or {}
        rows.append({
            "job": job.name,
            "overrides": " ".join(overrides or []),
            "status": "unreadable" if unreadable else metrics.get("status", "missing"),
            "train_loss": metrics.get("train_loss"),
            "val_loss": metrics.get("val_loss"),
            "test_loss": test.get("mse"),
            "r2": test.get("r2"),
            "epochs": metrics.get("epochs"),
            "fit_seconds": metrics.get("fit_seconds"),
            "run_dir": str(job.resolve()),
            "error": unreadable or metrics.get("error") or (
                f"diverged at step {metrics['diverged_at_step']}"
                if metrics.get("status") == "diverged" else ""),
        })
    keys = list(dict.fromkeys(k for ov in overrides_by_job.values() for k in ov))
    swept = [k for k in keys
             if len({repr(ov.get(k)) for ov in overrides_by_job.values()}) > 1] or keys
    for row in rows:
        for key in swept:
            row[key] = overrides_by_job[row["job"]].get(key)
    return rows, swept, metrics_by_job


def _cell(value: Any) -> str:
    if value is None or value == "":
        return "—"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def to_markdown(rows: list[dict[str, Any]], swept: list[str], title: str) -> str:
    """The table sorted by val loss (failed jobs last), the best row marked."""
    ordered = sorted(rows, key=lambda r: (_num(r["val_loss"]) is None,
                                          _num(r["val_loss"]) or 0.0, int(r["job"])))
    best = ordered[0] if ordered and _num(ordered[0]["val_loss"]) is not None else None
    cols = ["job", *swept, "status", "val_loss", "train_loss", "test_loss", "r2", "epochs",
            "fit_seconds"]
    done = sum(r["status"] == "completed" for r in rows)
    lines = [f"## Sweep {title}", "",
             f"{len(rows)} jobs: {done} completed, {len(rows) - done} not"
             + (f"; best val_loss {best['val_loss']:.4g} (job {best['job']})" if best else ""),
             "", "| " + " | ".join(["", *cols]) + " |",
             "|" + "---|" * (len(cols) + 1)]
    for r in ordered:
        mark = "★ best" if r is best else ""
        lines.append("| " + " | ".join([mark, *(_cell(r.get(c)) for c in cols)]) + " |")
    failed = [r for r in rows if r["error"]]
    if failed:
        lines += ["", "Failures:"]
        lines += [f"- job {r['job']} ({r['overrides']}): {r['error']}" for r in failed]
    return "\n".join(lines) + "\n"


def write_csv(path: Path, rows: list[dict[str, Any]], swept: list[str]) -> None:
    cols = ["job", "overrides", *swept, *COLUMNS[2:]]
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=cols, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({c: "" if row.get(c) is None else row.get(c) for c in cols})


def _sort_key(value: Any) -> tuple[int, Any]:
    return (0, value) if isinstance(value, (int, float)) else (1, str(value))


def _is_log_axis(values: list[Any]) -> bool:
    nums = [v for v in values if isinstance(v, (int, float))]
    return len(nums) == len(values) and min(nums) > 0 and max(nums) / min(nums) >= 10


def plot_comparison(path: Path, rows: list[dict[str, Any]], swept: list[str]) -> bool:
    """Final val loss over the swept axes: a heat map for two keys, a line for one."""
    if not swept or not any((_num(r["val_loss"]) or 0) > 0 for r in rows):
        return False  # nothing finished: no losses to compare
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import LogNorm

    fig, ax = plt.subplots(figsize=(6.4, 4.8), layout="constrained")
    if len(swept) == 1:
        key = swept[0]
        pts = sorted(((r[key], _num(r["val_loss"])) for r in rows), key=lambda p: _sort_key(p[0]))
        xs = [p[0] for p in pts]
        positions = xs if all(isinstance(x, (int, float)) for x in xs) else list(range(len(xs)))
        ok = [(x, y) for x, y in zip(positions, (p[1] for p in pts), strict=True) if y is not None]
        ax.plot([p[0] for p in ok], [p[1] for p in ok], "o-")
        for x, y in zip(positions, (p[1] for p in pts), strict=True):
            if y is None:
                ax.axvline(x, color="tab:red", ls=":", lw=1)
        if positions is not xs:
            ax.set_xticks(positions, [str(x) for x in xs])
        elif _is_log_axis(xs):
            ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(key)
        ax.set_ylabel("final val loss (red: failed)")
    else:
        kx, ky = swept[0], swept[1]
        xs = sorted({r[kx] for r in rows}, key=_sort_key)
        ys = sorted({r[ky] for r in rows}, key=_sort_key)
        grid = [[math.nan] * len(xs) for _ in ys]
        for r in rows:  # with more than two keys swept: the best over the others
            v = _num(r["val_loss"])
            i, j = ys.index(r[ky]), xs.index(r[kx])
            if v is not None and (math.isnan(grid[i][j]) or v < grid[i][j]):
                grid[i][j] = v
        finite = [v for line in grid for v in line if not math.isnan(v) and v > 0]
        norm = LogNorm(min(finite), max(finite)) if finite and min(finite) < max(finite) else None
        image = ax.imshow(grid, cmap="viridis_r", norm=norm, aspect="auto", origin="lower")
        ax.set_xticks(range(len(xs)), [str(x) for x in xs])
        ax.set_yticks(range(len(ys)), [str(y) for y in ys])
        ax.set_xlabel(kx)
        ax.set_ylabel(ky)
        best = min(finite) if finite else None
        for i, line in enumerate(grid):
            for j, v in enumerate(line):
                if math.isnan(v):
                    ax.text(j, i, "failed", ha="center", va="center", color="tab:red")
                    continue
                # viridis_r is bright at low loss: dark text there, light text elsewhere.
                bright = norm is None or norm(v) < 0.5
                ax.text(j, i, f"{v:.3g}" + ("\n★ best" if v == best else ""), ha="center",
                        va="center", color="black" if bright else "white", fontsize=9,
                        fontweight="bold" if v == best else "normal")
        fig.colorbar(image, ax=ax, label="final val loss (log scale)")
    ax.set_title("Sweep: final validation loss")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def plot_curves(path: Path, rows: list[dict[str, Any]], swept: list[str],
                metrics_by_job: dict[str, dict[str, Any]]) -> bool:
    """Every job's val loss per epoch on one log-scale chart."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.8), layout="constrained")
    drawn = 0
    completed_max = 0.0
    for r in rows:
        history = (metrics_by_job.get(r["job"]) or {}).get("history") or {}
        pts = [(e, v) for e, v in history.get("val_loss") or history.get("train_loss") or []
               if v is not None and v > 0]
        if not pts:
            continue
        label = " ".join(f"{k.rsplit('.', 1)[-1]}={r.get(k)}" for k in swept) or f"job {r['job']}"
        ok = r["status"] == "completed"
        if ok:
            completed_max = max(completed_max, max(p[1] for p in pts))
        else:
            label += f" ({r['status']})"
        ax.plot([p[0] + 1 for p in pts], [p[1] for p in pts], label=label, lw=1.4,
                ls="-" if ok else ":")
        drawn += 1
    if not drawn:
        plt.close(fig)
        return False
    ax.set_yscale("log")
    if completed_max > 0:  # a diverged job's curve leaves the chart instead of flattening it
        ax.set_ylim(top=completed_max * 3)
    ax.set_xlabel("epoch")
    ax.set_ylabel("val loss")
    ax.set_title("Sweep: validation loss per epoch")
    ax.legend(fontsize=7, ncol=2 if drawn > 8 else 1, loc="best")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def write_report(sweep_dir: str | Path) -> Report:
    """Write the CSV, Markdown, heat map and curves into ``sweep_dir``."""
    sweep_dir = Path(sweep_dir)
    rows, swept, metrics_by_job = collect(sweep_dir)
    markdown = to_markdown(rows, swept, sweep_dir.name)
    files = [sweep_dir / SUMMARY_CSV, sweep_dir / SUMMARY_MD]
    write_csv(files[0], rows, swept)
    files[1].write_text(markdown)
    for name, draw in ((HEATMAP_PNG, lambda p: plot_comparison(p, rows, swept)),
                       (CURVES_PNG, lambda p: plot_curves(p, rows, swept, metrics_by_job))):
        try:  # a chart that cannot be drawn must not cost the table
            if draw(sweep_dir / name):
                files.append(sweep_dir / name)
        except Exception as exc:
            log.warning("sweep report: %s not drawn: %s: %s", name, type(exc).__name__, exc)
    return Report(rows=rows, swept=swept, markdown=markdown, files=files)


def main(argv: list[str] | None = None) -> int:
    """``reglab-sweep-report <multirun dir>``: rebuild the report from files on disk."""
    parser = argparse.ArgumentParser(
        prog="reglab-sweep-report",
        description="Summarise a reglab sweep: CSV, Markdown, heat map and loss curves.")
    parser.add_argument("sweep_dir", type=Path, help="outputs/<task>/multiruns/<stamp>")
    args = parser.parse_args(argv)
    try:
        report = write_report(args.sweep_dir)
    except (FileNotFoundError, ValueError) as exc:
        print(f"reglab-sweep-report: error: {exc}", file=sys.stderr)
        return 2
    print(report.markdown)
    print("wrote " + ", ".join(str(f) for f in report.files))
    return 0


if __name__ == "__main__":
    sys.exit(main())
