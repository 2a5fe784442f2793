"""Stream plumbing of a bnnforge accelerator: FIFOs, width converters, input mapping, fork, concat.

Stream and stall conventions: :mod:`bnnforge.hw.matrix` (module docstring). Blocks with more than
one input or output stream name them by port, ``i_stream0``, ``i_stream1``, … (``o_stream0``, …),
port 0 first, and list them in the attribute ``i_streams`` (``o_streams``).
"""

from __future__ import annotations

import numpy as np
from amaranth.hdl import Cat, Const, Module, Mux, Signal
from amaranth.lib import fifo, stream, wiring
from amaranth.lib.wiring import In, Out

from .checks import positive_int, quiet_on_error

__all__ = [
    "Deserializer",
    "InputTable",
    "InputThreshold",
    "Serializer",
    "StreamConcat",
    "StreamFIFO",
    "StreamFork",
    "pass_handshake",
    "register_output",
    "shift_in",
]


def shift_in(data, count: int, name: str, reset_less: bool = False) -> tuple:
    """Collect ``count`` successive elements of ``data``: return ``(word, shift)``.

    ``shift`` is the statements (for ``m.d.sync``, in the cycles an element is taken) that move
    ``data`` into a register of the ``count - 1`` elements before it (a Signal named ``name``);
    ``word`` is those elements and ``data``, the oldest in the lowest bits. A ``count`` of 1
    needs no register: ``(data, [])``.
    """
    if count == 1:
        return data, []
    width = len(data)
    held = Signal(width * (count - 1), name=name, reset_less=reset_less)
    return Cat(held, data), [held.eq(Cat(held[width:], data) if count > 2 else data)]


def delay(m: Module, enable, value, n: int, name: str, reset_less: bool = False):
    """``value`` through ``n`` registers (``{name}0`` … or ``name`` alone when ``n`` is 1) that
    load in the cycles ``enable`` is high (every cycle when ``enable`` is ``None``); a
    constant needs none."""
    for i in range(n):
        if isinstance(value, Const):
            return value
        reg = Signal(value.shape(), name=name if n == 1 else f"{name}{i}",
                     reset_less=reset_less)
        if enable is None:
            m.d.sync += reg.eq(value)
        else:
            with m.If(enable):
                m.d.sync += reg.eq(value)
        value = reg
    return value


def register_output(m: Module, o, enable, put, word) -> None:
    """The output register under a global stall: in each cycle ``enable`` is high,
    ``o.valid`` becomes ``put`` and, when ``put``, ``o.payload`` becomes ``word``."""
    with m.If(enable):
        m.d.sync += o.valid.eq(put)
        with m.If(put):
            m.d.sync += o.payload.eq(word)


def pass_handshake(i_s, o) -> list:
    """The statements that pass ``valid`` and ``ready`` straight through a combinational
    block from ``i_s`` to ``o``."""
    return [o.valid.eq(i_s.valid), i_s.ready.eq(o.ready)]


class StreamFIFO(wiring.Component):
    """A stream FIFO of ``depth`` tokens (first-word fall-through, LUT-RAM friendly).

    Ports
    -----
    i_stream : In(stream.Signature(width)), o_stream : Out(stream.Signature(width))

    Timing
    ------
    ``i_stream.ready`` is high iff fewer than ``depth`` tokens are held at the start of the
    cycle (a read in the same cycle frees no room for that cycle). ``o_stream.valid`` is high
    iff at least one token is held at the start of the cycle. A token accepted in cycle a can
    leave in cycle a+1 at the earliest (latency 1). II = 1.
    """

    @quiet_on_error
    def __init__(self, width, depth):
        self.width = positive_int("width", width)
        self.depth = positive_int("depth", depth)
        self.latency = 1
        super().__init__({"i_stream": In(stream.Signature(self.width)),
                          "o_stream": Out(stream.Signature(self.width))})

    def elaborate(self, platform):
        m = Module()
        m.submodules.fifo = f = fifo.SyncFIFO(width=self.width, depth=self.depth)
        m.d.comb += [
            f.w_data.eq(self.i_stream.payload),
            f.w_en.eq(self.i_stream.valid),
            self.i_stream.ready.eq(f.w_rdy),
            self.o_stream.payload.eq(f.r_data),
            self.o_stream.valid.eq(f.r_rdy),
            f.r_en.eq(self.o_stream.ready),
        ]
        return m


class Deserializer(wiring.Component):
    """Collect ``count`` transfers of ``elem_width`` bits into one transfer.

    Ports
    -----
    i_stream : In(stream.Signature(elem_width))
    o_stream : Out(stream.Signature(count * elem_width)) — the first transfer in the lowest bits.

    Timing
    ------
    ``i_stream.ready = not (o_stream.valid and not o_stream.ready)`` (global stall). The
    ``count``-th element accepted in cycle a makes ``o_stream.valid`` high from cycle a+1
    (latency 1); II = ``count`` cycles per output.
    """

    @quiet_on_error
    def __init__(self, elem_width, count):
        self.elem_width = positive_int("elem_width", elem_width)
        self.count = positive_int("count", count)
        self.latency = 1
        super().__init__({"i_stream": In(stream.Signature(self.elem_width)),
                          "o_stream": Out(stream.Signature(self.elem_width * self.count))})

    def elaborate(self, platform):
        m = Module()
        i_s, o = self.i_stream, self.o_stream
        count = self.count
        en = Signal()
        m.d.comb += [en.eq(~(o.valid & ~o.ready)), i_s.ready.eq(en)]
        take = i_s.valid & en
        word, shift = shift_in(i_s.payload, count, "buf")
        if count > 1:
            idx = Signal(range(count))
            with m.If(take):
                m.d.sync += [*shift, idx.eq(Mux(idx == count - 1, 0, idx + 1))]
            last = idx == count - 1
        else:
            last = Const(1)
        register_output(m, o, en, take & last, word)
        return m


class Serializer(wiring.Component):
    """Split each transfer of ``count * elem_width`` bits into ``count`` transfers.

    The width converter in front of a :class:`SlidingWindow` when the accelerator's input
    carries several pixels per transfer.

    Ports
    -----
    i_stream : In(stream.Signature(count * elem_width))
    o_stream : Out(stream.Signature(elem_width)) — the lowest ``elem_width`` bits first.

    Timing
    ------
    Holds one input word. ``o_stream.valid`` is high while elements of it are left;
    ``i_stream.ready = (none left) or (one left and o_stream.ready)``, so the next word is
    accepted in the cycle its predecessor's last element is (or any later cycle). A word
    accepted in cycle a offers its first element from cycle a+1 (latency 1) and element e from
    the cycle after element e-1's handshake: with a ready consumer, one element per cycle
    without gaps (II = ``count`` cycles per input word).
    """

    @quiet_on_error
    def __init__(self, elem_width, count):
        self.elem_width = positive_int("elem_width", elem_width)
        self.count = positive_int("count", count)
        self.latency = 1
        super().__init__({"i_stream": In(stream.Signature(self.elem_width * self.count)),
                          "o_stream": Out(stream.Signature(self.elem_width))})

    def elaborate(self, platform):
        m = Module()
        i_s, o = self.i_stream, self.o_stream
        ew, count = self.elem_width, self.count
        buf = Signal(ew * count)
        left = Signal(range(count + 1))
        m.d.comb += [
            o.valid.eq(left != 0),
            o.payload.eq(buf[:ew]),
            i_s.ready.eq((left == 0) | ((left == 1) & o.ready)),
        ]
        with m.If(i_s.valid & i_s.ready):
            m.d.sync += [buf.eq(i_s.payload), left.eq(count)]
        with m.Elif(o.valid & o.ready):
            m.d.sync += left.eq(left - 1)
            if count > 1:
                m.d.sync += buf.eq(buf[ew:])
        return m


class InputThreshold(wiring.Component):
    """Binarize 8-bit pixels: bit c = (byte c >= threshold); 128 gives each byte's MSB.

    Parameters
    ----------
    channels : int
    threshold : int
    pixels : int
        Pixels per transfer (default 1): byte ``p*channels + c`` becomes bit ``p*channels + c``.

    Ports
    -----
    i_stream : In(stream.Signature(8 * channels * pixels)) — pixel p's channel c in bits
        [8(p*channels + c), 8(p*channels + c) + 8).
    o_stream : Out(stream.Signature(channels * pixels))

    Timing
    ------
    Combinational: latency 0, ``valid``/``ready`` pass straight through.
    """

    @quiet_on_error
    def __init__(self, channels, threshold=128, pixels=1):
        self.channels = positive_int("channels", channels)
        self.pixels = positive_int("pixels", pixels)
        if isinstance(threshold, bool) or not isinstance(threshold, (int, np.integer)) \
                or not 0 <= threshold <= 256:
            raise ValueError(f"threshold must be an integer 0..256, not {threshold!r}")
        self.threshold = int(threshold)
        self.latency = 0
        n = self.channels * self.pixels
        super().__init__({"i_stream": In(stream.Signature(8 * n)),
                          "o_stream": Out(stream.Signature(n))})

    def elaborate(self, platform):
        m = Module()
        i_s, o = self.i_stream, self.o_stream
        p = i_s.payload
        m.d.comb += [
            o.payload.eq(Cat(*[p[8 * c:8 * c + 8] >= self.threshold
                               for c in range(self.channels * self.pixels)])),
            *pass_handshake(i_s, o),
        ]
        return m


class InputTable(wiring.Component):
    """Map 8-bit pixels through a 256-entry table: byte c out = table[byte c in].

    Parameters
    ----------
    channels : int
    table : sequence of 256 ints 0..255
    pixels : int
        Pixels per transfer (default 1): byte ``p*channels + c`` maps to byte ``p*channels + c``.

    Ports
    -----
    i_stream : In(stream.Signature(8 * channels * pixels)) — pixel p's channel c in bits
        [8(p*channels + c), 8(p*channels + c) + 8).
    o_stream : Out(stream.Signature(8 * channels * pixels)) — the mapped bytes, same layout.

    Timing
    ------
    Combinational (one 256 x 8 logic ROM per byte lane): latency 0, ``valid``/``ready`` pass
    straight through, so back-pressure reaches the producer in the same cycle.
    """

    @quiet_on_error
    def __init__(self, channels, table, pixels=1):
        self.channels = positive_int("channels", channels)
        self.pixels = positive_int("pixels", pixels)
        try:
            values = [v for v in table]
        except TypeError:
            values = None
        if values is None or len(values) != 256 or not all(
                not isinstance(v, bool) and isinstance(v, (int, np.integer)) and 0 <= v <= 255
                for v in values):
            raise ValueError(f"table must be 256 integers 0..255, not {table!r}")
        self.table = tuple(int(v) for v in values)
        self.latency = 0
        n = 8 * self.channels * self.pixels
        super().__init__({"i_stream": In(stream.Signature(n)),
                          "o_stream": Out(stream.Signature(n))})

    def elaborate(self, platform):
        m = Module()
        i_s, o = self.i_stream, self.o_stream
        for lane in range(self.channels * self.pixels):
            byte = i_s.payload[8 * lane:8 * lane + 8]
            out = o.payload[8 * lane:8 * lane + 8]
            with m.Switch(byte):
                for value in range(256):
                    with m.Case(value):
                        m.d.comb += out.eq(self.table[value])
        m.d.comb += pass_handshake(i_s, o)
        return m


class StreamFork(wiring.Component):
    """Copy every token of one stream to ``n`` streams (an eager fork: no register).

    Parameters
    ----------
    width : int
        Payload bits.
    n : int
        Output streams.

    Ports
    -----
    i_stream : In(stream.Signature(width))
    o_stream0 … o_stream{n-1} : Out(stream.Signature(width)) — each carries the input's payload
        (attribute ``o_streams``: the list of them).

    Timing
    ------
    Combinational, latency 0; one flag ``taken[k]`` per output. Output k's ``valid`` is
    ``i_stream.valid and not taken[k]``; ``i_stream.ready`` is high iff every output is ready or
    has taken the current token. ``taken[k]`` is set by a handshake on output k and cleared by
    the input handshake (which wins). So output k offers token j from the cycle the input offers
    it and takes it at its first ready cycle from then on, independently of the other outputs;
    the input handshake of token j is in the cycle of the last output handshake of j, and token
    j+1 is offered to no output before that. A consumer that stalls holds back the producer,
    and through it every other consumer.
    """

    @quiet_on_error
    def __init__(self, width, n):
        self.width = positive_int("width", width)
        self.n = positive_int("n", n)
        self.latency = 0
        super().__init__({"i_stream": In(stream.Signature(self.width)),
                          **{f"o_stream{k}": Out(stream.Signature(self.width))
                             for k in range(self.n)}})

    @property
    def o_streams(self) -> list:
        return [getattr(self, f"o_stream{k}") for k in range(self.n)]

    def elaborate(self, platform):
        m = Module()
        i_s, outs = self.i_stream, self.o_streams
        taken = Signal(self.n)
        free = Signal(self.n)       # output k ready or done with the current token
        sent = Signal(self.n)       # output k's handshake in this cycle
        for k, o in enumerate(outs):
            m.d.comb += [
                o.payload.eq(i_s.payload),
                o.valid.eq(i_s.valid & ~taken[k]),
                free[k].eq(o.ready | taken[k]),
                sent[k].eq(o.valid & o.ready),
            ]
        m.d.comb += i_s.ready.eq(free.all())
        with m.If(i_s.valid & i_s.ready):
            m.d.sync += taken.eq(0)
        with m.Else():
            m.d.sync += taken.eq(taken | sent)
        return m


class StreamConcat(wiring.Component):
    """Join streams into one whose payload is their concatenation (no register).

    Parameters
    ----------
    widths : sequence of int
        Payload bits of each input port, port 0 first.

    Ports
    -----
    i_stream0 … i_stream{n-1} : In(stream.Signature(widths[k])) (attribute ``i_streams``)
    o_stream : Out(stream.Signature(sum(widths))) — port 0's payload in the lowest bits.

    Timing
    ------
    Combinational, latency 0: ``o_stream.valid`` = every input valid; ``i_stream{k}.ready`` =
    ``o_stream.ready`` and every input valid. Every input's handshake and the output handshake
    of a token happen in the same cycle: the first cycle in which all inputs offer it and the
    output is ready. An input that arrives early waits (valid, not ready) for the others.
    """

    @quiet_on_error
    def __init__(self, widths):
        try:
            given = list(widths)
        except TypeError:
            raise TypeError(f"widths must be a sequence of integers, not {widths!r}") from None
        if not given:
            raise ValueError("widths must name at least one input port, not []")
        self.widths = [positive_int(f"widths[{k}]", w) for k, w in enumerate(given)]
        self.n = len(self.widths)
        self.width = sum(self.widths)
        self.latency = 0
        super().__init__({**{f"i_stream{k}": In(stream.Signature(w))
                             for k, w in enumerate(self.widths)},
                          "o_stream": Out(stream.Signature(self.width))})

    @property
    def i_streams(self) -> list:
        return [getattr(self, f"i_stream{k}") for k in range(self.n)]

    def elaborate(self, platform):
        m = Module()
        ins, o = self.i_streams, self.o_stream
        valid = Signal(self.n)
        every = Signal()
        m.d.comb += [valid.eq(Cat(*[i.valid for i in ins])), every.eq(valid.all())]
        m.d.comb += [i.ready.eq(o.ready & every) for i in ins]
        m.d.comb += [o.valid.eq(every), o.payload.eq(Cat(*[i.payload for i in ins]))]
        return m
