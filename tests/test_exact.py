"""optimizer=exact: the least-squares (or ridge) optimum set as the weights, a complete run
dir, k-fold cross-validation, and the combinations it refuses."""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import compose_config, run_cli, script
from hydra.utils import instantiate
from test_closed_form import exact_least_squares

from reglab import errors
from reglab.artifacts import load_model
from reglab.config import checks


def _table(path: Path, n: int = 200, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A well-conditioned table: three features on different scales, y linear + noise."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 3)) * [1.0, 10.0, 0.1] + [0.0, 5.0, -2.0]
    y = x @ [1.5, -0.2, 7.0] + 3.0 + 0.3 * rng.standard_normal(n)
    lines = ["a,b,c,y", *(",".join(repr(float(v)) for v in (*row, t))
                          for row, t in zip(x, y, strict=True))]
    path.write_text("\n".join(lines) + "\n")
    return x, y


def exact_powers_least_squares(x: np.ndarray, y: np.ndarray, degree: int) -> list[Fraction]:
    """Coefficients (const, x, …, x^degree) in rational arithmetic, powers exact."""
    xs = [Fraction(float(v)) for v in x]
    design = [[v ** k for k in range(degree + 1)] for v in xs]
    return exact_least_squares(np.array(design, dtype=object), y)


def _csv_args(path: Path) -> list[str]:
    return ["data=csv", f"data.source.path={path}", "data.source.target=y",
            "optimizer=exact", "data.val_fraction=0", "data.test_fraction=0"]


def test_exact_fit_equals_lstsq_and_statsmodels(run_train, tmp_path):
    import statsmodels.api as sm

    x, y = _table(tmp_path / "t.csv")
    threads = torch.get_num_threads()
    metrics, run_dir = run_train(*_csv_args(tmp_path / "t.csv"), "trainer.precision=64-true")
    assert torch.get_num_threads() == threads  # the solve's single thread is given back
    assert metrics["status"] == "completed" and metrics["method"] == "exact"
    assert metrics["epochs"] == 0 and metrics["steps"] == 0
    design = np.hstack([np.ones((len(y), 1)), x])
    reference = np.linalg.lstsq(design, y, rcond=None)[0]
    ols = sm.OLS(y, design).fit()
    # The trained model itself (standardized inputs, weights mapped to data units) ...
    learned = metrics["params_data_units"]
    got = np.array([learned["bias"], *learned["weight"][0]])
    np.testing.assert_allclose(got, reference, rtol=1e-10)
    np.testing.assert_allclose(got, ols.params, rtol=1e-10)
    # ... and model.pt, as reglab-predict and any script load it.
    model = load_model(run_dir / "model.pt")
    with torch.no_grad():
        pred = model(torch.from_numpy(x))[:, 0].numpy()
    np.testing.assert_allclose(pred, design @ reference, rtol=1e-10)
    assert metrics["train_loss"] == pytest.approx(ols.ssr / len(y), rel=1e-10)


def test_exact_keeps_the_model_in_float64_unless_a_precision_is_named(run_train, tmp_path):
    """optimizer=exact with the trainer group's 32-true: the model is float64 (a float32
    model rounded the solve to 7 digits); trainer.precision named on the command line
    wins, as any Trainer setting does."""
    from reglab.reporting.summary import summary_lines

    _table(tmp_path / "t.csv")
    metrics, run_dir = run_train(*_csv_args(tmp_path / "t.csv"))
    assert metrics["run"]["config"]["trainer"]["precision"] == "64-true"
    assert next(load_model(run_dir / "model.pt").parameters()).dtype == torch.float64
    assert metrics["params"] == metrics["closed_form"]["params"]  # every digit kept
    assert "solved exactly in float64" in summary_lines(metrics, run_dir)[0]
    named, named_dir = run_train(*_csv_args(tmp_path / "t.csv"), "trainer.precision=32-true")
    assert named["run"]["config"]["trainer"]["precision"] == "32-true"
    assert next(load_model(named_dir / "model.pt").parameters()).dtype == torch.float32
    assert "solved exactly, no gradient" in summary_lines(named, named_dir)[0]


def test_exact_fit_keeps_twelve_digits_on_a_degree_10_design(run_train):
    """poly_ill: x in [−9, −3], degree 10, condition number ~1e15 in data units; the
    truth is rational arithmetic on the data's x with its powers taken exactly."""
    metrics, run_dir = run_train("experiment=poly_ill", "optimizer=exact")
    cfg = compose_config(["experiment=poly_ill"], run_dir)
    dm = instantiate(cfg.data)
    dm.prepare()
    x, y = (t.numpy()[:, 0] for t in dm.splits["train"])
    assert metrics["closed_form"]["report"]["condition_number"] > 1e14
    coef = exact_powers_least_squares(x, y, 10)
    exact = np.array([float(v) for v in coef])
    closed = metrics["closed_form"]
    # The model holds the optimum itself, bit for bit (64-true keeps float64 weights) ...
    assert metrics["params"] == closed["params"]
    # ... whose coefficients in x, x², … keep 12 digits against rational arithmetic ...
    terms = closed["params_data_units"]
    got = np.array([terms["const"], *(terms["x" if k == 1 else f"x^{k}"]
                                      for k in range(1, 11))])
    assert (np.abs(got - exact) / np.abs(exact)).max() < 1e-12
    # ... and model.pt predicts as the exact polynomial does.
    model = load_model(run_dir / "model.pt")
    with torch.no_grad():
        pred = model(torch.from_numpy(x)[:, None])[:, 0].numpy()
    truth = np.array([float(sum(c * Fraction(float(v)) ** k for k, c in enumerate(coef)))
                      for v in x])
    np.testing.assert_allclose(pred, truth, rtol=1e-9)


@pytest.mark.slow
def test_exact_run_dir_is_complete_and_predict_reads_it(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir = tmp_path / "run"
    out = run_cli([script("reglab-train"), "experiment=poly_ill", "optimizer=exact",
                   "data.test_fraction=0.2", f"hydra.run.dir={run_dir}"], cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "solved exactly" in out.stdout
    for name in ("metrics.json", "model.pt", "fit.png", "checkpoints/last.ckpt"):
        assert (run_dir / name).is_file(), name
    saved = json.loads((run_dir / "metrics.json").read_text())
    assert saved["status"] == "completed" and saved["closed_form"]["report"]["coef"]
    assert saved["test"]["mse"] > 0
    acc = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0})
    acc.Reload()
    tags = acc.Tags()["scalars"]
    for tag in ("train/loss_epoch", "val/loss", "test/mse", "train/loss_closed_form"):
        assert tag in tags, tag
    assert acc.Scalars("train/loss_epoch")[0].value == pytest.approx(saved["train_loss"],
                                                                     rel=1e-6)
    hp = acc.PluginTagToContent("hparams")  # the HPARAMS tab has the run
    assert b"val/loss" in hp["_hparams_/experiment"]
    assert b"exact" in hp["_hparams_/session_start_info"]

    out = run_cli([script("reglab-predict"), f"ckpt_path={run_dir / 'model.pt'}",
                   "x=[[-5.0],[-4.0]]"], cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    model = load_model(run_dir / "model.pt")
    with torch.no_grad():
        expected = model(torch.tensor([[-5.0], [-4.0]], dtype=torch.float64))[:, 0]
    printed = [float(line.split(",")[1]) for line in out.stdout.strip().splitlines()[1:]]
    np.testing.assert_allclose(printed, expected.numpy(), rtol=1e-7)

    out = run_cli([script("reglab-eval"), f"ckpt_path={run_dir / 'checkpoints/last.ckpt'}"],
                  cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert f"{saved['test']['mse']:.6g}"[:6] in out.stdout


def test_exact_ridge_is_the_weight_decay_optimum(run_train, tmp_path):
    """λ = weight_decay: the minimum of MSE + (λ/2)(‖w‖² + b²) in training units, the
    point SGD with the same weight_decay converges to."""
    x, y = _table(tmp_path / "t.csv", n=120, seed=3)
    lam = 0.3
    metrics, _ = run_train(*_csv_args(tmp_path / "t.csv"), f"optimizer.weight_decay={lam}",
                           "trainer.precision=64-true")
    z = (x - x.mean(axis=0)) / x.std(axis=0)  # the csv option standardizes x
    design = np.hstack([np.ones((len(y), 1)), z])
    n = len(y)
    theta = np.linalg.solve(design.T @ design + n * lam / 2 * np.eye(4), design.T @ y)
    params = metrics["params"]
    got = np.array([params["bias"], *params["weight"][0]])
    scale = metrics["data"]["scaling"]
    assert scale["x_std"] is not None
    np.testing.assert_allclose(np.asarray(scale["x_std"]), x.std(axis=0), rtol=1e-12)
    np.testing.assert_allclose(got, theta, rtol=1e-9)
    assert metrics["closed_form"]["objective"].startswith("ridge")


def test_k_fold_means_equal_a_hand_computation(run_train, tmp_path):
    _table(tmp_path / "t.csv", n=53, seed=5)
    args = [*_csv_args(tmp_path / "t.csv"), "data.folds=5", "data.standardize=false"]
    metrics, run_dir = run_train(*args)
    cv = metrics["cv"]
    assert cv["folds"] == 5 and cv["rows"] == 53 and len(cv["val_loss"]) == 5
    dm = instantiate(compose_config(args, run_dir).data)
    dm.prepare()
    xs, ys = (t.numpy() for t in dm.splits["train"])
    folds = dm.fold_indices()
    assert sorted(int(i) for f in folds for i in f) == list(range(53))  # a partition
    assert [len(f) for f in folds] == [11, 11, 11, 10, 10]
    val, train = [], []
    for held in folds:
        mask = np.zeros(53, bool)
        mask[held.numpy()] = True
        a = np.hstack([np.ones((53, 1)), xs])
        coef = np.linalg.lstsq(a[~mask], ys[~mask, 0], rcond=None)[0]
        val.append(float(np.mean((a[mask] @ coef - ys[mask, 0]) ** 2)))
        train.append(float(np.mean((a[~mask] @ coef - ys[~mask, 0]) ** 2)))
    np.testing.assert_allclose(cv["val_loss"], val, rtol=1e-10)
    assert cv["val_loss_mean"] == pytest.approx(np.mean(val), rel=1e-10)
    assert cv["val_loss_std"] == pytest.approx(np.std(val), rel=1e-9)
    assert cv["train_loss_mean"] == pytest.approx(np.mean(train), rel=1e-10)
    # A held-out estimate is above the in-sample fit of all 53 rows.
    assert cv["val_loss_mean"] > metrics["train_loss"]


def _without_hydra(cfg):
    """The job's config as ``checks.check`` sees it inside a run (Hydra's own node
    holds sweep-time interpolations that only resolve in a job)."""
    from omegaconf import open_dict

    with open_dict(cfg):
        cfg.pop("hydra", None)
    return cfg


@pytest.mark.parametrize(("overrides", "key"), [
    (["model=mlp"], "optimizer=exact"),
    (["loss=huber"], "optimizer=exact"),
    (["scheduler=step"], "scheduler"),
    (["tuner=lr_find"], "tuner"),
    (["optimizer.weight_decay=-1"], "optimizer.weight_decay"),
])
def test_exact_refuses_what_it_cannot_do(overrides, key, tmp_path):
    cfg = _without_hydra(compose_config(["optimizer=exact", *overrides], tmp_path / "run"))
    with pytest.raises(errors.ConfigError, match=f"^{key}"):
        checks.check(cfg)


@pytest.mark.parametrize(("overrides", "key"), [
    (["data.folds=5"], "data.folds: k-fold"),
    (["data=diabetes", "optimizer=exact", "data.folds=5"], "data.val_fraction"),
    (["optimizer=exact", "data.folds=1"], "data.folds: expected"),
])
def test_folds_refuse_what_they_cannot_do(overrides, key, tmp_path):
    cfg = _without_hydra(compose_config(overrides, tmp_path / "run"))
    with pytest.raises(errors.ConfigError, match=f"^{key}"):
        checks.check(cfg)


def test_exact_refusal_is_one_line_and_exit_2(tmp_path):
    out = run_cli([script("reglab-train"), "model=mlp", "optimizer=exact"], cwd=tmp_path)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "optimizer=exact" in lines[0]
    assert not (tmp_path / "outputs").exists() or not any((tmp_path / "outputs").rglob(
        "metrics.json"))


def test_own_model_that_is_not_linear_is_refused_at_run_time(tmp_path):
    """A user's model class reglab cannot read as linear: refused by name, exit 2."""
    pkg = tmp_path / "mymodels"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(
        "import torch\n"
        "class Tiny(torch.nn.Module):\n"
        "    def __init__(self, in_features):\n"
        "        super().__init__()\n"
        "        self.lin = torch.nn.Linear(in_features, 1)\n"
        "    def forward(self, x):\n"
        "        return torch.tanh(self.lin(x))\n")
    out = run_cli([script("reglab-train"), "optimizer=exact", "model._target_=mymodels.Tiny",
                   "~model.bias"], cwd=tmp_path, env={"PYTHONPATH": str(tmp_path)})
    assert out.returncode == 2, out.stderr
    assert "Tiny" in out.stderr and "optimizer=exact" in out.stderr


@pytest.mark.slow
def test_poly_select_sweep_picks_degree_3_and_draws_the_validation_curve(tmp_path):
    """docs/experiments/poly_select.md's sweep, as written: degree 3 has the lowest 5-fold
    validation loss of 1..12, degree 12 overfits, the sweep report draws and stars it, and
    the summary the page shows is the one printed."""
    import csv
    import shlex

    from docs_blocks import block, matches

    command, shown = block("docs/experiments/poly_select.md", 1), block(
        "docs/experiments/poly_select.md", 2)
    argv = shlex.split(command.text)
    assert "hydra.sweep.dir=sweeps/degree" in argv
    sweep = tmp_path / "sweeps" / "degree"
    out = run_cli([script(argv[0]), *argv[1:]], cwd=tmp_path, timeout=400)
    assert out.returncode == 0, out.stderr[-2000:]
    assert matches(shown.text, out.stdout + out.stderr) is None, out.stdout[-3000:]
    rows = {int(r["model.degree"]): r for r in csv.DictReader(
        (sweep / "sweep_summary.csv").read_text().splitlines())}
    cv = {d: float(r["cv_val_loss"]) for d, r in rows.items()}
    assert min(cv, key=cv.get) == 3
    train = {d: float(r["train_loss"]) for d, r in rows.items()}
    test = {d: float(r["test_loss"]) for d, r in rows.items()}
    # Overfitting: degree 12 fits its training rows better and everything else worse.
    assert train[12] < train[3] and cv[12] > cv[3] and test[12] > 3 * test[3]
    assert cv[1] > 5 * cv[3]  # a line underfits a cubic
    assert "★ best | 2 | 3 |" in (sweep / "sweep_summary.md").read_text()
    png = sweep / "sweep_validation_curve.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (sweep / "sweep_curves.png").exists()  # no epochs: no per-epoch curves
