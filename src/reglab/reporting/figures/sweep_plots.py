"""A sweep's charts: the final val loss over the swept keys, every job's curve, and the
validation curve of one numeric key.

Drawn on ``matplotlib.figure.Figure`` objects, never through pyplot's global state, so a
sweep report made inside another program leaves its figures alone.
"""

from __future__ import annotations

import math
import statistics
from itertools import pairwise
from pathlib import Path
from typing import TYPE_CHECKING, Any

from reglab.reporting.sweep_report import cell, folds_label, number, rank_loss

if TYPE_CHECKING:
    from matplotlib.figure import Figure


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
    from matplotlib.colors import LogNorm
    from matplotlib.figure import Figure

    cv_rows = [r for r in rows if number(r.get("cv_val_loss")) is not None]
    what = f"val loss, {folds_label(cv_rows)}-fold mean" if cv_rows else "final val loss"
    fig = Figure(figsize=(6.4, 4.8), layout="constrained")
    ax = fig.subplots()
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
    elif _scattered(rows, swept[0]) or _scattered(rows, swept[1]):
        _scatter(fig, ax, rows, swept[0], swept[1], what)
    else:
        kx, ky = swept[0], swept[1]
        xs = sorted({r[kx] for r in rows}, key=_sort_key)
        ys = sorted({r[ky] for r in rows}, key=_sort_key)
        grid = [[math.nan] * len(xs) for _ in ys]
        tried: dict[tuple[int, int], str] = {}  # a cell's jobs: "ok" or the last failure
        for r in rows:  # with more than two keys swept: the best over the others
            v = rank_loss(r)
            i, j = ys.index(r[ky]), xs.index(r[kx])
            tried[i, j] = "ok" if v is not None else tried.get((i, j), r["status"])
            if v is not None and (math.isnan(grid[i][j]) or v < grid[i][j]):
                grid[i][j] = v
        finite = [v for line in grid for v in line if not math.isnan(v) and v > 0]
        norm = LogNorm(min(finite), max(finite)) if finite and min(finite) < max(finite) else None
        image = ax.imshow(grid, cmap="viridis_r", norm=norm, aspect="auto", origin="lower")
        ax.set_xticks(range(len(xs)), [cell(x) for x in xs])
        ax.set_yticks(range(len(ys)), [cell(y) for y in ys])
        ax.set_xlabel(kx)
        ax.set_ylabel(ky)
        best = min(finite) if finite else None
        for i, line in enumerate(grid):
            for j, v in enumerate(line):
                if math.isnan(v):  # a failure says which; a combination not tried, nothing
                    if (i, j) in tried:
                        ax.text(j, i, tried[i, j], ha="center", va="center", color="tab:red")
                    continue
                # viridis_r is bright at low loss: dark text there, light text elsewhere.
                bright = norm is None or norm(v) < 0.5
                ax.text(j, i, f"{v:.3g}" + ("\n★ best" if v == best else ""), ha="center",
                        va="center", color="black" if bright else "white", fontsize=9,
                        fontweight="bold" if v == best else "normal")
        fig.colorbar(image, ax=ax, label=f"{what} (log scale)")
    ax.set_title("Sweep: final validation loss")
    fig.savefig(path, dpi=110)
    return True


def _scattered(rows: list[dict[str, Any]], key: str) -> bool:
    """Whether ``key`` took too many values for a grid: a search's continuous values."""
    values = {r.get(key) for r in rows}
    return len(values) > 8 and all(isinstance(v, (int, float)) for v in values)


def _scatter(fig: Figure, ax: Any, rows: list[dict[str, Any]], kx: str, ky: str,
             what: str) -> None:
    """Two searched keys as a scatter coloured by val loss (log scale): a search's
    values do not form a grid. Failed and diverged jobs are red crosses."""
    from matplotlib.colors import LogNorm

    def positions(key: str) -> tuple[list[Any], list[str] | None]:
        values = [r.get(key) for r in rows]
        if all(isinstance(v, (int, float)) for v in values):
            return values, None
        names = sorted({str(v) for v in values})
        return [names.index(str(v)) for v in values], names

    px, nx = positions(kx)
    py, ny = positions(ky)
    done = [(x, y, rank_loss(r)) for x, y, r in zip(px, py, rows, strict=True)
            if rank_loss(r) is not None]
    bad = [(x, y) for x, y, r in zip(px, py, rows, strict=True) if rank_loss(r) is None]
    values = [v for _, _, v in done if v > 0]
    # Three decades above the best at most: one job far behind must not wash out the rest.
    top = min(max(values), min(values) * 1e3) if values else None
    norm = LogNorm(min(values), top) if values and min(values) < top else None
    if done:
        points = ax.scatter([d[0] for d in done], [d[1] for d in done],
                            c=[d[2] for d in done], cmap="viridis_r", norm=norm, s=36,
                            edgecolors="black", linewidths=0.4, zorder=3)
        fig.colorbar(points, ax=ax, label=f"{what} (log scale)", extend="max")
        best = min(done, key=lambda d: d[2])
        ax.plot([best[0]], [best[1]], marker="*", ms=16, color="gold", mec="black",
                ls="none", zorder=4, label=f"best {best[2]:.3g}")
    if bad:
        ax.scatter([b[0] for b in bad], [b[1] for b in bad], marker="x", color="tab:red",
                   zorder=3, label=f"failed / diverged ({len(bad)})")
    for axis, scale, names, pos in ((ax.xaxis, ax.set_xscale, nx, px),
                                    (ax.yaxis, ax.set_yscale, ny, py)):
        if names is not None:
            axis.set_ticks(range(len(names)), names)
        elif _is_log_axis(pos):
            scale("log")
    ax.set_xlabel(kx)
    ax.set_ylabel(ky)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")


#: What ``sweep_curves.png`` may put on its x axis.
X_AXES = ("epoch", "step")
#: More curves than this on one chart are split into panels by the first swept key.
CURVES_PER_PANEL = 10


def _curve(r: dict[str, Any], metrics: dict[str, Any], x_axis: str
           ) -> list[tuple[float, float]]:
    """A job's val loss (train loss without a val split) by epoch or by optimizer step.

    Every epoch of a run has the same number of steps, so a step count is the epoch
    times the run's steps per epoch: exact, no guess."""
    history = metrics.get("history") or {}
    pts = [(e + 1, v) for e, v in history.get("val_loss") or history.get("train_loss") or []
           if v is not None and v > 0]
    if x_axis == "step":
        epochs, steps = metrics.get("epochs"), metrics.get("steps")
        if not epochs or not steps:
            return []
        pts = [(e * steps / epochs, v) for e, v in pts]
    return pts


def plot_curves(path: Path, rows: list[dict[str, Any]], swept: list[str],
                metrics_by_job: dict[str, dict[str, Any]], x_axis: str = "epoch") -> bool:
    """Every job's val loss per epoch (or per optimizer step, which compares batch sizes
    fairly) on log-scale charts: one chart, or one panel per value of the first swept key
    when there are more than :data:`CURVES_PER_PANEL` curves."""
    from matplotlib.figure import Figure

    curves = [(r, pts) for r in rows
              if len(pts := _curve(r, metrics_by_job.get(r["job"]) or {}, x_axis))
              >= (2 if r["status"] == "completed" else 1)]  # an exact fit has no curve
    if not curves:
        return False
    groups: dict[Any, list[Any]] = {None: curves}
    if len(curves) > CURVES_PER_PANEL and len(swept) > 1:
        split = swept[0]
        values = sorted({r.get(split) for r, _ in curves}, key=_sort_key)
        if 1 < len(values) <= 6:
            groups = {v: [c for c in curves if c[0].get(split) == v] for v in values}
    n = len(groups)
    cols = min(n, 3)
    rows_n = math.ceil(n / cols)
    fig = Figure(figsize=(7.5 if n == 1 else 5.0 * cols, 4.8 if n == 1 else 3.9 * rows_n),
                 layout="constrained")
    axes = fig.subplots(rows_n, cols, squeeze=False, sharey=True)
    completed = [max(p[1] for p in pts) for r, pts in curves if r["status"] == "completed"]
    lowest = min(p[1] for _, pts in curves for p in pts)
    # Red is kept for failures: the curves cycle through the other colours.
    palette = ["tab:blue", "tab:orange", "tab:green", "tab:purple", "tab:brown", "tab:pink",
               "tab:gray", "tab:olive", "tab:cyan"]
    for ax, (value, members) in zip(axes.flat, groups.items(), strict=False):
        ax.set_prop_cycle(color=palette)
        shown = [k for k in swept if value is None or k != swept[0]]
        for r, pts in members:
            label = " ".join(f"{k.rsplit('.', 1)[-1]}={cell(r.get(k))}" for k in shown) or (
                f"job {r['job']}")
            ok = r["status"] == "completed"
            if not ok:
                label += f" ({r['status']})"
            failed = r["status"] in ("diverged", "failed", "interrupted")
            line = ax.plot([p[0] for p in pts], [p[1] for p in pts], label=label, lw=1.4,
                           ls="-" if ok else ":", color="tab:red" if failed else None)
            if not ok:  # where it stopped: a cross for a failure, a triangle when pruned
                ax.plot([pts[-1][0]], [pts[-1][1]], marker="x" if failed else "v", ms=7,
                        color=line[0].get_color(), ls="none")
        ax.set_yscale("log")
        # A diverged job's curve leaves the chart instead of flattening it; the panels
        # share one range, so it is set from every curve.
        ax.set_ylim(lowest / 1.5, max(completed) * 3 if completed else None)
        ax.set_xlabel("optimizer step" if x_axis == "step" else "epoch")
        ax.set_ylabel("val loss")
        if value is not None:
            ax.set_title(f"{swept[0]}={cell(value)}", fontsize=10)
        ax.legend(fontsize=7, ncol=2 if len(members) > 8 else 1, loc="best")
    for ax in list(axes.flat)[n:]:
        ax.set_visible(False)
    fig.suptitle(f"Sweep: validation loss per {'step' if x_axis == 'step' else 'epoch'}")
    fig.savefig(path, dpi=110)
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
        return number(r.get("cv_train_loss" if number(r.get("cv_val_loss")) is not None
                          else "train_loss"))

    cv_used = any(number(r.get("cv_val_loss")) is not None for r in done)
    k = folds_label(done)
    fig = Figure(figsize=(6.4, 4.8), layout="constrained")
    ax = fig.subplots()
    trained = [(r[key], t) for r in done if (t := train_of(r)) is not None]
    if trained:
        ax.plot([p[0] for p in trained], [p[1] for p in trained], "s--", color="tab:blue",
                lw=1.4, ms=5, label=f"train ({k}-fold mean)" if cv_used else "train")
    xs, vals = [r[key] for r in done], [rank_loss(r) or 0.0 for r in done]
    if cv_used:
        errs = [number(r.get("cv_val_std")) or 0.0 for r in done]
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
    ax.annotate(f"lowest val {bv:.4g} at {key}={cell(bx)}", xy=(bx, bv),
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
