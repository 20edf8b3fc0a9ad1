"""A run dir holds one run, and a rejected command leaves it as it was.

Three parts, each for one moment of a command:

* :class:`RunDirCheck`, a Hydra callback, runs before Hydra creates or writes anything:
  a fresh run into a dir that already holds a run is refused in one line, unless the
  command continues that run (``resume=``, ``ckpt_path=last``) or asks for
  ``overwrite=true``; a sweep into a sweep's dir is refused.
* :class:`RunDirGuard` remembers what the run dir held before Hydra wrote ``.hydra/`` and
  opened its log. When the command is then rejected (bad input, exit 2) it removes what
  this command created there and puts back the bytes of the files it rewrote.
* :class:`SetAside` moves the old run's results out of the way for ``overwrite=true``,
  and back if the new run is rejected.

What the guard may remove is held to the class, not to cases: it works on the dir's real
path, only on the names reglab and Hydra write at its top (:data:`reglab.run_files.
OWN_NAMES`), and only on entries whose path and inode it did not see before the
command; it never follows a link, so a user's file reached through one is never touched.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import time
from pathlib import Path
from typing import Any

from reglab import run_files

#: The files Hydra and reglab rewrite in place before a command can be rejected; their
#: bytes are put back (relative to the run dir).
_REWRITTEN = (".hydra/config.yaml", ".hydra/hydra.yaml", ".hydra/overrides.yaml",
              "train.log", "eval.log", run_files.METRICS_FILE, run_files.EVAL_FILE)

#: An entry as the guard knows it: its path below the run dir, device and inode.
_Entry = tuple[str, int, int]


def _real(path: Path) -> Path:
    return Path(os.path.realpath(path))


def _own_entries(root: Path, extra_names: tuple[str, ...] = ()) -> set[_Entry]:
    """Every entry under ``root``'s reglab-named top-level entries, by path and inode;
    links are entries themselves, never followed."""
    found: set[_Entry] = set()
    try:
        tops = [e for e in os.scandir(root)
                if run_files.is_own(e.name) or e.name in extra_names]
    except OSError:
        return found
    for top in tops:
        info = top.stat(follow_symlinks=False)
        found.add((top.name, info.st_dev, info.st_ino))
        if not stat.S_ISDIR(info.st_mode):
            continue
        for folder, dirs, files in os.walk(top.path, followlinks=False):
            for name in (*dirs, *files):
                path = os.path.join(folder, name)
                try:
                    info = os.lstat(path)
                except OSError:
                    continue
                found.add((os.path.relpath(path, root), info.st_dev, info.st_ino))
    return found


def _remove(path: Path) -> None:
    """Remove one entry, never what a link points to: a link or file is unlinked, a dir
    is removed only when empty."""
    try:
        if path.is_symlink() or not path.is_dir():
            path.unlink()
        else:
            path.rmdir()
    except OSError:
        pass  # not ours to force: what cannot go quietly stays


class RunDirGuard:
    """A snapshot of the run dir ``path`` (``None``: Hydra's fresh, stamped dir)."""

    def __init__(self, path: Path | None, extra_names: tuple[str, ...] = ()) -> None:
        self.path = path
        self.started = time.time()
        self.extra_names = extra_names  # e.g. a hydra.output_subdir given on the command line
        self.real = _real(path) if path is not None else None
        self.existed = self.real is not None and self.real.is_dir()
        # The highest folder on the way to the run dir that this command will create.
        self.created_from: Path | None = None
        self.entries: set[_Entry] = set()
        # A rewritten file's link target (None: a plain file) and bytes (None: a link to
        # something that is not a file).
        self.saved: dict[str, tuple[str | None, bytes | None]] = {}
        # A rewritten name that is a dangling link: where it points. Opening it to append
        # (a log) creates that file, which is then this command's to remove.
        self.dangling: dict[str, Path] = {}
        if self.real is None:
            return
        if not self.existed:
            self.created_from = _first_missing(self.real)
            return
        self.entries = _own_entries(self.real, extra_names)
        for name in _REWRITTEN:
            file = self.real / name
            try:
                link = os.readlink(file) if file.is_symlink() else None
                if file.is_file():  # a file, or a link to one: its bytes
                    self.saved[name] = (link, file.read_bytes())
                elif link is not None:
                    self.saved[name] = (link, None)
                    if not os.path.exists(file):
                        self.dangling[name] = Path(os.path.join(file.parent, link))
            except OSError:
                pass

    def restore(self, run_dir: Path) -> None:
        """Undo what this command did to ``run_dir``: remove what it created, put back the
        bytes of what it rewrote; nothing else there is touched."""
        if self.real is None:
            # Hydra's stamped dir: created by this command, unless it is not one of ours.
            if _stamped(run_dir) and not run_dir.is_symlink():
                shutil.rmtree(run_dir, ignore_errors=True)
                _remove_made_parents(run_dir)
            return
        real = _real(run_dir)
        if real != self.real:
            return  # Hydra ran somewhere else than the command line said: not ours
        if not self.existed:
            if real.is_dir():
                shutil.rmtree(real, ignore_errors=True)  # never follows a link inside
            _remove_empty_folders(real.parent, self.created_from or real)
            return
        now = sorted(_own_entries(real, self.extra_names) - self.entries,
                     key=lambda e: e[0].count(os.sep), reverse=True)
        for rel, _, _ in now:
            _remove(real / rel)
        for rel, (link, content) in self.saved.items():
            file = real / rel
            try:
                # A file replaced by rename (reglab's atomic writes) was removed above as
                # new: it comes back with its bytes, a link as the same link.
                if link is not None and not file.is_symlink():
                    file.symlink_to(link)
                if content is None:
                    continue
                if not os.path.lexists(file):
                    file.write_bytes(content)
                elif file.is_file() and file.read_bytes() != content:
                    file.write_bytes(content)  # in place: the same inode, through the link
            except OSError:
                pass
        for rel, target in self.dangling.items():
            # The file this command created at the end of a dangling link, and only that:
            # the link still points there and the file is new since the command began.
            try:
                info = os.lstat(target)
                if os.readlink(real / rel) == os.readlink(self.real / rel) and \
                        stat.S_ISREG(info.st_mode) and info.st_ctime >= self.started - 1:
                    target.unlink()
            except OSError:
                pass


#: For each stamped run dir Hydra was about to make: the highest of its folders that did
#: not exist yet (``outputs`` in a fresh folder; ``runs`` where earlier runs of the task
#: are), noted by :class:`RunDirCheck` before Hydra creates any.
_MADE_FROM: dict[Path, Path] = {}


def _first_missing(path: Path) -> Path | None:
    """The highest folder on the way to ``path`` that does not exist (None: it does)."""
    if path.exists():
        return None
    top = path
    while not top.parent.exists() and top.parent != top:
        top = top.parent
    return top


def _remove_made_parents(run_dir: Path) -> None:
    """The folders above a removed stamped run dir that this command made for it."""
    top = _MADE_FROM.pop(run_dir.absolute(), None)
    if top is not None:
        _remove_empty_folders(run_dir.parent, top)


def _remove_empty_folders(folder: Path, top: Path) -> None:
    """``folder`` and its parents up to ``top`` (the highest this command made), each
    while it is empty: one that existed before, or that gained a file, is kept."""
    while folder != top.parent and folder.is_dir() and not folder.is_symlink():
        try:
            folder.rmdir()  # only when empty
        except OSError:
            return
        folder = folder.parent


def _stamped(run_dir: Path) -> bool:
    """Whether ``run_dir`` is one of reglab's own ``<date>_<time>_<micro>`` run dirs."""
    import re

    return re.fullmatch(r"\d{4}-\d\d-\d\d_\d\d-\d\d-\d\d_\d{6}", run_dir.name) is not None


def guard_from_argv(args: list[str]) -> RunDirGuard:
    """The guard for the run dir named on the command line (``hydra.run.dir=``), if any."""
    def given(key: str) -> str | None:
        values = [a.split("=", 1)[1] for a in args
                  if "=" in a and a.split("=", 1)[0].lstrip("+") == key]
        return values[-1] if values and "${" not in values[-1] else None

    run_dir = given("hydra.run.dir")
    if run_dir is None:
        return RunDirGuard(None)
    subdir = given("hydra.output_subdir")
    extra = (Path(subdir).parts[0],) if subdir and subdir != "null" else ()
    return RunDirGuard(Path(os.path.abspath(Path(run_dir).expanduser())), extra)


class SetAside:
    """``overwrite=true``: the old run's results (:data:`reglab.run_files.RESULTS`) moved
    into a hidden folder of the run dir, so the new run starts clean and a rejected one
    can put them back. Files of the user's in the dir stay where they are."""

    def __init__(self, run_dir: Path) -> None:
        real = _real(run_dir)
        self.holding = real / f".reglab-replaced-{os.getpid()}"
        self.moved: list[str] = []
        names = [n for n in run_files.RESULTS if os.path.lexists(real / n)]
        if not names:
            return
        self.holding.mkdir()
        for name in names:
            os.rename(real / name, self.holding / name)  # same file system: atomic
            self.moved.append(name)

    def restore(self) -> None:
        """Put the old run's results back (the new run was rejected)."""
        for name in self.moved:
            target = self.holding.parent / name
            if os.path.lexists(target):  # made by the rejected run: not the user's
                if target.is_dir() and not target.is_symlink():
                    shutil.rmtree(target, ignore_errors=True)
                else:
                    target.unlink(missing_ok=True)
            os.rename(self.holding / name, target)
        self.moved = []
        _remove(self.holding)

    def discard(self) -> None:
        """The new run has taken the dir: the old results go."""
        if self.moved:
            shutil.rmtree(self.holding, ignore_errors=True)
            self.moved = []


class RunLock:
    """One command at a time in a run dir: an exclusive ``flock`` on ``<run>/.reglab.lock``,
    which holds the owner's process id. The kernel drops the lock when its process dies
    (``kill -9`` too), so a lock file left behind is stale and simply taken over; the
    owner removes it at exit."""

    NAME = run_files.LOCK_FILE

    def __init__(self, run_dir: Path) -> None:
        self.path = _real(run_dir) / self.NAME
        self.fd: int | None = None

    def acquire(self) -> None:
        """Take the lock, or raise :class:`ConfigError` naming the process that holds it."""
        import fcntl

        from reglab.errors import ConfigError

        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(20):  # the file may be removed by its owner between open and lock
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                owner = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
                os.close(fd)
                raise ConfigError(
                    f"hydra.run.dir: {self.path.parent} is in use by process {owner} (a run "
                    "or resume still going); wait for it to end, or stop it first") from None
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
                self.fd = fd
                import atexit

                atexit.register(self.release)
                # A forked child (a loader worker, the user's or data=stream's) would hold
                # the lock on after a kill -9 of this process, refusing the resume: the
                # child lets go of its copy (the lock stays this process's).
                os.register_at_fork(after_in_child=self._forget)
                return
            os.close(fd)  # locked a file its owner had just removed: take the new one

    def _forget(self) -> None:
        if self.fd is not None:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = None

    def release(self) -> None:
        """Remove the lock file and let go (at the end of the run, or at exit)."""
        if self.fd is None:
            return
        try:
            if os.fstat(self.fd).st_ino == os.stat(self.path).st_ino:
                self.path.unlink()
        except OSError:
            pass
        os.close(self.fd)
        self.fd = None


def _first_process() -> bool:
    """Whether this is the process that starts a run: data-parallel ranks and the other
    nodes of a multi-node run join the dir rank 0 checked."""
    return all(os.environ.get(k, "0") in ("", "0")
               for k in ("RANK", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK"))


def occupied(config: Any, run_dir: Path, command: str) -> str | None:
    """Why ``command`` (``train``, ``eval``) may not start a fresh run in ``run_dir``, in
    one line naming the dir and the ways on; None when it may."""
    from reglab.config.checks import check_overwrite

    overwrite = check_overwrite(config)
    if run_dir.is_symlink() and not run_dir.exists():
        return (f"hydra.run.dir: {run_dir} is a link to {os.readlink(run_dir)}, which does "
                "not exist; create that folder or name another run dir")
    for folder in (run_dir, *run_dir.parents):
        if folder.exists() and not folder.is_dir():
            return (f"hydra.run.dir: {folder} is a file, not a folder; name another run "
                    "dir")
    found = run_files.holds_run(_real(run_dir))
    if found is None:
        return None
    if command == "train":
        ckpt = config.get("ckpt_path")
        if ckpt is not None and (str(ckpt) in ("last", "best", "hpc", "registry") or
                                 _real(Path(str(ckpt))).is_relative_to(_real(run_dir))):
            return None  # continuing this run, in its own dir
        if overwrite:
            return None
        way = f"continue it with resume={run_dir}, " if found.startswith("a reglab run") else ""
        return (f"hydra.run.dir: {run_dir} already holds {found}; {way}name another "
                "hydra.run.dir, or replace that run's files with overwrite=true (other files "
                "there are left alone)")
    if found.startswith("a reglab evaluation") and overwrite:
        return None
    way = (" or replace that evaluation with overwrite=true"
           if found.startswith("a reglab evaluation") else "")
    return (f"hydra.run.dir: {run_dir} already holds {found}; reglab-{command} writes into "
            f"a dir of its own: name another hydra.run.dir{way}")


def _continues(config: Any, run_dir: Path) -> bool:
    """Whether a training command continues the run already in ``run_dir`` (``resume=``,
    ``ckpt_path=last`` or a checkpoint of its own)."""
    ckpt = config.get("ckpt_path")
    if ckpt is None or run_files.holds_run(_real(run_dir)) is None:
        return False
    return str(ckpt) == "last" or _real(Path(str(ckpt))).is_relative_to(_real(run_dir))


def sweep_occupied(config: Any, sweep_dir: Path) -> str | None:
    """Why a sweep may not start in ``sweep_dir``; None when it may."""
    from reglab.config.checks import check_overwrite

    check_overwrite(config)
    found = run_files.holds_sweep(_real(sweep_dir))
    if found is None:
        return None
    # No overwrite here: the old sweep's other jobs would stay and join the new report.
    return (f"hydra.sweep.dir: {sweep_dir} already holds {found}; name another "
            "hydra.sweep.dir (reglab-sweep-report rebuilds the old sweep's report)")


def _refuse(command: str, why: str) -> None:
    from reglab.cli import common
    from reglab.errors import ConfigError

    # A SystemExit, which Hydra lets through from a callback: one line, exit 2.
    common.fail(f"reglab-{command}", ConfigError(why))


try:
    from hydra.experimental.callback import Callback
except ImportError:  # pragma: no cover - Hydra is a dependency
    Callback = object  # type: ignore[misc,assignment]


class RunDirCheck(Callback):  # type: ignore[misc]
    """Hydra callback: before Hydra writes, refuses a fresh run into an occupied dir, and
    takes the dir's lock so no second command (a resume) works in it at the same time."""

    def __init__(self) -> None:
        self.lock: RunLock | None = None

    def on_run_start(self, config: Any, **kwargs: Any) -> None:
        if not _first_process():
            return  # data-parallel ranks and other nodes join the dir rank 0 holds
        from reglab.errors import ReglabError

        command = str(config.hydra.job.name)
        run_dir = Path(str(config.hydra.run.dir))
        if _stamped(run_dir) and (top := _first_missing(run_dir.absolute())) is not None:
            _MADE_FROM[run_dir.absolute()] = top
        try:
            why = occupied(config, run_dir, command)
            if why is None:
                # The lock first: a dir another command is working in is refused as busy,
                # whatever else this command would change.
                self.lock = RunLock(run_dir)
                self.lock.acquire()
            if why is None and command == "train" and _continues(config, run_dir):
                from reglab.cli.resume import changed_data

                why = changed_data(config, _real(run_dir))
        except ReglabError as exc:
            why = str(exc)
        except OSError as exc:  # the dir cannot be made or locked (read-only, full)
            from reglab.cli import common

            common.fault(f"reglab-{command}", exc)  # a SystemExit: Hydra lets it through
        if why:
            if self.lock is not None:
                self.lock.release()
            _refuse(command, why)

    def on_run_end(self, config: Any, **kwargs: Any) -> None:
        if self.lock is not None:
            self.lock.release()

    def on_multirun_start(self, config: Any, **kwargs: Any) -> None:
        if not _first_process():
            return
        from reglab.config.checks import check_launcher
        from reglab.errors import ReglabError

        command = str(config.hydra.job.name)
        try:
            check_launcher(config.hydra)
            # A study's dir holds the study the same command continues: reglab's Optuna
            # sweeper checks that dir itself, once it knows the study.
            study = "reglab_optuna_sweeper" in str(config.hydra.sweeper.get("_target_", ""))
            why = None if study else sweep_occupied(config, Path(str(config.hydra.sweep.dir)))
        except ReglabError as exc:
            why = str(exc)
        if why:
            _refuse(command, why)
