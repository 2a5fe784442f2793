"""FIFO sizing: the smallest FIFO depths that keep the pipeline's full throughput.

:class:`SizeFifos` measures the steady-state cycles per frame of the back-to-back pipeline with
very deep FIFOs (:func:`~bnnforge.sim.timing.simulate_timing`), then shrinks the FIFO in front
of each stage in turn, in chain order, to the smallest depth that keeps exactly that throughput
(binary search over depths >= 1: throughput never improves when a FIFO gets shallower, so the
search is exact; depth 0 — no FIFO, a wire — is tried first on its own, since it can beat depth
1: a depth-1 FIFO passes one token every other cycle, as a read frees no room in its own
cycle).
One pass suffices: when a later FIFO shrinks, an earlier one one token shorter only gets
slower, so every depth in the result is minimal given the others. The search starts at the
most tokens the FIFO held in the last run that kept the throughput, plus one: with that depth
the run replays exactly, so the bound is safe. The search gallops up from the smallest depth
(1, 2, 4, 8 … tokens more), where most FIFOs end, then bisects: one or two trials for most.
Stages with several inputs (a residual join) have a FIFO per input port (``fifo_depth`` a
list); a depth that deadlocks counts as no throughput. In front of a matrix unit (and of a FIFO
with a matrix unit behind it) depth 0 is tried too: a matrix unit's ``ready`` comes from its own
registers (docs/design.md §4), so removing the FIFO adds no combinational path between stages.

Unlike FINN's RTL-simulation-based sizing (hours), each trial is a timing simulation that stops
as soon as the pipeline's state repeats, so a whole network sizes in seconds.
"""

from __future__ import annotations

from fractions import Fraction

from ..compiler.ir import DataflowGraph
from ..compiler.plan import build_plan
from .dataflow import Deadlock
from .timing import simulate_timing

__all__ = ["SizeFifos", "steady_cycles_per_frame", "zero_depth_sites"]

#: frames of a trial when the plan forks: its deep skip FIFOs take many frames to settle into
#: a repeating state, so a trial stops here and reads the steady state over the second half
#: (an even number of output spacings); 64 frames gave the same depths on resnet in 4.6x the time
DAG_FRAMES = 12


def steady_cycles_per_frame(graph: DataflowGraph, frames: int = 256) -> Fraction:
    """Exact steady-state cycles per frame of the back-to-back pipeline (a Fraction).

    Taken from the repeating state when the simulation finds it (it nearly always does within a
    few frames), else the mean output spacing over the second half of ``frames`` frames. A
    pipeline that deadlocks has no throughput: ``Fraction(10**18)``.
    """
    try:
        res = simulate_timing(graph, frames, record=False)
    except Deadlock:
        return Fraction(10**18)
    return _steady(res)


def _steady(res) -> Fraction:
    if res.periodic_from is not None:
        return Fraction(res.period_cycles, res.period)
    out = res.output_cycles
    half = len(out) // 2
    if (len(out) - 1 - half) % 2:
        half -= 1                # an even number of spacings: a period-2 state reads exactly
    return Fraction(int(out[-1] - out[half]), len(out) - 1 - half)


#: block kinds whose input ``ready`` is a function of their own registers (not of their
#: output's ``ready``)
_REGISTERED_READY = ("mvtu", "score")
_WIRES = ("threshold", "table")


def zero_depth_sites(graph: DataflowGraph) -> set:
    """The input ports ``(node, port)`` whose FIFO may be removed without a combinational
    ``ready`` path through the stage: the first block behind it (wires skipped) is a matrix
    unit, or a FIFO with one behind it (whatever depth that FIFO gets)."""
    probe = graph.copy()
    for name in probe.order():                  # every FIFO present, to see what follows it
        d = probe.attrs(name).get("fifo_depth", 2)
        probe.attrs(name)["fifo_depth"] = [max(1, v) for v in d] if isinstance(d, list) \
            else max(1, d)
    blocks = build_plan(probe).blocks
    after: dict[str, list] = {}
    for b in blocks:
        for src, _ in b["inputs"]:
            after.setdefault(src, []).append(b)

    def registered(name: str, fifos: int) -> bool:
        nxt = after.get(name, [])
        if len(nxt) != 1:
            return False
        b = nxt[0]
        if b["kind"] in _WIRES:
            return registered(b["name"], fifos)
        if b["kind"] == "fifo":
            return fifos == 0 and registered(b["name"], 1)
        return b["kind"] in _REGISTERED_READY

    sites = set()
    for b in blocks:
        if b["kind"] == "fifo" and registered(b["name"], 0):
            suffix = b["name"].rsplit(":fifo", 1)[-1]
            sites.add((b["node"], int(suffix) if suffix else 0))
    return sites


def _set(graph: DataflowGraph, node: str, port: int, ports: int, depth: int) -> None:
    if ports == 1:
        graph.attrs(node)["fifo_depth"] = int(depth)
        return
    d = graph.attrs(node).get("fifo_depth", 2)
    d = list(d) if isinstance(d, list) else [d] * ports
    d[port] = int(depth)
    graph.attrs(node)["fifo_depth"] = d


class SizeFifos:
    """Set ``fifo_depth`` on every stage to the smallest depth that loses no throughput.

    Parameters
    ----------
    min_depth
        The smallest depth considered. The default 1 keeps a register between every pair of
        stages (depth 0 removes the FIFO, so ``ready`` runs combinationally through both
        stages), except in front of a matrix unit, whose ``ready`` is registered anyway
        (:func:`zero_depth_sites`); 0 allows removing FIFOs anywhere throughput does not need
        them.
    deep
        The depth that stands for "very deep" (default: two frames of the stage's tokens, at
        least 64; a join's ports two more frames per window or pool in the plan).
    frames
        Frames per trial simulation (an upper bound; trials stop once the state repeats).
    """

    name = "size_fifos"

    def __init__(self, min_depth: int = 1, deep: int | None = None, frames: int = 256):
        if isinstance(min_depth, bool) or not isinstance(min_depth, int) or min_depth < 0:
            raise ValueError(f"min_depth must be a non-negative integer, not {min_depth!r}")
        if deep is not None and (not isinstance(deep, int) or deep < max(1, min_depth)):
            raise ValueError(f"deep must be an integer >= max(1, min_depth), not {deep!r}")
        if not isinstance(frames, int) or frames < 4:
            raise ValueError(f"frames must be an integer >= 4, not {frames!r}")
        self.min_depth = min_depth
        self.deep = deep
        self.frames = frames
        #: after apply(): the target cycles per frame and the trial count
        self.target: Fraction | None = None
        self.trials = 0

    def _trial(self, graph: DataflowGraph, frames: int) -> tuple[Fraction, dict]:
        """Steady cycles per frame and FIFO occupancies (infinite when it deadlocks)."""
        self.trials += 1
        try:
            res = simulate_timing(graph, frames, record=False)
        except Deadlock:
            return Fraction(10**18), {}
        return _steady(res), res.fifo_max_occupancy

    def apply(self, graph: DataflowGraph) -> DataflowGraph:
        out = graph.copy()
        plan = build_plan(out)
        zero_ok = zero_depth_sites(out)
        frames = self.frames if plan.is_chain() else min(self.frames, DAG_FRAMES)
        # every input port of every stage, in graph order, and the tokens a frame it carries
        tokens: dict[str, int] = {}
        for b in plan.blocks:
            tokens.setdefault(b["node"], b["tokens"])
        # a join's inputs wait for each other: its FIFOs may have to hold as many frames as
        # the other path has windows (each holds a frame back), so they start deeper
        windows = sum(b["kind"] in ("window", "maxpool") for b in plan.blocks)
        sites: list[tuple[str, int, int]] = []
        for name in out.order():
            n = max(1, len(out.inputs(name)))
            frames_held = 2 * (1 + windows) if n > 1 else 2
            for p in range(n):
                sites.append((name, p, n))
                _set(out, name, p, n,
                     self.deep or max(64, frames_held * tokens.get(name, 1)))
        self.trials = 1
        try:
            deep_run = simulate_timing(out, frames, record=False)
        except Deadlock as exc:
            raise ValueError(f"the pipeline deadlocks even with deep FIFOs ({exc})") from None
        self.target = target = _steady(deep_run)
        occ = deep_run.fifo_max_occupancy         # of a run with the current depths
        for name, p, n in sites:
            key = name if p == 0 else f"{name}[{p}]"
            # that run never held more than occ tokens here: occ + 1 slots replay it exactly
            hi = max(min(out.fifo_depths(name)[p], occ.get(key, 0) + 1), max(1, self.min_depth))
            _set(out, name, p, n, hi)
            if self.min_depth == 0 or (name, p) in zero_ok:
                _set(out, name, p, n, 0)
                cpf, seen = self._trial(out, frames)
                if cpf <= target:                  # no FIFO at all keeps the throughput
                    occ = seen
                    continue
            # gallop up from the smallest depth (most FIFOs end there), then bisect
            lo, step = max(1, self.min_depth), 1
            while lo < hi:
                mid = min(hi - 1, lo + step - 1)
                _set(out, name, p, n, mid)
                cpf, seen = self._trial(out, frames)
                if cpf <= target:
                    hi, occ = mid, seen
                    break
                lo, step = mid + 1, 2 * step
            while lo < hi:
                mid = (lo + hi) // 2
                _set(out, name, p, n, mid)
                cpf, seen = self._trial(out, frames)
                if cpf <= target:
                    hi, occ = mid, seen
                else:
                    lo = mid + 1
            _set(out, name, p, n, hi)
        return out
