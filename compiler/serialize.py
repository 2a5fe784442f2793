"""Lossless, deterministic serialization of a DataflowGraph: ``graph.json`` + ``weights.npz``.

The same graph always gives byte-identical files: JSON keys are sorted, arrays go into an npz
whose zip entries carry a fixed timestamp, and nothing time- or host-dependent is written.
Nodes are listed in topological order; a graph that branches lists each node's ``inputs``
(producers in port order), a chain does not (each node reads the one before it).
"""

from __future__ import annotations

import io
import json
import os
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from .ir import OP_TYPES, DataflowGraph

__all__ = ["save_graph", "load_graph", "write_npz", "read_npz", "atomic_write_bytes",
           "GraphFileError", "FORMAT_VERSION"]

FORMAT_VERSION = 1
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)


class GraphFileError(ValueError):
    """A build folder's graph files are missing or damaged."""


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and an atomic rename."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)                # mkstemp makes 0600; artifacts are for others too
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_npz(arrays: dict[str, np.ndarray]) -> bytes:
    """Return the bytes of an npz holding ``arrays``, identical for identical arrays."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for key in sorted(arrays):
            info = zipfile.ZipInfo(f"{key}.npy", date_time=_ZIP_DATE)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            arr = io.BytesIO()
            np.lib.format.write_array(arr, np.ascontiguousarray(arrays[key]),
                                      allow_pickle=False)
            zf.writestr(info, arr.getvalue())
    return buf.getvalue()


def read_npz(data: bytes | Path, what: str) -> dict[str, np.ndarray]:
    """Read an npz (bytes or a path) into a dict, raising GraphFileError if it is damaged."""
    try:
        source = io.BytesIO(data) if isinstance(data, bytes) else data
        with np.load(source, allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise GraphFileError(f"{what} is corrupt or truncated ({exc}); recreate it") from None


def _to_json(graph: DataflowGraph) -> tuple[dict, dict[str, np.ndarray]]:
    nodes, arrays = [], {}
    chain = graph.is_chain()       # a chain's nodes list no inputs: the files stay as they were
    for name in graph.order():
        attrs = graph.attrs(name)
        op = attrs["op"]
        refs = {}
        for field_name, value in op.arrays().items():
            key = f"{name}.{field_name}"
            arrays[key] = value
            refs[field_name] = key
        extra = {k: v for k, v in attrs.items() if k != "op"}
        node = {"name": name, "op": type(op).__name__, "params": op.params(),
                "arrays": refs, "attrs": extra}
        if not chain:
            node["inputs"] = graph.inputs(name)
        nodes.append(node)
    doc = {"format": "bnnforge-graph", "version": FORMAT_VERSION, "name": graph.name,
           "meta": graph.meta, "nodes": nodes}
    return doc, arrays


def graph_bytes(graph: DataflowGraph) -> tuple[bytes, bytes]:
    """Return the bytes of ``graph.json`` and ``weights.npz`` for ``graph``."""
    doc, arrays = _to_json(graph)
    text = json.dumps(doc, sort_keys=True, indent=1) + "\n"
    return text.encode(), write_npz(arrays)


def save_graph(graph: DataflowGraph, folder: str | os.PathLike) -> None:
    """Write ``folder/graph.json`` and ``folder/weights.npz`` (each atomically)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    gj, wz = graph_bytes(graph)
    atomic_write_bytes(folder / "weights.npz", wz)
    atomic_write_bytes(folder / "graph.json", gj)


def _tupled(value):
    return tuple(_tupled(v) for v in value) if isinstance(value, list) else value


def load_graph(folder: str | os.PathLike) -> DataflowGraph:
    """Read a graph written by :func:`save_graph`.

    Raises
    ------
    GraphFileError
        When a file is missing, corrupt, or from another format version.
    """
    folder = Path(folder)
    gpath, wpath = folder / "graph.json", folder / "weights.npz"
    for p in (gpath, wpath):
        if not p.is_file():
            raise GraphFileError(f"{p} is missing; run 'bnnforge compile MODEL -o {folder}' "
                                 "first")
    try:
        doc = json.loads(gpath.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise GraphFileError(f"{gpath} is corrupt ({exc}); recompile the model") from None
    if not isinstance(doc, dict) or doc.get("format") != "bnnforge-graph":
        raise GraphFileError(f"{gpath} is not a bnnforge graph file; recompile the model")
    if doc.get("version") != FORMAT_VERSION:
        raise GraphFileError(f"{gpath} has format version {doc.get('version')!r}, this bnnforge "
                             f"reads version {FORMAT_VERSION}; recompile the model")
    arrays = read_npz(wpath, str(wpath))
    graph = DataflowGraph(doc["name"], doc.get("meta"))
    try:
        for node in doc["nodes"]:
            cls = OP_TYPES[node["op"]]
            kwargs = {k: _tupled(v) for k, v in node["params"].items()}
            for field_name, key in node["arrays"].items():
                kwargs[field_name] = arrays[key]
            inputs = node.get("inputs")       # absent: a chain (every version 1 file before)
            if inputs is not None and not (isinstance(inputs, list)
                                           and all(isinstance(n, str) for n in inputs)):
                raise ValueError(f"node {node['name']!r} has inputs {inputs!r}")
            graph.add(node["name"], cls(**kwargs), inputs, **node["attrs"])
    except (KeyError, TypeError, ValueError) as exc:
        raise GraphFileError(f"{gpath} does not match {wpath} ({type(exc).__name__}: {exc}); "
                             "recompile the model") from None
    return graph
