"""What a finished run leaves behind: ``metrics.json``, the HPARAMS record, a summary.

Final losses are recomputed on the whole train and val splits with the trained model,
so they are exact figures of the final parameters, not running averages over an epoch.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig

if TYPE_CHECKING:
    import torch
    from torch import nn

METRICS_FILE = "metrics.json"


def split_loss(model: nn.Module, loss_fn: nn.Module, x: torch.Tensor, y: torch.Tensor,
               chunk: int = 1 << 16) -> float:
    """The loss of ``model`` over a whole split, predicting in chunks."""
    import torch

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            device = next(model.parameters()).device
            pred = torch.cat([model(x[i:i + chunk].to(device)) for i in range(0, len(x), chunk)])
            return float(loss_fn(pred, y.to(device)))
    finally:
        model.train(was_training)


def _target_name(node: Any) -> str | None:
    target = node.get("_target_") if isinstance(node, DictConfig) else None
    return None if target is None else str(target).rsplit(".", 1)[-1]


def hparams(cfg: DictConfig, choices: dict[str, str] | None = None) -> dict[str, Any]:
    """The hyper-parameters a person compares runs by, as flat scalars."""
    choices = choices or {}
    opt = cfg.optimizer
    out: dict[str, Any] = {
        "experiment": choices.get("experiment") or cfg.get("task_name"),
        "data": choices.get("data") or _target_name(cfg.data.get("source")),
        "model": choices.get("model") or _target_name(cfg.model),
        "optimizer": choices.get("optimizer") or _target_name(opt),
        "loss": choices.get("loss") or _target_name(cfg.loss),
        "lr": float(opt.lr),
        "batch_size": cfg.data.get("batch_size"),
        "max_epochs": int(cfg.trainer.max_epochs),
        "seed": int(cfg.seed),
    }
    for key in ("momentum", "weight_decay"):
        if key in opt:
            out[key] = float(opt[key])
    return out


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


def _finite_or_none(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else value


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write atomically, so a reader never sees half a file."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2, allow_nan=False) + "\n")
    os.replace(tmp, path)


def log_hparams(loggers: list[Any], hp: dict[str, Any], metric_tags: list[str]) -> None:
    """Fill TensorBoard's HPARAMS tab with this run's hyper-parameters.

    The tab shows, for each metric tag named here, the last value of that scalar series
    in the run, so it lists the run's real final losses rather than a placeholder.
    """
    from torch.utils.tensorboard.summary import hparams as hparams_summary

    clean = {k: ("full" if v is None else v) for k, v in hp.items()}
    for logger in loggers:
        writer = getattr(logger, "experiment", None)
        if writer is None or not hasattr(writer, "_get_file_writer"):
            continue
        file_writer = writer._get_file_writer()
        for summary in hparams_summary(clean, dict.fromkeys(metric_tags, 0.0)):
            file_writer.add_summary(summary)
        writer.flush()


def _fmt(value: float | None) -> str:
    return "—" if value is None else f"{value:.6g}"


def summary_lines(metrics: dict[str, Any], run_dir: Path) -> list[str]:
    """A few lines a person reads at the end of a run."""
    lines = [
        f"reglab: {metrics['hparams']['experiment']} {metrics['status']} in "
        f"{metrics['fit_seconds']:.2f} s — {metrics['epochs']} epochs, {metrics['steps']} steps",
        f"  train loss {_fmt(metrics['train_loss'])}   val loss {_fmt(metrics['val_loss'])}",
    ]
    test = metrics.get("test")
    if test:
        lines.append(f"  test  mse {_fmt(test['mse'])}  rmse {_fmt(test['rmse'])}  "
                     f"mae {_fmt(test['mae'])}  r2 {_fmt(test['r2'])}")
    params = metrics.get("params")
    if params and "weight" in params:
        weight = ", ".join(f"{w:.6g}" for w in params["weight"][0])
        line = f"  learned weight [{weight}]   bias {_fmt(params.get('bias'))}"
        truth = metrics.get("true_params")
        if truth:
            true_w = ", ".join(f"{w:.6g}" for w in truth["weight"][0])
            line += f"   (true [{true_w}], {_fmt(truth.get('bias'))})"
        lines.append(line)
    lines += [f"  run dir: {run_dir}", f"  review:  tensorboard --logdir {run_dir}"]
    return lines


def collect(cfg: DictConfig, trainer: Any, module: Any, datamodule: Any, fit_seconds: float,
            choices: dict[str, str] | None = None, status: str = "completed") -> dict[str, Any]:
    """Everything ``metrics.json`` records about a finished fit."""
    model, loss_fn = module.model, module.loss_fn
    losses = {split: _finite_or_none(split_loss(model, loss_fn, *datamodule.splits[split]))
              for split in ("train", "val")}
    params = model.params() if hasattr(model, "params") else None
    truth = datamodule.data.true_params if params is not None else None
    if module.diverged_at_step is not None:
        status = "diverged"
    elif module.interrupted_by is not None:
        status = "interrupted"
    test = module.test_metrics
    return {
        "status": status,
        "diverged_at_step": module.diverged_at_step,
        "interrupted_by": module.interrupted_by,
        "epochs": int(trainer.current_epoch),
        "steps": int(trainer.global_step),
        "fit_seconds": round(fit_seconds, 4),
        "train_loss": losses["train"],
        "val_loss": losses["val"],
        "val_is_train": datamodule.splits["val"] is datamodule.splits["train"],
        "test": None if test is None else {k: _finite_or_none(v) for k, v in test.items()},
        "params": params,
        "true_params": truth,
        "param_error": param_error(params, truth) if params is not None else None,
        "rows": {split: int(x.shape[0]) for split, (x, _) in datamodule.splits.items()},
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
    return {"status": "failed", "error": f"{type(exc).__name__}: {exc}", "hparams": hp}
