"""Convolutions that pad exactly with any constant: per-position-class thresholds (§2)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import bnnforge
from bnnforge.compiler import UnsupportedModelError
from bnnforge.compiler.costs import mst_eligible
from bnnforge.compiler.folding import ChooseFolding
from bnnforge.compiler.ir import BinaryConv
from bnnforge.compiler.serialize import graph_bytes, load_graph, save_graph
from bnnforge.nn import BinaryActivation, BinaryConv2d, BinaryLinear, InputQuant, predict_scores
from conftest import random_frames, randomize_model, small_cnn

CNV_LEVELS = [int(v) for v in np.clip(np.round((2 * np.arange(256) / 255 - 1) * 128), -127, 127)]


def padded_cnn(quant=None, pad0=0.0, pad1=0.0, k=3, p=1, s=1):
    """1x8x8 -> conv(k, p, s) -> conv 3x3 stride 2 padding 1 -> scores."""
    side = (8 + 2 * p - k) // s + 1
    out = (side + 2 - 3) // 2 + 1
    return nn.Sequential(
        quant or InputQuant(1),
        BinaryConv2d(1, 8, k, stride=s, padding=p, pad_value=pad0), nn.BatchNorm2d(8),
        BinaryActivation(),
        BinaryConv2d(8, 6, 3, stride=2, padding=1, pad_value=pad1), nn.BatchNorm2d(6),
        BinaryActivation(), nn.Flatten(), BinaryLinear(6 * out * out, 10))


CASES = {
    "binary-pad0": dict(),
    "binary-stride2": dict(s=2),
    "binary-5x5-pad2": dict(k=5, p=2),
    "8bit-default-pad": dict(quant=InputQuant(8), pad0=-1.0),
    "levels-pad0-hw-byte-out-of-range": dict(quant=InputQuant(8, levels=CNV_LEVELS), pad0=-200.0),
    "levels-pad0": dict(quant=InputQuant(8, levels=CNV_LEVELS), pad0=0.0),
    "binary-pad-fraction": dict(pad1=0.3),
}


def model(case, seed):
    torch.manual_seed(seed)
    return randomize_model(padded_cnn(**CASES[case]), seed)


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("seed", [0, 1])
def test_torch_equals_reference(case, seed):
    m = model(case, seed)
    graph = bnnforge.lower(m, (1, 8, 8))
    frames = random_frames((1, 8, 8), 600, seed=seed)
    np.testing.assert_array_equal(bnnforge.reference(graph, frames), predict_scores(m, frames))
    # before and after FoldThresholds: every stage identical
    before = bnnforge.reference(bnnforge.lower(m, (1, 8, 8), fold=False), frames,
                                return_all=True)
    after = bnnforge.reference(graph, frames, return_all=True)
    for name in ("conv0", "conv1", "scores"):
        np.testing.assert_array_equal(before[name] if name != "scores" else
                                      before[name].argmax(1),
                                      after[name] if name != "scores" else after[name].argmax(1))
    assert graph.op("conv1").classes == 4          # 4x4 map, stride 2: rows/cols {top, rest}


def test_class_maps_and_shapes():
    graph = bnnforge.lower(model("binary-pad0", 0), (1, 8, 8))
    op = graph.op("conv0")
    assert op.classes == 9 and op.thresholds.shape == (9, 8) and op.pad_value == 0
    assert op.row_class.tolist() == [0, 1, 1, 1, 1, 1, 1, 2]
    assert op.class_map()[0, 0] == 0 and op.class_map()[3, 3] == 4
    k5 = bnnforge.lower(model("binary-5x5-pad2", 0), (1, 8, 8)).op("conv0")
    assert k5.classes == 25 and k5.row_class.tolist() == [0, 1, 2, 2, 2, 2, 3, 4]
    # the corrected thresholds matter: padding with the hardware element alone disagrees
    wrong = graph.copy()
    wrong.replace_op("conv0", BinaryConv(**{**_fields(op), "row_class": None,
                                            "col_class": None,
                                            "thresholds": op.thresholds[4]}))
    frames = random_frames((1, 8, 8), 300, seed=1)
    a = bnnforge.reference(graph, frames, return_all=True)["conv0"]
    b = bnnforge.reference(wrong, frames, return_all=True)["conv0"]
    assert (a != b).any() and (a[:, 1:-1, 1:-1] == b[:, 1:-1, 1:-1]).all()


def _fields(op):
    return {f: getattr(op, f) for f in op.__dataclass_fields__}


def test_representable_pad_keeps_one_class_and_todays_files(tmp_path):
    for bits in (1, 8):
        graph = bnnforge.lower(randomize_model(small_cnn(bits), 3), (1, 8, 8))
        assert all(graph.op(n).classes == 1 and graph.op(n).thresholds.ndim == 1
                   for n in ("conv0", "conv1"))
        assert "row_class" not in graph_bytes(graph)[0].decode()
    levels = bnnforge.lower(model("levels-pad0", 0), (1, 8, 8))
    assert levels.op("conv0").classes == 1 and levels.op("conv0").pad_value == 127


def test_files_round_trip_byte_identically(tmp_path):
    graph = ChooseFolding().apply(bnnforge.lower(model("binary-5x5-pad2", 2), (1, 8, 8)))
    save_graph(graph, tmp_path / "a")
    again = load_graph(tmp_path / "a")
    assert again.same_as(graph)
    save_graph(again, tmp_path / "b")
    for f in ("graph.json", "weights.npz"):
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes()
    unfolded = bnnforge.lower(model("binary-pad0", 2), (1, 8, 8), fold=False)
    assert unfolded.op("conv0").affine.shape == (9, 2, 8)
    assert graph_bytes(unfolded) == graph_bytes(_reload(unfolded, tmp_path / "c"))


def _reload(graph, folder):
    save_graph(graph, folder)
    return load_graph(folder)


def test_multi_class_conv_is_not_mst_eligible():
    graph = bnnforge.lower(model("binary-pad0", 0), (1, 8, 8))
    assert not mst_eligible(graph.op("conv0")) and mst_eligible(graph.op("fc0")
                                                               if "fc0" in graph.nx else
                                                               bnnforge.lower(
                                                                   randomize_model(
                                                                       small_cnn(1), 0),
                                                                   (1, 8, 8)).op("conv1"))
    folded = ChooseFolding(mst=True).apply(graph)
    assert not folded.attrs("conv0")["fold"].get("mst")


def test_errors():
    graph = bnnforge.lower(model("binary-pad0", 0), (1, 8, 8))
    op = graph.op("conv0")
    with pytest.raises(ValueError, match=r"thresholds must have shape \(9, 8\) for 9 pad "
                                         r"class\(es\), not \(8,\)"):
        BinaryConv(**{**_fields(op), "thresholds": op.thresholds[0]})
    with pytest.raises(ValueError, match="needs both row_class and col_class, or neither"):
        BinaryConv(**{**_fields(op), "col_class": None})
    with pytest.raises(ValueError, match=r"row_class must be 8 non-negative integers"):
        BinaryConv(**{**_fields(op), "row_class": np.zeros(3, np.int64)})
    unfolded = bnnforge.lower(model("binary-pad0", 0), (1, 8, 8), fold=False).op("conv0")
    bad = unfolded.affine.copy()
    bad[1, 0, 0] += 1
    with pytest.raises(ValueError, match="the pad classes must share one scale"):
        BinaryConv(**{**_fields(unfolded), "affine": bad})
    m = nn.Sequential(InputQuant(1), BinaryConv2d(1, 2, 3, padding=1, pad_value=float("inf")),
                      nn.BatchNorm2d(2), BinaryActivation(), nn.Flatten(), BinaryLinear(128, 2))
    with pytest.raises(UnsupportedModelError,
                       match=r"BinaryConv2d '1' pads with inf; the pad value must be finite"):
        bnnforge.lower(m, (1, 8, 8))
