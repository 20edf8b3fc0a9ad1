"""An Optuna study's charts in the sweep report: the history of its trials, the
importance of each searched key, and every trial's reported ``val/loss`` by epoch (pruned
trials visibly cut short). Drawn on ``Figure`` objects, never through pyplot."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

#: One colour per trial state, the same in every chart.
COLOURS = {"COMPLETE": "tab:blue", "PRUNED": "tab:orange", "FAIL": "tab:red",
           "RUNNING": "tab:gray", "WAITING": "tab:gray"}


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def plot_history(path: Path, trials: list[dict[str, Any]], direction: str) -> bool:
    """Each complete trial's value by trial number, the best so far as a step line, and
    pruned and failed trials marked along the bottom."""
    done = [t for t in trials if t["state"] == "COMPLETE" and _finite(t["value"])]
    if not done:
        return False
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.2, 4.4), layout="constrained")
    ax = fig.subplots()
    ax.scatter([t["number"] for t in done], [t["value"] for t in done], s=22,
               color=COLOURS["COMPLETE"], label="complete", zorder=3)
    best, xs, ys = None, [], []
    pick = min if direction == "minimize" else max
    for t in sorted(done, key=lambda t: t["number"]):
        best = t["value"] if best is None else pick(best, t["value"])
        xs.append(t["number"])
        ys.append(best)
    last = max(t["number"] for t in trials)
    ax.step([*xs, last], [*ys, ys[-1]], where="post", color="black", lw=1.2,
            label="best so far")
    for state, marker in (("PRUNED", "v"), ("FAIL", "x")):
        these = [t["number"] for t in trials if t["state"] == state]
        if these:
            ax.scatter(these, [0.02] * len(these), marker=marker, color=COLOURS[state],
                       transform=ax.get_xaxis_transform(), label=f"{state.lower()} "
                       f"({len(these)})", zorder=3, clip_on=False)
    values = [t["value"] for t in done]
    if min(values) > 0 and max(values) / min(values) > 30:
        ax.set_yscale("log")
    ax.set_xlim(-0.5, last + 0.5)
    ax.set_xlabel("trial")
    ax.set_ylabel("val loss (objective)")
    ax.set_title(f"Optimization history: {len(trials)} trials")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper right")
    fig.savefig(path, dpi=110)
    return True


def plot_importance(path: Path, importances: dict[str, float]) -> bool:
    """The share of the objective's variance each searched key explains (fANOVA)."""
    if not importances:
        return False
    from matplotlib.figure import Figure

    keys = sorted(importances, key=importances.get)
    fig = Figure(figsize=(6.4, 1.2 + 0.45 * len(keys)), layout="constrained")
    ax = fig.subplots()
    bars = ax.barh(keys, [importances[k] for k in keys], color="tab:blue")
    ax.bar_label(bars, fmt="%.2f", padding=3, fontsize=8)
    ax.set_xlim(0, max(1.0, max(importances.values()) * 1.15))
    ax.set_xlabel("importance (share of the val loss's variance, fANOVA)")
    ax.set_title("Which searched keys matter")
    fig.savefig(path, dpi=110)
    return True


def plot_trial_curves(path: Path, trials: list[dict[str, Any]]) -> bool:
    """Every trial's reported val loss by epoch: complete trials in colour, pruned ones
    in orange, each ended by a marker where it stopped."""
    drawn = [t for t in trials if t["intermediate"]]
    if not drawn:
        return False
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.2, 4.4), layout="constrained")
    ax = fig.subplots()
    positive = True
    for t in drawn:
        steps = sorted(t["intermediate"])
        values = [t["intermediate"][s] for s in steps]
        positive = positive and all(v > 0 for v in values if _finite(v))
        colour = COLOURS.get(t["state"], "tab:gray")
        ax.plot([s + 1 for s in steps], values, color=colour, lw=0.9,
                alpha=0.85 if t["state"] == "COMPLETE" else 0.6)
        ax.plot([steps[-1] + 1], [values[-1]], marker="v" if t["state"] == "PRUNED" else "o",
                color=colour, ms=4)
    if positive:
        ax.set_yscale("log")
    finals = [t["value"] for t in drawn if t["state"] == "COMPLETE" and _finite(t["value"])]
    reported = [v for t in drawn for v in t["intermediate"].values() if _finite(v)]
    if finals and reported and positive:
        # Up to the highest value reported, but a diverging trial's 1e37 must not flatten
        # the others: at most 1000 times the worst complete trial's value.
        ax.set_ylim(top=min(max(reported), max(finals) * 1e3) * 1.5)
    for state in ("COMPLETE", "PRUNED", "FAIL"):
        n = sum(t["state"] == state for t in drawn)
        if n:
            ax.plot([], [], color=COLOURS[state], label=f"{state.lower()} ({n})")
    ax.set_xlabel("epoch")
    ax.set_ylabel("val loss reported to the study")
    ax.set_title("Every trial's val loss (pruned trials end early)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=110)
    return True
