"""``bnnforge build``: the bitstream of a compiled build folder for a board."""

from __future__ import annotations

import os

from .boards.profiles import get_board
from .boards.toolchain import BitstreamError, build_bitstream
from .buildfolder import read_report, require_build, update_report
from .compiler import load_graph

__all__ = ["build_board"]


def build_board(build_folder: str | os.PathLike, board: str, progress: bool = True,
                baud: int = 115200, clock_mhz: float | None = None) -> dict:
    """Build ``build_folder``'s graph for ``board``; write report.json ``build``; return it.

    The bitstream goes to ``build_folder/bitstream/<board>.bin`` (iCE40) or ``.bit`` (ECP5).
    ``clock_mhz`` overrides the design clock (``None``: the clock ``compile --board`` chose when
    it compiled for this board, else the profile's; made by the PLL from the oscillator; the
    oscillator's own frequency needs no PLL). On a design that does
    not fit or misses the clock, report.json ``build`` records what is known and the error,
    and :class:`~bnnforge.boards.toolchain.BitstreamError` is raised.
    """
    folder = require_build(build_folder)
    if clock_mhz is None:       # the clock the compile chose for this board (timing-aware)
        compiled = read_report(folder).get("compile", {})
        if compiled.get("board") == board:
            clock_mhz = compiled.get("clock_mhz")
    profile = get_board(board).with_clock(clock_mhz)
    graph = load_graph(folder)
    try:
        result = build_bitstream(graph, profile, folder, baud=baud, progress=progress)
    except BitstreamError as exc:
        update_report(folder, "build", {"board": profile.name, "device": profile.device,
                                        "clock_mhz": profile.clock_mhz, **exc.report,
                                        "error": str(exc)})
        raise
    update_report(folder, "build", result)
    return result
