"""A run dir's files as the commands read and write them: the record's name, a run's
config read back, and writes that a reader never sees half done.

Beside the packages (like :mod:`reglab.artifacts`): training writes these files,
evaluation, ``resume=`` and the sweep report read them.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from reglab.legacy import current_targets

#: The run's record: status, losses, parameters, the config that made it.
METRICS_FILE = "metrics.json"
#: reglab-eval's record, in its own run dir.
EVAL_FILE = "eval_metrics.json"

#: What a run leaves at the top of its dir, the old run's part of ``overwrite=true``.
RESULTS = (METRICS_FILE, EVAL_FILE, "model.pt", "checkpoints", "tensorboard", "csv",
           "lightning_logs", "fit.png", "pred_vs_actual.png", "landscape.png",
           "fit-profile.txt")

#: Every name reglab, Hydra or Lightning may create at the top of a run dir (glob
#: patterns): the results, Hydra's files and logs, temporary files being renamed into
#: place, Lightning's learning-rate finder's checkpoint. Nothing else there is theirs.
OWN_NAMES = (*RESULTS, ".hydra", "*.log", ".*.tmp-*", ".lr_find_*", ".reglab.lock",
             ".reglab-replaced-*")

#: The lock a command holds on its run dir (see ``cli.run_guard.RunLock``).
LOCK_FILE = ".reglab.lock"


def is_own(name: str) -> bool:
    """Whether a top-level entry called ``name`` may be one reglab made."""
    from fnmatch import fnmatchcase

    return any(fnmatchcase(name, pattern) for pattern in OWN_NAMES)


def holds_run(path: Path) -> str | None:
    """What in ``path`` shows that a run (or an evaluation) already lives there, in a
    few words; None when nothing does. Reads names only, never follows a link out."""
    if path.is_symlink() or not path.is_dir():
        return None
    record = path / METRICS_FILE
    if record.is_file():
        try:
            status = json.loads(record.read_text()).get("status")
        except (OSError, ValueError, AttributeError):
            status = None
        return f"a reglab run ({METRICS_FILE}" + (f": {status})" if status else ")")
    checkpoints = path / "checkpoints"
    for found, what in (
            ((path / "model.pt").is_file(), "a reglab run (model.pt)"),
            (checkpoints.is_dir() and any(checkpoints.glob("*.ckpt")),
             "a reglab run (checkpoints/)"),
            ((path / "tensorboard").is_dir()
             and any((path / "tensorboard").rglob("events.out.tfevents.*")),
             "a reglab run (tensorboard/ event files)"),
            ((path / EVAL_FILE).is_file(), f"a reglab evaluation ({EVAL_FILE})"),
            ((path / ".hydra" / "config.yaml").is_file(), "a Hydra run (.hydra/config.yaml)"),
    ):
        if found:
            return what
    return None


def holds_sweep(path: Path) -> str | None:
    """What in ``path`` shows that a sweep already lives there; None when nothing does."""
    if path.is_symlink() or not path.is_dir():
        return None
    for name in ("sweep_summary.csv", "multirun.yaml"):
        if (path / name).is_file():
            return f"a sweep ({name})"
    for job in sorted(p for p in path.iterdir() if p.is_dir() and not p.is_symlink()):
        if (found := holds_run(job)) is not None:
            return f"a sweep (job {job.name}: {found})"
    return None


def read_yaml(path: Path) -> Any:
    """A YAML file Hydra wrote (``.hydra/*.yaml``, ``multirun.yaml``), parsed safely by
    libyaml where PyYAML has it: ~10x faster than its pure-Python parser on a run's
    ``hydra.yaml`` (1.0 ms against 9.5 ms here), the same values."""
    import yaml

    return yaml.load(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))


def saved_run(run_dir: Path) -> dict[str, Any] | None:
    """A run's config, overrides and launch dir, from ``.hydra/`` where Hydra wrote it,
    else (no ``.hydra/``, or a file there that is missing, empty or does not parse) from
    the ``run`` record in ``metrics.json``, which holds the same; None when neither can
    be read.

    A run started with ``seed=null`` drew its seed after Hydra saved the config: the seed
    is filled in from ``metrics.json`` or, for a run killed before writing one, from its
    ``last.ckpt`` (``seed_drawn`` says so), so its data is rebuilt with the same splits.
    """
    import yaml

    def load(name: str, empty: Any) -> Any:
        file = run_dir / ".hydra" / name
        return (read_yaml(file) or empty) if file.is_file() else empty

    def from_hydra() -> Any:
        hydra = (load("hydra.yaml", {}).get("hydra") or {}).get("runtime") or {}
        overrides = load("overrides.yaml", [])
        if not isinstance(overrides, list):
            raise ValueError(f"{run_dir / '.hydra' / 'overrides.yaml'}: not a list")
        return {"config": load("config.yaml", {}), "overrides": overrides,
                "launch_dir": hydra.get("cwd")}

    def from_record() -> Any:
        return json.loads((run_dir / METRICS_FILE).read_text()).get("run")

    sources = [from_hydra, from_record] if (run_dir / ".hydra").is_dir() else [from_record]
    found = []  # what each source gave, where it is a run's shape
    for source in sources:
        try:
            saved = source()
        except (OSError, ValueError, AttributeError, yaml.YAMLError):
            continue
        if isinstance(saved, dict) and isinstance(saved.get("config"), dict):
            found.append(saved)
            if saved["config"]:
                break  # the record is read only where .hydra/ gives no config
    # The first that holds a config; else (a job dir with its overrides alone) the first.
    saved = next((f for f in found if f["config"]), found[0] if found else None)
    if saved is None:
        return None
    asked = [str(o).split("=", 1)[1] for o in saved.get("overrides") or []
             if str(o).split("=", 1)[0] == "seed"]
    if ("seed" in saved["config"] and saved["config"]["seed"] is None) or \
            (asked and asked[-1] == "null"):
        saved["config"]["seed"] = _recorded_seed(run_dir)
        saved["seed_drawn"] = True
    saved["run_dir"] = str(run_dir)
    saved["config"] = current_targets(saved["config"])  # a run of an older reglab
    return saved


def _recorded_seed(run_dir: Path) -> int | None:
    """The seed a ``seed=null`` run drew: ``metrics.json`` ``hparams.seed``, else the
    ``seed`` its checkpoint's reglab stamp holds."""
    try:
        seed = json.loads((run_dir / METRICS_FILE).read_text())["hparams"]["seed"]
    except (OSError, ValueError, KeyError, TypeError):
        seed = None
    if not isinstance(seed, int) and (run_dir / "checkpoints" / "last.ckpt").is_file():
        from reglab import startup

        with startup.heavy_imports():  # a command's first import of torch, maybe
            import torch

        try:
            stamp = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu",
                               weights_only=True).get("reglab") or {}
            seed = stamp.get("seed")
        except Exception:  # an unreadable checkpoint: resume reports it in its own words
            seed = None
    return seed if isinstance(seed, int) and not isinstance(seed, bool) else None


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write atomically, so a reader never sees half a file. JSON has no NaN or inf: a
    statistic left non-finite is written as null and its key listed under
    ``non_finite``, so the record is still written and still standard JSON."""
    found: list[str] = []
    clean = _finite(data, "", found)
    if found and isinstance(clean, dict):
        clean["non_finite"] = found
    text = json.dumps(clean, indent=2, allow_nan=False) + "\n"
    write_whole(path, lambda tmp: tmp.write_text(text))


def write_whole(path: Path, write: Callable[[Path], Any]) -> Any:
    """``write(tmp)`` into a temporary name beside ``path``, then renamed over ``path``: a
    reader never sees half a file, and two processes writing the same file (sweeps
    sharing a study) never leave half of one. The temporary name matches ``.*.tmp-*``
    (a run dir's own names) and keeps the suffix, so a picture's format is read from it;
    it is removed whatever happens."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{threading.get_ident()}"
                         f"{path.suffix}")
    try:
        result = write(tmp)
        if tmp.exists():
            os.replace(tmp, path)
        return result
    except OSError as exc:  # named by the file the user asked for, not the temporary one
        # A failed write() on an open file names no file at all (a size limit, a full
        # disk): it is this one's. An OSError without an errno is a library's own
        # complaint (Pillow's "cannot write mode RGBA as JPEG"): left as it is.
        # The OS's own words for the errno: pyarrow's writers put theirs in strerror
        # ("Error writing bytes to file. Detail: [errno 27] File too large").
        if exc.errno is not None and (exc.filename is None or str(exc.filename) == str(tmp)):
            raise OSError(exc.errno, os.strerror(exc.errno), str(path)) from None
        raise
    finally:
        if os.path.lexists(tmp):  # a read-only file system refuses even a missing one's unlink
            tmp.unlink(missing_ok=True)


def _finite(value: Any, key: str, found: list[str]) -> Any:
    import math

    if isinstance(value, float) and not math.isfinite(value):
        found.append(key or ".")
        return None
    if isinstance(value, dict):
        return {k: _finite(v, f"{key}.{k}" if key else str(k), found)
                for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v, f"{key}[{i}]", found) for i, v in enumerate(value)]
    return value
