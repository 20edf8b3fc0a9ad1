"""NIST's eleven StRD linear least-squares sets: the solver and the report against exact
rational arithmetic on the same float64 data, to the last digits float64 holds.

The truth is the rational solution of the data as float64 holds it (NIST's decimals
rounded once), a polynomial's powers taken exactly; that truth agrees with NIST's
certified values to 13+ digits (checked first, which also guards the transcription in
``nist_strd.py``). The floors: ≥ 13 correct digits on every coefficient and ≥ 11 on every
standard error, the residual SD and R², in one chunk and in chunks of 3 rows. Where the
exact value is 0 (Wampler1's residuals) the figure must be 0 to 1e-10 of the data's
scale instead.
"""

from __future__ import annotations

import math
from fractions import Fraction
from functools import cache
from typing import Any

import numpy as np
import pytest
import torch
from nist_strd import SETS
from test_closed_form import exact_inverse_diagonal, exact_least_squares

from reglab.analysis.least_squares import Powers
from reglab.analysis.ols_report import ols_report, report_for


def _design(s: dict[str, Any]) -> list[list[Fraction]]:
    rows = []
    for r in s["x"]:
        if s["degree"] > 1:
            v = Fraction(float(r))
            row = [v ** k for k in range(1, s["degree"] + 1)]
        else:
            row = [Fraction(float(v)) for v in (r if isinstance(r, list) else [r])]
        rows.append(([Fraction(1)] if s["intercept"] else []) + row)
    return rows


@cache
def exact(name: str) -> dict[str, Any]:
    """β, Var(β) = σ²·diag((XᵀX)⁻¹), σ² and R², in rational arithmetic."""
    s = SETS[name]
    a = _design(s)
    b = [Fraction(float(v)) for v in s["y"]]
    n, p = len(a), len(a[0])
    design = np.array(a, dtype=object)
    beta = exact_least_squares(design, np.array(b, dtype=object))
    resid = [t - sum(v * w for v, w in zip(row, beta, strict=True))
             for row, t in zip(a, b, strict=True)]
    s2 = sum(r * r for r in resid) / (n - p)
    mean = sum(b) / n
    tss = sum((t - mean) ** 2 for t in b) if s["intercept"] else sum(t * t for t in b)
    return {"beta": beta, "var": [s2 * v for v in exact_inverse_diagonal(design)], "s2": s2,
            "r2": 1 - sum(r * r for r in resid) / tss}


def digits(est: float, true: Fraction) -> float:
    """Correct significant digits (NIST's LRE), capped at 17."""
    err = abs(Fraction(est) - true)
    return 17.0 if err == 0 else min(17.0, -math.log10(float(err / abs(true))))


def root_digits(est: float, square: Fraction) -> float:
    """Digits of a square root (a standard error, σ) against the exact square."""
    return 17.0 if Fraction(est) ** 2 == square else \
        min(17.0, -math.log10(float(abs(Fraction(est) ** 2 / square - 1) / 2)))


def _data(s: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.tensor(s["x"], dtype=torch.float64).reshape(len(s["y"]), -1)
    return x, torch.tensor(s["y"], dtype=torch.float64)


def _check(name: str, report: dict[str, Any]) -> dict[str, float]:
    s, truth = SETS[name], exact(name)
    rows = report["coef"]
    assert len(rows) == len(truth["beta"])
    scale_y = float(np.std(s["y"])) or 1.0
    out = {"coef": min(digits(r["coef"], b) for r, b in zip(rows, truth["beta"],
                                                            strict=True))}
    if truth["s2"] == 0:  # Wampler1: an exact fit; every spread is 0 to the data's scale
        assert report["sigma"] <= 1e-10 * scale_y, report["sigma"]
        assert all(r["std_err"] <= 1e-10 * abs(r["coef"]) for r in rows)
        out["se"] = out["sigma"] = 17.0
    else:
        out["se"] = min(root_digits(r["std_err"], v) for r, v in zip(rows, truth["var"],
                                                                    strict=True))
        out["sigma"] = root_digits(report["sigma"], truth["s2"])
    out["r2"] = digits(report["r2"], truth["r2"])
    return out


@pytest.mark.parametrize("name", list(SETS))
def test_the_exact_truth_is_nists_certified_values(name: str):
    s, truth = SETS[name], exact(name)
    worst = min(digits(c, b) for c, b in zip(s["beta"], truth["beta"], strict=True))
    assert worst >= 13, (name, worst)
    for c, v in zip(s["sd"], truth["var"], strict=True):
        if c:  # NIST certifies 0 for Wampler1 and 2 (float64's Wampler2 is ~1e-17 off)
            assert root_digits(c, v) >= 12, name


@pytest.mark.parametrize("chunk", [3, 1 << 14])
@pytest.mark.parametrize("name", list(SETS))
def test_the_report_reaches_float64s_limit_on_every_nist_set(name: str, chunk: int):
    """The solver and ``ols_report`` on the raw design (a polynomial's columns as
    :class:`Powers`, exact in the refinement)."""
    s = SETS[name]
    x, y = _data(s)
    d = s["degree"]
    features = Powers(d) if d > 1 else None
    names = [f"x{k}" for k in range(1, x.shape[1] * d + 1)]
    got = _check(name, ols_report(x, y, bias=s["intercept"], features=features,
                                  names=names, chunk=chunk))
    assert got["coef"] >= 13, (name, got)
    assert min(got["se"], got["sigma"], got["r2"]) >= 11, (name, got)


@pytest.mark.parametrize("name", ["Filip", "Wampler5", "Longley"])
def test_reglab_models_report_matches_too(name: str):
    """``report_for``, what a run records (linear or polynomial kind, no scaling)."""
    s = SETS[name]
    x, y = _data(s)
    kind = "polynomial" if s["degree"] > 1 else "linear"
    got = _check(name, report_for(x, y, None, bias=True, kind=kind, degree=s["degree"]))
    assert got["coef"] >= 13 and min(got["se"], got["sigma"], got["r2"]) >= 11, got


def test_standardized_filip_keeps_its_digits_through_the_change_of_units():
    """Fitted on standardized x (powers of (x − m)/s, exact in the refinement), then
    mapped to x, x², … in rational arithmetic: the map cancels terms 1e4 times the
    result, yet the coefficients keep 14 digits."""
    from reglab.data.scaling import Scaling

    s = SETS["Filip"]
    x, y = _data(s)
    scaling = Scaling.fit(x, y.reshape(-1, 1), True, False)
    got = _check("Filip", report_for(x, y, scaling, bias=True, kind="polynomial", degree=10))
    assert got["coef"] >= 14 and min(got["se"], got["sigma"], got["r2"]) >= 11, got


@pytest.mark.slow
def test_filip_through_reglab_train_optimizer_exact(run_train, tmp_path):
    """The command a user runs on NIST's hardest set: the model holds the optimum (float64)
    and metrics.json the report, both to 13+ digits."""
    s = SETS["Filip"]
    path = tmp_path / "filip.csv"
    path.write_text("x,y\n" + "".join(f"{a!r},{b!r}\n" for a, b in zip(s["x"], s["y"],
                                                                        strict=True)))
    metrics, _ = run_train("data=csv", f"data.source.path={path}", "data.source.target=y",
                           "data.val_fraction=0", "data.test_fraction=0",
                           "data.standardize=false", "model=polynomial", "model.degree=10",
                           "optimizer=exact", "logger=none", "callbacks=none")
    report = metrics["closed_form"]["report"]
    got = _check("Filip", report)
    assert got["coef"] >= 13 and min(got["se"], got["sigma"], got["r2"]) >= 11, got
    terms = metrics["closed_form"]["params_data_units"]
    truth = exact("Filip")["beta"]
    values = [terms["const"], *(terms["x" if k == 1 else f"x^{k}"] for k in range(1, 11))]
    assert min(digits(v, t) for v, t in zip(values, truth, strict=True)) >= 13
