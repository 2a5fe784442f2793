"""Timing-aware compile: the per-family Fmax model and the clock fit_board picks with a folding."""

import math

import pytest

import bnnforge
from bnnforge.boards import estimate_design_luts, get_board
from bnnforge.boards.fit import fit_board
from bnnforge.boards.timing import FMAX_MODELS, MARGIN, FmaxModel, design_clock, predict_fmax
from bnnforge.compiler.cycles import pipeline_cycles
from bnnforge.nn import archs
from conftest import randomize_model

MNIST = (1, 28, 28)


@pytest.fixture(scope="module")
def tfc():
    return bnnforge.lower(randomize_model(archs.build("tfc", MNIST, 10), 1), MNIST, name="tfc")


def cycles(graph):
    return max(pipeline_cycles(graph).values())


def test_model_interpolates_and_declines():
    model = FmaxModel("x", ((0.1, 100.0), (0.5, 60.0)), 200.0, "test")
    assert model.predict(0.0) == model.predict(0.1) == 100.0
    assert model.predict(0.3) == pytest.approx(80.0)
    assert model.predict(0.5) == 60.0
    assert model.predict(0.7) == pytest.approx(40.0)        # along the last slope
    assert model.predict(5.0) == pytest.approx(20.0)        # never below a fifth
    for family, m in FMAX_MODELS.items():                   # every model falls as a device fills
        values = [m.predict(u / 10) for u in range(11)]
        assert all(a >= b for a, b in zip(values, values[1:], strict=False)), family


@pytest.mark.parametrize("board", ["icebreaker", "ulx3s-85f"])
def test_design_clock_is_a_pll_clock_under_the_margin(board):
    profile = get_board(board)
    for luts in (500, 2000, int(0.8 * profile.luts)):
        at, fmax = design_clock(profile, luts)
        assert fmax == predict_fmax(profile, luts)
        margin = FMAX_MODELS[profile.family].margin
        assert margin == MARGIN
        assert at.clock_mhz <= margin * fmax + 1e-9
        assert at.clock_mhz <= FMAX_MODELS[profile.family].ceiling_mhz
        # a clock the PLL makes, just under a whole MHz at most, and not far below the margin
        assert at.clock_mhz == get_board(board).with_clock(at.clock_mhz).clock_mhz
        assert math.floor(margin * fmax) - 2 <= at.clock_mhz <= math.floor(margin * fmax)


def test_fit_board_picks_folding_and_clock_together(tfc):
    graph, profile, timing = fit_board(tfc, "ulx3s-85f", fps=200_000)
    luts = estimate_design_luts(graph, "ecp5")      # in nextpnr's count for the family
    assert timing["clock_from"] == "fmax model"
    assert profile.clock_mhz == timing["clock_mhz"] == design_clock(get_board("ulx3s-85f"),
                                                                     luts)[0].clock_mhz
    assert timing["predicted_fmax_mhz"] == round(predict_fmax(profile, luts), 1)
    # frames/s counted at the clock the design gets
    assert profile.clock_mhz * 1e6 / cycles(graph) >= 200_000
    assert graph.meta["pipeline"] == "ecp5"
    # a faster target gets a bigger design, never a faster clock
    big, fast, _ = fit_board(tfc, "ulx3s-85f", fps=1_000_000)
    assert estimate_design_luts(big, "ecp5") > luts and fast.clock_mhz <= profile.clock_mhz
    assert fast.clock_mhz * 1e6 / cycles(big) >= 1_000_000


def test_a_given_clock_or_an_oscillator_is_kept(tfc):
    _, profile, timing = fit_board(tfc, "ulx3s-85f", fps=100_000, clock_mhz=50)
    assert profile.clock_mhz == 50 and timing["clock_from"] == "given"
    graph, profile, timing = fit_board(tfc, "ice40-hx8k", fps=2000)
    assert profile.clock_mhz == 12 and timing["clock_from"] == "oscillator"
    assert graph.meta["pipeline"] == "ice40"


def test_a_design_with_a_sliding_window_is_capped():
    # cnv's critical path is the window handshake, whatever its size (ECP5: measured 119.5)
    profile = get_board("ulx3s-85f")
    cap = FMAX_MODELS["ecp5"].window_mhz
    assert cap is not None and predict_fmax(profile, 2000) > cap
    assert predict_fmax(profile, 2000, windows=True) == cap
    at, fmax = design_clock(profile, 2000, windows=True)
    assert fmax == cap and at.clock_mhz <= MARGIN * cap
    assert predict_fmax(get_board("icebreaker"), 2000, windows=True) == \
        predict_fmax(get_board("icebreaker"), 2000)          # none measured on iCE40


def test_fit_board_clocks_a_convolution_under_the_window_cap():
    cnv = bnnforge.lower(randomize_model(archs.build("cnv", (3, 32, 32), 10), 1), (3, 32, 32),
                         name="cnv")
    graph, profile, timing = fit_board(cnv, "ulx3s-85f", fps=20_000)
    assert timing["predicted_fmax_mhz"] == FMAX_MODELS["ecp5"].window_mhz
    assert profile.clock_mhz <= MARGIN * FMAX_MODELS["ecp5"].window_mhz
    assert profile.clock_mhz * 1e6 / cycles(graph) >= 20_000
