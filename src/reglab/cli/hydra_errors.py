"""Hydra's and PyYAML's composition errors, said in one line.

Hydra prints a config it cannot compose in six to twelve lines (the search path, a stack,
a hint to set ``HYDRA_FULL_ERROR``), and a YAML file of the user's that does not parse
as a traceback that names no file. The commands let those errors reach them
(:func:`raise_composition_errors`) and say each in one line: the override or file, what
is wrong, and the options that exist.
"""

from __future__ import annotations

import difflib
import os
import re
from pathlib import Path

#: Set beside ``HYDRA_FULL_ERROR`` when reglab (not the user) set it, so a user's own
#: request for full tracebacks is still told apart (data-parallel ranks inherit both).
_MARK = "REGLAB_SET_HYDRA_FULL_ERROR"


def raise_composition_errors() -> None:
    """Make Hydra raise what it cannot compose instead of printing it and exiting."""
    if os.environ.get("HYDRA_FULL_ERROR") != "1":
        os.environ["HYDRA_FULL_ERROR"] = "1"
        os.environ[_MARK] = "1"


def full_error_asked() -> bool:
    """Whether the user asked for full tracebacks (``HYDRA_FULL_ERROR=1``)."""
    return os.environ.get("HYDRA_FULL_ERROR") == "1" and os.environ.get(_MARK) != "1"


def one_line(exc: BaseException, argv: list[str], conf_dir: Path) -> str:
    """``exc`` (raised while Hydra composed the config of ``argv``) as one line."""
    import yaml

    text = str(exc).strip()
    if isinstance(exc, (yaml.YAMLError, UnicodeDecodeError)):
        return _yaml_line(exc, _search_dirs(argv, conf_dir), argv)
    missing = re.search(r"Could not find '([^']*)/([^']*)'", text)
    if missing:
        group, name = missing.groups()
        options = _options(text)
        line = f"{group}={name}: no such option in {group}/"
        if options:
            line += f"; the options are {', '.join(options)}"
            near = difflib.get_close_matches(name, options, n=1)
            if near:
                line += f" (did you mean {group}={near[0]}?)"
        return line
    override = re.search(r"Could not override '([^']*)'", text)
    if override:
        key = override.group(1)
        cause = str(exc.__cause__ or "")
        if "not in struct" in cause:
            add = re.search(r"use (\+\S+)", text)
            near = _near_key(key, argv)
            hint = f"did you mean {near}? or, " if near else ""
            return (f"{key}: not a key of the config; {hint}to add it, write "
                    f"{add.group(1) if add else '+' + key + '=…'}")
        if "No match in the defaults list" in text:
            return f"{key}: not a config group of this command"
        return f"{key}: {cause.splitlines()[0] if cause else text.splitlines()[0]}"
    if type(exc).__name__ == "OverrideParseException":
        return f"{text.splitlines()[0]} (an override is key=value; quote lists and " \
               "special characters for the shell, e.g. 'optimizer.lr=[0.1,0.01]')"
    first = next((line.strip() for line in text.splitlines() if line.strip()), type(exc).__name__)
    return first


def _near_key(key: str, argv: list[str]) -> str | None:
    """The key of the composed config nearest to a misspelt ``key`` (the config composed
    again without that override: this runs only on the way to an error)."""
    from reglab.config.compose import compose

    rest = [a for a in argv if not a.lstrip("+~").startswith(f"{key}=")
            and not a.lstrip("+").startswith("hydra.")]
    try:
        cfg = compose(rest)
    except Exception:  # another problem on the line: no suggestion rather than a wrong one
        return None
    from omegaconf import DictConfig, OmegaConf

    parent, _, leaf = key.rpartition(".")
    node = OmegaConf.select(cfg, parent) if parent else cfg
    if not isinstance(node, DictConfig):
        return None
    near = difflib.get_close_matches(leaf, [str(k) for k in node], n=1)
    return f"{parent + '.' if parent else ''}{near[0]}" if near else None


def _options(text: str) -> list[str]:
    """The tab-indented option names Hydra lists after ``Available options``."""
    out, listing = [], False
    for line in text.splitlines():
        if line.startswith("Available options"):
            listing = True
        elif listing and line.startswith("\t"):
            out.append(line.strip())
        elif listing:
            break
    return out


def _search_dirs(argv: list[str], conf_dir: Path) -> list[Path]:
    """reglab's conf dir and every ``file://`` dir on the command line's search path."""
    dirs = [conf_dir]
    for arg in argv:
        if arg.lstrip("+").startswith("hydra.searchpath="):
            dirs += [Path(p) for p in re.findall(r"file://([^,\]\s'\"]+)", arg)]
    return dirs


def _yaml_line(exc: BaseException, dirs: list[Path], argv: list[str]) -> str:
    """The YAML file that does not parse, with its line, column and the problem.

    Hydra parses text it has read, so PyYAML's error names no file: the files on the
    search path are read again here to find the one with this error."""
    import yaml
    from omegaconf._utils import get_yaml_loader  # the loader Hydra reads configs with

    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    for file in _candidates(dirs, argv):
        try:
            text = file.read_bytes().decode("utf-8")
        except UnicodeDecodeError as bad:
            if isinstance(exc, UnicodeDecodeError):
                return f"{file}: not UTF-8 text (byte {bad.start}); save it as UTF-8"
            continue
        except OSError:
            continue
        try:
            yaml.load(text, Loader=get_yaml_loader())  # OmegaConf's loader: a safe one
        except yaml.MarkedYAMLError as found:
            if (getattr(found, "problem", None) or "") != (problem or ""):
                continue
            mark = found.problem_mark
            where = f", line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            return f"{file}{where}: {found.problem}"
        except yaml.YAMLError:
            continue
    return f"a YAML config file: {problem}"


def _candidates(dirs: list[Path], argv: list[str]) -> list[Path]:
    """The YAML files of the search path, those the command line picks first."""
    picked = [f"{a.lstrip('+~').split('=', 1)[0]}/{a.split('=', 1)[1]}.yaml"
              for a in argv if "=" in a and "." not in a.split("=", 1)[0]]
    files = [f for d in dirs if d.is_dir() for f in sorted(d.rglob("*.yaml"))]
    first = [f for f in files if any(str(f).endswith("/" + p) for p in picked)]
    return first + [f for f in files if f not in first]
