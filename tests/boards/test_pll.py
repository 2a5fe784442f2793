"""PLL dividers (icepll's and ecppll's searches in Python) and the clock of a board profile."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

import bnnforge
from bnnforge.boards import (
    BOARDS,
    BoardDesign,
    PLLError,
    ecp5_pll,
    get_board,
    ice40_pll,
)
from bnnforge.boards.pll import ECP5_PFD, ECP5_VCO, ICE40_PFD, ICE40_VCO
from bnnforge.boards.toolchain import BitstreamError, check_timing
from bnnforge.compiler.folding import ChooseFolding
from conftest import randomize_model, small_mlp

pytestmark = pytest.mark.filterwarnings("ignore::amaranth.hdl.UnusedElaboratable")

BIN = Path(sys.executable).parent


@pytest.mark.parametrize("f_out", [16.5, 20, 24, 30, 33.3, 36, 48, 64, 100, 200])
def test_ice40_pll_is_legal_and_within_one_percent(f_out):
    pll = ice40_pll(12, f_out)
    assert abs(pll.f_out - f_out) <= 0.01 * f_out
    assert 0 <= pll.divr <= 15 and 0 <= pll.divf <= 127 and 1 <= pll.divq <= 6
    assert ICE40_PFD[0] <= pll.f_pfd <= ICE40_PFD[1] and ICE40_VCO[0] <= pll.f_vco <= ICE40_VCO[1]
    assert pll.f_out == pytest.approx(12 * (pll.divf + 1) / (pll.divr + 1) / 2 ** pll.divq)
    assert pll.filter_range == 1                         # 12 MHz phase detector
    assert pll.parameters()["FEEDBACK_PATH"] == "SIMPLE"


@pytest.mark.parametrize("f_out", [10, 33.3, 40, 50, 75, 100, 125, 200, 400])
def test_ecp5_pll_is_legal_and_within_one_percent(f_out):
    pll = ecp5_pll(25, f_out)
    assert abs(pll.f_out - f_out) <= 0.01 * f_out
    assert 1 <= pll.clki_div <= 128 and 1 <= pll.clkfb_div <= 80 and 1 <= pll.clkop_div <= 128
    assert ECP5_PFD[0] <= pll.f_pfd <= ECP5_PFD[1] and ECP5_VCO[0] <= pll.f_vco <= ECP5_VCO[1]
    assert pll.f_out == pytest.approx(25 * pll.clkfb_div / pll.clki_div)
    assert pll.f_vco == pytest.approx(pll.f_out * pll.clkop_div)
    assert pll.clkop_cphase == pll.clkop_div // 2


def _tool(name, *args):
    out = subprocess.run([str(BIN / name), *args], capture_output=True, text=True, check=True)
    return out.stdout + out.stderr


@pytest.mark.parametrize("f_in, f_out", [(12, 24), (12, 30), (12, 33.3), (12, 100), (30, 17)])
def test_ice40_pll_matches_icepll(f_in, f_out):
    text = _tool("yowasp-icepll", "-i", str(f_in), "-o", str(f_out))
    divs = {k: int(v) for k, v in re.findall(r"(DIVR|DIVF|DIVQ|FILTER_RANGE):\s+(\d+)", text)}
    pll = ice40_pll(f_in, f_out)
    assert (pll.divr, pll.divf, pll.divq, pll.filter_range) == \
        (divs["DIVR"], divs["DIVF"], divs["DIVQ"], divs["FILTER_RANGE"])


@pytest.mark.parametrize("f_out", [50, 75, 100, 33.3])
def test_ecp5_pll_matches_ecppll(f_out):
    text = _tool("yowasp-ecppll", "-i", "25", "-o", str(f_out))
    ref = int(re.search(r"Refclk divisor: (\d+)", text)[1])
    fb = int(re.search(r"Feedback divisor: (\d+)", text)[1])
    op = int(re.search(r"clkout0 divisor: (\d+)", text)[1])
    pll = ecp5_pll(25, f_out)
    assert (pll.clki_div, pll.clkfb_div, pll.clkop_div) == (ref, fb, op)


def test_pll_errors_are_explained():
    with pytest.raises(PLLError, match=r"^output clock of 12 MHz is outside the iCE40 PLL's "
                                       r"range of 16-275 MHz$"):
        ice40_pll(12, 12)
    with pytest.raises(PLLError, match=r"^input clock of 5 MHz is outside the ECP5 PLL's range "
                                       r"of 8-400 MHz$"):
        ecp5_pll(5, 50)
    with pytest.raises(PLLError, match=r"^the iCE40 PLL cannot make 20 MHz from 12 MHz within "
                                       r"0\.1%: the nearest is 19\.88 MHz; choose 19\.88 MHz$"):
        ice40_pll(12, 20, tolerance=0.001)
    with pytest.raises(TypeError, match="output clock must be a number of MHz, not '24'"):
        ice40_pll(12, "24")


def test_profiles_run_from_the_pll():
    ice, ecp, hx = get_board("icebreaker"), get_board("ulx3s-85f"), get_board("ice40-hx8k")
    assert ice.osc_mhz == 12 and ice.clock_mhz > 24 and ice.uses_pll
    assert ice.clock_source.startswith("SB_PLL40_PAD from the 12 MHz oscillator to ")
    assert ecp.osc_mhz == 25 and ecp.clock_mhz >= 50 and ecp.uses_pll
    assert ecp.clock_source.startswith("EHXPLLL from the 25 MHz oscillator to ")
    assert not hx.uses_pll and hx.clock_mhz == 12
    for board in BOARDS.values():
        if board.uses_pll:
            assert board.pll_settings().f_out == board.clock_mhz


def test_with_clock_overrides_the_design_clock():
    ice = get_board("icebreaker")
    assert ice.with_clock(None) is ice
    fast = ice.with_clock(36)
    assert fast.clock_mhz == 36 and "DIVF=47 DIVQ=4" in fast.clock_source
    assert fast.oscillator_mhz == 12 and fast.name == "icebreaker"
    assert ice.with_clock(33.3).clock_mhz == 33.0                  # what the PLL makes
    slow = ice.with_clock(12)
    assert not slow.uses_pll and slow.clock_source.startswith("12 MHz oscillator (clk12")
    assert get_board("ice40-hx8k").with_clock(24).clock_source.startswith("SB_PLL40_CORE")
    with pytest.raises(PLLError, match="output clock of 8 MHz is outside the iCE40 PLL's range"):
        ice.with_clock(8)
    with pytest.raises(ValueError, match="clock_mhz must be a positive number of MHz, not -3"):
        ice.with_clock(-3)


@pytest.fixture(scope="module")
def mlp():
    return ChooseFolding().apply(bnnforge.lower(randomize_model(small_mlp(), 3), (1, 8, 8)))


@pytest.mark.parametrize("board, primitive, params", [
    ("icebreaker", "SB_PLL40_PAD", ["DIVF", "DIVQ", "FILTER_RANGE"]),
    ("ice40-hx8k", "SB_PLL40_CORE", ["DIVR", "DIVF"]),
    ("ulx3s-85f", "EHXPLLL", ["CLKI_DIV", "CLKFB_DIV", "CLKOP_DIV"]),
])
def test_board_design_instantiates_the_pll(tmp_path, mlp, board, primitive, params):
    profile = get_board(board).with_clock(36 if board == "ice40-hx8k" else None)
    design = BoardDesign(mlp, profile)
    assert design.divisor == round(profile.clock_mhz * 1e6 / 115200)   # UART at the PLL clock
    plan = profile.platform_class()().prepare(design, "top")
    rtlil = plan.files["top.il"]
    rtlil = rtlil if isinstance(rtlil, str) else rtlil.decode()
    assert f"cell \\{primitive} " in rtlil
    settings = profile.pll_settings().parameters()
    for name in params:
        assert re.search(rf"parameter \\{name} {settings[name]}\b", rtlil), name
    constraints = "".join(str(v) for k, v in plan.files.items() if k.endswith((".pcf", ".lpf")))
    assert "pll_clk" in constraints                   # the PLL output carries the constraint


def test_board_design_without_pll_uses_the_oscillator(mlp):
    profile = get_board("icebreaker").with_clock(12)
    plan = profile.platform_class()().prepare(BoardDesign(mlp, profile), "top")
    rtlil = plan.files["top.il"]
    rtlil = rtlil if isinstance(rtlil, str) else rtlil.decode()
    assert "SB_PLL40" not in rtlil and "SB_GB_IO" in rtlil


def test_missed_clock_suggests_a_slower_clock():
    result = {"board": "icebreaker", "fmax_mhz": 27.4, "clock_mhz": 36.0}
    with pytest.raises(BitstreamError, match=r"reaches 27\.4 MHz on the iCE40UP5K, below the "
                       r"36 MHz clock of icebreaker: the bitstream would not work\. Build at a "
                       r"lower clock \(clock_mhz=24; clock_mhz=12 runs from the oscillator "
                       r"without PLL\), or fold more \(a lower --fps"):
        check_timing(result, "icebreaker")
    with pytest.raises(BitstreamError, match=r"reaches 12\.5 MHz .* would not work\. Build at "
                       r"clock_mhz=12 \(the oscillator, without PLL\), or fold more"):
        check_timing({"fmax_mhz": 12.5, "clock_mhz": 30.0}, "icebreaker")
    with pytest.raises(BitstreamError, match=r"reaches 11\.0 MHz .* would not work\. Fold more"):
        check_timing({"fmax_mhz": 11.0, "clock_mhz": 12.0}, "ice40-hx8k")
