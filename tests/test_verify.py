"""verify_build: a compiled build folder's RTL against the reference, and the report section."""

import dataclasses
import shutil

import numpy as np
import pytest
import torch
from torch import nn

import bnnforge
from bnnforge.buildfolder import read_report
from bnnforge.compiler import load_graph, save_graph
from bnnforge.hw.generate import emit_verilog
from bnnforge.nn import BinaryActivation, BinaryLinear, InputQuant
from bnnforge.nn.datasets import load_dataset
from bnnforge.verify import verify_build

pytestmark = [pytest.mark.rtl,
              pytest.mark.filterwarnings("ignore::amaranth.hdl.UnusedElaboratable")]


def digits_mlp():
    """A tiny untrained MLP for the 8x8 digits: 64 -> 16 -> 10, random BatchNorm statistics."""
    torch.manual_seed(0)
    model = nn.Sequential(InputQuant(1), nn.Flatten(), BinaryLinear(64, 16), nn.BatchNorm1d(16),
                          BinaryActivation(), BinaryLinear(16, 10))
    gen = torch.Generator().manual_seed(0)
    bn = model[3]
    bn.running_mean.copy_(torch.rand(16, generator=gen) * 6 - 3)
    bn.running_var.copy_(torch.rand(16, generator=gen) * 4 + 0.5)
    bn.weight.data.copy_(torch.rand(16, generator=gen) * 2 - 1)
    bn.bias.data.copy_(torch.rand(16, generator=gen) * 2 - 1)
    graph = bnnforge.lower(model, (1, 8, 8), meta={"name": "mlp", "dataset": "digits"})
    graph.attrs("fc0")["fold"] = {"pe": 4, "simd": 16}
    graph.attrs("scores")["fold"] = {"pe": 5, "simd": 8}
    return graph


@pytest.fixture(scope="module")
def build(tmp_path_factory):
    folder = tmp_path_factory.mktemp("build")
    graph = digits_mlp()
    save_graph(graph, folder)
    emit_verilog(graph, folder)
    return folder


def test_verify_on_dataset_frames_writes_the_report(build):
    section = verify_build(build, frames=12, progress=False)
    assert section["value_mismatches"] == 0
    assert section["simulator"] == "icarus" and section["frames"] == 12
    assert section["source"] == "dataset:digits"
    assert section["input_gap"] == 0.0 and section["output_stall"] == 0.0
    assert section["wall_s"] > 0
    assert read_report(build)["verify"] == section


def test_verify_on_verilator_with_gaps_and_inputs_file(build, tmp_path):
    x = load_dataset("digits").x_test[20:27]
    path = tmp_path / "frames.npy"
    np.save(path, x)
    section = verify_build(build, simulator="verilator", inputs=path, input_gap=0.3,
                           output_stall=0.4, seed=2, progress=True)
    assert section["value_mismatches"] == 0
    assert section["frames"] == 7 and section["source"] == f"file:{path}"
    assert (section["input_gap"], section["output_stall"]) == (0.3, 0.4)
    assert read_report(build)["verify"]["simulator"] == "verilator"


def test_random_frames_without_a_dataset(build, tmp_path):
    folder = tmp_path / "nodata"
    shutil.copytree(build / "rtl", folder / "rtl")
    graph = load_graph(build)
    graph.meta.pop("dataset")
    save_graph(graph, folder)
    section = verify_build(folder, frames=5, seed=4, progress=False)
    assert section["source"] == "random:seed=4" and section["value_mismatches"] == 0


def test_a_corrupted_design_reports_mismatches(build, tmp_path):
    folder = tmp_path / "corrupt"
    shutil.copytree(build / "rtl", folder / "rtl")
    graph = load_graph(build)
    # Edit one threshold after emission so the graph no longer describes the RTL: channel 0 of
    # fc0 fires for every frame (accumulators are >= 0) where the RTL's does not.
    frames = load_dataset("digits").x_test[:12]
    bits = bnnforge.reference(graph, frames, return_all=True)["fc0"].reshape(len(frames), -1)
    assert not bits[:, 0].all()
    op = graph.op("fc0")
    thresholds = np.array(op.thresholds, copy=True)
    thresholds[0] = 0
    graph.replace_op("fc0", dataclasses.replace(op, thresholds=thresholds))
    save_graph(graph, folder)
    section = verify_build(folder, frames=12, progress=False)
    assert section["value_mismatches"] == int(np.count_nonzero(~bits[:, 0]))
    assert read_report(folder)["verify"]["value_mismatches"] > 0


def test_errors(build, tmp_path):
    with pytest.raises(ValueError, match=r"unknown simulator 'vcs'; choose icarus or verilator"):
        verify_build(build, simulator="vcs", progress=False)
    with pytest.raises(ValueError, match=r"frames must be a positive number of frames, not 0"):
        verify_build(build, frames=0, progress=False)
    with pytest.raises(ValueError, match=r"inputs file .*missing.npy not found"):
        verify_build(build, inputs=tmp_path / "missing.npy", progress=False)
    np.save(tmp_path / "f.npy", np.zeros((2, 1, 8, 8), dtype=np.float32))
    with pytest.raises(ValueError, match=r"holds float32 values; frames must be uint8"):
        verify_build(build, inputs=tmp_path / "f.npy", progress=False)
    np.save(tmp_path / "s.npy", np.zeros((2, 8, 8), dtype=np.uint8))
    with pytest.raises(ValueError, match=r"holds shape \(2, 8, 8\), but the model takes frames "
                                         r"\(N, 1, 8, 8\)"):
        verify_build(build, inputs=tmp_path / "s.npy", progress=False)
    norlt = tmp_path / "nortl"
    save_graph(load_graph(build), norlt)
    with pytest.raises(ValueError, match=r"bnnforge_top.v is missing; run 'bnnforge compile"):
        verify_build(norlt, progress=False)
    with pytest.raises(ValueError, match=r"is not a bnnforge build folder"):
        verify_build(tmp_path / "nothing", progress=False)


@pytest.mark.parametrize("sim", ["icarus", "verilator"])
def test_verify_compares_every_handshake_cycle(build, sim):
    section = verify_build(build, simulator=sim, frames=30, input_gap=0.3, output_stall=0.4,
                           seed=5, progress=False)
    assert section["value_mismatches"] == 0 and section["cycle_mismatches"] == 0
    assert section["handshakes_checked"] == 30 + 30 * 64


def test_verify_with_four_pixels_per_transfer_on_verilator(tmp_path):
    graph = digits_mlp()
    graph.attrs("input")["pixels_per_transfer"] = 4
    save_graph(graph, tmp_path)
    emit_verilog(graph, tmp_path)
    section = verify_build(tmp_path, simulator="verilator", frames=30, input_gap=0.3,
                           output_stall=0.4, seed=6, progress=False)
    assert section["value_mismatches"] == 0 and section["cycle_mismatches"] == 0
    assert section["handshakes_checked"] == 30 + 30 * 64 // 4


def test_verify_catches_a_timing_change(build, tmp_path):
    """A design whose timing differs from what the graph says is caught cycle by cycle."""
    folder = tmp_path / "b"
    shutil.copytree(build, folder)
    graph = load_graph(folder)
    graph.attrs("fc0")["fold"] = {"pe": 2, "simd": 16}     # the RTL still has PE = 4
    save_graph(graph, folder)
    section = verify_build(folder, frames=10, progress=False)
    assert section["value_mismatches"] == 0 and section["cycle_mismatches"] > 0
