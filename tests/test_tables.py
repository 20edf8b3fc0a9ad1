"""Tables as a user brings them: read by pyarrow in float64, bad cells found by column,
the optimum solved from the data as read, and defaults that fit the user's own data."""

from __future__ import annotations

import warnings
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import compose_config

from reglab.data.tables import read_inputs, read_table
from reglab.errors import DataError, ReglabError


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.mark.parametrize(("text", "message"), [
    ("a,b,y\n1,2,3\n4,5,6\n7,abc,9\n", r"t.csv, line 4, column 'b': 'abc' is not a number"),
    ("a,b,y\n1,2,3\n\n4,,6\n", r"t.csv, line 4, column 'b': empty cell"),
    ("a,b,y\n1,2,3\n4,  ,6\n", r"t.csv, line 3, column 'b': empty cell"),
    ("a,b,y\n1,2,3\n4,5,nan\n", r"t.csv, line 3, column 'y': 'nan' is not a finite number"),
    ("a,b,y\n1,2,3\n4,1e999,6\n", r"t.csv, line 3, column 'b': '1e999' is beyond float64's range"),
    ("a,b,y\n1,2,3\n4,5\n", r"t.csv, line 3: 2 fields, but the header has 3"),
    ("a,a,y\n1,2,3\n", r"t.csv: duplicate column 'a' in the header"),
    ("a,y,y\n1,2,3\n", r"t.csv: duplicate column 'y' in the header"),
    ("a;b;y\n1;2;3\n", r"no column 'y' .*set data.source.delimiter"),
    ("a,b,y\n", r"t.csv: no data rows below the header"),
    ("", r"t.csv: the file is empty"),
])
def test_csv_bad_input_is_named_by_line_and_column(tmp_path: Path, text: str, message: str):
    path = _write(tmp_path / "t.csv", text)
    with pytest.raises(DataError, match=message):
        read_table(str(path), target="y")


def test_csv_bytes_that_are_not_utf8_are_named(tmp_path: Path):
    path = tmp_path / "latin.csv"
    path.write_bytes(b"a,y\n1,2\n\xe9t\xe9,3\n")
    with pytest.raises(DataError, match=r"latin.csv, line 3, column 'a': b'\\xe9t\\xe9' "
                                        r"is not UTF-8 text"):
        read_table(str(path), target="y")


def test_a_tab_delimiter_may_be_spelled_as_a_shell_passes_it(tmp_path: Path):
    path = _write(tmp_path / "t.tsv", "a\tb\ty\n1\t2\t3\n4\t5\t6\n")
    for spelling in ("\t", "\\t", "tab"):
        data = read_table(str(path), target="y", delimiter=spelling)
        assert data.x.tolist() == [[1.0, 2.0], [4.0, 5.0]], spelling
    with pytest.raises(ReglabError, match=r"delimiter: expected one character .* got ';;'"):
        read_table(str(path), target="y", delimiter=";;")


def test_csv_reads_float64_exactly_and_keeps_text_columns_out(tmp_path: Path):
    path = _write(tmp_path / "t.csv",
                  "\ufeffa, b ,note,y\n0.1,1, x ,0.30000000000000004\n 2 ,3,y,4\n\n")
    data = read_table(str(path), target="y", features=["a", "b"])
    assert data.x.dtype == torch.float64 and data.y.dtype == torch.float64
    assert data.x.tolist() == [[0.1, 1.0], [2.0, 3.0]]
    assert data.y[0, 0].item() == 0.30000000000000004  # every digit as written
    assert data.feature_names == ["a", "b"] and data.target_name == "y"
    names, x = read_inputs(path, ["b", "a"])
    assert names == ["b", "a"] and x.tolist() == [[1.0, 0.1], [3.0, 2.0]]


def test_integer_columns_of_any_width_read_as_float64_rounds_them(tmp_path: Path):
    """Parquet int64 past 2**53 and uint64 up to 2**64 - 1 (pyarrow's safe cast refused
    them: a traceback) read as the nearest float64, as the same digits in a CSV do."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    big, top = 2**53 + 1, 2**64 - 1
    table = pa.table({"a": pa.array([big, -big, 3], pa.int64()),
                      "b": pa.array([top, 0, 7], pa.uint64()),
                      "c": pa.array([1, 2, 3], pa.int8()),
                      "y": pa.array([1, 2, 3], pa.uint16())})
    pq.write_table(table, tmp_path / "wide.parquet")
    data = read_table(str(tmp_path / "wide.parquet"), target="y")
    assert data.x.tolist() == [[float(big), 1.0 * top, 1.0], [-float(big), 0.0, 2.0],
                               [3.0, 7.0, 3.0]]
    _write(tmp_path / "wide.csv", f"a,b,c,y\n{big},{top},1,1\n{-big},0,2,2\n3,7,3,3\n")
    assert read_table(str(tmp_path / "wide.csv"), target="y").x.tolist() == data.x.tolist()


def test_parquet_bad_cells_are_named_by_row(tmp_path: Path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    cases = {
        "text": (pa.table({"a": ["1", "2", "x"], "y": [1.0, 2.0, 3.0]}),
                 r"row 3, column 'a': 'x' is not a number"),
        "flag": (pa.table({"a": [True, False], "y": [1.0, 2.0]}),
                 r"row 1, column 'a': 'True' is not a number"),
        "inf": (pa.table({"a": [1.0, float("inf")], "y": [1.0, 2.0]}),
                r"row 2, column 'a': 'inf' is not a finite number"),
    }
    for name, (table, message) in cases.items():
        pq.write_table(table, tmp_path / f"{name}.parquet")
        with pytest.raises(DataError, match=message):
            read_table(str(tmp_path / f"{name}.parquet"), target="y")
    dup = pa.Table.from_arrays([pa.array([1.0]), pa.array([2.0]), pa.array([3.0])],
                               names=["a", "a", "y"])
    pq.write_table(dup, tmp_path / "dup.parquet")
    with pytest.raises(DataError, match=r"duplicate column 'a' in the header"):
        read_table(str(tmp_path / "dup.parquet"), target="y")
    whole = (tmp_path / "ints.parquet")
    pq.write_table(pa.table({"a": [1.0, 2.0], "y": [1.0, 2.0]}), whole)
    for name, content in [("cut.parquet", whole.read_bytes()[:-20]), ("empty.parquet", b"")]:
        (tmp_path / name).write_bytes(content)
        with pytest.raises(DataError, match=rf"{name}: not a readable Parquet file"):
            read_table(str(tmp_path / name), target="y")
    ints = pa.table({"a": pa.array([1, 2, 3], pa.int32()), "y": [0.5, 1.5, 2.5]})
    pq.write_table(ints, tmp_path / "ints.parquet")
    data = read_table(str(tmp_path / "ints.parquet"), target="y")
    assert data.x.dtype == torch.float64 and data.x[:, 0].tolist() == [1.0, 2.0, 3.0]


def _exact_poly_table(path: Path) -> list[Fraction]:
    """y = 1 + 0.1x + 0.01x² + … + 1e-5·x⁵ at x = 0..20, every value written exactly."""
    coef = [Fraction(1, 10 ** k) for k in range(6)]
    lines = ["x,y"]
    for x in range(21):
        y = sum(c * x ** k for k, c in enumerate(coef))
        lines.append(f"{x},{float(y)!r}")
    path.write_text("\n".join(lines) + "\n")
    return coef


@pytest.mark.parametrize("precision", ["32-true", "64-true"])
def test_closed_form_is_solved_from_the_float64_table(run_train, tmp_path: Path,
                                                     precision: str):
    path = tmp_path / "poly.csv"
    coef = _exact_poly_table(path)
    metrics, _ = run_train("data=csv", f"data.source.path={path}", "data.source.target=y",
                           "data.standardize=false", "data.val_fraction=0",
                           "data.test_fraction=0", "model=polynomial", "model.degree=5",
                           f"trainer.precision={precision}", "trainer.max_epochs=1",
                           "logger=none", "callbacks=none")
    closed = metrics["closed_form"]["params"]
    got = [closed["bias"], *closed["weight"][0]]
    # float32 storage gave about 5 digits; float64 as read gives 10 or more.
    for g, want in zip(got, coef, strict=True):
        assert g == pytest.approx(float(want), rel=1e-9)


def test_diabetes_closed_form_r2_equals_scikit_learn_to_float64(run_train, tmp_path: Path):
    from hydra.utils import instantiate
    from sklearn.linear_model import LinearRegression
    from sklearn.metrics import r2_score

    metrics, _ = run_train("experiment=diabetes", "trainer.max_epochs=1", "logger=none",
                           "callbacks=none")
    dm = instantiate(compose_config(["experiment=diabetes"], tmp_path / "cfg").data)
    dm.prepare()
    (x_tr, y_tr), (x_te, y_te) = dm.splits["train"], dm.splits["test"]
    assert x_tr.dtype == torch.float64  # the split as read, not a float32 copy
    sk = LinearRegression().fit(x_tr.numpy(), y_tr.numpy().ravel())
    sk_r2 = r2_score(y_te.numpy().ravel(), sk.predict(x_te.numpy()))
    assert metrics["closed_form"]["test"]["r2"] == pytest.approx(sk_r2, rel=1e-12)


def test_a_users_table_gets_its_own_name_and_settings(tmp_path: Path):
    path = tmp_path / "houses.csv"
    cfg = compose_config(["data=csv", f"data.source.path={path}", "data.source.target=y"],
                         tmp_path / "run")
    assert cfg.task_name == "houses"
    assert "houses/runs" in cfg.hydra.run.dir
    assert cfg.trainer.max_epochs == 10 and cfg.trainer.check_val_every_n_epoch == 1
    assert cfg.hydra.runtime.choices.get("experiment") is None
    # The default run still reproduces seed document 000 from the group defaults alone.
    default = compose_config([], tmp_path / "run2")
    assert default.task_name == "line" and default.trainer.max_epochs == 1000
    assert default.data.source.a == 2.0 and default.optimizer.lr == 0.01
    # Hydra's documented form for an experiment group works too.
    plus = compose_config(["+experiment=noisy_line"], tmp_path / "run3")
    assert plus.task_name == "noisy_line"


def test_large_table_is_read_without_python_per_cell(tmp_path: Path):
    """10⁵ rows × 11 columns: read in float64, same values as numpy's own parse."""
    rng = np.random.default_rng(0)
    values = rng.normal(size=(100_000, 11))
    path = tmp_path / "big.csv"
    header = ",".join([*(f"x{i}" for i in range(10)), "y"])
    np.savetxt(path, values, delimiter=",", header=header, comments="", fmt="%.17g")
    data = read_table(str(path), target="y")
    assert data.x.shape == (100_000, 10) and data.x.is_contiguous()
    assert np.array_equal(data.x.numpy(), values[:, :10])
    assert np.array_equal(data.y.numpy()[:, 0], values[:, 10])


def _statsmodels_fit(x: np.ndarray, y: np.ndarray, const: bool):
    sm = pytest.importorskip("statsmodels.api")
    return sm.OLS(y, sm.add_constant(x, has_constant="add") if const else x).fit()


@pytest.mark.parametrize(("bias", "standardize"), [(True, True), (True, False),
                                                   (False, False)])
def test_train_records_the_report_statsmodels_gives(run_train, tmp_path: Path, bias: bool,
                                                    standardize: bool):
    """Every number of metrics.json's report against statsmodels' OLS on the same rows."""
    from hydra.utils import instantiate
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    overrides = ["experiment=diabetes", f"model.bias={str(bias).lower()}",
                 f"data.standardize={str(standardize).lower()}",
                 f"data.standardize_target={str(standardize).lower()}"]
    metrics, run_dir = run_train(*overrides, "trainer.max_epochs=1", "callbacks=none")
    report = metrics["closed_form"]["report"]
    dm = instantiate(compose_config(overrides, tmp_path / "cfg").data)
    dm.prepare()
    x, y = (t.numpy() for t in dm.splits["train"])
    fit = _statsmodels_fit(x, y[:, 0], bias)
    names = ["const"] * bias + dm.data.feature_names
    assert [row["name"] for row in report["coef"]] == names
    ci = fit.conf_int()
    for j, row in enumerate(report["coef"]):
        for key, want in (("coef", fit.params[j]), ("std_err", fit.bse[j]),
                          ("t", fit.tvalues[j]), ("p_value", fit.pvalues[j]),
                          ("ci_low", ci[j, 0]), ("ci_high", ci[j, 1])):
            assert row[key] == pytest.approx(want, rel=1e-8, abs=1e-300), (row["name"], key)
    for key, want in (("r2", fit.rsquared), ("adjusted_r2", fit.rsquared_adj),
                      ("f_statistic", fit.fvalue), ("f_p_value", fit.f_pvalue),
                      ("sigma", np.sqrt(fit.scale)), ("ssr", fit.ssr),
                      ("log_likelihood", fit.llf), ("aic", fit.aic), ("bic", fit.bic),
                      ("condition_number", fit.condition_number)):
        assert report[key] == pytest.approx(want, rel=1e-8), key
    assert report["df_resid"] == fit.df_resid and report["n"] == len(y)
    # The same table in TensorBoard's TEXT tab.
    acc = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"tensors": 0})
    acc.Reload()
    text = acc.Tensors("least_squares/report/text_summary")[-1].tensor_proto.string_val[0]
    assert b"| term | coef |" in text and names[-1].encode() in text
    # ... rendered by TensorBoard as a table with every column (P>|t| is one header).
    with warnings.catch_warnings():  # TensorBoard's vendored html5lib is deprecated
        warnings.simplefilter("ignore", DeprecationWarning)
        from tensorboard.plugin_util import markdown_to_safe_html

    html = markdown_to_safe_html(text.decode())
    assert html.startswith("<table>") and html.count("<th>") == 7
    assert "<th>P&gt;|t|</th>" in html


def test_weight_decay_reports_the_ridge_optimum_training_reaches(run_train):
    metrics, _ = run_train("experiment=noisy_line", "optimizer.weight_decay=0.5",
                           "data.batch_size=null", "data.shuffle=false", "optimizer.lr=0.1",
                           "trainer.max_epochs=300", "logger=none", "callbacks=none")
    closed = metrics["closed_form"]
    assert closed["objective"].startswith("ridge") and closed["penalty"] == 0.25
    # Full-batch gradient descent converges to the ridge optimum: the gap closes.
    assert closed["optimality_gap"]["relative"] < 1e-6
    learned = metrics["params"]
    assert learned["weight"][0][0] == pytest.approx(closed["params"]["weight"][0][0], rel=1e-4)
    # AdamW's decoupled decay has no such optimum: none is claimed.
    metrics, _ = run_train("experiment=noisy_line", "optimizer=adamw",
                           "optimizer.weight_decay=0.01", "trainer.max_epochs=2",
                           "logger=none", "callbacks=none")
    closed = metrics["closed_form"]
    assert "train_loss" not in closed and "decoupled" in closed["why_no_optimum"]
    assert closed["report"]["coef"][0]["name"] == "const"


@pytest.mark.slow
def test_weight_decay_with_several_targets_sums_the_penalty_over_every_row(run_train,
                                                                         tmp_path: Path):
    rng = np.random.default_rng(5)
    x = rng.normal(size=(120, 2))
    y = np.c_[x @ [1.0, 2.0] + 1.0, x @ [-1.0, 0.5]]
    path = tmp_path / "two.csv"
    np.savetxt(path, np.c_[x, y], delimiter=",", header="a,b,u,v", comments="", fmt="%.17g")
    metrics, _ = run_train("data=csv", f"data.source.path={path}", "data.source.target=[u,v]",
                           "data.standardize=false", "data.val_fraction=0",
                           "data.test_fraction=0", "data.batch_size=null",
                           "data.shuffle=false", "optimizer.lr=0.1",
                           "optimizer.weight_decay=0.2", "trainer.max_epochs=400",
                           "logger=none", "callbacks=none")
    closed = metrics["closed_form"]
    assert len(closed["params"]["bias"]) == 2
    # Full-batch descent reaches the ridge optimum of both targets: the gap closes.
    assert 0 <= closed["optimality_gap"]["relative"] < 1e-6


@pytest.mark.slow
def test_several_targets_train_report_evaluate_and_predict(tmp_path: Path):
    """data.source.target=[u,v]: two outputs, each solved, reported and predicted."""
    import csv
    import json

    from conftest import run_cli, script

    rng = np.random.default_rng(1)
    x = rng.normal(size=(400, 2))
    y = np.c_[x @ [1.0, 2.0] + 3.0, x @ [-1.0, 0.5] - 2.0] + 0.1 * rng.normal(size=(400, 2))
    path = tmp_path / "multi.csv"
    np.savetxt(path, np.c_[x, y], delimiter=",", header="a,b,u,v", comments="", fmt="%.17g")
    run_dir = tmp_path / "run"
    done = run_cli([script("reglab-train"), "data=csv", f"data.source.path={path}",
                    "data.source.target=[u,v]", "trainer.max_epochs=2", "logger=none",
                    f"hydra.run.dir={run_dir}"], tmp_path)
    assert done.returncode == 0, done.stderr
    assert "least squares on the training split, in the data's units (target v)" in done.stdout
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert len(metrics["params"]["weight"]) == 2 and len(metrics["params"]["bias"]) == 2
    assert set(metrics["test"]["per_target"]) == {"u", "v"}
    per = metrics["closed_form"]["per_target"]
    # Each target's report is that target's own least squares (statsmodels, same rows).
    from hydra.utils import instantiate

    dm = instantiate(compose_config(["data=csv", f"data.source.path={path}",
                                     "data.source.target=[u,v]"], tmp_path / "cfg").data)
    dm.prepare()
    xs, ys = (t.numpy() for t in dm.splits["train"])
    for j, name in enumerate(["u", "v"]):
        fit = _statsmodels_fit(xs, ys[:, j], True)
        got = [row["coef"] for row in per[name]["report"]["coef"]]
        assert got == pytest.approx(list(fit.params), rel=1e-8)
    out = tmp_path / "pred.csv"
    done = run_cli([script("reglab-predict"), f"ckpt_path={run_dir / 'model.pt'}",
                    f"input_path={path}", f"output_path={out}"], tmp_path)
    assert done.returncode == 0, done.stderr
    rows = list(csv.DictReader(out.read_text().splitlines()))
    assert set(rows[0]) >= {"u_predicted", "v_predicted"} and len(rows) == 400
    # Output piped into a reader that stops early: a quiet end, no traceback.
    many = tmp_path / "many.csv"
    np.savetxt(many, rng.normal(size=(20000, 2)), delimiter=",", header="a,b", comments="")
    piped = run_cli(["bash", "-o", "pipefail", "-c", f"{script('reglab-predict')} "
                     f"ckpt_path={run_dir / 'model.pt'} input_path={many} | head -1"], tmp_path)
    assert piped.returncode == 0 and piped.stdout == "a,b,u_predicted,v_predicted\n"
    assert "Traceback" not in piped.stderr and "Error" not in piped.stderr
    done = run_cli([script("reglab-eval"), f"ckpt_path={run_dir / 'model.pt'}",
                    "hydra.run.dir=ev"], tmp_path)
    assert done.returncode == 0, done.stderr
    scored = json.loads((tmp_path / "ev" / "eval_metrics.json").read_text())["metrics"]
    assert scored["per_target"]["v"]["mse"] == pytest.approx(
        metrics["test"]["per_target"]["v"]["mse"], rel=1e-9)


@pytest.mark.slow
def test_eval_takes_columns_by_name_and_refuses_a_changed_table(tmp_path: Path):
    """reglab-eval scores a table by the model's column names, reads the file training
    read (not one of the same relative name elsewhere), and refuses it once changed."""
    import json

    from conftest import run_cli, script

    rng = np.random.default_rng(3)
    x = rng.normal(size=(300, 2))
    y = x @ [3.0, -1.0] + 0.5 + 0.01 * rng.normal(size=300)
    rows = [f"{a!r},{b!r},{t!r}" for (a, b), t in zip(x.tolist(), y.tolist(), strict=True)]
    (tmp_path / "t.csv").write_text("a,b,y\n" + "\n".join(rows) + "\n")
    run = tmp_path / "run"
    done = run_cli([script("reglab-train"), "data=csv", "data.source.path=t.csv",
                    "data.source.target=y", "trainer.max_epochs=3", "logger=none",
                    "callbacks=none", f"hydra.run.dir={run}"], tmp_path)
    assert done.returncode == 0, done.stderr
    recorded = json.loads((run / "metrics.json").read_text())["data"]["file"]
    assert recorded["path"] == str((tmp_path / "t.csv").resolve()) and recorded["bytes"] > 0

    def evaluate(*args: str, cwd: Path = tmp_path) -> tuple[int, str, dict]:
        out = cwd / f"ev{len(list(cwd.glob('ev*')))}"
        done = run_cli([script("reglab-eval"), f"ckpt_path={run / 'model.pt'}", *args,
                        f"hydra.run.dir={out}"], cwd)
        record = (json.loads((out / "eval_metrics.json").read_text())
                  if done.returncode == 0 else {})
        scored = {**record.get("metrics", {}), "rows": record.get("rows")}
        return done.returncode, done.stderr, scored

    code, err, base = evaluate("split=all")
    assert code == 0, err
    # The same rows with the feature columns swapped: the same figures.
    swapped = [f"{b!r},{a!r},{t!r}" for (a, b), t in zip(x.tolist(), y.tolist(), strict=True)]
    (tmp_path / "swapped.csv").write_text("b,a,y\n" + "\n".join(swapped) + "\n")
    code, err, again = evaluate("data.source.path=swapped.csv", "split=all")
    assert code == 0, err
    assert again["r2"] == pytest.approx(base["r2"], rel=1e-12)  # by position: another figure
    (tmp_path / "narrow.csv").write_text("b,y\n1,2\n")
    code, err, _ = evaluate("data.source.path=narrow.csv", "split=all")
    assert code == 2 and "no column 'a'" in err
    # Another directory holding another t.csv: the run's own file is scored.
    other = tmp_path / "elsewhere"
    other.mkdir()
    (other / "t.csv").write_text("a,b,y\n1,1,100\n2,2,200\n3,3,300\n")
    code, err, there = evaluate("split=all", cwd=other)
    assert code == 0, err
    assert there["mse"] == pytest.approx(base["mse"], rel=1e-12)
    # Rows appended to the training table: refused, not silently re-split.
    with (tmp_path / "t.csv").open("a") as handle:
        handle.write("1.0,2.0,3.0\n")
    code, err, _ = evaluate()
    assert code == 2 and "changed since the run trained on it" in err
    assert "allow_changed_data=true" in err
    # Told to, it scores what the file holds now, and says so.
    code, err, now = evaluate("allow_changed_data=true", "split=all")
    assert code == 0, err
    assert "warning: data.source.path" in err and "is not the run's" in err
    assert now["rows"] == base["rows"] + 1  # the appended row is scored
    # Refused into a folder of the user's own: the folder is left as it was.
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    (mine / "eval.log").write_text("an older log")
    done = run_cli([script("reglab-eval"), f"ckpt_path={run / 'model.pt'}",
                    f"hydra.run.dir={mine}"], tmp_path)
    assert done.returncode == 2
    assert sorted(p.name for p in mine.iterdir()) == ["eval.log", "notes.txt"]
    assert (mine / "eval.log").read_text() == "an older log"


def test_a_value_float32_cannot_hold_is_named_by_column(run_train, tmp_path: Path):
    path = _write(tmp_path / "over.csv", "x,y\n1,2\n2,1e39\n3,4\n")
    args = ["data=csv", f"data.source.path={path}", "data.source.target=y",
            "data.standardize=false", "data.val_fraction=0", "data.test_fraction=0",
            "trainer.max_epochs=1", "logger=none", "callbacks=none"]
    with pytest.raises(DataError, match=rf"^{path}, line 3, column 'y': 1e\+39 is beyond "
                                        r"float32's range as the model sees it; use "
                                        r"data.standardize_target=true or trainer.precision"):
        run_train(*args)
    metrics, _ = run_train(*args, "trainer.precision=64-true")  # float64 holds it
    assert metrics["status"] == "completed"
    # Shuffled into a split, with the defaults (features standardized, the target not):
    # still the file's own line, and the setting that helps for that column.
    for name, column, extra, fix in (
            ("y.csv", "y", [], "data.standardize_target=true or "),
            ("x.csv", "x", ["data.standardize=false"], "data.standardize=true or ")):
        rows = "".join(f"{1e39 if i == 37 and column == 'x' else i},"
                       f"{1e39 if i == 37 and column == 'y' else 2 * i}\n" for i in range(60))
        path = _write(tmp_path / name, "x,y\n" + rows)
        with pytest.raises(DataError, match=rf"^{path}, line 39, column '{column}': 1e\+39 "
                                            rf"is beyond float32's range as the model sees "
                                            rf"it; use {fix}trainer.precision=64-true$"):
            run_train("data=csv", f"data.source.path={path}", "data.source.target=y",
                      "trainer.max_epochs=1", "logger=none", "callbacks=none", *extra)
    fake = _write(tmp_path / "fake.parquet", "a,b\n1,2\n")
    with pytest.raises(DataError, match=r"fake.parquet: not a readable Parquet file"):
        read_table(str(fake), target="b")


def test_a_compressed_file_or_an_unclosed_quote_is_named(tmp_path: Path):
    import bz2
    import gzip

    text = b"x,y\n1,2\n2,3\n3,4\n"
    for name, data, what in (
            ("g.csv", gzip.compress(text), "a gzip-compressed file: decompress it first"),
            ("g.csv.gz", gzip.compress(text), "a gzip-compressed file: decompress it first"),
            ("b.csv", bz2.compress(text), "a bzip2-compressed file: decompress it first")):
        (tmp_path / name).write_bytes(data)
        with pytest.raises(DataError, match=rf"^{tmp_path / name}: {what}"):
            read_table(str(tmp_path / name), target="y")
    # The quote opened on line 6 swallows every line after it.
    quoted = _write(tmp_path / "q.csv", 'x,y\n1,2\n2,3\n3,4\n4,5\n"5,6\n6,7\n7,8\n')
    with pytest.raises(DataError, match=rf"^{quoted}, line 6: a quote opens here and is "
                                        "never closed$"):
        read_table(str(quoted), target="y")
    # Quotes that close, doubled quotes inside them, and a quoted field over two lines.
    fine = _write(tmp_path / "fine.csv", 'x,"y"\n1,"2"\n"2",3\n')
    assert read_table(str(fine), target="y").y.flatten().tolist() == [2.0, 3.0]


def test_model_files_are_checked_before_anything_is_built(tmp_path: Path):
    """Declared shapes against stored tensors first (on the meta device: no memory for
    a file whose arguments claim a huge model); a 0-byte or incomplete file: one line."""
    from reglab.artifacts import read_trained, save_model
    from reglab.data.scaling import Scaling
    from reglab.errors import ReglabError
    from reglab.models.regressors import LinearRegression

    good = tmp_path / "model.pt"
    save_model(LinearRegression(2), good, scaling=Scaling(), extra={},
               kwargs={"in_features": 2})
    payload = torch.load(good, weights_only=True)
    payload["model"]["kwargs"]["out_features"] = 200_000_000  # 1.6 GB if it were built
    torch.save(payload, tmp_path / "huge.pt")
    with pytest.raises(ReglabError, match=r"declares 'linear.weight' of shape "
                                          r"\[200000000, 2\], but the file holds \[1, 2\]"):
        read_trained(tmp_path / "huge.pt")
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(ReglabError, match=r"empty.pt: not a readable .* \(0 bytes\)"):
        read_trained(tmp_path / "empty.pt")
    payload = torch.load(good, weights_only=True)
    payload["model"]["kwargs"] = [1, 2]
    torch.save(payload, tmp_path / "args.pt")
    with pytest.raises(ReglabError, match=r"recorded arguments are not a mapping"):
        read_trained(tmp_path / "args.pt")
    del payload["model"]
    torch.save(payload, tmp_path / "nomodel.pt")
    with pytest.raises(ReglabError, match=r"names no model class"):
        read_trained(tmp_path / "nomodel.pt")


@pytest.mark.slow
def test_a_10000_column_table_trains_and_reports_in_seconds(tmp_path):
    """10,000 columns, 200 rows (18 MB of CSV): read, trained, solved and reported in
    about 10 s on two cores, where it ran for more than ten minutes (a 10,001² R, its
    SVD, and a dense 800 MB change-of-units matrix)."""
    import json
    import time

    from conftest import run_cli

    rng = np.random.default_rng(0)
    n, k = 200, 10_000
    x = rng.normal(size=(n, k))
    y = x[:, :5].sum(1) + 0.1 * rng.normal(size=n)
    np.savetxt(tmp_path / "wide.csv", np.hstack([x, y[:, None]]), delimiter=",",
               fmt="%.6g", header=",".join([f"c{j}" for j in range(k)] + ["y"]),
               comments="")
    start = time.perf_counter()
    out = run_cli(["reglab-train", "data=csv", "data.source.path=wide.csv",
                   "data.source.target=y", "trainer.max_epochs=2", "hydra.run.dir=run"],
                  tmp_path, timeout=180)
    assert out.returncode == 0, out.stderr[-2000:]
    assert time.perf_counter() - start < 90
    report = json.loads((tmp_path / "run" / "metrics.json").read_text())["closed_form"]
    assert report["train_loss"] == 0.0 and report["report"]["rank"] == 140
    assert "… 9989 more terms in metrics.json" in out.stdout
