"""``reglab-sweep-report <multirun dir>``: rebuild a sweep's report from the files on disk."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    """``reglab-sweep-report <multirun dir>``: rebuild the report from files on disk."""
    parser = argparse.ArgumentParser(
        prog="reglab-sweep-report",
        description="Summarise a reglab sweep: CSV, Markdown, heat map, loss curves and,"
                    " for one numeric swept key, a validation curve.")
    parser.add_argument("sweep_dir", type=Path, help="outputs/<task>/multiruns/<stamp>")
    parser.add_argument("--x-axis", choices=["epoch", "step"], default="epoch",
                        help="what sweep_curves.png draws the losses against (step: "
                             "optimizer steps, to compare batch sizes)")
    args = parser.parse_args(argv)
    from reglab.cli.common import fault, say

    try:
        from reglab.reporting.sweep_report import write_report

        report = write_report(args.sweep_dir, args.x_axis)
    except (FileNotFoundError, ValueError) as exc:
        print(f"reglab-sweep-report: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a read-only or full sweep dir: the report is written whole
        fault("reglab-sweep-report", exc, under=args.sweep_dir)
    try:
        say(report.markdown + "\nwrote " + ", ".join(str(f) for f in report.files))
    except OSError as exc:  # stdout on a full device or a closed pipe
        fault("reglab-sweep-report", exc)
    return 0


def console() -> None:
    """``reglab-sweep-report``: :func:`main`'s status as the exit status."""
    sys.exit(main())


if __name__ == "__main__":
    console()
