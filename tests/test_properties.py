"""Property tests: random malformed tables and random config values, through Hydra's
compose API into the same ``checks.check`` and ``train`` the command runs.

Only two outcomes are allowed. Either reglab refuses with one line (exit 2 on the
command line) and the user's file is untouched, or it completes and its numbers are
right: the least-squares fit it records equals one solved here, independently, from the
table as Python's own ``csv`` module reads it.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import compose_config
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from reglab import errors
from reglab.config import checks

pytestmark = pytest.mark.slow

#: Cells that are not plain finite numbers, and numbers float32 cannot hold.
BAD_CELLS = ["", " ", "nan", "NaN", "inf", "-inf", "x", "1e39", "-1e300", "0x10", "1_0",
             "1,5", "2.5.1", "--1", "١"]
FAULTS = ["duplicate_name", "missing_target", "bad_cell", "short_row", "long_row",
          "latin1_byte", "bom", "blank_line", "wrong_delimiter", "semicolons", "tabs",
          "quoted_numbers", "huge_field", "header_only", "empty_file"]

#: Each example runs a real fit (about a second): a fixed set of examples, no shrinking
#: (a failure prints the table or values that failed, already small).
SETTINGS = settings(max_examples=30, deadline=None, derandomize=True,
                    phases=[Phase.explicit, Phase.generate], print_blob=False,
                    suppress_health_check=[HealthCheck.function_scoped_fixture,
                                           HealthCheck.too_slow])


@st.composite
def tables(draw: st.DrawFn) -> dict[str, Any]:
    """A small two-feature table, clean or with up to three faults, as bytes."""
    rows = draw(st.integers(4, 24))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    x = rng.normal(size=(rows, 2)) * draw(st.sampled_from([1.0, 1e-3, 1e4]))
    y = x @ [3.0, -1.0] + 0.5 + 0.1 * rng.normal(size=rows)
    header = ["a", "b", "y"]
    cells = [[repr(float(v)) for v in (*r, t)] for r, t in zip(x.tolist(), y.tolist(),
                                                                 strict=True)]
    faults = draw(st.lists(st.sampled_from(FAULTS), max_size=3, unique=True))
    sep, given_sep, encoding, prefix, blank = ",", ",", "utf-8", b"", False
    for fault in faults:
        row = draw(st.integers(0, rows - 1))
        col = draw(st.integers(0, 2))
        if fault == "duplicate_name":
            header[1] = draw(st.sampled_from(["a", "y"]))
        elif fault == "missing_target":
            header[2] = "z"
        elif fault == "bad_cell":
            cells[row][col] = draw(st.sampled_from(BAD_CELLS))
        elif fault == "short_row":
            cells[row] = cells[row][:-1]
        elif fault == "long_row":
            cells[row] = [*cells[row], "1.0"]
        elif fault == "latin1_byte":
            header[0], encoding = "\u00e9", "latin-1"
        elif fault == "bom":
            prefix = b"\xef\xbb\xbf"
        elif fault == "blank_line":
            blank = True
        elif fault == "wrong_delimiter":
            sep = ";"
        elif fault == "semicolons":
            sep = given_sep = ";"
        elif fault == "tabs":
            sep = given_sep = "\t"
        elif fault == "quoted_numbers":
            cells[row] = [f'"{c}"' for c in cells[row]]
        elif fault == "huge_field":
            cells[row][col] = "1" * 140_000
    lines = [sep.join(header)] + [sep.join(r) for r in cells]
    if blank:
        lines.insert(2, "")
    if "header_only" in faults:
        lines = lines[:1]
    text = "\n".join(lines) + "\n"
    data = b"" if "empty_file" in faults else prefix + text.encode(encoding,
                                                                    errors="replace")
    return {"bytes": data, "delimiter": given_sep, "faults": faults}


def strict_parse(data: bytes, delimiter: str
                 ) -> tuple[list[str], np.ndarray, np.ndarray] | None:
    """The table as a careful reader takes it: UTF-8, unique names, every row three finite
    numbers; ``None`` where it is not a table of numbers."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        return None
    try:
        rows = [r for r in csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
                if r and any(c.strip() for c in r)]
    except csv.Error:  # a field over csv's size limit: no number is that long
        return None
    if len(rows) < 2 or len(set(rows[0])) != len(rows[0]) or "y" not in rows[0]:
        return None
    header, body = rows[0], rows[1:]
    values = []
    for r in body:
        if len(r) != len(header):
            return None
        try:
            numbers = [float(c) for c in r]
        except ValueError:
            return None
        # Python's float() also takes '1_0' and other scripts' digits: a table does not.
        if not all(math.isfinite(v) for v in numbers) or not all(
                c.isascii() and "_" not in c for c in r):
            return None
        values.append(numbers)
    table = np.array(values, dtype=np.float64)
    j = header.index("y")
    return [n for n in header if n != "y"], np.delete(table, j, axis=1), table[:, j]


def _refused(exc: BaseException, name: str) -> None:
    """A refusal a user can act on: one line, naming the file or the key."""
    text = str(exc)
    assert "\n" not in text.strip(), text
    assert name in text or "data." in text, text


@settings(SETTINGS, max_examples=40)
@given(table=tables(), precision=st.sampled_from(["32-true", "64-true"]))
def test_any_table_is_refused_in_one_line_or_fitted_exactly(tmp_path: Path,
                                                            table: dict[str, Any],
                                                            precision: str):
    from reglab.cli.train import train

    path = tmp_path / "t.csv"
    path.write_bytes(table["bytes"])
    before = sorted(p.name for p in tmp_path.iterdir())
    run_dir = tmp_path / f"run-{len(before)}"
    overrides = ["data=csv", f"data.source.path={path}", "data.source.target=y",
                 "data.val_fraction=0", "data.test_fraction=0", "optimizer=exact",
                 f"trainer.precision={precision}", "logger=none", "callbacks=none"]
    expected = strict_parse(table["bytes"], table["delimiter"])
    try:
        cfg = compose_config(overrides, run_dir)
        cfg.data.source.delimiter = table["delimiter"]  # a tab, without the CLI's quoting
        checks.check(cfg)
        metrics = train(cfg)
    except errors.ReglabError as exc:
        _refused(exc, "t.csv")
        assert path.read_bytes() == table["bytes"]  # the user's file is never rewritten
        # A table a careful reader accepts may only be refused for what the model cannot
        # represent or solve, never for its format.
        assert expected is None or "range" in str(exc) or "rows" in str(exc), \
            (table["faults"], str(exc))
        return
    assert path.read_bytes() == table["bytes"]
    assert expected is not None, f"{table['faults']}: accepted a table that is not one"
    assert metrics["status"] == "completed"
    names, x, y = expected
    design = np.column_stack([np.ones(len(y)), x])
    ours = metrics["closed_form"]["params_data_units"]
    mine = np.array([ours["const"], *(ours[n] for n in names)])
    best = np.linalg.lstsq(design, y, rcond=None)[0]
    if np.linalg.cond(design) < 1e6:
        np.testing.assert_allclose(mine, best, rtol=1e-8, atol=1e-8 * np.abs(best).max())
    # Whatever the conditioning, its fit is at least as good as numpy's.
    sse = float(np.sum((y - design @ mine) ** 2))
    assert sse <= float(np.sum((y - design @ best) ** 2)) * (1 + 1e-8) + 1e-300


#: Values for keys of the default experiment: good ones, and each way one can be bad.
CONFIG_VALUES = {
    "optimizer.lr": ["0.01", "0.001", "0", "-1", "nan", "inf", "abc", "[1]", "null"],
    "optimizer.weight_decay": ["0", "0.001", "-0.1", "nan", "'x'"],
    "optimizer.momentum": ["0", "0.5", "-1", "nan"],
    "data.batch_size": ["2", "null", "0", "-3", "1.5", "'big'", "true"],
    "data.val_fraction": ["0", "0.2", "-0.1", "1", "1.5", "nan"],
    "data.test_fraction": ["0", "0.3", "1", "2", "inf"],
    "trainer.max_epochs": ["1", "3", "0", "-5", "2.5", "'x'", "true"],
    "trainer.check_val_every_n_epoch": ["1", "2", "0", "-1", "false"],
    "trainer.precision": ["32-true", "64-true", "7", "'fp8'"],
    "seed": ["0", "7", "4294967295", "4294967296", "-1", "1.5", "'s'", "true"],
    "loss.reduction": ["mean", "sum", "avg", "null"],
}


@settings(SETTINGS, max_examples=25)
@given(chosen=st.dictionaries(st.sampled_from(sorted(CONFIG_VALUES)), st.integers(0, 99),
                              min_size=1, max_size=3))
def test_any_config_value_is_refused_in_one_line_or_runs_right(tmp_path: Path,
                                                               chosen: dict[str, int]):
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from reglab.cli.train import train

    values = {k: CONFIG_VALUES[k][i % len(CONFIG_VALUES[k])] for k, i in chosen.items()}
    overrides = [f"{k}={v}" for k, v in values.items()]
    run_dir = tmp_path / f"run-{len(list(tmp_path.iterdir()))}"
    try:
        cfg = compose_config(["trainer.max_epochs=2", "logger=none", "callbacks=none",
                              *overrides], run_dir)
        checks.check(cfg)
        metrics = train(cfg)
    except (HydraException, OmegaConfBaseException) as exc:  # Hydra's own refusal
        assert any(k.split(".")[-1] in str(exc) for k in values), str(exc)
        return
    except errors.ReglabError as exc:
        text = str(exc)
        assert "\n" not in text.strip(), text
        assert any(k in text or k.split(".")[0] in text for k in values), (overrides, text)
        return
    # Accepted: the run did what the values say, and its record is right.
    assert metrics["status"] == "completed", (overrides, metrics["status"])
    epochs = int(values.get("trainer.max_epochs", 2))
    assert metrics["epochs"] == epochs, overrides
    # The record holds what was asked, in the type asked (true is never a batch size).
    import yaml

    for key, field in (("data.batch_size", "batch_size"), ("trainer.max_epochs",
                                                           "max_epochs"), ("seed", "seed")):
        if key in values:
            asked = yaml.safe_load(values[key])
            assert metrics["hparams"][field] == asked, (overrides, metrics["hparams"])
            assert type(metrics["hparams"][field]) is type(asked), overrides
    assert math.isfinite(metrics["train_loss"])
    # data=line is y = 2x + 1 exactly: the least-squares reference must say so (with
    # weight decay it is the ridge optimum instead, checked in test_tables).
    if float(values.get("optimizer.weight_decay", 0)) > 0:
        return
    params = metrics["closed_form"]["params"]
    assert np.ravel(params["weight"]).tolist() == pytest.approx([2.0], abs=1e-9), overrides
    assert params["bias"] == pytest.approx(1.0, abs=1e-8), overrides
