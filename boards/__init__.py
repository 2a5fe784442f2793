"""bnnforge.boards: board profiles, PLL clocks, board-aware folding, the board top's build into
a bitstream, report parsing."""

from .build import BitstreamError, BoardDesign, build_bitstream, estimate_design_luts
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
    "ecp5_pll",
    "estimate_design_luts",
    "fit_to_board",
    "get_board",
    "ice40_pll",
    "pll_for",
]
