"""bnnforge.boards: board profiles, PLL clocks, board-aware folding, design estimates, the board
top and its build into a bitstream, report parsing."""

from .estimate import estimate_design_brams, estimate_design_luts
from .fit import HEADROOM, fit_to_board
from .pll import ECP5PLL, ICE40PLL, PLLError, ecp5_pll, ice40_pll, pll_for
from .profiles import (
    BOARDS,
    DEFAULT_CLOCKS_MHZ,
    ENERGY_KEYS,
    ENERGY_METHOD,
    BoardProfile,
    get_board,
)
from .toolchain import BitstreamError, build_bitstream, check_timing, tool_environment
from .top import BoardDesign

__all__ = [
    "BOARDS",
    "DEFAULT_CLOCKS_MHZ",
    "ECP5PLL",
    "ENERGY_KEYS",
    "ENERGY_METHOD",
    "HEADROOM",
    "ICE40PLL",
    "BitstreamError",
    "BoardDesign",
    "BoardProfile",
    "PLLError",
    "build_bitstream",
    "check_timing",
    "ecp5_pll",
    "estimate_design_brams",
    "estimate_design_luts",
    "fit_to_board",
    "get_board",
    "ice40_pll",
    "pll_for",
    "tool_environment",
]
