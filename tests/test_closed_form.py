"""The least-squares optimum: exact on an ill-conditioned design, equal to scikit-learn on
real data, and reached by L-BFGS; recorded beside every linear and polynomial run."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
import torch
from conftest import compose_config
from hydra.utils import instantiate

from reglab.analysis.least_squares import solve
from reglab.analysis.metrics import RegressionSums


def exact_least_squares(design: np.ndarray, y: np.ndarray) -> list[Fraction]:
    """Solve the normal equations in rational arithmetic: no rounding anywhere (entries
    may be Fractions already)."""
    a = [[v if isinstance(v, Fraction) else Fraction(float(v)) for v in row] for row in design]
    b = [Fraction(float(v)) for v in y]
    p = len(a[0])
    m = [[sum(r[i] * r[j] for r in a) for j in range(p)] + [sum(r[i] * t for r, t in
                                                           zip(a, b, strict=True))]
         for i in range(p)]
    for c in range(p):
        pivot = next(r for r in range(c, p) if m[r][c] != 0)
        m[c], m[pivot] = m[pivot], m[c]
        for r in range(p):
            if r != c and m[r][c] != 0:
                f = m[r][c] / m[c][c]
                m[r] = [u - f * v for u, v in zip(m[r], m[c], strict=True)]
    return [m[i][p] / m[i][i] for i in range(p)]


def ill_conditioned(n: int = 40, degree: int = 10) -> tuple[np.ndarray, np.ndarray]:
    x = np.linspace(-9.0, -3.0, n)
    design = np.stack([x ** k for k in range(1, degree + 1)], axis=1)
    y = np.sin(x) + 0.1 * np.random.default_rng(0).standard_normal(n)
    return design, y


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("chunk", [7, 1 << 16])  # several QR chunks, and one
def test_degree_10_design_matches_exact_rational_solution(bias: bool, chunk: int):
    design, y = ill_conditioned()
    full = np.hstack([design, np.ones((len(y), 1))]) if bias else design
    assert np.linalg.cond(full) > 1e13  # ~1e15 with the intercept column, 5e13 without
    exact = np.array([float(v) for v in exact_least_squares(full, y)])
    got = solve(design, y, bias=bias, chunk=chunk)
    coef = np.append(got.weight, got.bias) if bias else got.weight
    rel = np.abs(coef - exact) / np.abs(exact)
    assert rel.max() < 1e-12, rel  # refined in double-double: 12+ digits per coefficient
    assert got.rank == design.shape[1]


def test_uncentred_r2_without_intercept():
    pred, y = torch.tensor([[1.0], [2.0], [2.5]]), torch.tensor([[1.2], [1.9], [3.0]])
    sums = RegressionSums()
    sums.update(pred, y)
    rss = float(((pred - y) ** 2).sum())
    assert sums.compute(centered=False)["r2"] == pytest.approx(1 - rss / float((y ** 2).sum()))
    centred = 1 - rss / float(((y - y.mean()) ** 2).sum())
    assert sums.compute(centered=True)["r2"] == pytest.approx(centred)


def test_diabetes_closed_form_equals_scikit_learn(run_train, tmp_path):
    from sklearn.linear_model import LinearRegression
    from sklearn.metrics import r2_score

    metrics, _ = run_train("experiment=diabetes", "trainer.max_epochs=2", "logger=none",
                           "callbacks=none")
    assert metrics["rows"] == {"train": 310, "val": 44, "test": 88}
    # The same split in raw units: reglab's data module with standardization off.
    cfg = compose_config(["experiment=diabetes", "data.standardize=false",
                          "data.standardize_target=false"], tmp_path / "raw")
    dm = instantiate(cfg.data)
    dm.prepare()
    (x_tr, y_tr), (x_te, y_te) = dm.splits["train"], dm.splits["test"]
    sk = LinearRegression().fit(x_tr.double().numpy(), y_tr.double().numpy().ravel())
    sk_r2 = r2_score(y_te.double().numpy().ravel(), sk.predict(x_te.double().numpy()))
    closed = metrics["closed_form"]
    assert closed["test"]["r2"] == pytest.approx(sk_r2, abs=1e-6)
    assert closed["optimality_gap"]["absolute"] > 0


@pytest.mark.parametrize("experiment", ["d2l_lbfgs", "poly_ill"])
def test_lbfgs_reaches_the_closed_form_loss(run_train, experiment: str):
    metrics, _ = run_train(f"experiment={experiment}", "logger=none", "callbacks=none")
    closed = metrics["closed_form"]
    assert closed["optimality_gap"]["relative"] < 1e-6, closed["optimality_gap"]
    assert metrics["train_loss"] >= closed["train_loss"] * (1 - 1e-12)


def test_sgd_gap_is_recorded_and_logged(run_train):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    metrics, run_dir = run_train("experiment=noisy_line", "trainer.max_epochs=5")
    closed = metrics["closed_form"]
    assert set(closed) >= {"params", "train_loss", "val_loss", "test", "optimality_gap"}
    gap = closed["optimality_gap"]
    assert gap["absolute"] == pytest.approx(metrics["train_loss"] - closed["train_loss"])
    assert gap["relative"] == pytest.approx(gap["absolute"] / closed["train_loss"])
    acc = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0})
    acc.Reload()
    ref = acc.Scalars("train/loss_closed_form")
    assert len(ref) == 2 and ref[0].value == pytest.approx(closed["train_loss"], rel=1e-6)
    # CUSTOM SCALARS: one chart drawing train/loss_epoch of the run and of a run of its
    # own holding the optimum, so TensorBoard gives the two lines two colours and names.
    from tensorboard.plugins.custom_scalar import layout_pb2

    raw = acc.Tensors("custom_scalars__config__")[-1].tensor_proto.string_val[0]
    (chart,) = layout_pb2.Layout.FromString(raw).category[0].chart
    assert list(chart.multiline.tag) == ["^train/loss_epoch$"]
    beside = EventAccumulator(str(run_dir / "tensorboard" / "least_squares_optimum"))
    beside.Reload()
    line = beside.Scalars("train/loss_epoch")
    assert [e.step for e in line] == [0, metrics["steps"] - 1]
    assert all(e.value == pytest.approx(closed["train_loss"], rel=1e-6) for e in line)
    assert acc.Scalars("train/loss_epoch")[-1].step == metrics["steps"] - 1  # same end


def extreme_columns(n: int = 80) -> tuple[np.ndarray, np.ndarray]:
    """Columns near 1e-300, 1e-150, 1e150 and 1e300: any squared raw value under- or
    overflows float64, while every coefficient and standard error fits in it."""
    rng = np.random.default_rng(3)
    scales = np.array([1e-300, 1e-150, 1e150, 1e300])
    design = rng.uniform(1, 2, (n, 4)) * scales
    y = design @ (np.array([3.0, -1.0, 0.5, 2.0]) / scales) + rng.normal(0, 0.01, n)
    return design, y


def exact_inverse_diagonal(design: np.ndarray) -> list[Fraction]:
    """diag((XᵀX)⁻¹) in rational arithmetic (Gauss–Jordan on [XᵀX | I]); entries may be
    Fractions already."""
    a = [[v if isinstance(v, Fraction) else Fraction(float(v)) for v in row] for row in design]
    p = len(a[0])
    m = [[sum(r[i] * r[j] for r in a) for j in range(p)] + [Fraction(int(i == j))
                                                           for j in range(p)]
         for i in range(p)]
    for c in range(p):
        pivot = next(r for r in range(c, p) if m[r][c] != 0)
        m[c], m[pivot] = m[pivot], m[c]
        m[c] = [v / m[c][c] for v in m[c]]
        for r in range(p):
            if r != c and m[r][c] != 0:
                f = m[r][c]
                m[r] = [u - f * v for u, v in zip(m[r], m[c], strict=True)]
    return [m[i][p + i] for i in range(p)]


@pytest.mark.parametrize("chunk", [7, 1 << 16])
def test_columns_from_1e_300_to_1e300_match_exact_rationals(chunk: int):
    """No column is taken for a constant because its squares underflow, nor lost
    because they overflow: coefficients and standard errors as exact arithmetic has
    them, the rank full."""
    from reglab.analysis.ols_report import ols_report

    design, y = extreme_columns()
    full = np.hstack([design, np.ones((len(y), 1))])
    exact = exact_least_squares(full, y)
    got = solve(design, y, chunk=chunk)
    assert got.rank == 4
    coef = np.append(got.weight, got.bias)
    for mine, true in zip(coef, exact, strict=True):
        assert abs(Fraction(float(mine)) / true - 1) < Fraction(1, 10**9), (mine, float(true))

    report = ols_report(design, y, names=["a", "b", "c", "d"], chunk=chunk)
    assert report["rank"] == 5
    resid = [Fraction(float(t)) - sum(Fraction(float(v)) * w for v, w in zip(row, exact,
                                                                         strict=True))
             for row, t in zip(full, y, strict=True)]
    sigma2 = sum(r * r for r in resid) / (len(y) - 5)
    inv = exact_inverse_diagonal(full)
    order = ["a", "b", "c", "d", "const"]
    rows = {r["name"]: r for r in report["coef"]}
    for name, diag in zip(order, inv, strict=True):
        se = Fraction(rows[name]["std_err"])
        assert abs(se * se / (sigma2 * diag) - 1) < Fraction(1, 10**8), name


def test_ridge_on_columns_from_1e_300_to_1e300_matches_exact_rationals():
    """The penalised problem too: ridge 0.25 is the augmented design [X; 0.5·I]."""
    design, y = extreme_columns()
    full = np.hstack([np.ones((len(y), 1)), design])
    augmented = np.vstack([full, 0.5 * np.eye(5)])
    exact = exact_least_squares(augmented, np.concatenate([y, np.zeros(5)]))
    got = solve(design, y, ridge=0.25)
    coef = np.concatenate([[got.bias], got.weight])
    for mine, true in zip(coef, exact, strict=True):
        if true == 0:
            assert mine == 0
        else:
            assert abs(Fraction(float(mine)) / true - 1) < Fraction(1, 10**9), \
                (mine, float(true))


def test_standardizing_a_column_near_1e_300_keeps_its_spread():
    from reglab.data.scaling import Scaling

    design, y = extreme_columns()
    scaling = Scaling.fit(torch.from_numpy(design), torch.from_numpy(y), True, True)
    for j, std in enumerate(scaling.x_std):
        col = [Fraction(float(v)) for v in design[:, j]]
        mean = sum(col) / len(col)
        var = sum((v - mean) ** 2 for v in col) / len(col)
        assert abs(Fraction(std) ** 2 / var - 1) < Fraction(1, 10**12), j


@pytest.mark.parametrize("chunk", [7, 1 << 16])
def test_a_column_whose_mean_dwarfs_its_spread_is_refined_to_the_exact_solution(chunk: int):
    """x = 1.7e12 + N(0, 1) (timestamps in ms): centring after summing cancelled the
    gradient's digits and the refinement stopped at 6 digits; centred exactly first, it
    converges to the rational solution."""
    rng = np.random.default_rng(2)
    x = 1.7e12 + rng.normal(size=(30, 1))
    y = 3 * x[:, 0] + rng.normal(size=30)
    exact = exact_least_squares(np.hstack([np.ones((30, 1)), x]), y)
    got = solve(x, y, chunk=chunk)
    for mine, true in zip([got.bias, *got.weight], exact, strict=True):
        assert abs(Fraction(float(mine)) / true - 1) < Fraction(1, 10**13), (mine, float(true))


def test_a_design_with_nothing_to_solve_gives_zeros_without_a_warning():
    """One row with an intercept, or only constant columns: no singular value is kept, so
    the refinement has nothing to correct (it multiplied 0 by inf: a RuntimeWarning, which
    this suite turns into an error)."""
    got = solve(np.array([[1.0, 2.0, 3.0]]), np.array([4.0]))
    assert got.rank == 0 and got.weight.tolist() == [0.0, 0.0, 0.0] and got.bias == 4.0
    flat = solve(np.ones((5, 2)), np.arange(5.0))
    assert flat.rank == 0 and flat.bias == 2.0
