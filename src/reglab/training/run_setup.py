"""What a training run settles before its fit: its dir, its seed, the checkpoint to start
from, and a Trainer Lightning accepts. Each refusal is one :class:`ConfigError` line.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from reglab.errors import ConfigError

log = logging.getLogger("reglab")


def run_dir(cfg: DictConfig) -> Path:
    """The run's dir. Composed from Python with ``reglab.config.compose.compose`` and no
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
            raise ConfigError(
                "paths.run_dir: this config was composed without Hydra's own settings; "
                "compose it with reglab.config.compose.compose(overrides), or give "
                "paths.run_dir=<dir> and logger=none")
        stamp = datetime.now().strftime("%Y-%m-%d_%H-%M-%S_%f")
        value = str(Path(cfg.paths.output_dir) / str(cfg.task_name) / "runs" / stamp)
        with open_dict(cfg):
            cfg.paths.run_dir = value
    return Path(value)


def checkpoint_named(ckpt_path: str, run_dir: Path) -> str:
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
    raise ConfigError(f"ckpt_path={ckpt_path}: {why}; continue a run with "
                               "resume=<run dir>, or give a checkpoint file")


def draw_seed(cfg: DictConfig) -> None:
    """``seed=null`` (lightning-hydra-template's default): a fresh seed for this run, set
    in the config so every ``${seed}`` takes it, and printed and recorded (``hparams``
    in ``metrics.json``) so the run can be repeated; ``resume=`` reuses it."""
    import secrets

    inherited = os.environ.get("PL_GLOBAL_SEED")  # set by rank 0's seed_everything
    if inherited is not None and global_rank() != 0:  # a relaunched data-parallel rank
        cfg.seed = int(inherited)
        return
    cfg.seed = secrets.randbelow(2**32)
    log.info("seed=null: drew seed %d", cfg.seed)  # in train.log, should the run be killed
    print(f"reglab: seed=null: drew seed {cfg.seed}; repeat this run with seed={cfg.seed}",
          flush=True)


def instantiate_trainer(node: DictConfig, kwargs: dict[str, Any]) -> Any:
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
        message = refusal(cause)
        if "gpu backend" in message.lower():  # trainer=gpu or ddp on a machine without one
            strategy = str(node.get("strategy", "")).lower()
            ways = ("trainer=ddp_cpu (data-parallel processes on the CPU), trainer=cpu"
                    if "ddp" in strategy else "trainer=cpu")
            message += (" (trainer.accelerator=gpu needs a CUDA or Apple MPS device, and "
                        f"this machine shows none: use {ways}, or trainer=default, "
                        "which picks what is there)")
        raise ConfigError(f"trainer: {message}") from None


def refusal(exc: BaseException) -> str:
    """Lightning's refusal of a Trainer setting (at construction or once fit starts),
    its lines joined into one."""
    return " ".join(str(exc).split())


def _is_misconfiguration(exc: BaseException) -> bool:
    from lightning_fabric.utilities.exceptions import MisconfigurationException

    # ModuleNotFoundError: an accelerator whose package is not installed (tpu: torch_xla).
    return isinstance(exc, (MisconfigurationException, ValueError, TypeError,
                            ModuleNotFoundError))


def global_rank() -> int:
    """This process's rank in data-parallel training (0 when there is none)."""
    return int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")) or 0)


@functools.cache  # once per process: repeated runs must not stack filters
def _drop_lightning_tips() -> None:
    """Lightning's log lines that advertise instead of saying something about the run."""

    class _NoTips(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            return "Tip:" not in record.getMessage()

    for name in ("pytorch_lightning", "lightning.pytorch", "lightning_fabric",
                 "pytorch_lightning.utilities.rank_zero"):
        logging.getLogger(name).addFilter(_NoTips())


@contextlib.contextmanager
def quiet_lightning(continuing: bool = False) -> Iterator[None]:
    """Lightning warnings that say nothing true about a reglab run, silenced while it runs
    (and only then: the caller's own warning filters are back afterwards).

    - the training batches fewer than ``log_every_n_steps``: reglab writes its step
      scalars itself, so Lightning's logging interval is moot;
    - ``training_step`` returned ``None``: reglab's module does so on purpose at a
      non-finite loss (the step is skipped and the run recorded as diverged);
    - torch's deprecated ``LeafSpec``, which Lightning 2.6's own pytree helper still
      builds: nothing reglab calls can avoid it;
    - with ``continuing`` (a ``ckpt_path`` given), the checkpoint dir not being empty:
      continuing a run in its own dir is what was asked for; and ``ModelCheckpoint``'s
      "dirpath has changed": a new run from another run's checkpoint keeps its own best
      checkpoints in its own dir (the summary names it), not the old run's.
    """
    _drop_lightning_tips()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*smaller than the logging interval")
        warnings.filterwarnings("ignore", message="`training_step` returned `None`")
        warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)`",
                                category=FutureWarning)
        if continuing:
            warnings.filterwarnings("ignore", message="Checkpoint directory .* exists and "
                                    "is not empty")
            warnings.filterwarnings("ignore", message="The dirpath has changed from")
        yield


def hydra_choices() -> dict[str, str]:
    """The option picked in each config group (``data: line``), when run through Hydra."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return {}
    return {k: v for k, v in HydraConfig.get().runtime.choices.items()
            if isinstance(v, str) and not k.startswith("hydra")}


def is_multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def append_to_log_files(text: str) -> None:
    """Add ``text`` (the summary, printed on the console) to the log files of this run:
    the file handlers of the root logger, which Hydra points at ``<run dir>/train.log``."""
    import logging

    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            try:
                handler.acquire()
                try:
                    handler.flush()
                    handler.stream.write(text + "\n")
                    handler.flush()
                finally:
                    handler.release()
            except (OSError, ValueError, AttributeError):  # (a delayed file not yet open)
                pass  # a log that cannot be written does not undo a recorded run
