"""``resume=<run dir>``: the command line that continues a run where it stopped.

The run's own overrides, its dir and its newest checkpoint, read from the files the run
left (``.hydra/`` or the record in ``metrics.json``), so a resume needs nothing else.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from reglab.errors import ReglabError
from reglab.run_files import saved_run


def resume_argv(argv: list[str]) -> list[str]:
    """``resume=<run dir>``: that run's own overrides, its dir and its newest checkpoint.

    Later arguments still win, e.g. ``resume=<dir> trainer.max_epochs=200``.
    """
    resume = [a for a in argv[1:] if a.startswith("resume=")]
    if not resume:
        return argv
    import yaml

    run_dir = Path(resume[-1].split("=", 1)[1]).expanduser().resolve()
    saved = saved_run(run_dir)
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    if saved is None:
        raise ReglabError(f"resume: {run_dir} is not a reglab run dir (no "
                                   ".hydra/config.yaml, and no run record in metrics.json)")
    if not ckpt.is_file():
        raise ReglabError(f"resume: {run_dir} has no checkpoints/last.ckpt to "
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
        raise ReglabError(
            f"resume: {saved['run_dir']} was started with seed=null and neither its "
            "metrics.json nor its last.ckpt records the seed it drew; add it as seed=N "
            "(its train.log says 'drew seed N')")
    return [f"seed={seed}"]
