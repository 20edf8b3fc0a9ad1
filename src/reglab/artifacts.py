"""``model.pt``: trained weights plus what is needed to rebuild the model.

The file holds only tensors, strings, numbers and lists, so it loads with
``torch.load(path, weights_only=True)`` and rebuilds with :func:`load_model` — no
Lightning, no Hydra, and no unpickling of arbitrary objects.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from reglab import __version__
from reglab.models import MODEL_CLASSES
from reglab.validate import ReglabError

FORMAT = "reglab.model"
FORMAT_VERSION = 1


def save_model(model: nn.Module, path: str | os.PathLike[str],
               extra: dict[str, Any] | None = None) -> Path:
    """Write ``model`` to ``path`` atomically (temp file, then rename)."""
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
        "extra": extra or {},
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    torch.save(payload, tmp)
    os.replace(tmp, path)
    return path


def load_model(path: str | os.PathLike[str], map_location: str | torch.device = "cpu"
               ) -> nn.Module:
    """Rebuild a model saved by reglab (``model.pt``), in eval mode, ready to predict."""
    path = Path(path)
    if not path.is_file():
        raise ReglabError(f"{path}: no such model file")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises several types for corrupt or unsafe files
        raise ReglabError(f"{path}: not a loadable reglab model file "
                         f"({type(exc).__name__}: {str(exc).splitlines()[0]})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ReglabError(f"{path}: not a reglab model file (no '{FORMAT}' header)")
    if payload.get("format_version") != FORMAT_VERSION:
        raise ReglabError(f"{path}: model file format {payload.get('format_version')} is not "
                         f"supported (this reglab reads {FORMAT_VERSION})")
    spec = payload["model"]
    cls = MODEL_CLASSES.get(spec.get("class"))
    if cls is None:
        raise ReglabError(f"{path}: unknown model class {spec.get('class')!r}; expected one "
                         f"of {', '.join(MODEL_CLASSES)}")
    model = cls(**spec["kwargs"])
    try:
        model.load_state_dict(payload["state_dict"])
    except RuntimeError as exc:
        raise ReglabError(f"{path}: weights do not fit {spec['class']}({spec['kwargs']}): "
                         f"{str(exc).splitlines()[-1].strip()}") from None
    return model.eval()


def check_checkpoint(path: str | os.PathLike[str], module: nn.Module) -> None:
    """Refuse a checkpoint before Lightning touches it: one that would run code when
    unpickled, a truncated or corrupt file, or weights for another model shape."""
    import pickle

    path = Path(path)
    if not path.is_file():
        raise ReglabError(f"ckpt_path: {path}: no such checkpoint file")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise ReglabError(f"{path}: refused: the file holds objects that are not plain "
                          f"weights and could run code when loaded ({first[:160]})") from None
    except Exception as exc:
        raise ReglabError(f"{path}: not a readable checkpoint, truncated or corrupt "
                          f"({type(exc).__name__}: {str(exc).splitlines()[0][:160]})") from None
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
