"""The exact least-squares optimum of a linear-in-parameters model, in float64.

Polynomial designs are badly conditioned: degree 10 over x in [−9, −3] has a condition
number near 1e15, where solving the normal equations, or ``numpy.linalg.lstsq`` with its
default cutoff, returns coefficients that are wrong in their first digit. This solver

1. centres each column (when there is an intercept) and scales it to unit norm, which
   takes the condition number of that design down to about 1e9;
2. factors the scaled design by QR, a chunk of rows at a time (only a d×d triangle is
   ever held, so it runs in O(chunk·d) memory on millions of rows);
3. refines the solution with residuals and gradients in double-double arithmetic
   (:mod:`reglab.analysis.double_double`), corrections from that float64 factor, until
   the float64 answer stops moving: it is then the exact solution of the float64 data,
   rounded. A polynomial's columns (:class:`Powers`) enter the refinement exact too.

On NIST's eleven StRD linear sets every coefficient agrees with exact rational
arithmetic to 15 or more digits (``tests/test_nist.py``).

The solution keeps the pieces of the pseudo-inverse of R, so that the covariance of the
estimate (standard errors, :mod:`reglab.analysis.ols_report`) costs no second pass. With
``ridge`` > 0 it solves the penalised problem weight decay optimises instead.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from reglab.analysis import double_double as dd

Features = Callable[[torch.Tensor], torch.Tensor]

#: Rows per chunk: bounds the temporary float64 / extended-precision copies.
CHUNK = 1 << 14
#: Up to this many rows every problem is refined (cheap there, and what a few dozen rows
#: need for their last digits: NIST's Norris, Wampler); above it only those whose QR
#: answer could be off past the 13th digit (see :func:`solve`), or whose columns are exact
#: only in double-double (:class:`Powers`).
EXACT_ROWS = 1 << 16
#: Above this condition number of the scaled design, the covariance is built from the
#: exact design (one more pass) rather than from the float64 R, whose relative error
#: is about cond·1e-16 (more where a column's mean dwarfs its spread).
COVARIANCE_ABOVE = 1e5


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
    #: What rounding ``weight`` and ``bias`` to float64 left (weight + weight_lo is the
    #: solution to ~1e-32): a change of units with cancellation keeps its digits.
    weight_lo: np.ndarray | None = None
    bias_lo: float = 0.0
    #: F with Cov(θ) = σ²·FᵀF, from the exact design where the float64 factor would cost
    #: digits (see :func:`_covariance_rows`); None: built from ``vt`` and ``s``.
    cov_rows: np.ndarray | None = None

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
        if self.cov_rows is not None:
            return self.cov_rows
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
        """Σ residual². In float64 (BLAS speed on millions of rows) where that is right to
        ~12 digits; in double-double where it would not be: residuals below 1e-4 of the
        values they are the difference of (NIST's Wampler2), or a design whose columns
        float64 would round (:class:`Powers`). There it is the smaller of the sums at
        ``weight`` and at weight + weight_lo: each is the loss of an actual θ, so the
        smaller is the nearer the optimum (an exact fit scores 0, not 1e-92)."""
        if getattr(features, "dd", None) is None:
            total, scale = 0.0, 0.0
            b = float(self.bias or 0.0)
            for xs, ys in _chunks(x, y, features, chunk):
                fit = xs @ self.weight + b
                r = ys - fit
                total += float(r @ r)
                scale += float(ys @ ys) + float(fit @ fit)
            if not total < 1e-8 * scale:
                return total
        w_lo = self.weight_lo if self.weight_lo is not None else np.zeros_like(self.weight)
        zero = np.zeros_like(self.weight)
        b_hi = np.asarray(float(self.bias or 0.0))
        sums: list[dd.DD] = [(np.zeros(()), np.zeros(())), (np.zeros(()), np.zeros(()))]
        with np.errstate(over="ignore", invalid="ignore"):
            for hi, lo, ys in _dd_chunks(x, y, features, chunk):
                for i, (w, b) in enumerate((((self.weight, zero), (b_hi, np.asarray(0.0))),
                                            ((self.weight, w_lo),
                                             (b_hi, np.asarray(self.bias_lo))))):
                    r, e_y = _residuals(hi, lo, ys, w, b)
                    sq = dd.sum_rows(dd.mul(r, r))
                    sums[i] = dd.add(sums[i], (np.ldexp(sq[0], 2 * e_y),
                                               np.ldexp(sq[1], 2 * e_y)))
        return min(float(t[0] + t[1]) for t in sums)



class Powers:
    """x¹ … x^degree of one input column, of (x − mean)/std when those are given: a
    polynomial model's features. Called on a tensor, as torch computes them; ``dd`` gives
    the same columns exact to ~1e-32 for the refinement, where rounding each power once
    would cost an ill-conditioned fit half its digits (NIST's Filip: 7.6 instead of 15)."""

    def __init__(self, degree: int, mean: float | None = None, std: float | None = None):
        self.degree, self.mean, self.std = int(degree), mean, std

    def _scaled(self, t: Any) -> Any:
        return t if self.mean is None else (t - self.mean) / self.std

    def __call__(self, t: torch.Tensor) -> torch.Tensor:
        z = self._scaled(t.reshape(-1, 1))
        return z.pow(torch.arange(1, self.degree + 1, dtype=z.dtype, device=z.device))

    def dd(self, x: np.ndarray) -> dd.DD:
        return dd.powers(self._scaled(np.asarray(x, dtype=np.float64).reshape(-1)),
                         self.degree)

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
          features: Features | None = None, refine: int = 8, chunk: int = CHUNK,
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
    # R is m×d with m = min(rows, d): a table wider than it is long (10,000 columns, 200
    # rows) is factored through its rows, O(m²·d), never as a d×d matrix (O(d³)).
    m = min(r_aug.shape[0], d)
    u, s, vt = np.linalg.svd(r_aug[:m, :d], full_matrices=False)
    keep = s > s[0] * d * np.finfo(np.float64).eps if s.size and s[0] > 0 \
        else np.zeros(s.size, bool)
    qty = r_aug[:m, d]
    resid_norm = float(abs(r_aug[d, d])) if r_aug.shape[0] > d else 0.0
    inv = np.where(keep, 1.0 / np.where(keep, s, 1.0), 0.0)

    def unscale(b_scaled: np.ndarray, y_offset: float) -> tuple[np.ndarray, float]:
        w = b_scaled / scale
        return w, y_offset - float(mean @ w)

    w, b = unscale(vt.T @ (inv * (u.T @ qty)) * y_scale, y_mean)

    cond = float(s[0] / s[keep][-1]) if keep.any() else float("inf")

    # Large and well-posed: the QR answer is already right to ~1e-13 (error ≈ 1e-16·κ,
    # κ = cond·(1 + cond·tan θ), tan θ = residual/fit, times the cancellation in the
    # intercept b = ȳ − meanᵀw): a refinement pass would buy nothing a user could see.
    fitted = float(np.linalg.norm(qty))
    tan = resid_norm / fitted if fitted > 0 else math.inf
    cancel = ((float(np.abs(mean * w).sum()) + abs(y_mean))
              / max(abs(b), 2.0 ** -20 * y_scale / math.sqrt(n)) if bias else 1.0)
    if n > EXACT_ROWS and getattr(features, "dd", None) is None and \
            cond * (1 + cond * tan) * max(cancel, 1.0) < 1000:
        refine = 0
    w_dd, b_dd = _refine(x, y, features, chunk, bias, n, mean, scale, vt, s, keep, w, b,
                         refine)
    cov_rows = (_covariance_rows(x, y, features, chunk, bias, n, mean, scale, u, s, vt)
                if cond > COVARIANCE_ABOVE and keep.all() and m == d else None)
    # two_sum keeps hi the rounded value of hi + lo: hi is the float64 answer.
    return LeastSquares(weight=w_dd[0], bias=float(b_dd[0]) if bias else None,
                        rank=int(keep.sum()), condition=cond, n=n, mean=mean, scale=scale,
                        vt=vt, s=s, keep=keep, weight_lo=w_dd[1],
                        bias_lo=float(b_dd[1]) if bias else 0.0, cov_rows=cov_rows)


def _dd_chunks(x: torch.Tensor | np.ndarray, y: torch.Tensor | np.ndarray,
               features: Features | None, chunk: int
               ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(design rows hi, lo, targets): the design exact to ~1e-32 where the features can
    say so (:class:`Powers`), else as float64 has it (lo = 0)."""
    exact = getattr(features, "dd", None)
    for i in range(0, int(x.shape[0]), chunk):
        xs = x[i:i + chunk]
        if exact is not None:
            hi, lo = exact(_np(xs))
        else:
            if features is not None:
                xs = features(torch.as_tensor(xs).double())
            hi = _np(xs)
            lo = np.zeros_like(hi)
        yield hi, lo, _np(y[i:i + chunk]).reshape(-1)


def _residuals(hi: np.ndarray, lo: np.ndarray, ys: np.ndarray, w: dd.DD, b: dd.DD
               ) -> tuple[dd.DD, int]:
    """r = y − Dw − b of one chunk in double-double, scaled by 2^-e_y (returned with e_y;
    the design is scaled column by column inside): Dekker's split needs values near 1,
    and powers of two scale exactly, so columns near 1e±300 lose nothing."""
    e_x = dd.exponent(np.abs(hi).max(axis=0)) if len(hi) else np.zeros(hi.shape[1], int)
    e_y = int(dd.exponent(np.asarray(np.abs(ys).max() if len(ys) else 0.0)))
    d_s = (np.ldexp(hi, -e_x), np.ldexp(lo, -e_x))
    w_s = (np.ldexp(w[0], e_x - e_y), np.ldexp(w[1], e_x - e_y))
    r = dd.add((np.ldexp(ys, -e_y), np.zeros_like(ys)),
               (np.full_like(ys, -np.ldexp(float(b[0]), -e_y)),
                np.full_like(ys, -np.ldexp(float(b[1]), -e_y))))
    for j in range(hi.shape[1]):
        r = dd.add(r, dd.neg(dd.mul((d_s[0][:, j], d_s[1][:, j]), (w_s[0][j], w_s[1][j]))))
    return r, e_y


def _refine(x: torch.Tensor | np.ndarray, y: torch.Tensor | np.ndarray,
            features: Features | None, chunk: int, bias: bool, n: int, mean: np.ndarray,
            scale: np.ndarray, vt: np.ndarray, s: np.ndarray, keep: np.ndarray,
            w: np.ndarray, b: float, iterations: int) -> tuple[dd.DD, dd.DD]:
    """Iterative refinement: r = y − Xw − b and Xᵀr in double-double, the correction
    δ = (RᵀR)⁺Zᵀr from the float64 factor. With R backward stable for the scaled design
    Z, each step shrinks the error by about cond(Z)·1e-16, and the fixed point solves the
    normal equations of the exact design to ~cond(Z)·1e-32: the float64 answer is then
    the exact one rounded (NIST's Filip, Wampler1–5: every coefficient to 15+ digits
    against rational arithmetic, where one float64 QR gives 7–9). A step that is not
    finite ends the refinement."""
    d = len(w)
    inv = np.where(keep, 1.0 / np.where(keep, s, 1.0), 0.0)
    w_dd: dd.DD = (w.copy(), np.zeros(d))
    b_dd: dd.DD = (np.asarray(float(b) if bias else 0.0), np.asarray(0.0))
    if not keep.any():
        return w_dd, b_dd  # nothing to solve for: no correction can be made
    for _ in range(iterations):
        s0: dd.DD = (np.zeros(()), np.zeros(()))
        sx: dd.DD = (np.zeros(d), np.zeros(d))
        with np.errstate(over="ignore", invalid="ignore"):
            for hi, lo, ys in _dd_chunks(x, y, features, chunk):
                r, e_y = _residuals(hi, lo, ys, w_dd, b_dd)
                t0 = dd.sum_rows(r)
                s0 = dd.add(s0, (np.ldexp(t0[0], e_y), np.ldexp(t0[1], e_y)))
                # Zᵀr with the columns centred exactly (in double-double) before the
                # products: centring after summing would cancel away the digits of a
                # column whose mean is far from its spread (timestamps, offsets of 1e9).
                centred = dd.add((hi, lo), (np.broadcast_to(-mean, hi.shape),
                                            np.zeros_like(hi)))
                e_c = dd.exponent(np.abs(centred[0]).max(axis=0)) if len(hi) else np.zeros(d, int)
                c_s = (np.ldexp(centred[0], -e_c), np.ldexp(centred[1], -e_c))
                tx = dd.sum_rows(dd.mul(c_s, (r[0][:, None], r[1][:, None])))
                sx = dd.add(sx, (np.ldexp(tx[0], e_c + e_y), np.ldexp(tx[1], e_c + e_y)))
            total = float(s0[0] + s0[1])
            g = (sx[0] + sx[1]) / scale
            delta = vt.T @ (inv ** 2 * (vt @ g))
            dw = delta / scale
            db = total / n - float(mean @ dw) if bias else 0.0
        if not (np.isfinite(dw).all() and np.isfinite(db)):
            break
        w_dd = dd.add(w_dd, (dw, np.zeros(d)))
        b_dd = dd.add(b_dd, (np.asarray(db), np.asarray(0.0)))
        # Until a step no longer moves any coefficient's float64 value (2^-60 of it).
        # Predicting the next step from cond alone stopped too early where a column's
        # mean dwarfs its spread: there the intercept couples the steps.
        if np.all(np.abs(dw) <= 2.0 ** -60 * np.abs(w_dd[0])) and \
                abs(db) <= 2.0 ** -60 * abs(float(b_dd[0])):
            break
    return w_dd, b_dd


def _covariance_rows(x: torch.Tensor | np.ndarray, y: torch.Tensor | np.ndarray,
                     features: Features | None, chunk: int, bias: bool, n: int,
                     mean: np.ndarray, scale: np.ndarray, u: np.ndarray, s: np.ndarray,
                     vt: np.ndarray) -> np.ndarray | None:
    """F with Cov(θ) = σ²FᵀF (θ = (b, w…)), right to ~1e-15 however ill-conditioned the
    design. The float64 R is a preconditioner P ≈ R⁻¹ (any float64 matrix is exact as
    itself); A·P, with A = [1, (D − mean)·2^-e] exact in double-double, is nearly
    orthonormal, so its float64 QR, A·P = Q₂R₂, is accurate to rounding, and
    (AᵀA)⁻¹ = P·R₂⁻¹·R₂⁻ᵀ·Pᵀ. NIST's Filip: standard errors to 15 digits, not 8."""
    from scipy.linalg import solve_triangular

    d = len(scale)
    e = dd.exponent(scale)
    k = np.ldexp(scale, -e)  # A's columns are the scaled design's times k
    p = d + int(bias)
    pre = np.zeros((p, p))
    pre[int(bias):, int(bias):] = ((vt.T / s) @ u.T) / k[:, None]
    if bias:
        pre[0, 0] = 1.0 / np.sqrt(n)
    r2 = np.zeros((0, p))
    with np.errstate(over="ignore", invalid="ignore"):
        for hi, lo, _ in _dd_chunks(x, y, features, chunk):
            centred = dd.add((hi, lo), (np.broadcast_to(-mean, hi.shape), np.zeros_like(hi)))
            cols = [(np.ldexp(centred[0][:, j], -e[j]), np.ldexp(centred[1][:, j], -e[j]))
                    for j in range(d)]
            if bias:
                cols.insert(0, (np.ones(len(hi)), np.zeros(len(hi))))
            block = np.empty((len(hi), p))
            for c in range(p):
                acc: dd.DD = (np.zeros(len(hi)), np.zeros(len(hi)))
                for j in range(p):
                    if pre[j, c] != 0:
                        acc = dd.add(acc, dd.mul(cols[j], (pre[j, c], 0.0)))
                block[:, c] = acc[0] + acc[1]
            r2 = np.linalg.qr(np.vstack([r2, block]), mode="r")
    if r2.shape[0] < p or not np.isfinite(r2).all() or (np.abs(np.diag(r2)) < 0.5).any():
        return None  # A·P is not near orthonormal: keep the float64 factor's answer
    g = solve_triangular(r2.T, pre.T, lower=True)  # Cov of (c, v) = σ²·GᵀG
    t = np.zeros((p, p))  # θ = T·(c, v): w = v·2^-e, b = c − meanᵀw
    t[int(bias):, int(bias):] = np.diag(np.ldexp(1.0, -e))
    if bias:
        t[0, 0] = 1.0
        t[0, 1:] = -mean * np.ldexp(1.0, -e)
    return g @ t.T


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
    """The m×p triangle R (m = min(rows, p)) of the unscaled design ``design(x)``
    (Householder QR, chunk by chunk): its singular values are those of the design to
    rounding (the design's other p − m are 0), without ever holding the design itself
    (condition numbers and ranks on millions of rows, or on 10,000 columns)."""
    r: np.ndarray | None = None
    for i in range(0, int(x.shape[0]), chunk):
        block = np.asarray(design(torch.as_tensor(x[i:i + chunk]).double()), dtype=np.float64)
        r = np.linalg.qr(block if r is None else np.vstack([r, block]), mode="r")
    if r is None:
        raise ValueError("r_factor needs at least one row")
    return r[:r.shape[1]]
