"""The sweep report: one table, one heat map and one chart of curves per multirun, and a
validation curve (train and val loss against the swept value) when one numeric key is swept
(drawn by :mod:`reglab.reporting.figures.sweep_plots`).

Built only from files on disk (each job's ``.hydra/overrides.yaml`` and
``metrics.json``), so the same report comes out at the end of a sweep, for a sweep that
was cut short, and for one that ran on another machine.

A job run with k-fold cross-validation (``data.folds=K``) carries a ``cv`` record; the
sweep is then decided by its K-fold mean val loss (shown as mean ± std), not by one split.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from reglab.run_files import saved_run, write_whole

log = logging.getLogger("reglab")

SUMMARY_CSV = "sweep_summary.csv"
SUMMARY_MD = "sweep_summary.md"
HEATMAP_PNG = "sweep_heatmap.png"
CURVES_PNG = "sweep_curves.png"
VALIDATION_CURVE_PNG = "sweep_validation_curve.png"
#: An Optuna study's own charts (sweep dirs with a study.json).
HISTORY_PNG = "study_history.png"
IMPORTANCE_PNG = "study_importance.png"
TRIAL_CURVES_PNG = "study_trial_curves.png"
COLUMNS = ["job", "overrides", "status", "train_loss", "val_loss", "test_loss", "r2",
           "epochs", "fit_seconds", "run_dir", "error"]
#: Overrides that say how a job ran, not what it tried: ``resume=<sweep>/<job>`` adds
#: the checkpoint and the TensorBoard version it continues.
NOT_SWEPT = {"ckpt_path", "logger.tensorboard.version", "overwrite", "resume"}
#: From a job's ``cv`` record; in the CSV (after val_loss) only when some job has one.
CV_COLUMNS = ["cv_val_loss", "cv_val_std", "cv_train_loss", "folds"]
# How Hydra writes small and large floats (1e-06, 1e+20); YAML 1.1 reads them as strings.
_EXPONENT_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


@dataclass
class Report:
    rows: list[dict[str, Any]]
    swept: list[str]
    markdown: str
    files: list[Path] = field(default_factory=list)

    @property
    def best(self) -> dict[str, Any] | None:
        """The job with the lowest :func:`rank_loss` (K-fold mean when cross-validated)."""
        done = [r for r in self.rows if rank_loss(r) is not None and r["status"] != "pruned"]
        return min(done, key=lambda r: rank_loss(r) or 0.0) if done else None


def number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def rank_loss(row: dict[str, Any]) -> float | None:
    """The validation loss a sweep is decided by: the K-fold mean when the job was
    cross-validated (one split's loss is one draw of the noise), else its val loss."""
    if row.get("status") in ("diverged", "failed", "interrupted"):
        return None  # a diverged job's last loss (1e37) is not a result to rank or draw
    cv = number(row.get("cv_val_loss"))
    return cv if cv is not None else number(row.get("val_loss"))


def _has_cv(row: dict[str, Any]) -> bool:
    return any(row.get(c) is not None for c in CV_COLUMNS)


def folds_label(rows: list[dict[str, Any]]) -> str:
    """The fold count to print: "5" when every cross-validated job used 5, else "K"."""
    folds = {r.get("folds") for r in rows if r.get("folds") is not None}
    return str(folds.pop()) if len(folds) == 1 else "K"


def _cv_fields(metrics: dict[str, Any]) -> dict[str, Any]:
    """The K-fold summary of a job's ``cv`` record; all None for a job fit on one split."""
    cv = metrics.get("cv")
    if not isinstance(cv, dict):
        return dict.fromkeys(CV_COLUMNS)
    folds = cv.get("folds")
    return {"cv_val_loss": number(cv.get("val_loss_mean")),
            "cv_val_std": number(cv.get("val_loss_std")),
            "cv_train_loss": number(cv.get("train_loss_mean")),
            "folds": folds if isinstance(folds, int) and not isinstance(folds, bool) else None}


def _parse_override(text: str) -> tuple[str, Any]:
    key, _, raw = text.partition("=")
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        value = raw
    if isinstance(value, str) and _EXPONENT_FLOAT.fullmatch(value.strip()):
        value = float(value)  # weight_decay=1e-06 is a number, to sort and to plot as one
    return key.lstrip("+~"), value


def job_dirs(sweep_dir: Path) -> list[Path]:
    """The job folders of a multirun dir, found by what Hydra and reglab write into each
    (``.hydra/`` or ``metrics.json``), whatever ``hydra.sweep.subdir`` named them:
    numbered folders in job order, others (``optimizer.lr=0.1``) by name."""
    if not sweep_dir.is_dir():
        raise FileNotFoundError(f"{sweep_dir}: no such sweep directory")
    found = {p.parent for name in (".hydra", "metrics.json") for p in sweep_dir.rglob(name)
             if p.parent != sweep_dir}
    # A job's own subfolders never hold these files; a folder inside another job's is not
    # a job of this sweep (a nested sweep, say).
    jobs = [d for d in found if not any(o in d.parents for o in found)]
    if not jobs:
        raise ValueError(f"{sweep_dir}: not a sweep directory (no job folders with "
                         ".hydra/ or metrics.json)")
    return sorted(jobs, key=lambda d: job_order(job_name(sweep_dir, d)))


def job_name(sweep_dir: Path, job: Path) -> str:
    """How the report names a job: its folder, relative to the sweep dir."""
    return job.relative_to(sweep_dir).as_posix()


def job_order(name: str) -> tuple[int, int, str]:
    """Numbered jobs first, in number order, then the others by name."""
    return (0, int(name), "") if name.isdigit() else (1, 0, name)


def _read_metrics(path: Path) -> tuple[dict[str, Any], str]:
    """A job's metrics.json, or ({}, why it cannot be read): one broken job (a truncated
    file, a disk that filled up) is reported by name, never the whole sweep refused."""
    if not path.is_file():
        return {}, ""
    try:
        metrics = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        return {}, f"{path}: unreadable ({type(exc).__name__}: {str(exc)[:80]})"
    if not isinstance(metrics, dict):
        return {}, f"{path}: unreadable (holds a {type(metrics).__name__}, not a record)"
    return metrics, ""


def study_record(sweep_dir: Path) -> dict[str, Any] | None:
    """The Optuna study behind a sweep dir (its ``study.json``): each trial's state,
    value, parameters and reported curve, and the searched keys' importances. None for
    a grid sweep, or a study whose storage cannot be opened from here (said in a warning)."""
    import warnings

    from reglab.search import study as studies

    found = studies.read_study_file(sweep_dir)
    if not found:
        return None
    try:
        import optuna

        studies.quiet_optuna()
        study = optuna.load_study(study_name=str(found["study_name"]),
                                  storage=studies.open_storage(str(found["storage"]),
                                                               checked=True))
        trials = [{"number": t.number, "state": t.state.name, "value": t.value,
                   "params": t.params, "intermediate": dict(t.intermediate_values),
                   "user_attrs": t.user_attrs} for t in study.trials]
    except Exception as exc:  # the jobs' own files still make the report
        log.warning("sweep report: study %s in %s not read: %s: %s", found.get("study_name"),
                    found.get("storage"), type(exc).__name__, str(exc)[:200])
        return None
    importances: dict[str, float] = {}
    complete = [t for t in trials if t["state"] == "COMPLETE"]
    if len(complete) >= 3 and len(study.best_trial.params) > 0:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                # Seeded, so a report rebuilt from the same study says the same; 32
                # trees instead of 64 halve the time, for a handful of searched keys.
                evaluator = optuna.importance.FanovaImportanceEvaluator(n_trees=32, seed=0)
                importances = {k: float(v) for k, v in optuna.importance.get_param_importances(
                    study, evaluator=evaluator).items()}
        except Exception as exc:  # too few distinct values, say: the chart is left out
            log.info("sweep report: no importances: %s", exc)
    return {"study_name": found["study_name"], "storage": found["storage"],
            "direction": found.get("direction", "minimize"), "trials": trials,
            "importances": importances}


def _with_trial(row: dict[str, Any], trial: dict[str, Any] | None,
                retried: dict[int, int]) -> None:
    """A job's row completed by its trial: a job the sweep's process took down with it
    (no record) is failed, or retried when its configuration ran again."""
    if trial is None:
        return
    row["trial_state"] = trial["state"]
    if row["status"] != "missing":
        return
    if trial["state"] == "FAIL":
        again = retried.get(trial["number"])
        row["status"] = "retried" if again is not None else "failed"
        row["error"] = ("stopped with its sweep's process"
                        + (f"; tried again as trial {again}" if again is not None else ""))
    elif trial["state"] == "RUNNING":
        row["status"] = "running"


def job_rows(sweep_dir: Path, study: dict[str, Any] | None = None
             ) -> tuple[list[dict[str, Any]], list[str], dict[str, dict[str, Any]]]:
    """One row per job, the swept keys, and each job's metrics.json (for curves)."""
    rows, overrides_by_job, metrics_by_job = [], {}, {}
    trials = {str(t["number"]): t for t in (study or {}).get("trials", [])}
    retried = {t["user_attrs"]["reglab_retry_of"]: t["number"] for t in trials.values()
               if isinstance(t["user_attrs"].get("reglab_retry_of"), int)}
    try:
        jobs = job_dirs(sweep_dir)
    except ValueError:  # no job folders yet: a study's trials may still be rows
        if not trials:
            raise
        jobs = []
    for job in jobs:
        # From .hydra/overrides.yaml, or the run record when Hydra wrote no .hydra/.
        overrides = (saved_run(job) or {}).get("overrides")
        overrides = [str(o) for o in overrides] if isinstance(overrides, list) else []
        name = job_name(sweep_dir, job)
        overrides_by_job[name] = dict(_parse_override(o) for o in overrides)
        metrics, unreadable = _read_metrics(job / "metrics.json")
        metrics_by_job[name] = metrics
        test = metrics.get("test") or {}
        rows.append({
            "job": name,
            "overrides": " ".join(overrides or []),
            "status": "unreadable" if unreadable else metrics.get("status", "missing"),
            "train_loss": metrics.get("train_loss"),
            "val_loss": metrics.get("val_loss"),
            **_cv_fields(metrics),
            "test_loss": test.get("mse"),
            "r2": test.get("r2"),
            "epochs": metrics.get("epochs"),
            "fit_seconds": metrics.get("fit_seconds"),
            "run_dir": str(job.resolve()),
            "error": unreadable or metrics.get("error") or (
                f"diverged at step {metrics['diverged_at_step']}"
                if metrics.get("status") == "diverged" else ""),
        })
        _with_trial(rows[-1], trials.get(name), retried)
    for number, trial in sorted(trials.items(), key=lambda kv: int(kv[0])):
        if number in metrics_by_job or trial["state"] == "WAITING":
            continue
        # A trial whose job never made its folder (the sweep was killed as it started).
        shown = [f"{k}={v}" for k, v in trial["params"].items()]
        overrides_by_job[number] = dict(trial["params"])
        metrics_by_job[number] = {}
        rows.append({"job": number, "overrides": " ".join(shown), "status": "missing",
                     **dict.fromkeys(["train_loss", "val_loss", *CV_COLUMNS, "test_loss",
                                      "r2", "epochs", "fit_seconds"]),
                     "run_dir": "", "error": ""})
        _with_trial(rows[-1], trial, retried)
    rows.sort(key=lambda r: job_order(r["job"]))
    keys = [k for k in dict.fromkeys(k for ov in overrides_by_job.values() for k in ov)
            if k not in NOT_SWEPT]
    swept = [k for k in keys
             if len({repr(ov.get(k)) for ov in overrides_by_job.values()}) > 1] or keys
    for row in rows:
        for key in swept:
            value = overrides_by_job[row["job"]].get(key)
            # A list or mapping (model.hidden=[64,64]) is a label to group and plot by.
            row[key] = value if isinstance(value, (str, int, float, bool, type(None))) \
                else json.dumps(value, separators=(",", ":"))
    return rows, swept, metrics_by_job


def cell(value: Any) -> str:
    if value is None or value == "":
        return "—"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _cv_cell(row: dict[str, Any]) -> str:
    mean, std = number(row.get("cv_val_loss")), number(row.get("cv_val_std"))
    if mean is None:
        return "—"
    return f"{mean:.4g}" if std is None else f"{mean:.4g} ± {std:.4g}"


def to_markdown(rows: list[dict[str, Any]], swept: list[str], title: str) -> str:
    """The table sorted by :func:`rank_loss` (failed jobs last), the best row marked; a
    ``cv val_loss`` column (K-fold mean ± std) when some job was cross-validated."""
    ordered = sorted(rows, key=lambda r: (rank_loss(r) is None, r["status"] == "pruned",
                                          rank_loss(r) or 0.0, job_order(r["job"])))
    best = (ordered[0] if ordered and rank_loss(ordered[0]) is not None
            and ordered[0]["status"] != "pruned" else None)
    with_cv = any(_has_cv(r) for r in rows)
    cols = ["job", *swept, "status", *(["cv val_loss"] if with_cv else []), "val_loss",
            "train_loss", "test_loss", "r2", "epochs", "fit_seconds"]
    done = sum(r["status"] == "completed" for r in rows)
    smoke = sum(r["status"] == "fast_dev_run" for r in rows)  # smoke tests, not failures
    pruned = sum(r["status"] == "pruned" for r in rows)  # stopped early by a study's pruner
    summary = (f"{len(rows)} jobs: {done} completed, "
               + (f"{pruned} pruned, " if pruned else "")
               + (f"{smoke} fast_dev_run smoke tests, " if smoke else "")
               + f"{len(rows) - done - smoke - pruned} not")
    k = folds_label(rows)
    if best and number(best.get("cv_val_loss")) is not None:
        summary += (f"; best cv val_loss {_cv_cell(best)} ({k}-fold mean ± std,"
                    f" job {best['job']})")
    else:
        if best:
            summary += f"; best val_loss {rank_loss(best):.4g} (job {best['job']})"
        if with_cv:
            summary += f"; cv val_loss is the {k}-fold mean ± std"
    lines = [f"## Sweep {title}", "", summary,
             "", "| " + " | ".join(["", *cols]) + " |",
             "|" + "---|" * (len(cols) + 1)]
    for r in ordered:
        mark = "★ best" if r is best else ""
        cells = (_cv_cell(r) if c == "cv val_loss" else cell(r.get(c)) for c in cols)
        lines.append("| " + " | ".join([mark, *cells]) + " |")
    failed = [r for r in rows if r["error"]]
    if failed:
        lines += ["", "Failures:"]
        lines += [f"- job {r['job']} ({r['overrides']}): {r['error']}" for r in failed]
    return "\n".join(lines) + "\n"


def study_markdown(study: dict[str, Any]) -> str:
    """The study's own lines: trials by state, the best trial, the keys' importances."""
    trials = study["trials"]
    counts = {}
    for t in trials:
        counts[t["state"].lower()] = counts.get(t["state"].lower(), 0) + 1
    states = ", ".join(f"{n} {state}" for state, n in sorted(counts.items()))
    lines = ["", f"Optuna study `{study['study_name']}` in {study['storage']} "
             f"({study['direction']}): {len(trials)} trials: {states}."]
    complete = [t for t in trials if t["state"] == "COMPLETE" and number(t["value"]) is not None]
    if complete:
        pick = min if study["direction"] == "minimize" else max
        best = pick(complete, key=lambda t: t["value"])
        params = ", ".join(f"{k}={cell(v)}" for k, v in best["params"].items())
        lines.append(f"Best trial {best['number']}: {best['value']:.4g} ({params}).")
    if study["importances"]:
        lines.append("Importance (fANOVA): " + ", ".join(
            f"{k} {v:.2f}" for k, v in sorted(study["importances"].items(),
                                               key=lambda kv: -kv[1])) + ".")
    lines.append("Watch it live: optuna-dashboard " + _dashboard_url(study["storage"]))
    return "\n".join(lines) + "\n"


def _dashboard_url(storage: str) -> str:
    return storage if "://" in storage else f"'{storage}'"


def write_csv(path: Path, rows: list[dict[str, Any]], swept: list[str]) -> None:
    """One line per job; the :data:`CV_COLUMNS` after val_loss when some job has them."""
    cols = ["job", "overrides", *swept, *COLUMNS[2:]]
    if any(_has_cv(r) for r in rows):
        at = cols.index("val_loss") + 1
        cols[at:at] = CV_COLUMNS
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=cols, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({c: "" if row.get(c) is None else row.get(c) for c in cols})


def write_report(sweep_dir: str | Path, x_axis: str = "epoch") -> Report:
    """Write the CSV, Markdown, heat map, curves and validation curve into ``sweep_dir``;
    ``x_axis`` (epoch or step) is what the curves are drawn against."""
    sweep_dir = Path(sweep_dir)
    study = study_record(sweep_dir)
    rows, swept, metrics_by_job = job_rows(sweep_dir, study)
    markdown = to_markdown(rows, swept, sweep_dir.name)
    if study is not None:
        markdown += study_markdown(study)
    files = [sweep_dir / SUMMARY_CSV, sweep_dir / SUMMARY_MD]
    write_whole(files[0], lambda tmp: write_csv(tmp, rows, swept))
    write_whole(files[1], lambda tmp: tmp.write_text(markdown))
    from reglab.reporting.figures.sweep_plots import (
        plot_comparison,
        plot_curves,
        plot_validation_curve,
    )

    charts = [(HEATMAP_PNG, lambda p: plot_comparison(p, rows, swept)),
              (CURVES_PNG, lambda p: plot_curves(p, rows, swept, metrics_by_job, x_axis)),
              (VALIDATION_CURVE_PNG, lambda p: plot_validation_curve(p, rows, swept))]
    if study is not None:
        from reglab.reporting.figures import study_plots

        trials = study["trials"]
        charts += [
            (HISTORY_PNG, lambda p: study_plots.plot_history(p, trials, study["direction"])),
            (IMPORTANCE_PNG, lambda p: study_plots.plot_importance(p, study["importances"])),
            (TRIAL_CURVES_PNG, lambda p: study_plots.plot_trial_curves(p, trials))]
    for name, draw in charts:
        try:  # a chart that cannot be drawn must not cost the table
            if write_whole(sweep_dir / name, draw):
                files.append(sweep_dir / name)
        except OSError as exc:
            if exc.errno is not None:
                raise  # the machine's (disk full, a size limit): the command's, one line
            log.warning("sweep report: %s not drawn: %s: %s", name, type(exc).__name__, exc)
        except Exception as exc:
            log.warning("sweep report: %s not drawn: %s: %s", name, type(exc).__name__, exc)
    return Report(rows=rows, swept=swept, markdown=markdown, files=files)
