"""Checks on a composed config, run before torch or Lightning is imported.

Each problem becomes one :class:`ConfigError` line naming the key, what it holds and
what was expected, so a typo costs a second, not a traceback after a slow import.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from reglab.errors import ConfigError
from reglab.legacy import current
from reglab.models.activations import ACTIVATIONS

#: The metrics reglab's module logs, which monitors (checkpoints, early stopping,
#: ReduceLROnPlateau) can watch.
METRICS = ("train/loss", "train/loss_epoch", "val/loss")


def is_number(value: Any) -> bool:
    """A real number (bools, which are ints to Python, are not)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check(cfg: DictConfig, key: str, ok: Callable[[Any], bool], expected: str,
           optional: bool = False) -> None:
    node: Any = cfg
    for part in key.split("."):
        if not isinstance(node, DictConfig) or part not in node:
            return  # not every data set or model has every key
        node = node[part]
    if node is None and optional:
        return
    if not ok(node):
        raise ConfigError(f"{key}: expected {expected}, got {node!r}")


def flag(cfg: Any, key: str) -> bool:
    """A true/false key of a command's own config (absent: false); anything else is
    refused, never taken for true."""
    value = cfg.get(key, False)
    if not isinstance(value, bool):
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    return value


def check_overwrite(cfg: Any) -> bool:
    """``overwrite``: whether a command may replace the run (or output) it would otherwise
    refuse to write over."""
    return flag(cfg, "overwrite")


def check_launcher(hydra_cfg: Any) -> None:
    """A sweep's launcher can start jobs here: SLURM's needs ``sbatch`` on the PATH (a
    sweep refused before it makes its dir, not submitit's traceback after)."""
    import shutil

    target = str((hydra_cfg.get("launcher") or {}).get("_target_", ""))
    if "SlurmLauncher" in target and shutil.which("sbatch") is None:
        raise ConfigError("hydra/launcher=slurm: no SLURM here (sbatch is not on the PATH); "
                          "run from a SLURM login node, or run the jobs on this machine with "
                          "hydra/launcher=local or hydra/launcher=joblib")


def is_whole(value: Any, minimum: int | None = None, also: tuple[int, ...] = ()) -> bool:
    """A whole number (``True``, which is an int to Python and YAML's ``true``, is not)
    at least ``minimum``, or one of the special values ``also`` (``-1``: no limit)."""
    return isinstance(value, int) and not isinstance(value, bool) and (
        minimum is None or value >= minimum or value in also)


#: Every integer key reglab knows: (least value, special values, null allowed, what the
#: message says). One check for all of them, so no key takes ``true`` for 1.
_WHOLE_NUMBERS: dict[str, tuple[int, tuple[int, ...], bool, str]] = {
    "trainer.max_epochs": (1, (-1,), True, "a whole number >= 1, or -1 for no limit "
                           "(with max_steps or max_time)"),
    "trainer.min_epochs": (0, (), True, "a whole number >= 0, or null"),
    "trainer.max_steps": (1, (-1,), True, "a whole number >= 1, or -1 for no limit"),
    "trainer.min_steps": (0, (), True, "a whole number >= 0, or null"),
    "trainer.check_val_every_n_epoch": (1, (), True, "a whole number >= 1, or null to "
                                        "validate every val_check_interval steps"),
    "trainer.log_every_n_steps": (1, (), True, "a whole number >= 1"),
    "trainer.num_sanity_val_steps": (0, (-1,), True, "a whole number >= 0, or -1 for all"),
    "trainer.accumulate_grad_batches": (1, (), True, "a whole number >= 1"),
    "trainer.num_nodes": (1, (), True, "a whole number >= 1"),
    "trainer.reload_dataloaders_every_n_epochs": (0, (), True, "a whole number >= 0"),
    "data.batch_size": (1, (), True, "a whole number > 0, or null for full batch"),
    "data.num_workers": (0, (), True, "a whole number >= 0"),
    "data.source.num_samples": (1, (), False, "a whole number >= 1"),
    "data.source.num": (1, (), False, "a whole number >= 1"),
    "model.degree": (1, (), False, "a whole number >= 1"),
    "optimizer.max_iter": (1, (), False, "a whole number >= 1"),
    "optimizer.history_size": (1, (), False, "a whole number >= 1"),
    "scheduler.frequency": (1, (), False, "a whole number >= 1"),
    "scheduler.scheduler.step_size": (1, (), False, "a whole number >= 1"),
    "scheduler.scheduler.patience": (0, (), False, "a whole number >= 0"),
    "tuner.lr_find.num_training": (2, (), False, "a whole number >= 2"),
}

#: Integer keys of Lightning's callbacks, under any callback name.
_CALLBACK_WHOLE_NUMBERS = {
    "save_top_k": (-1, (), False, "a whole number >= -1 (-1 keeps every checkpoint)"),
    "every_n_epochs": (0, (), True, "a whole number >= 0, or null"),
    "every_n_train_steps": (0, (), True, "a whole number >= 0, or null"),
    "patience": (0, (), False, "a whole number >= 0"),
    "frames": (1, (), False, "a whole number >= 1"),
}

#: Trainer keys that take a number, whole or not (a count of batches or a fraction):
#: ``true`` is neither.
_TRAINER_NUMBERS = ("limit_train_batches", "limit_val_batches", "limit_test_batches",
                    "limit_predict_batches", "overfit_batches", "val_check_interval",
                    "gradient_clip_val")


#: Every true/false key reglab knows (with the other values it takes, if any): one check,
#: so ``test=2`` or ``data.standardize_target=yes`` is refused, not taken as true.
_BOOLEANS: dict[str, tuple[Any, ...]] = {
    "test": (), "overwrite": (), "allow_changed_data": (),
    "data.shuffle": (), "data.standardize": (), "data.standardize_target": (),
    "model.bias": (),
    "trainer.enable_model_summary": (), "trainer.enable_checkpointing": (),
    "trainer.enable_progress_bar": (), "trainer.sync_batchnorm": (),
    "trainer.benchmark": (None,), "trainer.inference_mode": (),
    "trainer.use_distributed_sampler": (), "trainer.barebones": (),
    "trainer.detect_anomaly": (), "trainer.deterministic": (None, "warn"),
}


def _check_booleans(cfg: DictConfig) -> None:
    for key, also in _BOOLEANS.items():
        if _stock(cfg, key):
            words = ["true", "false", *("null" if a is None else str(a) for a in also)]
            _check(cfg, key, lambda v, a=also: isinstance(v, bool) or v in a,
                   f"{', '.join(words[:-1])} or {words[-1]}")
    # fast_dev_run: true, or a number of batches.
    _check(cfg, "trainer.fast_dev_run", lambda v: isinstance(v, bool) or is_whole(v, 0),
           "true, false or a whole number of batches >= 0", optional=True)


def _check_whole_numbers(cfg: DictConfig) -> None:
    """The one integer check: every key of :data:`_WHOLE_NUMBERS` and every integer key of
    a stock callback or reglab's own; a number where a count goes, never a bool."""
    for key, (least, also, optional, expected) in _WHOLE_NUMBERS.items():
        if _stock(cfg, key):
            _check(cfg, key, lambda v, m=least, a=also: is_whole(v, m, a), expected,
                   optional=optional)
    for name, callback in (cfg.get("callbacks") or {}).items():
        if isinstance(callback, DictConfig) and str(callback.get("_target_", "")).startswith(
                ("pytorch_lightning.", "lightning.", "reglab.")):
            for key, (least, also, optional, expected) in _CALLBACK_WHOLE_NUMBERS.items():
                _check(cfg, f"callbacks.{name}.{key}",
                       lambda v, m=least, a=also: is_whole(v, m, a), expected,
                       optional=optional)
    for key in _TRAINER_NUMBERS:
        _check(cfg, f"trainer.{key}", lambda v: is_number(v) and math.isfinite(v) and v >= 0,
               "a number >= 0 (a whole number counts batches, a fraction a share)",
               optional=True)


_STOCK = ("reglab.", "torch.", "pytorch_lightning.", "lightning.")


def _stock(cfg: DictConfig, key: str) -> bool:
    """Whether ``key`` is an argument of reglab's, torch's or Lightning's own class: the
    nearest ``_target_`` above it names one (a class of the user's checks its own)."""
    node: Any = cfg
    owner = ""
    for part in key.split(".")[:-1]:
        if not isinstance(node, DictConfig) or part not in node:
            return False
        node = node[part]
        if isinstance(node, DictConfig) and "_target_" in node:
            owner = str(node.get("_target_", ""))
    return owner == "" or owner.startswith(_STOCK)


#: Config groups whose files override the whole config: each must be a
#: ``# @package _global_`` file, else its keys land under the group's name, unused.
GLOBAL_GROUPS = ("experiment", "hparams_search", "debug")


def _check_global_packages(cfg: DictConfig) -> None:
    """An experiment (or sweep or debug preset) file without ``# @package _global_`` at
    its top composes as ``experiment.trainer…``, which nothing reads: refused, naming the
    file, rather than a run that silently ignores it."""
    for group in GLOBAL_GROUPS:
        node = cfg.get(group)
        if not isinstance(node, DictConfig):
            continue
        name, file = _group_file(group)
        keys = ", ".join(f"{group}.{k}" for k in list(node)[:3])
        raise ConfigError(
            f"{group}={name or '?'}: {file or 'its file'} does not begin with the line "
            f"'# @package _global_', so its keys landed under {group}. ({keys}) and would "
            "be ignored; add that line at the top of the file")


def _group_file(group: str) -> tuple[str | None, str | None]:
    """The option chosen for ``group`` and the file it came from, where Hydra says."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return None, None
    runtime = HydraConfig.get().runtime
    name = runtime.choices.get(group)
    if not name:
        return None, None
    for source in runtime.config_sources:
        if str(source.schema) == "file":
            file = Path(str(source.path)) / group / f"{name}.yaml"
            if file.is_file():
                return str(name), str(file)
    return str(name), None


def _numbers(node: Any, key: str) -> Iterable[tuple[str, float]]:
    """(dotted key, value) of every number in a config node, in lists too."""
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _numbers(v, f"{key}.{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _numbers(v, f"{key}[{i}]")
    elif is_number(node):
        yield key, float(node)


def _positive_ints(values: Any) -> bool:
    return isinstance(values, Iterable) and all(is_whole(v, 1) for v in values)


def check(cfg: DictConfig) -> None:
    """Raise :class:`ConfigError` for the first value that cannot work, an interpolation
    that names nothing (``optimizer.lr='${nope}'``) among them."""
    from omegaconf.errors import OmegaConfBaseException

    try:
        _check_values(cfg)
    except OmegaConfBaseException as exc:
        raise ConfigError(_interpolation_problem(exc)) from None


def _interpolation_problem(exc: Exception) -> str:
    """One line for an interpolation OmegaConf cannot resolve, naming the command-line
    override that holds one (OmegaConf names the Hydra key it was copied into)."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    message = str(getattr(exc, "msg", None) or exc).strip().splitlines()[0]
    overrides = ([str(o) for o in OmegaConf.to_container(HydraConfig.get().overrides.task,
                                                         resolve=False)]
                 if HydraConfig.initialized() else [])
    holding = [o for o in overrides if "${" in o]
    if holding:
        key = holding[0].split("=", 1)[0].lstrip("+~")
        return f"{key}: {message} (in {holding[0]}); an interpolation must name a key of " \
               "the config, e.g. ${seed}"
    return f"{getattr(exc, 'full_key', None) or 'config'}: {message}"


def _check_values(cfg: DictConfig) -> None:
    from omegaconf import OmegaConf

    # Hydra's own node (present in a config composed with return_hydra_config) holds
    # interpolations only a running job resolves: it is not the user's to set.
    top = [k for k in cfg if k != "hydra"]
    missing = sorted([k for k in top if OmegaConf.is_missing(cfg, k)] + [
        m for k in top if not OmegaConf.is_missing(cfg, k) and OmegaConf.is_config(cfg[k])
        for m in OmegaConf.missing_keys(cfg[k])])
    if missing:
        raise ConfigError(f"{missing[0]}: required but not set; add {missing[0]}=<value> "
                          "to the command line")
    _check_global_packages(cfg)
    for key in top:
        node = cfg[key]
        _check_renamed_targets(OmegaConf.to_container(node, resolve=False)
                               if OmegaConf.is_config(node) else node, str(key))
    positive = lambda v: is_number(v) and math.isfinite(v) and v > 0  # noqa: E731
    fraction = lambda v: is_number(v) and 0 <= v <= 1  # noqa: E731
    # Keys of reglab's own classes are checked here, before torch is imported; a class
    # of the user's own checks its arguments itself (reglab cannot know what they mean).
    if _target(cfg, "optimizer").startswith("torch.optim."):
        _check(cfg, "optimizer.lr", positive, "a finite number > 0")
        for key in ("weight_decay", "momentum"):
            _check(cfg, f"optimizer.{key}", lambda v: is_number(v) and math.isfinite(v)
                   and v >= 0, "a finite number >= 0")
    exact = _target(cfg, "optimizer") == "reglab.training.exact.ExactLeastSquares"
    if exact:
        from reglab.training.exact import check_config

        _check(cfg, "optimizer.weight_decay", lambda v: is_number(v) and math.isfinite(v)
               and v >= 0, "a finite number >= 0")
        check_config(cfg)
    _check(cfg, "task_name", _plain_name, _TASK_NAME)
    # (Lightning takes check_val_every_n_epoch=0 and fails mid-fit dividing by it.)
    _check_whole_numbers(cfg)
    _check_booleans(cfg)
    trainer = cfg.get("trainer") or {}
    if "seed" in cfg and cfg.seed is None and (trainer.get("num_nodes") or 1) != 1:
        raise ConfigError("seed: null draws a seed in each process, and the nodes of a "
                          "multi-node run must share one; give seed=<a number>")
    # Lightning's seed_everything hands the seed to numpy, which takes 32 bits.
    _check(cfg, "seed", lambda v: is_whole(v, 0) and v <= 2**32 - 1, "a whole number from "
           "0 to 4294967295, or null for a fresh one", optional=True)
    _check_strategy(cfg)
    if _target(cfg, "data") == "reglab.data.datamodule.RegressionDataModule":
        _check_data(cfg, positive, fraction)
    _check_folds(cfg)
    model = _target(cfg, "model")
    if model == "reglab.models.regressors.MLP":
        _check(cfg, "model.hidden", _positive_ints,
               "a list of whole numbers > 0, e.g. [10, 10]")
        _check(cfg, "model.activation", lambda v: isinstance(v, str) and v.lower() in
               ACTIVATIONS, f"one of {', '.join(ACTIVATIONS)}")
    if _target(cfg, "loss").startswith("torch.nn."):
        _check(cfg, "loss.reduction", lambda v: v in ("mean", "sum"), "mean or sum")
    scheduler = cfg.get("scheduler")
    if scheduler and "scheduler" not in scheduler:
        raise ConfigError("scheduler: expected Lightning's lr_scheduler_config, a mapping "
                          "with a `scheduler` entry holding the _target_ (see "
                          "conf/scheduler/step.yaml)")
    if scheduler:
        _check(cfg, "scheduler.interval", lambda v: v in ("epoch", "step"), "epoch or step")
        _check(cfg, "scheduler.monitor", lambda v: v in METRICS,
               f"one of the metrics reglab logs: {', '.join(METRICS)}", optional=True)
    for name, callback in (cfg.get("callbacks") or {}).items():
        # Lightning's own callbacks name a metric to watch; a misspelt one would fail at
        # the end of the first epoch, after the run dir was set up.
        if isinstance(callback, DictConfig) and str(callback.get("_target_", "")).startswith(
                ("pytorch_lightning.", "lightning.")):
            _check(cfg, f"callbacks.{name}.monitor", lambda v: v in METRICS,
                   f"one of the metrics reglab logs: {', '.join(METRICS)}", optional=True)
    lr_find = (cfg.get("tuner") or {}).get("lr_find")
    if lr_find is not None:
        for key in ("min_lr", "max_lr"):
            _check(cfg, f"tuner.lr_find.{key}", lambda v: is_number(v) and math.isfinite(v)
                   and v > 0, "a finite number > 0")
        if is_number(lr_find.get("min_lr")) and is_number(lr_find.get("max_lr")) and \
                lr_find.min_lr >= lr_find.max_lr:
            raise ConfigError(f"tuner.lr_find.max_lr: expected a number above min_lr "
                              f"({lr_find.min_lr}), got {lr_find.max_lr}")


def _check_renamed_targets(node: Any, key: str) -> None:
    """A ``_target_`` naming where reglab kept a class or function before its subpackage
    layout: one line giving today's path (a config of the user's own may still hold it)."""
    if isinstance(node, dict):
        target = node.get("_target_")
        if isinstance(target, str) and current(target) != target:
            raise ConfigError(f"{key}._target_: {target} is now {current(target)} (reglab's "
                              "modules moved into subpackages); name it so in your config")
        for name, value in node.items():
            _check_renamed_targets(value, f"{key}.{name}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            _check_renamed_targets(value, f"{key}[{i}]")


def _plain_name(value: Any) -> bool:
    return isinstance(value, str) and value not in ("", ".", "..") and "/" not in value \
        and "\\" not in value


#: What task_name must be: it names a folder under outputs/.
_TASK_NAME = "a plain folder name (no path separators): runs land in outputs/<task_name>/"


def check_argv(args: list[str]) -> None:
    """Command-line values that would make Hydra create folders in the wrong place."""
    for arg in args:
        key, sep, value = arg.partition("=")
        if sep and key.lstrip("+~") == "task_name" and not _plain_name(value):
            raise ConfigError(f"task_name: expected {_TASK_NAME}, got {value!r}")


def data_parallel(trainer: Any) -> bool:
    """Whether a ``trainer`` config trains in several processes (a ddp strategy, several
    devices or several nodes)."""
    trainer = trainer or {}
    strategy = trainer.get("strategy")
    name = str(strategy.get("_target_") if isinstance(strategy, DictConfig) else strategy)
    devices, nodes = trainer.get("devices"), trainer.get("num_nodes")
    return ("ddp" in name.lower() or (isinstance(devices, int) and (devices > 1 or devices == -1))
            or (isinstance(nodes, int) and nodes > 1))


def _check_strategy(cfg: DictConfig) -> None:
    """Strategies that start their workers by spawning or forking run the fit in other
    processes: the model this process saves would be the untrained one. L-BFGS cannot run
    data-parallel: each rank's line search evaluates the loss as often as its own numbers
    call for, every evaluation is an all-reduce, and ranks out of step wait forever."""
    trainer = cfg.get("trainer") or {}
    optimizer = str((cfg.get("optimizer") or {}).get("_target_", ""))
    if optimizer.endswith("LBFGS") and data_parallel(trainer):
        raise ConfigError(
            "optimizer: L-BFGS cannot train data-parallel: its line search on each rank "
            "takes as many loss evaluations as that rank's numbers call for, and ranks out "
            "of step wait for each other forever; train it in one process (trainer=cpu, "
            "trainer=gpu or trainer=default)")
    strategy = trainer.get("strategy")
    if isinstance(strategy, DictConfig):
        name = f"{strategy.get('_target_', '')} start_method={strategy.get('start_method')}"
    else:
        name = str(strategy)
    if "spawn" in name or "fork" in name:
        raise ConfigError(
            f"trainer.strategy: {name.strip()} trains in spawned processes, whose results "
            "never reach this one; use trainer=ddp_cpu (CPU) or trainer=ddp (GPUs), which "
            "start the other ranks by relaunching the command")


def check_folds(folds: Any, val_fraction: float) -> None:
    """``data.folds``: K >= 2 folds of the training rows, which then are the validation
    split in turn (so no fixed val split besides them)."""
    if not is_whole(folds, 2):
        raise ConfigError(f"data.folds: expected a whole number >= 2, or null, got {folds!r}")
    if val_fraction:
        raise ConfigError(f"data.val_fraction: must be 0 with data.folds={folds} (each fold "
                          f"of the training rows is the validation split in turn); got "
                          f"{val_fraction}")


def delimiter(value: Any, key: str) -> str:
    """The one character that separates a table's fields. ``\\t`` (what a shell passes
    for ``data.source.delimiter='\\t'``) and ``tab`` mean a tab."""
    if value in ("\\t", "tab"):
        return "\t"
    if not isinstance(value, str) or len(value) != 1 or value in ('"', "\n", "\r"):
        raise ConfigError(f"{key}: expected one character such as ',' or ';' (\\t for a "
                          f"tab), got {value!r}")
    return value


def _target(cfg: DictConfig, key: str) -> str:
    node = cfg.get(key)
    return str(node.get("_target_", "")) if isinstance(node, DictConfig) else ""


def _check_folds(cfg: DictConfig) -> None:
    """``data.folds`` of any data module that takes it (in memory or streamed): K-fold
    cross-validation solves each fold exactly, so it needs ``optimizer=exact``."""
    data = cfg.get("data")
    folds = data.get("folds") if isinstance(data, DictConfig) else None
    if folds is None:
        return
    check_folds(folds, data.get("val_fraction") or 0)
    if "optimizer" in cfg and _target(cfg, "optimizer") != \
            "reglab.training.exact.ExactLeastSquares":  # (reglab-eval checks data alone)
        raise ConfigError(f"data.folds: k-fold cross-validation fits each fold exactly; "
                          f"add optimizer=exact (a gradient fit per fold is not "
                          f"supported), or drop data.folds={folds}")


def _check_data(cfg: DictConfig, positive: Callable[[Any], bool],
                fraction: Callable[[Any], bool]) -> None:
    """The keys of reglab's data module and its sources."""
    _check(cfg, "data.val_fraction", fraction, "a fraction in [0, 1]")
    _check(cfg, "data.test_fraction", fraction, "a fraction in [0, 1]")
    data = cfg.get("data") or {}
    held_out = (data.get("val_fraction") or 0) + (data.get("test_fraction") or 0)
    if held_out >= 1:
        raise ConfigError(f"data.val_fraction + data.test_fraction: expected a sum below 1 "
                          f"so rows remain for training, got {held_out:g}")
    if not _target(cfg.data, "source").startswith("reglab."):
        return
    # Every number a generator of reglab's takes (weights, bias, noise, ranges) is finite:
    # an inf or nan there would fill the table with values no model can fit.
    source = OmegaConf.to_container(cfg.data.source, resolve=True)
    for key, value in _numbers(source, "data.source"):
        if not math.isfinite(value):
            raise ConfigError(f"{key}: expected a finite number, got {value!r}")
    _check(cfg, "data.source.noise", lambda v: is_number(v) and v >= 0, "a number >= 0")
    _check(cfg, "data.source.high", lambda v: is_number(v) and v > cfg.data.source.low,
           "a number above data.source.low")
    _check(cfg, "data.source.target", lambda v: (isinstance(v, str) and v != "") or (
        isinstance(v, Iterable) and not isinstance(v, str) and len(list(v)) > 0
        and all(isinstance(c, str) and c for c in v)),
           "the name of the column to predict, or a list of names")
    _check(cfg, "data.source.features", lambda v: isinstance(v, Iterable) and not isinstance(
        v, str) and len(list(v)) > 0 and all(isinstance(c, str) for c in v),
           "a list of column names, or null for every column but the target", optional=True)
    if "delimiter" in cfg.data.source:
        delimiter(cfg.data.source.delimiter, "data.source.delimiter")
    _check(cfg, "data.source.path", lambda v: isinstance(v, str) and Path(v).expanduser()
           .is_file(), "an existing file (a .csv or .parquet table)")
