"""A trained model's predictions for inline rows or a table (reglab-predict).

Inputs are taken in the data's own units; the model's stored scaling is applied around
it, and each input is checked in the model's precision first. Output files are written
whole or not at all (temp file, then rename).
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from reglab import errors, startup
from reglab.config import checks
from reglab.run_files import write_whole


def _check_output_path(path: Path, input_path: Path, overwrite: bool) -> None:
    """An output file can be written there: not a directory, no file in the way, not the
    input, and no file of the user's replaced unless ``overwrite=true`` says so."""
    if path.exists() and input_path.exists() and path.samefile(input_path):
        raise errors.ConfigError(f"output_path: {path} is the input table itself; name "
                                 "another file")
    if path.is_symlink() or (path.exists() and not path.is_dir()):
        if not overwrite:
            raise errors.ConfigError(f"output_path: {path} already exists; name another "
                                     "file, or replace it with overwrite=true")
        if path.is_symlink():
            raise errors.ConfigError(f"output_path: {path} is a link; name the file itself")
    if path.is_dir():
        raise errors.ConfigError(f"output_path: {path} is a directory; name a file in it, "
                                   "e.g. output_path=" + str(path / "predictions.csv"))
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise errors.ConfigError(f"output_path: {parent} is a file, not a folder")
            break


def _inline_rows(x: Any, width: int) -> list[list[float]]:
    """``x`` as rows of ``width`` numbers: [[1, 2]] or, for one input, [1, 2, 3]."""
    values = OmegaConf.to_container(x) if isinstance(x, ListConfig) else x
    if isinstance(values, (int, float)) and not isinstance(values, bool):
        values = [values]
    if not isinstance(values, list) or not values:
        raise errors.ConfigError(f"x: expected a list of rows such as [[4.0]], got {x!r}")
    if width == 1 and all(isinstance(v, (int, float)) for v in values):
        values = [[v] for v in values]
    for i, row in enumerate(values):
        if not isinstance(row, list) or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in row):
            raise errors.ConfigError(f"x: row {i} is {row!r}; expected a list of numbers")
        if len(row) != width:
            raise errors.ConfigError(f"x: row {i} has {len(row)} values, but the model "
                                       f"takes {width} per row")
        for v in row:
            if not math.isfinite(v):
                raise errors.ConfigError(f"x: row {i} holds {v!r}; expected a finite number")
    return [[float(v) for v in row] for row in values]


def _check_representable(x: Any, trained: Any, names: list[str], where: str,
                         first: int) -> None:
    """Inputs that are finite as given but not once scaled and cast to the model's dtype
    (1e39 for a float32 model) would give an infinite or silently clipped prediction:
    named by row and column instead. A float64 model takes them as they are."""
    import torch

    param = next(iter(trained.model.parameters()), None)
    dtype = param.dtype if param is not None and param.is_floating_point() else x.dtype
    z = trained.scaling.x(x).to(dtype)
    bad = (~torch.isfinite(z)).nonzero()
    if len(bad):
        row, col = (int(v) for v in bad[0])
        name = names[col] if col < len(names) else str(col)
        raise errors.DataError(
            f"{where.format(row + first)}, column {name!r}: {float(x[row, col]):g} is beyond "
            f"{str(dtype).removeprefix('torch.')}'s range once scaled; this model cannot "
            "take it (a model trained with trainer.precision=64-true can)")


def _row_width(x: Any) -> int:
    """The number of values in the first inline row (1 for a plain list of numbers)."""
    values = OmegaConf.to_container(x) if isinstance(x, ListConfig) else x
    first = values[0] if isinstance(values, list) and values else None
    return len(first) if isinstance(first, list) else 1


def unique_columns(columns: list[str], taken: list[str]) -> list[str]:
    """``columns`` with a suffix (``_2``, ``_3``…) on any name ``taken`` already holds, so
    the output's header stays readable as a table (no name twice)."""
    used = set(taken)
    out = []
    for name in columns:
        new, n = name, 1
        while new in used:
            n += 1
            new = f"{name}_{n}"
        used.add(new)
        out.append(new)
    return out


def _shortest(out: Any, dtype: Any) -> list[list[str]]:
    """Each prediction as the shortest text that reads back as the same number in the
    model's own precision: a float32 model's 0.1 is ``0.1``, not float64's expansion of
    it (``0.10000000149011612``), and a float64 model keeps all its digits."""
    import numpy as np
    import torch

    kind = np.float64 if dtype == torch.float64 else np.float32
    return [[str(kind(v)) for v in row] for row in out.detach().double().cpu().numpy()]


def _write_csv(input_path: Path, output_path: Path, columns: list[str],
               preds: list[list[str]], delimiter: str) -> list[str]:
    """The input's rows, every column kept, with one prediction column per target; the
    names of those columns, made unique against the input's header."""
    from reglab.data.tables import read_rows

    header, rows = read_rows(input_path, delimiter)
    wanted, columns = columns, unique_columns(columns, header)
    for was, now in zip(wanted, columns, strict=True):
        if was != now:
            print(f"reglab-predict: {input_path} already has a column {was}; the "
                  f"predictions are in {now}")
    if len(rows) != len(preds):  # cannot happen for a file that read cleanly
        raise errors.DataError(f"{input_path}: {len(rows)} rows but {len(preds)} predictions")
    output_path.parent.mkdir(parents=True, exist_ok=True)
    def write(tmp: Path) -> None:  # a full disk, a signal: no half-written file left
        with tmp.open("w", newline="") as handle:
            writer = csv.writer(handle, delimiter=delimiter)
            writer.writerow([*header, *columns])
            for row, pred in zip(rows, preds, strict=True):
                writer.writerow([*row, *pred])

    write_whole(output_path, write)
    return columns


def predict(cfg: DictConfig) -> list[Any]:
    """Predictions for ``cfg.x`` or the rows of ``cfg.input_path``."""
    if OmegaConf.is_missing(cfg, "ckpt_path"):
        raise errors.ConfigError("ckpt_path: required; add ckpt_path=<run dir>/model.pt")
    if (cfg.x is None) == (cfg.input_path is None):
        raise errors.ConfigError("x / input_path: give exactly one, e.g. x='[[4.0]]' or "
                                   "input_path=rows.csv")
    if cfg.output_path is not None and cfg.input_path is None:
        raise errors.ConfigError("output_path: needs input_path (inline x is printed)")
    if cfg.output_path is not None:
        _check_output_path(Path(cfg.output_path), Path(cfg.input_path),
                           checks.check_overwrite(cfg))
    ckpt_path = Path(cfg.ckpt_path).expanduser()
    if not ckpt_path.is_file():
        raise errors.ReglabError(f"ckpt_path: {ckpt_path}: no such file")
    delimiter = checks.delimiter(cfg.delimiter, "delimiter")

    with startup.heavy_imports():  # a command's first import of torch
        import torch

        from reglab.artifacts import read_trained

    trained = read_trained(ckpt_path, cfg.get("allow_modules") or ())
    width = trained.in_features
    from reglab.analysis import streamed_prediction

    if cfg.input_path is not None and streamed_prediction.wants_streaming(cfg):
        count, _ = streamed_prediction.predict(cfg, trained, delimiter)
        _say([f"reglab-predict: {count} predictions written to {cfg.output_path} "
              "(streamed a unit at a time)"])
        return []
    if cfg.x is not None:
        if width is None:  # a model of the user's own that names no width: the rows do
            width = _row_width(cfg.x)
        names = trained.features or [f"x{i}" for i in range(width)]
        x = torch.tensor(_inline_rows(cfg.x, width), dtype=torch.float64)
    else:
        from reglab.data.tables import read_inputs

        names, x = read_inputs(cfg.input_path, trained.features, delimiter)
        if width is not None and x.shape[1] != width:
            raise errors.DataError(f"{cfg.input_path}: {x.shape[1]} feature columns "
                                     f"({', '.join(names)}), but the model takes {width}")
    where = "x: row {}" if cfg.x is not None else f"{cfg.input_path}: data row {{}}"
    first = 0 if cfg.x is not None else 1  # inline rows count from 0, a file's from 1
    _check_representable(x, trained, names, where, first)
    from reglab.data.scaling import Standardized

    with torch.no_grad():
        out = Standardized(trained.model, trained.scaling).eval()(x)
    out = out.reshape(out.shape[0], -1)
    bad = (~torch.isfinite(out)).any(dim=1).nonzero()
    if len(bad):
        i = int(bad[0])
        raise errors.DataError(f"{where.format(i + first)}: the model's prediction "
                                 f"is {out[i].tolist()}, not a finite number")
    targets = trained.target if isinstance(trained.target, list) else [trained.target or "y"]
    if len(targets) != out.shape[1]:
        targets = [f"y{j}" for j in range(out.shape[1])] if out.shape[1] > 1 else ["y"]
    columns = [f"{t}_predicted" for t in targets]
    rows = out.tolist()
    held = next(trained.model.parameters(), out).dtype
    shown = _shortest(out, held)
    if cfg.output_path is not None:
        columns = _write_csv(Path(cfg.input_path), Path(cfg.output_path), columns, shown,
                             delimiter)
        lines = [f"reglab-predict: {len(rows)} predictions written to {cfg.output_path}"]
    else:
        columns = unique_columns(columns, names)
        lines = [",".join([*names, *columns]),
                 *(",".join([*(f"{v:g}" for v in row), *pred])
                   for row, pred in zip(x.tolist(), shown, strict=True))]
    _say(lines)
    # One target: a list of numbers; several: a list of rows.
    return [r[0] for r in rows] if len(columns) == 1 else rows


def _say(lines: list[str]) -> None:
    try:
        print("\n".join(lines), flush=True)
    except BrokenPipeError:
        raise  # the reader went away (`| head -1`): reglab-predict ends quietly
    except OSError as exc:  # a console that cannot take it names stdout, not "a file"
        raise OSError(exc.errno, exc.strerror, "stdout") from None
