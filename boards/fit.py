"""Board-aware folding: the fastest (or cheapest for a frame rate) folding that fits a board.

:func:`fit_to_board` searches :class:`~bnnforge.compiler.folding.ChooseFolding`'s throughput
targets and sizes each candidate with :func:`~bnnforge.boards.estimate.estimate_design_luts`
(the whole board design: matrix stages, their input buffers, FIFOs, forks and joins, the UART),
against the board's logic cells less a routing headroom, and with
:func:`~bnnforge.boards.estimate.estimate_design_brams` against its block RAMs (counted in the
family's blocks), at the board's design clock. Each ROM goes to block RAM or logic by cost, a
block RAM priced for the family (:data:`~bnnforge.compiler.memory.BRAM_PRICE`). The graph may
branch: every matrix stage on every branch is folded for the target.
"""

from __future__ import annotations

import math

from ..compiler.costs import mst_eligible
from ..compiler.cycles import matrix_ops, pipeline_cycles, stage_cycles
from ..compiler.folding import ChooseFolding, FoldingError, divisors
from ..compiler.ir import BinaryConv, DataflowGraph
from ..compiler.pipeline import pipeline_for
from .estimate import estimate_design_brams, estimate_design_luts
from .profiles import BOARDS, BoardProfile, get_board
from .timing import FMAX_MODELS, design_clock, predict_fmax

__all__ = ["HEADROOM", "fit_board", "fit_to_board"]

#: Share of the board's logic cells a folding may fill; the rest is left to the router
#: (nextpnr struggles to place a nearly full iCE40, and the estimate is within ~20%).
HEADROOM = 0.8


def _targets(graph: DataflowGraph) -> list[int]:
    """Every cycles-per-frame value some stage's folding gives, fastest first."""
    out = set()
    for name in matrix_ops(graph):
        op = graph.op(name)
        out.update(stage_cycles(op, pe, simd) for pe in divisors(op.channels)
                   for simd in divisors(op.k))
    return sorted(out)


def _with_trees(graph: DataflowGraph, max_depth: int | None) -> DataflowGraph:
    """``graph`` with the MST of every stage that may become an MST-compressed layer, computed
    once (ChooseFolding uses an existing ``mst`` attribute as it is)."""
    from ..compiler.mst import layer_tree, tree_attr

    out = graph.copy()
    for name, op in graph:
        if mst_eligible(op) and out.attrs(name).get("mst") is None:
            out.attrs(name)["mst"] = tree_attr(layer_tree(op, max_depth=max_depth))
    return out


def _fold(graph: DataflowGraph, target: int, mst: bool = False):
    """ChooseFolding at ``target`` cycles per frame (with MST-compressed layers where cheaper
    when ``mst``): (graph, LUT estimate for the family of the graph's pipeline, cycles,
    block RAMs of the graph's family), or None."""
    try:
        folded = ChooseFolding(target_cycles=target, mst=mst).apply(graph)
    except FoldingError:
        return None
    return (folded, estimate_design_luts(folded, graph.meta.get("family")),
            max(pipeline_cycles(folded).values()),
            estimate_design_brams(folded))


def _fits(found, budget: int, profile: BoardProfile) -> bool:
    return found[1] <= budget and found[3] <= profile.bram_blocks


def _name(graph: DataflowGraph) -> str:
    return graph.name or "the model"


def _bigger(profile: BoardProfile, luts: int) -> str:
    """Name a bigger board that the design fits (with headroom), else the biggest."""
    bigger = sorted((b for b in BOARDS.values() if b.luts > profile.luts), key=lambda b: b.luts)
    fits = [b for b in bigger if HEADROOM * b.luts >= luts]
    return (fits or bigger)[0].name if (fits or bigger) else ""


def _budget(profile: BoardProfile) -> int:
    return int(HEADROOM * profile.luts)


def fit_to_board(graph: DataflowGraph, board, *, fps: float | None = None,
                 clock_mhz: float | None = None, mst: bool = False,
                 mst_max_depth: int | None = None) -> DataflowGraph:
    """:func:`fit_board`'s folded graph (its parameters, returns and errors)."""
    return fit_board(graph, board, fps=fps, clock_mhz=clock_mhz, mst=mst,
                     mst_max_depth=mst_max_depth)[0]


def fit_board(graph: DataflowGraph, board, *, fps: float | None = None,
              clock_mhz: float | None = None, mst: bool = False,
              mst_max_depth: int | None = None) -> tuple[DataflowGraph, BoardProfile, dict]:
    """Fold ``graph`` for ``board``: the fastest balanced folding that fits its logic, and the
    clock it runs at (with the timing-aware clock: the folding of most frames/s at the clock
    its size gets).

    Parameters
    ----------
    graph
        The lowered graph (any existing ``fold`` is replaced).
    board
        A board name or :class:`~bnnforge.boards.profiles.BoardProfile`.
    fps
        A frame-rate target: the cheapest folding that meets it (at the design clock) and fits.
        ``None``: the fastest folding that fits.
    clock_mhz
        The design clock (MHz). ``None``: on a board with a PLL, the clock the placed design is
        predicted to meet (:func:`~bnnforge.boards.timing.design_clock`, from the candidate's
        logic-cell estimate), so frames/s are counted at the clock each candidate gets; on a
        board clocked from its oscillator (``ice40-hx8k``), that clock.
    mst
        Let every candidate use MST-compressed layers where they are estimated cheaper than the
        dense folding (``ChooseFolding(mst=True)``), with trees of depth at most
        ``mst_max_depth`` (``None``: unbounded).

    Returns
    -------
    (DataflowGraph, BoardProfile, dict)
        The graph folded by :class:`~bnnforge.compiler.folding.ChooseFolding` (``fold`` on
        every matrix stage and whatever else it sets, e.g. the input's
        ``pixels_per_transfer``; ``meta["pipeline"]`` = the family's
        :class:`~bnnforge.compiler.pipeline.Pipeline`, and ``meta["family"]``,
        on which each ROM goes to block RAM or logic by
        :func:`~bnnforge.compiler.memory.rom_style`) whose
        :func:`~bnnforge.boards.estimate.estimate_design_luts` is at most :data:`HEADROOM` of
        the board's LUTs and whose block RAMs (of the family's size) the board has; the
        profile at the design clock; and how the clock was chosen
        (``clock_mhz``, ``clock_from`` = "given", "oscillator" or "fmax model",
        ``predicted_fmax_mhz``, ``margin``).

    Raises
    ------
    ValueError
        When even the most serial folding does not fit, when ``fps`` is out of reach of the
        streaming stages at this clock, or when the folding that meets ``fps`` does not fit;
        the message gives the numbers and a fix.
    """
    base = get_board(board)
    # a given clock, or a board clocked from its oscillator (ice40-hx8k), stays as it is
    fixed = clock_mhz is not None or not base.uses_pll
    profile = base.with_clock(clock_mhz)
    graph = graph.copy()
    graph.meta["pipeline"] = pipeline_for(profile.family).name
    graph.meta["family"] = profile.family       # the estimates in nextpnr's count for it

    windows = any(isinstance(op, BinaryConv) for _, op in graph)

    def clocked(found) -> tuple[BoardProfile, dict]:
        fmax = predict_fmax(profile, found[1], windows)
        if fixed:
            return profile, {"clock_mhz": profile.clock_mhz,
                             "clock_from": "given" if clock_mhz is not None else "oscillator",
                             "predicted_fmax_mhz": round(fmax, 1)}
        at, _ = design_clock(profile, found[1], windows)
        return at, {"clock_mhz": at.clock_mhz, "clock_from": "fmax model",
                    "predicted_fmax_mhz": round(fmax, 1),
                    "margin": FMAX_MODELS[profile.family].margin}

    clock = profile.clock_mhz
    budget = _budget(profile)
    where = (f"{profile.name} ({profile.device}) has {profile.luts:,} LUTs, {budget:,} after "
             f"{100 - round(100 * HEADROOM)}% left for routing")
    targets = _targets(graph)
    if not targets:
        raise ValueError(f"{_name(graph)} has no matrix stage to fold")
    if mst:
        graph = _with_trees(graph, mst_max_depth)
    serial = _fold(graph, targets[-1], mst)
    if serial is None:
        raise ValueError(f"{_name(graph)} cannot be folded at {targets[-1]} cycles per frame")
    if serial[1] > budget:
        other = _bigger(profile, serial[1])
        fix = f"choose a smaller model or {other}" if other else "choose a smaller model"
        raise ValueError(f"{_name(graph)} needs ~{serial[1]:,} LUTs even fully serial; {where}: "
                         f"{fix}")
    if not _fits(serial, budget, profile):
        raise ValueError(f"{_name(graph)} needs ~{serial[3]:,} block RAMs even fully serial; "
                         f"{profile.name} ({profile.device}) has {profile.bram_blocks:,} "
                         f"({profile.bram_blocks * profile.bram_bits // 1024:,} kbit): choose a "
                         "smaller model or a bigger board")
    if fps is not None:
        if isinstance(fps, bool) or not isinstance(fps, (int, float)) or not fps > 0:
            raise ValueError(f"fps must be a positive number of frames per second, not {fps!r}")
        if not fixed:       # the smallest design gets the fastest clock: start there
            clock = clocked(serial)[0].clock_mhz
        for _ in range(16):
            target = max(1, math.floor(clock * 1e6 / fps))
            found = _fold(graph, target, mst)
            if found is None or not _fits(found, budget, profile):
                break
            at, how = clocked(found)
            if fixed or at.clock_mhz * 1e6 / found[2] >= fps:
                return found[0], at, how
            clock = at.clock_mhz            # bigger design, slower clock: fold again
        if not fixed:
            best = _best_clocked(graph, targets, budget, profile, mst, clocked, serial)
            fit, at, how = best
            most = math.floor(at.clock_mhz * 1e6 / fit[2])
            raise ValueError(
                f"{_name(graph)} cannot reach {fps:,g} frames/s on {profile.name} "
                f"({profile.device}): the fastest folding that fits, at the clock a design of "
                f"its size is predicted to meet (boards.timing, {how['predicted_fmax_mhz']:g} "
                f"MHz x {how['margin']:g}), gives at most {most:,} frames/s ({fit[2]:,} cycles per "
                f"frame at {at.clock_mhz:g} MHz, ~{fit[1]:,} LUTs); lower --fps (--fps {most}), "
                "give --clock-mhz to override the model, or choose a bigger board")
        if found is None:
            fastest = next(f for f in map(lambda t: _fold(graph, t, mst), targets)
                           if f is not None)
            best = clock * 1e6 / fastest[2]
            raise ValueError(
                f"{fps:,g} frames/s needs at most {target:,} cycles per frame at {clock:g} MHz; "
                f"{_name(graph)} takes at least {fastest[2]:,} even fully parallel (the "
                f"streaming stages): at most {math.floor(best):,} frames/s on {profile.name} "
                "at this clock; lower --fps or raise the clock")
        if _fits(found, budget, profile):
            return (found[0], *clocked(found))
        fit = _fastest(graph, targets, budget, profile, start=target, mst=mst)
        most = math.floor(clock * 1e6 / fit[2])
        other = _bigger(profile, found[1])
        raise ValueError(
            f"{_name(graph)} at {fps:,g} frames/s needs ~{found[1]:,} LUTs; {where}: at most "
            f"{most:,} frames/s fits at {clock:g} MHz (--fps {most}), or choose a bigger "
            f"board{f' ({other})' if other else ''}")
    found, at, how = _best_clocked(graph, targets, budget, profile, mst, clocked, serial)
    return found[0], at, how


def _best_clocked(graph, targets, budget, profile, mst, clocked, serial):
    """The candidate of most frames/s at the clock its own size gets (a faster folding is a
    bigger design on a slower clock; at a fixed clock, the fastest that fits): (found, profile
    at its clock, how). Stops once even the smallest design's clock could not beat the best
    with more cycles."""
    top = clocked(serial)[0].clock_mhz
    best = None
    for target in targets:                      # fewest cycles first
        found = _fold(graph, target, mst)
        if found is None or not _fits(found, budget, profile):
            continue
        if best is not None and top * 1e6 / found[2] <= best[3]:
            break
        at, how = clocked(found)
        fps = at.clock_mhz * 1e6 / found[2]
        if best is None or fps > best[3]:
            best = (found, at, how, fps)
    return best[:3]


def _fastest(graph: DataflowGraph, targets: list[int], budget: int, profile: BoardProfile,
             start: int = 0, mst: bool = False):
    """The fastest candidate (fewest cycles, above ``start``) whose estimates fit ``budget``
    and the board's block RAM."""
    for target in targets:
        if target < start:
            continue
        found = _fold(graph, target, mst)
        if found is not None and _fits(found, budget, profile):
            return found
    raise AssertionError("the serial folding fits but no target does")   # checked by the caller
