"""The console text a person reads: a run's closing summary and the least-squares table."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def _num(value: Any, spec: str = ".6g") -> str:
    return "—" if value is None else format(value, spec)


def _t(value: float | None) -> str:
    """t as statsmodels prints it (three decimals), but in powers of ten once it is too
    large for decimals to mean anything (an exact fit's t of 1e15)."""
    if value is None:
        return "—"
    return f"{value:.3f}" if abs(value) < 1e5 else f"{value:.4g}"


def _p(value: float | None) -> str:
    return "—" if value is None else ("<1e-16" if value < 1e-16 else f"{value:.3g}")


#: Terms the console table shows; metrics.json and TensorBoard hold every one.
REPORT_ROWS = 12


def report_table(report: dict[str, Any], markdown: bool = False,
                 limit: int | None = REPORT_ROWS) -> list[str]:
    """The least-squares report as a table a person reads: one row per term (coef, its
    standard error, t, p and 95 % interval), then the fit statistics."""
    head = ["term", "coef", "std err", "t", "P>|t|", "[0.025", "0.975]"]
    rows = [[str(r["name"]), _num(r["coef"]), _num(r["std_err"], ".4g"), _t(r["t"]),
             _p(r["p_value"]), _num(r["ci_low"]), _num(r["ci_high"])]
            for r in report["coef"]]
    more = 0
    if limit is not None and len(rows) > limit:
        more, rows = len(rows) - limit, rows[:limit]
    stats = (f"n {report['n']}   R² {_num(report['r2'], '.6g')}   adj. R² "
             f"{_num(report['adjusted_r2'], '.6g')}   F {_num(report['f_statistic'], '.4g')} "
             f"(p {_p(report['f_p_value'])})   σ {_num(report['sigma'], '.4g')}   "
             f"cond. no. {_num(report['condition_number'], '.3g')}")
    if report.get("rank") is not None and report["rank"] < len(report["coef"]) and \
            report.get("rank_tolerance") is not None:
        stats += (f"   rank {report['rank']} of {len(report['coef'])} (singular values "
                  f"under {report['rank_tolerance']:.2g}× the largest, of the centred "
                  "unit-norm columns, count as zero)")
    if markdown:  # a "|" inside a cell (P>|t|) would end it: escaped, as Markdown allows
        def row(cells: list[str]) -> str:
            return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

        lines = [row(head), "|" + "---|" * len(head), *(row(r) for r in rows)]
        return [*lines, "", stats]
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    lines = ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in
                       enumerate(zip(r, widths, strict=True))) for r in [head, *rows]]
    if more:
        lines.append(f"… {more} more terms in metrics.json")
    return [*lines, stats]


def _fmt(value: float | list[float] | None) -> str:
    if isinstance(value, list):
        return "[" + ", ".join(_fmt(v) for v in value) + "]"
    return "—" if value is None else f"{value:.6g}"


def sweep_job_lines(lines: list[str], run_dir: Path) -> list[str]:
    """What a sweep job prints of its :func:`summary_lines`: its outcome, losses and dir
    (the whole summary is in its train.log), so a 30-trial study reads as 30 short
    paragraphs."""
    return [*lines[:2], f"  run dir: {run_dir} (summary in train.log)"]


def summary_lines(metrics: dict[str, Any], run_dir: Path) -> list[str]:
    """A few lines a person reads at the end of a run."""
    exact = metrics.get("method") == "exact"
    trainer = (((metrics.get("run") or {}).get("config") or {}).get("trainer") or {})
    in64 = " in float64" if str(trainer.get("precision", "")).startswith("64") else ""
    how = (f"solved exactly{in64}, no gradient steps (optimizer=exact)" if exact else
           f"{metrics['epochs']} epochs, {metrics['steps']} steps")
    lines = [
        f"reglab: {metrics['hparams']['experiment']} {metrics['status']} in "
        f"{metrics['fit_seconds']:.2f} s — {how}"
        + (f" (the study's pruner stopped it after {metrics['pruned_at']} epochs)"
           if metrics.get("status") == "pruned" else ""),
        f"  train loss {_fmt(metrics['train_loss'])}   val loss {_fmt(metrics['val_loss'])}",
    ]
    stream = metrics.get("streamed")
    if stream and stream.get("rows"):
        rows = stream["rows"]
        lines.append(
            f"  data streamed: {sum(rows.values()):,} rows ({rows['train']:,} train, "
            f"{rows['val']:,} val, {rows['test']:,} test) in "
            f"{_count(stream['units'], stream['unit'])} of {_count(stream['files'], 'file')}"
            + ("" if exact else f"; an epoch is {stream['batches_per_epoch']:,} batches")
            + (f", {stream['rows_left_per_epoch']:,} rows wait for a later epoch"
               if stream.get("rows_left_per_epoch") and not exact else ""))
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
        # Against an optimum that is zero to rounding (an exact-fit line: 4e-30), a ratio
        # says nothing: only the absolute gap is printed then.
        meaningful = gap["relative"] is not None and gap["relative"] < 1e6
        rel = f" ({gap['relative']:.3g} relative)" if meaningful else ""
        if closed.get("objective_value") is not None:
            # The gap is on what training minimises, loss + penalty: name that, not the
            # optimum's bare loss, so the line holds one quantity.
            lines.append(f"  ridge optimum: loss + penalty {_fmt(closed['objective_value'])}; "
                         f"this fit's is {gap['absolute']:.3g} above it{rel}")
        else:
            lines.append(f"  least-squares optimum: train loss {_fmt(closed['train_loss'])}; "
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


def _count(n: int, noun: str) -> str:
    """``1 file``, ``12 row groups``: a count with its noun in the right number."""
    return f"{n:,} {noun}" if n == 1 else f"{n:,} {noun}s"
