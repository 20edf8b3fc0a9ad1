"""The search space of a study, read the way Hydra's sweepers read it.

``hydra.sweeper.params`` and the command line's sweep overrides use Hydra's override
grammar: ``interval(a, b)`` (a float, ``tag(log, …)`` for a log scale, ``int(…)`` for
whole numbers), ``range(a, b[, step])``, ``choice(…)`` or ``a,b,c``. A plain value is
fixed for every trial. Optuna only stores numbers, strings, booleans and None, so a choice
among other things (``model.hidden=choice([32],[64,64])``) is stored as the override's own
text and given back to the job as written.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from reglab.errors import ConfigError

#: What Optuna can store as a categorical value as it is.
_PLAIN = (bool, int, float, str, type(None))


@dataclass
class SearchSpace:
    """The searched keys with their Optuna distributions, and the fixed overrides."""

    distributions: dict[str, Any] = field(default_factory=dict)
    fixed: list[str] = field(default_factory=list)
    #: For a categorical key: each stored value → the override text that sets it.
    texts: dict[str, dict[Any, str]] = field(default_factory=dict)

    def overrides(self, params: dict[str, Any]) -> list[str]:
        """A trial's parameters as the overrides its job is launched with."""
        out = list(self.fixed)
        for key, value in params.items():
            text = self.texts.get(key, {}).get(value)
            out.append(f"{key}={text if text is not None else _as_text(value)}")
        return out


def quoted(text: str) -> str:
    """``text`` as one quoted value of Hydra's override grammar (a path, a URL)."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _as_text(value: Any) -> str:
    """A sampled value in Hydra's override grammar (floats at full precision)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, float):
        return repr(value)
    return str(value)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _distribution(key: str, override: Any) -> tuple[Any, dict[Any, str] | None]:
    """The Optuna distribution of one sweep override (and, for a choice, its texts)."""
    from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, RangeSweep
    from optuna.distributions import (
        CategoricalDistribution,
        FloatDistribution,
        IntDistribution,
    )

    sweep = override.value()
    log = "log" in sweep.tags
    if isinstance(sweep, ChoiceSweep):
        texts: dict[Any, str] = {}
        for value, text in zip(sweep.list, override.sweep_string_iterator(), strict=True):
            stored = value if isinstance(value, _PLAIN) else text
            texts[stored] = text
        if log:
            raise ConfigError(f"hydra.sweeper.params.{key}: tag(log, …) needs interval(…) or "
                              "range(…), not a choice")
        return CategoricalDistribution(list(texts)), texts
    if isinstance(sweep, IntervalSweep):
        low, high = sweep.start, sweep.end
        if not (_number(low) and _number(high)) or not low < high:
            raise ConfigError(f"hydra.sweeper.params.{key}: interval({low}, {high}) needs two "
                              "numbers, the first the smaller")
        if log and low <= 0:
            raise ConfigError(f"hydra.sweeper.params.{key}: tag(log, interval({low}, {high})) "
                              "needs a positive lower end")
        if isinstance(low, int) and isinstance(high, int):
            return IntDistribution(low, high, log=log), None
        return FloatDistribution(float(low), float(high), log=log), None
    if isinstance(sweep, RangeSweep):
        values = list(sweep.range())
        if not values:
            raise ConfigError(f"hydra.sweeper.params.{key}: range({sweep.start}, {sweep.stop}, "
                              f"{sweep.step}) holds no value")
        if len(values) == 1:
            return CategoricalDistribution(values), None
        if all(isinstance(v, int) for v in (sweep.start, sweep.step)):
            if log:
                return IntDistribution(values[0], values[-1], log=True), None
            return IntDistribution(min(values), max(values), step=abs(int(sweep.step))), None
        return FloatDistribution(float(min(values)), float(max(values)),
                                 step=None if log else abs(float(sweep.step)), log=log), None
    raise ConfigError(f"hydra.sweeper.params.{key}: {override.input_line!r} is not a search "
                      "space Optuna can sample (use interval, range or choice)")


def parse(params: dict[str, Any] | None, arguments: list[str]) -> SearchSpace:
    """The space from ``hydra.sweeper.params`` and the command line (which wins on a key
    both name), in that order; a key with a plain value is fixed for every trial."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    lines = [f"{k}={v}" for k, v in (params or {}).items()]
    parser = OverridesParser.create()
    by_key: dict[str, Any] = {}
    for line in [*lines, *arguments]:
        try:
            override = parser.parse_override(line)
        except HydraException as exc:
            raise ConfigError(f"hydra.sweeper.params: {line!r}: "
                              f"{str(exc).splitlines()[0]}") from None
        by_key.pop(override.get_key_element(), None)  # a later line wins, in its place
        by_key[override.get_key_element()] = override
    space = SearchSpace()
    for key, override in by_key.items():
        if override.is_sweep_override():
            space.distributions[key], texts = _distribution(key, override)
            if texts is not None:
                space.texts[key] = texts
        else:
            space.fixed.append(override.input_line)
    if not space.distributions:
        raise ConfigError("hydra.sweeper.params: nothing to search; give a key a range, e.g. "
                          "'hydra.sweeper.params.optimizer.lr=tag(log, interval(1e-4, 1))'")
    return space


def study_name(task_name: str, space: SearchSpace) -> str:
    """The default study name: the task and the searched keys, so the same command run
    again continues the same study."""
    import re

    keys = "-".join(sorted(space.distributions))
    return re.sub(r"[^A-Za-z0-9._=-]+", "_", f"{task_name}-{keys}")
