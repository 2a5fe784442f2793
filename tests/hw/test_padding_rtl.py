"""Zero-padded convolutions in hardware: class thresholds in the MVTU, values and cycles."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import bnnforge
from bnnforge.compiler.serialize import save_graph
from bnnforge.hw import Accelerator, emit_verilog
from bnnforge.hw.matrix import MVTU
from bnnforge.nn import BinaryActivation, BinaryConv2d, BinaryLinear, InputQuant
from bnnforge.verify import verify_build
from conftest import randomize_model

pytestmark = pytest.mark.filterwarnings("ignore::amaranth.hdl.UnusedElaboratable")

FOLDS = {
    "narrow": {"conv0": (2, 3), "conv1": (2, 8), "scores": (2, 4)},
    "wide": {"conv0": (8, 9), "conv1": (6, 72), "scores": (10, 24)},
}


def _helper(path, name):
    """A helper of a sibling test module (tests/ is not a package)."""
    spec = importlib.util.spec_from_file_location(f"_padding_{name}", Path(__file__).parents[1]
                                                  / path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return getattr(module, name)


def zero_padded(bits=1, seed=0):
    torch.manual_seed(seed)
    quant = InputQuant(bits)
    return randomize_model(nn.Sequential(
        quant, BinaryConv2d(1, 8, 3, padding=1, pad_value=0.0 if bits == 1 else -1.0),
        nn.BatchNorm2d(8), BinaryActivation(),
        BinaryConv2d(8, 6, 3, stride=2, padding=1, pad_value=0.0), nn.BatchNorm2d(6),
        BinaryActivation(), nn.Flatten(), BinaryLinear(96, 10)), seed)


def folded(bits, fold, seed=0):
    graph = bnnforge.lower(zero_padded(bits, seed), (1, 8, 8))
    for name, (pe, simd) in FOLDS[fold].items():
        graph.attrs(name)["fold"] = {"pe": pe, "simd": simd}
    assert graph.op("conv0").classes == 9 and graph.op("conv1").classes == 4
    return graph


@pytest.mark.parametrize("bits,fold", [(1, "narrow"), (1, "wide"), (8, "narrow")])
def test_accelerator_matches_reference(bits, fold):
    check = _helper("hw/test_generate.py", "check")
    graph = folded(bits, fold, seed=bits)
    kinds = {(n, k): c for n, k, c in Accelerator(graph).stages}
    assert kinds[("conv0", "mvtu")].row_class == [0, 1, 1, 1, 1, 1, 1, 2]
    check(graph, 3, seed=bits, idle=0.2, stall=0.3)


@pytest.mark.parametrize("bits,fold", [(1, "narrow"), (8, "wide")])
def test_timing_model_is_cycle_exact(bits, fold):
    check_exact = _helper("sim/test_timing.py", "check_exact")
    graph = folded(bits, fold, seed=5 + bits)
    check_exact(graph, 2, seed=bits)
    check_exact(graph, 3, seed=bits + 3, idle=0.25, stall=0.4, probe=True)


def test_mvtu_errors():
    w = np.zeros((4, 9), bool)
    with pytest.raises(ValueError, match="row_class and col_class go together"):
        MVTU(9, 4, 1, 9, w, [[0] * 4] * 4, row_class=[0, 1])
    with pytest.raises(ValueError, match=r"thresholds must hold 4 rows \(one per pad class\), "
                                         r"not 2"):
        MVTU(9, 4, 1, 9, w, [[0] * 4] * 2, row_class=[0, 1], col_class=[0, 1])


def test_mst_fold_on_a_multi_class_conv_is_refused():
    graph = folded(1, "narrow")
    graph.attrs("conv1")["fold"] = {"pe": 6, "simd": 72, "mst": True}
    with pytest.raises(ValueError, match=r"stage 'conv1': an MST layer has one threshold per "
                                         r"channel, but this convolution has 4 pad classes"):
        Accelerator(graph)


@pytest.mark.rtl
@pytest.mark.parametrize("bits, simulator", [(1, "icarus"), (8, "verilator")])
def test_verify_with_gaps_and_stalls(tmp_path, bits, simulator):
    """Zero padding (binary) and an 8-bit first layer padding with -1: values and cycles exact.

    The 4-state simulator matters: an ``Array`` class lookup once left X in Icarus at time 0.
    """
    graph = folded(bits, "narrow", seed=7)
    save_graph(graph, tmp_path)
    emit_verilog(graph, tmp_path)
    section = verify_build(tmp_path, simulator=simulator, frames=6, input_gap=0.3,
                           output_stall=0.4, seed=3, progress=False)
    assert section["value_mismatches"] == 0 and section["cycle_mismatches"] == 0
    assert section["frames"] == 6 and section["handshakes_checked"] > 0
