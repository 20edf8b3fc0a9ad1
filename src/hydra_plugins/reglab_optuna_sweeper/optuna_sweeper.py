"""The Hydra ``Sweeper`` that ``hydra/sweeper=optuna`` names: a shell over
:mod:`reglab.search.sweeper`. Hydra imports every plugin module when it starts, so
nothing heavy is imported here."""

from __future__ import annotations

from typing import Any

from hydra.plugins.sweeper import Sweeper


class OptunaSweeper(Sweeper):
    """An Optuna study (ask and tell) over Hydra's launchers; settings as in
    ``conf/hydra/sweeper/optuna.yaml``."""

    def __init__(self, **settings: Any) -> None:
        self.settings = settings
        self.config: Any = None
        self.launcher: Any = None
        self.hydra_context: Any = None

    def setup(self, *, hydra_context: Any, task_function: Any, config: Any) -> None:
        from hydra.core.plugins import Plugins

        self.config, self.hydra_context = config, hydra_context
        self.launcher = Plugins.instance().instantiate_launcher(
            config=config, hydra_context=hydra_context, task_function=task_function)

    def sweep(self, arguments: list[str]) -> Any:
        from reglab.cli import common
        from reglab.errors import ReglabError
        from reglab.search.sweeper import run_study

        try:
            return run_study(self, arguments)
        except ReglabError as exc:  # bad settings: one line, exit 2
            common.fail(f"reglab-{self.config.hydra.job.name}", exc)
