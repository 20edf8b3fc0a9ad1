"""Executable docs: the site builds with warnings as errors, every block of the README and
the docs has an owner (``docs_blocks``), and every page's ``run`` blocks run as written,
their shown output compared with what reglab prints."""

from __future__ import annotations

import ast
import os
import re
import shlex
import sys
from pathlib import Path

import pytest
from conftest import run_cli, script
from docs_blocks import REPO, Block, blocks, commands, matches, pages

KINDS = {"run", "output", "compose", "file", "test", "include"}
SHELL = {"bash", "console", "sh"}


def _all() -> list[Block]:
    return [b for page in pages() for b in blocks(page)]


def _run_pages() -> list[str]:
    return [page for page in pages() if any(b.kind == "run" for b in blocks(page))]


@pytest.mark.slow
def test_the_docs_site_builds_with_warnings_as_errors(tmp_path: Path):
    """`mkdocs build --strict`: a broken link or anchor, a page left out of the nav, an API
    name the docstrings no longer have, or an included file that moved fails here."""
    done = run_cli([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir",
                    str(tmp_path / "site")], cwd=REPO, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    built = {str(p.relative_to(tmp_path / "site")) for p in (tmp_path / "site").rglob("*.html")}
    for page in pages()[1:]:
        name = Path(page).relative_to("docs").with_suffix("")
        html = name.parent / "index.html" if name.name == "index" else name / "index.html"
        assert str(html) in built, page
    api = (tmp_path / "site" / "api" / "index.html").read_text()
    assert "load_model" in api and "RegressionModule" in api


def test_every_block_of_the_docs_has_an_owner():
    """Each fenced block says how it is checked; a ``test`` owner exists and reads the
    page; an output block follows a run block; a compose block holds only commands."""
    every = _all()
    assert len(every) >= 60
    for i, b in enumerate(every):
        assert b.kind in KINDS, f"{b.where}: a ```{b.lang} block with no <!-- docs: … --> owner"
        if b.kind == "test":
            file, name = b.directive.split()[1].split("::")
            source = (REPO / file).read_text()
            defined = {n.name for n in ast.parse(source).body
                       if isinstance(n, ast.FunctionDef)}
            assert name in defined, f"{b.where} names {file}::{name}, which does not exist"
            assert b.page in source, f"{b.where}: {file} never reads {b.page}"
        elif b.kind == "output":
            previous = every[i - 1]
            assert previous.page == b.page and previous.kind in ("run", "test"), \
                f"{b.where}: an output block must follow a run block or a test's"
        elif b.kind == "include":
            (path,) = re.fullmatch(r'--8<-- "([^"]+)"\n', b.text).groups()
            assert (REPO / path).is_file(), f"{b.where}: {path} does not exist"
        elif b.kind == "file":
            assert re.fullmatch(r"# [\w./-]+", b.text.splitlines()[0]), b.where
        elif b.kind in ("run", "compose"):
            assert b.lang in SHELL | {"python"}, f"{b.where}: {b.kind} takes a shell block"
        if b.kind == "compose":
            for line in b.text.replace("\\\n", " ").splitlines():
                if line.strip() and not line.startswith("#"):
                    assert line.startswith("reglab-train "), f"{b.where}: {line}"


def test_every_page_the_fault_table_names_exists():
    """Each row of the fault table names the test that shows what reglab does; a renamed or
    deleted test must not leave a row unchecked."""
    text = (REPO / "docs" / "errors.md").read_text()
    rows = [line for line in text.splitlines() if line.startswith("| ")][2:]
    assert len(rows) >= 15
    for row in rows:
        named = re.findall(r"`(test_\w+\.py)::(test_\w+)`", row.split(" | ")[-1])
        assert named, f"a fault-table row names no test: {row[:80]}"
        for file, name in named:
            tree = ast.parse((REPO / "tests" / file).read_text())
            defined = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
            assert name in defined, f"docs/errors.md names {file}::{name}, which does not exist"


@pytest.mark.slow
def test_every_compose_line_composes_as_written(tmp_path: Path):
    """The commands this machine cannot run (GPU, SLURM, many nodes, long sweeps), composed
    with Hydra's API as the command composes them: a key that needs a leading `+`, an
    option that does not exist or a typo fails here."""
    from reglab.cli.common import experiment_argv
    from reglab.config.compose import compose

    checked = 0
    for b in _all():
        if b.kind != "compose":
            continue
        for line in b.text.replace("\\\n", " ").splitlines():
            if not line.startswith("reglab-train"):
                continue
            # A search space (choice, interval, ...) is the sweeper's to sample: left out.
            args = [a for a in shlex.split(line, comments=True)[1:]
                    if a not in ("-m", "--multirun")
                    and not re.search(r"=(choice|interval|tag|range|glob)\(", a)]
            # A sweep's comma lists compose one job at a time: each key's first value.
            args = [a if "=" not in a or "[" in a or "," not in a
                    else a.split("=", 1)[0] + "=" + a.split("=", 1)[1].split(",")[0]
                    for a in args]
            try:
                compose(experiment_argv(["reglab-train", *args])[1:], tmp_path / "run")
            except Exception as error:
                raise AssertionError(f"{b.where}: {line}: {error}") from error
            checked += 1
    assert checked >= 15


def _run_block(b: Block, sandbox: Path, env: dict[str, str]) -> tuple[int, str]:
    """Run a block's steps in order; (last exit status, everything printed)."""
    bin_dir = str(Path(sys.executable).parent)
    path = {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    if b.lang == "python":
        done = run_cli([sys.executable, "-c", b.text], cwd=sandbox, env={**env, **path},
                       fork=True)
        return done.returncode, done.stdout + done.stderr
    exported, steps = commands(b.text)
    env.update({k: v.replace("$PWD", str(sandbox)) for k, v in exported.items()})
    printed, status = "", 0
    for step in steps:
        if step.argv:
            argv = [a.replace("$PWD", str(sandbox)) for a in step.argv]
            done = run_cli([script(argv[0]), *argv[1:]], cwd=sandbox, env={**env, **path},
                           timeout=400)
        else:
            done = run_cli(["bash", "-e", "-c", step.shell], cwd=sandbox,
                           env={**env, **path}, timeout=400)
        printed += done.stdout + done.stderr
        status = done.returncode
        if status != 0:
            break
    return status, printed


@pytest.mark.slow
@pytest.mark.parametrize("page", _run_pages())
def test_the_pages_commands_run_as_written(page: str, tmp_path: Path):
    """A page's run blocks in order in one fresh directory, as a reader would type them;
    each output block shown on the page is found in what its command printed."""
    env: dict[str, str] = {"CI": "true"}
    last = ""
    for b in blocks(page):
        if b.kind == "file":
            first, _, body = b.text.partition("\n")
            target = tmp_path / first[2:]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(first + "\n" + body)
        elif b.kind == "run":
            status, last = _run_block(b, tmp_path, env)
            wanted = re.search(r"exit=(\d+)", b.directive)
            expected = int(wanted.group(1)) if wanted else 0
            assert status == expected, f"{b.where}: exit {status}\n{last[-3000:]}"
        elif b.kind == "output":
            missing = matches(b.text, last.replace(str(tmp_path), "..."))
            assert missing is None, f"{b.where}: not printed: {missing!r}\n{last[-3000:]}"


def test_the_readme_setup_is_what_ci_runs():
    """The set-up commands of README.md, docs/index.md and docs/development.md are the
    ones `.ci/run` runs on a fresh clone (there, not here: they install into a new venv)."""
    ci = (REPO / ".ci" / "run").read_text()
    installs = [line.replace(" --quiet", "").strip() for line in ci.splitlines()
                if "pip install" in line and "constraints.txt" in line]
    assert installs == ["python -m pip install -c constraints.txt -e '.[test]'"]
    readme = [b.text.strip() for b in blocks("README.md")[:2]]
    assert readme == ["pip install -c constraints.txt -e . && reglab-train",
                      "pip install -c constraints.txt -e '.[test]' && python -m pytest -q"]
    assert readme[1].split(" && ")[0] == installs[0].removeprefix("python -m ")
    assert "\npython -m pytest -q\n" in ci and "\nruff check src tests\n" in ci
    assert blocks("docs/index.md")[0].text.strip() == readme[0].split(" && ")[0]
    development = blocks("docs/development.md")[0].text
    assert "ruff check src tests\n" in development
    assert "python -m pytest -q " in development and '-m "not slow"' in development
    markers = (REPO / "pyproject.toml").read_text()
    assert '"slow: ' in markers and '"cuda: ' in markers
