"""Shared helpers of the QONNX import tests: Brevitas export, qonnx's executor, edited graphs."""

from __future__ import annotations

import warnings

import numpy as np
import onnx
import pytest
import torch

from bnnforge.onnx_import import import_onnx_file

#: the two exporters of brevitas.export.export_qonnx: the dynamo one (default) and TorchScript
STYLES = {"dynamo": True, "torchscript": False}


def export(model, path, style: str, shape: tuple) -> str:
    """Export ``model`` as QONNX with one exporter; return the path as a string."""
    from brevitas.export import export_qonnx

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        export_qonnx(model, torch.rand(*shape), export_path=str(path), dynamo=STYLES[style])
    return str(path)


def frames(n: int, shape: tuple, seed: int = 1) -> np.ndarray:
    """``n`` seeded random uint8 frames of ``shape`` (one frame, no batch)."""
    return np.random.default_rng(seed).integers(0, 256, (n, *shape), dtype=np.uint8)


def qonnx_scores(path, x_uint8: np.ndarray) -> np.ndarray:
    """qonnx's executor on a batch of uint8 frames (x = frame / 255, float32)."""
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.core.onnx_exec import execute_onnx
    from qonnx.util.cleanup import cleanup_model

    wrapper = cleanup_model(ModelWrapper(str(path)), override_inpsize=len(x_uint8))
    x = x_uint8.astype(np.float32) / np.float32(255)
    return execute_onnx(wrapper, {wrapper.graph.input[0].name: x})[wrapper.graph.output[0].name]


def edited(src: str, tmp_path, edit) -> str:
    """A copy of the ONNX file ``src`` whose graph ``edit`` changed."""
    proto = onnx.load(src)
    edit(proto.graph)
    path = tmp_path / "edited.onnx"
    onnx.save(proto, path)
    return str(path)


def refuses(path, match: str, tmp_path) -> None:
    """Importing ``path`` raises a ValueError matching ``match`` and writes no model file."""
    out = tmp_path / "never.bnn"
    with pytest.raises(ValueError, match=match):
        import_onnx_file(path, out)
    assert not out.exists()
