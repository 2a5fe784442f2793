"""The residual add unit: where a residual block's main path and shortcut meet.

Stream and stall conventions: :mod:`bnnforge.hw.matrix` (module docstring); ports by number as in
:mod:`bnnforge.hw.streams`.
"""

from __future__ import annotations

import numpy as np
from amaranth.hdl import Cat, Module, Signal, unsigned
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from ..compiler.ir import SHORTCUTS
from .checks import const_lookup, positive_int, quiet_on_error
from .streams import register_output

__all__ = ["ResidualJoin"]



class ResidualJoin(wiring.Component):
    """Add a shortcut to a main path's popcounts and binarize: the hardware of ``ResidualAdd``.

    Parameters
    ----------
    channels : int
        Channels C (of a feature map's pixel, or of a vector).
    main_k : int
        K of the main path, an :class:`~bnnforge.hw.matrix.MVTU` in popcount mode: its counts
        P_c lie in 0..main_k.
    thresholds : (S, C) integer array
        Output bit c = ``P_c >= thresholds[sel_c, c]``, where the selector ``sel_c`` is the
        shortcut's channel c: its bit (S = 2) or its popcount (S = short_k + 1). Any integers
        (values beyond 0..main_k give constant outputs); a selector past S - 1 reads row S - 1.
    short : str
        ``"bits"`` (identity shortcut: the block's binary input) or ``"popcount"`` (projection
        shortcut: another popcount-mode MVTU's counts).
    short_k : int
        K of a popcount shortcut (0, the default, for bits).

    Ports
    -----
    i_stream0 : In(stream.Signature(C * main_bits)) — the main path: P_c at bits
        [c*main_bits, (c+1)*main_bits), ``main_bits = int(main_k).bit_length()``.
    i_stream1 : In(stream.Signature(C)) for bits, In(stream.Signature(C * short_bits)) for
        popcounts (``short_bits = int(short_k).bit_length()``, channel 0 lowest): the shortcut.
    o_stream : Out(stream.Signature(C)) — bit c = channel c.

    Attribute ``i_streams`` lists the two inputs, port 0 (main) first.

    Timing
    ------
    Output register, global stall: a cycle is enabled unless ``o_stream.valid`` is high and
    ``o_stream.ready`` low. Both inputs are accepted together, in an enabled cycle in which both
    are valid (each input's ``ready`` = enabled and both valid); the result is written at that
    edge and offered from the next cycle until its handshake (latency 1, II 1). An input that
    arrives first waits, valid, for the other.
    """

    @quiet_on_error
    def __init__(self, channels, main_k, thresholds, short="bits", short_k=0):
        self.channels = positive_int("channels", channels)
        self.main_k = positive_int("main_k", main_k)
        if short not in SHORTCUTS:
            raise ValueError(f"short must be 'bits' or 'popcount', not {short!r}")
        self.short = short
        if short == "bits":
            if short_k != 0:
                raise ValueError(f"a bits shortcut has short_k=0, not {short_k!r}")
            self.short_k = 0
            self.short_bits = 1
            rows = 2
        else:
            self.short_k = positive_int("short_k", short_k)
            self.short_bits = self.short_k.bit_length()
            rows = self.short_k + 1
        self.main_bits = self.main_k.bit_length()
        t = np.asarray(thresholds)
        if t.dtype == object:
            if not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool)
                       for v in t.reshape(-1)):
                raise TypeError(f"thresholds must be integers, not {thresholds!r}")
        elif t.dtype.kind not in "iu":
            raise TypeError(f"thresholds must be an integer array, not dtype {t.dtype}")
        if t.shape != (rows, self.channels):
            raise ValueError(f"thresholds must have shape (S, C) = ({rows}, {self.channels}) "
                             f"for a {short} shortcut, not {t.shape}")
        #: thresholds[s][c], clamped to 0..main_k + 1
        self.thresholds = [[min(max(int(v), 0), self.main_k + 1) for v in row]
                           for row in t.tolist()]
        self.latency = 1
        self.cycles = 1
        super().__init__({
            "i_stream0": In(stream.Signature(self.channels * self.main_bits)),
            "i_stream1": In(stream.Signature(self.channels * self.short_bits)),
            "o_stream": Out(stream.Signature(self.channels))})

    @property
    def i_streams(self) -> list:
        return [self.i_stream0, self.i_stream1]

    def elaborate(self, platform):
        m = Module()
        main, short, o = self.i_stream0, self.i_stream1, self.o_stream
        c_out, mb, sb = self.channels, self.main_bits, self.short_bits
        en = Signal()
        both = Signal()
        take = Signal()
        m.d.comb += [en.eq(~(o.valid & ~o.ready)), both.eq(main.valid & short.valid),
                     take.eq(en & both), main.ready.eq(take), short.ready.eq(take)]
        tshape = unsigned((self.main_k + 1).bit_length())
        bits = []
        for c in range(c_out):
            p = Signal(mb, name=f"p{c}")
            sel = Signal(sb, name=f"sel{c}")
            thr = Signal(tshape, name=f"thr{c}")
            bit = Signal(name=f"bit{c}")
            column = [row[c] for row in self.thresholds]
            m.d.comb += [p.eq(main.payload[c * mb:(c + 1) * mb]),
                         sel.eq(short.payload[c * sb:(c + 1) * sb]),
                         thr.eq(const_lookup(sel, column, tshape)),
                         bit.eq(p >= thr)]
            bits.append(bit)
        register_output(m, o, en, both, Cat(*bits))
        return m
