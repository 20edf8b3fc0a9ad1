"""``reglab-eval``: score a trained model on a split of its own data, or of other data.

The work is :func:`reglab.analysis.evaluation.evaluate`; this command holds Hydra's app,
the table it prints and its exit statuses.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig

from reglab import errors
from reglab.analysis.evaluation import evaluate
from reglab.cli import common, run_guard
from reglab.config.compose import CONF_DIR
from reglab.run_files import EVAL_FILE


def table(out: dict[str, Any], out_dir: Path) -> str:
    """What reglab-eval prints: each metric, the run's least-squares table, the file."""
    from reglab.reporting import summary

    flat = {k: v for k, v in out["metrics"].items() if not isinstance(v, dict)}
    for name, own in (out["metrics"].get("per_target") or {}).items():
        flat.update({f"{name}/{k}": v for k, v in own.items()})
    rows = [("metric", "value"), *((k, "—" if v is None else f"{v:.6g}")
                                   for k, v in flat.items())]
    width = max(len(r[0]) for r in rows)
    lines = [f"reglab-eval: {out['split']} split, {out['rows']} rows, {out['ckpt_path']}"]
    if out.get("split_why"):
        lines.append(f"  scored: {out['split_why']}")
    lines += [f"  {k:<{width}}  {v}" for k, v in rows]
    if out.get("least_squares"):
        lines.append("  least squares of the run's training split, in the data's units:")
        lines += [f"    {line}" for line in summary.report_table(out["least_squares"])]
    lines.append(f"  written: {out_dir / EVAL_FILE}")
    return "\n".join(lines)


def main() -> None:
    """Console entry point: ``reglab-eval ckpt_path=<file> [split=…] [data overrides]``.

    ``data…`` arguments are held back from Hydra (its eval config has no data group) and
    applied to the training run's own config.
    """
    args = sys.argv[1:]
    data_overrides = [a for a in args if a.lstrip("+~").startswith(("data=", "data."))]
    sys.argv = [sys.argv[0], *(a for a in args if a not in data_overrides)]
    guard = run_guard.guard_from_argv(sys.argv[1:])  # before Hydra touches the dir

    @hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="eval")
    def job(cfg: DictConfig) -> None:
        try:
            out = evaluate(cfg, data_overrides)
        except errors.ReglabError as exc:
            guard.restore(Path(cfg.paths.run_dir))  # nothing was scored: leave it as it was
            common.fail("reglab-eval", exc)
        except OSError as exc:  # here, not past Hydra, which would add a line of its own
            # Nothing was recorded (the scores are written whole or not at all): the dir
            # goes back to how it was, so the same command can run once the disk can.
            guard.restore(Path(cfg.paths.run_dir))
            common.fault("reglab-eval", exc)
        try:
            common.say(table(out, Path(cfg.paths.run_dir)))
        except OSError as exc:  # the scores are recorded; only the console failed
            common.fault("reglab-eval", exc)

    common.run_hydra_app("reglab-eval", job, guard)


def console() -> None:
    """``reglab-eval``: :func:`main`, then Python's ordinary exit (see :func:`common.run`)."""
    common.run(main)


if __name__ == "__main__":
    console()
