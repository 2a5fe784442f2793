"""Board-design estimates (logic cells, block RAMs) and fit_to_board on branching graphs."""

from __future__ import annotations

import numpy as np
import pytest
from dag_graphs import concat_net, forked_input_net, residual_net, side_branch_net
from torch import nn

import bnnforge
from bnnforge.boards import (
    HEADROOM,
    estimate_design_brams,
    estimate_design_luts,
    fit_to_board,
    get_board,
)
from bnnforge.boards.estimate import _UART, _answer, design_resources
from bnnforge.boards.fit import fit_board
from bnnforge.compiler.costs import (
    COSTS,
    FAMILY_CELLS,
    TABLE_CELLS_PER_BYTE,
    Resources,
    block_brams,
    block_luts,
    block_resources,
    estimate_brams,
    estimate_join_luts,
    estimate_luts,
    estimate_mst_luts,
    family_cells,
    ram_blocks,
)
from bnnforge.compiler.cycles import matrix_ops, pipeline_cycles, transfers_per_vector
from bnnforge.compiler.folding import ChooseFolding, FoldingError
from bnnforge.compiler.mst import OrderChannelsByMST
from bnnforge.compiler.plan import KINDS, PlanError, build_plan
from bnnforge.nn import BinaryActivation, BinaryConv2d, BinaryLinear, InputQuant
from conftest import randomize_model, small_mlp


def _stage_luts(graph, name):
    fold = graph.attrs(name)["fold"]
    return estimate_luts(graph.op(name), fold["pe"], fold["simd"],
                         transfers_per_vector(graph)[name])


def test_design_resources_of_a_residual_block_add_up():
    """Every part of the residual net: the FIFO in front of every input port (depth x the
    producer's width registers: the input's 8-bit pixels, conv0's 8 bits, conv1's 8 popcounts
    of 7 bits), the windows, conv0's fork to two consumers, add0's compares, the matrix stages,
    the answer multiplexer and the UART; in the iCE40 count a holding register is a cell."""
    g = ChooseFolding().apply(residual_net())
    depths = {"input": 3, "conv0": 2, "conv1": 5, "add0": [7, 11], "pool0": 1, "fc0": 0,
              "scores": 4}
    for name, depth in depths.items():
        g.attrs(name)["fifo_depth"] = depth
    fifos = 3 * 8 + 2 * 1 + 5 * 8 + 7 * 8 * 7 + 11 * 8 + 1 * 8 + 0 * 8 + 4 * 32
    plan = build_plan(g)
    assert sum(block_resources(b).regs for b in plan.blocks if b["kind"] == "fifo") == fifos
    want = _UART + _answer(plan)
    for b in plan.blocks:
        want = want + block_resources(b)
    assert design_resources(g) == want
    assert estimate_design_luts(g) == round(want.luts + want.regs)
    # a fork: a LUT and its flip-flop per consumer; an add join: compares and its register
    fork = block_resources(plan.block("conv0:fork"))
    assert (fork.luts, fork.ffs, fork.regs) == (2, 2, 0)
    add = block_resources(plan.block("add0:add"))
    assert add.regs == 8 and add.luts == estimate_join_luts(g.op("add0")) - 8


def test_the_families_count_registers_as_nextpnr_does():
    """ECP5 slices pack a holding register beside any LUT (TRELLIS_COMB counts LUTs, scaled by
    the packer's extra cells); iCE40 gives it a logic cell of its own."""
    g = ChooseFolding().apply(residual_net())
    res = design_resources(g)
    ice, ecp = FAMILY_CELLS["ice40up"], FAMILY_CELLS["ecp5"]
    assert estimate_design_luts(g, "ice40up") == round(ice[0] * res.luts + ice[1] * res.regs)
    assert estimate_design_luts(g, "ecp5") == round(ecp[0] * res.luts + ecp[1] * res.regs)
    assert ecp[1] == 0 and ice[1] == 1
    # deeper FIFOs: more iCE40 cells, the same ECP5 count
    deeper = g.copy()
    deeper.attrs("add0")["fifo_depth"] = [40, 40]
    assert estimate_design_luts(deeper, "ecp5") == estimate_design_luts(g, "ecp5")
    assert estimate_design_luts(deeper, "ice40up") > estimate_design_luts(g, "ice40up")


@pytest.mark.parametrize("short, width", [("bits", 8), ("popcount", 8 * 4)])
def test_a_join_has_a_fifo_per_port(short, width):
    """One more place in add0's main-port FIFO costs a token of 8 popcounts of bit_length(72) =
    7 bits; one more in its shortcut FIFO a token of 8 bits, or of 8 popcounts of
    bit_length(8) = 4 bits."""
    g = ChooseFolding().apply(residual_net(short=short))
    g.attrs("add0")["fifo_depth"] = [2, 2]
    base = estimate_design_luts(g)
    g.attrs("add0")["fifo_depth"] = [3, 2]
    assert estimate_design_luts(g) - base == 8 * 7
    g.attrs("add0")["fifo_depth"] = [2, 3]
    assert estimate_design_luts(g) - base == width
    g.attrs("add0")["fifo_depth"] = [0, 0]
    assert base - estimate_design_luts(g) == 2 * (8 * 7 + width)


@pytest.mark.parametrize("make", [residual_net, side_branch_net, concat_net])
def test_design_brams_of_a_dag(make):
    """The line buffers of every window generator (convolutions, max-pools: kh - 1 rows of the
    padded width, in logic up to 64 bits) and the matrix stages' ROMs and input RAMs; joins,
    forks and FIFOs take none."""
    g = ChooseFolding().apply(make())
    counts = transfers_per_vector(g)
    want = 0
    for name, op in g:
        if op.kind in ("conv", "maxpool"):
            c, h, w = op.in_shape
            (kh, _), pw = op.kernel, getattr(op, "padding", (0, 0))[1]
            word = (kh - 1) * c * getattr(op, "input_bits", 1)
            if word * (w + 2 * pw) > 64:
                want += ram_blocks(word, w + 2 * pw)
        if name in matrix_ops(g):
            fold = g.attrs(name)["fold"]
            want += estimate_brams(op, fold["pe"], fold["simd"], counts[name])
    assert estimate_design_brams(g) == want > 0


@pytest.mark.parametrize("make", [residual_net, side_branch_net, concat_net])
def test_fit_to_board_folds_every_branch(make):
    profile = get_board("icebreaker")
    fit = fit_to_board(make(), profile)
    assert all(fit.attrs(n).get("fold") for n in matrix_ops(fit))
    assert estimate_design_luts(fit) <= HEADROOM * profile.luts
    slow, at, _ = fit_board(make(), profile, fps=1000)
    assert max(pipeline_cycles(slow).values()) <= at.clock_mhz * 1e6 / 1000
    assert estimate_design_luts(slow) <= estimate_design_luts(fit)


# -- the estimates read the hardware plan --------------------------------------------------------

def table_cnn():
    """An 8-bit input through a table, four pixels a transfer (a serializer in front of the
    window generator), a 3x3 convolution to 4 channels, a 2x2 max-pool and the scores."""
    levels = np.round(np.linspace(-40, 200, 256)).astype(int)
    model = nn.Sequential(InputQuant(8, levels=levels),
                          BinaryConv2d(1, 4, 3, padding=1, pad_value=0.0), nn.BatchNorm2d(4),
                          BinaryActivation(), nn.MaxPool2d(2), nn.Flatten(), BinaryLinear(64, 10))
    graph = bnnforge.lower(randomize_model(model, 1), (1, 8, 8))
    return ChooseFolding(overrides={"input": (4, 1)}).apply(graph)


def mst_mlp():
    """small_mlp at 4 cycles per frame with fc0 and fc1 as MST layers (the cost model now
    prefers dense lanes there: built by hand): the input's 16 pixels a transfer are gathered by
    a deserializer in front of fc0's MST layer."""
    graph = bnnforge.lower(randomize_model(small_mlp(1), 3), (1, 8, 8))
    folded = OrderChannelsByMST().apply(ChooseFolding(target_cycles=4).apply(graph))
    for name in ("fc0", "fc1"):
        op = folded.op(name)
        folded.attrs(name)["fold"] = {"pe": op.channels, "simd": op.k, "mst": True}
    return folded


PLANNED = [table_cnn, mst_mlp, lambda: ChooseFolding().apply(residual_net(short="popcount")),
           lambda: ChooseFolding().apply(concat_net())]


def test_every_plan_kind_has_one_cost_rule():
    assert set(COSTS) == set(KINDS)
    with pytest.raises(ValueError, match=r"^no cost rule for block kind 'gearbox' \(block "
                                         r"'x:gearbox'\); kinds: fifo, threshold, table, "):
        block_luts({"name": "x:gearbox", "kind": "gearbox"})
    with pytest.raises(ValueError, match=r"^no cost rule for block kind None"):
        block_brams({})


def test_the_design_estimate_is_the_sum_of_its_blocks():
    """Logic: the UART, the answer multiplexer and every block's rule; block RAM: every
    block's rule. The graphs use every kind."""
    kinds = set()
    for make in PLANNED:
        g = make()
        plan = build_plan(g)
        kinds |= {b["kind"] for b in plan.blocks}
        want = _UART + _answer(plan)
        for b in plan.blocks:
            want = want + block_resources(b)
        assert design_resources(g) == want
        assert estimate_design_luts(g) == round(want.luts + want.regs)
        assert abs(estimate_design_luts(g) - sum(map(block_luts, plan.blocks)) - round(
            _UART.luts + _UART.regs + _answer(plan).luts + _answer(plan).regs)) <= len(plan)
        assert estimate_design_brams(g) == sum(map(block_brams, plan.blocks))
    assert kinds == set(KINDS)


def test_design_estimate_of_a_chain_adds_up():
    """The chain of table_cnn: the FIFOs (2 tokens of 4 bytes in front of the table and of the
    serializer, 2 x 4 bits in front of the pool and the scores) as registers, the table's 256
    LUT4s per byte lane, the window generators (48 LUT4s and the pad multiplexer; held columns
    and a window of registers; the pool's line buffers, 8 x 4 bits, in logic at 1.5 cells a
    bit, conv0's, 2 x 10 bytes, in block RAM), the matrix stages (16 transfers a vector into
    the score unit); the serializer and the threshold cost nothing."""
    g = table_cnn()
    assert g.pixels_per_transfer() == 4
    plan = build_plan(g)
    by_kind = {}
    for b in plan.blocks:
        r = by_kind.get(b["kind"], Resources())
        by_kind[b["kind"]] = r + block_resources(b)
    assert by_kind["fifo"] == Resources(regs=2 * 32 + 2 * 32 + 2 * 4 + 2 * 4)
    assert by_kind["table"] == Resources(luts=TABLE_CELLS_PER_BYTE * 4)
    assert by_kind["window"] == Resources(luts=48 + 8, regs=8 * (2 * 3 + 9))
    assert by_kind["maxpool"] == Resources(luts=48 + 4 + 48, regs=4 * (1 * 2 + 4))
    assert by_kind["serializer"] == Resources()
    assert transfers_per_vector(g)["scores"] == 16
    matrices = sum(_stage_luts(g, n) for n in matrix_ops(g))
    assert abs(family_cells(by_kind["mvtu"] + by_kind["score"]) - matrices) <= 1
    counts = transfers_per_vector(g)
    roms = sum(estimate_brams(g.op(n), g.attrs(n)["fold"]["pe"], g.attrs(n)["fold"]["simd"],
                              counts[n]) for n in matrix_ops(g))
    assert estimate_design_brams(g) == ram_blocks(2 * 8, 10) + roms


def test_an_mst_layer_is_priced_by_its_tree():
    """fc0 and fc1 are MST layers: estimate_mst_luts of their trees, no block RAM; fc0's
    deserializer (4 transfers of 16 bits) and the input threshold cost nothing."""
    g = mst_mlp()
    plan = build_plan(g)
    costs = {b["name"]: (block_luts(b), block_brams(b)) for b in plan.blocks}
    for name in ("fc0", "fc1"):
        assert g.attrs(name)["fold"].get("mst")
        assert costs[f"{name}:mst"] == (estimate_mst_luts(g.op(name), g.attrs(name)["mst"]), 0)
    assert costs["fc0:deserializer"] == costs["input:threshold"] == (0, 0)
    assert plan.block("fc0:deserializer")["count"] == 4


def test_the_estimates_refuse_what_the_plan_refuses():
    """A stage without a folding (the older estimate's error), thresholds not folded, and an
    input stream of several pixels a transfer that forks (the hardware forks one pixel a
    transfer)."""
    for estimate in (estimate_design_luts, estimate_design_brams):
        with pytest.raises(FoldingError, match=r"^stage 'conv0' has no folding; run "
                                               r"ChooseFolding first$"):
            estimate(residual_net())
        raw = bnnforge.lower(randomize_model(small_mlp(1), 3), (1, 8, 8), fold=False)
        with pytest.raises(PlanError, match=r"^stage 'fc0' is not folded; run FoldThresholds$"):
            estimate(ChooseFolding().apply(raw))
        with pytest.raises(PlanError, match=r"^stage 'input' feeds 2 stages but its stream "
                                            r"carries several pixels a transfer; fold the input "
                                            r"at pixels_per_transfer = 1$"):
            estimate(ChooseFolding().apply(side_branch_net(ppt=4)))


def test_fit_to_board_keeps_a_forked_input_at_one_pixel_a_transfer():
    """forked_input_net is as fast as its input stream: ChooseFolding does not widen an input
    that forks (the plan would refuse it), so the fastest fit takes 64 cycles a frame."""
    fit = fit_to_board(forked_input_net(), "ulx3s-85f")
    assert fit.pixels_per_transfer() == 1
    assert max(pipeline_cycles(fit).values()) == 64
    assert estimate_design_luts(fit) <= HEADROOM * get_board("ulx3s-85f").luts
