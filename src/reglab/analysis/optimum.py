"""The least-squares (or ridge) optimum a run's training approaches, and how far it is.

Solved before the fit from the training split as read, in float64 and in the units
training sees; the record it makes is ``closed_form`` in ``metrics.json``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import nn


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
    from reglab.training.exact import is_exact

    if is_exact(optimizer):  # solved with torch's penalty definition, by construction
        return decay, None
    if name not in _COUPLED_DECAY or type(optimizer).__module__.split(".")[0] != "torch":
        return decay, (f"reglab does not know how {type(optimizer).__qualname__} applies "
                       "weight_decay, so it cannot say which optimum it approaches")
    return decay, None


def find_optimum(model: nn.Module, loss_fn: nn.Module, datamodule: Any, optimizer: Any = None,
                report: bool = True) -> tuple[dict[str, Any] | None, Any]:
    """:func:`_find_optimum` with torch on one thread: its chunk loops alternate torch
    (scaling, features) with numpy's BLAS (QR, products), and on a small machine the two
    thread pools spin against each other (a 10⁶-row solve took 3× as long)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _find_optimum(model, loss_fn, datamodule, optimizer, report)
    finally:
        torch.set_num_threads(threads)


def _find_optimum(model: nn.Module, loss_fn: nn.Module, datamodule: Any, optimizer: Any,
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

    from reglab.analysis import least_squares as cf
    from reglab.analysis.metrics import RegressionSums, adjusted_r2
    from reglab.analysis.ols_report import report_for_model
    from reglab.models.regressors import LinearRegression

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
