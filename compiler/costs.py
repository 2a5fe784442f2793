"""Resource cost model: logic cells and block RAMs of a node at a folding, and of a plan block.

Planning figures, not synthesis results: a matrix stage's datapath, ROMs and input buffer
(:func:`estimate_luts`, :func:`estimate_brams`), an MST-compressed layer
(:func:`estimate_mst_luts`), the joins of a branching graph (:func:`estimate_join_luts`) and the
fork of a stream read by several nodes (:func:`estimate_fork_luts`). One register bit counts as
one logic cell (LUT4 + flip-flop). :class:`~bnnforge.compiler.folding.ChooseFolding` minimises
:func:`folding_cost`.

:data:`COSTS` prices every block kind of the hardware plan (:mod:`bnnforge.compiler.plan`) with
those functions, one rule per kind; :func:`block_luts` and :func:`block_brams` look a block up in
it, and the board estimates (:mod:`bnnforge.boards.estimate`) add them over the plan.

Where each ROM sits (block RAM or logic) is :func:`~bnnforge.compiler.memory.rom_style`'s
choice by cost, the one rule the plan and the generator follow too.
"""

from __future__ import annotations

import math

from .cycles import input_buffer_in_ram, input_ram_word
from .ir import ScoreLayer, _Matrix
from .memory import bram_price, ram_blocks, rom_cost, rom_style
from .pipeline import PIPELINES, output_slots, pipeline_for

__all__ = ["COSTS", "TABLE_CELLS_PER_BYTE", "block_brams", "block_luts", "emits_popcount",
           "estimate_brams", "estimate_fork_luts", "estimate_join_luts", "estimate_luts",
           "estimate_mst_luts", "folding_cost", "matrix_roms", "mst_eligible", "pipeline_cells",
           "ram_blocks"]

#: Logic cells of a matrix unit's sequencer, control pipeline and handshakes.
_CONTROL_CELLS = 48

def matrix_roms(op, pe: int, simd: int,
                family: str | None = None) -> dict[str, tuple[int, int, str]]:
    """The ROMs of a matrix stage at a folding: ``{"weights": (width, depth, style)}`` and,
    for a stage that compares with thresholds (not the score layer, not one that emits
    popcounts), ``"thresholds"``; each ROM's style by
    :func:`~bnnforge.compiler.memory.rom_style` on ``family``."""
    groups, folds = op.channels // pe, op.k // simd
    roms = {"weights": (pe * simd, groups * folds)}
    if not emits_popcount(op) and not isinstance(op, ScoreLayer):
        roms["thresholds"] = (pe * _acc_bits(op), groups * getattr(op, "classes", 1))
    return {k: (w, d, rom_style(w, d, family)) for k, (w, d) in roms.items()}


def _rom_cells(op, pe, simd, family, roms) -> tuple[int, int]:
    """(logic cells, block RAMs) of a matrix stage's ROMs, in the styles ``roms`` names
    (``{"weights": style, ...}``, e.g. a plan block's choice) or else by cost."""
    cells = blocks = 0
    for key, (w, d, style) in matrix_roms(op, pe, simd, family).items():
        c, b = rom_cost(w, d, (roms or {}).get(key, style), family)
        cells, blocks = cells + c, blocks + b
    return cells, blocks


def _buffer_cells(op, simd: int, count: int, family: str | None = None) -> tuple[int, int]:
    """(logic cells, block RAMs) of a matrix unit's input buffer and held vector."""
    k, b = op.k, op.input_bits
    if input_buffer_in_ram(k, count, simd, b):
        ew = k // count
        word = input_ram_word(k, count, simd)
        subs = word // simd
        cells = (word - ew) * b + 2 * word * b + simd * b * ((subs - 1 + 2) // 3)
        return cells, ram_blocks(word * b, 2 * (k // word), family)
    folds = k // simd
    return 2 * k * b + simd * b + simd * b * ((folds - 1 + 2) // 3), 0


def emits_popcount(op) -> bool:
    """Whether a matrix stage outputs its channels' popcounts (``emit="popcount"``, feeding an
    ``add`` join) rather than thresholded bits."""
    return getattr(op, "emit", "bits") == "popcount"


def _acc_bits(op) -> int:
    """Bits of a lane's accumulator (and threshold comparator): log2(K) + 2."""
    return max(1, math.ceil(math.log2(op.k * (255 if op.in_bits == 8 else 1) + 1))) + 2


def pipeline_cells(op, pe: int, simd: int, pipeline=None) -> int:
    """Logic cells (one a register bit) a :class:`~bnnforge.compiler.pipeline.Pipeline` adds to
    a matrix stage over the ``compact`` one the base estimate was calibrated on: the extra
    adder-tree registers of every lane, the ROM data and second operand registers
    (``rom_register`` x PE·SIMD, ``operand_stage`` x SIMD·b bits, the ROM address with
    ``operand_register``); the compare stage reuses the accumulators."""
    pipe = pipeline_for(pipeline)
    compact = PIPELINES["compact"]
    term = 1 if op.in_bits == 1 else 10
    tree = pe * (pipe.tree_register_bits(simd, term) - compact.tree_register_bits(simd, term))
    rom = pipe.operand_stage * simd * op.in_bits + int(pipe.rom_register) * pe * simd
    if pipe.operand_stage > int(pipe.rom_register):     # the ROM read from a registered address
        rom += int((op.channels // pe) * (op.k // simd)).bit_length()
    return tree + rom


def estimate_luts(op, pe: int, simd: int, count: int = 1, pipeline=None,
                  family: str | None = None, roms: dict | None = None) -> int:
    """Rough logic-cell (LUT4 + flip-flop) estimate of a matrix stage at a folding.

    Per lane: SIMD XNORs and a SIMD-input popcount tree with its pipeline registers (about 3
    cells per input bit; 8-bit inputs cost about 10 per element), an accumulator and a threshold
    comparator of log2(K) + 2 bits; per channel an output bit and the output register; about
    48 cells of control. The input buffer and held vector (``count`` transfers a vector):
    2·K·b registers and a word select, or a block RAM with a gather register
    (:func:`input_buffer_in_ram`). Weights and thresholds (:func:`matrix_roms`): a ROM in logic
    at 16 bits a cell, one in block RAM counted by :func:`estimate_brams`, not here; each where
    :func:`~bnnforge.compiler.memory.rom_style` puts it on ``family`` (or as ``roms`` says:
    ``{"weights": style, "thresholds": style}``, a plan block's choice). A planning figure,
    not a synthesis result; calibrated on the iCEBreaker tfc build (within ~5% of nextpnr's
    logic cells).

    A stage that emits popcounts (:func:`emits_popcount`) has no threshold comparator and no
    threshold ROM, and adds an output register of C·bit_length(K) bits.

    ``pipeline`` (a :class:`~bnnforge.compiler.pipeline.Pipeline` or its name; ``None``:
    ``generic``) adds its registers (:func:`pipeline_cells`).
    """
    acc_bits = _acc_bits(op)
    per_bit = 10 if op.in_bits == 8 else 3
    popcount = emits_popcount(op)
    lane = simd * per_bit + (2 if popcount else 3) * acc_bits
    datapath = pe * lane + 2 * op.channels + _CONTROL_CELLS
    rom = _rom_cells(op, pe, simd, family, roms)[0]
    if popcount:
        datapath += op.channels * int(op.k).bit_length()
    if getattr(op, "classes", 1) > 1:   # pad-class counters and the class register
        _, oh, ow = op.out_shape
        datapath += 2 * (int(oh).bit_length() + int(ow).bit_length() + op.classes.bit_length())
    pipe = pipeline_for(pipeline)
    f = (op.channels // pe) * (op.k // simd)
    if isinstance(op, ScoreLayer):
        # a lane's score (mul·s + add: one expression, or one per class when they differ) and
        # its compare with the running best
        uniform = op.mul is None or \
            len({(int(a), int(b)) for a, b in zip(op.mul, op.add, strict=True)}) == 1
        datapath += 40 * (pe if uniform else op.channels)
        lat = pipe.score_latency(simd, pe, op.k // simd)
        out_width = op.channels * (op.score_bits or 32)
    else:
        lat = pipe.mvtu_latency(simd)
        out_width = op.channels * (int(op.k).bit_length() if popcount else 1)
    # an output queue of more than one result (a fast unit: F < latency + 2)
    datapath += (output_slots(f, lat) - 1) * out_width
    return int(datapath + rom + _buffer_cells(op, simd, count, family)[0]
               + pipeline_cells(op, pe, simd, pipeline))


def estimate_brams(op, pe: int, simd: int, count: int = 1, family: str | None = None,
                   roms: dict | None = None) -> int:
    """Block RAMs of ``family`` (:func:`~bnnforge.compiler.memory.ram_blocks`; ``None``:
    4-kbit iCE40 blocks) of a matrix stage at a folding: its weight and threshold ROMs that
    sit in block RAM (:func:`estimate_luts` says which), and an input buffer in RAM. A stage
    that emits popcounts has no threshold ROM."""
    return (_rom_cells(op, pe, simd, family, roms)[1]
            + _buffer_cells(op, simd, count, family)[1])


def folding_cost(op, pe: int, simd: int, count: int = 1, pipeline=None,
                 family: str | None = None) -> int:
    """What :class:`~bnnforge.compiler.folding.ChooseFolding` minimises: :func:`estimate_luts`
    plus each block of :func:`estimate_brams` at the price
    :func:`~bnnforge.compiler.memory.rom_style` weighs it with on ``family``
    (:func:`~bnnforge.compiler.memory.bram_price`), the ROMs each in its cheaper home."""
    return estimate_luts(op, pe, simd, count, pipeline, family) + \
        bram_price(family) * estimate_brams(op, pe, simd, count, family)


def mst_eligible(op) -> bool:
    """Whether a stage can be an MST-compressed layer (a binary-input hidden matrix layer with
    one threshold per channel: a convolution with pad classes is not, nor a stage that emits
    popcounts)."""
    return isinstance(op, _Matrix) and op.input_bits == 1 and op.thresholds is not None \
        and op.classes == 1 and not emits_popcount(op)


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
    acc_bits = _acc_bits(op)                # an MST layer's inputs are binary
    xnor = op.k * roots + weight
    return int(2 * xnor + op.channels * acc_bits + (op.channels - roots) * acc_bits)


def _join_selects(op) -> int:
    """Threshold rows S of an ``add`` join: 2 for a bits shortcut (indexed by the shortcut
    bit), short_k + 1 for a popcount shortcut (indexed by its popcount)."""
    if getattr(op, "short", "bits") == "bits":
        return 2
    return int(op.short_k) + 1


def estimate_join_luts(op) -> int:
    """Rough logic-cell estimate of a join of a branching graph (kind ``add`` or ``concat``).

    ``add``: per channel, a compare of the main popcount (bit_length(main_k) bits) against its
    S threshold constants (S = 2, or short_k + 1 for a popcount shortcut; about one cell per bit
    and constant, as a matrix stage's comparator) and the C-bit output register. ``concat``:
    wires only, 0.
    """
    kind = getattr(op, "kind", None)
    if kind == "concat":
        return 0
    if kind != "add":
        raise ValueError(f"estimate_join_luts costs 'add' and 'concat' nodes, not {kind!r}")
    channels = int(op.out_shape[0])
    bits = int(op.main_k).bit_length()
    return channels * (_join_selects(op) * bits + 1)


def estimate_fork_luts(consumers: int) -> int:
    """Logic cells of the eager fork of a stream read by ``consumers`` nodes: per output about
    one LUT (its valid gate and its term of the ready AND) and its ``taken`` flip-flop; 0 for a
    stream read by one node (no fork)."""
    return 2 * consumers if consumers >= 2 else 0


# -- the hardware plan's blocks -------------------------------------------------------------------

#: Logic cells of an input table per byte lane: 8 output bits of an 8-input function, about 32
#: LUT4 each (uncalibrated).
TABLE_CELLS_PER_BYTE = 8 * 32

#: Logic cells of a window generator's row and column counters, position decode and
#: handshake (no address arithmetic: the line buffers are addressed by the column counter).
_WINDOW_CONTROL_CELLS = 48


#: Line buffers of at most this many bits are built in logic (Yosys maps a RAM of 64 bits to
#: flip-flops and multiplexers on iCE40 and one of 96 bits to a block RAM), at about 1.5 cells
#: a bit.
_LINE_LOGIC_BITS = 64


def _line_bits(b: dict) -> int:
    """Bits of a window generator's line buffers: Wp words (the padded width) of kh - 1
    pixels."""
    return (b["kernel"][0] - 1) * b["width"] * b["padded"][1]


def _window_cells(pixel_bits: int, kernel: tuple) -> int:
    """Logic cells of a window generator (sliding window or max-pool): control, the pad
    multiplexer (one pixel), the window's kw - 1 held columns and its output register
    (kh x kw pixels)."""
    kh, kw = kernel
    return _WINDOW_CONTROL_CELLS + pixel_bits * (1 + (kw - 1) * kh + kh * kw)


def _window_luts(b: dict) -> int:
    # the block reads one pixel a transfer (a serializer in front splits wider transfers)
    bits = _line_bits(b)
    lines = -(-3 * bits // 2) if bits <= _LINE_LOGIC_BITS else 0
    return _window_cells(b["width"], b["kernel"]) + lines


def _window_brams(b: dict) -> int:
    """The kh - 1 line buffers: one RAM of Wp words of kh - 1 pixels (in logic when small)."""
    bits = _line_bits(b)
    if bits <= _LINE_LOGIC_BITS:
        return 0
    return ram_blocks((b["kernel"][0] - 1) * b["width"], b["padded"][1], b.get("family"))


def _matrix_luts(b: dict) -> int:
    return estimate_luts(b["op"], b["pe"], b["simd"], b["count"], b.get("pipeline"),
                         b.get("family"), roms=b.get("roms"))


def _matrix_brams(b: dict) -> int:
    return estimate_brams(b["op"], b["pe"], b["simd"], b["count"], b.get("family"),
                          roms=b.get("roms"))


def _score_luts(b: dict) -> int:
    """A matrix unit plus two copies of the scores (the collected scores and the output
    register), the lane scores with their copies along the argmax tree and the running best;
    synthesis keeps only the bits a score can reach, about bit_length(2K + 1) + 1."""
    op = b["op"]
    bits = min(op.score_bits, (2 * op.k + 1).bit_length() + 1)
    a = pipeline_for(b.get("pipeline")).argmax_stages(b["pe"])
    return _matrix_luts(b) + 2 * op.channels * bits + b["pe"] * bits * (1 + 2 * a) + 2 * bits


def _none(b: dict) -> int:
    return 0


#: ``{kind: (logic cells, block RAMs)}``: the cost rule of every block kind of the plan
#: (:data:`bnnforge.compiler.plan.KINDS` has the same keys), each a function of the block dict:
#:
#: * ``fifo``: depth x width cells (one register bit a cell); no block RAM.
#: * ``threshold``, ``serializer``, ``deserializer``: 0 (comparators and transfer registers the
#:   calibration absorbs).
#: * ``table``: :data:`TABLE_CELLS_PER_BYTE` per byte lane.
#: * ``window``, ``maxpool``: 48 cells of control, the pad multiplexer, kw - 1 held columns and
#:   the output register (pixel bits x (1 + (kw - 1)·kh + kh·kw)); kh - 1 line buffers of the
#:   padded width Wp in block RAM (one RAM, kh - 1 pixels a word), or in logic (1.5 cells a
#:   bit) when they hold at most 64 bits.
#: * ``mvtu``: :func:`estimate_luts` and :func:`estimate_brams` at the block's PE, SIMD,
#:   ``count``, ``family`` and ROM styles (``roms``); ``score`` adds three copies of the
#:   scores' live bits.
#: * ``mst``: :func:`estimate_mst_luts` of the block's ``tree``; no block RAM (the weights are
#:   constants in the logic).
#: * ``fork``: :func:`estimate_fork_luts` of its outputs; ``add``, ``concat``:
#:   :func:`estimate_join_luts`; no block RAM.
COSTS: dict[str, tuple] = {
    "fifo": (lambda b: b["depth"] * b["width"], _none),
    "threshold": (_none, _none),
    "table": (lambda b: TABLE_CELLS_PER_BYTE * b["width"] // 8, _none),
    "serializer": (_none, _none),
    "deserializer": (_none, _none),
    "window": (_window_luts, _window_brams),
    "maxpool": (_window_luts, _window_brams),
    "mvtu": (_matrix_luts, _matrix_brams),
    "score": (_score_luts, _matrix_brams),
    "mst": (lambda b: estimate_mst_luts(b["op"], b["tree"]), _none),
    "fork": (lambda b: estimate_fork_luts(b["outputs"]), _none),
    "add": (lambda b: estimate_join_luts(b["op"]), _none),
    "concat": (lambda b: estimate_join_luts(b["op"]), _none),
}


def _rule(block: dict) -> tuple:
    kind = block.get("kind") if isinstance(block, dict) else None
    if kind not in COSTS:
        raise ValueError(f"no cost rule for block kind {kind!r} (block "
                         f"{block.get('name') if isinstance(block, dict) else block!r}); "
                         f"kinds: {', '.join(COSTS)}")
    return COSTS[kind]


def block_luts(block: dict) -> int:
    """Logic cells of one block of the hardware plan (:data:`COSTS`)."""
    return int(_rule(block)[0](block))


def block_brams(block: dict) -> int:
    """Block RAMs (of the block's ``family``; 4-kbit iCE40 blocks without one) of one block of
    the hardware plan (:data:`COSTS`)."""
    return int(_rule(block)[1](block))
