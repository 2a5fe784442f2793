"""fit_to_board: the fastest (or cheapest for a frame rate) folding that fits a board."""

import math
import re

import pytest

import bnnforge
from bnnforge.boards import HEADROOM, estimate_design_luts, fit_to_board, get_board
from bnnforge.boards.estimate import estimate_design_brams
from bnnforge.compiler.cycles import matrix_ops, pipeline_cycles
from bnnforge.compiler.folding import ChooseFolding
from bnnforge.nn import archs
from conftest import randomize_model

MNIST = (1, 28, 28)


def lowered(arch):
    return bnnforge.lower(randomize_model(archs.build(arch, MNIST, 10), 1), MNIST, name=arch)


@pytest.fixture(scope="module")
def tfc():
    return lowered("tfc")


def cycles(graph):
    return max(pipeline_cycles(graph).values())


@pytest.mark.parametrize("board", ["ulx3s-85f", "ice40-hx8k"])
def test_fastest_folding_that_fits(tfc, board):
    profile = get_board(board)
    fit = fit_to_board(tfc, board)
    luts = estimate_design_luts(fit, profile.family)
    assert luts <= HEADROOM * profile.luts
    assert all(fit.attrs(n).get("fold") for n in matrix_ops(fit))
    # exactly what ChooseFolding gives at that target (pixels_per_transfer included)
    board_graph = tfc.copy()
    board_graph.meta.update(fit.meta)            # the family's pipeline, which the cost counts
    assert fit.meta["pipeline"] == {"ecp5": "ecp5"}.get(profile.family, "ice40")
    again = ChooseFolding(target_cycles=cycles(fit)).apply(board_graph)
    assert {n: dict(again.attrs(n)) for n in again.order()} == \
        {n: dict(fit.attrs(n)) for n in fit.order()}
    # and nothing faster fits: the next faster balanced folding is over the budget
    faster = sorted({c for c in range(1, cycles(fit))}, reverse=True)[:50]
    for target in faster:
        try:
            trial = ChooseFolding(target_cycles=target).apply(board_graph)
        except ValueError:
            continue
        if cycles(trial) < cycles(fit):     # over the logic or the block RAM
            assert estimate_design_luts(trial, profile.family) > HEADROOM * profile.luts or \
                estimate_design_brams(trial) > profile.bram_blocks
            break


def test_fps_gives_the_cheapest_folding_that_meets_it(tfc):
    fit = fit_to_board(tfc, "ice40-hx8k", fps=2000)
    assert cycles(fit) <= 12e6 / 2000
    fastest = fit_to_board(tfc, "ice40-hx8k")
    assert estimate_design_luts(fit) < estimate_design_luts(fastest)
    # at a faster clock the same frame rate needs no more hardware
    faster = fit_to_board(tfc, "ice40-hx8k", fps=2000, clock_mhz=48)
    assert cycles(faster) <= 48e6 / 2000 and cycles(faster) >= cycles(fit)
    assert estimate_design_luts(faster) <= estimate_design_luts(fit)
    quick = fit_to_board(tfc, "ice40-hx8k", fps=20000, clock_mhz=48)
    assert cycles(quick) <= 48e6 / 20000 < cycles(fit)


def test_model_too_big_for_the_board():
    with pytest.raises(ValueError, match=r"^lfc needs ~[\d,]+ LUTs even fully serial; "
                                         r"icebreaker \(iCE40UP5K\) has 5,280 LUTs, 4,224 after "
                                         r"20% left for routing: choose a smaller model or "
                                         r"ulx3s-85f$"):
        fit_to_board(lowered("lfc"), "icebreaker")


def test_fps_out_of_reach(tfc):
    with pytest.raises(ValueError, match=r"^1e\+07 frames/s needs at most 7 cycles per frame at "
                                         r"75 MHz; tfc takes at least \d+ even fully parallel "
                                         r"\(the streaming stages\): at most [\d,]+ frames/s on "
                                         r"ulx3s-85f at this clock; lower --fps or raise the "
                                         r"clock$"):
        fit_to_board(tfc, "ulx3s-85f", fps=1e7, clock_mhz=75)


def test_fps_that_does_not_fit(tfc):
    with pytest.raises(ValueError, match=r"^tfc at 100,000 frames/s needs ~[\d,]+ LUTs; "
                                         r"ice40-hx8k \(iCE40HX8K\) has 7,680 LUTs, 6,144 after "
                                         r"20% left for routing: at most ([\d,]+) frames/s fits "
                                         r"at 12 MHz \(--fps \d+\), or choose a bigger board "
                                         r"\(ulx3s-85f\)$") as info:
        fit_to_board(tfc, "ice40-hx8k", fps=100_000)
    most = int(re.search(r"at most ([\d,]+) frames/s", str(info.value))[1].replace(",", ""))
    fit_to_board(tfc, "ice40-hx8k", fps=most)                  # the suggestion fits
    assert most == math.floor(12e6 / cycles(fit_to_board(tfc, "ice40-hx8k")))


def similar_rows(arch, shape=MNIST):
    """``arch`` with hidden weight rows that are near copies of one row (as MST training gives)."""
    import torch

    from bnnforge.nn import BinaryLinear

    model = randomize_model(archs.build(arch, shape, 10), 1)
    hidden = [m for m in model.modules() if isinstance(m, BinaryLinear)][1:-1]
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for layer in hidden:
            base = torch.rand(layer.weight.shape[1], generator=gen) - 0.5
            flips = torch.rand(layer.weight.shape, generator=gen) < 0.01
            layer.weight.copy_(torch.where(flips, -base, base).expand_as(layer.weight))
    return bnnforge.lower(model, shape, name=arch)


#: an 8x8 input: the fastest folding streams it in 4 cycles, so the hidden layers take a
#: vector every few cycles, where an MST layer (a vector a cycle, weights in the logic) beats
#: dense lanes on rows this similar; on a 784-pixel input the fastest fit takes 49 cycles a
#: frame and dense lanes at that rate cost less than a whole MST layer
SMALL = (1, 8, 8)


def test_mst_layers_on_a_board():
    """--board --mst: MST-compressed layers where cheaper, costed as such, in the fastest fit."""
    from bnnforge.compiler.costs import estimate_luts, estimate_mst_luts

    sfc = similar_rows("sfc", SMALL)
    profile = get_board("ulx3s-85f")
    dense = fit_to_board(sfc, profile)
    fit = fit_to_board(sfc, profile, mst=True)
    mst = [n for n in matrix_ops(fit) if fit.attrs(n)["fold"].get("mst")]
    assert mst, "no stage became an MST layer at the fastest folding"
    assert cycles(fit) <= cycles(dense)
    assert estimate_design_luts(fit) <= HEADROOM * profile.luts
    for name in mst:
        op, attr = fit.op(name), fit.attrs(name)
        assert attr["fold"]["pe"] == op.channels and attr["fold"]["simd"] == op.k
        assert estimate_mst_luts(op, attr["mst"]) < estimate_luts(op, op.channels, op.k)
    # the design estimate counts those stages as MST layers, not as dense fully parallel ones
    as_dense = fit.copy()
    for name in mst:
        as_dense.attrs(name)["fold"] = {"pe": fit.op(name).channels, "simd": fit.op(name).k}
    assert estimate_design_luts(fit) < estimate_design_luts(as_dense)
    # a depth bound reaches the trees, and the folded graph computes the same scores
    bounded = fit_to_board(sfc, profile, mst=True, mst_max_depth=3)
    assert all(max(bounded.attrs(n)["mst"]["depth"]) <= 3 for n in matrix_ops(bounded)
               if bounded.attrs(n)["fold"].get("mst"))
    from conftest import random_frames

    x = random_frames(SMALL, 64)
    assert (bnnforge.reference(bounded, x) == bnnforge.reference(sfc, x)).all()
