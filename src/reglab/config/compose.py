"""Where reglab's Hydra configs live, and the resolvers they use.

An editable install reads the repository's top-level ``conf/``; a built wheel carries
the same files inside the package as ``reglab/conf``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

#: The package dir, ``src/reglab`` in a checkout.
_PACKAGE = Path(__file__).resolve().parents[1]


def _find() -> Path:
    for candidate in (_PACKAGE / "conf", _PACKAGE.parents[1] / "conf"):
        if (candidate / "train.yaml").is_file():
            return candidate
    raise FileNotFoundError(f"reglab: cannot find its conf/ directory near {_PACKAGE}")


def _sweep_label(mode: Any, override_dirname: str) -> str:
    """A sweep job's overrides (its TensorBoard run name); empty for a single run."""
    return str(override_dirname or "") if "MULTIRUN" in str(mode) else ""


def _task_name(*, _root_: Any) -> str:
    """The default ``task_name``: what was run, read from the data config itself (so it
    resolves the same inside Hydra, through the compose API and from a saved config).

    A table names its file (``data=csv`` with ``houses.csv`` gives ``houses``; a streamed
    table its file, folder or the folder of its glob); reglab's
    data sets their option (``line``, ``diabetes``); a data module of the user's own its
    class. Characters that cannot name a folder become ``_``.
    """
    import re

    data = _root_.get("data")
    source = data.get("source") if data is not None else None
    name = "train"
    path = source.get("path") if source is not None else None
    if source is None and data is not None and "path" in data:  # data=stream: data.path
        path = None if OmegaConf.is_missing(data, "path") else data.get("path")
        source = data
    if isinstance(path, str) and any(c in path for c in "*?["):  # a glob: its folder
        path = str(Path(path).parent)
    if isinstance(path, str) and path and not OmegaConf.is_missing(source, "path"):
        name = Path(path).stem
    elif source is not None and source.get("_target_"):
        name = str(source["_target_"]).rsplit(".", 1)[-1]
    elif data is not None and data.get("_target_"):
        name = str(data["_target_"]).rsplit(".", 1)[-1]
    name = re.sub(r"[^A-Za-z0-9._=-]+", "_", name).strip("._") or "train"
    return name


CONF_DIR: Path = _find()
OmegaConf.register_new_resolver("reglab.sweep_label", _sweep_label, replace=True)
OmegaConf.register_new_resolver("reglab.task_name", _task_name, replace=True)


def compose(overrides: list[str] | None = None, run_dir: str | Path | None = None,
            config_name: str = "train") -> Any:
    """The config ``reglab-train <overrides>`` would get, for notebooks, tests and
    benchmarks: composed by Hydra's API and registered as the current Hydra config, with
    its run dir set to ``run_dir`` (nothing is created there)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    # The root lists `experiment: null`: `+experiment=x` means `experiment=x`.
    from reglab.cli.common import experiment_argv

    overrides = experiment_argv(list(overrides or []))
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = hydra_compose(config_name=config_name, overrides=overrides,
                            return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    if run_dir is not None:
        with open_dict(cfg):
            cfg.paths.run_dir = str(run_dir)
    return cfg
