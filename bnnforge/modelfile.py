"""Model files: architecture + weights of a bnnforge BNN, with no pickled code.

A model file is a zip holding ``manifest.json`` (format, input shape, the layers with their
constructor arguments, free-form metadata) and ``weights.npz`` (every layer's state,
``allow_pickle=False``). Any model that :func:`bnnforge.lower` accepts can be saved: it is traced
to its layers, and :func:`load` rebuilds a module computing the same function.

A chain of layers is written as version 1 (``layers``: the chain, rebuilt as an
``nn.Sequential``). A model that branches (residual sums, concatenations, a layer called at
several places) is written as version 2: ``layers`` lists each module once with its qualified
``name``, ``nodes`` the traced data flow (``{"node", "op": "module" | "add" | "concat",
"layer", "inputs"}`` in topological order, inputs by node name), ``input`` the frame's name
and ``output`` the node that gives the scores; :func:`load` rebuilds it as a
``torch.fx.GraphModule``.
"""

from __future__ import annotations

import hashlib
import io
import json
import operator
import os
import zipfile
from pathlib import Path

import numpy as np
import torch
import torch.fx
from torch import nn

from .compiler.serialize import atomic_write_bytes, read_npz, write_npz
from .nn import layers as bl
from .nn.chain import trace_graph

__all__ = ["save", "load", "read_info", "ModelFileError"]

_FORMAT = "bnnforge-model"
_VERSION = 1            # chains
_GRAPH_VERSION = 2      # graphs that branch
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


def _is_chain(steps) -> bool:
    return all(s.kind not in ("add", "concat") and len(s.inputs) == 1 and
               (i == 0 or s.inputs[0] == steps[i - 1].node) for i, s in enumerate(steps))


def _state(module: nn.Module, prefix: str, arrays: dict) -> None:
    for key, tensor in module.state_dict().items():
        arrays[f"{prefix}.{key}"] = tensor.detach().cpu().numpy()


def _graph_manifest(steps, arrays: dict) -> dict:
    """The version 2 ``layers`` (each module once) and ``nodes`` of a branching model."""
    layers, nodes, index = [], [], {}
    names = {s.name for s in steps if s.module is not None}
    for step in steps:
        node = {"node": step.node, "inputs": list(step.inputs)}
        if step.kind in ("add", "concat"):
            node["op"] = step.kind
        else:
            key = step.name if step.module is not None else None
            if key is None:                 # a flatten call: give it a module of its own
                key = step.node
                while key in names:
                    key += "_"
                names.add(key)
            if key not in index:
                index[key] = len(layers)
                layers.append({"name": key, **_layer_spec(step)})
                if step.module is not None and step.kind != "flatten":
                    _state(step.module, str(index[key]), arrays)
            node.update(op="module", layer=index[key])
        nodes.append(node)
    return {"layers": layers, "nodes": nodes, "input": steps[0].inputs[0],
            "output": steps[-1].node}


def save(model: nn.Module, path: str | os.PathLike, input_shape: tuple,
         meta: dict | None = None) -> None:
    """Save ``model`` (architecture and weights) for frames of ``input_shape`` to ``path``.

    The file is written atomically and is byte-identical for the same model and metadata.

    Raises
    ------
    UnsupportedModelError
        When the model uses a layer or an operation outside the supported set.
    """
    steps = trace_graph(model, input_shape)
    arrays: dict = {}
    if _is_chain(steps):
        layers = []
        for i, step in enumerate(steps):
            layers.append(_layer_spec(step))
            if step.module is not None and step.kind != "flatten":
                _state(step.module, str(i), arrays)
        body, version = {"layers": layers}, _VERSION
    else:
        body, version = _graph_manifest(steps, arrays), _GRAPH_VERSION
    weights = write_npz(arrays)
    manifest = {"format": _FORMAT, "version": version,
                "input_shape": [int(d) for d in input_shape], **body,
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
    if manifest.get("version") not in (_VERSION, _GRAPH_VERSION):
        raise ModelFileError(f"model file {path} has format version {manifest.get('version')!r}; "
                             f"this bnnforge reads versions {_VERSION} and {_GRAPH_VERSION}")
    if hashlib.sha256(weights).hexdigest() != manifest.get("weights_sha256"):
        raise ModelFileError(f"model file {path} is corrupt (weights checksum mismatch); "
                             "retrain or re-save it")
    return manifest, weights


def read_info(path: str | os.PathLike) -> dict:
    """Return a model file's manifest (input shape, layers, metadata) without building it."""
    return _read(path)[0]


def _graph_module(manifest: dict, modules: list[nn.Module]) -> torch.fx.GraphModule:
    """Rebuild a version 2 file's data flow over its modules."""
    graph = torch.fx.Graph()
    frame = manifest["input"]
    if not isinstance(frame, str):
        raise ValueError(f"input {frame!r} is not a node name")
    env = {frame: graph.placeholder("x")}
    root: dict = {}
    for node in manifest["nodes"]:
        args = [env[i] for i in node["inputs"]]
        op = node["op"]
        if op == "module":
            layer = node["layer"]
            if isinstance(layer, bool) or not isinstance(layer, int) \
                    or not 0 <= layer < len(modules):
                raise ValueError(f"node {node['node']!r} names layer {layer!r}, not one of the "
                                 f"{len(modules)} layers")
            spec = manifest["layers"][layer]
            if not isinstance(spec["name"], str) or len(args) != 1:
                raise ValueError(f"node {node['node']!r} is not a one-input layer")
            root[spec["name"]] = modules[layer]
            value = graph.call_module(spec["name"], tuple(args))
        elif op == "add" and len(args) == 2:
            value = graph.call_function(operator.add, tuple(args))
        elif op == "concat" and len(args) >= 2:
            value = graph.call_function(torch.cat, (list(args),), {"dim": 1})
        else:
            raise ValueError(f"node {node.get('node')!r} has op {op!r} with {len(args)} inputs")
        env[node["node"]] = value
    graph.output(env[manifest["output"]])
    return torch.fx.GraphModule(root, graph, class_name="BnnforgeGraph")


def load(path: str | os.PathLike) -> nn.Module:
    """Load a model saved by :func:`save`, in eval mode.

    A chain comes back as an ``nn.Sequential``, a model that branches as a
    ``torch.fx.GraphModule``. The returned module has ``input_shape`` (one frame, no batch) and
    ``bnnforge_meta`` set.

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
        if manifest["version"] == _GRAPH_VERSION:
            model = _graph_module(manifest, modules)
            model.eval()
            with torch.no_grad():           # a damaged data flow fails here, not later
                model(torch.zeros(1, *input_shape))
        else:
            model = nn.Sequential(*modules)
    except (KeyError, TypeError, ValueError, RuntimeError, IndexError, AttributeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelFileError(f"model file {path} does not describe a valid model ({first}); "
                             "retrain or re-save it") from None
    model.eval()
    model.input_shape = input_shape
    model.bnnforge_meta = dict(manifest.get("meta") or {})
    return model
