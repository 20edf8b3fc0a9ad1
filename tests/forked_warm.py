"""Imported by the suite's fork server only (:data:`forked_cli.PRELOAD`), after the
libraries: work every reglab command repeats before it reads its own arguments, done once
in the server so the forked commands inherit it. Nothing here changes what a command
computes or prints:

- Hydra's plugin discovery (it scans and imports ``hydra_plugins`` on a command's first
  compose: ~0.2 s a command);
- the YAML of ``conf/``, parsed once: each command composes its config twice (Hydra's
  ``get_mode``, then the run), parsing ~36 files each time with PyYAML's pure-Python
  loader (~0.15 s a command). A parse is reused only for the very same text read with
  the same loader; a file that fails to parse is parsed (and fails) every time;
- ``gc.freeze()`` of everything the server holds (see the end).
"""

from __future__ import annotations

import copy
import gc
import io
from pathlib import Path
from typing import Any

import hydra
import yaml
from hydra.core.plugins import Plugins
from omegaconf import OmegaConf

import hydra_plugins

_load = yaml.load
_parsed: dict[tuple[str, str], Any] = {}


def _cached_load(stream: Any, Loader: Any) -> Any:
    if not hasattr(stream, "read"):
        return _load(stream, Loader)
    text = stream.read()
    key = (text, getattr(Loader, "__qualname__", repr(Loader)))
    if key in _parsed:
        return copy.deepcopy(_parsed[key])
    again = io.StringIO(text)
    again.name = getattr(stream, "name", "<file>")  # error marks name the file, as before
    obj = _load(again, Loader)
    _parsed[key] = copy.deepcopy(obj)
    return obj


yaml.load = _cached_load
Plugins.instance()
_roots = [Path(__file__).resolve().parents[1] / "conf", Path(hydra.__file__).parent / "conf",
          *(Path(p) for p in hydra_plugins.__path__)]
for _path in sorted(p for root in _roots for p in root.rglob("*.yaml")):
    OmegaConf.load(_path)

# Last: what the server holds is moved out of the collector's sight (the few thousand
# objects its imports left unreachable with it: no pass walked them). A forked command's
# collections would otherwise walk (and so copy, page by page) the whole inherited heap.
# The collector, paused since :mod:`forked_start`, is back on for every command.
gc.freeze()
gc.enable()
