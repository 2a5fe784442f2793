"""Board profiles: platforms, pins, budgets and energy coefficients with sources."""

import pytest

from bnnforge.boards import BOARDS, DEFAULT_CLOCKS_MHZ, ENERGY_KEYS, get_board


def test_boards_are_listed():
    assert list(BOARDS) == ["icebreaker", "ulx3s-85f", "ice40-hx8k"]


@pytest.mark.parametrize("name", list(BOARDS))
def test_profile_matches_its_platform(name):
    board = get_board(name)
    assert board.name == name
    platform = board.platform_class()
    assert platform.device == board.device
    assert platform.package == board.package
    clk = platform().lookup(platform.default_clk)
    assert clk.clock.frequency == pytest.approx(board.oscillator_mhz * 1e6)
    assert board.osc_mhz == board.oscillator_mhz
    assert board.clock_mhz == DEFAULT_CLOCKS_MHZ[name]       # the PLL's output, or the oscillator
    assert board.uses_pll == (board.clock_mhz != board.oscillator_mhz)
    uart = platform().lookup(*board.uart)
    assert {s.name for s in uart.ios} >= {"rx", "tx"}
    assert board.family in ("ice40up", "ice40hx", "ecp5")
    assert board.family.startswith("ice40") == (board.platform.split(".")[1].startswith("ice"))
    assert board.luts > 0 and board.ffs == board.luts and board.bram_blocks > 0
    assert board.dsps >= 0 and board.bram_bits in (4096, 18432)


@pytest.mark.parametrize("name", list(BOARDS))
def test_energy_coefficients_have_sources(name):
    board = get_board(name)
    assert tuple(board.energy) == ENERGY_KEYS
    for key in ENERGY_KEYS:
        entry = board.energy[key]
        assert entry["value"] > 0 and entry["unit"]
        # every coefficient says whether it rests on a measurement or is an estimate
        assert entry["basis"] in ("measured", "estimate")
        assert entry["source"].startswith(entry["basis"]) or entry["basis"] == "estimate"
        assert entry["range"][0] <= entry["value"] <= entry["range"][1]
        assert board.coefficient(key) == entry["value"]
    # measurements exist for the iCE40UP5K only; the rest are estimates
    measured = {k for k in ENERGY_KEYS if board.energy[k]["basis"] == "measured"}
    assert bool(measured) == (board.family == "ice40up")
    assert board.as_dict()["energy"]["static_mw"]["source"]


def test_static_power_orders_the_families():
    assert get_board("icebreaker").coefficient("static_mw") < \
        get_board("ice40-hx8k").coefficient("static_mw") < \
        get_board("ulx3s-85f").coefficient("static_mw")


def test_unknown_board():
    with pytest.raises(ValueError, match=r"unknown board 'de10'; choose one of icebreaker, "
                                         r"ulx3s-85f, ice40-hx8k"):
        get_board("de10")
    with pytest.raises(KeyError, match="no energy coefficient 'mac'"):
        get_board("icebreaker").coefficient("mac")
