"""sim.timing on branching accelerators (forks, skip FIFOs, joins) against the RTL, cycle by cycle.

The process engine (sim.dataflow) runs any plan; on chains it must give exactly the pull
model's cycles, and on DAGs exactly the Amaranth simulation's, handshake by handshake, at every
block boundary — and when a skip FIFO is too shallow, the simulator's deadlock must be the
RTL's: the same handshakes happen, then nothing.
"""

import numpy as np
import pytest
from dag_graphs import concat_net, residual_net, side_branch_net
from test_timing import check_periodic, run_rtl

import bnnforge
from bnnforge.compiler.folding import ChooseFolding
from bnnforge.compiler.plan import build_plan
from bnnforge.sim import SizeFifos, simulate_timing
from bnnforge.sim.dataflow import Deadlock
from conftest import random_frames, randomize_model, small_cnn, small_mlp


def check_dag(graph, n_frames, seed=0, idle=0.0, stall=0.0):
    frames = random_frames(graph.input_shape, n_frames, seed)
    free = simulate_timing(graph, n_frames)
    horizon = int(free.total_cycles * (1 + 3 * stall) * (1 + 2 * idle)) + 50
    rng = np.random.default_rng(seed)
    total = n_frames * build_plan(graph).transfers_per_frame
    gaps = rng.geometric(1 - idle, total) - 1 if idle else None
    ready = rng.random(horizon) >= stall if stall else None
    model = simulate_timing(graph, n_frames, in_gaps=gaps, out_ready=ready)
    rtl_in, rtl_out, values, seen = run_rtl(graph, frames, gaps, ready, probe=True)
    np.testing.assert_array_equal(model.input_cycles, rtl_in)
    np.testing.assert_array_equal(model.output_cycles, rtl_out)
    for name, cycles in seen.items():
        got = model.boundaries[name]
        np.testing.assert_array_equal(got[:len(cycles)], cycles, err_msg=name)
    scores = bnnforge.reference(graph, frames)
    classes = graph.num_classes
    got = np.array([[(w >> (32 * c)) & 0xFFFFFFFF for c in range(classes)] for w in values])
    np.testing.assert_array_equal(np.where(got >= 1 << 31, got - (1 << 32), got), scores)
    return model


DAGS = {
    "identity": lambda: residual_net(0, "bits"),
    "projection": lambda: residual_net(1, "popcount"),
    "side-branch": lambda: side_branch_net(2),
    "concat": lambda: concat_net(3),
}


def sized(graph):
    return SizeFifos().apply(ChooseFolding().apply(graph))


@pytest.mark.parametrize("name", sorted(DAGS))
def test_dag_cycle_exact(name):
    graph = sized(DAGS[name]())
    assert not build_plan(graph).is_chain()
    check_dag(graph, 3, seed=1)
    check_dag(graph, 3, seed=2, idle=0.3, stall=0.4)


def test_dag_parallel_folding_and_deep_fifos_cycle_exact():
    graph = ChooseFolding(target_cycles=576).apply(residual_net(4, "popcount"))
    for name in graph.order():
        n = len(graph.inputs(name))
        graph.attrs(name)["fifo_depth"] = [3, 70][:n] if n > 1 else 3
    check_dag(graph, 3, seed=5, idle=0.2, stall=0.5)


def _chains():
    mlp = randomize_model(small_mlp(1, hidden=16), 1)
    cnn = randomize_model(small_cnn(8), 2)
    yield bnnforge.lower(mlp, (1, 8, 8))
    yield bnnforge.lower(cnn, (1, 8, 8))


@pytest.mark.parametrize("ppt", [1, 4])
def test_process_engine_equals_pull_engine_on_chains(ppt):
    rng = np.random.default_rng(ppt)
    for graph in _chains():
        graph.attrs("input")["pixels_per_transfer"] = ppt
        graph = ChooseFolding().apply(graph)
        for name in graph.order():
            graph.attrs(name)["fifo_depth"] = int(rng.integers(0, 4))
        frames = 5
        gaps = rng.geometric(0.6, frames * 64 // ppt) - 1
        ready = rng.random(20_000) < 0.6
        for kw in ({}, {"in_gaps": gaps, "out_ready": ready}):
            pull = simulate_timing(graph, frames, periodic=False, **kw)
            proc = simulate_timing(graph, frames, engine="process", **kw)
            np.testing.assert_array_equal(pull.input_cycles, proc.input_cycles)
            np.testing.assert_array_equal(pull.output_cycles, proc.output_cycles)
            assert pull.boundaries.keys() == proc.boundaries.keys()
            for key in pull.boundaries:
                np.testing.assert_array_equal(pull.boundaries[key], proc.boundaries[key], key)
            assert pull.fifo_max_occupancy == proc.fifo_max_occupancy


def test_skip_fifo_deadlock_simulator_and_rtl_agree():
    """A skip FIFO shallower than the main path's window delay: both stall at the same place."""
    graph = sized(residual_net(0, "bits"))
    depth = graph.attrs("add0")["fifo_depth"]
    assert depth[1] > 8             # the main path's window holds a row and more of the 8x8 map
    simulate_timing(graph, 3)       # SizeFifos' depth runs clean
    shallow = graph.copy()
    shallow.attrs("add0")["fifo_depth"] = [depth[0], 8]
    with pytest.raises(Deadlock) as info:
        simulate_timing(shallow, 3)
    err = info.value
    assert "add0:fifo1 (depth 8)" in str(err) and "deadlock" in str(err)
    assert {"add0:fifo1", "conv0:fork", "conv1:window", "add0:add"} <= set(err.blocked)
    assert err.outputs == 0 and 0 < err.inputs_accepted < 3 * 64
    part = err.result
    frames = random_frames(graph.input_shape, 3, 0)
    rtl_in, rtl_out, _, seen = run_rtl(shallow, frames, None, None, probe=True,
                                       cycles=int(part.input_cycles[-1]) + 2000)
    np.testing.assert_array_equal(rtl_in, part.input_cycles)   # the same transfers, then none
    assert len(rtl_out) == 0
    for name, cycles in seen.items():
        np.testing.assert_array_equal(cycles, part.boundaries[name], err_msg=name)


@pytest.mark.rtl
def test_skip_fifo_deadlock_on_verilator(tmp_path):
    """The emitted Verilog on Verilator stalls where the simulator says, and the sized one runs."""
    from bnnforge.hw.generate import emit_verilog
    from bnnforge.hw.harness import run_rtl

    graph = sized(residual_net(0, "bits"))
    frames = random_frames(graph.input_shape, 3, 0)
    depth = graph.attrs("add0")["fifo_depth"]
    shallow = graph.copy()
    shallow.attrs("add0")["fifo_depth"] = [depth[0], 8]
    with pytest.raises(Deadlock) as info:
        simulate_timing(shallow, 3)
    part = info.value.result
    emit_verilog(shallow, tmp_path / "shallow")
    res = run_rtl(tmp_path / "shallow" / "rtl", frames, "verilator", idle_limit=3000)
    assert res["stalled"] and len(res["out_cycles"]) == 0
    np.testing.assert_array_equal(res["in_cycles"], part.input_cycles)
    assert res["last_progress"] == part.input_cycles[-1]
    emit_verilog(graph, tmp_path / "sized")
    res = run_rtl(tmp_path / "sized" / "rtl", frames, "verilator", idle_limit=3000)
    model = simulate_timing(graph, 3)
    assert not res["stalled"]
    np.testing.assert_array_equal(res["in_cycles"], model.input_cycles)
    np.testing.assert_array_equal(res["out_cycles"], model.output_cycles)
    np.testing.assert_array_equal(res["scores"], bnnforge.reference(graph, frames))


@pytest.mark.parametrize("name", sorted(DAGS))
def test_process_engine_periodic_continuation_is_exact(name):
    """Once the stimulus is constant the process engine repeats the state and fills in the rest:
    every boundary equals the token-by-token run, free and after random gaps and stalls."""
    graph = sized(DAGS[name]())
    check_periodic(graph, 30, build_plan(graph).transfers_per_frame, 7, 3000, gap_frames=3,
                   settled_by=25)


def test_process_engine_periodic_on_chains():
    for graph in _chains():
        graph = ChooseFolding().apply(graph)
        for kw in ({}, {"periodic": False}):
            proc = simulate_timing(graph, 40, engine="process", **kw)
            pull = simulate_timing(graph, 40, periodic=False)
            np.testing.assert_array_equal(proc.output_cycles, pull.output_cycles)
            for key in pull.boundaries:
                np.testing.assert_array_equal(proc.boundaries[key], pull.boundaries[key], key)
        assert simulate_timing(graph, 40, engine="process").periodic_from is not None


def test_periodic_occupancy_with_deep_join_fifos():
    """FIFOs deeper than they need: the repeat cuts lists whose inputs ran ahead of their
    outputs; the occupancy still equals the token-by-token run's."""
    graph = ChooseFolding().apply(concat_net(3))
    for name in graph.order():
        graph.attrs(name)["fifo_depth"] = [17, 17] if name == "cat0" else 2
    fast = simulate_timing(graph, 20)
    slow = simulate_timing(graph, 20, periodic=False)
    assert fast.periodic_from is not None
    assert fast.fifo_max_occupancy == slow.fifo_max_occupancy


def test_skip_fifo_around_two_convolutions_keeps_the_throughput():
    """An identity shortcut around two convolutions holds two rows and more back (each line-buffer
    window a row and two pixels, and the MVTUs' latency): SizeFifos must start deep enough to
    see that (found in review with frame-buffer windows, which held 2·H·W + 2 tokens)."""
    from dag_graphs import conv, dense, input_layer, scores

    from bnnforge.compiler.ir import DataflowGraph, MaxPool, ResidualAdd

    rng = np.random.default_rng(0)
    g = DataflowGraph("res2")
    g.add("input", input_layer((1, 8, 8)), inputs=[])
    g.add("conv0", conv(rng, (1, 8, 8), 8), inputs=["input"])
    g.add("conv1", conv(rng, (8, 8, 8), 8), inputs=["conv0"])
    g.add("conv2", conv(rng, (8, 8, 8), 8, emit="popcount"), inputs=["conv1"])
    g.add("add0", ResidualAdd(in_shape=(8, 8, 8), out_shape=(8, 8, 8), main_k=72,
                              thresholds=rng.integers(0, 73, (2, 8))), inputs=["conv2", "conv0"])
    g.add("pool0", MaxPool(in_shape=(8, 8, 8), out_shape=(8, 4, 4)), inputs=["add0"])
    g.add("fc0", dense(rng, (8, 4, 4), 16), inputs=["pool0"])
    g.add("scores", scores(rng, (16,)), inputs=["fc0"])
    for target in (None, 576):
        graph = ChooseFolding(target_cycles=target).apply(g)
        deep = graph.copy()
        for name in deep.order():
            deep.attrs(name)["fifo_depth"] = [64, 1000] if name == "add0" else 64
        best = simulate_timing(deep, 30).cycles_per_frame
        sized = SizeFifos().apply(graph)
        assert sized.attrs("add0")["fifo_depth"][1] > 2 * 8
        assert simulate_timing(sized, 30).cycles_per_frame == best
