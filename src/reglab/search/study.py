"""A study in its storage: where it lives, opening it, and what a killed sweep left.

By default a study lives in ``study.db`` (SQLite) in its sweep dir, so the same command
run again, or ``resume=<sweep dir>``, continues it. ``hydra.sweeper.storage`` may name any
SQLAlchemy URL (PostgreSQL for several machines) or a journal file (``*.log``, for a file
system several machines share). The study remembers the command it was started with and
refuses a command that would mix other settings into it.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import socket
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from reglab.errors import ConfigError

log = logging.getLogger("reglab")

STUDY_DB = "study.db"
#: Beside the jobs: which storage and study the sweep dir's trials belong to.
STUDY_FILE = "study.json"
#: How often a running sweep says its trials are alive, and how long a silent trial on
#: another machine is given before it is called stale (seconds).
HEARTBEAT_SECONDS = 30
GRACE_SECONDS = 120
#: A storage setting ending so names an Optuna journal file (else it must be a URL).
JOURNAL_SUFFIXES = (".log", ".journal")
#: A running trial that names no owner this long after it started was left by a sweep
#: killed between asking for it and recording whose it is.
ASK_GRACE_SECONDS = 30
#: User attributes reglab keeps on a study and its trials.
OWNER = "reglab_owner"
RETRY_OF = "reglab_retry_of"
COMMAND = "reglab_command"


def default_storage(sweep_dir: Path) -> str:
    return f"sqlite:///{(sweep_dir / STUDY_DB).resolve()}"


def absolute(url: str, base: str | Path | None = None) -> str:
    """``url`` with a file it names relative to the launch dir (``sqlite:///study.db``, a
    journal ``studies/noisy.log``) made absolute, against ``base`` (default: here): the
    jobs (``hydra.job.chdir``), the sweep report and a later ``resume=`` may run
    elsewhere, and must reach this file."""
    root = Path(base) if base is not None else Path.cwd()
    if "://" not in url:  # a journal file; anything else is refused as it was given
        journal = url.endswith(JOURNAL_SUFFIXES) and not Path(url).is_absolute()
        return str(root / url) if journal else url
    prefix = "sqlite:///"
    if url.startswith(prefix):
        path, mark, query = url[len(prefix):].partition("?")
        if path and not path.startswith(("/", ":memory:", "file:")):
            return f"{prefix}{root / path}{mark}{query}"
    return url


def shown(url: str) -> str:
    """A storage URL with its password hidden, to print and to write into study.json."""
    from sqlalchemy.engine import make_url

    if "://" not in url:
        return url
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not an SQLAlchemy URL: nothing to hide in it
        return url


def open_storage(url: str, *, heartbeat: bool = False, checked: bool = False) -> Any:
    """The Optuna storage ``url`` names; a journal file for paths ending in .log or
    .journal. ``heartbeat`` turns on Optuna's record of live trials (RDB storages);
    ``checked``: the sweeper has made and checked the tables already (a trial's job),
    so the schema check (~50 ms of Alembic) is skipped."""
    import optuna

    if "://" not in url:
        if not url.endswith(JOURNAL_SUFFIXES):
            raise ConfigError(f"hydra.sweeper.storage: {url!r} is neither a database URL "
                              "(sqlite:///study.db, postgresql://…) nor a journal file "
                              "(*.log)")
        from optuna.storages.journal import JournalFileBackend

        Path(url).parent.mkdir(parents=True, exist_ok=True)
        return optuna.storages.JournalStorage(JournalFileBackend(url))
    kwargs: dict[str, Any] = {}
    if url.startswith("sqlite"):
        # Several processes (trials reporting, sweeps sharing a study) write one file.
        kwargs["engine_kwargs"] = {"connect_args": {"timeout": 120}}
        path = url.split(":///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
    if heartbeat:
        kwargs.update(heartbeat_interval=HEARTBEAT_SECONDS, grace_period=GRACE_SECONDS)
    if checked:
        kwargs.update(skip_compatibility_check=True, skip_table_creation=True)
    try:
        with warnings.catch_warnings():  # heartbeats: experimental since Optuna 2.9
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.storages.RDBStorage(url, **kwargs)
    except Exception as exc:  # a driver missing, a server that does not answer
        if url.startswith("sqlite") and type(exc).__name__ == "OperationalError":
            # The file system refused the database file (full, read-only, a size limit):
            # a fault, said as one for the path, not a bad setting.
            reason = str(getattr(exc, "orig", exc)) or type(exc).__name__
            raise OSError(errno.EIO, reason, url.split(":///", 1)[-1]) from None
        raise ConfigError(f"hydra.sweeper.storage: cannot open {shown(url)}: "
                          f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}") from None


#: (storage URL, study name) → (storage, study) a sweep in this process holds open while it
#: runs: a trial's job launched in this same process (Hydra's basic launcher) reports to
#: them rather than opening the database again and reading every trial afresh.
_LIVE: dict[tuple[str, str], tuple[Any, Any]] = {}


@contextmanager
def live(url: str, storage: Any, study: Any) -> Iterator[None]:
    """``storage`` and ``study`` shared with this process's jobs while the block runs
    (never after: a later command may name the same URL for another file)."""
    key = (url, study.study_name)
    _LIVE[key] = (storage, study)
    try:
        yield
    finally:
        _LIVE.pop(key, None)


def live_study(url: str, name: str) -> tuple[Any, Any] | None:
    """The storage and study a sweep in this process has open, or None."""
    return _LIVE.get((url, name))


def quiet_optuna() -> None:
    """Optuna's and Alembic's per-trial INFO lines off: reglab says what happened."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    optuna.logging.disable_propagation()
    logging.getLogger("alembic").setLevel(logging.WARNING)


def open_study(storage: Any, name: str, *, direction: str, sampler: Any, pruner: Any,
               command: dict[str, Any]) -> Any:
    """The study ``name``, created or continued; refused when it was started by a command
    with other settings or another search space (its trials would not compare)."""
    import optuna

    study = optuna.create_study(storage=storage, study_name=name, sampler=sampler,
                                pruner=pruner, direction=direction, load_if_exists=True)
    if study.direction.name.lower() != direction:
        raise ConfigError(f"hydra.sweeper.direction: study {name!r} {study.direction.name.lower()}"
                          f"s; this command asks to {direction}: name another "
                          "hydra.sweeper.study_name")
    before = study.user_attrs.get(COMMAND)
    if before is None:
        study.set_user_attr(COMMAND, command)
    elif before != command:
        detail = "; ".join(_differences(before, command))
        raise ConfigError(f"hydra.sweeper.study_name: study {name!r} was started with other "
                          f"settings ({detail}); continue it with the same command, or name "
                          "another hydra.sweeper.study_name")
    return study


def _differences(before: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """What differs between the command a study started with and this one, briefly."""
    out = []
    old_overrides, new_overrides = set(before.get("overrides", [])), set(now.get("overrides", []))
    if old_overrides - new_overrides:
        out.append(f"then {' '.join(sorted(old_overrides - new_overrides))}")
    if new_overrides - old_overrides:
        out.append(f"now {' '.join(sorted(new_overrides - old_overrides))}")
    old_space, new_space = before.get("space", {}), now.get("space", {})
    for key in sorted(set(old_space) | set(new_space)):
        if old_space.get(key) != new_space.get(key):
            out.append(f"{key} searched over {old_space.get(key, 'nothing')} then, "
                       f"{new_space.get(key, 'nothing')} now")
    return out or ["another command"]


def owner() -> dict[str, Any]:
    """Who runs a trial: this machine, process and its start, to tell a killed one."""
    return {"host": socket.gethostname(), "pid": os.getpid(), "started": _started(os.getpid())}


def _started(pid: int) -> str | None:
    """A process's start time as the kernel counts it (Linux), so a reused pid is not
    taken for the process that died."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _alive(who: dict[str, Any]) -> bool:
    pid = who.get("pid")
    if not isinstance(pid, int):
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return who.get("started") is None or _started(pid) == who.get("started")


def fail_stale(study: Any, storage: Any, *, retries: int = 1, room: int = 0
               ) -> tuple[list[int], list[int]]:
    """Fail the trials a killed sweep left RUNNING and queue each once more, while the
    study has ``room`` for more trials (a killed trial counts as one of ``n_trials``).

    A trial of a process on this machine that is gone is stale at once; on another
    machine, once its heartbeat is older than the grace period (RDB storages). Returns
    the numbers of the trials failed, and of those queued again.
    """
    import datetime as dt

    import optuna
    from optuna.trial import TrialState

    here = socket.gethostname()
    study_id = storage.get_study_id_from_name(study.study_name)
    now = dt.datetime.now()
    failed = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        who = trial.user_attrs.get(OWNER)
        if who is None:
            # Asked for, then killed before it could say whose it is (a live sweep says
            # so milliseconds after asking): stale once older than the grace period.
            started = trial.datetime_start
            if started is None or (now - started).total_seconds() < ASK_GRACE_SECONDS:
                continue
        elif who.get("host") != here or _alive(who):
            continue
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, trial.number)
        if storage.set_trial_state_values(trial_id, TrialState.FAIL):
            failed.append(trial.number)
    if heartbeat_enabled(storage):
        before = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,))}
        with warnings.catch_warnings():  # experimental since Optuna 2.9, and still there
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)
        after = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,))}
        failed += sorted(after - before)
    by_number = {t.number: t for t in study.get_trials(deepcopy=False)}
    queued = []
    for number in failed:
        trial = by_number[number]
        if (trial.user_attrs.get(RETRY_OF) is None and retries > 0 and trial.params
                and len(queued) < room):
            study.enqueue_trial(trial.params, user_attrs={RETRY_OF: number},
                                skip_if_exists=False)
            queued.append(number)
    return failed, queued


def heartbeat_enabled(storage: Any) -> bool:
    """Whether ``storage`` records live trials (an RDB storage opened with a heartbeat)."""
    import optuna

    return (isinstance(storage, optuna.storages.RDBStorage)
            and storage.get_heartbeat_interval() is not None)


def write_study_file(sweep_dir: Path, url: str, name: str, direction: str) -> None:
    """``study.json``: how the sweep report finds the study behind this dir's jobs."""
    from reglab import run_files

    run_files.write_json(sweep_dir / STUDY_FILE, {
        "storage": shown(url), "study_name": name, "direction": direction,
        "updated": time.strftime("%Y-%m-%dT%H:%M:%S")})


def read_study_file(sweep_dir: Path) -> dict[str, Any] | None:
    try:
        found = json.loads((sweep_dir / STUDY_FILE).read_text())
    except (OSError, ValueError):
        return None
    return found if isinstance(found, dict) else None
