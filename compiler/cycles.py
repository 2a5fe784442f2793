"""Cycle model: cycles per frame of every node and the stream each matrix stage reads.

A matrix stage (``BinaryDense``, ``BinaryConv``, ``ScoreLayer``) with ``PE`` lanes of ``SIMD``
elements takes ``(C_out / PE) * (K / SIMD)`` cycles per input vector (FINN's folding model); a
convolution processes one vector per output pixel. Streaming stages without folding take one
cycle per position of their padded input (sliding windows, max-pools: :func:`window_cycles`) or
per pixel they pass (the ``add`` and ``concat`` joins of a branching graph: H·W per frame, 1 for
a vector); the input takes one cycle per transfer, and a transfer carries
``pixels_per_transfer`` pixels (an attribute of the input node, default 1; see
:func:`pixels_per_transfer`).

The graph may branch (a DAG): the stream a node reads is its producer's output
(:func:`producers`), not the node before it in graph order, and a stream read by several nodes
is forked in hardware at no cost in cycles. A node's cycles per frame depend on itself only, so
the pipeline's bottleneck is the slowest node anywhere in the graph.

The rules the hardware shares with this model (when a matrix unit keeps its input in block RAM,
:func:`input_buffer_in_ram`) live here too: ``hw`` and ``sim`` import them, they never import
each other.
"""

from __future__ import annotations

import math

from .ir import BinaryConv, DataflowGraph, InputLayer, MaxPool, ScoreLayer, _Matrix
from .pipeline import pipeline_for

__all__ = ["JOIN_KINDS", "MAX_INPUT_RAM_WORD", "consumers", "held_vector_rotates",
           "input_buffer_in_ram",
           "input_ram_word", "input_word_transfers", "matrix_ops", "pipeline_cycles",
           "pixels_per_transfer", "producers", "stage_cycles", "transfers_per_vector",
           "vectors_per_frame", "window_cycles"]

#: Kinds that join streams of a branching graph: one token per pixel in and out, no folding.
JOIN_KINDS = ("add", "concat")


def producers(graph: DataflowGraph, name: str) -> list[str]:
    """Return the nodes whose outputs feed ``name``, in port order (``[]`` for the input)."""
    return graph.inputs(name)


def consumers(graph: DataflowGraph, name: str) -> list[str]:
    """Return the nodes that read the output of ``name``, in graph order."""
    return graph.consumers(name)


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

    The input stage takes H·W / ``pixels_per_transfer`` cycles per frame; an ``add`` or
    ``concat`` join one cycle per pixel (H·W, or 1 for a vector).
    """
    if isinstance(op, (_Matrix, ScoreLayer)):
        return vectors_per_frame(op) * (op.channels // pe) * (op.k // simd)
    if isinstance(op, MaxPool):
        return window_cycles(op)
    if isinstance(op, InputLayer):
        return _pixels(op.in_shape) // pixels_per_transfer
    if getattr(op, "kind", None) in JOIN_KINDS:
        return _pixels(tuple(op.out_shape))
    return 1


def window_cycles(op) -> int:
    """Cycles per frame of the window generator in front of a convolution or in a max-pool.

    The generator walks the padded input, one position per cycle (a pixel or a padding
    position, windows made on the way), so it takes ``(H + 2·ph) * (W + 2·pw)`` cycles per
    frame; a max-pool has no padding (H·W).
    """
    _, h, w = op.in_shape
    ph, pw = getattr(op, "padding", (0, 0))
    return int((h + 2 * ph) * (w + 2 * pw))


def pipeline_cycles(graph: DataflowGraph) -> dict[str, int]:
    """Cycles per frame of every node of a folded graph (chain or DAG), in graph order."""
    out = {}
    ppt = pixels_per_transfer(graph)
    for name, op in graph:
        fold = graph.attrs(name).get("fold")
        if isinstance(op, (_Matrix, ScoreLayer)):
            if not fold:
                from .folding import FoldingError  # folding imports this module

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


def input_word_transfers(k: int, count: int, simd: int, input_bits: int = 1,
                         ram: bool | None = None) -> int:
    """Transfers a matrix unit gathers into one word of its input RAM, when that is more
    than one (else 0): only a word's last transfer then waits for room in the buffer (the
    unit's ``word_transfers``; docs/design.md §4). ``ram``: whether the buffer is in RAM
    (``None``: :func:`input_buffer_in_ram`)."""
    if ram is None:
        ram = input_buffer_in_ram(k, count, simd, input_bits)
    if not ram:
        return 0
    per = input_ram_word(k, count, simd) // (k // count)
    return per if per > 1 else 0


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


def held_vector_rotates(k: int, count: int, simd: int, input_bits: int = 1,
                        pipeline=None) -> bool:
    """Whether a matrix unit's held vector rotates by a SIMD word every step (all K·b of its
    flip-flops written a step): it is in registers (:func:`input_buffer_in_ram` is false) and
    has more words than the pipeline selects from
    (:attr:`~bnnforge.compiler.pipeline.Pipeline.select_folds`)."""
    return (not input_buffer_in_ram(k, count, simd, input_bits)) and \
        pipeline_for(pipeline).rotates(k // simd)


def _streams(graph: DataflowGraph, ppt: int) -> dict[str, tuple[int, int]]:
    """(pixels per frame, pixels per transfer) of every node's output stream.

    The input's stream carries ``ppt`` pixels a transfer; a convolution's, a max-pool's and a
    join's one pixel (a join reads streams of one pixel a transfer: a popcount matrix stage,
    a pool or a convolution); a dense stage's one vector a frame.
    """
    out = {}
    for name, op in graph:
        shape = tuple(op.out_shape)
        if not producers(graph, name):
            out[name] = (_pixels(tuple(op.in_shape)), ppt)
        elif isinstance(op, (BinaryConv, MaxPool)) or getattr(op, "kind", None) in JOIN_KINDS:
            out[name] = (_pixels(shape), 1)
        elif isinstance(op, (_Matrix, ScoreLayer)):
            out[name] = (1, 1)
        else:                                   # a kind that passes its stream on as it is
            out[name] = out[producers(graph, name)[0]]
    return out


def transfers_per_vector(graph: DataflowGraph, ppt: int | None = None) -> dict[str, int]:
    """Input transfers per vector of every matrix stage (the hardware's ``count``).

    A dense stage fed by a feature map of H·W pixels takes H·W / P transfers, P being the
    pixels per transfer of the stream that feeds it: its producer's output (the input's ``ppt``,
    or the graph's, when the input feeds it directly; 1 after a convolution, pool or join). A
    stage fed by a vector, and a convolution (fed by its window generator), takes one.
    """
    per = graph.pixels_per_transfer() if ppt is None else ppt
    streams = _streams(graph, per)
    out = {}
    for name, op in graph:
        if isinstance(op, BinaryConv):
            out[name] = 1
        elif isinstance(op, (_Matrix, ScoreLayer)):
            feeds = producers(graph, name)
            pixels, each = streams[feeds[0]] if feeds else (1, 1)
            out[name] = max(1, pixels // each)
    return out
