"""``resume=<run dir>``: the command line that continues a run where it stopped.

The run's own overrides, its dir and its newest checkpoint, read from the files the run
left (``.hydra/`` or the record in ``metrics.json``), so a resume needs nothing else.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from reglab.errors import ReglabError
from reglab.run_files import read_yaml, saved_run


def resume_argv(argv: list[str]) -> list[str]:
    """``resume=<run dir>``: that run's own overrides, its dir and its newest checkpoint.

    Later arguments still win, e.g. ``resume=<dir> trainer.max_epochs=200``.
    """
    resume = [a for a in argv[1:] if a.startswith("resume=")]
    if not resume:
        return argv
    import yaml

    run_dir = Path(resume[-1].split("=", 1)[1]).expanduser().resolve()
    if (run_dir / "study.json").is_file():
        return _study_argv(argv, run_dir)
    saved = saved_run(run_dir)
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    if saved is None:
        raise ReglabError(f"resume: {run_dir} is not a reglab run dir (no readable "
                                   ".hydra/config.yaml, and no run record in metrics.json)")
    if not ckpt.is_file():
        raise ReglabError(f"resume: {run_dir} has no checkpoints/last.ckpt to "
                                   "resume from")
    extra = [a for a in argv[1:] if not a.startswith("resume=")]
    given = {a.split("=", 1)[0].lstrip("+~") for a in extra}
    skip = given | {"ckpt_path", "hydra.run.dir"}
    previous = [_anchored(str(o), saved.get("launch_dir")) for o in saved["overrides"]
                if str(o).split("=", 1)[0].lstrip("+~") not in skip]
    # Hydra keeps its own overrides apart; the search path is the one a run needs again
    # (its config groups may live in the user's own conf dir).
    hydra_file = run_dir / ".hydra" / "hydra.yaml"
    if hydra_file.is_file() and "hydra.searchpath" not in skip:
        try:
            hydra_cfg = (read_yaml(hydra_file) or {}).get("hydra") or {}
        except (OSError, ValueError, AttributeError, yaml.YAMLError) as exc:
            # Its search path (a conf dir of the user's) is not in the run's record.
            raise ReglabError(f"resume: {hydra_file}: cannot be read "
                              f"({type(exc).__name__}); put Hydra's copy back, or give the run's "
                              "search path yourself (hydra.searchpath=[] if it had none)"
                              ) from None
        previous += [o for o in (hydra_cfg.get("overrides") or {}).get("hydra") or []
                     if str(o).split("=", 1)[0].lstrip("+~") == "hydra.searchpath"]
    if "seed" not in skip:
        previous += _drawn_seed(saved)
    if not any(k == "logger" or k.startswith("logger.") for k in skip):
        previous += _tensorboard_version(run_dir, saved)
    return [argv[0], *previous, *extra, f"hydra.run.dir={run_dir}", f"ckpt_path={ckpt}"]


def _study_argv(argv: list[str], sweep_dir: Path) -> list[str]:
    """``resume=<study dir>``: the command that started the study (from the sweep's
    ``multirun.yaml``), in that dir again, so it continues to ``n_trials`` in all."""
    import yaml

    try:
        saved = (read_yaml(sweep_dir / "multirun.yaml") or {})["hydra"]
        overrides = saved["overrides"]
    except (OSError, KeyError, TypeError, yaml.YAMLError) as exc:
        raise ReglabError(f"resume: {sweep_dir} holds a study but no readable multirun.yaml "
                          f"({type(exc).__name__}); run its command again instead") from None
    extra = [a for a in argv[1:] if not a.startswith("resume=")]
    given = {a.split("=", 1)[0].lstrip("+~") for a in extra} | {"hydra.sweep.dir"}
    launch = (saved.get("runtime") or {}).get("cwd")
    previous = [_anchored(str(o), launch) for o in [*(overrides.get("task") or []),
                                                    *(overrides.get("hydra") or [])]
                if str(o).split("=", 1)[0].lstrip("+~") not in given]
    return [argv[0], *previous, *extra, f"hydra.sweep.dir={sweep_dir}"]


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


#: Keys whose values name files or folders (``data.source.path``, a data module's
#: ``data_dir``): relative ones were relative to where the run was launched.
_PATH_KEY = re.compile(r"(^|[._])(path|dir|file|root)s?$")


def _is_path_key(key: str) -> bool:
    return bool(_PATH_KEY.search(key.lstrip("+~").rsplit(".", 1)[-1]))


def _anchored(override: str, launch_dir: str | None) -> str:
    """A saved ``key=relative/path`` made absolute against the run's launch dir, so a
    resume from another directory reads the same file the run read."""
    key, _, value = override.partition("=")
    if launch_dir and key.lstrip("+~") == "hydra.sweeper.storage" and value:
        from reglab.search.study import absolute

        return f"{key}={absolute(value, launch_dir)}"  # a study file named from there
    if not launch_dir or not _is_path_key(key) or not value or "${" in value or \
            value[0] in "[{'\"" or Path(value).expanduser().is_absolute():
        return override
    anchored = Path(launch_dir) / value
    return f"{key}={anchored}" if anchored.exists() else override


def _absolute(value: Any, base: str | None) -> Any:
    if isinstance(value, str) and value and "${" not in value and base and \
            not Path(value).expanduser().is_absolute():
        return os.path.normpath(Path(base) / value)
    return value


def _flat(node: Any, prefix: str, base: str | None) -> dict[str, Any]:
    """``{"data.source.path": …}``: a config as dotted keys, path values made absolute."""
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for key, value in node.items():
            out.update(_flat(value, f"{prefix}.{key}", base))
        return out
    if isinstance(node, str) and _is_path_key(prefix):
        node = _absolute(node, base)
    return {prefix: node}


def changed_data(config: Any, run_dir: Path) -> str | None:
    """Why continuing the run in ``run_dir`` with ``config`` would train on other data than
    the run did (another data setting or seed, or its table changed on disk), in one line;
    None when it would not. Other data means a new run, started from the checkpoint."""
    from omegaconf import OmegaConf

    saved = saved_run(run_dir)
    if saved is None or not isinstance(saved["config"].get("data"), dict):
        return None
    was = _flat({"data": saved["config"]["data"], "seed": saved["config"].get("seed")}, "",
                saved.get("launch_dir"))
    now = _flat({"data": OmegaConf.to_container(config.data, resolve=False),
                 "seed": config.get("seed")}, "", os.getcwd())
    way = (f"a resume continues the run on the data it trained on; to train on other data, "
           f"start a new run from its checkpoint: ckpt_path={run_dir}/checkpoints/last.ckpt "
           "hydra.run.dir=<new dir>")
    for key in sorted(set(was) | set(now)):
        if was.get(key, _UNSET) != now.get(key, _UNSET):
            def show(v: Any) -> str:
                return "not set" if v is _UNSET else repr(v)

            return (f"resume: {key.lstrip('.')} is {show(now.get(key, _UNSET))}, but "
                    f"{run_dir} trained with {show(was.get(key, _UNSET))}; {way}")
    recorded = _recorded_file(run_dir)
    if recorded and recorded.get("path"):
        from reglab.data.tables import file_identity

        file = Path(recorded["path"])
        if not file.is_file():
            return f"resume: {file}, the table {run_dir} trained on, is gone; {way}"
        algorithm = "blake2b" if "blake2b" in recorded else "sha256"
        identity = file_identity(file, algorithm)
        if (identity["bytes"], identity[algorithm]) != (recorded.get("bytes"),
                                                        recorded.get(algorithm)):
            return (f"resume: {file} changed since {run_dir} trained on it "
                    f"({identity['bytes']} bytes, was {recorded.get('bytes')}); {way}")
    return None


_UNSET = object()


def _recorded_file(run_dir: Path) -> dict[str, Any] | None:
    """The identity of the table the run read: its ``metrics.json``, else the stamp of
    its ``last.ckpt`` (a run killed before writing a record)."""
    import json

    from reglab.run_files import METRICS_FILE

    try:
        data = json.loads((run_dir / METRICS_FILE).read_text()).get("data")
        if isinstance(data, dict):
            return data.get("file")
    except (OSError, ValueError, AttributeError):
        pass
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    if not ckpt.is_file():
        return None
    from reglab import startup

    with startup.heavy_imports():  # the command's first import of torch
        import torch

    try:
        stamp = torch.load(ckpt, map_location="cpu", weights_only=True).get("reglab") or {}
    except Exception:  # an unreadable checkpoint: the resume reports it in its own words
        return None
    return (stamp.get("data") or {}).get("file")
