"""``reglab-predict``: a trained model's predictions for inline rows or a table.

The work is :func:`reglab.analysis.prediction.predict`; this command holds Hydra's app
and its exit statuses.
"""

from __future__ import annotations

import os
import sys

import hydra
from omegaconf import DictConfig

from reglab import errors
from reglab.analysis.prediction import predict
from reglab.cli import common
from reglab.config.compose import CONF_DIR


def main() -> None:
    """Console entry point: ``reglab-predict ckpt_path=<file> x=… | input_path=…``."""

    @hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="predict")
    def job(cfg: DictConfig) -> None:
        try:
            predict(cfg)
        except BrokenPipeError:
            # The reader went away (`reglab-predict … | head -1`): end quietly, as a
            # shell tool does; stdout goes to /dev/null so the exit flush cannot fail.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            sys.exit(0)
        except errors.ReglabError as exc:
            common.fail("reglab-predict", exc)
        except OSError as exc:  # here, not past Hydra, which would add a line of its own
            common.fault("reglab-predict", exc)

    common.run_hydra_app("reglab-predict", job)


def console() -> None:
    """``reglab-predict``: :func:`main`, then Python's ordinary exit (see :func:`common.run`)."""
    common.run(main)


if __name__ == "__main__":
    console()
