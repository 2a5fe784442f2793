"""Planning estimates of a whole board design: logic cells and block RAMs before synthesis.

The accelerator is priced block by block: :func:`~bnnforge.compiler.plan.build_plan` lists its
blocks (the FIFO in front of every input port, the input table, window generators and max-pools,
matrix units, MST layers, forks and joins) and :data:`~bnnforge.compiler.costs.COSTS` holds one
cost rule per block kind. This module adds what the board puts around the accelerator: the UART
and the answer's byte multiplexer. :func:`_suggestion` turns an estimate that does not fit into a
fix (a LUT budget, a frame rate, a bigger board).
"""

from __future__ import annotations

import math

from ..compiler.costs import Resources, block_brams, block_resources, family_cells
from ..compiler.cycles import matrix_ops, pipeline_cycles
from ..compiler.folding import ChooseFolding, FoldingError
from ..compiler.ir import DataflowGraph
from ..compiler.plan import Plan, build_plan
from .profiles import BOARDS, BoardProfile

__all__ = ["design_resources", "estimate_design_brams", "estimate_design_luts"]

#: UART receiver and transmitter, pixel assembler and control: LUT4s and registers.
_UART = Resources(luts=110, regs=60)


def _plan(graph: DataflowGraph) -> Plan:
    """The hardware plan of ``graph``; :class:`~bnnforge.compiler.folding.FoldingError` when a
    matrix stage has no folding yet."""
    for name in matrix_ops(graph):
        if not graph.attrs(name).get("fold"):
            raise FoldingError(f"stage {name!r} has no folding; run ChooseFolding first")
    return build_plan(graph)


def _answer(plan: Plan) -> Resources:
    """The board top's answer: a byte counter and a multiplexer over the class byte and every
    score's bytes (read in place from the accelerator's output register), and the byte
    register."""
    answer_bytes = 1 + plan.classes * -(-plan.score_width // 8)
    return Resources(luts=4 * answer_bytes + 8, regs=8)


def design_resources(graph: DataflowGraph) -> Resources:
    """LUT4s and flip-flops of the board design (:class:`~bnnforge.compiler.costs.Resources`):
    the blocks of :func:`~bnnforge.compiler.plan.build_plan` priced by
    :data:`~bnnforge.compiler.costs.COSTS`, the board top's answer multiplexer and the UART."""
    plan = _plan(graph)
    total = _UART + _answer(plan)
    for b in plan.blocks:
        total = total + block_resources(b)
    return total


def estimate_design_luts(graph: DataflowGraph, family: str | None = None) -> int:
    """Logic cells of the board design in nextpnr's count for ``family`` (ICESTORM_LC on
    iCE40, TRELLIS_COMB on ECP5; :func:`~bnnforge.compiler.costs.family_cells` of
    :func:`design_resources`; ``None``: the iCE40 count).

    The sum over the blocks of :func:`~bnnforge.compiler.plan.build_plan` (see
    :data:`~bnnforge.compiler.costs.COSTS`: a FIFO in front of every input port that has one,
    window generators, matrix units with their ROMs in logic, input buffers and output
    queues, forks and joins), the board top's answer multiplexer and the UART. Calibrated on
    our builds per family (docs/design.md, "Resource estimates").

    Raises :class:`~bnnforge.compiler.folding.FoldingError` when a matrix stage has no folding,
    and :class:`~bnnforge.compiler.plan.PlanError` when the graph cannot be built as it stands
    (e.g. thresholds not folded).
    """
    return family_cells(design_resources(graph), family)


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
