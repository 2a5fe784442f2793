"""Resource cost model: logic and block RAMs of a node at a folding, and of a plan block.

Planning figures, not synthesis results. Logic is counted in two parts
(:class:`Resources`): LUT4 equivalents (``luts``; a carry-chain cell counts one) with the
flip-flops they feed (``ffs``), and the flip-flops that hold or move data (``regs``: shift and
holding registers, buffers, FIFOs, output queues, ROM data registers). nextpnr counts the two
differently per family: on iCE40 a holding register takes a logic cell (ICESTORM_LC) of its
own, on ECP5 a slice packs flip-flops beside any LUT, so TRELLIS_COMB counts the LUTs alone
(:data:`FAMILY_CELLS`, :func:`family_cells`; an ECP5 build with 3,100 more flip-flops kept its
TRELLIS_COMB count). One factor per family could not fit both kinds of design.

A matrix stage (:func:`matrix_resources`, :func:`estimate_luts`, :func:`estimate_brams`), an
MST-compressed layer (:func:`estimate_mst_luts`), the joins of a branching graph
(:func:`estimate_join_luts`) and the fork of a stream read by several nodes
(:func:`estimate_fork_luts`). :class:`~bnnforge.compiler.folding.ChooseFolding` minimises
:func:`folding_cost`.

:data:`COSTS` prices every block kind of the hardware plan (:mod:`bnnforge.compiler.plan`), one
rule per kind; :func:`block_resources`, :func:`block_luts` and :func:`block_brams` look a block
up in it, and the board estimates (:mod:`bnnforge.boards.estimate`) add them over the plan.

Where each ROM sits (block RAM or logic) is :func:`~bnnforge.compiler.memory.rom_style`'s
choice by cost, the one rule the plan and the generator follow too.
"""

from __future__ import annotations

import math
from typing import NamedTuple

from .cycles import input_buffer_in_ram, input_ram_word
from .ir import ScoreLayer, _Matrix
from .memory import bram_price, ram_blocks, rom_cost, rom_style
from .pipeline import output_slots, pipeline_for

__all__ = ["COSTS", "FAMILY_CELLS", "LANE_LUTS", "TABLE_CELLS_PER_BYTE", "Resources",
           "block_brams", "block_luts", "block_resources", "emits_popcount", "estimate_brams",
           "estimate_fork_luts", "estimate_join_luts", "estimate_luts", "estimate_mst_luts",
           "family_cells", "folding_cost", "lane_luts", "matrix_resources", "matrix_roms",
           "mst_eligible", "ram_blocks"]


class Resources(NamedTuple):
    """A block's logic, counted apart so each family can price it as nextpnr counts it.

    ``luts``: LUT4 equivalents of logic (a carry-chain cell counts one). ``ffs``: flip-flops
    fed by their own LUT (they share its logic cell). ``regs``: flip-flops that hold or move
    data (shift and holding registers, buffers, queues, ROM data registers): on iCE40 each
    takes a logic cell of its own; an ECP5 slice packs them beside any LUT.
    """

    luts: float = 0
    ffs: float = 0
    regs: float = 0

    def __add__(self, other):
        return Resources(self.luts + other.luts, self.ffs + other.ffs, self.regs + other.regs)


#: What nextpnr counts per LUT4 equivalent and per holding register, by FPGA family
#: (``luts_used``: ICESTORM_LC on iCE40, TRELLIS_COMB on ECP5; its packer adds a few cells per
#: carry chain and wide function on ECP5); calibrated on our builds (docs/design.md,
#: "Resource estimates"). No family: the iCE40 count.
FAMILY_CELLS = {None: (1.0, 1.0), "ice40up": (1.0, 1.0), "ice40hx": (1.0, 1.0),
                "ecp5": (0.91, 0.0)}

#: LUT4 equivalents per input bit of a binary lane, by lane shape
#: (:attr:`~bnnforge.compiler.pipeline.Pipeline.lanes`) and block family: the carry-chain
#: popcount (``hw/popcount.py``; placed: ~2.45 on ECP5 with chains of 4 CCU2C, ~2.3 cells on
#: iCE40) or the binary adder tree (~4.5 on ECP5, ~2.8 on iCE40).
LANE_LUTS = {("ecp5", "ecp5"): 2.45, ("ice40", "ice40"): 2.3, ("ecp5", "ice40"): 2.3,
             ("ice40", "ecp5"): 2.45, ("adder", "ecp5"): 4.5, ("adder", "ice40"): 2.8}

#: LUT4s and flip-flops of a matrix unit's sequencer, credit and handshakes.
_CONTROL = (40, 30)


def family_cells(res: Resources, family: str | None = None) -> int:
    """``res`` in nextpnr's logic-cell count for ``family`` (:data:`FAMILY_CELLS`)."""
    lut, reg = FAMILY_CELLS.get(family, FAMILY_CELLS[None])
    return round(lut * res.luts + reg * res.regs)


def emits_popcount(op) -> bool:
    """Whether a matrix stage outputs its channels' popcounts (``emit="popcount"``, feeding an
    ``add`` join) rather than thresholded bits."""
    return getattr(op, "emit", "bits") == "popcount"


def _acc_bits(op) -> int:
    """Bits of a lane's accumulator (and threshold comparator): log2(K) + 2."""
    return max(1, math.ceil(math.log2(op.k * (255 if op.in_bits == 8 else 1) + 1))) + 2


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


def lane_luts(simd: int, input_bits: int, pipeline=None, family: str | None = None) -> float:
    """LUT4 equivalents of one lane over ``simd`` inputs: a binary lane by its shape and
    family (:data:`LANE_LUTS`), an 8-bit lane's signed adder tree about 10 an element."""
    if input_bits != 1:
        return 10.0 * simd
    if simd <= 1:
        return 0.0
    shape = pipeline_for(pipeline).lanes
    return LANE_LUTS[(shape, "ecp5" if family == "ecp5" else "ice40")] * simd


def _mux_luts(ways: int) -> int:
    """LUT4s of a ways-to-1 multiplexer of one bit (a LUT4 picks one of two with its select;
    wider ones take about (ways - 1) / 2 with the families' wide-function multiplexers)."""
    return 0 if ways <= 1 else -(-(ways - 1) // 2)


def _buffer(op, simd: int, count: int) -> tuple[Resources, bool]:
    """A matrix unit's input buffer and held vector: (:class:`Resources`, in block RAM):
    registers (2·K·b), or two banks of a block RAM with a gather register and a word
    select."""
    k, b = op.k, op.in_bits
    if input_buffer_in_ram(k, count, simd, b):
        word = input_ram_word(k, count, simd)
        return Resources(luts=simd * b * _mux_luts(word // simd),
                         regs=(word - k // count) * b), True
    return Resources(regs=2 * k * b), False


def matrix_resources(op, pe: int, simd: int, count: int = 1, pipeline=None,
                     family: str | None = None, roms: dict | None = None) -> Resources:
    """LUT4s and flip-flops of a matrix stage at a folding (:class:`Resources`).

    PE lanes of SIMD XNORs and a popcount (:func:`lane_luts`; 8-bit inputs: a signed adder
    tree) with their pipeline registers; per lane an accumulator (with K/SIMD > 1 steps a
    vector) and a threshold compare of log2(K) + 2 bits (a score unit: the lane's score and
    its compare with the running best); the operand's word select and registers; the input
    buffer and held vector (2·K·b registers, or a block RAM with a gather register:
    :func:`~bnnforge.compiler.cycles.input_buffer_in_ram`); the ROMs in logic
    (``ceil(bits / 16)`` LUT4s, :func:`matrix_roms`, in the styles ``roms`` names) and the
    fabric data registers of those in block RAM (the pipeline's ``rom_register``, one of them
    the block's own on ECP5); the output: C/PE groups gathered in a shift register and a queue
    of :func:`~bnnforge.compiler.pipeline.output_slots` results (a score unit: the collected
    scores, the lane scores beside the argmax tree and the running best); the sequencer.
    """
    pipe = pipeline_for(pipeline)
    b, acc = op.in_bits, _acc_bits(op)
    groups, folds = op.channels // pe, op.k // simd
    popcount, score = emits_popcount(op), isinstance(op, ScoreLayer)
    luts = pe * lane_luts(simd, b, pipe, family)
    ffs = pe * pipe.tree_register_bits(simd, 1 if b == 1 else 10)
    regs = 0.0
    # accumulate (a carry chain and its register) and the compare with the threshold
    if folds > 1:
        luts, ffs = luts + pe * acc, ffs + pe * acc
    else:
        regs += pe * acc
    if not popcount and not score:
        luts += pe * acc
    # the operand: a word select when K/SIMD > 1, then its registers
    luts += simd * b * _mux_luts(folds)
    stages = 1 + pipe.operand_stage
    if folds > 1:
        ffs, stages = ffs + simd * b, stages - 1
    regs += stages * simd * b
    # the ROMs: in logic, or the fabric data registers of those in block RAM
    for key, (width, depth, style) in matrix_roms(op, pe, simd, family).items():
        style = (roms or {}).get(key, style)
        luts += rom_cost(width, depth, style, family)[0]
        if style == "bram" and depth > 1:
            own = 1 if family == "ecp5" and pipe.rom_register else 0
            regs += max(0, int(pipe.rom_register) - own) * width
    # the input buffer and the held vector
    buf, _ = _buffer(op, simd, count)
    luts, regs = luts + buf.luts, regs + buf.regs
    # the output
    if score:
        uniform = op.mul is None or \
            len({(int(m), int(a)) for m, a in zip(op.mul, op.add, strict=True)}) == 1
        rw = min(op.score_bits or 32, (2 * op.k + 1).bit_length() + 1)
        a = pipe.argmax_stages(pe)
        # the lane scores (one affine a lane, or one a class), the argmax tree and the best
        luts += 30 * (pe if uniform else op.channels) + (pe + 1) * rw
        lat = pipe.score_latency(simd, pe, folds, b)
        out_width = op.channels * rw + max(1, (op.channels - 1).bit_length())
        regs += pe * rw * (1 + 2 * a) + (op.channels - pe) * rw + 2 * rw
    else:
        lane_bits = int(op.k).bit_length() if popcount else 1
        lat = pipe.mvtu_latency(simd, b)
        out_width = op.channels * lane_bits
        regs += (groups - 1) * pe * lane_bits
    regs += output_slots(groups * folds, lat) * out_width
    if getattr(op, "classes", 1) > 1:   # pad-class counters and the class register
        _, oh, ow = op.out_shape
        luts += 2 * (int(oh).bit_length() + int(ow).bit_length() + op.classes.bit_length())
    return Resources(luts + _CONTROL[0], ffs + _CONTROL[1], regs)


def estimate_luts(op, pe: int, simd: int, count: int = 1, pipeline=None,
                  family: str | None = None, roms: dict | None = None) -> int:
    """Logic cells of a matrix stage at a folding, in nextpnr's count for ``family``
    (:func:`family_cells` of :func:`matrix_resources`; no family: the iCE40 count). A
    planning figure, not a synthesis result (docs/design.md, "Resource estimates"). A stage
    that emits popcounts has no threshold comparator and no threshold ROM, and wider outputs.
    ``pipeline`` (a :class:`~bnnforge.compiler.pipeline.Pipeline` or its name; ``None``:
    ``generic``) sets its registers and lane shape."""
    return family_cells(matrix_resources(op, pe, simd, count, pipeline, family, roms), family)


def estimate_brams(op, pe: int, simd: int, count: int = 1, family: str | None = None,
                   roms: dict | None = None) -> int:
    """Block RAMs of ``family`` (:func:`~bnnforge.compiler.memory.ram_blocks`; ``None``:
    4-kbit iCE40 blocks) of a matrix stage at a folding: its weight and threshold ROMs that
    sit in block RAM (:func:`estimate_luts` says which), and an input buffer in RAM. A stage
    that emits popcounts has no threshold ROM."""
    blocks = 0
    for key, (w, d, style) in matrix_roms(op, pe, simd, family).items():
        blocks += rom_cost(w, d, (roms or {}).get(key, style), family)[1]
    if _buffer(op, simd, count)[1]:
        word = input_ram_word(op.k, count, simd)
        blocks += ram_blocks(word * op.in_bits, 2 * (op.k // word), family)
    return blocks


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
    About 2 LUTs per popcount input bit over the tree's ``K * roots + weight`` positions, a
    threshold comparator per channel and an adder per child of log2(K) + 2 bits; the weights
    are constants in the logic, so there is no ROM.
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


def _join(op) -> Resources:
    kind = getattr(op, "kind", None)
    if kind == "concat":
        return Resources()
    if kind != "add":
        raise ValueError(f"estimate_join_luts costs 'add' and 'concat' nodes, not {kind!r}")
    channels = int(op.out_shape[0])
    bits = int(op.main_k).bit_length()
    return Resources(luts=channels * _join_selects(op) * bits, regs=channels)


def estimate_join_luts(op) -> int:
    """Rough logic-cell estimate of a join of a branching graph (kind ``add`` or ``concat``).

    ``add``: per channel, a compare of the main popcount (bit_length(main_k) bits) against its
    S threshold constants (S = 2, or short_k + 1 for a popcount shortcut; about one cell per bit
    and constant, as a matrix stage's comparator) and the C-bit output register. ``concat``:
    wires only, 0.
    """
    return family_cells(_join(op))


def estimate_fork_luts(consumers: int) -> int:
    """Logic cells of the eager fork of a stream read by ``consumers`` nodes: per output about
    one LUT (its valid gate and its term of the ready AND), its ``taken`` flip-flop in the same
    cell; 0 for a stream read by one node (no fork)."""
    return consumers if consumers >= 2 else 0


# -- the hardware plan's blocks -------------------------------------------------------------------

#: Logic cells of an input table per byte lane: 8 output bits of an 8-input function, about 32
#: LUT4 each (uncalibrated).
TABLE_CELLS_PER_BYTE = 8 * 32

#: LUT4s of a window generator's row and column counters, position decode and handshake (no
#: address arithmetic: the line buffers are addressed by the column counter).
_WINDOW_CONTROL = 48

#: Line buffers of at most this many bits are built in logic (Yosys maps a RAM of 64 bits to
#: flip-flops and multiplexers on iCE40 and one of 96 bits to a block RAM), at about 1.5 cells
#: a bit.
_LINE_LOGIC_BITS = 64


def _line_bits(b: dict) -> int:
    """Bits of a window generator's line buffers: Wp words (the padded width) of kh - 1
    pixels."""
    return (b["kernel"][0] - 1) * b["width"] * b["padded"][1]


def _window(b: dict) -> Resources:
    """A window generator (sliding window or max-pool): control and the pad multiplexer (one
    pixel) in LUTs, the window's kw - 1 held columns and its output register (kh x kw pixels)
    as registers; small line buffers in logic (1.5 cells a bit)."""
    (kh, kw), px = b["kernel"], b["width"]
    bits = _line_bits(b)
    lines = -(-3 * bits // 2) if bits <= _LINE_LOGIC_BITS else 0
    return Resources(luts=_WINDOW_CONTROL + px + lines, regs=px * ((kw - 1) * kh + kh * kw))


def _window_brams(b: dict) -> int:
    """The kh - 1 line buffers: one RAM of Wp words of kh - 1 pixels (in logic when small)."""
    bits = _line_bits(b)
    if bits <= _LINE_LOGIC_BITS:
        return 0
    return ram_blocks((b["kernel"][0] - 1) * b["width"], b["padded"][1], b.get("family"))


def _matrix(b: dict) -> Resources:
    return matrix_resources(b["op"], b["pe"], b["simd"], b["count"], b.get("pipeline"),
                            b.get("family"), roms=b.get("roms"))


def _matrix_brams(b: dict) -> int:
    return estimate_brams(b["op"], b["pe"], b["simd"], b["count"], b.get("family"),
                          roms=b.get("roms"))


def _none(b: dict) -> int:
    return 0


#: ``{kind: (logic, block RAMs)}``: the cost rule of every block kind of the plan
#: (:data:`bnnforge.compiler.plan.KINDS` has the same keys), each a function of the block dict;
#: logic as :class:`Resources`:
#:
#: * ``fifo``: depth x width registers; no block RAM.
#: * ``threshold``, ``serializer``, ``deserializer``: none (comparators and transfer registers
#:   the calibration absorbs).
#: * ``table``: :data:`TABLE_CELLS_PER_BYTE` LUT4s per byte lane.
#: * ``window``, ``maxpool``: 48 LUT4s of control and the pad multiplexer, kw - 1 held
#:   columns and the output register (pixel bits x ((kw - 1)·kh + kh·kw) registers); kh - 1
#:   line buffers of the padded width Wp in block RAM (one RAM, kh - 1 pixels a word), or in
#:   logic (1.5 cells a bit) when they hold at most 64 bits.
#: * ``mvtu``, ``score``: :func:`matrix_resources` and :func:`estimate_brams` at the block's
#:   PE, SIMD, ``count``, pipeline, ``family`` and ROM styles (``roms``).
#: * ``mst``: :func:`estimate_mst_luts` of the block's ``tree``; no block RAM (the weights are
#:   constants in the logic).
#: * ``fork``: :func:`estimate_fork_luts` of its outputs; ``add``, ``concat``: per channel a
#:   compare and an output register; no block RAM.
COSTS: dict[str, tuple] = {
    "fifo": (lambda b: Resources(regs=b["depth"] * b["width"]), _none),
    "threshold": (lambda b: Resources(), _none),
    "table": (lambda b: Resources(luts=TABLE_CELLS_PER_BYTE * b["width"] // 8), _none),
    "serializer": (lambda b: Resources(), _none),
    "deserializer": (lambda b: Resources(), _none),
    "window": (_window, _window_brams),
    "maxpool": (_window, _window_brams),
    "mvtu": (_matrix, _matrix_brams),
    "score": (_matrix, _matrix_brams),
    "mst": (lambda b: Resources(luts=estimate_mst_luts(b["op"], b["tree"])), _none),
    "fork": (lambda b: Resources(luts=b["outputs"], ffs=b["outputs"])
             if b["outputs"] >= 2 else Resources(), _none),
    "add": (lambda b: _join(b["op"]), _none),
    "concat": (lambda b: _join(b["op"]), _none),
}


def _rule(block: dict) -> tuple:
    kind = block.get("kind") if isinstance(block, dict) else None
    if kind not in COSTS:
        raise ValueError(f"no cost rule for block kind {kind!r} (block "
                         f"{block.get('name') if isinstance(block, dict) else block!r}); "
                         f"kinds: {', '.join(COSTS)}")
    return COSTS[kind]


def block_resources(block: dict) -> Resources:
    """LUT4s and flip-flops of one block of the hardware plan (:data:`COSTS`)."""
    return _rule(block)[0](block)


def block_luts(block: dict, family: str | None = None) -> int:
    """Logic cells of one block of the hardware plan (:data:`COSTS`), in nextpnr's count for
    ``family`` (:func:`family_cells`; ``None``: the block's ``family``, if it has one)."""
    return family_cells(block_resources(block), family or block.get("family"))


def block_brams(block: dict) -> int:
    """Block RAMs (of the block's ``family``; 4-kbit iCE40 blocks without one) of one block of
    the hardware plan (:data:`COSTS`)."""
    return int(_rule(block)[1](block))
