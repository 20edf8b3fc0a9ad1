"""Lightning's learning-rate finder as a preset (``tuner=lr_find``).

``Tuner.lr_find`` trains for a short range test from the model's initial weights, then
restores them; the suggested rate is printed, recorded in ``metrics.json`` and, unless
``tuner.lr_find.update_lr=false``, used by the fit that follows. Lightning suggests the rate
where the loss falls fastest; on a noisy curve that can be a rate at which it had hardly
started to fall (9e-6 on ``noisy_line``, whose fit then ends 500x above the optimum), so a
suggestion the curve itself does not support is reported and not used.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import sys
from collections.abc import Iterator
from typing import Any

log = logging.getLogger("reglab")


def find_lr(trainer: Any, module: Any, datamodule: Any, options: Any) -> dict[str, Any]:
    """Run the range test; return ``{"suggestion", "applied", "lrs", "losses"}``."""
    from pytorch_lightning.tuner import Tuner

    options = dict(options or {})
    update = bool(options.pop("update_lr", True))
    with _no_bar_off_a_terminal():
        finder = Tuner(trainer).lr_find(module, datamodule=datamodule, update_attr=False,
                                        **options)
    module.reset_records()  # the range test's losses (and overflows) are not the fit's
    suggestion = None if finder is None else finder.suggestion()
    results = {} if finder is None else finder.results
    lrs = [float(v) for v in results.get("lr", [])]
    losses = [float(v) for v in results.get("loss", [])]
    doubt = None if suggestion is None else unsupported(lrs, losses, float(suggestion))
    applied = False
    if suggestion is not None and update and doubt is None:
        factory = module.optimizer_factory
        module.optimizer_factory = functools.partial(
            factory.func, *factory.args, **{**factory.keywords, "lr": float(suggestion)})
        applied = True
    if suggestion is None:
        line = "lr_find: no suggestion (too few points)"
    elif doubt is not None:
        kept = module.optimizer_factory.keywords.get("lr")
        line = (f"lr_find: suggested learning rate {suggestion:.4g}, not used: {doubt}; "
                f"this fit keeps optimizer.lr={kept}")
    else:
        line = (f"lr_find: suggested learning rate {suggestion:.4g}"
                + (" (used for this fit)" if applied else ""))
    print(line, flush=True)
    log.info(line)
    return {"suggestion": None if suggestion is None else float(suggestion),
            "applied": applied, **({"not_used_because": doubt} if doubt else {}),
            "lrs": lrs, "losses": losses}


def unsupported(lrs: list[float], losses: list[float], suggestion: float) -> str | None:
    """Why the range test's own curve does not support ``suggestion``: at that rate the
    loss had come less than a tenth of the way from where it started to its lowest."""
    curve = [(lr, loss) for lr, loss in zip(lrs, losses, strict=True)
             if lr > 0 and math.isfinite(loss)]
    if len(curve) < 3:
        return None
    start = curve[0][1]
    best_lr, best = min(curve, key=lambda point: point[1])
    at = min(curve, key=lambda point: abs(math.log(point[0] / suggestion)))[1]
    if start - best <= 0 or start - at >= 0.1 * (start - best):
        return None
    share = max(0.0, (start - at) / (start - best))
    return (f"the range test's loss had fallen {share:.0%} of the way to its lowest there "
            f"({at:.4g}; lowest {best:.4g} at {best_lr:.3g})")


#: What Lightning's range test titles its tqdm bar (it has no switch for the bar).
BAR_TITLE = "Finding best initial lr"


class _DropBar:
    """stderr without the range test's bar: off a terminal tqdm writes every update as a
    line of its own into the log or pipe. Everything else passes through."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream
        self._in_bar = False

    def write(self, text: str) -> int:
        if BAR_TITLE in text or (self._in_bar and not text.strip()):
            self._in_bar = True  # the bar's update, or the newline that ends it
            return len(text)
        self._in_bar = False
        return self._stream.write(text)

    def __getattr__(self, name: str) -> Any:  # flush, fileno, encoding, isatty, ...
        return getattr(self._stream, name)


@contextlib.contextmanager
def _no_bar_off_a_terminal() -> Iterator[None]:
    stream = sys.stderr
    if stream is None or getattr(stream, "isatty", lambda: False)():
        yield
        return
    with contextlib.redirect_stderr(_DropBar(stream)):  # type: ignore[type-var]
        yield
