"""An ordinary-least-squares report, the numbers of statsmodels' ``OLS(...).fit()``.

Why not call statsmodels: it holds the whole design (and its SVD) in memory, and reglab
fits 10⁶–10⁷ rows. Everything here comes from :func:`reglab.analysis.least_squares.solve` (a chunked
QR of the centred, scaled design, O(chunk·d) memory), so the estimates are exact to
float64 even where the raw design is badly conditioned.

Units. reglab may train on standardized data, ŷ' = b + Σ w_k φ_k(x') with
x' = (x − x_mean)/x_std and y' = (y − y_mean)/y_std (see :class:`reglab.data.scaling.Scaling`).
:func:`report_for` solves that training problem, then reports the coefficients in the
data's own units, ŷ = const + Σ a_j ψ_j(x) (ψ the same features of the raw x: x_j for a
linear model, x, x², …, xᵈ for a polynomial). a = Jθ + c is affine in θ = (b, w), so
Cov(a) = J·Cov(θ)·Jᵀ. ``params`` keeps θ itself, in training units, which is what the
model's own parameters should approach.

With an intercept (``bias``) the data-unit model is the same function class as
statsmodels' OLS on the raw design [1, ψ(x)], and every number equals its. Without an
intercept but with standardization, the data-unit model still has a constant
(y_mean − y_std·Σ w·(m/s)^k…), implied by the scaling and not a free parameter. The report
then shows that ``const`` row with the standard error derived through J (zero when it is
a plain y_mean) and ``implied_const: true``; ``rank``/``df_model``/``df_resid``/AIC/BIC
count free parameters only; R² is uncentred about the training target's origin, i.e.
1 − SSR/Σ(y − y_mean)² (Σy² when y is not scaled). All of it equals statsmodels' OLS of
y − y_mean (or y) on the centred design ψ(x − x_mean) without a constant, whose slopes
are the data-unit slopes; ``condition_number`` is that design's.

Rank-deficient designs: the solver returns the minimum-norm solution in its scaled
columns, statsmodels the one in raw columns; the fitted values, SSR and R² agree, the
individual coefficients of the dependent columns do not.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Literal

import numpy as np
import torch
from scipy import sparse, stats

from reglab.analysis import double_double as dd
from reglab.analysis.least_squares import (
    CHUNK,
    Features,
    Powers,
    column_norms,
    r_factor,
    solve,
)
from reglab.data.scaling import Scaling

Array = torch.Tensor | np.ndarray
Design = Callable[[torch.Tensor], torch.Tensor]

#: Two-sided level of the confidence intervals in the ``coef`` table.
ALPHA = 0.05


@dataclass
class _Problem:
    """One regression as the solver sees it (training units) and as the report shows it."""

    train_features: Features | None  # raw rows -> the columns the parameters multiply
    y_train: np.ndarray  # the target in training units, (n,)
    y_scale: float  # data units = y_scale · training units (+ an offset)
    data_design: Design  # raw rows -> the design whose condition number is reported
    jacobian: Any  # data-unit coefficients a = J·θ + offset (an array, or sparse)
    offset: np.ndarray
    names: list[str]  # one per row of J
    implied_const: bool
    #: (θ, θ's low parts) -> data-unit coefficients, where J·θ cancels (the constant of a
    #: standardized fit, a polynomial's change of basis): done in exact or double-double
    #: arithmetic, so the float64 answer keeps the solver's digits. None: J·θ + offset.
    to_data_units: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None


def _np(t: Array) -> np.ndarray:
    if isinstance(t, torch.Tensor):
        return t.detach().to("cpu", torch.float64).numpy()
    return np.asarray(t, dtype=np.float64)


def _num(v: float) -> float | None:
    """A finite float, or None: NaN and inf are not JSON."""
    v = float(v)
    return v if math.isfinite(v) else None


def _as_2d(x: Array) -> Array:
    return x.reshape(-1, 1) if len(x.shape) == 1 else x


def _float(v: Fraction) -> float:
    """A rational as float64; ±inf past its range (the report then says null)."""
    try:
        return float(v)
    except OverflowError:
        return math.inf if v > 0 else -math.inf


def _polynomial_map(jac: list[list[Fraction]], offset: list[Fraction]
                    ) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """a = J·θ + offset in rational arithmetic (J exact, θ = hi + lo): a polynomial's
    change of basis cancels terms thousands of times its result (NIST's Filip, Wampler)."""
    def apply(hi: np.ndarray, lo: np.ndarray) -> np.ndarray:
        if not (np.isfinite(hi).all() and np.isfinite(lo).all()):
            return np.full(len(jac), math.nan)
        theta = [Fraction(float(h)) + Fraction(float(v)) for h, v in zip(hi, lo, strict=True)]
        return np.array([_float(sum((j * t for j, t in zip(row, theta, strict=True) if j),
                                    off)) for row, off in zip(jac, offset, strict=True)])

    return apply


def _linear_map(jac: np.ndarray, m: np.ndarray, s: np.ndarray, y_scale: float,
                y_offset: float, bias: bool) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """J·θ + offset for a standardized linear fit: each slope is one product (float64
    is exact enough); the constant, y_offset + y_scale·(b − Σ w_k·m_k/s_k), cancels, so
    it is summed in double-double."""
    def apply(hi: np.ndarray, lo: np.ndarray) -> np.ndarray:
        out = jac @ hi
        w = (hi[int(bias):], lo[int(bias):])
        # Scaled by powers of two inside: means or targets near 1e300 stay finite.
        terms = dd.mul_scaled(dd.div_scaled(dd.mul_scaled(w, m), s), y_scale)
        total = dd.sum_rows((-terms[0], -terms[1]))
        if bias:
            total = dd.add(total, dd.mul_scaled((np.asarray(hi[0]), np.asarray(lo[0])),
                                                y_scale))
        total = dd.add(total, (np.asarray(y_offset), np.asarray(0.0)))
        out[0] = float(total[0] + total[1])
        return out

    return apply


def _ones_last(design: Design) -> Callable[[torch.Tensor], np.ndarray]:
    def augmented(t: torch.Tensor) -> np.ndarray:
        block = _np(design(t))
        return np.hstack([block, np.ones((block.shape[0], 1))])

    return augmented


def _rank(s: np.ndarray, rows: int) -> int:
    """numpy's ``matrix_rank`` tolerance (which statsmodels uses), on singular values."""
    if s.size == 0 or s[0] == 0:
        return 0
    return int((s > s[0] * max(rows, s.size) * np.finfo(np.float64).eps).sum())


def _design_facts(x: Array, design: Design, bias: bool, chunk: int) -> tuple[float, int]:
    """(condition number, k_constant) of the data-unit design, as statsmodels finds them.

    One chunked QR of [design, 1]: its leading block is R of the design alone. With
    ``bias`` the reported design includes the constant; without, statsmodels still counts
    a constant when ones lie in the span of the columns (a constant or dummy set).
    """
    n = int(x.shape[0])
    r = r_factor(x, _ones_last(design), chunk)
    p = r.shape[1]

    def singular_values(a: np.ndarray, size: int) -> np.ndarray:  # with the zeros R omits
        sv = np.linalg.svd(a, compute_uv=False) if a.size else np.zeros(0)
        return np.concatenate([sv, np.zeros(size - sv.size)])

    s_all = singular_values(r, p)
    s_own = singular_values(r[:, :-1], p - 1)
    s = s_all if bias else s_own
    cond = float(s[0] / s[-1]) if s.size and s[-1] > 0 else math.inf  # no squares: 1e300 fits
    if bias:
        return cond, 1
    return cond, int(s_own.size > 0 and _rank(s_all, n) == _rank(s_own, n))


#: The most terms whose covariance matrix ``metrics.json`` holds (200² = 40,000 numbers).
#: A 10,000-column table's would be 10⁸ numbers: gigabytes of JSON and an O(k³) product,
#: minutes for nothing a person reads; its standard errors (the diagonal) are kept.
COV_TERMS = 200


def coef_table(names: Sequence[str], coef: np.ndarray, se: np.ndarray, df_resid: int
               ) -> list[dict[str, Any]]:
    """The coefficient rows: estimate, standard error, t, its two-sided p-value and the
    (1 − ALPHA) confidence interval from Student's t with ``df_resid`` degrees."""
    q = float(stats.t.ppf(1 - ALPHA / 2, df_resid)) if df_resid > 0 else math.nan
    table = []
    for name, a, e in zip(names, coef, se, strict=True):
        t = a / e if e > 0 else math.nan
        p = 2 * stats.t.sf(abs(t), df_resid) if math.isfinite(t) else math.nan
        table.append({"name": name, "coef": _num(a), "std_err": _num(e), "t": _num(t),
                      "p_value": _num(p), "ci_low": _num(a - q * e),
                      "ci_high": _num(a + q * e)})
    return table


def _report(x: Array, bias: bool, prob: _Problem, chunk: int) -> tuple[dict[str, Any], Any]:
    n = int(x.shape[0])
    if n == 0:
        raise ValueError("a regression report needs at least one row")
    sol = solve(x, prob.y_train, bias=bias, features=prob.train_features, chunk=chunk)
    rank = sol.rank + int(bias)
    # As many free parameters as rows: the optimum interpolates, its loss is exactly 0
    # (summing the refined residuals would give double-double's rounding, ~1e-58).
    ssr_t = 0.0 if rank >= n else sol.sse(x, prob.y_train, prob.train_features, chunk)
    sol.train_sse = ssr_t
    cond, k_const = _design_facts(x, prob.data_design, bias, chunk)
    df_resid = n - rank
    df_model = rank - k_const

    # In training units first: R², F and σ need no square of y_scale, which passes
    # float64's range for targets near 1e200 (only SSR itself is then too large to hold).
    y2 = prob.y_scale * prob.y_scale  # inf past the range, never an OverflowError
    ssr = y2 * ssr_t
    yt = prob.y_train
    tss_t = float(((yt - yt.mean()) ** 2).sum()) if k_const else float(yt @ yt)

    theta = np.concatenate([[sol.bias] if bias else [], sol.weight])
    if prob.to_data_units is not None:
        lo = np.zeros_like(sol.weight) if sol.weight_lo is None else sol.weight_lo
        coef = prob.to_data_units(theta, np.concatenate([[sol.bias_lo] if bias else [], lo]))
    else:
        coef = prob.jacobian @ theta + prob.offset
    sigma2_t = ssr_t / df_resid if df_resid > 0 else math.nan
    if df_resid > 0:
        # From the factor of the covariance: a standard error is a norm, never the root
        # of a variance that may pass float64's range.
        factor = sol.covariance_factor() @ prob.jacobian.T
        se = math.sqrt(sigma2_t) * column_norms(factor)
        cov = None
        if len(coef) <= COV_TERMS:
            with np.errstate(over="ignore"):
                cov = sigma2_t * (factor.T @ factor)
    else:  # no residual degrees of freedom: no variance to scale anything by
        se = np.full(len(coef), math.nan)
        cov = None
    table = coef_table(prob.names, coef, se, df_resid)

    r2 = 1 - ssr_t / tss_t if tss_t > 0 else math.nan
    adj = 1 - (n - k_const) / df_resid * (1 - r2) if df_resid > 0 else math.nan
    f = ((tss_t - ssr_t) / df_model) / (ssr_t / df_resid) if df_model > 0 and \
        df_resid > 0 and ssr_t > 0 else math.nan
    f_p = stats.f.sf(f, df_model, df_resid) if math.isfinite(f) else math.nan
    llf = (-n / 2 * (math.log(2 * math.pi) + 2 * math.log(prob.y_scale)
                     + math.log(ssr_t / n) + 1) if ssr_t > 0 else math.nan)
    return {
        "coef": table,
        "n": n, "df_model": df_model, "df_resid": df_resid, "rank": rank,
        "k_constant": k_const, "implied_const": prob.implied_const,
        "sigma": _num(prob.y_scale * math.sqrt(ssr_t / df_resid)) if df_resid > 0 else None,
        "ssr": _num(ssr), "r2": _num(r2), "adjusted_r2": _num(adj),
        "f_statistic": _num(f), "f_p_value": _num(f_p),
        "log_likelihood": _num(llf), "aic": _num(-2 * llf + 2 * rank),
        "bic": _num(-2 * llf + math.log(n) * rank),
        "condition_number": _num(cond),
        # The rank decision: singular values of the centred, unit-norm training design
        # below this share of the largest count as zero (norms formed without squaring a
        # raw value, so a column near 1e-300 is never taken for a constant).
        "rank_tolerance": _num(len(sol.weight) * float(np.finfo(np.float64).eps)),
        "cov": None if cov is None else [[_num(v) for v in row] for row in cov],
        **({"cov_omitted": f"{len(coef):,} terms: the {len(coef)}×{len(coef)} matrix is "
                           f"not recorded (up to {COV_TERMS} terms are); std_err holds "
                           "its diagonal"} if cov is None and df_resid > 0 else {}),
        "params": {"weight": [sol.weight.tolist()], "bias": sol.bias},
    }, sol


def ols_report(x: Array, y: Array, bias: bool = True, features: Features | None = None,
               names: Sequence[str] | None = None, *, chunk: int = CHUNK) -> dict[str, Any]:
    """The OLS report of ``y`` on the design ``features(x)`` (default: the columns of
    ``x``), plus a ``const`` column when ``bias``: statsmodels' OLS on that same design.

    Returns the JSON-ready dict described in :func:`report_for` (no unit change here)."""
    x = _as_2d(x)
    design: Design = features if features is not None else (lambda t: t)
    d = int(_np(design(torch.as_tensor(x[:1]).double())).shape[1])
    names = list(names) if names is not None else [f"x{j + 1}" for j in range(d)]
    if len(names) != d:
        raise ValueError(f"names: {len(names)} given for {d} design columns")
    p = d + int(bias)
    prob = _Problem(train_features=features, y_train=_np(y).reshape(-1), y_scale=1.0,
                    data_design=design, jacobian=sparse.eye_array(p, format="csr"),
                    offset=np.zeros(p),
                    names=(["const"] if bias else []) + names, implied_const=False)
    return _report(x, bias, prob, chunk)[0]


def report_for(x: Array, y: Array, scaling: Scaling | None = None, bias: bool = True,
               kind: Literal["linear", "polynomial"] = "linear", degree: int = 1,
               names: Sequence[str] | None = None, *, chunk: int = CHUNK) -> dict[str, Any]:
    """The report alone; see :func:`solve_and_report`."""
    return solve_and_report(x, y, scaling, bias, kind, degree, names, chunk=chunk)[0]


def solve_and_report(x: Array, y: Array, scaling: Scaling | None = None, bias: bool = True,
                     kind: Literal["linear", "polynomial"] = "linear", degree: int = 1,
                     names: Sequence[str] | None = None, *, chunk: int = CHUNK
                     ) -> tuple[dict[str, Any], Any]:
    """The OLS report of a linear or polynomial reglab model, in the data's own units.

    ``x`` (n×k) and ``y`` (n or n×1) are raw data; ``scaling`` is the standardization the
    model trains under (None: none). The fit is solved on the training design (features of
    scaled x against scaled y) and mapped to data units. ``names`` name the input columns
    (one for a polynomial, whose terms are then ``x``, ``x^2``, …).

    Returns (the report, the ``LeastSquares`` solution in training units). The report
    holds ``coef`` (rows name, coef, std_err, t, p_value, ci_low, ci_high; 95 %
    Student-t intervals), ``n``, ``df_model``, ``df_resid``, ``rank``, ``k_constant``,
    ``implied_const``, ``sigma``, ``ssr``, ``r2``, ``adjusted_r2``, ``f_statistic``,
    ``f_p_value``, ``log_likelihood``, ``aic``, ``bic``, ``condition_number``, ``cov``
    (of the ``coef`` rows, data units) and ``params`` (θ in training units:
    ``{"weight": [[...]], "bias": b}``). Undefined numbers are None.
    """
    x = _as_2d(x)
    sc = scaling or Scaling()
    k = int(x.shape[1])
    if kind == "polynomial":
        if k != 1:
            raise ValueError(f"a polynomial report takes one input column, got {k}")
        if int(degree) < 1:
            raise ValueError(f"degree must be >= 1, got {degree!r}")
        d = int(degree)
        psi: Design = Powers(d)
        base = (list(names) if names else ["x"])[0]
        terms = [base] + [f"{base}^{j}" for j in range(2, d + 1)]
    elif kind == "linear":
        d = k

        def psi(t: torch.Tensor) -> torch.Tensor:
            return t

        terms = list(names) if names is not None else [f"x{j + 1}" for j in range(k)]
        if len(terms) != k:
            raise ValueError(f"names: {len(terms)} given for {k} input columns")
    else:
        raise ValueError(f"kind must be 'linear' or 'polynomial', got {kind!r}")

    m = np.asarray(sc.x_mean, dtype=np.float64) if sc.x_mean is not None else np.zeros(k)
    s = np.asarray(sc.x_std, dtype=np.float64) if sc.x_std is not None else np.ones(k)
    y_scale = float(sc.y_std) if sc.y_mean is not None and sc.y_std is not None else 1.0
    y_offset = float(sc.y_mean) if sc.y_mean is not None else 0.0
    const_row = bias or sc.active

    # J: rows (const?, ψ terms), columns θ = (b?, w). Polynomial columns expand
    # ((x − m)/s)^k = s⁻ᵏ Σ_j C(k, j) x^j (−m)^(k−j).
    p, first = d + int(bias), int(const_row)
    off = np.zeros(first + d)
    if const_row:
        off[0] = y_offset
    jac: Any
    if kind == "linear":
        # Sparse: each slope row holds one entry, the constant row one per column. A dense
        # J of a 10,000-column table would be 800 MB of zeros.
        cols = np.arange(d) + int(bias)
        rows, at, vals = [first + np.arange(d)], [cols], [y_scale / s]
        if const_row:
            rows.append(np.zeros(d, int))
            at.append(cols)
            vals.append(-y_scale * m / s)
            if bias:
                rows.append(np.zeros(1, int))
                at.append(np.zeros(1, int))
                vals.append(np.array([y_scale]))
        jac = sparse.csr_array((np.concatenate(vals), (np.concatenate(rows),
                                                        np.concatenate(at))),
                               shape=(first + d, p))
    else:
        jac = np.zeros((first + d, p))
        if const_row and bias:
            jac[0, 0] = y_scale
        for kk in range(d):
            col, power = kk + int(bias), kk + 1
            for j in range(0, power + 1):
                with np.errstate(all="ignore"):  # past float64's range: inf, then null
                    v = y_scale * math.comb(power, j) * (-m[0]) ** (power - j) / s[0] ** power
                if j:
                    jac[first + j - 1, col] = v
                elif const_row:
                    jac[0, col] = v

    def train_features(t: torch.Tensor) -> torch.Tensor:
        return psi(sc.x(t))

    # With an intercept the reported design is the raw [1, ψ(x)]; without one, the
    # design of the free parameters: ψ(x − x_mean) (ψ(x) when x is not scaled).
    centre = None if bias or sc.x_mean is None else torch.from_numpy(m)

    def data_design(t: torch.Tensor) -> torch.Tensor:
        return psi(t if centre is None else t - centre.to(t.device, t.dtype))

    to_data: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None
    features: Features = train_features
    if kind == "polynomial":
        # The same columns, with their exact (double-double) values for the solver.
        features = Powers(d, float(m[0]), float(s[0])) if sc.x_mean is not None else psi
        to_data = _polynomial_map(*_polynomial_jacobian(d, m[0], s[0], y_scale, y_offset,
                                                        bias, const_row))
    elif sc.active:
        to_data = _linear_map(jac, m, s, y_scale, y_offset, bias) if const_row else None

    yv = _np(y).reshape(-1)
    prob = _Problem(train_features=features,
                    y_train=(yv - y_offset) / y_scale if sc.y_mean is not None else yv,
                    y_scale=y_scale, data_design=data_design, jacobian=jac, offset=off,
                    names=(["const"] if const_row else []) + terms,
                    implied_const=const_row and not bias, to_data_units=to_data)
    return _report(x, bias, prob, chunk)


def _polynomial_jacobian(d: int, m: float, s: float, y_scale: float, y_offset: float,
                         bias: bool, const_row: bool
                         ) -> tuple[list[list[Fraction]], list[Fraction]]:
    """J and the offset of a polynomial's change of units, exact: training column k is
    ((x − m)/s)^k = s⁻ᵏ Σ_j C(k, j)·x^j·(−m)^(k−j), times y_scale."""
    first = int(const_row)
    fm, fs, fy = Fraction(float(m)), Fraction(float(s)), Fraction(float(y_scale))
    jac = [[Fraction(0)] * (d + int(bias)) for _ in range(first + d)]
    off = [Fraction(0)] * (first + d)
    if const_row:
        off[0] = Fraction(float(y_offset))
        if bias:
            jac[0][0] = fy
    for kk in range(d):
        col, power = kk + int(bias), kk + 1
        for j in range(power + 1):
            v = fy * math.comb(power, j) * (-fm) ** (power - j) / fs ** power
            if j:
                jac[first + j - 1][col] = v
            elif const_row:
                jac[0][col] = v
    return jac, off


def report_for_model(model: torch.nn.Module, x: Array, y: Array,
                     scaling: Scaling | None = None, names: Sequence[str] | None = None,
                     *, chunk: int = CHUNK) -> tuple[dict[str, Any], Any] | None:
    """:func:`solve_and_report` with kind, degree and bias read off a reglab model; None
    for a model that is not linear in its parameters (an MLP)."""
    from reglab.models.regressors import LinearRegression, PolynomialRegression

    if not isinstance(model, LinearRegression):
        return None
    if isinstance(model, PolynomialRegression):
        return solve_and_report(x, y, scaling, model.has_bias, "polynomial", model.degree,
                                names, chunk=chunk)
    return solve_and_report(x, y, scaling, model.has_bias, "linear", 1, names, chunk=chunk)
