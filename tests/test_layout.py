"""The package layout ARCHITECTURE.md describes, held against the code."""

from __future__ import annotations

import ast
from pathlib import Path

from conftest import REPO

PACKAGE = REPO / "src" / "reglab"
#: Left to right: a package may import, at module level, only those before it.
LAYERS = ["errors", "models", "config", "data", "analysis", "training", "search", "reporting",
          "cli"]
#: Beside the layers, importable from any of them: what each may import itself.
SIDE = {"artifacts": {"errors", "models", "data", "legacy"}, "compat": set(),
        "legacy": set(), "run_files": {"legacy"}, "startup": set()}


def _module_level_imports(path: Path) -> set[str]:
    """The reglab packages (first name under ``reglab``) a module imports at its top."""
    found = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("reglab"):
            parts = node.module.split(".")
            found.add(parts[1] if len(parts) > 1 else node.names[0].name)
    return found


def test_packages_import_only_the_layers_below_them():
    wrong = []
    for path in PACKAGE.rglob("*.py"):
        own = path.relative_to(PACKAGE).parts[0].removesuffix(".py")
        for dep in _module_level_imports(path) - {own, "__version__"}:
            if own in SIDE:
                ok = dep in SIDE[own]
            elif dep in SIDE:
                ok = True
            elif own in LAYERS and dep in LAYERS:
                ok = LAYERS.index(dep) < LAYERS.index(own)
            else:
                ok = own == "__init__"
            if not ok:
                wrong.append(f"{path.relative_to(PACKAGE)} imports reglab.{dep}")
    assert not wrong, wrong


def test_every_module_says_what_it_holds():
    """Each module opens with a docstring, and no two modules share a file name inside
    one package (a name means one thing)."""
    for path in PACKAGE.rglob("*.py"):
        doc = ast.get_docstring(ast.parse(path.read_text()))
        assert doc and doc.strip(), f"{path.relative_to(PACKAGE)} has no docstring"
    names: dict[str, list[Path]] = {}
    for path in PACKAGE.rglob("*.py"):
        if path.name != "__init__.py":
            names.setdefault(path.stem, []).append(path.relative_to(PACKAGE))
    # cli/sweep_report.py is the command of reporting/sweep_report.py: one thing.
    shared = {n: p for n, p in names.items() if len(p) > 1 and n != "sweep_report"}
    assert not shared, shared
