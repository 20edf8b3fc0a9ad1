"""Pictures of a fit: the curve through the data, predicted against actual, and the loss
landscape with the optimizer's path. Matplotlib (Agg, no display) is imported here only,
so nothing on the command line's fast paths pays for it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import matplotlib

matplotlib.use("Agg")
import numpy as np
from matplotlib.figure import Figure

if TYPE_CHECKING:
    from matplotlib.artist import Artist

SIZE = (5.5, 4.0)
DPI = 90


def _figure(ncols: int = 1) -> Figure:
    fig = Figure(figsize=(SIZE[0] * ncols, SIZE[1]), dpi=DPI, layout="constrained")
    fig.subplots(1, ncols)
    return fig


def fit(x: np.ndarray, y: np.ndarray, grid: np.ndarray, curve: np.ndarray,
        optimum: np.ndarray | None = None, title: str = "", xlabel: str = "x",
        ylabel: str = "y") -> Figure:
    """Data points, the model's curve and (where it applies) the least-squares curve."""
    fig = _figure()
    ax = fig.axes[0]
    ax.scatter(x, y, s=12, alpha=0.6, color="tab:blue", label="data")
    if optimum is not None:
        ax.plot(grid, optimum, color="tab:green", lw=2.5, ls="--", alpha=0.8,
                label="least-squares optimum")
    ax.plot(grid, curve, color="tab:red", lw=2, label="model")
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    ax.legend(loc="best", fontsize=8)
    ax.grid(alpha=0.3)
    return fig


class FitAnimation:
    """One figure whose model curve is redrawn frame by frame: far cheaper than a new
    figure per frame, and every frame shares the axes, so the curve visibly moves.

    The first frame drawn lays the figure out; the layout is then kept. Everything the
    axes draw before the model's curve (the data, the grid, the ticks, the optimum) is
    rendered once and kept as pixels; a later frame restores them and draws the curve and
    what lies above it in the axes' own order, which gives the pixels a full render would
    (a test compares them) at about a third of its cost."""

    def __init__(self, x: np.ndarray, y: np.ndarray, grid: np.ndarray,
                 optimum: np.ndarray | None, final: np.ndarray, xlabel: str = "x",
                 ylabel: str = "y") -> None:
        self.fig = fit(x, y, grid, final, optimum, xlabel=xlabel, ylabel=ylabel)
        ax = self.fig.axes[0]
        self.line = ax.lines[-1]
        shown = [y, final] + ([] if optimum is None else [optimum])
        lo = float(min(v.min() for v in shown))
        hi = float(max(v.max() for v in shown))
        pad = 0.15 * (hi - lo) if hi > lo else max(1.0, abs(hi)) * 0.1
        ax.set_ylim(lo - pad, hi + pad)
        self._kept: tuple[Any, list[Artist], Any] | None = None

    def frame(self, curve: np.ndarray, title: str) -> np.ndarray:
        self.line.set_ydata(curve)
        self.fig.axes[0].set_title(title)  # one line whatever its length: same layout
        if self._kept is None:
            image = to_array(self.fig)
            self.fig.set_layout_engine("none")
            self._kept = self._keep_beneath_the_curve()
            return image
        canvas, above, pixels = self._kept
        canvas.restore_region(pixels)
        renderer = canvas.get_renderer()
        for artist in above:
            artist.draw(renderer)
        return np.asarray(canvas.buffer_rgba())[..., :3].copy()

    def _keep_beneath_the_curve(self) -> tuple[Any, list[Artist], Any]:
        from operator import attrgetter

        from matplotlib.backends.backend_agg import FigureCanvasAgg

        (ax,) = self.fig.axes
        # Axes.draw's order: its patch, then its children sorted (stably) by zorder.
        order = sorted((a for a in ax.get_children() if a is not ax.patch),
                       key=attrgetter("zorder"))
        above = [a for a in order[order.index(self.line):] if a.get_visible()]
        canvas = FigureCanvasAgg(self.fig)
        for artist in above:
            artist.set_visible(False)
        canvas.draw()
        pixels = canvas.copy_from_bbox(self.fig.bbox)
        for artist in above:
            artist.set_visible(True)
        return canvas, above, pixels


def pred_vs_actual(actual: np.ndarray, pred: np.ndarray, title: str = "",
                   target: str = "y") -> Figure:
    """Predicted against actual (on the diagonal when perfect), and residuals."""
    fig = _figure(2)
    ax, res = fig.axes
    lo, hi = float(min(actual.min(), pred.min())), float(max(actual.max(), pred.max()))
    ax.plot([lo, hi], [lo, hi], color="gray", lw=1, ls="--")
    ax.scatter(actual, pred, s=10, alpha=0.6)
    ax.set(xlabel=f"actual {target}", ylabel=f"predicted {target}", title=title)
    ax.grid(alpha=0.3)
    res.axhline(0.0, color="gray", lw=1, ls="--")
    res.scatter(pred, actual - pred, s=10, alpha=0.6, color="tab:orange")
    res.set(xlabel=f"predicted {target}", ylabel="residual (actual − predicted)",
            title="residuals")
    res.grid(alpha=0.3)
    return fig


def landscape(path: np.ndarray, optimum: Sequence[float], loss_at: object,
              names: Sequence[str], title: str = "") -> Figure:
    """The loss over one or two parameters around the optimum, with the optimizer's path.

    ``path`` is (steps, 1 or 2); ``loss_at(w)`` or ``loss_at(w, b)`` takes arrays.
    """
    fig = _figure()
    ax = fig.axes[0]
    pts = np.vstack([path, np.asarray(optimum, dtype=float)[None, :]])
    lo, hi = pts.min(axis=0), pts.max(axis=0)
    pad = np.maximum((hi - lo) * 0.15, np.maximum(np.abs(hi), 1.0) * 0.05)
    lo, hi = lo - pad, hi + pad
    if path.shape[1] == 1:
        w = np.linspace(lo[0], hi[0], 400)
        ax.plot(w, loss_at(w), color="tab:blue", lw=2, label="loss")
        ax.plot(path[:, 0], loss_at(path[:, 0]), "o-", color="tab:red", ms=3, lw=1,
                label="optimizer path")
        ax.plot([optimum[0]], [loss_at(np.asarray([optimum[0]]))[0]], "*", ms=14,
                color="tab:green", label="optimum")
        ax.set(xlabel=names[0], ylabel="loss")
        ax.set_yscale("symlog", linthresh=1e-6)
    else:
        w, b = np.meshgrid(np.linspace(lo[0], hi[0], 160), np.linspace(lo[1], hi[1], 160))
        z = loss_at(w, b)
        floor = max(float(z.min()), 1e-12)
        levels = np.geomspace(floor, float(z.max()), 25)
        cs = ax.contourf(w, b, np.maximum(z, floor), levels=levels, cmap="viridis",
                         norm=matplotlib.colors.LogNorm())
        fig.colorbar(cs, ax=ax, label="loss (log scale)", **_log_ticks(floor, float(z.max())))
        ax.plot(path[:, 0], path[:, 1], ".-", color="tab:red", ms=3, lw=1,
                label="optimizer path")
        ax.plot(path[:1, 0], path[:1, 1], "o", color="white", ms=6, label="start")
        ax.plot([optimum[0]], [optimum[1]], "*", ms=14, color="tab:green", label="optimum")
        ax.set(xlabel=names[0], ylabel=names[1])
    ax.set_title(title)
    ax.legend(loc="best", fontsize=8)
    return fig


def _log_ticks(lo: float, hi: float) -> dict[str, object]:
    """Colour-bar ticks for a log scale: the powers of ten inside [lo, hi] when there are
    two or more, else three round values spread over it, each printed briefly."""
    from matplotlib.ticker import FixedLocator, FuncFormatter

    decades = [10.0 ** k for k in range(math.ceil(math.log10(lo)), math.floor(math.log10(hi)) + 1)]
    ticks = decades if len(decades) >= 2 else [float(f"{v:.2g}") for v in np.geomspace(lo, hi, 3)]
    return {"ticks": FixedLocator(ticks), "format": FuncFormatter(lambda v, _: f"{v:.3g}")}


def to_array(fig: Figure) -> np.ndarray:
    """The rendered figure as an H×W×3 uint8 image, for TensorBoard."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def save(fig: Figure, path: str, image: np.ndarray | None = None) -> None:
    """Write ``fig`` as a PNG. Given ``image`` (its :func:`to_array` rendering, the same
    pixels savefig would draw at the figure's dpi) only encodes it: a second render of
    the figure costs more than the PNG encoding."""
    if image is None:
        fig.savefig(path)
        return
    from matplotlib.image import imsave

    imsave(path, image)
