"""Folding: how many PE lanes and SIMD elements per lane each matrix stage gets.

:class:`ChooseFolding` picks PE/SIMD per stage for a target throughput or a LUT budget and
balances the pipeline like FINN's SetFolding: every stage gets the cheapest folding that keeps
up with the target, so no stage is faster than the slowest needs it to be. The graph may branch:
the bottleneck is the slowest node anywhere in it.

It asks two models and derives nothing itself: the cycle model (:mod:`.cycles`: cycles per
frame of every node, transfers per vector) and the cost model (:mod:`.costs`: logic cells and
block RAMs at a folding). Import their names from those modules.
"""

from __future__ import annotations

import math

from .costs import (
    estimate_join_luts,
    estimate_luts,
    estimate_mst_luts,
    folding_cost,
    mst_eligible,
)
from .cycles import (
    JOIN_KINDS,
    _pixels,
    consumers,
    matrix_ops,
    pixels_per_transfer,
    stage_cycles,
    transfers_per_vector,
    window_cycles,
)
from .ir import BinaryConv, DataflowGraph, ScoreLayer, _Matrix, check_pixels_per_transfer

__all__ = ["ChooseFolding", "FoldingError", "MAX_PIXELS_PER_TRANSFER", "divisors",
           "parse_fold_overrides"]


#: The most pixels per input transfer :class:`ChooseFolding` picks by itself.
MAX_PIXELS_PER_TRANSFER = 16


class FoldingError(ValueError):
    """No legal folding meets the request."""


def divisors(n: int) -> list[int]:
    """Return the divisors of ``n`` in increasing order."""
    small = [d for d in range(1, math.isqrt(n) + 1) if n % d == 0]
    return sorted(set(small + [n // d for d in small]))


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
        A LUT budget: the fastest balanced pipeline whose :func:`estimate_luts` total (plus the
        joins' :func:`~bnnforge.compiler.costs.estimate_join_luts` in a branching graph) fits.
    overrides
        ``{stage: (pe, simd)}`` fixed by hand; checked for legality. The input node may be given
        as ``{"input": (pixels_per_transfer, 1)}``.

    With neither target nor budget the pipeline is balanced on its slowest stage at SIMD up to
    32 and PE 1 (a small, middle-of-the-road design). In a branching graph every node counts:
    the target is met by every matrix stage on every branch, and the floor is the slowest
    unfolded node anywhere (input, window generator, ``add``/``concat`` join).

    With a target, when the input stream (one transfer per cycle) would be slower than the
    target, the input node's ``pixels_per_transfer`` is raised to the smallest divisor of H·W
    (up to :data:`MAX_PIXELS_PER_TRANSFER`) that meets it; otherwise it is kept (default 1).
    It is kept as well when the input feeds several stages or a join: the hardware forks and
    joins only streams of one pixel a transfer.

    mst
        Also consider the MST-compressed layer for binary-input hidden stages (not overridden):
        a stage gets ``fold = {"pe": C, "simd": K, "mst": True}`` when
        :func:`estimate_mst_luts` is below the cheapest dense folding that meets the target
        (the MST layer takes one vector a cycle, like PE = C, SIMD = K). Such a stage also gets
        its ``mst`` attribute (the tree of :func:`~bnnforge.compiler.mst.layer_tree` with
        ``mst_max_depth``; an existing ``mst`` attribute is used as it is), so later passes and
        the timing model see the tree; :class:`~bnnforge.compiler.mst.OrderChannelsByMST` with
        the same ``max_depth`` (and ``complement=True``) recomputes the identical tree.
    mst_max_depth
        Depth bound of those trees (None: unbounded, as OrderChannelsByMST's default).
    """

    name = "choose_folding"

    def __init__(self, target_cycles: int | None = None, luts: int | None = None,
                 overrides: dict[str, tuple[int, int]] | None = None, mst: bool = False,
                 mst_max_depth: int | None = None):
        if target_cycles is not None and luts is not None:
            raise FoldingError("give a throughput target or a LUT budget, not both")
        if target_cycles is not None and target_cycles < 1:
            raise FoldingError(f"target cycles per frame must be at least 1, not {target_cycles}")
        if luts is not None and luts < 1:
            raise FoldingError(f"LUT budget must be positive, not {luts}")
        self.target_cycles = target_cycles
        self.luts = luts
        self.overrides = dict(overrides or {})
        self.mst = bool(mst)
        self.mst_max_depth = mst_max_depth
        self._trees: dict[str, dict] = {}

    def _tree(self, graph: DataflowGraph, name: str) -> dict:
        """The ``mst`` attribute of a stage: its own, or the tree computed once per apply()."""
        from .mst import layer_tree, tree_attr

        attr = graph.attrs(name).get("mst")
        if attr is not None:
            return attr
        if name not in self._trees:
            self._trees[name] = tree_attr(layer_tree(graph.op(name),
                                                     max_depth=self.mst_max_depth))
        return self._trees[name]

    def _luts(self, graph: DataflowGraph, name: str, fold: tuple, count: int = 1) -> int:
        op = graph.op(name)
        if len(fold) > 2 and fold[2]:
            return estimate_mst_luts(op, self._tree(graph, name))
        return estimate_luts(op, fold[0], fold[1], count, graph.meta.get("pipeline"),
                             graph.meta.get("family"))

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
    def cheapest(op, target: int, count: int = 1, pipeline=None,
                 family: str | None = None) -> tuple[int, int] | None:
        """The folding of least :func:`folding_cost` (``count`` input transfers per vector, the
        graph's ``pipeline``, ROMs and RAMs on ``family``) that meets ``target`` cycles per
        frame."""
        best = None
        for pe in divisors(op.channels):
            for simd in divisors(op.k):
                if stage_cycles(op, pe, simd) > target:
                    continue
                key = (folding_cost(op, pe, simd, count, pipeline, family), pe * simd, pe)
                if best is None or key < best[0]:
                    best = (key, (pe, simd))
        return None if best is None else best[1]

    def _floor(self, graph: DataflowGraph, ppt: int = 1) -> int:
        """Cycles per frame that no folding can beat: the slowest unfolded node anywhere in the
        graph (input transfer rate, window generators, joins' pixel rate)."""
        floors = [stage_cycles(op, pixels_per_transfer=ppt) for _, op in graph
                  if not isinstance(op, (_Matrix, ScoreLayer))]
        floors += [window_cycles(op) for _, op in graph if isinstance(op, BinaryConv)]
        return max(floors)

    def _assign(self, graph: DataflowGraph, target: int,
                ppt: int = 1) -> dict[str, tuple[int, int]]:
        folds = {}
        counts = transfers_per_vector(graph, ppt)
        for name in matrix_ops(graph):
            op = graph.op(name)
            if name in self.overrides and name != graph.input_node():
                folds[name] = self.overrides[name]
                continue
            pipe, family = graph.meta.get("pipeline"), graph.meta.get("family")
            choice = self.cheapest(op, target, counts[name], pipe, family)
            if choice is None:
                fastest = stage_cycles(op, op.channels, op.k)
                raise FoldingError(
                    f"stage {name} needs at least {fastest} cycles per frame even fully "
                    f"parallel (PE={op.channels}, SIMD={op.k}); the target is {target}: lower "
                    "the throughput target")
            if self.mst and mst_eligible(op) and \
                    estimate_mst_luts(op, self._tree(graph, name)) < \
                    folding_cost(op, *choice, counts[name], pipe, family):
                choice = (op.channels, op.k, True)        # one vector a cycle: meets target
            folds[name] = choice
        return folds

    def _total_luts(self, graph: DataflowGraph, folds: dict, ppt: int = 1) -> int:
        """The matrix stages at ``folds``, plus the joins (whose cost no folding changes)."""
        counts = transfers_per_vector(graph, ppt)
        joins = sum(estimate_join_luts(op) for _, op in graph
                    if getattr(op, "kind", None) in JOIN_KINDS)
        return joins + sum(self._luts(graph, n, f, counts[n]) for n, f in folds.items())

    def _pixels_per_transfer(self, graph: DataflowGraph) -> tuple[int, bool]:
        """Return the input's pixels per transfer and whether it is fixed (an override, or an
        input stream that is forked or joined: those carry one pixel a transfer)."""
        name = graph.input_node()
        feeds = consumers(graph, name)
        joined = len(feeds) != 1 or getattr(graph.op(feeds[0]), "kind", None) in JOIN_KINDS
        if name in self.overrides:
            ppt, rest = self.overrides[name]
            try:
                check_pixels_per_transfer(name, graph.op(name), ppt)
            except ValueError as exc:
                raise FoldingError(str(exc)) from None
            if rest != 1:
                raise FoldingError(f"the input override is {name}=P,1 (pixels per transfer), "
                                   f"not {name}={ppt},{rest}")
            return int(ppt), True
        return pixels_per_transfer(graph), joined

    def apply(self, graph: DataflowGraph) -> DataflowGraph:
        self._trees = {}
        names = matrix_ops(graph)
        inp = graph.input_node()
        for name in self.overrides:
            if name not in names and name != inp:
                raise FoldingError(f"--fold names no foldable stage {name!r}; stages: "
                                   f"{', '.join(names)}")
        for name, (pe, simd) in self.overrides.items():
            if name != inp:
                self._check_override(name, graph.op(name), pe, simd)
        ppt, fixed = self._pixels_per_transfer(graph)
        if self.target_cycles is not None:
            floor = self._floor(graph, ppt)
            widest = ppt
            if self.target_cycles < floor and not fixed:
                pixels = _pixels(graph.op(inp).in_shape)
                widest = max([ppt] + [p for p in divisors(pixels)
                                      if p <= MAX_PIXELS_PER_TRANSFER])
                for p in divisors(pixels):
                    if ppt < p <= MAX_PIXELS_PER_TRANSFER \
                            and self._floor(graph, p) <= self.target_cycles:
                        ppt, floor = p, self._floor(graph, p)
                        break
                else:
                    floor = self._floor(graph, widest)
            if self.target_cycles < floor:
                raise FoldingError(
                    f"the target of {self.target_cycles} cycles per frame is faster than the "
                    f"streaming stages allow ({floor} cycles per frame: one input transfer of "
                    f"{widest} pixel(s), or one padded window position, "
                    "per cycle): lower the throughput target or raise the clock")
            folds = self._assign(graph, self.target_cycles, ppt)
        elif self.luts is not None:
            candidates = sorted({stage_cycles(graph.op(n), pe, simd) for n in names
                                 for pe in divisors(graph.op(n).channels)
                                 for simd in divisors(graph.op(n).k)})
            floor = self._floor(graph, ppt)
            candidates = [c for c in candidates if c >= floor] or [floor]
            worst = max(stage_cycles(graph.op(n), 1, 1) for n in names)
            candidates = sorted(set(candidates + [max(worst, floor)]))
            folds = None
            lo, hi = 0, len(candidates) - 1
            while lo <= hi:                 # fewest cycles whose cheapest design fits
                mid = (lo + hi) // 2
                try:
                    trial = self._assign(graph, candidates[mid], ppt)
                except FoldingError:
                    lo = mid + 1
                    continue
                if self._total_luts(graph, trial, ppt) <= self.luts:
                    folds, hi = trial, mid - 1
                else:
                    lo = mid + 1
            if folds is None:
                serial = self._assign(graph, candidates[-1], ppt)
                raise FoldingError(
                    "even the most serial design needs about "
                    f"{self._total_luts(graph, serial, ppt)} "
                    f"LUTs, over the budget of {self.luts}: raise --luts or choose a bigger "
                    "device")
        else:
            base = {}
            for name in names:
                op = graph.op(name)
                simd = max(d for d in divisors(op.k) if d <= 32)
                base[name] = stage_cycles(op, 1, simd)
            target = max(max(base.values()), self._floor(graph, ppt))
            folds = self._assign(graph, target, ppt)
        out = graph.copy()
        if ppt != 1 or "pixels_per_transfer" in out.attrs(inp):
            out.attrs(inp)["pixels_per_transfer"] = int(ppt)
        for name, (pe, simd, *mst) in folds.items():
            out.attrs(name)["fold"] = {"pe": int(pe), "simd": int(simd)}
            if mst and mst[0]:
                out.attrs(name)["fold"]["mst"] = True
                out.attrs(name)["mst"] = {k: list(v) if isinstance(v, list) else v
                                          for k, v in self._tree(graph, name).items()}
        return out
