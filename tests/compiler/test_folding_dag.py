"""The cycle model, the cost model and ChooseFolding on branching graphs (forks and joins)."""

from __future__ import annotations

import numpy as np
import pytest
from dag_graphs import concat_net, conv, dense, forked_input_net, residual_net, side_branch_net

import bnnforge
from bnnforge.compiler.costs import (
    emits_popcount,
    estimate_brams,
    estimate_fork_luts,
    estimate_join_luts,
    estimate_luts,
    folding_cost,
    mst_eligible,
    ram_blocks,
)
from bnnforge.compiler.cycles import (
    consumers,
    matrix_ops,
    pipeline_cycles,
    producers,
    stage_cycles,
    transfers_per_vector,
    window_cycles,
)
from bnnforge.compiler.folding import ChooseFolding, FoldingError, divisors
from bnnforge.compiler.pipeline import output_slots, pipeline_for
from conftest import random_frames, randomize_model, small_mlp

NETS = {"residual": residual_net, "projection": lambda: residual_net(short="popcount"),
        "side": side_branch_net, "concat": concat_net}


def test_producers_and_consumers_follow_the_edges():
    g = side_branch_net()
    assert producers(g, "input") == [] and producers(g, "fcB") == ["input"]
    assert producers(g, "add0") == ["fcA", "fcB"]                  # port order
    assert consumers(g, "input") == ["conv0", "fcB"] and consumers(g, "scores") == []


@pytest.mark.parametrize("ppt", [1, 2, 4, 16])
def test_a_stage_reads_its_producers_stream_not_the_previous_node(ppt):
    """fcB reads the input stream (64 pixels, ``ppt`` a transfer) although fcA, a vector stage,
    comes just before it in graph order; fcA reads pool0's 16 pixels one at a time."""
    g = side_branch_net(ppt=ppt)
    assert g.order().index("fcB") == g.order().index("fcA") + 1
    assert transfers_per_vector(g) == {"conv0": 1, "fcA": 16, "fcB": 64 // ppt, "scores": 1}
    assert transfers_per_vector(side_branch_net(), ppt=ppt)["fcB"] == 64 // ppt
    # after a join the stream is one pixel (or one vector) a transfer
    assert transfers_per_vector(residual_net())["fc0"] == 16
    assert transfers_per_vector(concat_net())["fc0"] == 16


def test_joins_take_a_cycle_per_pixel():
    res, side, cat = residual_net(), side_branch_net(), concat_net()
    assert stage_cycles(res.op("add0")) == 8 * 8
    assert stage_cycles(side.op("add0")) == 1                      # a (32,) vector
    assert stage_cycles(cat.op("cat0")) == 8 * 8
    for g in (res, side, cat):
        cycles = pipeline_cycles(ChooseFolding().apply(g))
        assert list(cycles) == g.order()                           # every node, graph order
    assert pipeline_cycles(ChooseFolding().apply(res))["add0"] == 64


@pytest.mark.parametrize("net", sorted(NETS))
@pytest.mark.parametrize("target", [576, 1000, 4096])
def test_every_branch_meets_the_target_at_least_cost(net, target):
    g = NETS[net]()
    folded = ChooseFolding(target_cycles=target).apply(g)
    cycles = pipeline_cycles(folded)
    assert max(cycles.values()) <= target
    counts = transfers_per_vector(folded)
    assert set(counts) == set(matrix_ops(g))
    for name in matrix_ops(g):               # side branches too: the cheapest legal folding
        fold = folded.attrs(name)["fold"]
        assert (fold["pe"], fold["simd"]) == ChooseFolding.cheapest(g.op(name), target,
                                                                    counts[name])


def test_the_floor_is_the_slowest_streaming_node_anywhere():
    """conv0's window generator (the 8x8 map padded to 10x10: 100 cycles) sits on one branch of
    side_branch_net; the other branch's dense stage could go faster, but the pipeline cannot."""
    g = side_branch_net()
    assert window_cycles(g.op("conv0")) == 100
    ChooseFolding(target_cycles=100).apply(g)
    with pytest.raises(FoldingError, match=r"faster than the streaming stages allow \(100 "):
        ChooseFolding(target_cycles=99).apply(g)


@pytest.mark.parametrize("net", sorted(NETS))
def test_default_balance_is_set_by_the_slowest_node_anywhere(net):
    g = NETS[net]()
    folded = ChooseFolding().apply(g)
    base = max(stage_cycles(g.op(n), 1, max(d for d in divisors(g.op(n).k) if d <= 32))
               for n in matrix_ops(g))
    floor = max(window_cycles(op) for _, op in g if op.kind in ("conv", "maxpool"))
    assert max(pipeline_cycles(folded).values()) == max(base, floor)


def test_a_lut_budget_counts_the_joins():
    """The most serial design of the projection net needs the matrix stages at their slowest
    balanced folding plus add0's 8 x (9 x 7 + 1) = 512 cells of compares and output register."""
    g = residual_net(short="popcount")
    assert estimate_join_luts(g.op("add0")) == 512
    worst = max(stage_cycles(g.op(n), 1, 1) for n in matrix_ops(g))
    serial = ChooseFolding(target_cycles=worst).apply(g)
    counts = transfers_per_vector(serial)
    need = 512 + sum(estimate_luts(serial.op(n), serial.attrs(n)["fold"]["pe"],
                                   serial.attrs(n)["fold"]["simd"], counts[n])
                     for n in matrix_ops(g))
    with pytest.raises(FoldingError, match=rf"even the most serial design needs about {need} "
                                           r"LUTs, over the budget of 100:"):
        ChooseFolding(luts=100).apply(g)
    fit = ChooseFolding(luts=need + 2000).apply(g)
    assert 512 + sum(estimate_luts(fit.op(n), fit.attrs(n)["fold"]["pe"],
                                   fit.attrs(n)["fold"]["simd"], counts[n])
                     for n in matrix_ops(g)) <= need + 2000
    assert max(pipeline_cycles(fit).values()) < worst


@pytest.mark.parametrize("net", sorted(NETS))
def test_choose_folding_is_equivalent_on_a_dag(net):
    g = NETS[net]()
    frames = random_frames((1, 8, 8), 200, seed=5)
    for folding in (ChooseFolding(), ChooseFolding(target_cycles=600),
                    ChooseFolding(luts=20000, mst=True)):
        np.testing.assert_array_equal(bnnforge.reference(g, frames),
                                      bnnforge.reference(folding.apply(g), frames))


def _pair(make, *args):
    """The same stage thresholded and emitting popcounts (weights from the same seed)."""
    return make(np.random.default_rng(3), *args), make(np.random.default_rng(3), *args,
                                                       emit="popcount")


@pytest.mark.parametrize("pe, simd, rom", [(1, 8, 5), (2, 24, 5), (8, 72, 0)])
def test_a_popcount_stage_costs_a_thresholded_one_less_its_compare(pe, simd, rom):
    """K = 72: acc_bits = 9; the threshold ROM (C/PE words of PE x 9 bits: 72 bits, 5 cells)
    is in logic, none for one word; a popcount stage's outputs are bit_length(72) = 7 bits
    wide instead of 1: its group shift register ((C/PE - 1) x PE lanes) and its output queue
    (slots x 8 channels) hold 6 more bits a lane."""
    bits, pop = _pair(conv, (8, 8, 8), 8)
    assert emits_popcount(pop) and not emits_popcount(bits)
    groups, f = 8 // pe, (8 // pe) * (72 // simd)
    slots = output_slots(f, pipeline_for(None).mvtu_latency(simd))
    wider = (7 - 1) * ((groups - 1) * pe + slots * 8)
    assert estimate_luts(pop, pe, simd) == \
        estimate_luts(bits, pe, simd) - pe * 9 - rom + wider
    assert estimate_brams(pop, pe, simd) == estimate_brams(bits, pe, simd)
    assert folding_cost(pop, pe, simd) == estimate_luts(pop, pe, simd)
    assert mst_eligible(bits) and not mst_eligible(pop)


def test_a_popcount_stage_has_no_threshold_rom():
    """K = 128 (acc_bits 10), 256 channels at PE 1: the thresholds are 256 words, a block RAM
    ROM (with its 10-bit data register); the popcount stage has none, no compare, and outputs
    bit_length(128) = 8 bits a channel: 7 more in its group shift register (255 lanes) and its
    output register (256 channels)."""
    bits, pop = _pair(dense, (8, 4, 4), 256)
    assert estimate_brams(bits, 1, 8) - estimate_brams(pop, 1, 8) == ram_blocks(10, 256) > 0
    assert estimate_luts(pop, 1, 8) == \
        estimate_luts(bits, 1, 8) - 10 - 10 + 7 * (255 + 256)


def test_join_and_fork_costs():
    res, proj = residual_net(), residual_net(short="popcount")
    assert estimate_join_luts(res.op("add0")) == 8 * (2 * 7 + 1)      # S = 2, bits(72) = 7
    assert estimate_join_luts(proj.op("add0")) == 8 * (9 * 7 + 1)     # S = short_k + 1 = 9
    assert estimate_join_luts(side_branch_net().op("add0")) == 32 * (2 * 8 + 1)
    assert estimate_join_luts(concat_net().op("cat0")) == 0
    with pytest.raises(ValueError, match="costs 'add' and 'concat' nodes, not 'maxpool'"):
        estimate_join_luts(res.op("pool0"))
    # a LUT a consumer, its flip-flop in the same cell
    assert [estimate_fork_luts(n) for n in (0, 1, 2, 3)] == [0, 0, 2, 3]


def test_a_forked_input_stream_stays_one_pixel_a_transfer():
    """forked_input_net's input feeds fcA and fcB: the hardware forks streams of one pixel a
    transfer, so ChooseFolding does not widen it for a target below the input's 64 cycles (a
    chain's input it widens); an override still sets it."""
    g = forked_input_net()
    with pytest.raises(FoldingError, match=r"^the target of 16 cycles per frame is faster than "
                                           r"the streaming stages allow \(64 cycles per frame: "
                                           r"one input transfer of 1 pixel\(s\)"):
        ChooseFolding(target_cycles=16).apply(g)
    assert ChooseFolding(target_cycles=64).apply(g).pixels_per_transfer() == 1
    assert ChooseFolding(overrides={"input": (4, 1)}).apply(g).pixels_per_transfer() == 4
    chain = bnnforge.lower(randomize_model(small_mlp(1), 3), (1, 8, 8))
    assert ChooseFolding(target_cycles=16).apply(chain).pixels_per_transfer() == 4
