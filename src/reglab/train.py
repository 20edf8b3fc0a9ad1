"""``reglab-train``: compose a config, fit, test, and leave a complete run dir.

The flow reads top to bottom in :func:`train`: config → data module + model →
Lightning module → trainer (loggers, callbacks) → fit → test → files in the run dir.
Only Hydra and OmegaConf are imported at module level, so ``--help`` and config errors
answer without paying for torch or Lightning.
"""

from __future__ import annotations

import copy
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig

from reglab import cli, run_guard, validate
from reglab.confdir import CONF_DIR

log = logging.getLogger("reglab")

#: A failed or diverged sweep job's objective: the worst value, so a search steers away
#: from it. (NaN would make Optuna 2.x abort the whole study.)
_FAILED = float("inf")


def train(cfg: DictConfig) -> dict[str, Any]:
    """Run one experiment described by ``cfg``; return what ``metrics.json`` holds."""
    import pytorch_lightning as pl
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from reglab import exact as exact_fit
    from reglab import parts, results
    from reglab.artifacts import check_checkpoint, save_model
    from reglab.module import RegressionModule

    _quiet_lightning()
    cfg = copy.deepcopy(cfg)  # the run fills in its dir, seed and checkpoint: not the caller's
    run_dir = _run_dir(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    choices = _hydra_choices()
    try:
        if cfg.get("seed") is None:
            _draw_seed(cfg)
        pl.seed_everything(cfg.seed, workers=True, verbose=False)

        # Data first: the model's input width comes from it.
        datamodule = parts.build("data", lambda: instantiate(cfg.data))
        in_features, data_info = parts.describe_data(datamodule)
        targets = data_info.get("target")
        model, model_spec = parts.build_model(
            cfg.model, in_features, len(targets) if isinstance(targets, list) else 1)
        scheduler = cfg.get("scheduler")
        optimizer = parts.build("optimizer", lambda: instantiate(cfg.optimizer))
        probe = parts.build("optimizer", lambda: optimizer(model.parameters()))  # its args
        module = RegressionModule(
            model=model, optimizer=optimizer,
            loss=parts.build("loss", lambda: instantiate(cfg.loss)),
            scaling=getattr(datamodule, "scaling", None), data_info=data_info,
            scheduler=None if not scheduler else {
                **OmegaConf.to_container(scheduler, resolve=True),
                "scheduler": parts.build("scheduler",
                                         lambda: instantiate(scheduler.scheduler))},
            model_spec=model_spec,
            parts={name: OmegaConf.to_container(node, resolve=True) for name, node in
                   (("loss", cfg.loss), ("optimizer", cfg.optimizer),
                    ("scheduler", scheduler)) if node})
        if module.scheduler_config:  # its arguments, on a throwaway optimizer
            parts.build("scheduler", lambda: module.make_scheduler(
                optimizer(model.parameters()), lambda: 100))

        # The exact optimum of linear and polynomial models: the bar the fit is held to,
        # or, with optimizer=exact, the fit itself.
        exact = exact_fit.is_exact(probe)
        start = time.perf_counter()
        closed, solution = (results.closed_form(model, module.loss_fn, datamodule, probe)
                            if parts.is_reglab_data(datamodule) else (None, None))
        if exact and (why := exact_fit.refusal(closed, model, datamodule)):
            raise validate.ConfigError(why)
        folds = getattr(datamodule, "folds", None) if exact else None
        cv = (exact_fit.cross_validate(model, module.loss_fn, datamodule, probe, folds)
              if folds else None)
        solve_seconds = time.perf_counter() - start
        if closed and "train_loss" in closed:
            module.reference_loss = closed["train_loss"]
            module.closed_form = solution

        # Each is a named entry (callbacks.progress_bar=null switches one off); the
        # Trainer's own switches (+trainer.logger=false, ...) win over the groups.
        _, callbacks, switches = parts.trainer_parts(cfg)  # the loggers are in switches
        trainer: pl.Trainer = _instantiate_trainer(parts.trainer_config(cfg), switches)

        if cfg.get("ckpt_path"):
            cfg.ckpt_path = _checkpoint_named(str(cfg.ckpt_path), run_dir)
            check_checkpoint(cfg.ckpt_path, module)
        lr_find = None
        if (cfg.get("tuner") or {}).get("lr_find") is not None:
            from reglab.tuning import find_lr

            lr_find = find_lr(trainer, module, datamodule, cfg.tuner.lr_find)
        start = time.perf_counter()
        try:
            if exact:  # no gradient loop: the optimum is set, Lightning validates it
                exact_fit.fit(trainer, module, datamodule, closed, cv)
            else:
                trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
        except (KeyboardInterrupt, SystemExit):
            if module.interrupted_by is None:
                raise
            # Asked twice: the fit stopped at once, mid-step. Say so, and which
            # checkpoint a resume would use (the last one written before it).
            forced = {"status": "interrupted", "interrupted_by": module.interrupted_by,
                      "stopped": "at once (a second signal): this step was not saved",
                      "epochs": int(trainer.current_epoch),
                      "steps": int(trainer.global_step),
                      "hparams": results.hparams(cfg, choices),
                      "run": results.run_record(cfg)}
            if _global_rank() == 0:
                results.write_json(run_dir / results.METRICS_FILE, forced)
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

        metrics = results.collect(cfg, trainer, module, datamodule, fit_seconds, choices,
                                  closed=closed)
        metrics["plot_seconds"] = round(draw_seconds, 4)
        metrics["method"] = "exact" if exact else "gradient"
        if cv is not None:
            metrics["cv"] = cv
        if lr_find is not None:
            metrics["lr_find"] = lr_find
            if lr_find["applied"]:
                metrics["hparams"]["lr"] = lr_find["suggestion"]
        if trainer.fast_dev_run:  # a smoke test: nothing in it claims to be a trained model
            metrics["status"] = "fast_dev_run"
        metrics["logs"] = results.log_locations(trainer.loggers)
        metrics["run"] = results.run_record(cfg)
        metrics["world_size"] = trainer.world_size
        metrics["device"] = str(trainer.strategy.root_device)
        if parts.is_reglab_data(datamodule):  # where the batches were cut
            metrics["data_device"] = str(datamodule.batch_device)
        if not trainer.is_global_zero:  # data-parallel: rank 0 alone writes the run's files
            return metrics
        if not trainer.fast_dev_run:
            save_model(model, run_dir / "model.pt", scaling=module.scaling,
                       extra={"hparams": metrics["hparams"], "data": data_info},
                       kwargs=model_spec["kwargs"])
    except Exception as exc:
        # Leave a record that says what went wrong, never a stale "completed".
        if _global_rank() == 0:
            results.write_json(run_dir / results.METRICS_FILE,
                               results.failure(cfg, exc, choices))
        raise
    results.write_json(run_dir / results.METRICS_FILE, metrics)
    test_tags = ["test/mse", "test/r2"] if metrics["test"] else []
    cv_tags = ["cv/val_loss", "cv/val_loss_std"] if metrics.get("cv") else []
    results.log_hparams(trainer.loggers, metrics["hparams"], ["train/loss_epoch", "val/loss",
                                                       *cv_tags, *test_tags],
                        reference_layout=bool(closed and "train_loss" in closed),
                        report=(closed or {}).get("report"),
                        per_target=(closed or {}).get("per_target"))
    print("\n".join(results.summary_lines(metrics, run_dir)), flush=True)
    return metrics


def _run_dir(cfg: DictConfig) -> Path:
    """The run's dir. Composed from Python with ``reglab.confdir.compose`` and no
    ``run_dir``, Hydra's output dir is unset: each ``train`` call gets a fresh stamped dir
    under ``outputs/<task>/runs/``, as the command gives. A config from plain
    ``hydra.compose`` (no Hydra settings registered) must name ``paths.run_dir``."""
    from datetime import datetime

    from omegaconf import open_dict
    from omegaconf.errors import OmegaConfBaseException

    try:
        value = cfg.paths.run_dir
    except OmegaConfBaseException:  # ${hydra:...} with no Hydra config registered
        value = None
    if value is None:
        from hydra.core.hydra_config import HydraConfig

        if not HydraConfig.initialized():  # ${hydra:mode} and the like cannot resolve
            raise validate.ConfigError(
                "paths.run_dir: this config was composed without Hydra's own settings; "
                "compose it with reglab.confdir.compose(overrides), or give "
                "paths.run_dir=<dir> and logger=none")
        stamp = datetime.now().strftime("%Y-%m-%d_%H-%M-%S_%f")
        value = str(Path(cfg.paths.output_dir) / str(cfg.task_name) / "runs" / stamp)
        with open_dict(cfg):
            cfg.paths.run_dir = value
    return Path(value)


def _checkpoint_named(ckpt_path: str, run_dir: Path) -> str:
    """Lightning's special ``ckpt_path`` values. ``last`` is this run dir's
    ``checkpoints/last.ckpt`` (``hydra.run.dir=<run> ckpt_path=last`` continues it); where
    Lightning would warn and start from scratch (no such file), reglab stops. ``best``,
    ``hpc`` and ``registry`` name what only a fit in this process, a cluster or a model
    registry holds, which a new fit does not have (Lightning refuses ``best`` too)."""
    if ckpt_path not in ("last", "best", "hpc", "registry"):
        return ckpt_path
    last = run_dir / "checkpoints" / "last.ckpt"
    if ckpt_path == "last" and last.is_file():
        return str(last)
    why = (f"no checkpoints/last.ckpt in the run dir {run_dir} (Lightning would start from "
           "scratch)" if ckpt_path == "last" else
           f"Lightning resolves {ckpt_path!r} only within the fit or cluster that made it")
    raise validate.ConfigError(f"ckpt_path={ckpt_path}: {why}; continue a run with "
                               "resume=<run dir>, or give a checkpoint file")


def _draw_seed(cfg: DictConfig) -> None:
    """``seed=null`` (lightning-hydra-template's default): a fresh seed for this run, set
    in the config so every ``${seed}`` takes it, and printed and recorded (``hparams``
    in ``metrics.json``) so the run can be repeated; ``resume=`` reuses it."""
    import secrets

    inherited = os.environ.get("PL_GLOBAL_SEED")  # set by rank 0's seed_everything
    if inherited is not None and _global_rank() != 0:  # a relaunched data-parallel rank
        cfg.seed = int(inherited)
        return
    cfg.seed = secrets.randbelow(2**32)
    log.info("seed=null: drew seed %d", cfg.seed)  # in train.log, should the run be killed
    print(f"reglab: seed=null: drew seed {cfg.seed}; repeat this run with seed={cfg.seed}",
          flush=True)


def _instantiate_trainer(node: DictConfig, kwargs: dict[str, Any]) -> Any:
    """``pytorch_lightning.Trainer`` from ``node``; a combination Lightning refuses is
    bad input (one line naming trainer), not a traceback."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    try:
        return instantiate(node, **kwargs)
    except InstantiationException as exc:
        cause = exc.__cause__
        if cause is None or not _is_misconfiguration(cause):
            raise
        message = " ".join(str(cause).split())
        if "gpu backend" in message.lower():  # trainer=gpu on a machine without one
            message += (" (trainer.accelerator=gpu needs a CUDA or Apple MPS device, and "
                        "this machine shows none: use trainer=cpu, or trainer=default, "
                        "which picks what is there)")
        raise validate.ConfigError(f"trainer: {message}") from None


def _is_misconfiguration(exc: BaseException) -> bool:
    from lightning_fabric.utilities.exceptions import MisconfigurationException

    # ModuleNotFoundError: an accelerator whose package is not installed (tpu: torch_xla).
    return isinstance(exc, (MisconfigurationException, ValueError, TypeError,
                            ModuleNotFoundError))


def _global_rank() -> int:
    """This process's rank in data-parallel training (0 when there is none)."""
    return int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")) or 0)


_quieted = False


def _quiet_lightning() -> None:
    """Drop Lightning messages that say nothing about this run (adverts, own deprecations)."""
    global _quieted
    if _quieted:  # once per process: repeated runs must not stack filters
        return
    _quieted = True
    import warnings

    class _NoTips(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            return "Tip:" not in record.getMessage()

    for name in ("pytorch_lightning", "lightning.pytorch", "lightning_fabric"):
        logging.getLogger(name).addFilter(_NoTips())
    logging.getLogger("pytorch_lightning.utilities.rank_zero").addFilter(_NoTips())
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    # reglab writes step scalars itself, so Lightning's own logging interval is moot.
    warnings.filterwarnings("ignore", message=".*smaller than the logging interval.*")


def _hydra_choices() -> dict[str, str]:
    """The option picked in each config group (``data: line``), when run through Hydra."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return {}
    return {k: v for k, v in HydraConfig.get().runtime.choices.items()
            if isinstance(v, str) and not k.startswith("hydra")}


def _is_multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


#: Set once Hydra has composed the config and handed it to a job.
_job_started = False
#: The run dir as it was before Hydra touched it (see :mod:`reglab.run_guard`).
_guard = run_guard.RunDirGuard(None)


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="train")
def _main(cfg: DictConfig) -> float:
    """One job. In a sweep a failed job is recorded and the sweep goes on."""
    global _job_started
    _job_started = True
    multirun = _is_multirun()
    try:
        validate.check(cfg)  # before torch is imported: a typo answers at once
        if multirun:
            _check_sweep_can_run_data_parallel(cfg)
        metrics = train(cfg)
    except validate.ReglabError as exc:
        if multirun:
            _record_failure(cfg, exc)
            log.error("job failed: %s", exc)
            return _FAILED
        # Put the run dir back as it was: removed if this command created it.
        _guard.restore(Path(cfg.paths.run_dir))
        cli.fail("reglab-train", exc)
    except Exception as exc:
        if not multirun:
            raise
        log.error("job failed (recorded in metrics.json): %s: %s", type(exc).__name__, exc,
                  exc_info=True)
        return _FAILED
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

    trainer = cfg.get("trainer") or {}
    strategy = trainer.get("strategy")
    name = str(strategy.get("_target_") if isinstance(strategy, DictConfig) else strategy)
    devices = trainer.get("devices")
    parallel = "ddp" in name.lower() or (isinstance(devices, int) and (devices > 1 or
                                                                        devices == -1))
    launcher = str(HydraConfig.get().launcher.get("_target_", ""))
    if parallel and "SlurmLauncher" not in launcher:
        raise validate.ConfigError(
            "trainer: data-parallel training (several devices or a ddp strategy) cannot run "
            "inside a local sweep; sweep with hydra/launcher=slurm (tasks_per_node = "
            "devices), or run each configuration as its own reglab-train command")


def _record_failure(cfg: DictConfig, exc: BaseException) -> None:
    from reglab import results

    run_dir = Path(cfg.paths.run_dir)
    if not (run_dir / results.METRICS_FILE).exists():
        run_dir.mkdir(parents=True, exist_ok=True)
        results.write_json(run_dir / results.METRICS_FILE, results.failure(cfg, exc))


def _resume_argv(argv: list[str]) -> list[str]:
    """``resume=<run dir>``: that run's own overrides, its dir and its newest checkpoint.

    Later arguments still win, e.g. ``resume=<dir> trainer.max_epochs=200``.
    """
    resume = [a for a in argv[1:] if a.startswith("resume=")]
    if not resume:
        return argv
    import yaml

    from reglab.results import saved_run

    run_dir = Path(resume[-1].split("=", 1)[1]).expanduser().resolve()
    saved = saved_run(run_dir)
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    if saved is None:
        raise validate.ReglabError(f"resume: {run_dir} is not a reglab run dir (no "
                                   ".hydra/config.yaml, and no run record in metrics.json)")
    if not ckpt.is_file():
        raise validate.ReglabError(f"resume: {run_dir} has no checkpoints/last.ckpt to "
                                   "resume from")
    extra = [a for a in argv[1:] if not a.startswith("resume=")]
    given = {a.split("=", 1)[0].lstrip("+~") for a in extra}
    skip = given | {"ckpt_path", "hydra.run.dir"}
    previous = [str(o) for o in saved["overrides"]
                if str(o).split("=", 1)[0].lstrip("+~") not in skip]
    # Hydra keeps its own overrides apart; the search path is the one a run needs again
    # (its config groups may live in the user's own conf dir).
    hydra_file = run_dir / ".hydra" / "hydra.yaml"
    if hydra_file.is_file() and "hydra.searchpath" not in skip:
        hydra_cfg = (yaml.safe_load(hydra_file.read_text()) or {}).get("hydra") or {}
        previous += [o for o in (hydra_cfg.get("overrides") or {}).get("hydra") or []
                     if str(o).split("=", 1)[0].lstrip("+~") == "hydra.searchpath"]
    if "seed" not in skip:
        previous += _drawn_seed(saved)
    if not any(k == "logger" or k.startswith("logger.") for k in skip):
        previous += _tensorboard_version(run_dir, saved)
    return [argv[0], *previous, *extra, f"hydra.run.dir={run_dir}", f"ckpt_path={ckpt}"]


def _tensorboard_version(run_dir: Path, saved: dict[str, Any]) -> list[str]:
    """A sweep job logs under ``tensorboard/<its overrides>/``; resumed alone it would
    log under ``tensorboard/`` and TensorBoard would show two runs. Keep the job's."""
    logger = (saved["config"].get("logger") or {}).get("tensorboard")
    folder = run_dir / "tensorboard"
    if not isinstance(logger, dict) or not folder.is_dir() or any(folder.glob("events.*")):
        return []
    versions = [d.name for d in folder.iterdir() if d.is_dir() and any(d.glob("events.*"))]
    if len(versions) != 1 or "'" in versions[0] or "\\" in versions[0]:
        return []
    return [f"logger.tensorboard.version='{versions[0]}'"]


def _drawn_seed(saved: dict[str, Any]) -> list[str]:
    """``seed=<n>`` when the run was started with ``seed=null``: its splits and shuffles
    came from the seed it drew, which ``saved_run`` found in its record."""
    if not saved.get("seed_drawn"):
        return []
    seed = saved["config"].get("seed")
    if not isinstance(seed, int):  # another seed would give other splits: never guess
        raise validate.ReglabError(
            f"resume: {saved['run_dir']} was started with seed=null and neither its "
            "metrics.json nor its last.ckpt records the seed it drew; add it as seed=N "
            "(its train.log says 'drew seed N')")
    return [f"seed={seed}"]


def main() -> None:
    """Console entry point: ``reglab-train [overrides]``.

    Exit status: 0 done; 1 a run (or some sweep job) failed or diverged; 2 bad input
    (a config Hydra cannot compose, or a value or data set reglab rejects).
    """
    from reglab import sweep_callbacks

    sys.argv = cli.experiment_argv(sys.argv)
    cli.answer_help("reglab-train", "train", sys.argv)
    try:
        sys.argv = _resume_argv(sys.argv)
        validate.check_argv(sys.argv[1:])  # before Hydra creates any folder
        global _guard
        _guard = run_guard.guard_from_argv(sys.argv[1:])
    except validate.ReglabError as exc:
        cli.fail("reglab-train", exc)
    try:
        _main()
    except SystemExit as exc:
        if exc.code == 1 and not _job_started:  # Hydra could not compose the config
            sys.exit(2)
        raise
    _stop_idle_workers()
    if sweep_callbacks.failed_jobs:  # the sweep ran to the end; its status says who failed
        sys.exit(1)


def _stop_idle_workers() -> None:
    """A joblib sweep leaves its worker processes idle. Stopping them now saves the
    1.5–2 s the interpreter would otherwise wait at exit while each tears down torch."""
    module = sys.modules.get("joblib.externals.loky.reusable_executor")
    executor = getattr(module, "_executor", None)
    if executor is not None:
        executor.shutdown(wait=True, kill_workers=True)


def console() -> None:
    """``reglab-train``: :func:`main`, then Python's ordinary exit (see :func:`cli.run`)."""
    cli.run(main)


if __name__ == "__main__":
    console()
