"""data=stream: a table read a unit at a time, its splits, its batches across ranks, the
exact fit in one pass, and eval / predict over it."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from conftest import run_cli, script, two_nodes
from hypothesis import given, settings
from hypothesis import strategies as st
from nist_strd import SETS as NIST

from reglab.analysis.ols_report import report_for
from reglab.analysis.streamed_fit import StreamedLeastSquares
from reglab.data import row_split
from reglab.data.streamed import StreamedBatches, StreamedDataModule
from reglab.errors import DataError

SIZES = (700, 1100, 500, 900)  # uneven files


def _write(folder: Path, sizes=SIZES, group: int = 250, seed: int = 0,
           bad: tuple[int, int] | None = None) -> Path:
    """Parquet files of columns id (the global row number), a, b, c and y."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    start = 0
    for f, n in enumerate(sizes):
        x = rng.normal(size=(n, 3)) * [1.0, 10.0, 0.1] + [0.0, 100.0, -5.0]
        y = x @ [1.5, -0.2, 4.0] + 3 + 0.1 * rng.normal(size=n)
        if bad is not None and bad[0] == f:
            y[bad[1]] = np.nan
        pq.write_table(pa.table({"id": np.arange(start, start + n, dtype=np.float64),
                                 "a": x[:, 0], "b": x[:, 1], "c": x[:, 2], "y": y}),
                       folder / f"part-{f}.parquet", row_group_size=group)
        start += n
    return folder


def _module(path: Path, **kw) -> StreamedDataModule:
    args = {"target": "y", "features": ["id", "a"], "standardize": False, "batch_size": 64,
            "val_fraction": 0.1, "test_fraction": 0.2, "seed": 3, "shuffle_rows": 100, **kw}
    dm = StreamedDataModule(str(path), **args)
    dm.take_census()
    return dm


def _epoch(dm: StreamedDataModule, rank: int, world: int, epoch: int
           ) -> tuple[list[torch.Tensor], set[int]]:
    """One rank's batches of an epoch (the ids column) and the units it read."""
    dm.units_read = []
    batches = [x[:, 0].long() for x, _ in
               StreamedBatches(dm, rank, world, shuffle=True).minibatches(epoch)]
    return batches, set(dm.units_read)


def test_each_training_row_is_read_once_per_epoch_by_one_rank(tmp_path: Path):
    dm = _module(_write(tmp_path / "t"))
    ids = np.arange(sum(SIZES))
    train = set(ids[row_split.split_codes(ids, 3, 0.1, 0.2) == row_split.TRAIN].tolist())
    assert dm.census.total(row_split.TRAIN) == len(train)
    units = len(dm.table.units)
    assert units == 3 + 5 + 2 + 4  # row groups of 250 rows
    orders = []
    for epoch in (0, 1):
        (b0, read0), (b1, read1) = _epoch(dm, 0, 2, epoch), _epoch(dm, 1, 2, epoch)
        assert len(b0) == len(b1) == len(train) // 64  # every rank, every epoch
        assert all(len(b) == 32 for b in b0 + b1)  # half of each global batch
        rows = torch.cat(b0 + b1).tolist()
        assert len(rows) == len(set(rows)) == len(train) // 64 * 64  # once, by one rank
        assert set(rows) <= train
        # Each rank reads its own stretch of row groups: one may be shared at the seam.
        assert len(read0 & read1) <= 1 and len(read0) + len(read1) <= units + 1
        assert max(len(read0), len(read1)) <= units // 2 + 2
        orders.append(rows)
    assert orders[0] != orders[1]  # a new order each epoch...
    again = _module(_write(tmp_path / "t"))
    assert torch.cat(_epoch(again, 0, 2, 1)[0]).tolist() == orders[1][:len(orders[1]) // 2]


def test_one_process_with_two_lanes_serves_the_batches_two_ranks_share(tmp_path: Path):
    dm = _module(_write(tmp_path / "t"), lanes=2)
    one, _ = _epoch(dm, 0, 1, 0)
    r0, _ = _epoch(dm, 0, 2, 0)
    r1, _ = _epoch(dm, 1, 2, 0)
    assert len(one) == len(r0) == len(r1)
    for whole, a, b in zip(one, r0, r1, strict=True):
        assert whole.tolist() == torch.cat([a, b]).tolist()


def test_four_lanes_on_two_ranks_and_a_refused_lane_count(tmp_path: Path):
    dm = _module(_write(tmp_path / "t"), lanes=4)
    a, _ = _epoch(dm, 0, 2, 0)
    b, _ = _epoch(dm, 1, 2, 0)
    assert len(a) == len(b) and all(len(x) == 32 for x in a + b)
    with pytest.raises(DataError, match=r"data\.lanes: 3 lanes cannot be shared by 2 ranks"):
        StreamedBatches(_module(_write(tmp_path / "t"), lanes=3), 0, 2, True)


def test_resuming_mid_epoch_serves_the_batches_that_were_next(tmp_path: Path):
    dm = _module(_write(tmp_path / "t"))
    batches = StreamedBatches(dm, 0, 1, shuffle=True)
    whole = [x[:, 0].tolist() for x, _ in batches.minibatches(2)]
    rest = [x[:, 0].tolist() for x, _ in batches.minibatches(2, start=7)]
    assert rest == whole[7:]


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**40), first=st.integers(0, 2**50), n=st.integers(1, 300),
       cut=st.integers(0, 300), val=st.floats(0, 0.45), test=st.floats(0, 0.45))
def test_a_rows_split_depends_on_its_number_and_the_seed_alone(seed, first, n, cut, val,
                                                               test):
    rows = np.arange(first, first + n, dtype=np.int64)
    whole = row_split.split_codes(rows, seed, val, test)
    cut = min(cut, n)  # read in two pieces, in either order: the same codes
    parts = np.concatenate([row_split.split_codes(rows[cut:], seed, val, test),
                            row_split.split_codes(rows[:cut], seed, val, test)])
    assert np.array_equal(whole, np.concatenate([parts[n - cut:], parts[:n - cut]]))
    assert set(np.unique(whole).tolist()) <= {row_split.TRAIN, row_split.VAL, row_split.TEST}


def test_split_shares_follow_the_fractions():
    codes = row_split.split_codes(np.arange(200_000), 11, 0.1, 0.2)
    shares = np.bincount(codes, minlength=3) / len(codes)
    assert shares == pytest.approx([0.7, 0.1, 0.2], abs=0.005)


def _stream_report(path: Path, names: list[str], bias: bool = True, world: int = 1) -> dict:
    """The one-pass report; with ``world`` > 1, each "rank" folds every world-th unit
    into a sink of its own and the sinks are merged as ``merge_ranks`` merges them."""
    dm = StreamedDataModule(str(path), target="y", features=names, val_fraction=0,
                            test_fraction=0, standardize=False)
    sink = StreamedLeastSquares(len(names), bias, True)
    census = dm.take_census(sink=sink if world == 1 else None)
    if world > 1:
        states = []
        for rank in range(world):
            own = StreamedLeastSquares(len(names), bias, True)
            for unit in dm.table.units[rank::world]:
                for block in dm.table.read(unit):
                    own(block, dm.codes(block))
            states.append(own.state())
        sink.merge(states)
    m = census.merged()
    tss = float(m.m2[-1]) if bias else float(m.m2[-1] + m.count * m.mean[-1] ** 2)
    return sink.report(names, tss)[0]


def _assert_reports_agree(got: dict, want: dict, rel: float) -> None:
    for key in ("n", "df_model", "df_resid", "rank"):
        assert got[key] == want[key], key
    for key in ("ssr", "sigma", "r2", "adjusted_r2", "f_statistic", "log_likelihood", "aic",
                "bic", "condition_number"):
        assert got[key] == pytest.approx(want[key], rel=rel), key
    for g, w in zip(got["coef"], want["coef"], strict=True):
        assert g["name"] == w["name"]
        for key in ("coef", "std_err", "t", "ci_low", "ci_high"):
            assert g[key] == pytest.approx(w[key], rel=rel), (g["name"], key)


@pytest.mark.parametrize("group", [250, 3])
def test_the_one_pass_fit_and_report_equal_the_in_memory_ones(tmp_path: Path, group: int):
    path = _write(tmp_path / "t", group=group)
    table = pa.concat_tables([pq.read_table(f) for f in sorted(path.iterdir())])
    names = ["a", "b", "c"]
    x = np.column_stack([table.column(n).to_numpy() for n in names])
    want = report_for(torch.from_numpy(x), torch.from_numpy(table.column("y").to_numpy()),
                      names=names)
    _assert_reports_agree(_stream_report(path, names), want, 1e-10)


@pytest.mark.parametrize("world", [2, 3])
def test_factors_folded_by_several_ranks_merge_to_one_processs_report(tmp_path: Path,
                                                                    world: int):
    """Each rank folds its own row groups into factors of its own; merged, they give one
    process's report to 1e-12 (measured: 2e-14 and closer)."""
    path = _write(tmp_path / "t", group=100)
    names = ["a", "b", "c"]
    _assert_reports_agree(_stream_report(path, names, world=world),
                          _stream_report(path, names), 1e-12)


def test_ranks_whose_rows_lie_far_apart_merge_within_the_conditioning_bound(tmp_path: Path):
    """Each rank scales its rows by its own first block, here far apart (one file's b
    near 1e4, the others' near 100), so merging carries a factor into other units. The
    merged coefficients stay within κ·ε of the in-memory solver's refined answer (κ =
    3·10⁵; measured 2.4e-12 at worst, the intercept, a difference of large terms)."""
    path = _write(tmp_path / "t", group=100)
    far = pq.read_table(path / "part-1.parquet")
    b = far.column("b").to_numpy() * 100
    y = far.column("y").to_numpy() + 0.2 * far.column("b").to_numpy() - 0.2 * b
    pq.write_table(far.set_column(2, "b", pa.array(b)).set_column(4, "y", pa.array(y)),
                   path / "part-1.parquet", row_group_size=100)
    names = ["a", "b", "c"]
    table = pa.concat_tables([pq.read_table(f) for f in sorted(path.iterdir())])
    x = np.column_stack([table.column(n).to_numpy() for n in names])
    want = report_for(torch.from_numpy(x), torch.from_numpy(table.column("y").to_numpy()),
                      names=names)
    got = _stream_report(path, names, world=3)
    bound = got["condition_number"] * np.finfo(np.float64).eps
    for g, w in zip(got["coef"], want["coef"], strict=True):
        assert abs(g["coef"] - w["coef"]) <= bound * abs(w["coef"]), g["name"]
        assert abs(g["std_err"] - w["std_err"]) <= bound * abs(w["std_err"]), g["name"]


@pytest.mark.parametrize("name", ["Longley", "Norris", "NoInt1", "NoInt2"])
def test_nist_sets_cut_into_row_groups_of_three_keep_the_certified_digits(
        tmp_path: Path, name: str):
    """NIST StRD linear sets (Longley: condition number 4.9e9 as given) fitted in one pass
    over row groups of 3 rows, against the certified values. Measured: coefficients
    12.6 (Norris, whose intercept is a small difference of large terms) to 15.0 digits,
    standard errors and σ 13.9 to 15.1, R² 15.5 and up. The in-memory solver refines in
    double-double to 16 digits; one pass cannot refine."""
    data = NIST[name]
    x = np.array(data["x"], dtype=np.float64).reshape(len(data["y"]), -1)
    names = [f"x{j + 1}" for j in range(x.shape[1])]
    folder = tmp_path / name
    folder.mkdir()
    pq.write_table(pa.table({**{n: x[:, j] for j, n in enumerate(names)},
                             "y": np.array(data["y"], dtype=np.float64)}),
                   folder / "t.parquet", row_group_size=3)
    got = _stream_report(folder, names, bias=data["intercept"])
    coef = [row["coef"] for row in got["coef"]]
    se = [row["std_err"] for row in got["coef"]]
    beta, sd = data["beta"], data["sd"]
    if data["intercept"]:  # certified values list the constant first too
        assert got["coef"][0]["name"] == "const"

    def digits(a: float, b: float) -> float:
        return 16.0 if a == b else -np.log10(abs(a - b) / abs(b))

    assert min(digits(a, b) for a, b in zip(coef, beta, strict=True)) >= 12
    assert min(digits(a, b) for a, b in zip(se, sd, strict=True)) >= 13
    assert digits(got["sigma"], data["sigma"]) >= 13
    assert digits(got["r2"], data["r2"]) >= 15


def test_a_bad_cell_in_the_third_file_is_named_by_file_row_group_and_row(tmp_path: Path):
    path = _write(tmp_path / "t", bad=(2, 310))
    with pytest.raises(DataError) as caught:
        StreamedDataModule(str(path), target="y").take_census()
    assert str(caught.value) == (f"{path / 'part-2.parquet'}, row group 1, row 311, "
                                 "column 'y': 'nan' is not a finite number")


def test_files_with_other_columns_and_no_files_are_refused(tmp_path: Path):
    path = _write(tmp_path / "t")
    pq.write_table(pa.table({"a": [1.0], "y": [2.0]}), path / "part-9.parquet")
    with pytest.raises(DataError, match=r"part-9.parquet: its columns \['a', 'y'\] differ"):
        StreamedDataModule(str(path), target="y")
    with pytest.raises(DataError, match=r"part-9.parquet: no column 'id' \(the file has: a"):
        StreamedDataModule(str(path), target="y", features=["id", "a"])
    with pytest.raises(DataError, match=r"data\.path: the glob .* matches no file"):
        StreamedDataModule(str(tmp_path / "none-*.parquet"), target="y")


def test_a_csv_file_streams_like_its_parquet_twin(tmp_path: Path):
    path = _write(tmp_path / "t", sizes=(600,))
    table = pq.read_table(path / "part-0.parquet")
    csv_dir = tmp_path / "c"
    csv_dir.mkdir()
    import pyarrow.csv as pcsv

    pcsv.write_csv(table, csv_dir / "part-0.csv")
    a = _module(path, features=["id", "a"], val_fraction=0.2)
    b = _module(csv_dir, features=["id", "a"], val_fraction=0.2)
    assert np.array_equal(a.census.counts.sum(axis=0), b.census.counts.sum(axis=0))
    assert [x.tolist() for x, _ in a.val_dataloader()] == [
        x.tolist() for x, _ in b.val_dataloader()]


def test_train_exact_eval_and_predict_through_the_commands(tmp_path: Path):
    path = _write(tmp_path / "parts")
    base = [f"data.path={path}", "data.target=y", "data.features=[a,b,c]",
            "logger=none", "callbacks=none"]
    out = run_cli([script("reglab-train"), "data=stream", "optimizer=exact",
                   f"hydra.run.dir={tmp_path / 'exact'}", *base], cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    record = json.loads((tmp_path / "exact" / "metrics.json").read_text())
    report = record["closed_form"]["report"]
    assert [round(r["coef"], 1) for r in report["coef"]] == [3.0, 1.5, -0.2, 4.0]
    assert record["test"]["r2"] > 0.99
    out = run_cli([script("reglab-train"), "data=stream", "trainer.max_epochs=2",
                   f"hydra.run.dir={tmp_path / 'sgd'}", *base], cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    sgd = json.loads((tmp_path / "sgd" / "metrics.json").read_text())
    # ~2,240 training rows, fewer than data.batch_size (4096): one batch an epoch.
    assert sgd["status"] == "completed" and sgd["steps"] == 2

    out = run_cli([script("reglab-eval"), f"ckpt_path={tmp_path / 'exact' / 'model.pt'}",
                   f"hydra.run.dir={tmp_path / 'ev'}"], cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    ev = json.loads((tmp_path / "ev" / "eval_metrics.json").read_text())
    assert ev["split"] == "test" and 0.15 * sum(SIZES) < ev["rows"] < 0.25 * sum(SIZES)
    assert ev["metrics"]["mse"] == pytest.approx(record["test"]["mse"], rel=1e-6)
    # A table the run did not train on (data.path given) is scored whole, and says so.
    out = run_cli([script("reglab-eval"), f"ckpt_path={tmp_path / 'exact' / 'model.pt'}",
                   f"data.path={path / 'part-3.parquet'}", f"hydra.run.dir={tmp_path / 'ev2'}"],
                  cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    ev = json.loads((tmp_path / "ev2" / "eval_metrics.json").read_text())
    assert ev["split"] == "all" and ev["rows"] == SIZES[3] and "did not train on" in \
        ev["split_why"]

    for name in ("pred.parquet", "pred.csv"):
        out = run_cli([script("reglab-predict"), f"ckpt_path={tmp_path / 'exact' / 'model.pt'}",
                       f"input_path={path}/*.parquet", f"output_path={tmp_path / name}"],
                      cwd=tmp_path)
        assert out.returncode == 0, out.stderr[-3000:]
        assert f"{sum(SIZES)} predictions written" in out.stdout
    pred = pq.read_table(tmp_path / "pred.parquet")
    assert pred.column_names == ["a", "b", "c", "y_predicted"]
    truth = pa.concat_tables([pq.read_table(f) for f in sorted(path.iterdir())])
    err = pred.column("y_predicted").to_numpy() - truth.column("y").to_numpy()
    assert float(np.sqrt(np.mean(err ** 2))) < 0.2
    assert not list(tmp_path.glob(".pred*"))  # no temporary left


def test_a_bad_cell_through_the_command_is_one_line_and_exit_2(tmp_path: Path):
    path = _write(tmp_path / "parts", bad=(2, 5))
    out = run_cli([script("reglab-train"), "data=stream", f"data.path={path}",
                   "data.target=y", "logger=none", f"hydra.run.dir={tmp_path / 'r'}"],
                  cwd=tmp_path)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines()[-1].endswith(
        "part-2.parquet, row group 0, row 6, column 'y': 'nan' is not a finite number")


def test_k_fold_cross_validation_in_the_one_pass_equals_each_folds_own_fit(
        tmp_path: Path, run_train):
    """data.folds=3 with optimizer=exact: each training row's fold follows from its row
    number and the seed; fold k solved from the other folds' merged factors equals a
    least-squares fit of those rows (numpy), scored on fold k's rows."""
    path = _write(tmp_path / "parts")
    metrics, _ = run_train("data=stream", f"data.path={path}", "data.target=y",
                           "data.features=[a,b,c]", "data.standardize=false",
                           "data.val_fraction=0", "data.folds=3", "optimizer=exact",
                           "seed=5", "logger=none", "callbacks.plots=null")
    table = pa.concat_tables([pq.read_table(f) for f in sorted(path.iterdir())])
    rows = np.arange(table.num_rows)
    train = row_split.split_codes(rows, 5, 0.0, 0.2) == row_split.TRAIN
    fold = row_split.fold_codes(rows, 5, 3)
    x = np.column_stack([np.ones(table.num_rows)] +
                        [table.column(n).to_numpy() for n in ("a", "b", "c")])
    y = table.column("y").to_numpy()
    cv = metrics["cv"]
    assert cv["folds"] == 3 and cv["rows"] == int(train.sum())
    for k in range(3):
        fit, held = train & (fold != k), train & (fold == k)
        beta = np.linalg.lstsq(x[fit], y[fit], rcond=None)[0]
        assert cv["train_loss"][k] == pytest.approx(
            np.mean((x[fit] @ beta - y[fit]) ** 2), rel=1e-10)
        assert cv["val_loss"][k] == pytest.approx(
            np.mean((x[held] @ beta - y[held]) ** 2), rel=1e-10)
    assert cv["val_loss_mean"] == pytest.approx(np.mean(cv["val_loss"]))


def test_window_slots_that_do_not_fit_in_shared_memory_are_one_line(tmp_path: Path,
                                                                    monkeypatch):
    """/dev/shm is 64 MB in a default container: the worker's ring not fitting there is
    said in one line with what to change, not a traceback from torch."""
    dm = _module(_write(tmp_path / "t"))

    def full(self):
        raise RuntimeError("unable to write to file </torch_1_2_3>: No space left on device (28)")

    monkeypatch.setattr(torch.Tensor, "share_memory_", full)
    with pytest.raises(DataError, match=r"^data.workers: the loader worker's 4 window slots "
                       r"\(0 MB\) do not fit in shared memory \(unable to write to file "
                       r"</torch_1_2_3>: No space left on device \(28\)\); use "
                       r"data.workers=0 \(a thread\) or a smaller data.shuffle_rows$"):
        next(StreamedBatches(dm, 0, 1, shuffle=True).minibatches(0))
    dm.workers = 0  # a thread needs no shared memory
    assert next(StreamedBatches(dm, 0, 1, shuffle=True).minibatches(0))[0].shape[0] == 64


@pytest.mark.parametrize("data", [["data=stream", "data.target=y"],
                                  ["data=csv", "data.source.target=y"]])
def test_folds_without_the_exact_fit_are_refused_for_any_table(tmp_path: Path, data):
    """data.folds fits each fold exactly, in memory or streamed: with a gradient
    optimizer it is one line and exit 2, before anything is read or written."""
    path = _write(tmp_path / "parts")
    where = (f"data.path={path}" if data[0] == "data=stream"
             else f"data.source.path={path / 'part-0.parquet'}")
    out = run_cli([script("reglab-train"), *data, where, "data.folds=3",
                   "data.val_fraction=0", f"hydra.run.dir={tmp_path / 'r'}"], cwd=tmp_path)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines()[-1] == (
        "reglab-train: error: data.folds: k-fold cross-validation fits each fold exactly; "
        "add optimizer=exact (a gradient fit per fold is not supported), or drop "
        "data.folds=3")
    assert not (tmp_path / "r").exists()


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("terminal", [True, False])
def test_the_census_and_validation_show_a_bar_on_a_terminal_only(tmp_path: Path, monkeypatch,
                                                   terminal: bool):
    """The pass before the first epoch and each validation (minutes on a large table)
    show their rows on a terminal; a pipe or a log file gets no bar."""
    import reglab.data.streamed as streamed

    monkeypatch.setattr(streamed, "BAR_DELAY", 0)  # the bar waits 0.5 s otherwise
    err = _Terminal() if terminal else io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    dm = _module(_write(tmp_path / "t"))
    rows = sum(len(x) for x, _ in dm.val_dataloader())
    shown = err.getvalue()
    if terminal:
        assert "census: reading every row once" in shown and "/3.20k" in shown
        assert "validation: reading the table" in shown and f"/{rows} " in shown
    else:
        assert shown == ""


def test_a_value_beyond_float32_once_scaled_is_named_before_training(tmp_path: Path):
    """1e39 is finite as read but not in float32: refused by its cell before any batch
    (the census knows each unit's extremes), with the setting that helps; under
    trainer.precision=64-true the same table trains."""
    path = _write(tmp_path / "parts")
    third = pq.read_table(path / "part-2.parquet")
    b = third.column("b").to_numpy().copy()
    b[260] = 1e39
    pq.write_table(third.set_column(2, "b", pa.array(b)), path / "part-2.parquet",
                   row_group_size=250)
    base = [script("reglab-train"), "data=stream", f"data.path={path}", "data.target=y",
            "data.standardize=false", "logger=none", "trainer.max_epochs=1"]
    out = run_cli([*base, f"hydra.run.dir={tmp_path / 'r'}"], cwd=tmp_path)
    assert out.returncode == 2, out.stderr[-2000:]
    assert out.stderr.strip().splitlines()[-1].endswith(
        "part-2.parquet, row group 1, row 261, column 'b': 1e+39 is beyond float32's range "
        "as the model sees it; use data.standardize=true or trainer.precision=64-true")
    assert not (tmp_path / "r").exists()
    out = run_cli([*base, "trainer.precision=64-true", "optimizer.lr=1e-90",
                   f"hydra.run.dir={tmp_path / 'r64'}"], cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]


@pytest.mark.slow
def test_two_nodes_each_read_their_half_and_match_one_process(tmp_path: Path, run_train):
    """trainer.num_nodes=2 over 4 Parquet files, one process per "node" as SLURM or
    torchrun starts them: each rank takes the census of half the row groups and trains on
    its own lanes; the run equals one process given the same two lanes."""
    path = _write(tmp_path / "parts", group=100)
    data = ["data=stream", f"data.path={path}", "data.target=y", "data.features=[a,b,c]",
            "data.batch_size=64", "trainer.max_epochs=2", "callbacks.plots=null"]
    run_dir = tmp_path / "ddp"
    two_nodes([*data, f"hydra.run.dir={run_dir}"], tmp_path)
    ddp = json.loads((run_dir / "metrics.json").read_text())
    units = 7 + 11 + 5 + 9
    stream = ddp["streamed"]
    assert ddp["world_size"] == 2 and stream["units"] == units and stream["lanes"] == 2
    assert stream["units_read"]["census"] == units // 2  # every other row group
    epochs = 2
    assert stream["units_read"]["train"] <= epochs * (units // 2 + 2)  # its own stretch
    single, _ = run_train(*data, "data.lanes=2", "logger=none")
    assert ddp["steps"] == single["steps"] == epochs * stream["batches_per_epoch"]
    assert ddp["rows"] == single["rows"]
    for got, want in zip(ddp["params"]["weight"][0], single["params"]["weight"][0],
                         strict=True):
        assert got == pytest.approx(want, rel=1e-5)
    assert ddp["params"]["bias"] == pytest.approx(single["params"]["bias"], rel=1e-5)
    for key in ("mse", "mae", "r2"):  # each rank scored its half; the sums were reduced
        assert ddp["test"][key] == pytest.approx(single["test"][key], rel=1e-5)
    assert ddp["val_loss"] == pytest.approx(single["val_loss"], rel=1e-5)



@pytest.mark.slow
def test_two_nodes_fit_exactly_each_from_half_the_row_groups(tmp_path: Path, run_train):
    """optimizer=exact on two "nodes": each rank folds the row groups of its census (half
    of them, counted) and the factors merge across the ranks; the fit, its report and its
    figures equal one process's to 1e-12."""
    path = _write(tmp_path / "parts", group=100)
    data = ["data=stream", f"data.path={path}", "data.target=y", "data.features=[a,b,c]",
            "optimizer=exact", "callbacks.plots=null"]
    run_dir = tmp_path / "ddp"
    two_nodes([*data, f"hydra.run.dir={run_dir}"], tmp_path)
    ddp = json.loads((run_dir / "metrics.json").read_text())
    assert ddp["world_size"] == 2
    assert ddp["streamed"]["units_read"]["census"] == (7 + 11 + 5 + 9) // 2
    single, _ = run_train(*data, "logger=none")
    assert "units_read" in single["streamed"] and single["world_size"] == 1
    got, want = ddp["closed_form"], single["closed_form"]
    assert got["report"]["n"] == want["report"]["n"]
    for g, w in zip(got["report"]["coef"], want["report"]["coef"], strict=True):
        for key in ("coef", "std_err"):
            assert g[key] == pytest.approx(w[key], rel=1e-12), (g["name"], key)
    for key in ("train_loss", "val_loss"):
        assert got[key] == pytest.approx(want[key], rel=1e-12), key
    for a, b in zip(ddp["params"]["weight"][0], single["params"]["weight"][0], strict=True):
        assert a == pytest.approx(b, rel=1e-12)
    assert ddp["val_loss"] == pytest.approx(single["val_loss"], rel=1e-12)
    for key in ("mse", "mae", "r2"):  # each rank scored its half; the sums were reduced
        assert ddp["test"][key] == pytest.approx(single["test"][key], rel=1e-12), key

KILLER = """
import os, signal
import pytorch_lightning as pl


class Killer(pl.Callback):
    def __init__(self, path, step):
        self.path, self.step = path, step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.step and not os.path.exists(self.path):
            trainer.save_checkpoint(self.path)
            os.kill(os.getpid(), signal.SIGKILL)
"""


@pytest.mark.slow
def test_kill_9_mid_epoch_then_resume_matches_an_uninterrupted_streamed_run(
        tmp_path: Path, run_train):
    """A checkpoint written part-way through epoch 2, then kill -9: a fit started from it
    serves the streamed batches that were next and ends bit for bit where an uninterrupted
    fit ends; so does resume= of the killed run (from its last epoch-end checkpoint)."""
    path = _write(tmp_path / "parts", sizes=(1500, 1100), group=300)
    (tmp_path / "killer.py").write_text(KILLER)
    data = ["data=stream", f"data.path={path}", "data.target=y", "data.batch_size=32",
            "data.shuffle_rows=200", "trainer.max_epochs=4", "logger=none",
            "callbacks.progress_bar=null", "callbacks.plots=null"]
    steps = round(2600 * 0.7) // 32  # about 56 batches an epoch
    mid = tmp_path / "mid.ckpt"
    cut = tmp_path / "cut"
    out = run_cli([script("reglab-train"), *data, f"hydra.run.dir={cut}",
                   "+callbacks.killer._target_=killer.Killer", f"+callbacks.killer.path={mid}",
                   f"+callbacks.killer.step={steps + 20}"], cwd=tmp_path,
                  env={"PYTHONPATH": str(tmp_path)})
    assert out.returncode in (-9, 137), out.stderr[-3000:]
    assert not (cut / "metrics.json").exists()
    saved = torch.load(mid, weights_only=True)
    assert saved["epoch"] == 1 and saved["global_step"] == steps + 20  # inside epoch 2

    straight, _ = run_train(*data)
    again = tmp_path / "again"
    out = run_cli([script("reglab-train"), *data, f"ckpt_path={mid}",
                   f"hydra.run.dir={again}"], cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    resumed = json.loads((again / "metrics.json").read_text())
    assert resumed["status"] == "completed" and resumed["steps"] == straight["steps"]
    assert resumed["params"] == straight["params"]  # bit for bit

    out = run_cli([script("reglab-train"), f"resume={cut}"], cwd=tmp_path,
                  env={"PYTHONPATH": str(tmp_path)})
    assert out.returncode == 0, out.stderr[-3000:]
    assert json.loads((cut / "metrics.json").read_text())["params"] == straight["params"]
