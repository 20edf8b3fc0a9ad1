"""Scoring a trained model on a split of its own data, or of other data (reglab-eval).

The flow: model file or checkpoint → its run's saved config (+ data overrides) → data
module with the model's stored scaling → the metrics of :mod:`reglab.analysis.metrics`
→ ``eval_metrics.json``. Torch is imported only once the config has been checked.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from reglab import errors, startup
from reglab.config import checks
from reglab.run_files import EVAL_FILE, METRICS_FILE, saved_run, write_json

SPLITS = ("test", "val", "train", "all")


def run_dir_of(ckpt_path: Path) -> Path:
    """The run dir a model file or checkpoint belongs to."""
    return ckpt_path.parent.parent if ckpt_path.parent.name == "checkpoints" else ckpt_path.parent


def training_config(ckpt_path: Path, data_overrides: list[str]) -> DictConfig:
    """The config the model was trained with, its data replaced where overrides say so."""
    run_dir = run_dir_of(ckpt_path)
    saved = saved_run(run_dir)
    if saved is None or not saved["config"]:
        raise errors.ReglabError(f"ckpt_path: {ckpt_path} is not inside a reglab run dir "
                                   f"(no readable {run_dir / '.hydra' / 'config.yaml'}, and no run "
                                   "record in its metrics.json); the data to score cannot "
                                   "be rebuilt")
    cfg = OmegaConf.create(saved["config"])
    _anchor_data_path(cfg, saved.get("launch_dir"))
    if data_overrides:
        from hydra import compose

        previous = [str(o) for o in saved["overrides"]]
        # The run's own data arguments stay (data=csv, its path and target) and yours
        # apply on top, unless you pick another data option, which starts afresh.
        new_group = _overridden(data_overrides, "data")
        keep = [o for o in previous if not o.lstrip("+~").startswith(
            ("hydra", "ckpt_path", "resume")) and not (
            new_group and o.lstrip("+~").startswith("data"))]
        composed = compose(config_name="train", overrides=[*keep, *data_overrides])
        with open_dict(cfg):
            cfg.data = composed.data
    return cfg


def _anchor_data_path(cfg: DictConfig, launch_dir: str | None) -> None:
    """A relative data file path was relative to where training was launched; keep it
    working from any directory by resolving it there (Hydra records that directory)."""
    data = cfg.get("data")
    source = data.get("source") if isinstance(data, DictConfig) else None
    if not isinstance(source, DictConfig) and isinstance(data, DictConfig) and "path" in data:
        source = data  # data=stream: data.path (a file, a folder or a glob)
    path = source.get("path") if isinstance(source, DictConfig) else None
    if not isinstance(path, str) or Path(path).expanduser().is_absolute() or Path(path).exists():
        return
    if launch_dir and (glob_free := Path(launch_dir) / path) and (
            glob_free.exists() or any(c in path for c in "*?[")):
        source.path = str(glob_free)


def evaluate(cfg: DictConfig, data_overrides: list[str] | None = None) -> dict[str, Any]:
    """Score ``cfg.ckpt_path`` on ``cfg.split``, write ``eval_metrics.json`` into this
    command's run dir, and return what it holds."""
    if OmegaConf.is_missing(cfg, "ckpt_path"):
        raise errors.ConfigError("ckpt_path: required; add ckpt_path=<run dir>/model.pt")
    if cfg.split not in SPLITS:
        raise errors.ConfigError(f"split: expected one of {', '.join(SPLITS)}, "
                                   f"got {cfg.split!r}")
    ckpt_path = Path(cfg.ckpt_path).expanduser()
    if not ckpt_path.is_file():
        raise errors.ReglabError(f"ckpt_path: {ckpt_path}: no such file")
    train_cfg = training_config(ckpt_path, data_overrides or [])
    checks.check(OmegaConf.create({"data": OmegaConf.to_container(train_cfg.data),
                                     "seed": train_cfg.seed}))

    with startup.heavy_imports():  # a command's first import of torch and Lightning
        import pytorch_lightning  # noqa: F401  (the data module's, built below)
        import torch
    from hydra.utils import instantiate

    from reglab.analysis.metrics import adjusted_r2, score
    from reglab.artifacts import read_trained
    from reglab.config.parts import is_reglab_data, is_streamed
    trained = read_trained(ckpt_path, cfg.get("allow_modules") or ())
    split, why_split = str(cfg.split), None
    if (unseen := _unseen_file(train_cfg, trained, data_overrides or [])) and not _split_given():
        # Rows the run never saw: its split of them means nothing; every row is scored.
        split = "all"
        why_split = (f"every row of {unseen}, a file the run did not train on "
                     "(split=test would score only its own test split)")
    _same_table(train_cfg, trained, data_overrides or [], checks.flag(cfg, "allow_changed_data"),
                split)
    datamodule = instantiate(train_cfg.data)
    streamed = None
    if is_streamed(datamodule):  # a unit at a time: the table is never held
        datamodule.use_scaling(trained.scaling)
        num_features = datamodule.num_features
        splits = {}
        streamed = datamodule
    elif is_reglab_data(datamodule):
        datamodule.scaling = trained.scaling  # the model's own, never refitted on new data
        num_features = datamodule.prepare().num_features
        splits = datamodule.splits
        missing = (f"this data has no {split} split (test_fraction is "
                   f"{datamodule.test_fraction}); try split=all")
    else:
        defined = _defined_splits(datamodule)
        if split != "all" and split not in defined:
            raise errors.DataError(
                f"split: {type(datamodule).__qualname__} has no {split}_dataloader; "
                f"try split={' or split='.join([*defined, 'all'])}")
        splits = _loader_splits(datamodule, defined if split == "all" else [split])
        if not splits:
            raise errors.DataError(f"data: {type(datamodule).__qualname__} served no "
                                     "batches to score")
        num_features = int(next(iter(splits.values()))[0].shape[-1])
        missing = f"{type(datamodule).__qualname__}.{split}_dataloader served no batches"
    width = trained.in_features
    if width is not None and num_features != width:
        raise errors.DataError(f"data: {num_features} feature columns, but the model "
                                 f"takes {width} ({', '.join(trained.features or [])})")
    model = trained.model
    intercept = bool(getattr(model, "init_kwargs", {}).get("bias", True))
    if streamed is not None:
        from reglab.analysis.metrics import RegressionSums

        sums = RegressionSums()
        for x, y in streamed.raw_rows(split):
            score(model, x, y, trained.scaling, sums=sums)
        if sums.n == 0:
            raise errors.DataError(f"split: the {split} split of {streamed.table.files[0]} "
                                   "has no rows; try split=all")
    elif split == "all":
        parts = {id(v): v for v in splits.values()}.values()  # val may be train
        x, y = (torch.cat(t) for t in zip(*parts, strict=True))
    elif split in splits:
        x, y = splits[split]
    else:
        raise errors.DataError(f"split: {missing}")
    if streamed is None:
        sums = score(model, x, y, trained.scaling if is_reglab_data(datamodule) else None)
    targets = trained.target if isinstance(trained.target, list) else None
    metrics = sums.compute(centered=intercept, names=targets)
    # Regressors per target: a model with k outputs holds k rows of weights.
    n_params = sum(p.numel() for n, p in model.named_parameters() if "bias" not in n) // max(
        1, len(targets or [None]))
    if hasattr(model, "params"):
        metrics.update(adjusted_r2(metrics["r2"], sums.n, n_params, intercept))
    out = {
        "status": "completed",
        "ckpt_path": str(ckpt_path.resolve()),
        "run_dir": str(run_dir_of(ckpt_path).resolve()),
        "split": split,
        **({"split_why": why_split} if why_split else {}),
        "rows": sums.n,
        "data": OmegaConf.to_container(train_cfg.data, resolve=True),
        "metrics": metrics,
    }
    recorded = _recorded_report(run_dir_of(ckpt_path))
    if recorded is not None:
        out["least_squares"] = recorded
    out_dir = Path(cfg.paths.run_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / EVAL_FILE, out)
    return out


def _split_given() -> bool:
    """Whether the command line named ``split=`` (Hydra's record of it)."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return True  # called from Python: cfg.split is what was asked for
    return any(str(o).lstrip("+~").split("=", 1)[0] == "split"
               for o in HydraConfig.get().overrides.task)


def _unseen_file(cfg: DictConfig, trained: Any, overrides: list[str]) -> str | None:
    """The table ``data.source.path`` names when it is not the one the run trained on
    (another path, or the same path holding other bytes); None otherwise. A streamed
    table's ``data.path`` given on the command line counts as one the run did not see
    (its files are not fingerprinted: they may be many and large)."""
    data = cfg.get("data")
    if isinstance(data, DictConfig) and "path" in data and "source" not in data:
        return str(data.path) if _overridden(overrides, "data.path") else None
    if not _overridden(overrides, "data.source.path"):
        return None
    source = cfg.data.get("source") if isinstance(cfg.get("data"), DictConfig) else None
    path = Path(str(source.get("path"))).expanduser() if isinstance(source, DictConfig) else None
    if path is None or not path.is_file():
        return None  # the table reader names the missing file
    recorded = trained.data_file
    if recorded is None:
        return str(path)
    from reglab.data.tables import file_identity

    algorithm = "blake2b" if "blake2b" in recorded else "sha256"
    now = file_identity(path, algorithm)
    same = (now["bytes"], now[algorithm]) == (recorded.get("bytes"), recorded.get(algorithm))
    return None if same else str(path)


#: Split name → the Lightning stage its dataloader is set up for.
_STAGES = {"train": "fit", "val": "validate", "test": "test"}


def _defined_splits(datamodule: Any) -> list[str]:
    """The splits a ``LightningDataModule`` of the user's own defines a dataloader for."""
    import pytorch_lightning as pl

    return [split for split in _STAGES if getattr(type(datamodule), f"{split}_dataloader")
            is not getattr(pl.LightningDataModule, f"{split}_dataloader")]


def _loader_splits(datamodule: Any, wanted: list[str]) -> dict[str, Any]:
    """The ``wanted`` splits of such a data module as whole (x, y) tensors, read batch
    by batch from its dataloaders (set up for the stage each belongs to)."""
    import torch

    datamodule.prepare_data()
    splits: dict[str, Any] = {}
    for split in wanted:
        datamodule.setup(_STAGES[split])
        batches = [(b[0], b[1]) for b in getattr(datamodule, f"{split}_dataloader")()]
        if batches:
            splits[split] = tuple(torch.cat(t) for t in zip(*batches, strict=True))
    return splits


def _recorded_report(run_dir: Path) -> dict[str, Any] | None:
    """The least-squares report the training run recorded (its training split), if any."""
    import json

    try:
        metrics = json.loads((run_dir / METRICS_FILE).read_text())
    except (OSError, ValueError):
        return None
    closed = metrics.get("closed_form") if isinstance(metrics, dict) else None
    report = closed.get("report") if isinstance(closed, dict) else None
    return report if isinstance(report, dict) and report.get("coef") else None


def _overridden(overrides: list[str], key: str) -> bool:
    return any(o.lstrip("+~").split("=", 1)[0] == key for o in overrides)


def _same_table(cfg: DictConfig, trained: Any, overrides: list[str],
                allow_changed: bool = False, split: str = "test") -> None:
    """Score the table the model was trained on, by the columns it was trained on.

    Columns are taken by the names stored with the model, so a file with its columns in
    another order (or with more of them) gives the same figures, and a missing one is an
    error naming it. Unless ``data.source.path`` is given, the file is the one training
    read (its absolute path, not one found by the same relative name elsewhere), and it
    must still hold what training read: a changed file would silently give other rows
    and other splits than the run recorded, so it is refused unless ``allow_changed``,
    and then scored with a warning.
    """
    source = cfg.data.get("source") if isinstance(cfg.get("data"), DictConfig) else None
    if not isinstance(source, DictConfig) or "path" not in source:
        return
    with open_dict(source):
        if trained.features and not _overridden(overrides, "data.source.features"):
            source.features = list(trained.features)
        recorded = trained.data_file
        if recorded is None or _overridden(overrides, "data.source.path"):
            return
        from reglab.data.tables import file_identity

        path = Path(recorded["path"])
        if not path.is_file():
            raise errors.DataError(
                f"data.source.path: {path}, the table this model was trained on, is gone; "
                "give the file to score with data.source.path=<file>")
        algorithm = "blake2b" if "blake2b" in recorded else "sha256"  # as it was recorded
        now = file_identity(path, algorithm)
        if (now["bytes"], now[algorithm]) != (recorded.get("bytes"), recorded.get(algorithm)):
            change = (f"data.source.path: {path} changed since the run trained on it "
                      f"({now['bytes']} bytes, was {recorded.get('bytes')})")
            if not allow_changed:
                raise errors.DataError(
                    f"{change}; its rows and splits would not be the ones the run recorded. "
                    "To score what it holds now, pass allow_changed_data=true")
            print(f"reglab-eval: warning: {change}; scoring what it holds now, so the "
                  f"{'set of rows' if split == 'all' else split + ' split'} is not the "
                  "run's", file=sys.stderr)
        source.path = str(path)
