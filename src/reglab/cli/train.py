"""``reglab-train``: compose a config, fit, test, and leave a complete run dir.

The flow reads top to bottom in :func:`train`: config → data module + model →
Lightning module → trainer (loggers, callbacks) → fit → test → files in the run dir.
Only Hydra and OmegaConf are imported at module level, so ``--help`` and config errors
answer without paying for torch or Lightning. What a run settles before its fit (dir,
seed, checkpoint, Trainer) is in :mod:`reglab.training.run_setup`; ``resume=`` in
:mod:`reglab.cli.resume`.
"""

from __future__ import annotations

import copy
import logging
import sys
import time
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig

from reglab import compat, errors, run_files, startup
from reglab.cli import common, run_guard
from reglab.cli.resume import resume_argv
from reglab.config import checks
from reglab.config.compose import CONF_DIR
from reglab.reporting.sweep_callback import JobsFailed
from reglab.training import run_setup

log = logging.getLogger("reglab")

#: A failed or diverged sweep job's objective: the worst value, so a search steers away
#: from it. (NaN would make Optuna 2.x abort the whole study.)
_FAILED = float("inf")


def train(cfg: DictConfig) -> dict[str, Any]:
    """Run one experiment described by ``cfg``; return what ``metrics.json`` holds.

    Lightning's warnings that say nothing true about a reglab run are silenced for the
    run alone (:func:`reglab.training.run_setup.quiet_lightning`); the flow is
    :func:`_train`.
    """
    # Imported before the filters are set aside: the filters Lightning and torch install
    # when first imported must outlive this run.
    with startup.heavy_imports():
        import pytorch_lightning  # noqa: F401

    with run_setup.quiet_lightning(continuing=bool(cfg.get("ckpt_path"))):
        return _train(cfg)


def _train(cfg: DictConfig) -> dict[str, Any]:
    """Seed → data module → model → LightningModule → optimum → trainer → fit → test →
    record → model.pt, metrics.json, HPARAMS → summary."""
    import pytorch_lightning as pl
    from hydra.utils import instantiate
    from lightning_fabric.utilities.exceptions import MisconfigurationException

    from reglab.analysis import optimum
    from reglab.artifacts import check_checkpoint, save_model
    from reglab.config import parts
    from reglab.reporting import run_record, summary, tensorboard
    from reglab.training import exact as exact_fit

    cfg = copy.deepcopy(cfg)  # the run fills in its dir, seed and checkpoint: not the caller's
    exact_fit.choose_precision(cfg)  # optimizer=exact: float64 unless named otherwise
    run_dir = run_setup.run_dir(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    choices = run_setup.hydra_choices()
    try:
        if cfg.get("seed") is None:
            run_setup.draw_seed(cfg)
        pl.seed_everything(cfg.seed, workers=True, verbose=False)

        # Data first: the model's input width comes from it.
        datamodule = parts.build("data", lambda: instantiate(cfg.data))
        module, probe = parts.build_module(cfg, datamodule)
        model = module.model

        # The exact optimum of linear and polynomial models: the bar the fit is held to,
        # or, with optimizer=exact, the fit itself.
        exact = exact_fit.is_exact(probe)
        start = time.perf_counter()
        if parts.is_reglab_data(datamodule):
            closed, solution = optimum.find_optimum(model, module.loss_fn, datamodule, probe)
        elif exact and parts.is_streamed(datamodule):  # one pass over the table: the fit
            from reglab.analysis import streamed_fit

            closed, solution = streamed_fit.find_optimum(model, module.loss_fn, datamodule,
                                                         probe)
        else:
            closed, solution = None, None
        if exact and (why := exact_fit.refusal(closed, model, datamodule)):
            raise errors.ConfigError(why)
        folds = getattr(datamodule, "folds", None) if exact else None
        cv = (exact_fit.cross_validate(model, module.loss_fn, datamodule, probe, folds)
              if folds and parts.is_reglab_data(datamodule) else None)  # streamed: in its pass
        solve_seconds = time.perf_counter() - start
        if closed and "train_loss" in closed:
            module.reference_loss = closed["train_loss"]
            module.closed_form = solution

        # Each is a named entry (callbacks.progress_bar=null switches one off); the
        # Trainer's own switches (+trainer.logger=false, ...) win over the groups.
        _, callbacks, switches = parts.trainer_parts(cfg)  # the loggers are in switches
        if pruning := _trial_pruning():  # a study's trial reports each val loss
            callbacks.append(pruning)  # the list the Trainer is given (switches)
        trainer: pl.Trainer = run_setup.instantiate_trainer(parts.trainer_config(cfg), switches)

        if cfg.get("ckpt_path"):
            cfg.ckpt_path = run_setup.checkpoint_named(str(cfg.ckpt_path), run_dir)
            check_checkpoint(cfg.ckpt_path, module, trainer.max_epochs)
        lr_find = None
        if (cfg.get("tuner") or {}).get("lr_find") is not None:
            from reglab.training.lr_finder import find_lr

            lr_find = find_lr(trainer, module, datamodule, cfg.tuner.lr_find)
        start = time.perf_counter()
        try:
            if exact:  # no gradient loop: the optimum is set, Lightning validates it
                solved, cv = exact_fit.fit(trainer, module, datamodule, closed, cv)
                solve_seconds += solved
            else:
                trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
        except MisconfigurationException as exc:
            # Lightning's refusal of a setting, raised once fit starts: bad input, said in
            # one line like any refusal at construction (the run dir is put back).
            raise errors.ConfigError(f"trainer: {run_setup.refusal(exc)}") from None
        except (KeyboardInterrupt, SystemExit):
            if module.interrupted_by is None:
                raise
            # Asked twice: the fit stopped at once, mid-step.
            forced = run_record.interrupted_record(cfg, trainer, module, choices)
            if run_setup.global_rank() == 0:
                run_files.write_json(run_dir / run_files.METRICS_FILE, forced)
            return forced
        # The fit's own time: drawing its pictures at the end is reported apart.
        draw_seconds = sum(getattr(c, "draw_seconds", 0.0) for c in callbacks)
        fit_seconds = time.perf_counter() - start - draw_seconds
        if exact:  # the fit was the solve
            fit_seconds = solve_seconds
            draw_seconds += exact_fit.draw_figures(trainer, module)
        finished = module.diverged_at_step is None and module.interrupted_by is None
        if cfg.get("test", True) and finished and parts.has_test(datamodule):
            trainer.test(module, datamodule=datamodule, verbose=False)
        if exact:
            exact_fit.save_checkpoint(trainer, callbacks)

        metrics = run_record.fit_record(
            cfg, trainer, module, datamodule, fit_seconds, choices, closed=closed,
            plot_seconds=draw_seconds, exact=exact, cv=cv, lr_find=lr_find)
        if not trainer.is_global_zero:  # data-parallel: rank 0 alone writes the run's files
            return metrics
        if not trainer.fast_dev_run:
            save_model(model, run_dir / "model.pt", scaling=module.scaling,
                       extra={"hparams": metrics["hparams"], "data": module.data_info},
                       kwargs=module.model_spec["kwargs"])
    except Exception as exc:
        # Leave a record that says what went wrong, never a stale "completed".
        if run_setup.global_rank() == 0:
            run_files.write_json(run_dir / run_files.METRICS_FILE,
                                 run_record.failure(cfg, exc, choices))
        raise
    run_files.write_json(run_dir / run_files.METRICS_FILE, metrics)
    tensorboard.log_run(trainer.loggers, metrics, closed)
    lines = summary.summary_lines(metrics, run_dir)
    run_setup.append_to_log_files("\n".join(lines))  # train.log holds the whole summary
    if run_setup.is_multirun():  # a sweep's console: a short paragraph per job
        lines = summary.sweep_job_lines(lines, run_dir)
    common.say("\n".join(lines))  # the run is recorded: a console fault is only that
    return metrics


def _trial_pruning() -> Any:
    """The pruning callback when this job is a trial of an Optuna study with a pruner."""
    if not run_setup.is_multirun():
        return None
    from reglab.search.pruning import from_hydra

    return from_hydra()


def run_job(cfg: DictConfig, guard: run_guard.RunDirGuard) -> float:
    """One job: its exit status for a single run, its objective in a sweep, where a failed
    job is recorded and the sweep goes on. ``guard`` puts a rejected run's dir back."""
    multirun = run_setup.is_multirun()
    aside: run_guard.SetAside | None = None
    try:
        checks.check(cfg)  # before torch is imported: a typo answers at once
        if multirun:
            _check_sweep_can_run_data_parallel(cfg)
        if cfg.get("overwrite") and not cfg.get("ckpt_path") and run_setup.global_rank() == 0:
            # The old run's results out of the way, kept until this run is accepted.
            aside = run_guard.SetAside(Path(cfg.paths.run_dir))
        metrics = train(cfg)
    except errors.ReglabError as exc:
        if aside is not None:
            aside.restore()
        if multirun:
            _record_failure(cfg, exc)
            log.error("job failed: %s", exc)
            return _FAILED
        # Put the run dir back as it was: removed if this command created it.
        guard.restore(Path(cfg.paths.run_dir))
        common.fail("reglab-train", exc)
    except Exception as exc:
        if aside is not None and aside.moved:
            log.error("the replaced run's files are kept in %s", aside.holding)
        if not multirun and isinstance(exc, OSError):
            # The run's record says failed, and why.
            common.fault("reglab-train", exc, cfg.paths.run_dir)
        if not multirun:
            raise
        log.error("job failed (recorded in metrics.json): %s: %s", type(exc).__name__, exc,
                  exc_info=True)
        return _FAILED
    if aside is not None:
        aside.discard()
    if metrics["status"] == "interrupted":
        run_dir = Path(cfg.paths.run_dir)
        print(f"reglab-train: interrupted by {metrics['interrupted_by']} after "
              f"{metrics['epochs']} epochs; checkpoint in {run_dir / 'checkpoints'}; "
              f"continue with: reglab-train resume={run_dir}", file=sys.stderr, flush=True)
        sys.exit(130 if metrics["interrupted_by"] == "SIGINT" else 143)
    if metrics["status"] == "diverged":
        message = (f"training diverged at step {metrics['diverged_at_step']}: the loss became "
                   f"non-finite (optimizer.lr={metrics['hparams']['lr']}; try a smaller one)")
        if multirun:
            log.error(message)
            return _FAILED
        print(f"reglab-train: error: {message}", file=sys.stderr, flush=True)
        sys.exit(1)
    # What a sweeper minimises: with data.folds, the mean validation loss over the folds.
    val = (metrics.get("cv") or {}).get("val_loss_mean", metrics.get("val_loss"))
    return _FAILED if val is None else float(val)


def _check_sweep_can_run_data_parallel(cfg: DictConfig) -> None:
    """Lightning starts data-parallel ranks by relaunching the command line, which would
    rerun a whole local sweep; on SLURM the scheduler starts the ranks instead."""
    from hydra.core.hydra_config import HydraConfig

    from reglab.config.checks import data_parallel

    launcher = str(HydraConfig.get().launcher.get("_target_", ""))
    if data_parallel(cfg.get("trainer")) and "SlurmLauncher" not in launcher:
        raise errors.ConfigError(
            "trainer: data-parallel training (several devices or a ddp strategy) cannot run "
            "inside a local sweep; sweep with hydra/launcher=slurm (tasks_per_node = "
            "devices), or run each configuration as its own reglab-train command")


def _record_failure(cfg: DictConfig, exc: BaseException) -> None:
    from reglab.reporting import run_record

    run_dir = Path(cfg.paths.run_dir)
    if not (run_dir / run_files.METRICS_FILE).exists():
        run_dir.mkdir(parents=True, exist_ok=True)
        run_files.write_json(run_dir / run_files.METRICS_FILE, run_record.failure(cfg, exc))


def main() -> None:
    """Console entry point: ``reglab-train [overrides]``.

    Exit status: 0 done; 1 a run (or some sweep job) failed or diverged; 2 bad input
    (a config Hydra cannot compose, or a value or data set reglab rejects).
    """
    sys.argv = common.experiment_argv(sys.argv)
    guard = run_guard.RunDirGuard(None)
    if not common.asks_for_help(sys.argv):  # --help creates nothing and runs nothing
        try:
            sys.argv = resume_argv(sys.argv)
            checks.check_argv(sys.argv[1:])  # before Hydra creates any folder
            guard = run_guard.guard_from_argv(sys.argv[1:])
        except errors.ReglabError as exc:
            common.fail("reglab-train", exc)
    started = False  # whether Hydra composed the config and handed it to a job

    @hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="train")
    def job(cfg: DictConfig) -> float:
        nonlocal started
        started = True
        # Hydra runs this in the command's own process, or in one a launcher started for
        # the job (joblib, submitit), which imports torch and Lightning afresh.
        startup.arm()
        return run_job(cfg, guard)

    from reglab.cli.hydra_errors import raise_composition_errors

    raise_composition_errors()  # Hydra raises what it cannot compose: said in one line
    try:
        job()
    except JobsFailed:  # the sweep ran to the end; its report says who failed
        raise
    except common.composition_errors() as exc:
        if started:
            raise
        common.composition_failed("reglab-train", exc)
    except OSError as exc:  # Hydra could not make or write the run dir (read-only, full)
        common.fault("reglab-train", exc)
    except Exception as exc:
        from reglab.reporting.sweep_callback import report_cut_short

        # A launcher that lost a job's process (os.abort, an OOM kill) ends the sweep:
        # the jobs that ran are reported, and the command says what stopped it.
        sweep_dir = report_cut_short(exc)
        if sweep_dir is None:
            raise
        print(f"reglab-train: error: the sweep stopped: a job's process died "
              f"({type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''});"
              f" the jobs that ran are reported in {sweep_dir}", file=sys.stderr, flush=True)
        sys.exit(1)
    except SystemExit as exc:
        if exc.code == 1 and not started:  # Hydra could not compose the config
            sys.exit(common.BAD_INPUT)
        raise
    finally:
        compat.stop_idle_joblib_workers()


def console() -> None:
    """``reglab-train``: :func:`main`, then Python's ordinary exit (see :func:`common.run`)."""
    common.run(main)


if __name__ == "__main__":
    console()
