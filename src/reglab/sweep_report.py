"""The sweep report: one table, one heat map and one chart of curves per multirun, and a
validation curve (train and val loss against the swept value) when one numeric key is swept.

Built only from files on disk (each job's ``.hydra/overrides.yaml`` and
``metrics.json``), so the same report comes out at the end of a sweep, for a sweep that
was cut short, and for one that ran on another machine.

A job run with k-fold cross-validation (``data.folds=K``) carries a ``cv`` record; the
sweep is then decided by its K-fold mean val loss (shown as mean ± std), not by one split.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import re
import statistics
import sys
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from reglab.results import saved_run

if TYPE_CHECKING:
    from matplotlib.figure import Figure

log = logging.getLogger("reglab")

SUMMARY_CSV = "sweep_summary.csv"
SUMMARY_MD = "sweep_summary.md"
HEATMAP_PNG = "sweep_heatmap.png"
CURVES_PNG = "sweep_curves.png"
VALIDATION_CURVE_PNG = "sweep_validation_curve.png"
COLUMNS = ["job", "overrides", "status", "train_loss", "val_loss", "test_loss", "r2",
           "epochs", "fit_seconds", "run_dir", "error"]
#: From a job's ``cv`` record; in the CSV (after val_loss) only when some job has one.
CV_COLUMNS = ["cv_val_loss", "cv_val_std", "cv_train_loss", "folds"]
# How Hydra writes small and large floats (1e-06, 1e+20); YAML 1.1 reads them as strings.
_EXPONENT_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


@dataclass
class Report:
    rows: list[dict[str, Any]]
    swept: list[str]
    markdown: str
    files: list[Path] = field(default_factory=list)

    @property
    def best(self) -> dict[str, Any] | None:
        """The job with the lowest :func:`rank_loss` (K-fold mean when cross-validated)."""
        done = [r for r in self.rows if rank_loss(r) is not None]
        return min(done, key=lambda r: rank_loss(r) or 0.0) if done else None


def _num(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def rank_loss(row: dict[str, Any]) -> float | None:
    """The validation loss a sweep is decided by: the K-fold mean when the job was
    cross-validated (one split's loss is one draw of the noise), else its val loss."""
    cv = _num(row.get("cv_val_loss"))
    return cv if cv is not None else _num(row.get("val_loss"))


def _has_cv(row: dict[str, Any]) -> bool:
    return any(row.get(c) is not None for c in CV_COLUMNS)


def _folds_label(rows: list[dict[str, Any]]) -> str:
    """The fold count to print: "5" when every cross-validated job used 5, else "K"."""
    folds = {r.get("folds") for r in rows if r.get("folds") is not None}
    return str(folds.pop()) if len(folds) == 1 else "K"


def _cv_fields(metrics: dict[str, Any]) -> dict[str, Any]:
    """The K-fold summary of a job's ``cv`` record; all None for a job fit on one split."""
    cv = metrics.get("cv")
    if not isinstance(cv, dict):
        return dict.fromkeys(CV_COLUMNS)
    folds = cv.get("folds")
    return {"cv_val_loss": _num(cv.get("val_loss_mean")),
            "cv_val_std": _num(cv.get("val_loss_std")),
            "cv_train_loss": _num(cv.get("train_loss_mean")),
            "folds": folds if isinstance(folds, int) and not isinstance(folds, bool) else None}


def _parse_override(text: str) -> tuple[str, Any]:
    key, _, raw = text.partition("=")
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        value = raw
    if isinstance(value, str) and _EXPONENT_FLOAT.fullmatch(value.strip()):
        value = float(value)  # weight_decay=1e-06 is a number, to sort and to plot as one
    return key.lstrip("+~"), value


def job_dirs(sweep_dir: Path) -> list[Path]:
    """The job folders of a multirun dir, found by what Hydra and reglab write into each
    (``.hydra/`` or ``metrics.json``), whatever ``hydra.sweep.subdir`` named them:
    numbered folders in job order, others (``optimizer.lr=0.1``) by name."""
    if not sweep_dir.is_dir():
        raise FileNotFoundError(f"{sweep_dir}: no such sweep directory")
    found = {p.parent for name in (".hydra", "metrics.json") for p in sweep_dir.rglob(name)
             if p.parent != sweep_dir}
    # A job's own subfolders never hold these files; a folder inside another job's is not
    # a job of this sweep (a nested sweep, say).
    jobs = [d for d in found if not any(o in d.parents for o in found)]
    if not jobs:
        raise ValueError(f"{sweep_dir}: not a sweep directory (no job folders with "
                         ".hydra/ or metrics.json)")
    return sorted(jobs, key=lambda d: job_order(job_name(sweep_dir, d)))


def job_name(sweep_dir: Path, job: Path) -> str:
    """How the report names a job: its folder, relative to the sweep dir."""
    return job.relative_to(sweep_dir).as_posix()


def job_order(name: str) -> tuple[int, int, str]:
    """Numbered jobs first, in number order, then the others by name."""
    return (0, int(name), "") if name.isdigit() else (1, 0, name)


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
        # From .hydra/overrides.yaml, or the run record when Hydra wrote no .hydra/.
        overrides = (saved_run(job) or {}).get("overrides")
        overrides = [str(o) for o in overrides] if isinstance(overrides, list) else []
        name = job_name(sweep_dir, job)
        overrides_by_job[name] = dict(_parse_override(o) for o in overrides)
        metrics, unreadable = _read_metrics(job / "metrics.json")
        metrics_by_job[name] = metrics
        test = metrics.get("test") or {}
        rows.append({
            "job": name,
            "overrides": " ".join(overrides or []),
            "status": "unreadable" if unreadable else metrics.get("status", "missing"),
            "train_loss": metrics.get("train_loss"),
            "val_loss": metrics.get("val_loss"),
            **_cv_fields(metrics),
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


def _cv_cell(row: dict[str, Any]) -> str:
    mean, std = _num(row.get("cv_val_loss")), _num(row.get("cv_val_std"))
    if mean is None:
        return "—"
    return f"{mean:.4g}" if std is None else f"{mean:.4g} ± {std:.4g}"


def to_markdown(rows: list[dict[str, Any]], swept: list[str], title: str) -> str:
    """The table sorted by :func:`rank_loss` (failed jobs last), the best row marked; a
    ``cv val_loss`` column (K-fold mean ± std) when some job was cross-validated."""
    ordered = sorted(rows, key=lambda r: (rank_loss(r) is None, rank_loss(r) or 0.0,
                                          job_order(r["job"])))
    best = ordered[0] if ordered and rank_loss(ordered[0]) is not None else None
    with_cv = any(_has_cv(r) for r in rows)
    cols = ["job", *swept, "status", *(["cv val_loss"] if with_cv else []), "val_loss",
            "train_loss", "test_loss", "r2", "epochs", "fit_seconds"]
    done = sum(r["status"] == "completed" for r in rows)
    smoke = sum(r["status"] == "fast_dev_run" for r in rows)  # smoke tests, not failures
    summary = (f"{len(rows)} jobs: {done} completed, "
               + (f"{smoke} fast_dev_run smoke tests, " if smoke else "")
               + f"{len(rows) - done - smoke} not")
    k = _folds_label(rows)
    if best and _num(best.get("cv_val_loss")) is not None:
        summary += (f"; best cv val_loss {_cv_cell(best)} ({k}-fold mean ± std,"
                    f" job {best['job']})")
    else:
        if best:
            summary += f"; best val_loss {rank_loss(best):.4g} (job {best['job']})"
        if with_cv:
            summary += f"; cv val_loss is the {k}-fold mean ± std"
    lines = [f"## Sweep {title}", "", summary,
             "", "| " + " | ".join(["", *cols]) + " |",
             "|" + "---|" * (len(cols) + 1)]
    for r in ordered:
        mark = "★ best" if r is best else ""
        cells = (_cv_cell(r) if c == "cv val_loss" else _cell(r.get(c)) for c in cols)
        lines.append("| " + " | ".join([mark, *cells]) + " |")
    failed = [r for r in rows if r["error"]]
    if failed:
        lines += ["", "Failures:"]
        lines += [f"- job {r['job']} ({r['overrides']}): {r['error']}" for r in failed]
    return "\n".join(lines) + "\n"


def write_csv(path: Path, rows: list[dict[str, Any]], swept: list[str]) -> None:
    """One line per job; the :data:`CV_COLUMNS` after val_loss when some job has them."""
    cols = ["job", "overrides", *swept, *COLUMNS[2:]]
    if any(_has_cv(r) for r in rows):
        at = cols.index("val_loss") + 1
        cols[at:at] = CV_COLUMNS
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=cols, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({c: "" if row.get(c) is None else row.get(c) for c in cols})


def _sort_key(value: Any) -> tuple[int, Any]:
    return (0, value) if isinstance(value, (int, float)) else (1, str(value))


def _unevenness(points: list[float]) -> float:
    gaps = [b - a for a, b in pairwise(points)]
    return statistics.pstdev(gaps) / statistics.fmean(gaps) if len(gaps) > 1 else 0.0


def _is_log_axis(values: list[Any]) -> bool:
    """Whether the values are read best on a log axis: positive numbers spanning a decade
    or more and spaced at least as evenly by ratio as by difference, so a grid such as
    1e-6, 1e-5, ..., 1 is, while the degrees 1, 2, ..., 12 stay linear."""
    nums = [v for v in values if isinstance(v, (int, float))]
    if not nums or len(nums) != len(values) or min(nums) <= 0 or max(nums) / min(nums) < 10:
        return False
    grid = sorted(set(nums))
    return _unevenness([math.log(v) for v in grid]) <= _unevenness(grid)


def plot_comparison(path: Path, rows: list[dict[str, Any]], swept: list[str]) -> bool:
    """Final val loss (K-fold mean when cross-validated) over the swept axes: a heat map
    for two keys, a line for one."""
    if not swept or not any((rank_loss(r) or 0) > 0 for r in rows):
        return False  # nothing finished: no losses to compare
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import LogNorm

    cv_rows = [r for r in rows if _num(r.get("cv_val_loss")) is not None]
    what = f"val loss, {_folds_label(cv_rows)}-fold mean" if cv_rows else "final val loss"
    fig, ax = plt.subplots(figsize=(6.4, 4.8), layout="constrained")
    if len(swept) == 1:
        key = swept[0]
        pts = sorted(((r[key], rank_loss(r)) for r in rows), key=lambda p: _sort_key(p[0]))
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
        ax.set_ylabel(f"{what} (red: failed)")
    else:
        kx, ky = swept[0], swept[1]
        xs = sorted({r[kx] for r in rows}, key=_sort_key)
        ys = sorted({r[ky] for r in rows}, key=_sort_key)
        grid = [[math.nan] * len(xs) for _ in ys]
        for r in rows:  # with more than two keys swept: the best over the others
            v = rank_loss(r)
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
        fig.colorbar(image, ax=ax, label=f"{what} (log scale)")
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
        if len(pts) < 2:  # an exact fit (or a job cut short) has no curve to draw
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


def _is_numeric_axis(values: list[Any]) -> bool:
    """Numbers (not bools), at least two distinct: a key a validation curve can run along."""
    nums = [v for v in values
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)]
    return len(nums) == len(values) and len(set(nums)) >= 2


def draw_validation_curve(rows: list[dict[str, Any]], key: str) -> Figure | None:
    """Train and val loss against the one swept numeric ``key``, the lowest val marked.

    The picture of model selection: where the val loss turns up while the train loss keeps
    falling is where a larger degree or a smaller weight decay starts to overfit. The val
    loss is the K-fold mean with ±std error bars for a cross-validated job, so the reader
    sees whether the best value beats its neighbours by more than the noise. Failed,
    diverged and missing jobs are red dotted lines at their value. None when ``key`` is
    not numeric or no job has a val loss. The figure is not in pyplot's registry: the
    caller saves it and drops it, nothing to close.
    """
    placed = sorted((r for r in rows if r.get(key) is not None), key=lambda r: r[key])
    if not _is_numeric_axis([r[key] for r in placed]):
        return None
    done = [r for r in placed if rank_loss(r) is not None]
    if not done:
        return None
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    def train_of(r: dict[str, Any]) -> float | None:
        return _num(r.get("cv_train_loss" if _num(r.get("cv_val_loss")) is not None
                          else "train_loss"))

    cv_used = any(_num(r.get("cv_val_loss")) is not None for r in done)
    k = _folds_label(done)
    fig = Figure(figsize=(6.4, 4.8), layout="constrained")
    ax = fig.subplots()
    trained = [(r[key], t) for r in done if (t := train_of(r)) is not None]
    if trained:
        ax.plot([p[0] for p in trained], [p[1] for p in trained], "s--", color="tab:blue",
                lw=1.4, ms=5, label=f"train ({k}-fold mean)" if cv_used else "train")
    xs, vals = [r[key] for r in done], [rank_loss(r) or 0.0 for r in done]
    if cv_used:
        errs = [_num(r.get("cv_val_std")) or 0.0 for r in done]
        ax.errorbar(xs, vals, yerr=errs, fmt="o-", color="tab:orange", lw=1.6, ms=5,
                    capsize=3, label=f"validation ({k}-fold mean ± std)")
    else:
        ax.plot(xs, vals, "o-", color="tab:orange", lw=1.6, ms=5, label="validation")
    best = min(done, key=lambda r: rank_loss(r) or 0.0)
    bx, bv = best[key], rank_loss(best) or 0.0
    ax.plot([bx], [bv], ls="none", marker="*", ms=18, color="gold", mec="black", zorder=5,
            gid="lowest_val", label="lowest val")
    # Toward the middle of the chart, so a minimum at either end keeps its label inside.
    order = sorted(r[key] for r in done)
    place = order.index(bx) / max(1, len(order) - 1)
    align = "left" if place < 0.25 else "right" if place > 0.75 else "center"
    ax.annotate(f"lowest val {bv:.4g} at {key}={_cell(bx)}", xy=(bx, bv),
                xytext=({"left": 12, "right": -12, "center": 0}[align], 36),
                textcoords="offset points", ha=align, fontsize=9,
                bbox={"boxstyle": "round", "fc": "white", "alpha": 0.85},
                arrowprops={"arrowstyle": "->"})
    for n, r in enumerate(r for r in placed if rank_loss(r) is None):
        ax.axvline(r[key], color="tab:red", ls=":", lw=1.4,
                   label="failed / diverged / missing" if n == 0 else None)
        ax.text(r[key], 0.02, f"{r['status']} ", transform=ax.get_xaxis_transform(),
                rotation=90, va="bottom", ha="right", color="tab:red", fontsize=8)
    values = [r[key] for r in placed]
    if _is_log_axis(values):
        ax.set_xscale("log")
    elif all(isinstance(v, int) for v in values):
        grid = sorted(set(values))
        if len(grid) <= 20:
            ax.set_xticks(grid)
        else:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    log_y = all(v > 0 for v in [*vals, *(p[1] for p in trained)])
    if log_y:
        ax.set_yscale("log")
    ax.grid(alpha=0.3, which="major")
    ax.set_xlabel(key)
    ax.set_ylabel("loss (log scale)" if log_y else "loss")
    ax.set_title(f"Validation curve: {key}")
    ax.legend(fontsize=8, loc="best")
    return fig


def plot_validation_curve(path: Path, rows: list[dict[str, Any]], swept: list[str]) -> bool:
    """The validation curve into ``path`` when exactly one numeric key was swept."""
    if len(swept) != 1:
        return False
    fig = draw_validation_curve(rows, swept[0])
    if fig is None:
        return False
    fig.savefig(path, dpi=110)
    return True


def write_report(sweep_dir: str | Path) -> Report:
    """Write the CSV, Markdown, heat map, curves and validation curve into ``sweep_dir``."""
    sweep_dir = Path(sweep_dir)
    rows, swept, metrics_by_job = collect(sweep_dir)
    markdown = to_markdown(rows, swept, sweep_dir.name)
    files = [sweep_dir / SUMMARY_CSV, sweep_dir / SUMMARY_MD]
    write_csv(files[0], rows, swept)
    files[1].write_text(markdown)
    for name, draw in ((HEATMAP_PNG, lambda p: plot_comparison(p, rows, swept)),
                       (CURVES_PNG, lambda p: plot_curves(p, rows, swept, metrics_by_job)),
                       (VALIDATION_CURVE_PNG, lambda p: plot_validation_curve(p, rows, swept))):
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
        description="Summarise a reglab sweep: CSV, Markdown, heat map, loss curves and,"
                    " for one numeric swept key, a validation curve.")
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
