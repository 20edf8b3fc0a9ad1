"""``model.pt``: trained weights plus what is needed to rebuild the model.

The file holds only tensors, strings, numbers and lists, so it loads with
``torch.load(path, weights_only=True)`` and rebuilds with :func:`load_model` — no
Lightning, no Hydra, and no unpickling of arbitrary objects. It names the model's class
by its import path with the constructor's arguments; a class outside reglab is imported
(which runs its module's code) only when the caller allows its package.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from reglab import __version__
from reglab.data.scaling import Scaling, Standardized
from reglab.errors import ConfigError, ReglabError
from reglab.legacy import current, current_targets
from reglab.models.regressors import MODEL_CLASSES

FORMAT = "reglab.model"
FORMAT_VERSION = 1


def save_model(model: nn.Module, path: str | os.PathLike[str],
               scaling: Scaling | None = None, extra: dict[str, Any] | None = None,
               kwargs: dict[str, Any] | None = None) -> Path:
    """Write ``model`` (and the data scaling it was trained with) to ``path`` atomically.

    ``kwargs`` are the constructor arguments that rebuild it (reglab's models record
    their own as ``init_kwargs``); they must be plain values: numbers, strings, lists.
    """
    cls = type(model)
    if kwargs is None:
        kwargs = getattr(model, "init_kwargs", None)
    if kwargs is None:
        raise TypeError(f"save_model: pass kwargs= for {cls.__qualname__}: the constructor "
                        "arguments that rebuild it")
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "reglab_version": __version__,
        "model": {"class": f"{cls.__module__}.{cls.__qualname__}", "kwargs": dict(kwargs)},
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "scaling": (scaling or Scaling()).to_dict(),
        "extra": extra or {},
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    from reglab.run_files import write_whole  # beside artifacts: imported when used

    write_whole(path, lambda tmp: torch.save(payload, tmp))
    return path


def _safe_load(path: Path, what: str = "file") -> Any:
    """``torch.load`` with ``weights_only=True``, its failures turned into one line."""
    import pickle

    if not path.is_file():
        raise ReglabError(f"{path}: no such {what}")
    try:
        # torch warns about the pickle protocol of files it then refuses; the refusal
        # below says what matters, and a caller's warnings-as-errors must not change it.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Detected pickle protocol",
                                    category=UserWarning)
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise ReglabError(f"{path}: refused: the file holds objects that are not plain "
                          f"weights and could run code when loaded ({first[:160]})") from None
    except Exception as exc:  # torch raises several types for truncated or corrupt files
        lines = str(exc).strip().splitlines()
        detail = f": {lines[0][:160]}" if lines else ""
        empty = " (0 bytes)" if path.stat().st_size == 0 else ""
        raise ReglabError(f"{path}: not a readable {what}{empty}, truncated or corrupt "
                          f"({type(exc).__name__}{detail})") from None


@dataclass
class Trained:
    """A trained model as read from ``model.pt`` or a Lightning checkpoint."""

    model: nn.Module            # in eval mode; takes and returns standardized units
    scaling: Scaling
    features: list[str] | None  # input column names, in order
    target: str | list[str] | None  # one name, or one per target column
    kwargs: dict[str, Any] = field(default_factory=dict)  # the constructor's arguments
    #: The table the model was trained on (``tables.file_identity``), if it read one.
    data_file: dict[str, Any] | None = None

    @property
    def in_features(self) -> int | None:
        """The number of input columns: the ``in_features`` argument the model was built
        with, else the number of feature names stored with it; None when neither is known
        (a class of the user's own with a fixed width and unnamed data)."""
        width = self.kwargs.get("in_features")
        if isinstance(width, int) and not isinstance(width, bool):
            return width
        return len(self.features) if self.features else None

    def standardized(self) -> nn.Module:
        """The model in the data's own units (scaling applied around it)."""
        return Standardized(self.model, self.scaling).eval() if self.scaling.active \
            else self.model


def _package_names(value: Any) -> tuple[str, ...]:
    """``allow_modules`` as package names: a list of them, or one name."""
    if value is None:
        return ()
    if isinstance(value, str):
        value = [value]
    try:
        names = tuple(value)
    except TypeError:
        names = None
    if names is None or not all(isinstance(n, str) and n for n in names):
        raise ReglabError(f"allow_modules: expected a list of package names, e.g. "
                          f"[mymodels], got {value!r}")
    return names


def _allowed(module: str, allow: tuple[str, ...]) -> bool:
    return any(module == a or module.startswith(a + ".") for a in ("reglab", *allow))


def model_class(name: Any, allow_modules: tuple[str, ...] = (), where: str = "model"
                ) -> type[nn.Module]:
    """The class ``name`` (``"pkg.mod.Class"``; reglab's short names are accepted too),
    imported only when it is reglab's or its module is under one of ``allow_modules``."""
    import importlib

    if not isinstance(name, str) or not name:
        raise ReglabError(f"{where}: names no model class")
    if name in MODEL_CLASSES:  # files written before classes were named by path
        return MODEL_CLASSES[name]
    name = current(name)  # files written before the subpackage layout
    module, _, qualname = name.rpartition(".")
    if not module:
        raise ReglabError(f"{where}: unknown model class {name!r}")
    if not _allowed(module, tuple(allow_modules)):
        top = module.split(".")[0]
        raise ReglabError(
            f"{where}: the model class {name} is not reglab's; rebuilding it imports "
            f"{module}, which runs that module's code. If you trust it, allow it: "
            f"load_model(path, allow_modules=['{top}']), or allow_modules=[{top}] on the "
            "reglab-eval / reglab-predict command line")
    try:
        obj: Any = importlib.import_module(module)
        for part in qualname.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as exc:
        raise ReglabError(f"{where}: cannot import the model class {name} ({exc}); is its "
                          "package installed, or on PYTHONPATH?") from None
    return obj


def _check_shapes(path: Path, cls: type[nn.Module], name: Any, kwargs: dict[str, Any],
                  state: dict[str, Any]) -> None:
    """Compare the tensors the recorded arguments would create with the stored ones
    before anything is allocated: the module is built on PyTorch's ``meta`` device (shapes
    only), so a file whose arguments declare a huge model costs no memory to refuse."""
    try:
        with torch.device("meta"):
            probe = cls(**kwargs)
        declared = {k: tuple(v.shape) for k, v in probe.state_dict().items()}
    except Exception:  # a class that cannot be built on the meta device: checked later
        return
    for key, shape in declared.items():
        stored = state.get(key)
        if not isinstance(stored, torch.Tensor):
            raise ReglabError(f"{path}: {name}({kwargs}) has a tensor {key!r} the file does "
                              "not hold")
        if tuple(stored.shape) != shape:
            raise ReglabError(f"{path}: {name}({kwargs}) declares {key!r} of shape "
                              f"{list(shape)}, but the file holds {list(stored.shape)}")


def _build(path: Path, name: Any, kwargs: Any, state: Any,
           allow_modules: tuple[str, ...] = ()) -> nn.Module:
    cls = model_class(name, allow_modules, where=str(path))
    if kwargs is None:
        kwargs = {}
    if not isinstance(kwargs, dict) or not all(isinstance(k, str) for k in kwargs):
        raise ReglabError(f"{path}: the model's recorded arguments are not a mapping of "
                          f"names to values: {str(kwargs)[:120]}")
    if not isinstance(state, dict):
        raise ReglabError(f"{path}: holds no weights (state_dict)")
    _check_shapes(path, cls, name, kwargs, state)
    try:
        model = cls(**(kwargs or {}))
    except Exception as exc:
        raise ReglabError(f"{path}: {name}({kwargs}) could not be built: "
                          f"{type(exc).__name__}: {exc}") from None
    # Weights trained under 64-true are float64: rebuilt in float32 they would lose the
    # digits the run kept (load_state_dict copies into the parameters' own dtype).
    dtypes = {v.dtype for v in state.values()
              if isinstance(v, torch.Tensor) and v.is_floating_point()}
    if len(dtypes) == 1:
        model = model.to(dtypes.pop())
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise ReglabError(f"{path}: weights do not fit {name}({kwargs}): "
                          f"{str(exc).splitlines()[-1].strip()}") from None
    return model.eval()


def read_trained(path: str | os.PathLike[str], allow_modules: Any = ()) -> Trained:
    """Read ``model.pt`` or a reglab Lightning checkpoint (``.ckpt``), safely: the file
    is loaded as weights only, and a model class outside reglab is imported only when
    its package is in ``allow_modules``."""
    allow = _package_names(allow_modules)
    path = Path(path).expanduser()
    payload = _safe_load(path, "model file or checkpoint")
    if isinstance(payload, dict) and payload.get("format") == FORMAT:
        if payload.get("format_version") != FORMAT_VERSION:
            raise ReglabError(f"{path}: model file format {payload.get('format_version')} is "
                              f"not supported (this reglab reads {FORMAT_VERSION})")
        spec = payload.get("model")
        if not isinstance(spec, dict):
            raise ReglabError(f"{path}: names no model class (the file is incomplete)")
        kwargs = spec.get("kwargs")
        model = _build(path, spec.get("class"), kwargs, payload.get("state_dict"), allow)
        data = (payload.get("extra") or {}).get("data") or {}
        scaling = Scaling.from_dict(payload.get("scaling"))
    elif isinstance(payload, dict) and isinstance(payload.get("reglab"), dict):
        stamp = payload["reglab"]
        if stamp.get("format_version") != FORMAT_VERSION:
            raise ReglabError(f"{path}: written by reglab {stamp.get('version')} (format "
                              f"{stamp.get('format_version')}); this reglab reads format "
                              f"{FORMAT_VERSION}")
        raw_state = payload.get("state_dict")
        if not isinstance(raw_state, dict):
            raise ReglabError(f"{path}: holds no weights (state_dict)")
        state = {k.removeprefix("model."): v for k, v in raw_state.items()
                 if isinstance(k, str) and k.startswith("model.")}
        kwargs = stamp.get("model_kwargs")
        model = _build(path, stamp.get("model_class") or stamp.get("model"), kwargs, state,
                       allow)
        data = stamp.get("data") or {}
        scaling = Scaling.from_dict(stamp.get("scaling"))
    else:
        raise ReglabError(f"{path}: neither a reglab model file nor a reglab checkpoint")
    file = data.get("file")
    return Trained(model, scaling, data.get("features"), data.get("target"),
                   dict(kwargs) if isinstance(kwargs, dict) else {},
                   file if isinstance(file, dict) else None)


def module_arguments(path: Any, allow_modules: Any = (), skip: set[str] | None = None
                     ) -> dict[str, Any]:
    """``RegressionModule`` arguments rebuilt from a reglab checkpoint, leaving out the
    names in ``skip`` (given by the caller): what ``load_from_checkpoint`` needs."""
    from hydra.utils import instantiate

    skip = skip or set()
    allow = _package_names(allow_modules)
    path = Path(path).expanduser()
    stamp = (_safe_load(path, "checkpoint") or {}).get("reglab") or {}
    # A model given by the caller wins: the checkpoint's is not rebuilt (nor need it be
    # rebuildable, as for a module built in Python around a model of the user's own).
    model = None if "model" in skip else read_trained(path, allow).model.train()
    out: dict[str, Any] = {"model": model, "scaling": Scaling.from_dict(stamp.get("scaling")),
                           "data_info": dict(stamp.get("data") or {}),
                           "model_spec": {"class": stamp.get("model_class"),
                                          "kwargs": dict(stamp.get("model_kwargs") or {})}}
    parts = current_targets(stamp.get("parts") or {})  # older reglabs' paths, as today's
    for name in ("loss", "optimizer", "scheduler"):
        node = parts.get(name)
        if name in skip or (node is None and name == "scheduler"):
            continue
        # A scheduler entry is Lightning's lr_scheduler_config around the torch one.
        config = node.get("scheduler") if name == "scheduler" and isinstance(node, dict) \
            else node
        if not isinstance(config, dict) or not isinstance(config.get("_target_"), str):
            raise ReglabError(f"{path}: records no {name} config (written by an older "
                              f"reglab); pass {name}=... to load_from_checkpoint")
        # Every class the node names, nested ones too: instantiating imports and runs it.
        for target in _targets(node):
            if not _allowed(target, ("torch.nn", "torch.optim", *allow)):
                raise ReglabError(
                    f"{path}: the {name} names {target}, not a class of reglab, torch.nn or "
                    f"torch.optim; pass {name}=... to load_from_checkpoint, or allow its "
                    f"package with allow_modules=['{target.split('.')[0]}']")
        out[name] = ({**node, "scheduler": instantiate(config)} if name == "scheduler"
                     else instantiate(node))
    out["parts"] = dict(parts)  # kept, so the module's own checkpoints record them again
    return {k: v for k, v in out.items() if k not in skip}


def _targets(node: Any) -> list[str]:
    """Every ``_target_`` in a config node, at any depth."""
    if isinstance(node, dict):
        own = [str(node["_target_"])] if "_target_" in node else []
        return own + [t for v in node.values() for t in _targets(v)]
    if isinstance(node, list):
        return [t for v in node for t in _targets(v)]
    return []


def load_model(path: str | os.PathLike[str], allow_modules: Any = ()) -> nn.Module:
    """Rebuild a trained model from ``model.pt`` (or a checkpoint), in eval mode.

    It takes inputs and returns predictions in the data's own units: the
    standardization it was trained with, if any, is applied around it. A model class
    of your own is imported only when you allow its package:
    ``load_model(path, allow_modules=["mymodels"])``.
    """
    return read_trained(path, allow_modules).standardized()


def _epochs_done(ckpt: dict[str, Any]) -> int | None:
    """The epochs a checkpoint has finished, as Lightning counts them on restore (its
    fit loop's completed epochs; the ``epoch`` key where no loop state was kept)."""
    try:
        done = ckpt["loops"]["fit_loop"]["epoch_progress"]["current"]["completed"]
    except (KeyError, TypeError):
        done = ckpt.get("epoch")
    return done if isinstance(done, int) and not isinstance(done, bool) else None


def check_checkpoint(path: str | os.PathLike[str], module: nn.Module,
                     max_epochs: int | None = None) -> None:
    """Refuse a checkpoint before Lightning touches it: one that would run code when
    unpickled, a truncated or corrupt file, weights for another model shape, or more
    epochs already trained than ``max_epochs`` allows (Lightning would fail mid-setup)."""
    path = Path(path)
    if not path.is_file():
        raise ReglabError(f"ckpt_path: {path}: no such checkpoint file")
    ckpt = _safe_load(path, "checkpoint")
    state = ckpt.get("state_dict") if isinstance(ckpt, dict) else None
    if not isinstance(state, dict):
        raise ReglabError(f"{path}: not a Lightning checkpoint (no state_dict)")
    done = _epochs_done(ckpt)
    if max_epochs is not None and max_epochs != -1 and done is not None and done > max_epochs:
        raise ConfigError(f"trainer.max_epochs: {max_epochs}, but {path} has already trained "
                          f"{done} epochs; give trainer.max_epochs={done + 1} or more to "
                          "train it further")
    stamp = ckpt.get("reglab") or {}
    if stamp and stamp.get("format_version") != FORMAT_VERSION:
        raise ReglabError(f"{path}: written by reglab {stamp.get('version')} (format "
                          f"{stamp.get('format_version')}); this reglab {__version__} reads "
                          f"format {FORMAT_VERSION}")
    model = getattr(module, "model", None)
    if stamp and model is not None and stamp.get("model") != type(model).__name__:
        raise ReglabError(f"{path}: the checkpoint holds a {stamp.get('model')} "
                          f"({stamp.get('model_kwargs')}) but this run builds a "
                          f"{type(model).__name__} ({getattr(model, 'init_kwargs', {})})")
    expected = module.state_dict()
    for key in sorted(set(expected) | set(state)):
        if key not in state:
            raise ReglabError(f"{path}: the checkpoint has no {key!r}; it was written for "
                              "another model (check model.* and the data's features)")
        if key not in expected:
            raise ReglabError(f"{path}: the checkpoint holds {key!r}, which this model does "
                              "not have; it was written for another model")
        if tuple(state[key].shape) != tuple(expected[key].shape):
            raise ReglabError(f"{path}: {key} has shape {tuple(state[key].shape)} in the "
                              f"checkpoint but {tuple(expected[key].shape)} in this model")
