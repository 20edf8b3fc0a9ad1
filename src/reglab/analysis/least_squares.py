"""The exact least-squares optimum of a linear-in-parameters model, in float64.

Polynomial designs are badly conditioned: degree 10 over x in [−9, −3] has a condition
number near 1e15, where solving the normal equations, or ``numpy.linalg.lstsq`` with its
default cutoff, returns coefficients that are wrong in their first digit. This solver

1. centres each column (when there is an intercept) and scales it to unit norm, which
   takes the condition number of that design down to about 1e9;
2. factors the scaled design by QR, a chunk of rows at a time (only a d×d triangle is
   ever held, so it runs in O(chunk·d) memory on millions of rows);
3. refines the solution with residuals computed in extended precision (corrected
   semi-normal equations), which recovers the digits lost to rounding.

Against exact rational arithmetic on that degree-10 design it agrees to about 10
significant digits per coefficient (see ``tests/test_closed_form.py``).

The solution keeps the pieces of the pseudo-inverse of R, so that the covariance of the
estimate (standard errors, :mod:`reglab.analysis.ols_report`) costs no second pass. With
``ridge`` > 0 it solves the penalised problem weight decay optimises instead.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

Features = Callable[[torch.Tensor], torch.Tensor]

#: Rows per chunk: bounds the temporary float64 / extended-precision copies.
CHUNK = 1 << 14
#: Refine only designs whose scaled condition number could cost digits in float64.
REFINE_ABOVE = 1e4


@dataclass
class LeastSquares:
    """w (d,) and b (or ``None``) minimising Σ(x·w + b − y)² (+ ridge·(‖w‖² + b²));
    ``rank`` < d if degenerate (it counts the columns of w only, not the intercept)."""

    weight: np.ndarray
    bias: float | None
    rank: int
    condition: float  # of the centred and scaled design
    # What a covariance needs: Z = (D − mean)/scale = QR and R = U·diag(s)·Vt, with the
    # singular values that count marked in ``keep`` (the rest are treated as zero).
    n: int = 0
    mean: np.ndarray | None = None
    scale: np.ndarray | None = None
    vt: np.ndarray | None = None
    s: np.ndarray | None = None
    keep: np.ndarray | None = None
    ridge: float = 0.0
    #: Σ residual² on the rows it was solved on, once someone has summed it (saves a pass).
    train_sse: float | None = None

    def covariance(self, sigma2: float) -> np.ndarray:
        """Cov(θ) = σ²·(XᵀX)⁺ for θ = (b, w…) (b first when there is one), X = [1, D].

        Built from R of the centred, scaled design rather than from XᵀX, whose condition
        number is the square of the design's. With an intercept the centred columns are
        orthogonal to the constant, so Var(b) = σ²/n + meanᵀCov(w)mean and
        Cov(b, w) = −Cov(w)·mean. For a rank-deficient design it is the covariance of
        the solution returned (minimum norm in the scaled columns).
        """
        if self.ridge:
            raise ValueError("covariance() is the OLS one: a ridge solution is biased and "
                             "its sampling covariance is not σ²(XᵀX)⁺")
        factor = self.covariance_factor()
        with np.errstate(over="ignore"):  # entries past float64's range are inf
            return sigma2 * (factor.T @ factor)

    def covariance_factor(self) -> np.ndarray:
        """F with Cov(θ) = σ²·FᵀF (θ = (b, w…)). Standard errors are σ times the norms of
        F's columns, finite even where a variance itself would pass float64's range (a
        coefficient near 1e300 from a column near 1e-300)."""
        if self.ridge:
            raise ValueError("covariance_factor() is the OLS one: a ridge solution is "
                             "biased and its sampling covariance is not σ²(XᵀX)⁺")
        if self.vt is None or self.s is None or self.keep is None or self.scale is None:
            raise ValueError("this solution carries no R factor (build it with solve())")
        rows = self.vt[self.keep] / self.s[self.keep][:, None]  # rows of S⁻¹Vᵀ
        f_w = rows / self.scale  # Cov(w) = σ²·f_wᵀf_w
        if self.bias is None:
            return f_w
        # b = c − meanᵀw with Var(c) = σ²/n independent of w.
        mean = self.mean if self.mean is not None else np.zeros(len(self.scale))
        d = len(self.scale)
        out = np.zeros((f_w.shape[0] + 1, d + 1))
        out[0, 0] = 1.0 / np.sqrt(self.n)
        out[1:, 0] = -(rows @ (mean / self.scale))
        out[1:, 1:] = f_w
        return out

    def predict(self, x: torch.Tensor, features: Features | None = None) -> torch.Tensor:
        """Float64 predictions (n×1) for inputs ``x``."""
        design = features(x.double()) if features is not None else x.double()
        out = design @ torch.from_numpy(self.weight).to(design.device).unsqueeze(1)
        return out + self.bias if self.bias is not None else out

    def sse(self, x: torch.Tensor, y: torch.Tensor, features: Features | None = None,
            chunk: int = CHUNK) -> float:
        """Σ residual², in float64 (pairwise sums): relative error ~1e-14 even when the
        residuals are 1e-3 of the targets, and BLAS speed on millions of rows."""
        total = 0.0
        b = float(self.bias or 0.0)
        for xs, ys in _chunks(x, y, features, chunk):
            r = ys - xs @ self.weight - b
            total += float(r @ r)
        return total


def _add_norms(state: tuple[np.ndarray, np.ndarray], block: np.ndarray
               ) -> tuple[np.ndarray, np.ndarray]:
    """Column 2-norms accumulated as ``top·sqrt(ssq)`` with ``top`` the largest magnitude
    so far (LAPACK's dnrm2 idea): no square is formed of a raw value, so a column of
    1e-300s does not underflow to a norm of 0 (and look constant), nor one of 1e300s
    overflow to inf."""
    top, ssq = state
    new = np.maximum(top, np.abs(block).max(axis=0)) if len(block) else top
    safe = np.where(new > 0, new, 1.0)
    return new, ssq * (top / safe) ** 2 + ((block / safe) ** 2).sum(axis=0)


def _norms(state: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    top, ssq = state
    return top * np.sqrt(ssq)


def column_norms(v: np.ndarray) -> np.ndarray:
    """The 2-norm of each column of ``v`` without squaring a raw value (see
    :func:`_add_norms`)."""
    v = np.atleast_2d(v)
    zero = np.zeros(v.shape[1])
    return _norms(_add_norms((zero, zero.copy()), v))


def _np(t: torch.Tensor | np.ndarray) -> np.ndarray:
    if isinstance(t, torch.Tensor):
        return t.detach().to("cpu", torch.float64).numpy()
    return np.asarray(t, dtype=np.float64)


def _chunks(x: torch.Tensor | np.ndarray, y: torch.Tensor | np.ndarray,
            features: Features | None, chunk: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(design rows, targets) in float64, ``chunk`` rows at a time."""
    for i in range(0, int(x.shape[0]), chunk):
        xs = x[i:i + chunk]
        if features is not None:
            xs = features(torch.as_tensor(xs).double())
        yield _np(xs), _np(y[i:i + chunk]).reshape(-1)


def solve(x: torch.Tensor | np.ndarray, y: torch.Tensor | np.ndarray, bias: bool = True,
          features: Features | None = None, refine: int = 2, chunk: int = CHUNK,
          ridge: float = 0.0) -> LeastSquares:
    """Least squares of ``y`` (n or n×1) on the design ``features(x)`` (default: the
    columns of ``x``), plus an intercept when ``bias``.

    ``ridge`` > 0 minimises Σ(x·w + b − y)² + ridge·(‖w‖² + b²) instead: the bias is
    penalised too, as torch's ``weight_decay`` penalises every parameter. SGD or Adam (not
    AdamW, whose decay is decoupled) on the mean squared error with ``weight_decay=wd``
    has its stationary point at ridge = n·wd/2.
    """
    n = int(x.shape[0])
    if n == 0:
        raise ValueError("least squares needs at least one row")
    if not ridge >= 0:
        raise ValueError(f"ridge must be >= 0, got {ridge!r}")
    if ridge > 0:
        return _solve_ridge(x, y, bias, features, float(ridge), chunk)

    # Pass 1: column means, then norms of the centred columns (numpy sums pairwise; the
    # norms never square a raw value, so columns near 1e-300 or 1e300 keep their size).
    means = _means(x, y, features, chunk, n)
    d = int(means.shape[0]) - 1
    mean = means[:d] if bias else np.zeros(d)
    y_mean = float(means[d]) if bias else 0.0
    state = (np.zeros(d + 1), np.zeros(d + 1))
    for xs, ys in _chunks(x, y, features, chunk):
        state = _add_norms(state, np.hstack([xs - mean, (ys - y_mean)[:, None]]))
    norms = _norms(state)
    scale = norms[:d].copy()
    scale[scale == 0] = 1.0  # a constant column (zero after centring) stays zero
    y_scale = float(norms[d]) or 1.0  # the target scaled too (undone below)

    # Pass 2: R of the scaled design, with Qᵀy in its last column, chunk by chunk.
    r_aug = np.zeros((0, d + 1))
    for xs, ys in _chunks(x, y, features, chunk):
        z = np.hstack([(xs - mean) / scale, ((ys - y_mean) / y_scale)[:, None]])
        r_aug = np.linalg.qr(np.vstack([r_aug, z]), mode="r")
    r_aug = np.vstack([r_aug, np.zeros((max(0, d + 1 - r_aug.shape[0]), d + 1))])
    u, s, vt = np.linalg.svd(r_aug[:d, :d])
    keep = s > s[0] * d * np.finfo(np.float64).eps if s[0] > 0 else np.zeros(d, bool)
    inv = np.where(keep, 1.0 / np.where(keep, s, 1.0), 0.0)

    def unscale(b_scaled: np.ndarray, y_offset: float) -> tuple[np.ndarray, float]:
        w = b_scaled / scale
        return w, y_offset - float(mean @ w)

    w, b = unscale(vt.T @ (inv * (u.T @ r_aug[:d, d])) * y_scale, y_mean)

    cond = float(s[0] / s[keep][-1]) if keep.any() else float("inf")

    # Refinement: r = y − Xw − b in extended precision, then δ = (ZᵀZ)⁺ Zᵀr via R.
    # A well-conditioned design is already exact to float64 rounding: skip the passes.
    w_ld, b_ld = w.astype(np.longdouble), np.longdouble(b)
    for _ in range(refine if cond > REFINE_ABOVE else 0):
        g = np.zeros(d, dtype=np.longdouble)
        r_sum = np.longdouble(0)
        for xs, ys in _chunks(x, y, features, chunk):
            xl = xs.astype(np.longdouble)
            r = ys.astype(np.longdouble) - xl @ w_ld - b_ld
            g += ((xl - mean) / scale).T @ r
            r_sum += r.sum()
        delta = vt.T @ (inv ** 2 * (vt @ g.astype(np.float64)))
        dw, db = unscale(delta, float(r_sum / n) if bias else 0.0)
        w_ld, b_ld = w_ld + dw, b_ld + (db if bias else 0)
    return LeastSquares(weight=w_ld.astype(np.float64), bias=float(b_ld) if bias else None,
                        rank=int(keep.sum()), condition=cond, n=n, mean=mean, scale=scale,
                        vt=vt, s=s, keep=keep)


def _means(x: torch.Tensor | np.ndarray, y: torch.Tensor | np.ndarray,
           features: Features | None, chunk: int, n: int) -> np.ndarray:
    """Means of the design's columns and (last) of the target. Sums that pass float64's
    range (values near 1e306 on many rows) are summed again a row's share at a time."""
    sums: np.ndarray | None = None
    for xs, ys in _chunks(x, y, features, chunk):
        block = np.hstack([xs, ys[:, None]]).sum(axis=0)
        sums = block if sums is None else sums + block
    assert sums is not None
    if np.isfinite(sums).all():
        return sums / n
    shares = np.zeros_like(sums)
    for xs, ys in _chunks(x, y, features, chunk):
        shares += (np.hstack([xs, ys[:, None]]) / n).sum(axis=0)
    return shares


def _solve_ridge(x: torch.Tensor | np.ndarray, y: torch.Tensor | np.ndarray, bias: bool,
                 features: Features | None, ridge: float, chunk: int) -> LeastSquares:
    """The penalised problem as plain least squares on an augmented design.

    Centring would move the penalty off b, so the constant is an explicit first column.
    Columns are scaled so that each, with its penalty row, has unit norm (u = scale·θ),
    and the penalty ridge·‖θ‖² becomes the extra rows sqrt(ridge)·diag(1/scale) with
    target 0, folded into the same chunked QR. The columns the penalty dominates most
    (the smallest data, e.g. values near 1e-300) are factored first, so the rounding of
    the others never reaches their digits; the penalty makes R nonsingular, so θ comes
    from back substitution and no refinement passes are needed.
    """
    from scipy.linalg import solve_triangular

    n = int(x.shape[0])
    state: tuple[np.ndarray, np.ndarray] | None = None
    for xs, _ in _chunks(x, y, features, chunk):
        if state is None:
            state = (np.zeros(xs.shape[1]), np.zeros(xs.shape[1]))
        state = _add_norms(state, xs)
    assert state is not None
    data_norm = _norms(state)
    if bias:
        data_norm = np.concatenate([[float(np.sqrt(n))], data_norm])
    p = int(data_norm.shape[0])
    scale = np.hypot(data_norm, np.sqrt(ridge))
    order = np.argsort(data_norm, kind="stable")

    r_aug = np.hstack([np.diag(np.sqrt(ridge) / scale[order]), np.zeros((p, 1))])
    for xs, ys in _chunks(x, y, features, chunk):
        design = np.hstack([np.ones((len(xs), 1)), xs]) if bias else xs
        z = np.hstack([(design / scale)[:, order], ys[:, None]])
        r_aug = np.linalg.qr(np.vstack([r_aug, z]), mode="r")
    r = r_aug[:p, :p]
    u_ordered = solve_triangular(r, r_aug[:p, p])
    theta = np.empty(p)
    theta[order] = u_ordered
    theta /= scale
    # What a covariance or a condition number reads, in the columns' own order.
    _, s, vt = np.linalg.svd(r[:, np.argsort(order)])
    keep = s > s[0] * p * np.finfo(np.float64).eps if s[0] > 0 else np.zeros(p, bool)
    cond = float(s[0] / s[keep][-1]) if keep.any() else float("inf")
    # ``rank`` counts the columns of w, as without ridge (the penalty keeps it full).
    return LeastSquares(weight=theta[1:] if bias else theta,
                        bias=float(theta[0]) if bias else None,
                        rank=p - int(bias), condition=cond, n=n, mean=None, scale=scale,
                        vt=vt, s=s, keep=keep, ridge=ridge)


def r_factor(x: torch.Tensor | np.ndarray, design: Callable[[torch.Tensor], np.ndarray],
             chunk: int = CHUNK) -> np.ndarray:
    """The p×p triangle R of the unscaled design ``design(x)`` (Householder QR, chunk by
    chunk): its singular values are those of the design to rounding, without ever
    holding the design itself (condition numbers and ranks on millions of rows)."""
    r: np.ndarray | None = None
    for i in range(0, int(x.shape[0]), chunk):
        block = np.asarray(design(torch.as_tensor(x[i:i + chunk]).double()), dtype=np.float64)
        r = np.linalg.qr(block if r is None else np.vstack([r, block]), mode="r")
    if r is None:
        raise ValueError("r_factor needs at least one row")
    p = r.shape[1]
    return np.vstack([r, np.zeros((max(0, p - r.shape[0]), p))])[:p]
