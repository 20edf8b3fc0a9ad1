"""Lightning's learning-rate finder as a preset (``tuner=lr_find``).

``Tuner.lr_find`` trains for a short range test from the model's initial weights, then
restores them; the suggested rate is printed, recorded in ``metrics.json`` and, unless
``tuner.lr_find.update_lr=false``, used by the fit that follows.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

log = logging.getLogger("reglab")


def find_lr(trainer: Any, module: Any, datamodule: Any, options: Any) -> dict[str, Any]:
    """Run the range test; return ``{"suggestion", "applied", "lrs", "losses"}``."""
    from pytorch_lightning.tuner import Tuner

    options = dict(options or {})
    update = bool(options.pop("update_lr", True))
    finder = Tuner(trainer).lr_find(module, datamodule=datamodule, update_attr=False,
                                    **options)
    module.reset_records()  # the range test's losses (and overflows) are not the fit's
    suggestion = None if finder is None else finder.suggestion()
    applied = False
    if suggestion is not None and update:
        factory = module.optimizer_factory
        module.optimizer_factory = functools.partial(
            factory.func, *factory.args, **{**factory.keywords, "lr": float(suggestion)})
        applied = True
    line = ("lr_find: no suggestion (too few points)" if suggestion is None else
            f"lr_find: suggested learning rate {suggestion:.4g}"
            + (" (used for this fit)" if applied else ""))
    print(line, flush=True)
    log.info(line)
    results = {} if finder is None else finder.results
    return {"suggestion": None if suggestion is None else float(suggestion),
            "applied": applied,
            "lrs": [float(v) for v in results.get("lr", [])],
            "losses": [float(v) for v in results.get("loss", [])]}
