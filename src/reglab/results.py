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

from reglab.validate import is_number

if TYPE_CHECKING:
    import torch
    from torch import nn

METRICS_FILE = "metrics.json"


def split_loss(model: nn.Module, loss_fn: nn.Module, x: torch.Tensor, y: torch.Tensor,
               scaling: Any = None, chunk: int = 1 << 14) -> float:
    """The loss of ``model`` over a whole split, evaluated in float64 a chunk at a time.

    ``x``, ``y`` are in data units; ``scaling`` takes each chunk to training units, where
    the loss is defined. Float64 so that the comparison with the least-squares optimum is
    not blurred by float32 rounding of the predictions (about 1e-4 of a small MSE);
    chunked sums so a million-row split costs no full-size temporaries.
    """
    import copy

    import torch

    model64 = copy.deepcopy(model).double().eval()
    summed = copy.copy(loss_fn)
    summed.reduction = "sum"
    total = 0.0
    with torch.no_grad():
        device = next(model64.parameters()).device
        for i in range(0, len(x), chunk):
            xs = x[i:i + chunk].to(device, torch.float64)
            ys = y[i:i + chunk].to(device, torch.float64)
            if scaling is not None:
                xs, ys = scaling.x(xs), scaling.y(ys)
            total += float(summed(model64(xs), ys))
    mean = getattr(loss_fn, "reduction", "mean") == "mean"
    return total / (int(y.numel()) if mean else 1)


#: torch optimizers whose ``weight_decay`` adds λθ to the gradient (an L2 penalty), so
#: their fixed point is the ridge optimum. AdamW (and NAdam/RAdam with
#: ``decoupled_weight_decay``) shrink the weights apart from the gradient instead.
_COUPLED_DECAY = frozenset({"SGD", "Adam", "Adamax", "RMSprop", "Adagrad", "Adadelta", "ASGD",
                            "NAdam", "RAdam"})


def weight_decay(optimizer: Any) -> tuple[float, str | None]:
    """(λ, why no ridge optimum applies, or None) of a built optimizer."""
    defaults = getattr(optimizer, "defaults", {}) or {}
    decay = float(defaults.get("weight_decay") or 0.0)
    name = type(optimizer).__name__
    if decay == 0:
        return 0.0, None
    if name == "AdamW" or defaults.get("decoupled_weight_decay"):
        return decay, (f"{name} decays the weights apart from the gradient (decoupled), so "
                       "no penalised least-squares problem has its fixed point")
    from reglab.exact import is_exact

    if is_exact(optimizer):  # solved with torch's penalty definition, by construction
        return decay, None
    if name not in _COUPLED_DECAY or type(optimizer).__module__.split(".")[0] != "torch":
        return decay, (f"reglab does not know how {type(optimizer).__qualname__} applies "
                       "weight_decay, so it cannot say which optimum it approaches")
    return decay, None


def closed_form(model: nn.Module, loss_fn: nn.Module, datamodule: Any, optimizer: Any = None,
                report: bool = True) -> tuple[dict[str, Any] | None, Any]:
    """:func:`_closed_form` with torch on one thread: its chunk loops alternate torch
    (scaling, features) with numpy's BLAS (QR, products), and on a small machine the two
    thread pools spin against each other (a 10⁶-row solve took 3× as long)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _closed_form(model, loss_fn, datamodule, optimizer, report)
    finally:
        torch.set_num_threads(threads)


def _closed_form(model: nn.Module, loss_fn: nn.Module, datamodule: Any, optimizer: Any,
                 report: bool) -> tuple[dict[str, Any] | None, Any]:
    """The optimum a linear or polynomial model trained with MSE approaches, on the
    training split, and the least-squares report of that split in the data's units.

    Everything is solved in float64 from the data as read (``datamodule.splits``), in the
    units training sees (standardized where asked). With ``weight_decay`` λ > 0 on a
    torch optimizer that adds λθ to the gradient, the optimum is ridge: the minimum of
    loss + (λ/2)·(‖w‖² + b²) (torch decays every parameter it is given, the bias too).
    Returns (the ``closed_form`` record for metrics.json, the optimum's solution) or
    (None, None) for a model that is not linear in its parameters; a record saying why
    for losses other than MSE, whose optimum least squares is not. ``report=False`` skips
    the report (cross-validation folds need the losses only).
    """
    import torch

    from reglab import closed_form as cf
    from reglab.metrics import RegressionSums, adjusted_r2
    from reglab.models import LinearRegression
    from reglab.regression_report import report_for_model

    data = datamodule.prepare()
    k = int(data.y.shape[1])
    if not isinstance(model, LinearRegression) or model.linear.out_features != k:
        return None, None
    if not isinstance(loss_fn, torch.nn.MSELoss):
        return {"skipped": f"loss is {type(loss_fn).__name__}; least squares is the optimum "
                           "of MSE only"}, None
    decay, no_ridge = weight_decay(optimizer) if optimizer is not None else (0.0, None)
    summed = loss_fn.reduction == "sum"
    x, y = datamodule.splits["train"]
    n = int(x.shape[0])
    penalty = decay / 2  # loss + penalty·‖θ‖²; Σr² + ridge·‖θ‖² is n·k× that for MSE
    # Each target is its own regression on the same design (MSE sums over them).
    targets = []
    for j in range(k):
        scaling = datamodule.scaling.target(j)

        def design(t: torch.Tensor, scaling: Any = scaling) -> torch.Tensor:
            return model.features(scaling.x(t.double()))  # data units in, model columns out

        if report or (decay > 0 and no_ridge is not None):
            summary, solution = report_for_model(model, x, y[:, j:j + 1], scaling,
                                                 data.feature_names)
            summary.pop("params", None)
        else:
            summary, solution = None, (None if decay > 0 else cf.solve(
                x, scaling.y(y[:, j].double()), bias=model.has_bias, features=design))
        if decay > 0 and no_ridge is None:
            solution = cf.solve(x, scaling.y(y[:, j].double()), bias=model.has_bias,
                                features=design, ridge=penalty * (1 if summed else n * k))
        targets.append((scaling, design, summary, solution))

    record: dict[str, Any] = {"objective": "least squares"}
    if decay > 0:
        if no_ridge is not None:
            record.update(objective=None, why_no_optimum=no_ridge)
            _add_reports(record, targets, data.target_names, with_params=False)
            return record, None
        record.update(objective=f"ridge: loss + {penalty:g}·(‖weight‖² + bias²) in "
                                f"training units (weight_decay {decay:g}; torch decays "
                                "every parameter, the bias too)",
                      penalty=penalty)

    def loss(split: str) -> float:
        xs, ys = datamodule.splits[split]
        sse = sum(sol.train_sse if split == "train" and sol.train_sse is not None else
                  sol.sse(xs, sc.y(ys[:, j].double()), features=dz)
                  for j, (sc, dz, _, sol) in enumerate(targets))
        return sse if summed else sse / (int(xs.shape[0]) * k)

    train_loss = loss("train")
    solutions = [t[3] for t in targets]
    record.update({
        "params": {"weight": [sol.weight.tolist() for sol in solutions],
                   "bias": (None if not model.has_bias else solutions[0].bias if k == 1
                            else [sol.bias for sol in solutions])},
        "train_loss": train_loss,
        "val_loss": train_loss if datamodule.val_is_train else loss("val"),
        "test": None,
        "condition_number": max(sol.condition for sol in solutions),
        "rank": min(sol.rank for sol in solutions),
    })
    _add_reports(record, targets, data.target_names, with_params=decay == 0)
    if "test" in datamodule.splits:
        sums = RegressionSums()
        xs, ys = datamodule.splits["test"]
        for i in range(0, int(xs.shape[0]), cf.CHUNK):
            pred = torch.cat([sc.y_inverse(sol.predict(xs[i:i + cf.CHUNK].cpu(), dz))
                              for sc, dz, _, sol in targets], dim=1)
            sums.update(pred, ys[i:i + cf.CHUNK].cpu())
        record["test"] = sums.compute(centered=model.has_bias, names=data.target_names)
        record["test"].update(adjusted_r2(record["test"]["r2"], sums.n,
                                          int(solutions[0].weight.shape[0]), model.has_bias))
    return record, solutions[0] if k == 1 else None


def _add_reports(record: dict[str, Any], targets: list[Any], names: list[str],
                 with_params: bool) -> None:
    """The report (and data-unit coefficients) of one target, or of each by name."""
    if targets[0][2] is None:  # no report asked for
        return
    if len(targets) == 1:
        report = targets[0][2]
        record["report"] = report
        record["params_data_units"] = _data_unit_params(report) if with_params else None
        return
    record["per_target"] = {name: {
        "report": report,
        "params_data_units": _data_unit_params(report) if with_params else None}
        for name, (_, _, report, _) in zip(names, targets, strict=True)}


def _data_unit_params(report: dict[str, Any]) -> dict[str, Any]:
    """The report's coefficients by term name, in the data's own units."""
    return {row["name"]: row["coef"] for row in report["coef"]}


def optimality_gap(train_loss: float | None, optimum: float | None) -> dict[str, Any] | None:
    """How far the trained model's training loss is above the least-squares optimum."""
    if train_loss is None or optimum is None:
        return None
    gap = train_loss - optimum
    return {"absolute": gap, "relative": gap / optimum if optimum > 0 else None}


def params_in_data_units(params: dict[str, Any], scaling: Any) -> dict[str, Any] | None:
    """A linear model's weights and bias (one row per target) as they act on unscaled
    inputs and targets."""
    if not scaling.active or "weight" not in params or params.get("bias") is None:
        return None
    biases = params["bias"] if isinstance(params["bias"], list) else [params["bias"]]
    rows, out_bias = [], []
    for j, (row, bias) in enumerate(zip(params["weight"], biases, strict=True)):
        sc = scaling.target(j)
        weight = list(row)
        if sc.x_mean is not None:
            bias -= sum(w * m / s for w, m, s in zip(weight, sc.x_mean, sc.x_std, strict=True))
            weight = [w / s for w, s in zip(weight, sc.x_std, strict=True)]
        if sc.y_mean is not None:
            weight = [w * sc.y_std for w in weight]
            bias = bias * sc.y_std + sc.y_mean
        rows.append(weight)
        out_bias.append(bias)
    return {"weight": rows, "bias": out_bias[0] if len(out_bias) == 1 else out_bias}


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


def _finite_or_none(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else value


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


def saved_run(run_dir: Path) -> dict[str, Any] | None:
    """A run's config, overrides and launch dir, from ``.hydra/`` where Hydra wrote it,
    else from the ``run`` record in ``metrics.json``; None when neither is there.

    A run started with ``seed=null`` drew its seed after Hydra saved the config: the seed
    is filled in from ``metrics.json`` or, for a run killed before writing one, from its
    ``last.ckpt`` (``seed_drawn`` says so), so its data is rebuilt with the same splits.
    """
    import yaml

    def load(name: str, empty: Any) -> Any:
        file = run_dir / ".hydra" / name
        return (yaml.safe_load(file.read_text()) or empty) if file.is_file() else empty

    try:
        if (run_dir / ".hydra").is_dir():
            hydra = (load("hydra.yaml", {}).get("hydra") or {}).get("runtime") or {}
            saved = {"config": load("config.yaml", {}), "overrides": load("overrides.yaml", []),
                     "launch_dir": hydra.get("cwd")}
        else:
            saved = json.loads((run_dir / METRICS_FILE).read_text()).get("run")
    except (OSError, ValueError, AttributeError, yaml.YAMLError):
        return None
    if not isinstance(saved, dict) or not isinstance(saved.get("config"), dict):
        return None
    asked = [str(o).split("=", 1)[1] for o in saved.get("overrides") or []
             if str(o).split("=", 1)[0] == "seed"]
    if ("seed" in saved["config"] and saved["config"]["seed"] is None) or \
            (asked and asked[-1] == "null"):
        saved["config"]["seed"] = _recorded_seed(run_dir)
        saved["seed_drawn"] = True
    saved["run_dir"] = str(run_dir)
    return saved


def _recorded_seed(run_dir: Path) -> int | None:
    """The seed a ``seed=null`` run drew: ``metrics.json`` ``hparams.seed``, else the
    ``seed`` its checkpoint's reglab stamp holds."""
    try:
        seed = json.loads((run_dir / METRICS_FILE).read_text())["hparams"]["seed"]
    except (OSError, ValueError, KeyError, TypeError):
        seed = None
    if not isinstance(seed, int) and (run_dir / "checkpoints" / "last.ckpt").is_file():
        import torch

        try:
            stamp = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu",
                               weights_only=True).get("reglab") or {}
            seed = stamp.get("seed")
        except Exception:  # an unreadable checkpoint: resume reports it in its own words
            seed = None
    return seed if isinstance(seed, int) and not isinstance(seed, bool) else None


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write atomically, so a reader never sees half a file."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2, allow_nan=False) + "\n")
    os.replace(tmp, path)


def _num(value: Any, spec: str = ".6g") -> str:
    return "—" if value is None else format(value, spec)


def _p(value: float | None) -> str:
    return "—" if value is None else ("<1e-16" if value < 1e-16 else f"{value:.3g}")


#: Terms the console table shows; metrics.json and TensorBoard hold every one.
REPORT_ROWS = 12


def report_table(report: dict[str, Any], markdown: bool = False,
                 limit: int | None = REPORT_ROWS) -> list[str]:
    """The least-squares report as a table a person reads: one row per term (coef, its
    standard error, t, p and 95 % interval), then the fit statistics."""
    head = ["term", "coef", "std err", "t", "P>|t|", "[0.025", "0.975]"]
    rows = [[str(r["name"]), _num(r["coef"]), _num(r["std_err"], ".4g"), _num(r["t"], ".3f"),
             _p(r["p_value"]), _num(r["ci_low"]), _num(r["ci_high"])]
            for r in report["coef"]]
    more = 0
    if limit is not None and len(rows) > limit:
        more, rows = len(rows) - limit, rows[:limit]
    stats = (f"n {report['n']}   R² {_num(report['r2'], '.6g')}   adj. R² "
             f"{_num(report['adjusted_r2'], '.6g')}   F {_num(report['f_statistic'], '.4g')} "
             f"(p {_p(report['f_p_value'])})   σ {_num(report['sigma'], '.4g')}   "
             f"cond. no. {_num(report['condition_number'], '.3g')}")
    if markdown:
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        return [*lines, "", stats]
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    lines = ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in
                       enumerate(zip(r, widths, strict=True))) for r in [head, *rows]]
    if more:
        lines.append(f"… {more} more terms in metrics.json")
    return [*lines, stats]


def log_hparams(loggers: list[Any], hp: dict[str, Any], metric_tags: list[str],
                reference_layout: bool = False, report: dict[str, Any] | None = None,
                per_target: dict[str, Any] | None = None) -> None:
    """Fill TensorBoard's HPARAMS tab with this run's hyper-parameters.

    The tab shows, for each metric tag named here, the last value of that scalar series
    in the run, so it lists the run's real final losses rather than a placeholder. With
    ``reference_layout``, a Custom Scalars chart also puts the training loss and the
    least-squares optimum on one set of axes. Both go to a new event file in the run's
    own log dir (Lightning has closed its writer by now); TensorBoard reads every event
    file of a dir as one run. A least-squares ``report`` goes to the TEXT tab as a table.
    """
    from torch.utils.tensorboard import SummaryWriter
    from torch.utils.tensorboard.summary import hparams as hparams_summary

    # TensorBoard takes no None: a null batch size is a full batch; anything else unset
    # (the lr of optimizer=exact) reads "none".
    clean = {k: (("full" if k == "batch_size" else "none") if v is None else v)
             for k, v in hp.items()}
    layout = {"reglab": {"train loss vs least-squares optimum": [
        "Multiline", ["train/loss_epoch", "train/loss_closed_form"]]}}
    for log_dir in _tensorboard_dirs(loggers):
        with SummaryWriter(log_dir=log_dir) as writer:
            for summary in hparams_summary(clean, dict.fromkeys(metric_tags, 0.0)):
                writer.file_writer.add_summary(summary)
            if reference_layout:
                writer.add_custom_scalars(layout)
            if report:  # TensorBoard's TEXT tab renders markdown tables
                writer.add_text("least_squares/report", "\n".join(
                    report_table(report, markdown=True, limit=None)))
            for name, own in (per_target or {}).items():
                writer.add_text(f"least_squares/report/{name}", "\n".join(
                    report_table(own["report"], markdown=True, limit=None)))


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


def _tensorboard_dirs(loggers: list[Any]) -> list[str]:
    from pytorch_lightning.loggers import TensorBoardLogger

    return [lg.log_dir for lg in loggers if isinstance(lg, TensorBoardLogger)]


def _fmt(value: float | list[float] | None) -> str:
    if isinstance(value, list):
        return "[" + ", ".join(_fmt(v) for v in value) + "]"
    return "—" if value is None else f"{value:.6g}"


def summary_lines(metrics: dict[str, Any], run_dir: Path) -> list[str]:
    """A few lines a person reads at the end of a run."""
    exact = metrics.get("method") == "exact"
    how = ("solved exactly, no gradient steps (optimizer=exact)" if exact else
           f"{metrics['epochs']} epochs, {metrics['steps']} steps")
    lines = [
        f"reglab: {metrics['hparams']['experiment']} {metrics['status']} in "
        f"{metrics['fit_seconds']:.2f} s — {how}",
        f"  train loss {_fmt(metrics['train_loss'])}   val loss {_fmt(metrics['val_loss'])}",
    ]
    cv = metrics.get("cv")
    if cv:
        lines.append(f"  {cv['folds']}-fold cross-validation over {cv['rows']} rows: val loss "
                     f"{_fmt(cv['val_loss_mean'])} ± {_fmt(cv['val_loss_std'])} (std over "
                     f"folds), train loss {_fmt(cv['train_loss_mean'])}")
    test = metrics.get("test")
    if test:
        lines.append(f"  test  mse {_fmt(test['mse'])}  rmse {_fmt(test['rmse'])}  "
                     f"mae {_fmt(test['mae'])}  r2 {_fmt(test['r2'])}")
        for name, own in (test.get("per_target") or {}).items():
            lines.append(f"    {name}: mse {_fmt(own['mse'])}  rmse {_fmt(own['rmse'])}  "
                         f"mae {_fmt(own['mae'])}  r2 {_fmt(own['r2'])}")
    params = metrics.get("params_data_units") or metrics.get("params")
    if params and "weight" in params and len(params["weight"]) > 1:  # several targets
        names = metrics.get("data", {}).get("target") or []
        biases = params.get("bias") or [None] * len(params["weight"])
        for j, (row, bias) in enumerate(zip(params["weight"], biases, strict=False)):
            name = names[j] if j < len(names) else f"y{j}"
            lines.append(f"  learned {name}: weight [{', '.join(f'{w:.6g}' for w in row[:6])}"
                         f"{', …' if len(row) > 6 else ''}]   bias {_fmt(bias)}")
    elif params and "weight" in params:
        weights = params["weight"][0]
        weight = ", ".join(f"{w:.6g}" for w in weights[:6]) + (", …" if len(weights) > 6 else "")
        line = f"  learned weight [{weight}]   bias {_fmt(params.get('bias'))}"
        truth = metrics.get("true_params")
        if truth:
            true_w = ", ".join(f"{w:.6g}" for w in truth["weight"][0])
            line += f"   (true [{true_w}], {_fmt(truth.get('bias'))})"
        lines.append(line)
    closed = metrics.get("closed_form") or {}
    gap = closed.get("optimality_gap")
    if exact and gap and gap["relative"] is not None and gap["relative"] > 1e-9:
        lines.append(f"  the weights were rounded to the model's precision: train loss "
                     f"{gap['relative']:.3g} (relative) above the optimum in metrics.json; "
                     "trainer.precision=64-true keeps every digit")
    elif gap and not exact:
        rel = "" if gap["relative"] is None else f" ({gap['relative']:.3g} relative)"
        what = "least-squares" if closed.get("objective") == "least squares" else "ridge"
        lines.append(f"  {what} optimum: train loss {_fmt(closed['train_loss'])}; "
                     f"this fit is {gap['absolute']:.3g} above it{rel}")
    if closed.get("why_no_optimum"):
        lines.append(f"  no optimum to compare with: {closed['why_no_optimum']}")
    reports = ({"": closed["report"]} if closed.get("report") else
               {name: own["report"] for name, own in (closed.get("per_target") or {}).items()})
    for name, report in reports.items():
        target = f" (target {name})" if name else ""
        lines.append(f"  least squares on the training split, in the data's units{target}:")
        lines += [f"    {line}" for line in report_table(report)]
    if metrics.get("status") == "fast_dev_run":
        lines.append(f"  fast_dev_run: a smoke test of {metrics['steps']} step(s); as Lightning "
                     "does, no checkpoint and no logs were written, and no model.pt")
    lines.append(f"  run dir: {run_dir}")
    logs = metrics.get("logs") or {}
    if "tensorboard" in logs:
        lines.append(f"  review:  tensorboard --logdir {run_dir}")
    if "csv" in logs:
        lines.append(f"  metrics: {logs['csv']}")
    lines += [f"  {name}: {where}" for name, where in logs.items()
              if name not in ("tensorboard", "csv")]
    return lines


def collect(cfg: DictConfig, trainer: Any, module: Any, datamodule: Any, fit_seconds: float,
            choices: dict[str, str] | None = None, closed: dict[str, Any] | None = None,
            status: str = "completed") -> dict[str, Any]:
    """Everything ``metrics.json`` records about a finished fit.

    ``closed`` is the record :func:`closed_form` made before the fit, if any.
    """
    from reglab.parts import is_reglab_data

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
    if module.diverged_at_step is not None:
        status = "diverged"
    elif module.interrupted_by is not None:
        status = "interrupted"
    test = module.test_metrics
    if test is not None:
        from reglab.metrics import adjusted_r2, score

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
        closed = {**closed, "optimality_gap": optimality_gap(trained, optimum)}
    return {
        "status": status,
        "diverged_at_step": module.diverged_at_step,
        "interrupted_by": module.interrupted_by,
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
