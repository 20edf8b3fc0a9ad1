"""The docs as data: every fenced block of README.md and docs/, with the directive that
says which test owns it.

A directive is an HTML comment on the line before a fence (invisible on the site):

- ``<!-- docs: run -->`` (or ``run exit=2``): ``tests/test_docs.py`` runs the block's
  commands as written, in order, in one fresh directory per page;
- ``<!-- docs: output -->``: what the run block before it printed, compared line by line
  (lines in order, other lines allowed between; ``...`` inside a line matches any text),
  by ``test_docs.py`` or by the test that owns that block;
- ``<!-- docs: compose -->``: each ``reglab-train`` line composed with Hydra's API, for
  commands this machine cannot run (a GPU, SLURM, a cluster) or that take minutes;
- ``<!-- docs: file -->``: a file (first line ``# <path>``) written into the page's
  directory before its run blocks;
- ``<!-- docs: include -->``: a block that is a file of the repository, included whole
  when the site is built (``--8<-- "conf/experiment/line.yaml"``);
- ``<!-- docs: test tests/<file>.py::<name> -->``: that test reads and runs the block
  itself (``block(page, n)``), with assertions of its own.

A block without a directive fails ``test_docs.py``, so nothing shown can go unchecked.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DIRECTIVE = re.compile(r"<!--\s*docs:\s*(.*?)\s*-->")
FENCE = re.compile(r"^```(\w*)\s*$")


@dataclass
class Block:
    page: str          # path relative to the repository root
    line: int          # 1-based line of the opening fence
    lang: str
    text: str
    directive: str     # "" when none

    @property
    def kind(self) -> str:
        return self.directive.split()[0] if self.directive else ""

    @property
    def where(self) -> str:
        return f"{self.page}:{self.line}"


def pages() -> list[str]:
    """README.md and every page of the docs site, relative to the repository root."""
    return ["README.md", *sorted(str(p.relative_to(REPO))
                                 for p in (REPO / "docs").rglob("*.md"))]


def blocks(page: str) -> list[Block]:
    lines = (REPO / page).read_text().splitlines()
    found: list[Block] = []
    i = 0
    while i < len(lines):
        opened = FENCE.match(lines[i])
        if not opened:
            i += 1
            continue
        start = i
        i += 1
        body = []
        while i < len(lines) and lines[i].rstrip() != "```":
            body.append(lines[i])
            i += 1
        i += 1
        before = start - 1
        while before >= 0 and not lines[before].strip():
            before -= 1
        named = DIRECTIVE.fullmatch(lines[before].strip()) if before >= 0 else None
        found.append(Block(page, start + 1, opened.group(1), "\n".join(body) + "\n",
                           named.group(1) if named else ""))
    return found


def block(page: str, n: int) -> Block:
    """The ``n``-th fenced block of ``page`` (0-based), for a test that owns it."""
    return blocks(page)[n]


@dataclass
class Command:
    """One step of a run block: a reglab command (argv), or shell text for bash."""

    argv: list[str] = field(default_factory=list)
    shell: str = ""


def commands(text: str) -> tuple[dict[str, str], list[Command]]:
    """A shell block as (exported environment, steps). A line starting ``reglab-`` is one
    command (continued with ``\\``); a here-document or any other line goes to bash."""
    env: dict[str, str] = {}
    steps: list[Command] = []
    lines = text.replace("\\\n", " ").splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        heredoc = re.search(r"<<\s*'?(\w+)'?", line)
        if heredoc:
            end = lines.index(heredoc.group(1), i + 1)
            steps.append(Command(shell="\n".join(lines[i:end + 1]) + "\n"))
            i = end + 1
            continue
        words = shlex.split(line, comments=True)
        if words and words[0] == "export":
            env.update(w.split("=", 1) for w in words[1:])
        elif words and words[0].startswith("reglab-"):
            steps.append(Command(argv=words))
        elif words:
            steps.append(Command(shell=line + "\n"))
        i += 1
    return env, steps


def matches(expected: str, actual: str) -> str | None:
    """None when every expected line appears in ``actual`` in order (``...`` within a line
    matches any text); else the first expected line that does not."""
    got = [line.rstrip() for line in actual.splitlines()]
    at = 0
    for want in expected.splitlines():
        want = want.rstrip()
        if not want:
            continue
        pattern = re.compile(".*".join(re.escape(part) for part in want.split("...")))
        while at < len(got) and not pattern.fullmatch(got[at]):
            at += 1
        if at == len(got):
            return want
        at += 1
    return None
