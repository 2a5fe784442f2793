"""The cocotb harness on generated designs, under Icarus and Verilator, against the reference."""

import json

import numpy as np
import pytest
import torch
from amaranth.back import verilog
from amaranth.hdl import Module
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out
from torch import nn

import bnnforge
from bnnforge.hw.generate import emit_verilog
from bnnforge.hw.harness import build_rtl, run_rtl
from bnnforge.hw.streams import Deserializer, StreamConcat, StreamFIFO, StreamFork
from bnnforge.hw.testing import simulate_streams
from bnnforge.nn import BinaryActivation, BinaryConv2d, BinaryLinear, InputQuant

pytestmark = [pytest.mark.rtl,
              pytest.mark.filterwarnings("ignore::amaranth.hdl.UnusedElaboratable")]

SIMS = ["icarus", "verilator"]


def random_bn(model, seed):
    gen = torch.Generator().manual_seed(seed)
    for mod in model.modules():
        if isinstance(mod, (nn.BatchNorm1d, nn.BatchNorm2d)):
            n = mod.num_features
            mod.running_mean.copy_(torch.rand(n, generator=gen) * 6 - 3)
            mod.running_var.copy_(torch.rand(n, generator=gen) * 4 + 0.5)
            mod.weight.data.copy_(torch.rand(n, generator=gen) * 2 - 1)
            mod.bias.data.copy_(torch.rand(n, generator=gen) * 2 - 1)
    return model


def small_convnet():
    """8-bit, 2-channel 6x6 frames (16-bit pixels): conv, pool, dense, scores."""
    torch.manual_seed(1)
    model = random_bn(nn.Sequential(
        InputQuant(8), BinaryConv2d(2, 4, 3, padding=1, pad_value=40.0), nn.BatchNorm2d(4),
        BinaryActivation(), nn.MaxPool2d(2), nn.Flatten(), BinaryLinear(36, 8),
        nn.BatchNorm1d(8), BinaryActivation(), BinaryLinear(8, 3)), 1)
    graph = bnnforge.lower(model, (2, 6, 6))
    folds = {"conv0": {"pe": 2, "simd": 6}, "fc0": {"pe": 2, "simd": 12},
             "scores": {"pe": 3, "simd": 2}}
    for name, fold in folds.items():
        graph.attrs(name)["fold"] = fold
    return graph


@pytest.fixture(scope="module")
def design(tmp_path_factory):
    graph = small_convnet()
    folder = tmp_path_factory.mktemp("convnet")
    emit_verilog(graph, folder)
    frames = np.random.default_rng(7).integers(0, 256, (6,) + graph.input_shape, dtype=np.uint8)
    return folder / "rtl", frames, bnnforge.reference(graph, frames)


def check_stream(res, expected, pixels_per_frame):
    n = expected.shape[0]
    np.testing.assert_array_equal(res["scores"], expected)
    np.testing.assert_array_equal(res["classes"], expected.argmax(axis=1))
    assert res["out_cycles"].shape == (n,)  # exactly one output per frame ...
    assert np.all(np.diff(res["out_cycles"]) > 0)  # ... in order, one per handshake
    assert res["in_cycles"].shape == (n * pixels_per_frame,)
    assert np.all(np.diff(res["in_cycles"]) > 0)
    assert res["in_cycles"][0] >= 0
    assert res["cycles"] == res["out_cycles"][-1] + 1


@pytest.mark.parametrize("sim", SIMS)
def test_back_to_back_and_with_gaps_and_backpressure(design, sim):
    rtl, frames, expected = design
    pixels = json.loads((rtl / "top.json").read_text())["pixels_per_frame"]
    full = run_rtl(rtl, frames, simulator=sim)
    check_stream(full, expected, pixels)
    rough = run_rtl(rtl, frames, simulator=sim, input_gap=0.4, output_stall=0.5, seed=3)
    check_stream(rough, expected, pixels)
    assert rough["cycles"] > full["cycles"]
    assert np.count_nonzero(np.diff(rough["in_cycles"]) > 1) > \
        np.count_nonzero(np.diff(full["in_cycles"]) > 1)
    # (N, pixels, channels) in stream order is the same stream as (N, C, H, W)
    hwc = frames.transpose(0, 2, 3, 1).reshape(len(frames), pixels, -1)
    again = run_rtl(rtl, hwc, simulator=sim, input_gap=0.4, output_stall=0.5, seed=3)
    for key in ("scores", "out_cycles", "in_cycles"):
        np.testing.assert_array_equal(again[key], rough[key])


def test_several_pixels_per_transfer_on_icarus(tmp_path):
    graph = small_convnet()
    graph.attrs("input")["pixels_per_transfer"] = 4     # 16-bit pixels: 64-bit transfers
    emit_verilog(graph, tmp_path)
    rtl = tmp_path / "rtl"
    top = json.loads((rtl / "top.json").read_text())
    assert top["pixels_per_transfer"] == 4 and top["transfer_width"] == 64
    frames = np.random.default_rng(8).integers(0, 256, (3,) + graph.input_shape, dtype=np.uint8)
    expected = bnnforge.reference(graph, frames)
    res = run_rtl(rtl, frames, input_gap=0.3, output_stall=0.4, seed=2)
    check_stream(res, expected, 36 // 4)                # in_cycles: one per transfer
    gaps = np.arange(3 * 9) % 3
    ready = np.arange(400) % 4 != 1
    res = run_rtl(rtl, frames, in_gaps=gaps, out_ready=ready)
    check_stream(res, expected, 9)
    timing = bnnforge.sim.simulate_timing(graph, 3, in_gaps=gaps, out_ready=ready)
    np.testing.assert_array_equal(res["in_cycles"], timing.input_cycles)
    np.testing.assert_array_equal(res["out_cycles"], timing.output_cycles)


def test_icarus_and_verilator_agree_cycle_for_cycle(design):
    rtl, frames, _ = design
    a = run_rtl(rtl, frames[:3], simulator="icarus", input_gap=0.2, output_stall=0.3, seed=5)
    b = run_rtl(rtl, frames[:3], simulator="verilator", input_gap=0.2, output_stall=0.3, seed=5)
    np.testing.assert_array_equal(a["in_cycles"], b["in_cycles"])
    np.testing.assert_array_equal(a["out_cycles"], b["out_cycles"])


def test_build_is_cached(design, tmp_path):
    rtl, frames, expected = design
    build = build_rtl(rtl, "icarus", tmp_path / "b")
    stamp = (build / "sim.vvp").stat().st_mtime_ns
    res = run_rtl(rtl, frames[:1], simulator="icarus", build_dir=tmp_path / "b")
    np.testing.assert_array_equal(res["scores"], expected[:1])
    assert (build / "sim.vvp").stat().st_mtime_ns == stamp


def test_timeout_stops_the_run_with_a_clear_error(design):
    rtl, frames, _ = design
    with pytest.raises(RuntimeError, match=r"timeout: no output for 20 cycles .* 0 of 2 frames "
                                           r"came out"):
        run_rtl(rtl, frames[:2], simulator="icarus", timeout_cycles=20)


def test_argument_errors(design):
    rtl, frames, _ = design
    with pytest.raises(ValueError, match=r"unknown simulator 'ghdl'; choose icarus or verilator"):
        run_rtl(rtl, frames, simulator="ghdl")
    with pytest.raises(ValueError, match=r"input_gap must be a probability in \[0, 1\), not 1.0"):
        run_rtl(rtl, frames, input_gap=1.0)
    with pytest.raises(ValueError, match=r"output_stall must be a probability"):
        run_rtl(rtl, frames, output_stall=-0.1)
    with pytest.raises(ValueError, match=r"frames must be a uint8 numpy array, got int64"):
        run_rtl(rtl, frames.astype(np.int64))
    with pytest.raises(ValueError, match=r"do not fit the design: it takes 2 channel\(s\) and "
                                         r"36 pixels per frame"):
        run_rtl(rtl, frames[:, :1])
    with pytest.raises(ValueError, match=r"top.json is missing"):
        run_rtl(rtl.parent, frames)
    with pytest.raises(ValueError, match=r"timeout_cycles must be a positive number"):
        run_rtl(rtl, frames, timeout_cycles=0)


# A deliberately faulty design (two outputs per frame) to pin the "extra output" check.
TWICE = """
module bnnforge_top(input clk, input rst,
  input [7:0] i_stream__payload, input i_stream__valid, output i_stream__ready,
  output [33:0] o_stream__payload, output reg o_stream__valid, input o_stream__ready);
  reg [1:0] pending;
  assign i_stream__ready = pending == 0;
  assign o_stream__payload = 34'd7;
  always @(posedge clk)
    if (rst) begin pending <= 0; o_stream__valid <= 0; end
    else begin
      if (i_stream__valid & i_stream__ready) pending <= 2;
      if (pending != 0 & (~o_stream__valid | o_stream__ready)) begin
        o_stream__valid <= 1; pending <= pending - 1;
      end else if (o_stream__ready) o_stream__valid <= 0;
    end
endmodule
"""


def test_extra_output_is_an_error(tmp_path):
    rtl = tmp_path / "rtl"
    rtl.mkdir()
    (rtl / "bnnforge_top.v").write_text(TWICE)
    (rtl / "top.json").write_text(json.dumps(
        {"top": "bnnforge_top", "pixel_width": 8, "pixels_per_frame": 1, "classes": 1,
         "score_width": 32, "class_width": 2, "stages": []}))
    frames = np.zeros((1, 1, 1), dtype=np.uint8)
    with pytest.raises(RuntimeError, match=r"produced an output after all 1 frames"):
        run_rtl(rtl, frames)


# A design that really deadlocks, from the DAG blocks: a fork whose branches rejoin in a concat,
# one through a 5-deep FIFO, the other through a Deserializer that needs 4 tokens per output.
# After 6 tokens the FIFO is full, the fork waits for it, and the Deserializer never gets its
# next 4: one output (cycle 5), input transfers in cycles 0-4 and 6, then nothing.

class ForkDeadlock(wiring.Component):
    def __init__(self):
        self.fork = StreamFork(8, 2)
        self.deep = StreamFIFO(8, 5)
        self.gather = Deserializer(8, 4)
        self.shallow = StreamFIFO(32, 1)
        self.join = StreamConcat([8, 32])
        super().__init__({"i_stream": In(stream.Signature(8)),
                          "o_stream": Out(stream.Signature(40))})

    def elaborate(self, platform):
        m = Module()
        for name in ("fork", "deep", "gather", "shallow", "join"):
            m.submodules[name] = getattr(self, name)
        wiring.connect(m, wiring.flipped(self.i_stream), self.fork.i_stream)
        wiring.connect(m, self.fork.o_stream0, self.deep.i_stream)
        wiring.connect(m, self.fork.o_stream1, self.gather.i_stream)
        wiring.connect(m, self.gather.o_stream, self.shallow.i_stream)
        wiring.connect(m, self.deep.o_stream, self.join.i_stream0)
        wiring.connect(m, self.shallow.o_stream, self.join.i_stream1)
        wiring.connect(m, self.join.o_stream, wiring.flipped(self.o_stream))
        return m


@pytest.fixture(scope="module")
def deadlock(tmp_path_factory):
    rtl = tmp_path_factory.mktemp("deadlock") / "rtl"
    rtl.mkdir()
    (rtl / "bnnforge_top.v").write_text(verilog.convert(ForkDeadlock(), name="bnnforge_top",
                                                        emit_src=False))
    # the 40-bit payload read as one 32-bit "score" and an 8-bit "class" (the top byte)
    (rtl / "top.json").write_text(json.dumps(
        {"top": "bnnforge_top", "pixel_width": 8, "pixels_per_frame": 1, "classes": 1,
         "score_width": 32, "class_width": 8}))
    return rtl


def test_a_deadlock_stops_the_run_and_returns_the_handshakes_so_far(deadlock):
    frames = np.arange(10, 20, dtype=np.uint8).reshape(10, 1, 1)
    res = run_rtl(deadlock, frames, idle_limit=30)
    assert res["stalled"] is True
    np.testing.assert_array_equal(res["in_cycles"], [0, 1, 2, 3, 4, 6])
    np.testing.assert_array_equal(res["out_cycles"], [5])
    # the concat's word: token 0 (deep FIFO) below tokens 0..3 (deserializer), top byte = class
    word = 10 | (10 | 11 << 8 | 12 << 16 | 13 << 24) << 8
    assert res["scores"].tolist() == [[int(np.int32(np.uint32(word & 0xFFFFFFFF)))]]
    assert res["classes"].tolist() == [13]
    assert res["last_progress"] == 6
    assert res["cycles"] == 6 + 30 + 1       # 30 idle cycles after the last handshake
    # without idle_limit the same design fails after timeout_cycles, as before
    with pytest.raises(RuntimeError, match=r"timeout: no output for 50 cycles .* 1 of 10 frames "
                                           r"came out and 6 of 10 input transfers went in"):
        run_rtl(deadlock, frames, timeout_cycles=50)


def test_cycles_the_harness_holds_back_do_not_count(deadlock):
    # an 80-cycle input gap while the design is ready, then an output held back until cycle
    # 150 (both longer than idle_limit): no stall until the real deadlock after cycle 151
    frames = np.arange(10, dtype=np.uint8).reshape(10, 1, 1)
    gaps = np.array([0, 0, 80])
    ready = np.zeros(150, dtype=bool)
    res = run_rtl(deadlock, frames, in_gaps=gaps, out_ready=ready, idle_limit=30)
    assert res["stalled"] is True
    np.testing.assert_array_equal(res["in_cycles"], [0, 1, 82, 83, 84, 151])
    np.testing.assert_array_equal(res["out_cycles"], [150])
    assert (res["last_progress"], res["cycles"]) == (151, 151 + 30 + 1)


def test_a_deadlock_under_gaps_and_stalls_matches_amaranth(deadlock):
    """The handshakes before the deadlock are the ones Amaranth's simulator gives for the same
    stimulus."""
    rng = np.random.default_rng(4)
    gaps = rng.integers(0, 4, 10)
    ready = rng.random(200) < 0.3
    frames = np.arange(10, dtype=np.uint8).reshape(10, 1, 1)
    res = run_rtl(deadlock, frames, in_gaps=gaps, out_ready=ready, idle_limit=40)
    assert res["stalled"] is True
    dut = ForkDeadlock()                     # fed only the 6 tokens that get in: no deadlock
    _, ic, oc = simulate_streams(dut, [(dut.i_stream, list(range(6)), gaps.tolist())],
                                 [(dut.o_stream, 1, ready.tolist())])
    np.testing.assert_array_equal(res["in_cycles"], ic[0])
    np.testing.assert_array_equal(res["out_cycles"], oc[0])
    assert len(ic[0]) == 6 and res["last_progress"] == max(ic[0] + oc[0])
    # from the cycle after the last handshake the design refuses the input and offers no
    # output: every cycle counts
    assert res["cycles"] == res["last_progress"] + 40 + 1


# The convnet's longest stretch without a handshake is 324 cycles (its last layers computing a
# frame while the input waits): a limit above that never fires on it.
IDLE_LIMIT = 400


def test_idle_limit_leaves_a_healthy_run_alone(design):
    rtl, frames, expected = design
    plain = run_rtl(rtl, frames[:3], input_gap=0.4, output_stall=0.5, seed=3)
    watched = run_rtl(rtl, frames[:3], input_gap=0.4, output_stall=0.5, seed=3,
                      idle_limit=IDLE_LIMIT)
    assert plain["stalled"] is False and watched["stalled"] is False
    for key in ("scores", "in_cycles", "out_cycles"):
        np.testing.assert_array_equal(watched[key], plain[key])
    assert watched["cycles"] == plain["cycles"]
    with pytest.raises(ValueError, match=r"idle_limit must be a positive number of cycles or "
                                         r"None, not 0"):
        run_rtl(rtl, frames, idle_limit=0)
