"""sim.timing's MST-layer stage against the RTL: every handshake cycle, in Amaranth's simulator."""

import numpy as np
import pytest
from test_timing import run_rtl, stimulus  # the one shared RTL driver

import bnnforge
from bnnforge.compiler.mst import OrderChannelsByMST
from bnnforge.hw.components import silence
from bnnforge.hw.generate import Accelerator
from bnnforge.sim import chain, simulate_timing
from conftest import random_frames, randomize_model, small_cnn, small_mlp

pytestmark = pytest.mark.filterwarnings("ignore::amaranth.hdl.UnusedElaboratable")


def check_exact(graph, n_frames, seed=0, idle=0.0, stall=0.0):
    frames = random_frames(graph.input_shape, n_frames, seed)
    free = simulate_timing(graph, n_frames)
    horizon = int(free.total_cycles * (1 + 3 * stall) * (1 + 2 * idle)) + 50
    gaps, ready = stimulus(graph, n_frames, seed, idle, stall, horizon)
    model = simulate_timing(graph, n_frames, in_gaps=gaps, out_ready=ready)
    rtl_in, rtl_out, values, seen = run_rtl(graph, frames, gaps, ready, probe=True)
    assert any(block["kind"] == "mst" for block in chain(graph))
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
