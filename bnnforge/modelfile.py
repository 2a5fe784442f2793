"""Model files: architecture + weights of a bnnforge BNN, with no pickled code.

A model file is a zip holding ``manifest.json`` (format, input shape, the chain of layers with
their constructor arguments, free-form metadata) and ``weights.npz`` (every layer's state,
``allow_pickle=False``). Any model that :func:`bnnforge.lower` accepts can be saved: it is traced
to its chain of layers, and :func:`load` rebuilds that chain as an ``nn.Sequential`` computing
the same function.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import zipfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .compiler.serialize import atomic_write_bytes, read_npz, write_npz
from .nn import layers as bl
from .nn.chain import trace_chain

__all__ = ["save", "load", "read_info", "ModelFileError"]

_FORMAT = "bnnforge-model"
_VERSION = 1
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)


class ModelFileError(ValueError):
    """A model file is missing, corrupt, truncated or of another format."""


def _layer_spec(step) -> dict:
    m = step.module
    if step.kind == "flatten":
        return {"type": "Flatten", "config": {}}
    if isinstance(m, (bl.InputQuant, bl.BinaryLinear, bl.BinaryConv2d, bl.BinaryActivation)):
        return {"type": type(m).__name__, "config": m.config()}
    if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
        return {"type": type(m).__name__,
                "config": {"num_features": m.num_features, "eps": m.eps,
                           "momentum": m.momentum, "affine": m.affine,
                           "track_running_stats": m.track_running_stats}}
    if isinstance(m, nn.MaxPool2d):
        return {"type": "MaxPool2d",
                "config": {"kernel_size": m.kernel_size, "stride": m.stride,
                           "padding": m.padding, "dilation": m.dilation,
                           "ceil_mode": m.ceil_mode}}
    raise ModelFileError(f"cannot save layer {step.name!r} ({type(m).__name__})")


_CONSTRUCTORS = {
    "InputQuant": bl.InputQuant, "BinaryLinear": bl.BinaryLinear,
    "BinaryConv2d": bl.BinaryConv2d, "BinaryActivation": bl.BinaryActivation,
    "BatchNorm1d": nn.BatchNorm1d, "BatchNorm2d": nn.BatchNorm2d, "MaxPool2d": nn.MaxPool2d,
    "Flatten": nn.Flatten,
}


def save(model: nn.Module, path: str | os.PathLike, input_shape: tuple,
         meta: dict | None = None) -> None:
    """Save ``model`` (architecture and weights) for frames of ``input_shape`` to ``path``.

    The file is written atomically and is byte-identical for the same model and metadata.

    Raises
    ------
    UnsupportedModelError
        When the model is not a chain of supported layers.
    """
    steps = trace_chain(model, input_shape)
    layers, arrays = [], {}
    for i, step in enumerate(steps):
        layers.append(_layer_spec(step))
        if step.module is not None and step.kind != "flatten":
            for key, tensor in step.module.state_dict().items():
                arrays[f"{i}.{key}"] = tensor.detach().cpu().numpy()
    weights = write_npz(arrays)
    manifest = {"format": _FORMAT, "version": _VERSION,
                "input_shape": [int(d) for d in input_shape], "layers": layers,
                "meta": dict(meta or {}), "weights_sha256": hashlib.sha256(weights).hexdigest()}
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in (("manifest.json",
                            (json.dumps(manifest, sort_keys=True, indent=1) + "\n").encode()),
                           ("weights.npz", weights)):
            info = zipfile.ZipInfo(name, date_time=_ZIP_DATE)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zf.writestr(info, data)
    path = Path(path)
    if path.parent and not path.parent.exists():
        raise ModelFileError(f"cannot write {path}: folder {path.parent} does not exist")
    atomic_write_bytes(path, buf.getvalue())


def _read(path: str | os.PathLike) -> tuple[dict, bytes]:
    path = Path(path)
    if not path.exists():
        raise ModelFileError(f"model file {path} not found; train one with 'bnnforge train'")
    if not path.is_file():
        raise ModelFileError(f"model file {path} is not a file")
    try:
        with zipfile.ZipFile(path) as zf:
            manifest = json.loads(zf.read("manifest.json"))
            if not isinstance(manifest, dict) or manifest.get("format") != _FORMAT:
                raise ModelFileError(f"{path} is not a bnnforge model file")
            weights = zf.read("weights.npz")
    except (zipfile.BadZipFile, KeyError, EOFError, ValueError, zipfile.LargeZipFile,
            OSError) as exc:
        if isinstance(exc, ModelFileError):
            raise
        raise ModelFileError(f"model file {path} is corrupt or truncated ({exc}); retrain or "
                             "re-save it") from None
    if manifest.get("version") != _VERSION:
        raise ModelFileError(f"model file {path} has format version {manifest.get('version')!r}; "
                             f"this bnnforge reads version {_VERSION}")
    if hashlib.sha256(weights).hexdigest() != manifest.get("weights_sha256"):
        raise ModelFileError(f"model file {path} is corrupt (weights checksum mismatch); "
                             "retrain or re-save it")
    return manifest, weights


def read_info(path: str | os.PathLike) -> dict:
    """Return a model file's manifest (input shape, layers, metadata) without building it."""
    return _read(path)[0]


def load(path: str | os.PathLike) -> nn.Sequential:
    """Load a model saved by :func:`save`, in eval mode.

    The returned module has ``input_shape`` (one frame, no batch) and ``bnnforge_meta`` set.

    Raises
    ------
    ModelFileError
        When the file is missing, corrupt, truncated or of another format.
    """
    manifest, weights = _read(path)
    arrays = read_npz(weights, f"model file {path}")
    modules = []
    try:
        for i, spec in enumerate(manifest["layers"]):
            cls = _CONSTRUCTORS[spec["type"]]
            module = cls(**spec["config"])
            prefix = f"{i}."
            state = {k[len(prefix):]: torch.from_numpy(np.array(v)) for k, v in arrays.items()
                     if k.startswith(prefix)}
            if state or list(module.state_dict()):
                module.load_state_dict(state, strict=True)
            modules.append(module)
        input_shape = tuple(int(d) for d in manifest["input_shape"])
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelFileError(f"model file {path} does not describe a valid model ({first}); "
                             "retrain or re-save it") from None
    model = nn.Sequential(*modules)
    model.eval()
    model.input_shape = input_shape
    model.bnnforge_meta = dict(manifest.get("meta") or {})
    return model
