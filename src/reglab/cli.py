"""What reglab's console commands share: one-line errors, exit statuses, quick --help.

Imports nothing heavy: these run before (or instead of) torch.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

#: Exit status for input reglab (or Hydra) rejects.
BAD_INPUT = 2


def fail(prog: str, exc: BaseException) -> NoReturn:
    """Report a user error as one line and exit 2 (the traceback with HYDRA_FULL_ERROR=1)."""
    if os.environ.get("HYDRA_FULL_ERROR") == "1":
        raise exc
    print(f"{prog}: error: {exc}", file=sys.stderr, flush=True)
    sys.exit(BAD_INPUT)


def run(main: Callable[[], object]) -> None:
    """Run a console command, then let Python exit as usual: ``atexit`` handlers run and
    loggers finish their files.

    What made that exit slow (1–2 s after torch and Lightning are loaded) is the final
    garbage collection walking every object those libraries created; ``gc.freeze()``
    moves them out of the collector's reach first, so the exit costs ~0.2 s.
    """
    import gc

    try:
        main()
    finally:
        gc.freeze()


def experiment_argv(argv: list[str]) -> list[str]:
    """``+experiment=NAME`` (the form Hydra's docs use for a group with no default) as
    ``experiment=NAME``: the root config lists ``experiment: null``, where Hydra would
    reject the ``+`` form as a second value."""
    return [a.removeprefix("+") if a.startswith("+experiment=") else a for a in argv]


def run_hydra_app(app: Callable[[], object]) -> None:
    """Run a ``hydra.main`` app; Hydra's own exit 1 (a config it cannot compose) is bad
    input, so it becomes 2."""
    try:
        app()
    except SystemExit as exc:
        if exc.code == 1:
            sys.exit(BAD_INPUT)
        raise


#: The flags a plain ``--help`` request may carry; any other goes to Hydra.
_HELP_FLAGS = frozenset({"--help", "-h", "--resolve", "-m", "--multirun"})


def answer_help(prog: str, config_name: str, argv: list[str]) -> None:
    """Exit 0 after printing a plain ``--help`` page (see :func:`fast_help`), or 2 with
    one line when its overrides do not compose; return otherwise."""
    try:
        handled = fast_help(config_name, argv)
    except Exception as exc:
        fail(prog, exc)
    if handled:
        sys.exit(0)


def fast_help(config_name: str, argv: list[str]) -> bool:
    """Print the ``--help`` page Hydra would print for ``config_name``; False when this
    is not a plain ``--help`` request (Hydra then answers as usual).

    Hydra lists each config group by copying its whole config repository (every
    launcher and sweeper config its plugins registered included) several times per
    group: about 0.5 s of a 0.8 s ``--help``. The groups are read from ``conf/`` here
    instead; the config is composed by Hydra's API, and the page follows the app's own
    ``hydra.help.template``. Anything unusual (another flag, a template naming Hydra's
    own groups or flags) goes back to Hydra; a config that does not compose raises
    Hydra's error, for the caller to report in one line.
    """
    flags = {a for a in argv[1:] if a.startswith("-")}
    if not flags & {"--help", "-h"} or not flags <= _HELP_FLAGS:
        return False
    overrides = [a for a in argv[1:] if not a.startswith("-")]
    import string

    from omegaconf import OmegaConf, open_dict, read_write

    from reglab.confdir import CONF_DIR, compose

    cfg = compose(overrides, config_name=config_name)
    template = str(cfg.hydra.help.template)
    if "$FLAGS_HELP" in template or "$HYDRA_CONFIG_GROUPS" in template:
        return False
    with read_write(cfg), open_dict(cfg):
        del cfg["hydra"]
    print(string.Template(template).substitute(
        APP_CONFIG_GROUPS=_config_groups(CONF_DIR),
        CONFIG=OmegaConf.to_yaml(cfg, resolve="--resolve" in flags)))
    return True


def _config_groups(conf_dir: Path) -> str:
    """``group: option, option`` lines for the app's config groups (not Hydra's own), as
    Hydra's ``$APP_CONFIG_GROUPS`` lists them."""
    lines = []
    for group_dir in sorted(p for p in conf_dir.rglob("*") if p.is_dir()):
        group = group_dir.relative_to(conf_dir).as_posix()
        if group == "hydra" or group.startswith("hydra/"):
            continue
        options = sorted(p.stem for p in group_dir.glob("*.yaml"))
        if options:
            lines.append((group, f"{group}: {', '.join(options)}"))
    return "".join(line + "\n" for _, line in sorted(lines))
