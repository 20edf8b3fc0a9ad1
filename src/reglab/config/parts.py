"""Building the parts a config names, whoever's classes they are.

reglab's own data module and models are one choice among many: a user's
``LightningDataModule``, ``nn.Module``, loss, optimizer or scheduler arrives through the
same ``_target_`` keys. What reglab needs to know of them (the input width, how to
rebuild the model from ``model.pt``) is found here without assuming reglab wrote them.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from omegaconf import DictConfig, OmegaConf

from reglab.errors import ConfigError

#: Hydra's own keys in an instantiable node, never constructor arguments.
_HYDRA_KEYS = frozenset({"_target_", "_partial_", "_recursive_", "_convert_", "_args_"})


def build(key: str, make: Callable[[], Any]) -> Any:
    """``make()``; a class that refuses its arguments (an unknown keyword, a value out of
    range) is bad input: one line naming the config ``key`` and the class's own words."""
    from hydra.errors import InstantiationException

    try:
        return make()
    except (InstantiationException, TypeError, ValueError) as exc:
        cause = exc.__cause__ if isinstance(exc, InstantiationException) and \
            exc.__cause__ is not None else exc
        text = " ".join(str(cause).split()) or type(cause).__name__
        if text.startswith(f"{key}.") or text.startswith(f"{key}:"):  # names its key already
            raise ConfigError(text) from None
        raise ConfigError(f"{key}: {text}") from None


def is_reglab_data(datamodule: Any) -> bool:
    """Whether ``datamodule`` is reglab's in-memory data module (splits, scaling, truth)."""
    from reglab.data.datamodule import RegressionDataModule

    return isinstance(datamodule, RegressionDataModule)


def is_streamed(datamodule: Any) -> bool:
    """Whether ``datamodule`` is reglab's streamed one (``data=stream``)."""
    from reglab.data.streamed import StreamedDataModule

    return isinstance(datamodule, StreamedDataModule)


def describe_data(datamodule: Any) -> tuple[int, dict[str, Any]]:
    """The number of input columns, and feature / target names where they are known.

    reglab's data module knows them once its data is read. Any other
    ``LightningDataModule`` is asked for its ``num_features`` attribute if it has one,
    else set up for fitting and measured on its first training batch (``x`` of shape
    ``(rows, features)``); names come from ``feature_names`` / ``target_name``.
    """
    if is_reglab_data(datamodule):
        data = datamodule.prepare()
        info = {"features": data.feature_names, "target": data.target_name}
        if data.source_file is not None:
            info["file"] = data.source_file
        return data.num_features, info
    info = {"features": _plain_list(getattr(datamodule, "feature_names", None)),
            "target": getattr(datamodule, "target_name", None)}
    width = getattr(datamodule, "num_features", None)
    if isinstance(width, int) and width > 0:
        return width, info
    datamodule.prepare_data()
    datamodule.setup("fit")
    try:
        x = next(iter(datamodule.train_dataloader()))[0]
    except Exception as exc:
        raise ConfigError(f"data: cannot read a first training batch from "
                          f"{type(datamodule).__qualname__} to learn the input width "
                          f"({type(exc).__name__}: {exc}); give it a num_features "
                          "attribute") from None
    return int(x.shape[-1]), info


def _plain_list(value: Any) -> list[str] | None:
    return None if value is None else [str(v) for v in value]


def build_model(node: DictConfig, in_features: int, out_features: int = 1
                ) -> tuple[Any, dict[str, Any]]:
    """Instantiate ``cfg.model`` for ``in_features`` inputs (and ``out_features`` targets);
    also return its spec.

    The spec (``{"class": "pkg.mod.Class", "kwargs": {...}}``) is what ``model.pt``
    stores to rebuild the model without Hydra. ``in_features`` is passed only when the
    constructor takes it, so a model with a fixed width needs no such argument; several
    targets are passed as ``out_features``, which the model must then take.
    """
    from hydra.utils import instantiate

    kwargs = {k: v for k, v in OmegaConf.to_container(node, resolve=True).items()
              if k not in _HYDRA_KEYS}
    factory = build("model", lambda: instantiate(node))
    given: dict[str, int] = {}
    if node.get("_partial_", False):
        target = getattr(factory, "func", factory)
        if _accepts(target, "in_features"):
            given["in_features"] = in_features
        if out_features != 1:
            if not _accepts(target, "out_features"):
                raise ConfigError(f"model: the data has {out_features} targets, but "
                                  f"{getattr(target, '__qualname__', target)} takes no "
                                  "out_features argument")
            given["out_features"] = out_features
    if not node.get("_partial_", False):  # already built: nothing to pass
        model = factory
    else:
        kwargs.update(given)
        model = build("model", lambda: factory(**given))
    cls = type(model)
    own = getattr(model, "init_kwargs", None)  # reglab's models record their full arguments
    spec = {"class": f"{cls.__module__}.{cls.__qualname__}",
            "kwargs": dict(own) if isinstance(own, dict) else kwargs}
    return model, spec


def build_module(cfg: DictConfig, datamodule: Any) -> tuple[Any, Any]:
    """reglab's LightningModule around the config's model, loss, optimizer and scheduler,
    sized from ``datamodule``; also the optimizer built once on the model's parameters
    (its arguments checked, and what the least-squares optimum reads them from).

    Each part's config is kept in the module (``parts``), so a checkpoint can rebuild it
    with no arguments; a scheduler's arguments are tried on a throwaway optimizer here,
    so a bad one is one line before the fit starts."""
    from hydra.utils import instantiate

    from reglab.training.module import RegressionModule

    in_features, data_info = describe_data(datamodule)
    targets = data_info.get("target")
    model, model_spec = build_model(cfg.model, in_features,
                                    len(targets) if isinstance(targets, list) else 1)
    scheduler = cfg.get("scheduler")
    optimizer = build("optimizer", lambda: instantiate(cfg.optimizer))
    probe = build("optimizer", lambda: optimizer(model.parameters()))
    module = RegressionModule(
        model=model, optimizer=optimizer, loss=build("loss", lambda: instantiate(cfg.loss)),
        scaling=getattr(datamodule, "scaling", None), data_info=data_info,
        scheduler=None if not scheduler else {
            **OmegaConf.to_container(scheduler, resolve=True),
            "scheduler": build("scheduler", lambda: instantiate(scheduler.scheduler))},
        model_spec=model_spec,
        parts={name: OmegaConf.to_container(node, resolve=True) for name, node in
               (("loss", cfg.loss), ("optimizer", cfg.optimizer), ("scheduler", scheduler))
               if node})
    if module.scheduler_config:
        build("scheduler", lambda: module.make_scheduler(optimizer(model.parameters()),
                                                         lambda: 100))
    return module, probe


def _accepts(target: Any, name: str) -> bool:
    try:
        params = inspect.signature(target).parameters
    except (TypeError, ValueError):
        return True
    return name in params or any(p.kind is inspect.Parameter.VAR_KEYWORD
                                 for p in params.values())


def has_test(datamodule: Any) -> bool:
    """Whether the data has a test split: reglab's says so; another data module has one
    when it defines ``test_dataloader``."""
    import pytorch_lightning as pl

    if is_reglab_data(datamodule):
        return datamodule.has_test
    own = getattr(datamodule, "has_test", None)  # a data module that says so itself
    if isinstance(own, bool):
        return own
    return type(datamodule).test_dataloader is not pl.LightningDataModule.test_dataloader


#: Trainer arguments that reglab fills from its own groups, unless the user sets them.
_TRAINER_SWITCHES = ("logger", "callbacks", "enable_checkpointing", "enable_progress_bar")


def trainer_parts(cfg: DictConfig) -> tuple[list[Any], list[Any], dict[str, Any]]:
    """Loggers, callbacks and the remaining ``Trainer`` keyword arguments.

    The ``logger`` and ``callbacks`` groups give the defaults; the Trainer's own
    switches, when set (``+trainer.logger=false``, ``+trainer.enable_checkpointing=false``,
    ``+trainer.enable_progress_bar=false``, ``'+trainer.callbacks=[...]'``), win over them
    as they would on a plain ``Trainer``: no loggers, no checkpoint callbacks, no bar,
    extra callbacks added.
    """
    import pytorch_lightning as pl
    from hydra.utils import instantiate

    from reglab.training.callbacks import LastCheckpoint

    trainer = cfg.get("trainer") or {}
    loggers = [build(f"logger.{k}", lambda c=c: instantiate(c))
               for k, c in (cfg.get("logger") or {}).items() if c]
    callbacks = [build(f"callbacks.{k}", lambda c=c: instantiate(c))
                 for k, c in (cfg.get("callbacks") or {}).items() if c]
    own = trainer.get("logger", True)
    if own is False or own is None:
        loggers = []
    elif own is not True:
        loggers = [build("trainer.logger", lambda c=c: instantiate(c)) for c in _as_list(own)]
    extra = trainer.get("callbacks")
    if extra:
        callbacks += [build("trainer.callbacks", lambda c=c: instantiate(c))
                      for c in _as_list(extra)]
    if trainer.get("enable_checkpointing", True) is False:
        callbacks = [c for c in callbacks
                     if not isinstance(c, (pl.callbacks.ModelCheckpoint, LastCheckpoint))]
    if trainer.get("enable_progress_bar", True) is False:
        callbacks = [c for c in callbacks if not isinstance(c, pl.callbacks.ProgressBar)]
    if not loggers:  # a learning-rate monitor has nowhere to write without a logger
        callbacks = [c for c in callbacks if not isinstance(c, pl.callbacks.LearningRateMonitor)]
    # An explicit true wins the other way too: with no checkpoint callback or bar left
    # (callbacks=none), Lightning adds its default ModelCheckpoint / bar, as a plain
    # Trainer does. Left unset, True with no ModelCheckpoint would make Lightning add
    # one writing every epoch, so it follows the callbacks.
    kwargs = {
        "logger": loggers or False, "callbacks": callbacks,
        "enable_checkpointing": trainer.get("enable_checkpointing") is True or any(
            isinstance(c, pl.callbacks.ModelCheckpoint) for c in callbacks),
        "enable_progress_bar": trainer.get("enable_progress_bar") is True or any(
            isinstance(c, pl.callbacks.ProgressBar) for c in callbacks),
    }
    return loggers, callbacks, kwargs


def _as_list(node: Any) -> list[Any]:
    from omegaconf import ListConfig

    return list(node) if isinstance(node, (ListConfig, list, tuple)) else [node]


def trainer_config(cfg: DictConfig) -> DictConfig:
    """``cfg.trainer`` without the switches :func:`trainer_parts` has resolved."""
    from omegaconf import open_dict

    node = OmegaConf.create(OmegaConf.to_container(cfg.trainer, resolve=True))
    with open_dict(node):
        for key in _TRAINER_SWITCHES:
            node.pop(key, None)
    return node
