"""Planning estimates of a whole board design: logic cells and block RAMs before synthesis.

The accelerator is priced block by block: :func:`~bnnforge.compiler.plan.build_plan` lists its
blocks (the FIFO in front of every input port, the input table, window generators and max-pools,
matrix units, MST layers, forks and joins) and :data:`~bnnforge.compiler.costs.COSTS` holds one
cost rule per block kind. This module adds what the board puts around the accelerator: the UART
and the answer shift register. :func:`_suggestion` turns an estimate that does not fit into a fix
(a LUT budget, a frame rate, a bigger board).
"""

from __future__ import annotations

import math

from ..compiler.costs import block_brams, block_luts
from ..compiler.cycles import matrix_ops, pipeline_cycles
from ..compiler.folding import ChooseFolding, FoldingError
from ..compiler.ir import DataflowGraph
from ..compiler.plan import Plan, build_plan
from .profiles import BOARDS, BoardProfile

__all__ = ["LUT_CALIBRATION", "estimate_design_brams", "estimate_design_luts"]

#: UART receiver and transmitter, pixel assembler and control (iCE40 logic cells).
_UART_LUTS = 150

#: What nextpnr counts per estimated logic cell, by family (``luts_used``: ICESTORM_LC on
#: iCE40, TRELLIS_COMB on ECP5), from our builds with the family's pipeline: iCEBreaker tfc at
#: 30k-100k frames/s 1.06-1.08; ULX3S-85F 0.61 (tfc at 200k frames/s), 0.66 (sfc at 535k
#: and 684k, weights in block RAM) and 1.52 (tfc at 1M, weights in LUT ROMs). The estimate
#: counts a register bit as a cell, which an ECP5 slice packs beside any LUT, and a LUT ROM at
#: 16 bits a LUT4: one factor cannot fit both kinds of design, so ECP5 takes 0.8 (every build
#: above within -20%..+32%; the 20% routing headroom covers the underestimate). Since the
#: half-adder tree level the CI's ULX3S tfc at 200k frames/s (562 cycles, 7 DP16KD, 2,798 FFs)
#: places in 2,008 TRELLIS_COMB against 2,844 estimated: +42%. Counting LUTs and flip-flops
#: apart (max(LUTs, FFs / 2) on ECP5) is the open fix.
LUT_CALIBRATION = {"ice40up": 1.08, "ice40hx": 1.08, "ecp5": 0.8}


def _plan(graph: DataflowGraph) -> Plan:
    """The hardware plan of ``graph``; :class:`~bnnforge.compiler.folding.FoldingError` when a
    matrix stage has no folding yet."""
    for name in matrix_ops(graph):
        if not graph.attrs(name).get("fold"):
            raise FoldingError(f"stage {name!r} has no folding; run ChooseFolding first")
    return build_plan(graph)


def _answer_cells(plan: Plan) -> int:
    """The board top's answer shift register: every score in whole bytes, and the class byte."""
    return plan.classes * 8 * -(-plan.score_width // 8) + 8


def estimate_design_luts(graph: DataflowGraph, family: str | None = None) -> int:
    """Rough logic-cell (LUT4 + FF) count of the board design; with ``family``, scaled to what
    nextpnr reports for that FPGA family (:data:`LUT_CALIBRATION`).

    The sum of :func:`~bnnforge.compiler.costs.block_luts` over the blocks of
    :func:`~bnnforge.compiler.plan.build_plan` (see :data:`~bnnforge.compiler.costs.COSTS`: a
    FIFO ``depth x width`` bits in front of every input port, window generators, matrix units
    with their small ROMs and input buffers, the score stage's copies of the scores, forks and
    joins), plus the board top's answer shift register and the UART, about 150 cells. One
    register bit is taken as one logic cell. Calibrated on iCE40 builds (chains) against
    nextpnr's ICESTORM_LC count; the fork and join figures are not calibrated yet.

    Raises :class:`~bnnforge.compiler.folding.FoldingError` when a matrix stage has no folding,
    and :class:`~bnnforge.compiler.plan.PlanError` when the graph cannot be built as it stands
    (e.g. thresholds not folded).
    """
    plan = _plan(graph)
    cells = _UART_LUTS + _answer_cells(plan) + sum(block_luts(b) for b in plan.blocks)
    return cells if family is None else round(cells * LUT_CALIBRATION.get(family, 1.0))


def estimate_design_brams(graph: DataflowGraph) -> int:
    """Block RAMs of the board design, in blocks of the graph's ``meta["family"]`` (ECP5:
    DP16KD; iCE40 or none: 4-kbit blocks): the sum of
    :func:`~bnnforge.compiler.costs.block_brams` over the plan's blocks (the window generators'
    line buffers, the matrix units' ROMs in block RAM and input RAMs). FIFOs, forks, joins and
    MST layers are logic (:func:`estimate_design_luts`)."""
    return sum(block_brams(b) for b in _plan(graph).blocks)


def _suggestion(graph: DataflowGraph, profile: BoardProfile) -> str:
    """A LUT budget (--luts) whose folding fits the board, and the frames per second it gives."""
    serial = None
    for share in (0.6, 0.45, 0.3, 0.2, 0.1, 0.05):
        budget = int(profile.luts * share)
        try:
            folded = ChooseFolding(luts=budget).apply(graph)
        except FoldingError:
            continue
        cells = estimate_design_luts(folded)
        serial = cells if serial is None else min(serial, cells)
        if cells <= 0.9 * profile.luts:
            cycles = max(pipeline_cycles(folded).values())
            fps = profile.clock_mhz * 1e6 / cycles
            return (f"recompile for this board with --luts {budget} (about {fps:,.0f} "
                    f"frames/s at {profile.clock_mhz:g} MHz) or --fps {math.floor(fps)}")
    need = f" still needs about {serial:,} logic cells" if serial else " does not fit"
    bigger = sorted((b for b in BOARDS.values() if b.luts > profile.luts), key=lambda b: b.luts)
    fits = [b for b in bigger if serial and 0.9 * b.luts >= serial]
    elsewhere = f" (e.g. {(fits or bigger)[0].name})" if (fits or bigger) else ""
    return (f"even a serial folding{need}, mostly registers holding each layer's input "
            f"vector: choose a smaller model or a bigger board{elsewhere}")
