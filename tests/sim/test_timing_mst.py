"""sim.timing's MST-layer stage against the RTL: every handshake cycle, in Amaranth's simulator."""

import numpy as np
import pytest
from amaranth.sim import Simulator

import bnnforge
from bnnforge.compiler.mst import OrderChannelsByMST
from bnnforge.hw.components import silence
from bnnforge.hw.generate import Accelerator
from bnnforge.sim import chain, simulate_timing
from conftest import random_frames, randomize_model, small_cnn, small_mlp

pytestmark = pytest.mark.filterwarnings("ignore::amaranth.hdl.UnusedElaboratable")


def payloads(graph, frames):
    """uint8 frames -> one int per input pixel (HWC order, channel 0 in the low byte)."""
    if len(graph.input_shape) == 3:
        hwc = frames.transpose(0, 2, 3, 1)
    else:
        hwc = frames.reshape(frames.shape[0], 1, 1, -1)
    px = hwc.reshape(-1, hwc.shape[-1]).astype(np.int64)
    return [sum(int(v) << (8 * i) for i, v in enumerate(row)) for row in px]


def run_rtl(graph, frames, in_gaps, out_ready, timeout=200_000):
    """Drive the accelerator with sim.timing's stimulus contract; return the handshake cycles
    (inputs, outputs), the output payloads and the cycles at every block's input."""
    dut = Accelerator(graph)
    data = payloads(graph, frames)
    res = {"in": [], "out": [], "val": []}
    probes = [(f"{node}:{kind}", comp.i_stream) for node, kind, comp in dut.stages]
    seen = {name: [] for name, _ in probes}
    sigs = [x for _, st in probes for x in (st.valid, st.ready)]

    async def put(ctx):
        cycle = 0
        for n, payload in enumerate(data):
            for _ in range(int(in_gaps[n]) if in_gaps is not None else 0):
                ctx.set(dut.i_stream.valid, 0)
                await ctx.tick()
                cycle += 1
            ctx.set(dut.i_stream.payload, payload)
            ctx.set(dut.i_stream.valid, 1)
            while True:
                _, _, ready = await ctx.tick().sample(dut.i_stream.ready)
                cycle += 1
                if ready:
                    break
            res["in"].append(cycle - 1)
        ctx.set(dut.i_stream.valid, 0)

    async def get(ctx):
        cycle = 0
        while len(res["out"]) < len(frames):
            assert cycle < timeout, "timeout"
            ready = out_ready is None or cycle >= len(out_ready) or bool(out_ready[cycle])
            ctx.set(dut.o_stream.ready, int(ready))
            _, _, valid, payload, *hs = await ctx.tick().sample(
                dut.o_stream.valid, dut.o_stream.payload, *sigs)
            for i, (name, _) in enumerate(probes):
                if hs[2 * i] and hs[2 * i + 1]:
                    seen[name].append(cycle)
            if valid and ready:
                res["out"].append(cycle)
                res["val"].append(int(payload))
            cycle += 1

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(put)
    sim.add_testbench(get)
    sim.run()
    return np.array(res["in"]), np.array(res["out"]), res["val"], seen, dut


def check_exact(graph, n_frames, seed=0, idle=0.0, stall=0.0):
    frames = random_frames(graph.input_shape, n_frames, seed)
    free = simulate_timing(graph, n_frames)
    horizon = int(free.total_cycles * (1 + 3 * stall) * (1 + 2 * idle)) + 50
    rng = np.random.default_rng(seed)
    total = n_frames * chain(graph)[0]["tokens"]
    gaps = rng.geometric(1 - idle, total) - 1 if idle else None
    ready = rng.random(horizon) >= stall if stall else None
    model = simulate_timing(graph, n_frames, in_gaps=gaps, out_ready=ready)
    rtl_in, rtl_out, values, seen, dut = run_rtl(graph, frames, gaps, ready)
    assert any(kind == "mst" for _, kind, _ in dut.stages)
    np.testing.assert_array_equal(model.input_cycles, rtl_in)
    np.testing.assert_array_equal(model.output_cycles, rtl_out)
    for name, cycles in seen.items():
        np.testing.assert_array_equal(model.boundaries[name][:len(cycles)], cycles,
                                      err_msg=name)
    scores = bnnforge.reference(graph, frames)
    got = np.array([[(w >> (32 * c)) & 0xFFFFFFFF for c in range(graph.num_classes)]
                    for w in values])
    np.testing.assert_array_equal(np.where(got >= 1 << 31, got - (1 << 32), got), scores)
    return model


def mst_graph(model, folds, mst_stages, depth=None, max_depth=None):
    graph = bnnforge.lower(model, (1, 8, 8))
    for name, (pe, simd) in folds.items():
        graph.attrs(name)["fold"] = {"pe": pe, "simd": simd}
    graph = OrderChannelsByMST(max_depth=max_depth).apply(graph)
    for name in mst_stages:
        op = graph.op(name)
        graph.attrs(name)["fold"] = {"pe": op.channels, "simd": op.k, "mst": True}
    if depth is not None:
        for name in graph.order():
            graph.attrs(name)["fifo_depth"] = depth
    return graph


def mlp():
    return randomize_model(small_mlp(1, hidden=16), seed=1)


def cnn():
    return randomize_model(small_cnn(1), seed=11)


MLP_FOLDS = {"fc0": (4, 16), "fc1": (4, 8), "scores": (2, 4)}
CNN_FOLDS = {"conv0": (4, 9), "conv1": (4, 24), "fc0": (4, 16), "scores": (2, 10)}


@pytest.mark.parametrize("stages", [("fc0",), ("fc1",), ("fc0", "fc1")])
def test_mlp_mst_cycle_exact(stages):
    graph = mst_graph(mlp(), MLP_FOLDS, stages)
    assert max(max(graph.attrs(s)["mst"]["depth"]) for s in stages) >= 2
    check_exact(graph, 3, seed=len(stages))
    check_exact(graph, 4, seed=7 + len(stages), idle=0.3, stall=0.5)


@pytest.mark.parametrize("depth", [0, 1, 3])
def test_mlp_mst_fifo_depths_cycle_exact(depth):
    graph = mst_graph(mlp(), {"fc0": (16, 64), "fc1": (16, 16), "scores": (10, 16)},
                      ("fc0", "fc1"), depth=depth)
    check_exact(graph, 4, seed=depth, idle=0.2, stall=0.6)
    check_exact(graph, 4, seed=depth + 10)


@pytest.mark.parametrize("stages", [("conv0", "conv1", "fc0"), ("conv1",)])
def test_cnn_mst_cycle_exact(stages):
    graph = mst_graph(cnn(), CNN_FOLDS, stages, max_depth=3)
    check_exact(graph, 2, seed=3)
    check_exact(graph, 2, seed=4, idle=0.25, stall=0.4)


def test_mst_stage_latency_and_rate():
    """Free run: the MST stage takes a vector a cycle and adds tree_stages(K) + depth + 2."""
    graph = mst_graph(mlp(), {"fc0": (16, 64), "fc1": (16, 16), "scores": (10, 16)},
                      ("fc1",))
    spec = next(b for b in chain(graph) if b["kind"] == "mst")
    depth = max(graph.attrs("fc1")["mst"]["depth"])
    assert spec["latency"] == 2 + depth + 1 and spec["cycles"] == 1      # tree_stages(16) = 2
    res = simulate_timing(graph, 6)
    into = res.boundaries["fc1:mst"]
    out = res.boundaries["scores:fifo"]
    np.testing.assert_array_equal(out - into, spec["latency"] + 1)
    assert res.stage_busy["fc1"] == 1


def test_periodic_continuation_with_mst():
    graph = mst_graph(mlp(), MLP_FOLDS, ("fc0", "fc1"), depth=1)
    rng = np.random.default_rng(3)
    gaps = np.concatenate([rng.geometric(0.6, 64 * 5) - 1, np.zeros(64 * 25, dtype=int)])
    ready = rng.random(2000) > 0.5
    for kw in ({}, {"in_gaps": gaps, "out_ready": ready}):
        fast = simulate_timing(graph, 30, **kw)
        slow = simulate_timing(graph, 30, periodic=False, **kw)
        assert fast.periodic_from is not None
        for key in slow.boundaries:
            np.testing.assert_array_equal(fast.boundaries[key], slow.boundaries[key], key)


def test_mst_fold_needs_the_tree():
    graph = bnnforge.lower(mlp(), (1, 8, 8))
    for name, (pe, simd) in MLP_FOLDS.items():
        graph.attrs(name)["fold"] = {"pe": pe, "simd": simd}
    graph.attrs("fc1")["fold"] = {"pe": 16, "simd": 16, "mst": True}
    with pytest.raises(ValueError, match=r"stage 'fc1' is folded as an MST layer but has no "
                                         r"'mst' attribute .*run OrderChannelsByMST first"):
        simulate_timing(graph, 1)
    with pytest.raises(ValueError, match=r"stage 'fc1' is folded as an MST layer but has no "
                                         r"'mst' attribute .*run OrderChannelsByMST first"):
        Accelerator(graph)
    graph = OrderChannelsByMST().apply(graph)
    graph.attrs("fc1")["fold"] = {"pe": 4, "simd": 16, "mst": True}
    with pytest.raises(ValueError, match=r"stage 'fc1': an MST layer needs PE = channels = 16 "
                                         r"and SIMD = K = 16, not PE=4, SIMD=16"):
        Accelerator(graph)
    with pytest.raises(ValueError, match=r"stage 'fc1': an MST layer needs a binary-input "
                                         r"hidden layer at PE = channels = 16 and SIMD = K = 16"):
        simulate_timing(graph, 1)
    graph8 = OrderChannelsByMST().apply(bnnforge.lower(randomize_model(small_mlp(8, hidden=16),
                                                                       seed=2), (1, 8, 8)))
    for name, (pe, simd) in MLP_FOLDS.items():
        graph8.attrs(name)["fold"] = {"pe": pe, "simd": simd}
    graph8.attrs("fc0")["fold"] = {"pe": 16, "simd": 64, "mst": True}
    with pytest.raises(ValueError, match=r"stage 'fc0': an MST layer takes binary inputs only, "
                                         r"not 8-bit inputs"):
        Accelerator(graph8)
    silence()
