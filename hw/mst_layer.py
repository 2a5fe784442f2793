"""The MST-compressed matrix-vector-threshold layer (docs/design.md §4, SIMD = K, PE = C).

Arithmetic (binary inputs; ``P = popcount(XNOR(x, w))`` over K elements, ``P >= T`` fires):

* A *root* channel computes ``P`` in full: K XNORs and a K-input popcount.
* A child ``c`` of parent ``p`` over an ordinary edge: let ``D`` be the ``d`` positions where the
  two weight rows differ and ``e = popcount(XNOR(x_D, w_c,D))`` (the child's agreements on D).
  Outside D both rows agree with x equally often, on D exactly one of them agrees, so::

      P_c = P_p - d + 2 e          (= P_p + d - 2 popcount(XNOR(x_D, w_p,D)))

* A child over a *complement* edge (its row is the inverse of the parent's except at the ``d'``
  positions ``D'`` where the two rows are equal; ``d' = K - hamming``): with
  ``e = popcount(XNOR(x_D', w_c,D'))`` (on D' the child and parent agree with x together, outside
  D' the child agrees exactly where the parent does not)::

      P_c = e + ((K - d') - (P_p - e)) = K - P_p - d' + 2 e

So a child costs ``|D|`` XNORs (free: an XNOR with a constant bit is a wire or an inverter), an
``|D|``-input popcount and one adder, instead of K XNORs and a K-input popcount.

To make that adder a single two-input one, the layer keeps ``A_c = P_c + off_c`` with a per-channel
constant offset (``off = 0`` at a root) chosen so that ``A_c = A_p + 2 e`` on an ordinary edge
(``off_c = off_p + d``) and ``A_c = ~A_p + 2 e`` on a complement edge (``~`` the bitwise NOT of the
parent's register, ``~A = -A - 1`` when it is signed and ``2**w - 1 - A`` when it is unsigned of
width w; the offset absorbs the difference); the threshold is compared as
``A_c >= T_c + off_c``. All arithmetic is exact (no register wraps).
"""

from __future__ import annotations

import numpy as np
from amaranth.hdl import Cat, Const, Module, Shape, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from ..compiler.pipeline import pipeline_for
from .checks import check_input_bits, int_list, positive_int, quiet_on_error, weight_matrix
from .matrix import adder_tree
from .streams import delay, register_output

__all__ = ["MSTLayer", "tree_levels"]


def tree_levels(parent) -> np.ndarray:
    """Return every channel's depth in a forest given as a parent array (-1 for a root).

    Raises ``ValueError`` for a parent out of range, a self-loop or a cycle.
    """
    parent = [int(p) for p in parent]
    c = len(parent)
    for v, p in enumerate(parent):
        if p < -1 or p >= c or p == v:
            raise ValueError(f"parent[{v}] must be -1 or another channel 0..{c - 1}, not {p}")
    depth = [-1] * c
    for v in range(c):
        path = []
        u = v
        while u >= 0 and depth[u] < 0:
            path.append(u)
            if len(path) > c:
                raise ValueError(f"the parent array has a cycle through channel {v}")
            u = parent[u]
        base = depth[u] if u >= 0 else -1
        for w in reversed(path):
            base += 1
            depth[w] = base
    return np.asarray(depth, dtype=np.int64)


class MSTLayer(wiring.Component):
    """Matrix-vector-threshold layer computed along a spanning forest of its output channels.

    The stream interface of :class:`~bnnforge.hw.matrix.MVTU` at PE = C, SIMD = K: one whole
    vector in per transfer, one C-bit result out per vector, at one vector per cycle.

    Parameters
    ----------
    k : int
        Input vector length K.
    channels : int
        Output channels C.
    weights : numpy.ndarray
        (C, K) bits (1 = +1) or the IR's little-endian packed rows (C, ceil(K/8)) uint8.
    thresholds : sequence of int
        One per channel; output bit c = ``P_c >= thresholds[c]`` (any Python int; values out of
        0..K give constant channels).
    parent : sequence of int
        Each channel's parent, -1 for a root (a forest; e.g. the ``mst`` node attribute that
        :class:`~bnnforge.compiler.mst.OrderChannelsByMST` sets). Any forest is correct; a
        minimum spanning one is cheapest.
    complement : sequence of bool
        Per channel: the edge to its parent is a complement edge (False for roots).
    depth : sequence of int, optional
        Each channel's depth; when given it is checked against ``parent``.
    input_bits : int
        Must be 1: the layer handles binary inputs only (an 8-bit first layer uses an MVTU).
    pipeline : Pipeline, str or None
        Adder levels per tree stage (:func:`~bnnforge.compiler.pipeline.pipeline_for`;
        ``None``: ``generic``).

    Ports
    -----
    i_stream : In(stream.Signature(K))
        One vector per transfer; element i at bit i.
    o_stream : Out(stream.Signature(C))
        One transfer per vector; bit c = channel c.

    Timing
    ------
    Let t = ``pipeline.tree_stages(K)`` (attribute ``tree_stages``: the registers of the K-input
    popcount tree, one per ``pipeline.tree_levels`` adder levels) and D the forest's depth
    (attribute ``max_depth``). A cycle is *enabled* when ``o_stream.valid`` is low or
    ``o_stream.ready`` is high (the module docstring of :mod:`bnnforge.hw.matrix`); every
    register of the layer loads only in enabled cycles.

    * ``i_stream.ready`` is high exactly in enabled cycles (no input buffer); a vector is
      accepted in an enabled cycle a in which ``i_stream.valid`` is high.
    * Pipeline: stage 0 is the input register; popcounts (and the children's D-popcounts,
      delayed to match) are registered at stage t; channels at tree level l (roots l = 0)
      hold ``A`` at stage t + l, computed from their parents' stage t + l - 1 registers; each
      channel's output bit is compared from its stage and delayed; the output register is stage
      L = t + D + 1 (attribute ``stages``).
    * A vector accepted in cycle a is written to the output register in the L-th enabled cycle
      after a, and ``o_stream.valid`` is high from the next cycle until the handshake. Without
      stalls: valid from cycle ``a + t + D + 2`` (attribute ``latency``).
    * II = 1 (attribute ``cycles``): a new vector can be accepted every enabled cycle.
    * Back-pressure: while the output register holds a vector that is not accepted, nothing
      moves and ``i_stream.ready`` is low; tokens are never dropped or duplicated.

    Attributes ``xnors`` (XNOR positions: K per root plus every edge's ``|D|``) and ``roots``
    describe the cost.
    """

    @quiet_on_error
    def __init__(self, k, channels, weights, thresholds, parent, complement, depth=None,
                 input_bits=1, pipeline=None):
        #: the :class:`~bnnforge.compiler.pipeline.Pipeline` (adder levels per tree stage)
        self.pipeline = pipeline_for(pipeline)
        self.k = positive_int("K", k)
        self.channels = positive_int("channels", channels)
        bits = check_input_bits(input_bits)
        if bits != 1:
            raise ValueError(f"MSTLayer takes binary inputs only (input_bits=1), not "
                             f"input_bits={input_bits!r}; build an 8-bit layer as an MVTU")
        self.input_bits = 1
        self.weights = weight_matrix(weights, self.channels, self.k)
        self.thresholds = int_list("thresholds", thresholds, self.channels)
        parent = list(np.asarray(parent).tolist())
        comp = list(np.asarray(complement).tolist())
        for name, seq in (("parent", parent), ("complement", comp)):
            if len(seq) != self.channels:
                raise ValueError(f"{name} must hold {self.channels} values, not {len(seq)}")
        self.parent = [int(p) for p in parent]
        self.level = tree_levels(self.parent)
        self.complement = [bool(v) for v in comp]
        for c, (p, f) in enumerate(zip(self.parent, self.complement, strict=True)):
            if p < 0 and f:
                raise ValueError(f"channel {c} is a root but has a complement edge")
        if depth is not None:
            given = np.asarray(depth, dtype=np.int64)
            if given.shape != self.level.shape or not np.array_equal(given, self.level):
                raise ValueError(f"depth {np.asarray(depth).tolist()} does not match the tree "
                                 f"of parent (depths {self.level.tolist()})")
        self.max_depth = int(self.level.max())
        self.roots = [c for c in range(self.channels) if self.parent[c] < 0]
        self.tree_stages = self.pipeline.tree_stages(self.k)
        self.stages = self.pipeline.mst_latency(self.k, self.max_depth)
        self.latency = self.stages + 1
        self.cycles = 1
        # per channel: the positions it popcounts and the offset of its A register
        self._positions = []
        for c in range(self.channels):
            p = self.parent[c]
            if p < 0:
                pos = np.arange(self.k)
            elif self.complement[c]:
                pos = np.flatnonzero(self.weights[c] == self.weights[p])
            else:
                pos = np.flatnonzero(self.weights[c] != self.weights[p])
            self._positions.append(pos)
        self.xnors = int(sum(len(p) for p in self._positions))
        super().__init__({"i_stream": In(stream.Signature(self.k)),
                          "o_stream": Out(stream.Signature(self.channels))})

    def elaborate(self, platform):
        m = Module()
        i_s, o = self.i_stream, self.o_stream
        k, c_out, t, depth = self.k, self.channels, self.tree_stages, self.max_depth
        en = Signal()
        m.d.comb += [en.eq(~(o.valid & ~o.ready)), i_s.ready.eq(en)]

        # stage 0: the input register and its inverse (shared by every XNOR)
        x = Signal(k)
        xn = Signal(k)
        valid = [Signal(name="valid0")]
        with m.If(en):
            m.d.sync += [x.eq(i_s.payload), valid[0].eq(i_s.valid)]
        m.d.comb += xn.eq(~x)
        for s in range(1, self.stages):
            v = Signal(name=f"valid{s}")
            with m.If(en):
                m.d.sync += v.eq(valid[-1])
            valid.append(v)

        # popcounts: registered at stage t (roots) or t + level - 1 (children)
        e_at = {}
        for c in range(c_out):
            w = self.weights[c]
            terms = [x[i] if w[i] else xn[i] for i in self._positions[c].tolist()]
            val, regs = adder_tree(m, terms, en, f"ch{c}", self.pipeline.tree_levels)
            want = t + max(0, int(self.level[c]) - 1)
            e_at[c] = delay(m, en, val, want - regs, f"ch{c}_e_d")

        # level by level: A_c at stage t + level
        acc, offset = {}, {}
        order = sorted(range(c_out), key=lambda ch: (int(self.level[ch]), ch))
        for c in order:
            p = self.parent[c]
            if p < 0:
                acc[c], offset[c] = e_at[c], 0
                continue
            d = len(self._positions[c])
            pa = acc[p]
            if self.complement[c]:
                shape = Shape.cast(pa.shape())
                bias = 0 if shape.signed else 1 << shape.width      # ~A = -A - 1 + bias
                off = bias - 1 - k - offset[p] + d
                expr = ~pa + 2 * e_at[c]
            else:
                off = offset[p] + d
                expr = pa + 2 * e_at[c]
            reg = Signal(range(off, off + k + 1), name=f"acc{c}")
            with m.If(en):
                m.d.sync += reg.eq(expr)
            acc[c], offset[c] = reg, off

        # thresholds at each channel's stage, bits delayed to the output register (stage L)
        out_bits = []
        for c in range(c_out):
            thr = self.thresholds[c]
            if thr <= 0:
                bit = Const(1, 1)
            elif thr > k:
                bit = Const(0, 1)
            else:
                bit = Signal(name=f"bit{c}")
                m.d.comb += bit.eq(acc[c] >= thr + offset[c])
            out_bits.append(delay(m, en, bit, depth - int(self.level[c]), f"bit{c}_d"))
        register_output(m, o, en, valid[-1], Cat(*out_bits))
        return m
