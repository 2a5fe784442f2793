"""FIFO sizing: the smallest FIFO depths that keep the pipeline's full throughput.

:class:`SizeFifos` measures the steady-state cycles per frame of the back-to-back pipeline with
very deep FIFOs (:func:`~bnnforge.sim.timing.simulate_timing`), then shrinks the FIFO in front
of each stage in turn, in chain order, to the smallest depth that keeps exactly that throughput
(binary search over depths >= 1: throughput never improves when a FIFO gets shallower, so the
search is exact; depth 0 — no FIFO, a wire — is tried first on its own, since it can beat depth
1: a depth-1 FIFO passes one token every other cycle, as a read frees no room in its own
cycle).
One pass suffices: when a later FIFO shrinks, an earlier one one token shorter only gets
slower, so every depth in the result is minimal given the others.

Unlike FINN's RTL-simulation-based sizing (hours), each trial is a timing simulation that stops
as soon as the pipeline's state repeats, so a whole network sizes in seconds.
"""

from __future__ import annotations

from fractions import Fraction

from ..compiler.ir import DataflowGraph
from .timing import chain, simulate_timing

__all__ = ["SizeFifos", "steady_cycles_per_frame"]


def steady_cycles_per_frame(graph: DataflowGraph, frames: int = 256) -> Fraction:
    """Exact steady-state cycles per frame of the back-to-back pipeline (a Fraction).

    Taken from the repeating state when the simulation finds it (it nearly always does within a
    few frames), else the mean output spacing over the second half of ``frames`` frames.
    """
    res = simulate_timing(graph, frames, record=False)
    if res.periodic_from is not None:
        return Fraction(res.period_cycles, res.period)
    out = res.output_cycles
    half = len(out) // 2
    return Fraction(int(out[-1] - out[half]), len(out) - 1 - half)


class SizeFifos:
    """Set ``fifo_depth`` on every stage to the smallest depth that loses no throughput.

    Parameters
    ----------
    min_depth
        The smallest depth considered. The default 1 keeps a register between every pair of
        stages (depth 0 removes the FIFO, so ``ready`` runs combinationally through both
        stages); 0 allows removing FIFOs where throughput does not need them.
    deep
        The depth that stands for "very deep" (default: two frames of the stage's tokens,
        at least 64).
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

    def _cpf(self, graph: DataflowGraph) -> Fraction:
        self.trials += 1
        return steady_cycles_per_frame(graph, self.frames)

    def apply(self, graph: DataflowGraph) -> DataflowGraph:
        out = graph.copy()
        nodes = out.order()
        tokens = {}
        for spec in chain(out):
            tokens.setdefault(spec["node"], spec["tokens"])
        for name in nodes:
            deep = self.deep or max(64, 2 * tokens[name])
            out.attrs(name)["fifo_depth"] = int(deep)
        self.trials = 0
        self.target = target = self._cpf(out)
        for name in nodes:
            hi = out.attrs(name)["fifo_depth"]      # known to keep the throughput
            if self.min_depth == 0:
                out.attrs(name)["fifo_depth"] = 0
                if self._cpf(out) <= target:        # no FIFO at all keeps the throughput
                    continue
            lo = max(1, self.min_depth)
            while lo < hi:
                mid = (lo + hi) // 2
                out.attrs(name)["fifo_depth"] = mid
                if self._cpf(out) <= target:
                    hi = mid
                else:
                    lo = mid + 1
            out.attrs(name)["fifo_depth"] = int(hi)
        return out
