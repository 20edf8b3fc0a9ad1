"""``metrics.json``: what a run records about itself, and reading a run's record back.

Final losses are recomputed on the whole train and val splits with the trained model,
so they are exact figures of the final parameters, not running averages over an epoch.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from reglab.analysis.optimum import optimality_gap, params_in_data_units
from reglab.config.checks import is_number


def _target_name(node: Any) -> str | None:
    target = node.get("_target_") if isinstance(node, DictConfig) else None
    return None if target is None else str(target).rsplit(".", 1)[-1]


def hparams(cfg: DictConfig, choices: dict[str, str] | None = None) -> dict[str, Any]:
    """The hyper-parameters a person compares runs by, as flat scalars."""
    # A group whose _target_ the command line replaced is named by its class, not by
    # the option it started from (optimizer=sgd with optimizer._target_=...RMSprop).
    retargeted = _retargeted_groups()
    choices = {k: v for k, v in (choices or {}).items() if k not in retargeted}
    opt = cfg.optimizer
    out: dict[str, Any] = {
        "experiment": choices.get("experiment") or cfg.get("task_name"),
        "data": choices.get("data") or _target_name(cfg.data.get("source"))
        or _target_name(cfg.data),
        "model": choices.get("model") or _target_name(cfg.model),
        "optimizer": choices.get("optimizer") or _target_name(opt),
        "loss": choices.get("loss") or _target_name(cfg.loss),
        "lr": float(opt.lr) if is_number(opt.get("lr")) else None,
        "batch_size": cfg.data.get("batch_size"),
        "max_epochs": cfg.trainer.get("max_epochs"),
        "seed": cfg.get("seed"),
        "scheduler": choices.get("scheduler") or (_target_name(cfg.scheduler.scheduler)
                                                  if cfg.get("scheduler") else "none"),
    }
    for key in ("momentum", "weight_decay"):
        if key in opt:
            out[key] = float(opt[key])
    return out


def _retargeted_groups() -> set[str]:
    """Config groups whose ``_target_`` this run's overrides set (``loss._target_=…``)."""
    try:
        from hydra.core.hydra_config import HydraConfig

        task = HydraConfig.get().overrides.task if HydraConfig.initialized() else []
    except Exception:  # not run through Hydra: no overrides to read
        return set()
    keys = (str(o).split("=", 1)[0].lstrip("+~") for o in task)
    return {k.removesuffix("._target_") for k in keys if k.endswith("._target_")}


def param_error(params: dict[str, Any], truth: dict[str, Any] | None) -> dict[str, Any] | None:
    """learned − true, per weight and for the bias, where the data knows the truth."""
    if not truth or "weight" not in params:
        return None
    import torch

    learned_w = torch.tensor(params["weight"], dtype=torch.float64)
    true_w = torch.tensor(truth["weight"], dtype=torch.float64)
    if learned_w.shape != true_w.shape:
        return None
    diff = learned_w - true_w
    bias = None if params.get("bias") is None else params["bias"] - (truth.get("bias") or 0.0)
    return {"weight": diff.tolist(), "bias": bias,
            "max_abs": max(abs(v) for v in [*diff.flatten().tolist(), bias or 0.0])}


def _finite_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    """Metrics with non-finite values as None (JSON has no NaN), per-target ones too."""
    return {k: _finite_metrics(v) if isinstance(v, dict) else _finite_or_none(v)
            for k, v in metrics.items()}


def _finite_or_none(value: Any) -> Any:
    """A number, or None for NaN and inf; other values (a reason in words) as they are."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def run_record(cfg: DictConfig) -> dict[str, Any]:
    """What rebuilds this run without Hydra's ``.hydra/`` folder (``hydra.output_subdir=
    null`` or another name): its config as composed, its command-line overrides and the
    directory it was launched from. Stored in ``metrics.json`` as ``run``."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    config = OmegaConf.to_container(cfg, resolve=False)
    config.pop("hydra", None)
    hydra = HydraConfig.get() if HydraConfig.initialized() else None
    return {"config": config,
            "overrides": [str(o) for o in hydra.overrides.task] if hydra else [],
            "launch_dir": str(hydra.runtime.cwd) if hydra else os.getcwd()}


def log_locations(loggers: list[Any]) -> dict[str, str]:
    """Where the run's loggers wrote, for the record and the summary: a TensorBoard log
    dir, a CSV file, or another logger's ``log_dir`` under its class name. Lightning's
    stand-in under ``fast_dev_run`` writes nothing and is left out."""
    from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger
    from pytorch_lightning.loggers.logger import DummyLogger

    out: dict[str, str] = {}
    for lg in loggers:
        if isinstance(lg, TensorBoardLogger):
            out["tensorboard"] = str(Path(lg.log_dir))
        elif isinstance(lg, CSVLogger):
            out["csv"] = str(Path(lg.log_dir) / "metrics.csv")
        elif getattr(lg, "log_dir", None) and not isinstance(lg, DummyLogger):
            out[type(lg).__name__] = str(lg.log_dir)
    return out


def fit_record(cfg: DictConfig, trainer: Any, module: Any, datamodule: Any,
               fit_seconds: float, choices: dict[str, str] | None = None,
               closed: dict[str, Any] | None = None, *, plot_seconds: float = 0.0,
               exact: bool = False, cv: dict[str, Any] | None = None,
               lr_find: dict[str, Any] | None = None) -> dict[str, Any]:
    """Everything ``metrics.json`` records about a finished fit: :func:`_fit_numbers`,
    then how it was run (method, cross-validation, ``lr_find``, loggers, config, device).

    ``closed`` is the record :func:`reglab.analysis.optimum.find_optimum` made before the
    fit, if any.
    """
    from reglab.config.parts import is_reglab_data

    metrics = _fit_numbers(cfg, trainer, module, datamodule, fit_seconds, choices, closed)
    metrics["plot_seconds"] = round(plot_seconds, 4)
    metrics["method"] = "exact" if exact else "gradient"
    if cv is not None:
        metrics["cv"] = cv
    if lr_find is not None:
        metrics["lr_find"] = lr_find
        if lr_find["applied"]:
            metrics["hparams"]["lr"] = lr_find["suggestion"]
    if trainer.fast_dev_run:  # a smoke test: nothing in it claims to be a trained model
        metrics["status"] = "fast_dev_run"
    metrics["logs"] = log_locations(trainer.loggers)
    if cfg.get("ckpt_path"):  # the checkpoint this fit went on from (its own, or another run's)
        metrics["started_from"] = str(Path(str(cfg.ckpt_path)).resolve())
    metrics["run"] = run_record(cfg)
    metrics["world_size"] = trainer.world_size
    metrics["device"] = str(trainer.strategy.root_device)
    if is_reglab_data(datamodule):  # where the batches were cut
        metrics["data_device"] = str(datamodule.batch_device)
    elif callable(getattr(datamodule, "describe", None)):  # data=stream: its rows and shape
        metrics["streamed"] = datamodule.describe()
        metrics["rows"] = metrics["streamed"]["rows"]
    return metrics


def interrupted_record(cfg: DictConfig, trainer: Any, module: Any,
                       choices: dict[str, str] | None = None) -> dict[str, Any]:
    """The record of a fit stopped at once by a second signal, mid-step: it says so, and
    a resume starts from the last checkpoint written before it."""
    return {"status": "interrupted", "interrupted_by": module.interrupted_by,
            "stopped": "at once (a second signal): this step was not saved",
            "epochs": int(trainer.current_epoch), "steps": int(trainer.global_step),
            "hparams": hparams(cfg, choices), "run": run_record(cfg)}


def _fit_numbers(cfg: DictConfig, trainer: Any, module: Any, datamodule: Any,
                 fit_seconds: float, choices: dict[str, str] | None,
                 closed: dict[str, Any] | None, status: str = "completed"
                 ) -> dict[str, Any]:
    """The fit's numbers: status, losses recomputed in float64, test metrics, parameters,
    the optimum's gap, the history."""
    from reglab.analysis.metrics import split_loss
    from reglab.config.parts import is_reglab_data

    model, loss_fn = module.model, module.loss_fn
    ours = is_reglab_data(datamodule)
    if ours:
        scaling = datamodule.scaling
        train_loss = _finite_or_none(split_loss(model, loss_fn, *datamodule.splits["train"],
                                                scaling=scaling))
        val_is_train = datamodule.val_is_train
        losses = {"train": train_loss, "val": train_loss if val_is_train else
                  _finite_or_none(split_loss(model, loss_fn, *datamodule.splits["val"],
                                             scaling=scaling))}
    else:  # another data module: the last epoch means the module recorded
        # (trainer.test clears Lightning's callback_metrics, so they are read from the
        # module's own history, and from callback_metrics only when that is empty).
        seen = trainer.callback_metrics
        val_is_train = None
        losses = {}
        for key, tag in (("train", "train/loss_epoch"), ("val", "val/loss")):
            recorded = module.history.get(f"{key}_loss") or []
            value = (recorded[-1][1] if recorded else
                     float(seen[tag]) if tag in seen else None)
            losses[key] = None if value is None else _finite_or_none(float(value))
    params = model.params() if hasattr(model, "params") else None
    data_params = None
    if params is not None and type(model).__name__ == "LinearRegression":
        data_params = params_in_data_units(params, module.scaling)
    truth = datamodule.data.true_params if params is not None and ours else None
    from reglab.search.pruning import pruned_at

    pruned = pruned_at(trainer)
    if module.diverged_at_step is not None:
        status = "diverged"
    elif module.interrupted_by is not None:
        status = "interrupted"
    elif pruned is not None:
        status = "pruned"  # stopped by the study's pruner, as an early stop
    test = module.test_metrics
    if test is not None:
        from reglab.analysis.metrics import adjusted_r2, score

        if ours:  # again in float64 from the split as read, as reglab-eval scores it
            bias = getattr(model, "has_bias", None)
            names = datamodule.data.target_names
            test = score(model, *datamodule.splits["test"], scaling=datamodule.scaling
                         ).compute(centered=True if bias is None else bool(bias),
                                   names=names if len(names) > 1 else None)
        test = _finite_metrics(test)
        n_params = len(params["weight"][0]) if params else None
        if n_params is not None and test.get("r2") is not None and ours:
            test.update(adjusted_r2(test["r2"], int(datamodule.splits["test"][0].shape[0]),
                                    n_params, bool(params.get("bias") is not None)))
    if closed is not None and "train_loss" in closed:
        penalty = float(closed.get("penalty") or 0.0)
        trained, optimum = losses["train"], closed["train_loss"]
        if penalty and trained is not None:  # compare the objective training minimises
            trained += penalty * sum(float(p.detach().double().pow(2).sum())
                                     for p in model.parameters())
            best = closed["params"]
            bias = best["bias"] if isinstance(best["bias"], list) else [best["bias"] or 0.0]
            optimum += penalty * (sum(w * w for row in best["weight"] for w in row)
                                  + sum(b * b for b in bias))
            closed = {**closed, "objective_value": optimum}
        closed = {**closed, "optimality_gap": optimality_gap(trained, optimum)}
    return {
        "status": status,
        "diverged_at_step": module.diverged_at_step,
        "interrupted_by": module.interrupted_by,
        **({"pruned_at": pruned} if pruned is not None else {}),
        "epochs": int(trainer.current_epoch),
        "steps": int(trainer.global_step),
        "fit_seconds": round(fit_seconds, 4),
        "train_loss": losses["train"],
        "val_loss": losses["val"],
        "val_is_train": val_is_train,
        "test": test,
        "params": params,
        "params_data_units": data_params,
        "true_params": truth,
        "param_error": param_error(data_params or params, truth) if params is not None
        else None,
        "closed_form": closed,
        "rows": {split: int(x.shape[0]) for split, (x, _) in datamodule.splits.items()}
        if ours else None,
        "data": {**module.data_info, "scaling": module.scaling.to_dict()},
        "hparams": hparams(cfg, choices),
        "history": {k: [[e, _finite_or_none(v)] for e, v in pairs]
                    for k, pairs in module.history.items()},
    }


def failure(cfg: DictConfig, exc: BaseException, choices: dict[str, str] | None = None
            ) -> dict[str, Any]:
    """The metrics.json of a run that raised: what failed, and with which settings."""
    try:
        hp: dict[str, Any] | None = hparams(cfg, choices)
    except Exception:  # a config broken enough to fail here still gets its record
        hp = None
    try:
        run: dict[str, Any] | None = run_record(cfg)
    except Exception:
        run = None
    return {"status": "failed", "error": f"{type(exc).__name__}: {exc}", "hparams": hp,
            "run": run}
