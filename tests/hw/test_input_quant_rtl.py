"""Input quantizers in hardware: InputTable, and generated accelerators with a byte threshold
other than 128 or a level table, against the reference executor (Amaranth, Icarus)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_generate import check, set_folds

import bnnforge
from bnnforge.compiler.serialize import save_graph
from bnnforge.hw import Accelerator, InputTable, emit_verilog
from bnnforge.hw.testing import simulate_stream
from bnnforge.nn import InputQuant
from bnnforge.verify import verify_build
from conftest import randomize_model, small_cnn, small_mlp

CNV = [int(v) for v in np.clip(np.round((2 * np.arange(256) / 255 - 1) * 128), -127, 127)]
pytestmark = pytest.mark.filterwarnings("ignore::amaranth.hdl.UnusedElaboratable")
SHUFFLED = [int(v) for v in np.random.default_rng(1).integers(-60, 196, 256)]
MLP_FOLDS = {"fc0": {"pe": 4, "simd": 16}, "fc1": {"pe": 4, "simd": 8},
             "scores": {"pe": 2, "simd": 4}}
CNN_FOLDS = {"conv0": {"pe": 2, "simd": 9}, "conv1": {"pe": 3, "simd": 12},
             "fc0": {"pe": 4, "simd": 24}, "scores": {"pe": 5, "simd": 4}}


def lowered(builder, quant, folds, seed=3):
    model = builder(quant.bits)
    model[0] = quant
    return set_folds(bnnforge.lower(randomize_model(model, seed), (1, 8, 8)), folds)


def test_input_table_maps_every_byte_lane():
    table = np.random.default_rng(0).integers(0, 256, 256)
    dut = InputTable(3, table, pixels=2)
    assert dut.latency == 0 and dut.o_stream.payload.shape().width == 48
    rng = np.random.default_rng(1)
    data = rng.integers(0, 256, (40, 6))
    payloads = [sum(int(v) << (8 * i) for i, v in enumerate(row)) for row in data]
    out, ic, oc = simulate_stream(dut, payloads, len(payloads), idle=0.3, stall=0.4)
    expected = [sum(int(table[v]) << (8 * i) for i, v in enumerate(row)) for row in data]
    assert out == expected
    assert list(ic) == list(oc)            # a wire: each transfer passes in its own cycle


@pytest.mark.parametrize("table", [list(range(255)), [0] * 255 + [256], [True] * 256, 7])
def test_input_table_errors(table):
    with pytest.raises(ValueError, match="table must be 256 integers 0..255"):
        InputTable(1, table)


@pytest.mark.parametrize("quant,kind", [(InputQuant(1, threshold=1), "threshold"),
                                        (InputQuant(1, threshold=200), "threshold"),
                                        (InputQuant(8, levels=CNV), "table"),
                                        (InputQuant(8, levels=SHUFFLED), "table")])
def test_mlp_matches_reference(quant, kind):
    graph = lowered(small_mlp, quant, MLP_FOLDS)
    assert [k for _, k, _ in Accelerator(graph).stages][:2] == ["fifo", kind]
    check(graph, 4, seed=5, idle=0.2, stall=0.3)


@pytest.mark.parametrize("quant", [InputQuant(1, threshold=77), InputQuant(8, levels=CNV),
                                   InputQuant(8, levels=SHUFFLED)])
def test_convnet_matches_reference(quant):
    graph = lowered(small_cnn, quant, CNN_FOLDS)
    graph.attrs("input")["pixels_per_transfer"] = 2
    check(graph, 2, seed=6, idle=0.2, stall=0.3)


@pytest.mark.rtl
def test_verify_build_with_levels(tmp_path):
    torch.manual_seed(0)
    graph = lowered(small_cnn, InputQuant(8, levels=CNV), CNN_FOLDS, seed=4)
    save_graph(graph, tmp_path)
    emit_verilog(graph, tmp_path)
    section = verify_build(tmp_path, frames=6, input_gap=0.2, output_stall=0.3, progress=False)
    assert section["frames"] == 6
    assert section["value_mismatches"] == 0 and section["cycle_mismatches"] == 0
