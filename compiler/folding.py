"""Folding: how many PE lanes and SIMD elements per lane each matrix stage gets.

A matrix stage (``BinaryDense``, ``BinaryConv``, ``ScoreLayer``) with ``PE`` lanes of ``SIMD``
elements takes ``(C_out / PE) * (K / SIMD)`` cycles per input vector (FINN's folding model); a
convolution processes one vector per output pixel. Streaming stages without folding take one
cycle per pixel they receive (sliding windows, max-pools); the input takes one cycle per transfer,
and a transfer carries ``pixels_per_transfer`` pixels (an attribute of the input node, default 1;
see :func:`pixels_per_transfer`).

:class:`ChooseFolding` picks PE/SIMD per stage for a target throughput or a LUT budget and
balances the pipeline like FINN's SetFolding: every stage gets the cheapest folding that keeps
up with the target, so no stage is faster than the slowest needs it to be.
"""

from __future__ import annotations

import math

from .ir import (
    BinaryConv,
    DataflowGraph,
    InputLayer,
    MaxPool,
    ScoreLayer,
    _Matrix,
    check_pixels_per_transfer,
)

__all__ = ["ChooseFolding", "FoldingError", "divisors", "matrix_ops", "vectors_per_frame",
           "stage_cycles", "window_cycles", "estimate_luts", "pipeline_cycles",
           "parse_fold_overrides", "pixels_per_transfer", "MAX_PIXELS_PER_TRANSFER",
           "estimate_mst_luts", "mst_eligible", "input_buffer_in_ram", "transfers_per_vector",
           "estimate_brams", "folding_cost", "BRAM_CELLS", "MAX_INPUT_RAM_WORD", "ram_blocks",
           "LOGIC_ROM_DEPTH", "input_ram_word", "RAM_BLOCK_BITS"]

#: The most pixels per input transfer :class:`ChooseFolding` picks by itself.
MAX_PIXELS_PER_TRANSFER = 16


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


def pixels_per_transfer(graph: DataflowGraph) -> int:
    """Return the input node's ``pixels_per_transfer`` attribute (default 1), checked.

    The accelerator's input stream carries that many pixels per transfer; it must divide the
    H·W pixels of a frame (a (K,) vector input is one pixel, so only 1 is legal there).
    """
    return graph.pixels_per_transfer()


def stage_cycles(op, pe: int | None = None, simd: int | None = None,
                 pixels_per_transfer: int = 1) -> int:
    """Cycles per frame of one stage at the given folding (ignored for unfolded stages).

    The input stage takes H·W / ``pixels_per_transfer`` cycles per frame.
    """
    if isinstance(op, (_Matrix, ScoreLayer)):
        return vectors_per_frame(op) * (op.channels // pe) * (op.k // simd)
    if isinstance(op, MaxPool):
        return window_cycles(op)
    if isinstance(op, InputLayer):
        return _pixels(op.in_shape) // pixels_per_transfer
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
    ppt = pixels_per_transfer(graph)
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
            out[name] = stage_cycles(op, pixels_per_transfer=ppt)
    return out


#: Widest RAM word (bits) :func:`input_buffer_in_ram` puts in block RAM: eight 16-bit iCE40
#: blocks. Wider words (a wide SIMD reading a vector that arrives a few pixels at a time) would
#: spend more blocks on a shallow buffer than its registers cost in logic.
MAX_INPUT_RAM_WORD = 128


def input_ram_word(k: int, count: int, simd: int) -> int:
    """Elements per word of a matrix unit's input RAM: lcm(K/count, SIMD), so that whole
    transfers fill a word and whole SIMD steps read it."""
    return math.lcm(k // count, simd)


def input_buffer_in_ram(k: int, count: int, simd: int, input_bits: int = 1) -> bool:
    """Whether a matrix unit keeps its input buffer and held vector in a block RAM.

    It does when the vector arrives in ``count > 1`` transfers and splits into at least two RAM
    words of ``L = lcm(K/count, SIMD)`` elements (the unit gathers transfers into such words and
    reads SIMD elements a step) of at most :data:`MAX_INPUT_RAM_WORD` bits; otherwise the two
    K-element vectors are registers.
    """
    if count <= 1 or k % count or k % simd:
        return False
    word = input_ram_word(k, count, simd)
    return k // word >= 2 and word * input_bits <= MAX_INPUT_RAM_WORD


def transfers_per_vector(graph: DataflowGraph, ppt: int | None = None) -> dict[str, int]:
    """Input transfers per vector of every matrix stage (the hardware's ``count``).

    A dense stage fed by a feature map of H·W pixels takes H·W / P transfers (P: the input's
    pixels per transfer, ``ppt`` or the graph's, up to the first convolution or pool; 1 after);
    a stage fed by a vector, and a convolution (fed by its window generator), takes one.
    """
    per = graph.pixels_per_transfer() if ppt is None else ppt
    pixels = _pixels(tuple(graph.input_shape))
    out = {}
    for name, op in graph:
        if isinstance(op, BinaryConv):
            out[name] = 1
            pixels, per = _pixels(tuple(op.out_shape)), 1
        elif isinstance(op, MaxPool):
            pixels, per = _pixels(tuple(op.out_shape)), 1
        elif isinstance(op, (_Matrix, ScoreLayer)):
            out[name] = max(1, pixels // per)
            pixels, per = 1, 1
    return out


#: Logic cells of a matrix unit's sequencer, control pipeline and handshakes.
_CONTROL_CELLS = 48

#: Logic cells a planning estimate charges for one block RAM (about a UP5K's cells per block).
BRAM_CELLS = 128


#: Bits of the block RAM :func:`ram_blocks` counts in (an iCE40 SB_RAM40_4K).
RAM_BLOCK_BITS = 4096


def ram_blocks(width: int, depth: int) -> int:
    """4-kbit block RAMs (iCE40 SB_RAM40_4K: 16 x 256, 8 x 512, 4 x 1024 or 2 x 2048 bits) that
    hold ``depth`` words of ``width`` bits, in the best of those shapes."""
    return min(-(-width // w) * -(-depth // d) for w, d in ((16, 256), (8, 512), (4, 1024),
                                                            (2, 2048)))


#: ROMs shallower than this are built in logic (the generator marks them ``rom_style =
#: "logic"``), deeper ones in block RAM. A shallow, wide ROM fills few words of many block RAMs (a
#: 3,136-bit x 64-word weight ROM took 88 of the ECP5-85F's DP16KD blocks and congested the
#: router), while in logic it costs ~4 LUT4 per bit on ECP5 (~7 on iCE40, whose Yosys builds
#: ROMs of up to 64 words in logic by itself).
LOGIC_ROM_DEPTH = 128


def _memory_cells(width: int, depth: int) -> tuple[int, int]:
    """(logic cells, block RAMs) of a ROM of ``depth`` words of ``width`` bits.

    One word: constants. :data:`LOGIC_ROM_DEPTH` words or more: block RAM (:func:`ram_blocks`);
    fewer: logic, about 16 bits a LUT4.
    """
    if depth <= 1:
        return 0, 0
    if depth >= LOGIC_ROM_DEPTH:
        return 0, ram_blocks(width, depth)
    return -(-width * depth // 16), 0


def _buffer_cells(op, simd: int, count: int) -> tuple[int, int]:
    """(logic cells, block RAMs) of a matrix unit's input buffer and held vector."""
    k, b = op.k, op.input_bits
    if input_buffer_in_ram(k, count, simd, b):
        ew = k // count
        word = input_ram_word(k, count, simd)
        subs = word // simd
        cells = (word - ew) * b + 2 * word * b + simd * b * ((subs - 1 + 2) // 3)
        return cells, ram_blocks(word * b, 2 * (k // word))
    folds = k // simd
    return 2 * k * b + simd * b + simd * b * ((folds - 1 + 2) // 3), 0


def estimate_luts(op, pe: int, simd: int, count: int = 1) -> int:
    """Rough logic-cell (LUT4 + flip-flop) estimate of a matrix stage at a folding.

    Per lane: SIMD XNORs and a SIMD-input popcount tree with its pipeline registers (about 3
    cells per input bit; 8-bit inputs cost about 10 per element), an accumulator and a threshold
    comparator of log2(K) + 2 bits; per channel an output bit and the output register; about
    48 cells of control. The input buffer and held vector (``count`` transfers a vector):
    2·K·b registers and a word select, or a block RAM with a gather register
    (:func:`input_buffer_in_ram`). Weights and thresholds: ROMs of 128 words or more sit in
    block RAM (counted by :func:`estimate_brams`, not here), smaller ones in logic. A planning
    figure, not a synthesis result; calibrated on the iCEBreaker tfc build (within ~5% of
    nextpnr's logic cells).
    """
    acc_bits = max(1, math.ceil(math.log2(op.k * (255 if op.in_bits == 8 else 1) + 1))) + 2
    per_bit = 10 if op.in_bits == 8 else 3
    datapath = pe * (simd * per_bit + 3 * acc_bits) + 2 * op.channels + _CONTROL_CELLS
    groups, folds = op.channels // pe, op.k // simd
    rom = _memory_cells(pe * simd, groups * folds)[0] + \
        _memory_cells(pe * acc_bits, groups * getattr(op, "classes", 1))[0]
    if getattr(op, "classes", 1) > 1:   # pad-class counters and the class register
        _, oh, ow = op.out_shape
        datapath += 2 * (int(oh).bit_length() + int(ow).bit_length() + op.classes.bit_length())
    if isinstance(op, ScoreLayer):
        datapath += op.channels * 40
    return int(datapath + rom + _buffer_cells(op, simd, count)[0])


def estimate_brams(op, pe: int, simd: int, count: int = 1) -> int:
    """Block RAMs (4-kbit iCE40 blocks) of a matrix stage at a folding: the weight and threshold
    ROMs of 128 words or more, and an input buffer in RAM (:func:`estimate_luts`)."""
    acc_bits = max(1, math.ceil(math.log2(op.k * (255 if op.in_bits == 8 else 1) + 1))) + 2
    groups, folds = op.channels // pe, op.k // simd
    return (_memory_cells(pe * simd, groups * folds)[1]
            + _memory_cells(pe * acc_bits, groups * getattr(op, "classes", 1))[1]
            + _buffer_cells(op, simd, count)[1])


def folding_cost(op, pe: int, simd: int, count: int = 1) -> int:
    """What :class:`ChooseFolding` minimises: :func:`estimate_luts` plus :data:`BRAM_CELLS` per
    block of :func:`estimate_brams`."""
    return estimate_luts(op, pe, simd, count) + BRAM_CELLS * estimate_brams(op, pe, simd, count)


def mst_eligible(op) -> bool:
    """Whether a stage can be an MST-compressed layer (a binary-input hidden matrix layer with
    one threshold per channel: a convolution with pad classes is not)."""
    return isinstance(op, _Matrix) and op.input_bits == 1 and op.thresholds is not None \
        and op.classes == 1


def estimate_mst_luts(op, tree=None) -> int:
    """Rough LUT4 estimate of an MST-compressed layer (PE = C, SIMD = K, one vector a cycle).

    ``tree`` is an :class:`~bnnforge.compiler.mst.MSTResult` or the ``mst`` node attribute
    (``weight``, ``roots``); ``None`` computes ``layer_tree(op)`` (:mod:`bnnforge.compiler.mst`).
    Costed like :func:`estimate_luts`: about 2 LUTs per popcount input bit over the tree's
    ``K * roots + weight`` positions, a threshold comparator per channel and an adder per child
    of log2(K) + 2 bits; the weights are constants in the logic, so there is no ROM.
    """
    from .mst import layer_tree

    if tree is None:
        tree = layer_tree(op)
    if isinstance(tree, dict):
        if "weight" not in tree or "roots" not in tree:
            raise ValueError(f"an mst attribute needs 'weight' and 'roots', got keys "
                             f"{sorted(tree)}")
        weight, roots = int(tree["weight"]), len(tree["roots"])
    else:
        weight, roots = int(tree.weight), len(tree.roots)
    acc_bits = max(1, math.ceil(math.log2(op.k + 1))) + 2
    xnor = op.k * roots + weight
    return int(2 * xnor + op.channels * acc_bits + (op.channels - roots) * acc_bits)


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
        ``{stage: (pe, simd)}`` fixed by hand; checked for legality. The input node may be given
        as ``{"input": (pixels_per_transfer, 1)}``.

    With neither target nor budget the pipeline is balanced on its slowest stage at SIMD up to
    32 and PE 1 (a small, middle-of-the-road design).

    With a target, when the input stream (one transfer per cycle) would be slower than the
    target, the input node's ``pixels_per_transfer`` is raised to the smallest divisor of H·W
    (up to :data:`MAX_PIXELS_PER_TRANSFER`) that meets it; otherwise it is kept (default 1).

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
        return estimate_luts(op, fold[0], fold[1], count)

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
    def cheapest(op, target: int, count: int = 1) -> tuple[int, int] | None:
        """The folding of least :func:`folding_cost` (``count`` input transfers per vector) that
        meets ``target`` cycles per frame."""
        best = None
        for pe in divisors(op.channels):
            for simd in divisors(op.k):
                if stage_cycles(op, pe, simd) > target:
                    continue
                key = (folding_cost(op, pe, simd, count), pe * simd, pe)
                if best is None or key < best[0]:
                    best = (key, (pe, simd))
        return None if best is None else best[1]

    def _floor(self, graph: DataflowGraph, ppt: int = 1) -> int:
        """Cycles per frame that no folding can beat (input transfer rate, window generators)."""
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
            choice = self.cheapest(op, target, counts[name])
            if choice is None:
                fastest = stage_cycles(op, op.channels, op.k)
                raise FoldingError(
                    f"stage {name} needs at least {fastest} cycles per frame even fully "
                    f"parallel (PE={op.channels}, SIMD={op.k}); the target is {target}: lower "
                    "the throughput target")
            if self.mst and mst_eligible(op) and \
                    estimate_mst_luts(op, self._tree(graph, name)) < \
                    folding_cost(op, *choice, counts[name]):
                choice = (op.channels, op.k, True)        # one vector a cycle: meets target
            folds[name] = choice
        return folds

    def _total_luts(self, graph: DataflowGraph, folds: dict, ppt: int = 1) -> int:
        counts = transfers_per_vector(graph, ppt)
        return sum(self._luts(graph, n, f, counts[n]) for n, f in folds.items())

    def _pixels_per_transfer(self, graph: DataflowGraph) -> tuple[int, bool]:
        """Return the input's pixels per transfer and whether it is fixed (override)."""
        name = graph.input_node()
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
        return pixels_per_transfer(graph), False

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
                    f"{widest} pixel(s), or one window pixel, "
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
