"""The least-squares fit and its OLS report from a streamed table, in one pass.

The design is never held: each block of rows is folded into the R factor of
``[1 | z | y]`` (a tall-skinny QR, TSQR), where ``z`` is the features shifted and scaled
by the first block's means and spreads (any shift is exact reparametrization; it keeps
the columns' conditioning close to the standardized design's). ``XᵀX`` is never formed,
so the condition number is not squared. From R alone follow the coefficients, SSR,
standard errors, R², F, the likelihood and the condition number; the validation rows get
an R of their own, which gives their loss for any coefficients. The report has the keys
and units of :mod:`reglab.analysis.ols_report`'s.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from reglab.data import row_split
from reglab.data.table_stream import Block
from reglab.errors import DataError

#: Rows gathered before they are folded into R.
FOLD_ROWS = 1 << 16
#: The part key of cross-validation fold k is FOLD + k (beside row_split's split codes).
FOLD = 3


class Tsqr:
    """The R factor of a tall matrix given a block of rows at a time.

    Rows are written into a column-major buffer below the current R, and a full buffer
    is folded by one Householder QR (LAPACK's ``dgeqrf``, in place): R of [R; rows] is R
    of everything seen. No ``AᵀA`` is ever formed.
    """

    def __init__(self, width: int) -> None:
        self.q = width
        self.rows = 0
        # Row j holds design column j: the transpose is the column-major matrix LAPACK
        # factors, R in its first ``width`` rows (zeros to start: they change nothing).
        self._buffer = np.zeros((width, width + FOLD_ROWS))
        self._held = 0

    def reserve(self, count: int) -> np.ndarray:
        """A view of the next ``count`` (≤ FOLD_ROWS) rows to write, counted as added:
        shape (columns, count), one design column per row of the view."""
        if self._held + count > FOLD_ROWS:
            self._fold()
        start = self.q + self._held
        self._held += count
        self.rows += count
        return self._buffer[:, start:start + count]

    def absorb(self, r: np.ndarray, rows: int) -> None:
        """Fold in another factor ``r`` (the R of ``rows`` rows with the same columns):
        R of [R; r] is R of both sets of rows."""
        start = 0
        while start < r.shape[0]:
            take = min(FOLD_ROWS, r.shape[0] - start)
            self.reserve(take)[:] = r[start:start + take].T
            start += take
        self.rows += rows - r.shape[0]  # data rows, not the factor's

    def _fold(self) -> None:
        from scipy.linalg import lapack

        if self._held == 0:
            return
        q = self.q
        a = self._buffer[:, :q + self._held].T
        factored, _, _, info = lapack.dgeqrf(a, overwrite_a=True)
        if info != 0:
            raise ArithmeticError(f"LAPACK dgeqrf failed (info {info})")
        self._buffer[:, :q] = np.triu(factored[:q, :q]).T
        self._held = 0

    def factor(self) -> np.ndarray:
        """R (square, upper triangular; zero rows where fewer rows than columns)."""
        self._fold()
        return self._buffer[:, :self.q].T.copy()


class StreamedLeastSquares:
    """A sink for the data module's census: folds the training (and validation) rows of
    each block into their R factors, as ``[1 | z | y']`` rows written straight into each
    factor's buffer."""

    def __init__(self, width: int, bias: bool, val_is_train: bool,
                 fold_of: Callable[[np.ndarray], np.ndarray] | None = None,
                 folds: int = 0) -> None:
        self.d, self.bias, self.val_is_train = width, bias, val_is_train
        self.p = width + int(bias)
        #: With a ones column, R holds the training rows' moments (the census reads them).
        self.gives_moments = bias
        self.shift: np.ndarray | None = None  # (x shifts, y shift)
        self.scale: np.ndarray | None = None
        # One factor per part: the training rows (or, with K folds, one per fold, keyed
        # FOLD + k; their merge is the training rows'), the validation rows.
        self.fold_of, self.folds = fold_of, int(folds) if fold_of is not None else 0
        keys = ([FOLD + k for k in range(self.folds)] if self.folds else [row_split.TRAIN])
        self.parts = {key: Tsqr(self.p + 1) for key in keys}
        if not val_is_train:
            self.parts[row_split.VAL] = Tsqr(self.p + 1)
        self._train: Tsqr | None = None

    def __call__(self, block: Block, codes: np.ndarray) -> None:
        """Fold a block's training (and validation) rows in."""
        if len(block) == 0:
            return
        if self.shift is None:  # any shift is exact; the first rows seen keep it near
            self._choose_units(block.values)
        # z for every row at once, one column per row of z, from the block's columns;
        # then each split's rows are gathered from it straight into its factor's buffer.
        z = np.empty((len(block.columns), len(block)))
        for j, column in enumerate(block.columns):
            np.subtract(column, self.shift[j], out=z[j])
            z[j] *= self._inverse[j]
        first = int(self.bias)
        self._train = None
        keys = codes
        if self.folds:  # each training row to its fold's factor
            keys = codes.astype(np.int64)
            train = np.flatnonzero(codes == row_split.TRAIN)
            keys[train] = FOLD + self.fold_of(block.rows[train])
        for key, part in self.parts.items():
            rows = np.flatnonzero(keys == key)
            for i in range(0, len(rows), FOLD_ROWS):
                chunk = rows[i:i + FOLD_ROWS]
                out = part.reserve(len(chunk))
                if self.bias:
                    out[0] = 1.0
                np.take(z, chunk, axis=1, out=out[first:], mode="clip")

    def merge_ranks(self, world: int) -> None:
        """Every rank's factors merged (:meth:`merge`), on every rank of a running
        process group, once each has folded its own units."""
        import torch.distributed as dist

        gathered: list[Any] = [None] * world
        dist.all_gather_object(gathered, self.state())
        self.merge(gathered)

    def state(self) -> tuple[Any, ...]:
        """What :meth:`merge` takes of this sink: its units and its factors."""
        return (self.shift, self.scale,
                {split: (part.factor(), part.rows) for split, part in self.parts.items()})

    def merge(self, states: list[tuple[Any, ...]]) -> None:
        """Become the sink of every state's rows, in order: each R is carried into the
        units of the first state that saw rows (a change of shift and scale is ``R·T``
        with T upper triangular, still an R of the same rows), then they are stacked."""
        seen = [state for state in states if state[0] is not None]
        if not seen:
            return
        self.shift, self.scale = seen[0][0], seen[0][1]
        self._inverse = 1.0 / self.scale
        self._train = None
        for key in self.parts:
            self.parts[key] = self._combine(
                (r @ self._units_change(shift, scale), rows)
                for shift, scale, factors in seen for r, rows in [factors[key]])

    def _combine(self, factors: Iterable[tuple[np.ndarray, int]]) -> Tsqr:
        """One factor of the rows of several: (R, rows) each, in these units."""
        out = Tsqr(self.p + 1)
        for r, rows in factors:
            if rows:
                out.absorb(r, rows)
        return out

    def train(self, without: int | None = None) -> Tsqr:
        """The training rows' factor; with folds, their merge (made once), or that of
        every fold but ``without``."""
        if not self.folds:
            return self.parts[row_split.TRAIN]
        if without is None and self._train is not None:
            return self._train
        merged = self._combine((self.parts[FOLD + k].factor(), self.parts[FOLD + k].rows)
                               for k in range(self.folds) if k != without)
        if without is None:
            self._train = merged
        return merged

    def _units_change(self, shift: np.ndarray, scale: np.ndarray) -> np.ndarray:
        """T with ``[1 | z | y']·T`` the same rows in this sink's units, for rows made
        with ``shift`` and ``scale`` (upper triangular: the ones column is first)."""
        ratio = scale / self.scale
        if not self.bias:  # no shift, no ones column
            return np.diag(ratio)
        t = np.diag(np.concatenate([[1.0], ratio]))
        t[0, 1:] = (shift - self.shift) / self.scale
        return t

    def _choose_units(self, rows: np.ndarray) -> None:
        width = rows.shape[1]
        if self.bias:
            shift = rows.mean(axis=0)
            spread = rows.std(axis=0)
        else:  # no intercept: a shift would change the model
            shift = np.zeros(width)
            spread = np.sqrt((rows * rows).mean(axis=0))
        spread = np.where((spread > 0) & np.isfinite(spread), spread, 1.0)
        # Powers of two: dividing by them is exact, so z is exactly (x − shift)/scale
        # and the map back to data units loses nothing; a multiply does it.
        self.shift, self.scale = shift, np.exp2(np.round(np.log2(spread)))
        self._inverse = 1.0 / self.scale

    def train_moments(self) -> Any:
        """The training rows' column moments, read off R (with a bias only): R's first
        row holds √n and each column's sum over √n, the rest of each column its part
        orthogonal to the ones, whose squared norm is the sum of squared deviations."""
        from reglab.data.moments import Moments

        part = self.train()
        r = part.factor()
        n = part.rows
        mean_z = r[0, 1:] / r[0, 0]
        m2_z = np.sum(r[1:, 1:] ** 2, axis=0)
        return Moments(n, self.shift + mean_z * self.scale, m2_z * self.scale ** 2)

    # -- the answer -------------------------------------------------------------------------
    def solve(self, part: Tsqr | None = None) -> dict[str, Any]:
        """Coefficients (shifted units), SSR, rank and the factor of their covariance, of
        the training rows (or of ``part``'s)."""
        part = part or self.train()
        r = part.factor()
        p = self.p
        r11, rhs, rho = r[:p, :p], r[:p, p], float(r[p, p])
        norms = np.linalg.norm(r11, axis=0)
        norms = np.where(norms > 0, norms, 1.0)
        u, s, vt = np.linalg.svd(r11 / norms)
        n = part.rows
        tol = (s[0] if s.size else 0.0) * max(n, p) * np.finfo(np.float64).eps
        keep = s > tol
        c = u.T @ rhs
        theta = (vt[keep].T @ (c[keep] / s[keep])) / norms
        ssr = rho * rho + float(np.sum(c[~keep] ** 2))
        # Cov(θ) = σ²·F·Fᵀ with F the pseudo-inverse factor of R11.
        factor = (vt[keep].T / s[keep]) / norms[:, None]
        return {"theta": theta, "ssr": ssr, "rank": int(keep.sum()), "factor": factor,
                "rows": n}

    def jacobian(self) -> tuple[np.ndarray, np.ndarray]:
        """(J, offset): data-unit coefficients (const first) = J·θ + offset."""
        d, c, s = self.d, self.shift[:self.d], self.scale[:self.d]
        sy, cy = float(self.scale[d]), float(self.shift[d])
        if not self.bias:
            return np.diag(sy / s), np.zeros(d)
        jac = np.zeros((self.p, self.p))
        jac[0, 0] = sy
        jac[0, 1:] = -sy * c / s
        jac[1:, 1:] = np.diag(sy / s)
        offset = np.zeros(self.p)
        offset[0] = cy
        return jac, offset

    def split_sse(self, split: int | Tsqr, theta: np.ndarray) -> tuple[float, int]:
        """(Σ residual² in data units, rows) of ``split`` (or of a factor's rows) for
        shifted-unit ``theta``."""
        part = split if isinstance(split, Tsqr) else self.parts[split]
        if part.rows == 0:
            return math.nan, 0
        resid = part.factor() @ np.concatenate([theta, [-1.0]])
        return float(resid @ resid) * float(self.scale[self.d]) ** 2, part.rows

    def condition_number(self) -> float:
        """Of the data-unit design (with its constant), as statsmodels reports it."""
        r11 = self.train().factor()[:self.p, :self.p]
        c, s = self.shift[:self.d], self.scale[:self.d]
        t = np.diag(s) if not self.bias else np.block([[np.ones((1, 1)), c[None, :]],
                                                       [np.zeros((self.d, 1)), np.diag(s)]])
        sv = np.linalg.svd(r11 @ t, compute_uv=False)
        return float(sv[0] / sv[-1]) if sv[-1] > 0 else math.inf

    def report(self, names: list[str], tss: float) -> dict[str, Any]:
        """The OLS report in data units; ``tss``: the training target's total sum of
        squares about its mean (about zero without a bias), from the census."""
        from scipy import stats

        from reglab.analysis.ols_report import coef_table

        sol = self.solve()
        jac, offset = self.jacobian()
        coef = jac @ sol["theta"] + offset
        n, rank = sol["rows"], sol["rank"]
        k_const = int(self.bias)
        df_resid, df_model = n - rank, rank - k_const
        sy = float(self.scale[self.d])
        ssr = sol["ssr"] * sy * sy
        sigma2 = ssr / df_resid if df_resid > 0 else math.nan
        # J carries y's scale already: the covariance takes σ² in the shifted units.
        sigma2_z = sol["ssr"] / df_resid if df_resid > 0 else math.nan
        factor = jac @ sol["factor"]
        se = (math.sqrt(sigma2_z) * np.linalg.norm(factor, axis=1) if df_resid > 0
              else np.full(len(coef), math.nan))
        table = coef_table((["const"] if self.bias else []) + list(names), coef, se,
                           df_resid)
        r2 = 1 - ssr / tss if tss > 0 else math.nan
        adj = 1 - (n - k_const) / df_resid * (1 - r2) if df_resid > 0 else math.nan
        f = ((tss - ssr) / df_model) / (ssr / df_resid) if df_model > 0 and df_resid > 0 \
            and ssr > 0 else math.nan
        f_p = stats.f.sf(f, df_model, df_resid) if math.isfinite(f) else math.nan
        llf = -n / 2 * (math.log(2 * math.pi) + math.log(ssr / n) + 1) if ssr > 0 else math.nan
        cov = sigma2_z * (factor @ factor.T) if df_resid > 0 and len(coef) <= 200 else None
        return {
            "coef": table, "n": n, "df_model": df_model, "df_resid": df_resid, "rank": rank,
            "k_constant": k_const, "implied_const": False,
            "sigma": _num(math.sqrt(sigma2)) if df_resid > 0 else None,
            "ssr": _num(ssr), "r2": _num(r2), "adjusted_r2": _num(adj),
            "f_statistic": _num(f), "f_p_value": _num(f_p), "log_likelihood": _num(llf),
            "aic": _num(-2 * llf + 2 * rank), "bic": _num(-2 * llf + math.log(n) * rank),
            "condition_number": _num(self.condition_number()),
            "rank_tolerance": _num(self.p * float(np.finfo(np.float64).eps)),
            "cov": None if cov is None else [[_num(v) for v in row] for row in cov],
            "streamed": "one pass: R factor of [1 | x | y] over the table's blocks (TSQR)",
        }, sol


def _num(v: float) -> float | None:
    v = float(v)
    return v if math.isfinite(v) else None


def find_optimum(model: Any, loss_fn: Any, datamodule: Any, optimizer: Any = None
                 ) -> tuple[dict[str, Any] | None, Any]:
    """The optimum record (as :func:`reglab.analysis.optimum.find_optimum` gives it) of a
    linear model with MSE on a streamed table; (None, None) for a model least squares
    does not fit, a record saying why for what it does not cover.

    The pass itself is the census Lightning's setup starts, once the ranks of a
    data-parallel run are connected, so that each reads only its own units: what is
    returned now is a *pending* record, which :func:`solve` fills in place after it."""
    import torch

    from reglab.analysis.optimum import weight_decay
    from reglab.models.regressors import LinearRegression, PolynomialRegression

    if not isinstance(model, LinearRegression):
        return None, None
    if isinstance(model, PolynomialRegression):
        return {"why_no_optimum": "a streamed table (data=stream) is fitted exactly with "
                                  "model=linear only; use data=csv for a polynomial"}, None
    if len(datamodule.table.targets) != 1:
        return {"why_no_optimum": "a streamed table (data=stream) is fitted exactly for "
                                  "one target; use data=csv for several"}, None
    if not isinstance(loss_fn, torch.nn.MSELoss):
        return {"skipped": f"loss is {type(loss_fn).__name__}; least squares is the optimum "
                           "of MSE only"}, None
    decay, _ = weight_decay(optimizer) if optimizer is not None else (0.0, None)
    if decay > 0:
        return {"why_no_optimum": "weight_decay > 0 (ridge) is not fitted exactly on a "
                                  "streamed table (data=stream); use data=csv"}, None
    folds = getattr(datamodule, "folds", None)
    fold_of = (functools.partial(row_split.fold_codes, seed=datamodule.seed, folds=folds)
               if folds else None)
    datamodule.sink = StreamedLeastSquares(datamodule.num_features, model.has_bias,
                                           datamodule.val_is_train, fold_of, folds or 0)
    return {"pending": "solved in the census pass that starts the fit"}, None


def solve(closed: dict[str, Any], model: Any, loss_fn: Any, datamodule: Any
          ) -> dict[str, Any] | None:
    """Fill the pending record ``closed`` (:func:`find_optimum`) from the census the data
    module has just taken, its factors merged across ranks; returns the cross-validation
    record with ``data.folds`` (as :func:`reglab.training.exact.cross_validate` makes it),
    else None."""
    sink, census = datamodule.sink, datamodule.census
    moments = census.merged()
    d = datamodule.num_features
    n = census.total(row_split.TRAIN)
    tss = float(moments.m2[d]) if model.has_bias else float(
        moments.m2[d] + n * moments.mean[d] ** 2)
    report, sol = sink.report(datamodule.feature_names, tss)
    summed = loss_fn.reduction == "sum"
    sc = datamodule.scaling
    y_std = float(sc.y_std) if sc.y_mean is not None else 1.0
    y_mean = float(sc.y_mean) if sc.y_mean is not None else 0.0

    def loss(sse: float, rows: int) -> float:
        value = sse / (y_std * y_std)
        return value if summed else value / rows

    train_loss = loss(float(report["ssr"] or 0.0), n)
    val = (train_loss if datamodule.val_is_train else
           loss(*sink.split_sse(row_split.VAL, sol["theta"])))
    coef = np.array([row["coef"] for row in report["coef"]], dtype=np.float64)
    beta = coef[1:] if model.has_bias else coef
    const = float(coef[0]) if model.has_bias else 0.0
    x_mean = np.array(sc.x_mean) if sc.x_mean is not None else np.zeros(d)
    x_std = np.array(sc.x_std) if sc.x_std is not None else np.ones(d)
    weight = beta * x_std / y_std
    bias = (const + float(beta @ x_mean) - y_mean) / y_std if model.has_bias else None
    record = {
        "objective": "least squares",
        "params": {"weight": [weight.tolist()], "bias": bias},
        "train_loss": train_loss, "val_loss": val, "test": None,
        "condition_number": report["condition_number"],
        "rank": report["rank"] - int(model.has_bias),  # feature columns, as in memory
        "report": report,
        "params_data_units": {row["name"]: row["coef"] for row in report["coef"]},
    }
    closed.clear()
    closed.update(record)
    return _cross_validate(sink, loss) if sink.folds else None


def _cross_validate(sink: StreamedLeastSquares, loss: Callable[[float, int], float]
                    ) -> dict[str, Any]:
    """Fold k solved on the other folds' merged factor and scored on its own, in the
    run's training units: K solves of a (p+1)-column R, no second pass."""
    sy2 = float(sink.scale[sink.d]) ** 2
    train_losses, val_losses = [], []
    for k in range(sink.folds):
        held = sink.parts[FOLD + k]
        if held.rows == 0:
            raise DataError(f"data.folds: fold {k + 1} of {sink.folds} has no rows; the "
                            f"table's {sink.train().rows} training rows are too few")
        rest = sink.train(without=k)
        sol = sink.solve(rest)
        train_losses.append(loss(sol["ssr"] * sy2, rest.rows))
        val_losses.append(loss(*sink.split_sse(held, sol["theta"])))
    from reglab.analysis.metrics import cv_record

    return cv_record(sink.folds, sink.train().rows, train_losses, val_losses)
