"""sim.timing's MST-layer stage against the RTL: every handshake cycle, in Amaranth's simulator."""

import numpy as np
import pytest
from test_timing import check_exact as check_timing_exact  # the one RTL driver
from test_timing import check_periodic

import bnnforge
from bnnforge.compiler.mst import OrderChannelsByMST
from bnnforge.hw.checks import silence
from bnnforge.hw.generate import Accelerator
from bnnforge.sim import chain, simulate_timing
from conftest import randomize_model, small_cnn, small_mlp

pytestmark = pytest.mark.filterwarnings("ignore::amaranth.hdl.UnusedElaboratable")


def check_exact(graph, n_frames, seed=0, idle=0.0, stall=0.0):
    """test_timing's exact check (every handshake, every boundary, the values) on a graph with an
    MST stage."""
    assert any(block["kind"] == "mst" for block in chain(graph))
    return check_timing_exact(graph, n_frames, seed=seed, idle=idle, stall=stall, probe=True)


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
    assert spec["latency"] == 2 + depth + 1 and spec["cycles"] == 1   # tree_stages(16, 2) = 2
    res = simulate_timing(graph, 6)
    into = res.boundaries["fc1:mst"]
    out = res.boundaries["scores:fifo"]
    np.testing.assert_array_equal(out - into, spec["latency"] + 1)
    assert res.stage_busy["fc1"] == 1


def test_periodic_continuation_with_mst():
    graph = mst_graph(mlp(), MLP_FOLDS, ("fc0", "fc1"), depth=1)
    check_periodic(graph, 30, 64, seed=3, horizon=2000)


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
    with pytest.raises(ValueError, match=r"stage 'fc1': an MST layer needs PE = channels = 16 "
                                         r"and SIMD = K = 16, not PE=4, SIMD=16"):
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
