"""The OLS report equals statsmodels' ``OLS(...).fit()`` in every number, in data units,
whether reglab trains on raw or standardized data; ridge equals its normal equations."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pytest
import torch
from scipy import stats

from reglab.analysis.least_squares import solve
from reglab.analysis.ols_report import ols_report, report_for, report_for_model
from reglab.data.scaling import Scaling
from reglab.models.regressors import LinearRegression, PolynomialRegression

sm = pytest.importorskip("statsmodels.api")

RTOL = 1e-8


def close(got: Any, want: float, atol: float = 0.0) -> bool:
    return got is not None and math.isclose(got, float(want), rel_tol=RTOL, abs_tol=atol)


def check_summary(rep: dict[str, Any], res: Any) -> None:
    """Every model-level number against statsmodels' results."""
    assert rep["n"] == res.nobs
    assert rep["df_model"] == res.df_model and rep["df_resid"] == res.df_resid
    assert rep["rank"] == res.df_model + res.k_constant
    assert rep["k_constant"] == res.k_constant
    pairs = {"sigma": math.sqrt(res.scale), "ssr": res.ssr, "r2": res.rsquared,
             "adjusted_r2": res.rsquared_adj, "f_statistic": res.fvalue,
             "f_p_value": res.f_pvalue, "log_likelihood": res.llf, "aic": res.aic,
             "bic": res.bic, "condition_number": res.condition_number}
    for key, want in pairs.items():
        assert close(rep[key], want, atol=1e-300), (key, rep[key], want)
    json.dumps(rep, allow_nan=False)


def check_rows(rows: list[dict[str, Any]], coef: np.ndarray, cov: np.ndarray,
               df: float) -> None:
    """Each coefficient row against values (and their covariance) from statsmodels."""
    se = np.sqrt(np.diag(cov))
    q = stats.t.ppf(0.975, df)
    assert len(rows) == len(coef)
    for row, a, e in zip(rows, coef, se, strict=True):
        t = a / e
        p = 2 * stats.t.sf(abs(t), df)
        assert close(row["coef"], a, atol=RTOL * e), (row, a)
        assert close(row["std_err"], e), (row, e)
        assert close(row["t"], t, atol=RTOL), (row, t)
        assert close(row["p_value"], p, atol=1e-300), (row, p)
        assert close(row["ci_low"], a - q * e, atol=RTOL * e)
        assert close(row["ci_high"], a + q * e, atol=RTOL * e)


def check_ols(rep: dict[str, Any], res: Any) -> None:
    """The whole report against statsmodels on the same design."""
    check_summary(rep, res)
    check_rows(rep["coef"], res.params, res.cov_params(), res.df_resid)
    ci = res.conf_int()
    for row, lo, hi, t, p in zip(rep["coef"], ci[:, 0], ci[:, 1], res.tvalues, res.pvalues,
                                 strict=True):
        assert close(row["ci_low"], lo, atol=RTOL * row["std_err"])
        assert close(row["ci_high"], hi, atol=RTOL * row["std_err"])
        assert close(row["t"], t, atol=RTOL) and close(row["p_value"], p, atol=1e-300)


def with_const(design: np.ndarray) -> np.ndarray:
    return np.hstack([np.ones((design.shape[0], 1)), design])


@pytest.fixture(scope="module")
def diabetes() -> tuple[np.ndarray, np.ndarray, list[str]]:
    from sklearn.datasets import load_diabetes

    data = load_diabetes(scaled=False)
    return data.data.astype(np.float64), data.target.astype(np.float64), data.feature_names


@pytest.fixture(scope="module")
def synthetic() -> tuple[np.ndarray, np.ndarray]:
    """100,000 rows, 10 features of mixed location and scale, an intercept and noise."""
    rng = np.random.default_rng(42)
    n, k = 100_000, 10
    x = rng.standard_normal((n, k)) * np.geomspace(0.1, 30, k) + np.linspace(-5, 40, k)
    x[:, 3] += 0.5 * x[:, 2]  # some correlation between columns
    beta = rng.uniform(-2, 2, k)
    beta[5] = 0.0  # one coefficient with nothing to find: t near 0
    y = 3.0 + x @ beta + 5.0 * rng.standard_normal(n)
    return x, y


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("chunk", [64, 1 << 14])
def test_diabetes_raw_units_equal_statsmodels(diabetes, bias: bool, chunk: int):
    x, y, names = diabetes
    res = sm.OLS(y, with_const(x) if bias else x).fit()
    rep = ols_report(torch.from_numpy(x), torch.from_numpy(y)[:, None], bias=bias,
                     names=names, chunk=chunk)
    check_ols(rep, res)
    assert [r["name"] for r in rep["coef"]] == (["const"] if bias else []) + names
    # No scaling: the report's units are the training units.
    weight = rep["params"]["weight"][0]
    np.testing.assert_allclose(weight, res.params[int(bias):], rtol=1e-9)
    assert not rep["implied_const"]


@pytest.mark.parametrize("bias", [True, False])
def test_100k_rows_equal_statsmodels(synthetic, bias: bool):
    x, y = synthetic
    res = sm.OLS(y, with_const(x) if bias else x).fit()
    check_ols(ols_report(x, y, bias=bias), res)


def standardized_checks(x: np.ndarray, y: np.ndarray, bias: bool, target: bool,
                        rep: dict[str, Any], scaling: Scaling, psi: Any, jac: Any) -> None:
    """Data-unit report of a standardized fit against statsmodels.

    With an intercept: statsmodels on the raw design. Without: statsmodels on the centred
    design ψ(x − m) without a constant (target y − y_mean when y is scaled); its
    coefficients, mapped to ψ(x) terms by ``jac`` (an implied const row first), must give
    the report's rows, covariance included.
    """
    if bias:
        check_ols(rep, sm.OLS(y, with_const(psi(x))).fit())
        return
    m = np.asarray(scaling.x_mean)
    mu = scaling.y_mean if target else 0.0
    res = sm.OLS(y - mu, psi(x - m)).fit()
    check_summary(rep, res)
    j = jac(m)
    coef = j @ res.params
    coef[0] += mu
    check_rows(rep["coef"], coef, j @ res.cov_params() @ j.T, res.df_resid)
    assert rep["implied_const"] and rep["coef"][0]["name"] == "const"


@pytest.mark.parametrize(("data", "bias", "target"), [
    ("diabetes", True, True), ("diabetes", True, False), ("diabetes", False, True),
    ("diabetes", False, False), ("synthetic", False, False)])
def test_standardized_linear_in_data_units(request, data: str, bias: bool, target: bool):
    x, y = request.getfixturevalue(data)[:2]
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)[:, None]
    scaling = Scaling.fit(xt, yt, features=True, target=target)
    rep = report_for(xt, yt, scaling, bias=bias, kind="linear")

    def jac(m: np.ndarray) -> np.ndarray:  # slopes as they are; const = −m·slopes
        return np.vstack([-m[None, :], np.eye(len(m))])

    standardized_checks(x, y, bias, target, rep, scaling, lambda v: v, jac)
    if data != "diabetes":
        return
    # θ in training units is the least-squares fit of the training design itself.
    zx, zy = scaling.x(xt).numpy(), scaling.y(yt).numpy().ravel()
    res = sm.OLS(zy, with_const(zx) if bias else zx).fit()
    np.testing.assert_allclose(rep["params"]["weight"][0], res.params[int(bias):],
                               rtol=1e-8, atol=1e-12)
    if bias:
        assert rep["params"]["bias"] == pytest.approx(res.params[0], abs=1e-12)
    else:
        assert rep["params"]["bias"] is None


def poly(v: np.ndarray, degree: int) -> np.ndarray:
    return np.hstack([v.reshape(-1, 1) ** k for k in range(1, degree + 1)])


@pytest.fixture(scope="module")
def curve() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(7)
    x = rng.uniform(0.5, 3.0, 2000)[:, None]
    y = 2.0 - 1.5 * x[:, 0] + 0.8 * x[:, 0] ** 3 - 0.1 * x[:, 0] ** 4 \
        + 0.3 * rng.standard_normal(2000)
    return x, y


@pytest.mark.parametrize("degree", [3, 5])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("standardize", [True, False])
def test_polynomial_in_data_units(curve, degree: int, bias: bool, standardize: bool):
    x, y = curve
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    scaling = Scaling.fit(xt, yt, features=True, target=True) if standardize else None
    rep = report_for(xt, yt, scaling, bias=bias, kind="polynomial", degree=degree,
                     names=["t"])
    terms = ["t"] + [f"t^{j}" for j in range(2, degree + 1)]
    assert [r["name"] for r in rep["coef"]] == (["const"] if bias or standardize else []) \
        + terms
    if not standardize:
        check_ols(rep, sm.OLS(y, with_const(poly(x, degree)) if bias
                              else poly(x, degree)).fit())
        return

    def jac(m: np.ndarray) -> np.ndarray:
        """(x − m)^k = Σ_j C(k, j) x^j (−m)^(k−j): rows const, x, …; columns k = 1…d."""
        out = np.zeros((degree + 1, degree))
        for k in range(1, degree + 1):
            for j in range(k + 1):
                out[j, k - 1] = math.comb(k, j) * (-m[0]) ** (k - j)
        return out

    assert scaling is not None
    standardized_checks(x, y, bias, True, rep, scaling, lambda v: poly(v, degree), jac)


def test_report_for_model_reads_kind_degree_and_bias(curve):
    x, y = curve
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    scaling = Scaling.fit(xt, yt, features=True, target=False)
    model = PolynomialRegression(degree=3, bias=False)
    got, solution = report_for_model(model, xt, yt, scaling, names=["t"])
    assert solution.bias is None and len(solution.weight) == 3
    assert got == report_for(xt, yt, scaling, bias=False, kind="polynomial", degree=3,
                             names=["t"])
    assert report_for_model(LinearRegression(1), xt, yt)[0]["coef"][0]["name"] == "const"


def test_undefined_numbers_are_none_not_nan():
    x = np.array([[1.0], [2.0]])
    rep = ols_report(x, np.array([1.0, 3.0]), bias=True)  # exact fit, df_resid = 0
    assert rep["df_resid"] == 0 and rep["sigma"] is None
    assert rep["coef"][1]["coef"] == pytest.approx(2.0)
    assert rep["coef"][1]["std_err"] is None and rep["coef"][1]["t"] is None
    assert rep["f_statistic"] is None and rep["adjusted_r2"] is None
    json.dumps(rep, allow_nan=False)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("chunk", [37, 1 << 14])
def test_ridge_equals_normal_equations(bias: bool, chunk: int):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((500, 5)) * [1.0, 2.0, 0.5, 3.0, 1.5] + [0.0, 1.0, -2.0, 0.5, 4.0]
    y = 1.5 + x @ [1.0, -0.5, 2.0, 0.0, 0.3] + 0.2 * rng.standard_normal(500)
    design = with_const(x) if bias else x
    for ridge in (0.1, 10.0, 1e3):
        want = np.linalg.solve(design.T @ design + ridge * np.eye(design.shape[1]),
                               design.T @ y)
        got = solve(x, y, bias=bias, chunk=chunk, ridge=ridge)
        coef = np.append(got.bias, got.weight) if bias else got.weight
        np.testing.assert_allclose(coef, want, rtol=1e-10, atol=0)
        assert got.rank == 5
    with pytest.raises(ValueError):
        got.covariance(1.0)
    with pytest.raises(ValueError):
        solve(x, y, ridge=-1.0)


def test_covariance_is_sigma2_times_pinv(diabetes):
    x, y, _ = diabetes
    sol = solve(x, y, bias=True)
    design = with_const(x)
    np.testing.assert_allclose(sol.covariance(2.0), 2.0 * np.linalg.inv(design.T @ design),
                               rtol=1e-8)


def test_the_console_table_prints_t_for_its_size():
    """Three decimals as statsmodels prints t, powers of ten for an exact fit's 1e15."""
    from reglab.reporting.summary import report_table

    row = {"coef": 1.0, "std_err": 1e-15, "p_value": 0.0, "ci_low": 1.0, "ci_high": 1.0}
    report = {"coef": [{**row, "name": "const", "t": 1.147e15},
                       {**row, "name": "x", "t": 143.3261}],
              "n": 11, "r2": 1.0, "adjusted_r2": 1.0, "f_statistic": None,
              "f_p_value": None, "sigma": 0.0, "condition_number": 11.3, "rank": 2}
    lines = report_table(report)
    assert lines[1].split()[3] == "1.147e+15" and lines[2].split()[3] == "143.326"


def test_a_table_wider_than_long_is_solved_through_its_rows():
    """20,000 columns, 60 rows: factored as 60×20,000 (O(n²k)), never as a k×k matrix
    (the 10,000-column CSV ran for more than ten minutes). The optimum interpolates: loss
    exactly 0, rank n − 1 after centring, no standard errors, minimum norm."""
    import time

    from reglab.analysis.least_squares import r_factor

    rng = np.random.default_rng(5)
    n, k = 60, 20_000
    x = rng.normal(size=(n, k))
    y = x[:, :4].sum(1) + 0.1 * rng.normal(size=n)
    start = time.perf_counter()
    report = report_for(torch.from_numpy(x), torch.from_numpy(y), Scaling(), True)
    assert time.perf_counter() - start < 20
    assert report["rank"] == n and report["ssr"] == 0.0 and report["df_resid"] == 0
    assert report["sigma"] is None and report["condition_number"] is None
    assert all(r["std_err"] is None for r in report["coef"])
    coef = np.array([r["coef"] for r in report["coef"]])
    np.testing.assert_allclose(coef[0] + x @ coef[1:], y, atol=1e-9)
    # The minimum-norm interpolant of the centred, unit-norm columns, as lstsq finds it.
    scale = np.linalg.norm(x - x.mean(0), axis=0)
    z = (x - x.mean(0)) / scale
    v = np.linalg.lstsq(z, y - y.mean(), rcond=None)[0]
    np.testing.assert_allclose(coef[1:], v / scale, rtol=1e-7, atol=1e-12)
    assert r_factor(torch.from_numpy(x), lambda t: t.numpy()).shape == (n, k)
    json.dumps(report, allow_nan=False)


def test_a_wide_design_keeps_its_standard_errors_but_not_a_huge_covariance():
    """Past COV_TERMS terms the k×k covariance is left out of the record (10,000 columns
    made 10⁸ numbers of JSON: the run never ended); its diagonal, the standard errors,
    stays, equal to the narrow computation's."""
    from reglab.analysis.ols_report import COV_TERMS

    rng = np.random.default_rng(3)
    x = torch.from_numpy(rng.normal(size=(600, COV_TERMS + 5)))
    y = torch.from_numpy(x.numpy()[:, :3].sum(1) + rng.normal(size=600))
    wide = ols_report(x, y)
    assert wide["cov"] is None and wide["cov_omitted"].startswith(f"{COV_TERMS + 6:,} terms")
    design = np.hstack([np.ones((600, 1)), x.numpy()])
    resid = y.numpy() - design @ np.linalg.lstsq(design, y.numpy(), rcond=None)[0]
    sigma2 = resid @ resid / (600 - design.shape[1])
    se = np.sqrt(sigma2 * np.diag(np.linalg.inv(design.T @ design)))
    np.testing.assert_allclose([r["std_err"] for r in wide["coef"]], se, rtol=1e-8)
    narrow = ols_report(x[:, :3], y)
    assert len(narrow["cov"]) == 4 and "cov_omitted" not in narrow
    json.dumps(wide, allow_nan=False)


def test_a_standardized_report_keeps_columns_near_1e300_and_below_1e_100():
    """The change of units in double-double scales by powers of two first (a mean near
    1e300 overflowed Dekker's split: the constant came out null); a polynomial's terms
    past float64's range are null, not an exception before the fit."""
    rng = np.random.default_rng(0)
    x = 1e300 * (3 + rng.normal(size=(40, 2)))
    y = x @ np.array([1e-300, 2e-300]) + rng.normal(size=40)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    scaled = report_for(xt, yt, Scaling.fit(xt, yt.reshape(-1, 1), True, True))
    raw = ols_report(xt, yt)
    assert scaled["coef"][0]["coef"] == pytest.approx(raw["coef"][0]["coef"], rel=1e-12)
    tiny = torch.from_numpy((rng.normal(size=(40, 1)) + 2) * 1e-100)
    yt2 = torch.from_numpy(rng.normal(size=40))
    with np.errstate(all="ignore"):
        poly = report_for(tiny, yt2, Scaling.fit(tiny, yt2.reshape(-1, 1), True, True),
                          kind="polynomial", degree=4)
    coefs = [row["coef"] for row in poly["coef"]]
    assert coefs[-1] is None and coefs[0] is not None  # x⁴'s coefficient passes 1e308
    json.dumps(poly, allow_nan=False)


def test_a_target_near_1e200_scaled_to_train_keeps_its_report():
    """Standardized targets near 1e200: R², F and σ come from training units (the square
    of y's scale, 1e400, is past float64's range: an OverflowError stopped the run). Only
    SSR itself is too large to hold, and says so as null."""
    rng = np.random.default_rng(4)
    x = torch.from_numpy(rng.normal(size=(50, 2)))
    y = torch.from_numpy((x.numpy() @ np.array([2.0, -1.0]) + rng.normal(size=50)) * 1e200)
    scaling = Scaling.fit(x, y.reshape(-1, 1), False, True)
    got = report_for(x, y, scaling)
    small = report_for(x, y / 1e200, Scaling.fit(x, (y / 1e200).reshape(-1, 1), False, True))
    assert got["ssr"] is None
    assert got["r2"] == pytest.approx(small["r2"], rel=1e-12)
    assert got["f_statistic"] == pytest.approx(small["f_statistic"], rel=1e-12)
    assert got["sigma"] == pytest.approx(small["sigma"] * 1e200, rel=1e-12)
    json.dumps(got, allow_nan=False)
