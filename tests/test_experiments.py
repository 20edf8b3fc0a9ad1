"""What the built-in experiments reach, beyond the figures their tutorials show.

Each tutorial in docs/experiments/ runs its experiment and compares every number it shows
with what reglab prints (tests/test_docs.py); these add what a page cannot show."""

from __future__ import annotations

import torch

import reglab
from reglab.data.synthetic import uniform_line


def test_origin_predicts_eight_at_four(run_train):
    m, run_dir = run_train("experiment=origin")
    assert m["params"]["bias"] is None
    assert abs(m["params"]["weight"][0][0] - 2) < 0.001
    model = reglab.load_model(run_dir / "model.pt")
    with torch.no_grad():
        assert abs(float(model(torch.tensor([[4.0]])).detach()) - 8.0) < 0.01
    # The optimum is 0 to rounding here: the summary gives the gap, not a ratio to 0.
    from reglab.reporting.summary import summary_lines

    m["closed_form"]["optimality_gap"] = {"absolute": 1.99e-13, "relative": 4.8e16}
    gap = [line for line in summary_lines(m, run_dir) if "optimum" in line]
    assert len(gap) == 1 and gap[0].endswith("this fit is 1.99e-13 above it"), gap


def test_noisy_line_near_least_squares(run_train):
    m, _ = run_train("experiment=noisy_line")
    data = uniform_line(seed=m["hparams"]["seed"])
    design = torch.cat([data.x.double(), torch.ones(len(data), 1, dtype=torch.float64)], 1)
    coef = torch.linalg.lstsq(design, data.y.double()).solution
    ls_mse = float(((design @ coef - data.y.double()) ** 2).mean())
    assert m["train_loss"] <= 1.05 * ls_mse
    assert abs(m["params"]["weight"][0][0] - 2) < 0.1
    assert abs(m["params"]["bias"] - 6) < 0.2


def test_d2l(run_train):
    m, _ = run_train("experiment=d2l")
    errors = [*m["param_error"]["weight"][0], m["param_error"]["bias"]]
    assert len(errors) == 3 and all(abs(e) < 0.01 for e in errors)
    assert m["rows"] == {"train": 800, "val": 800, "test": 200}
    assert m["test"]["r2"] > 0.999


def test_quadratic_mlp(run_train):
    m, _ = run_train("experiment=quadratic_mlp")
    assert m["train_loss"] < 0.02
    assert m["params"] is None and m["hparams"]["model"] == "mlp"
