"""Folding: how many PE lanes and SIMD elements per lane each matrix stage gets.

A matrix stage (``BinaryDense``, ``BinaryConv``, ``ScoreLayer``) with ``PE`` lanes of ``SIMD``
elements takes ``(C_out / PE) * (K / SIMD)`` cycles per input vector (FINN's folding model); a
convolution processes one vector per output pixel. Streaming stages without folding take one
cycle per pixel they receive (the input, sliding windows, max-pools).

:class:`ChooseFolding` picks PE/SIMD per stage for a target throughput or a LUT budget and
balances the pipeline like FINN's SetFolding: every stage gets the cheapest folding that keeps
up with the target, so no stage is faster than the slowest needs it to be.
"""

from __future__ import annotations

import math

from .ir import BinaryConv, DataflowGraph, InputLayer, MaxPool, ScoreLayer, _Matrix

__all__ = ["ChooseFolding", "FoldingError", "divisors", "matrix_ops", "vectors_per_frame",
           "stage_cycles", "window_cycles", "estimate_luts", "pipeline_cycles",
           "parse_fold_overrides"]


class FoldingError(ValueError):
    """No legal folding meets the request."""


def divisors(n: int) -> list[int]:
    """Return the divisors of ``n`` in increasing order."""
    small = [d for d in range(1, math.isqrt(n) + 1) if n % d == 0]
    return sorted(set(small + [n // d for d in small]))


def matrix_ops(graph: DataflowGraph) -> list[str]:
    """Return the names of the stages that take a folding."""
    return [n for n, op in graph if isinstance(op, (_Matrix, ScoreLayer))]


def vectors_per_frame(op) -> int:
    """Input vectors a matrix stage processes per frame (output pixels for a convolution)."""
    if isinstance(op, BinaryConv):
        return int(op.out_shape[1] * op.out_shape[2])
    return 1


def _pixels(shape: tuple) -> int:
    return int(shape[1] * shape[2]) if len(shape) == 3 else 1


def stage_cycles(op, pe: int | None = None, simd: int | None = None) -> int:
    """Cycles per frame of one stage at the given folding (ignored for unfolded stages)."""
    if isinstance(op, (_Matrix, ScoreLayer)):
        return vectors_per_frame(op) * (op.channels // pe) * (op.k // simd)
    if isinstance(op, MaxPool):
        return window_cycles(op)
    if isinstance(op, InputLayer):
        return _pixels(op.in_shape)
    return 1


def window_cycles(op) -> int:
    """Cycles per frame of the window generator in front of a convolution or in a max-pool.

    The generator reads one pixel of a window per cycle from a frame buffer, so it takes
    ``OH * OW * kh * kw`` cycles per frame, and at least one cycle per input pixel.
    """
    kh, kw = op.kernel
    return max(_pixels(op.out_shape) * kh * kw, _pixels(op.in_shape))


def pipeline_cycles(graph: DataflowGraph) -> dict[str, int]:
    """Cycles per frame of every stage of a folded graph."""
    out = {}
    for name, op in graph:
        fold = graph.attrs(name).get("fold")
        if isinstance(op, (_Matrix, ScoreLayer)):
            if not fold:
                raise FoldingError(f"stage {name!r} has no folding; run ChooseFolding first")
            cycles = stage_cycles(op, fold["pe"], fold["simd"])
            if isinstance(op, BinaryConv):
                cycles = max(cycles, window_cycles(op))
            out[name] = cycles
        else:
            out[name] = stage_cycles(op)
    return out


def estimate_luts(op, pe: int, simd: int) -> int:
    """Rough LUT4 estimate of a matrix stage at a folding (datapath, accumulators, ROM).

    Per lane: SIMD XNORs and a SIMD-input popcount tree (about 2 LUTs per input bit; 8-bit
    inputs cost about 8 per element), an accumulator and a threshold comparator of log2(K) + 2
    bits. Weights and thresholds sit in LUT ROM (16 bits a LUT) when a fold has few words, else in
    block RAM. A planning figure, not a synthesis result.
    """
    acc_bits = max(1, math.ceil(math.log2(op.k * (255 if op.in_bits == 8 else 1) + 1))) + 2
    per_bit = 8 if op.in_bits == 8 else 2
    datapath = pe * (simd * per_bit + 3 * acc_bits)
    words = (op.channels // pe) * (op.k // simd)
    rom_bits = words * pe * (simd + acc_bits)
    rom = 0 if words > 256 else math.ceil(rom_bits / 16)
    if isinstance(op, ScoreLayer):
        datapath += op.channels * 40
    return int(datapath + rom)


def parse_fold_overrides(items: list[str] | None) -> dict[str, tuple[int, int]]:
    """Parse ``LAYER=PE,SIMD`` strings into a dict."""
    out = {}
    for item in items or []:
        name, sep, rest = item.partition("=")
        parts = rest.split(",")
        if not sep or len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
            raise FoldingError(f"--fold {item!r} is not LAYER=PE,SIMD (e.g. fc0=4,32)")
        out[name.strip()] = (int(parts[0]), int(parts[1]))
    return out


class ChooseFolding:
    """Set each matrix stage's ``fold`` attribute (``{"pe": …, "simd": …}``).

    Parameters
    ----------
    target_cycles
        Cycles per frame every stage must meet (e.g. ``clock_hz / fps``).
    luts
        A LUT budget: the fastest balanced pipeline whose :func:`estimate_luts` total fits.
    overrides
        ``{stage: (pe, simd)}`` fixed by hand; checked for legality.

    With neither target nor budget the pipeline is balanced on its slowest stage at SIMD up to
    32 and PE 1 (a small, middle-of-the-road design).
    """

    name = "choose_folding"

    def __init__(self, target_cycles: int | None = None, luts: int | None = None,
                 overrides: dict[str, tuple[int, int]] | None = None):
        if target_cycles is not None and luts is not None:
            raise FoldingError("give a throughput target or a LUT budget, not both")
        if target_cycles is not None and target_cycles < 1:
            raise FoldingError(f"target cycles per frame must be at least 1, not {target_cycles}")
        if luts is not None and luts < 1:
            raise FoldingError(f"LUT budget must be positive, not {luts}")
        self.target_cycles = target_cycles
        self.luts = luts
        self.overrides = dict(overrides or {})

    @staticmethod
    def _check_override(name: str, op, pe: int, simd: int) -> None:
        bad = []
        if pe not in divisors(op.channels):
            bad.append(f"PE must divide {op.channels} (legal: "
                       f"{', '.join(map(str, divisors(op.channels)))})")
        if simd not in divisors(op.k):
            bad.append(f"SIMD must divide K={op.k} (legal: "
                       f"{', '.join(map(str, divisors(op.k)))})")
        if bad:
            raise FoldingError(f"illegal folding {name}={pe},{simd}: {'; '.join(bad)}")

    @staticmethod
    def cheapest(op, target: int) -> tuple[int, int] | None:
        """The folding with the fewest estimated LUTs that meets ``target`` cycles per frame."""
        best = None
        for pe in divisors(op.channels):
            for simd in divisors(op.k):
                if stage_cycles(op, pe, simd) > target:
                    continue
                key = (estimate_luts(op, pe, simd), pe * simd, pe)
                if best is None or key < best[0]:
                    best = (key, (pe, simd))
        return None if best is None else best[1]

    def _floor(self, graph: DataflowGraph) -> int:
        """Cycles per frame that no folding can beat (input pixel rate, window generators)."""
        floors = [stage_cycles(op) for _, op in graph if not isinstance(op, (_Matrix,
                                                                              ScoreLayer))]
        floors += [window_cycles(op) for _, op in graph if isinstance(op, BinaryConv)]
        return max(floors)

    def _assign(self, graph: DataflowGraph, target: int) -> dict[str, tuple[int, int]]:
        folds = {}
        for name in matrix_ops(graph):
            op = graph.op(name)
            if name in self.overrides:
                folds[name] = self.overrides[name]
                continue
            choice = self.cheapest(op, target)
            if choice is None:
                fastest = stage_cycles(op, op.channels, op.k)
                raise FoldingError(
                    f"stage {name} needs at least {fastest} cycles per frame even fully "
                    f"parallel (PE={op.channels}, SIMD={op.k}); the target is {target}: lower "
                    "the throughput target")
            folds[name] = choice
        return folds

    def _total_luts(self, graph: DataflowGraph, folds: dict) -> int:
        return sum(estimate_luts(graph.op(n), *f) for n, f in folds.items())

    def apply(self, graph: DataflowGraph) -> DataflowGraph:
        names = matrix_ops(graph)
        for name in self.overrides:
            if name not in names:
                raise FoldingError(f"--fold names no foldable stage {name!r}; stages: "
                                   f"{', '.join(names)}")
        for name, (pe, simd) in self.overrides.items():
            self._check_override(name, graph.op(name), pe, simd)
        if self.target_cycles is not None:
            floor = self._floor(graph)
            if self.target_cycles < floor:
                raise FoldingError(
                    f"the target of {self.target_cycles} cycles per frame is faster than the "
                    f"streaming stages allow ({floor} cycles per frame: one input pixel, or one "
                    "window pixel, per cycle): lower the throughput target or raise the clock")
            folds = self._assign(graph, self.target_cycles)
        elif self.luts is not None:
            candidates = sorted({stage_cycles(graph.op(n), pe, simd) for n in names
                                 for pe in divisors(graph.op(n).channels)
                                 for simd in divisors(graph.op(n).k)})
            floor = self._floor(graph)
            candidates = [c for c in candidates if c >= floor] or [floor]
            worst = max(stage_cycles(graph.op(n), 1, 1) for n in names)
            candidates = sorted(set(candidates + [max(worst, floor)]))
            folds = None
            lo, hi = 0, len(candidates) - 1
            while lo <= hi:                 # fewest cycles whose cheapest design fits
                mid = (lo + hi) // 2
                try:
                    trial = self._assign(graph, candidates[mid])
                except FoldingError:
                    lo = mid + 1
                    continue
                if self._total_luts(graph, trial) <= self.luts:
                    folds, hi = trial, mid - 1
                else:
                    lo = mid + 1
            if folds is None:
                serial = self._assign(graph, candidates[-1])
                raise FoldingError(
                    f"even the most serial design needs about {self._total_luts(graph, serial)} "
                    f"LUTs, over the budget of {self.luts}: raise --luts or choose a bigger "
                    "device")
        else:
            base = {}
            for name in names:
                op = graph.op(name)
                simd = max(d for d in divisors(op.k) if d <= 32)
                base[name] = stage_cycles(op, 1, simd)
            target = max(max(base.values()), self._floor(graph))
            folds = self._assign(graph, target)
        out = graph.copy()
        for name, (pe, simd) in folds.items():
            out.attrs(name)["fold"] = {"pe": int(pe), "simd": int(simd)}
        return out
