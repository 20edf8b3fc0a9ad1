"""What a run dir held before this command, so a rejected command can leave it as it was.

Hydra creates the run dir, writes ``.hydra/`` and opens ``train.log`` before reglab sees
the config. When the command is then rejected (bad input, exit 2), the dir is put back:
a dir this command created is removed; in a dir that existed (``hydra.run.dir=<yours>``,
``resume=<run>``) the files Hydra or reglab rewrote are restored byte for byte and the
files they added are removed. Nothing else that was there is touched.
"""

from __future__ import annotations

import shutil
from pathlib import Path

#: The files Hydra and reglab write into a run dir before a command can be rejected.
_REWRITTEN = (".hydra/config.yaml", ".hydra/hydra.yaml", ".hydra/overrides.yaml",
              "train.log", "metrics.json", "eval.log", "eval_metrics.json")


class RunDirGuard:
    """A snapshot of ``path`` (``None``: the dir is Hydra's fresh, stamped one)."""

    def __init__(self, path: Path | None) -> None:
        import time

        self.path = path
        self.started = time.time()
        self.existed = path is not None and path.exists()
        self.entries: set[Path] = set()
        self.saved: dict[Path, bytes] = {}
        if self.existed and path is not None and path.is_dir():
            self.entries = set(path.rglob("*"))
            for name in _REWRITTEN:
                file = path / name
                if file.is_file():
                    self.saved[file] = file.read_bytes()

    def restore(self, run_dir: Path) -> None:
        """Undo what this command did to ``run_dir``."""
        if self.path is None or not self.existed:
            if self.path is None and not _stamped(run_dir):
                return  # a dir given in a way not seen before Hydra: never remove it
            shutil.rmtree(run_dir, ignore_errors=True)
            if self.path is None:
                _remove_new_empty_parents(run_dir, self.started)
            return
        added = sorted((p for p in run_dir.rglob("*") if p not in self.entries),
                       key=lambda p: len(p.parts), reverse=True)
        for entry in added:
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
        for file, content in self.saved.items():
            if not file.is_file() or file.read_bytes() != content:
                file.write_bytes(content)


def _remove_new_empty_parents(run_dir: Path, since: float, levels: int = 2) -> None:
    """``outputs/<task>/runs`` above a removed stamped run dir, where this command made
    them (created since it started) and they are left empty; an older or non-empty one
    is kept."""
    parent = run_dir.parent
    for _ in range(levels):
        try:
            if any(parent.iterdir()) or parent.stat().st_ctime < since:
                return
            parent.rmdir()
        except OSError:
            return
        parent = parent.parent


def _stamped(run_dir: Path) -> bool:
    """Whether ``run_dir`` is one of reglab's own ``<date>_<time>_<micro>`` run dirs."""
    import re

    return re.fullmatch(r"\d{4}-\d\d-\d\d_\d\d-\d\d-\d\d_\d{6}", run_dir.name) is not None


def guard_from_argv(args: list[str]) -> RunDirGuard:
    """The guard for the run dir named on the command line (``hydra.run.dir=``), if any."""
    given = [a.split("=", 1)[1] for a in args if a.split("=", 1)[0].lstrip("+") ==
             "hydra.run.dir" and "=" in a]
    if not given or "${" in given[-1]:
        return RunDirGuard(None)
    return RunDirGuard(Path(given[-1]).expanduser().resolve())
