"""``model.pt``: trained weights plus what is needed to rebuild the model.

The file holds only tensors, strings, numbers and lists, so it loads with
``torch.load(path, weights_only=True)`` and rebuilds with :func:`load_model` — no
Lightning, no Hydra, and no unpickling of arbitrary objects.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from reglab import __version__
from reglab.models import MODEL_CLASSES
from reglab.scaling import Scaling, Standardized
from reglab.validate import ReglabError

FORMAT = "reglab.model"
FORMAT_VERSION = 1


def save_model(model: nn.Module, path: str | os.PathLike[str],
               scaling: Scaling | None = None, extra: dict[str, Any] | None = None) -> Path:
    """Write ``model`` (and the data scaling it was trained with) to ``path`` atomically."""
    name = type(model).__name__
    if name not in MODEL_CLASSES or not hasattr(model, "init_kwargs"):
        raise TypeError(f"save_model: {name} is not a reglab model "
                        f"(expected one of {', '.join(MODEL_CLASSES)})")
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "reglab_version": __version__,
        "model": {"class": name, "kwargs": dict(model.init_kwargs)},
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "scaling": (scaling or Scaling()).to_dict(),
        "extra": extra or {},
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    torch.save(payload, tmp)
    os.replace(tmp, path)
    return path


def _safe_load(path: Path, what: str = "file") -> Any:
    """``torch.load`` with ``weights_only=True``, its failures turned into one line."""
    import pickle

    if not path.is_file():
        raise ReglabError(f"{path}: no such {what}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise ReglabError(f"{path}: refused: the file holds objects that are not plain "
                          f"weights and could run code when loaded ({first[:160]})") from None
    except Exception as exc:  # torch raises several types for truncated or corrupt files
        raise ReglabError(f"{path}: not a readable {what}, truncated or corrupt "
                          f"({type(exc).__name__}: {str(exc).splitlines()[0][:160]})") from None


@dataclass
class Trained:
    """A trained model as read from ``model.pt`` or a Lightning checkpoint."""

    model: nn.Module            # in eval mode; takes and returns standardized units
    scaling: Scaling
    features: list[str] | None  # input column names, in order
    target: str | None

    def standardized(self) -> nn.Module:
        """The model in the data's own units (scaling applied around it)."""
        return Standardized(self.model, self.scaling).eval() if self.scaling.active \
            else self.model


def _build(path: Path, name: Any, kwargs: Any, state: dict[str, Any]) -> nn.Module:
    cls = MODEL_CLASSES.get(name)
    if cls is None:
        raise ReglabError(f"{path}: unknown model class {name!r}; expected one of "
                          f"{', '.join(MODEL_CLASSES)}")
    model = cls(**kwargs)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise ReglabError(f"{path}: weights do not fit {name}({kwargs}): "
                          f"{str(exc).splitlines()[-1].strip()}") from None
    return model.eval()


def read_trained(path: str | os.PathLike[str]) -> Trained:
    """Read ``model.pt`` or a reglab Lightning checkpoint (``.ckpt``), safely."""
    path = Path(path).expanduser()
    payload = _safe_load(path, "model file or checkpoint")
    if isinstance(payload, dict) and payload.get("format") == FORMAT:
        if payload.get("format_version") != FORMAT_VERSION:
            raise ReglabError(f"{path}: model file format {payload.get('format_version')} is "
                              f"not supported (this reglab reads {FORMAT_VERSION})")
        spec = payload["model"]
        model = _build(path, spec.get("class"), spec.get("kwargs"), payload["state_dict"])
        data = (payload.get("extra") or {}).get("data") or {}
        scaling = Scaling.from_dict(payload.get("scaling"))
    elif isinstance(payload, dict) and isinstance(payload.get("reglab"), dict):
        stamp = payload["reglab"]
        if stamp.get("format_version") != FORMAT_VERSION:
            raise ReglabError(f"{path}: written by reglab {stamp.get('version')} (format "
                              f"{stamp.get('format_version')}); this reglab reads format "
                              f"{FORMAT_VERSION}")
        state = {k.removeprefix("model."): v for k, v in payload["state_dict"].items()
                 if k.startswith("model.")}
        model = _build(path, stamp.get("model"), stamp.get("model_kwargs"), state)
        data = stamp.get("data") or {}
        scaling = Scaling.from_dict(stamp.get("scaling"))
    else:
        raise ReglabError(f"{path}: neither a reglab model file nor a reglab checkpoint")
    return Trained(model, scaling, data.get("features"), data.get("target"))


def load_model(path: str | os.PathLike[str]) -> nn.Module:
    """Rebuild a trained model from ``model.pt`` (or a checkpoint), in eval mode.

    It takes inputs and returns predictions in the data's own units: the
    standardization it was trained with, if any, is applied around it.
    """
    return read_trained(path).standardized()


def check_checkpoint(path: str | os.PathLike[str], module: nn.Module) -> None:
    """Refuse a checkpoint before Lightning touches it: one that would run code when
    unpickled, a truncated or corrupt file, or weights for another model shape."""
    path = Path(path)
    if not path.is_file():
        raise ReglabError(f"ckpt_path: {path}: no such checkpoint file")
    ckpt = _safe_load(path, "checkpoint")
    state = ckpt.get("state_dict") if isinstance(ckpt, dict) else None
    if not isinstance(state, dict):
        raise ReglabError(f"{path}: not a Lightning checkpoint (no state_dict)")
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
