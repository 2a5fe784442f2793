"""Window blocks over a pixel stream: :class:`SlidingWindow` (im2col) and :class:`MaxPool`.

Stream and stall conventions: :mod:`bnnforge.hw.matrix` (module docstring).
"""

from __future__ import annotations

import numpy as np
from amaranth.hdl import Cat, Const, Module, Mux, Signal, unsigned
from amaranth.lib import stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from .checks import pair, positive_int, quiet_on_error, silence
from .streams import pass_handshake, register_output, shift_in

__all__ = ["MaxPool", "SlidingWindow"]


class SlidingWindow(wiring.Component):
    """Sliding-window (im2col) generator over a pixel stream: line buffers, one position a cycle.

    Parameters
    ----------
    channels, height, width : int
        Input feature map (C, H, W).
    kernel, stride, padding : int or (int, int)
        Window (kh, kw), stride (sh, sw) and padding (ph, pw) on each side.
    pad_value : int
        Element value of padding positions (a bit for elem_bits=1, a byte for elem_bits=8).
    elem_bits : int
        1 or 8.

    Ports
    -----
    i_stream : In(stream.Signature(C * elem_bits))
        One pixel per transfer in raster order, channel c at bits [c*b, (c+1)*b); frames back
        to back.
    o_stream : Out(stream.Signature(kh * kw * C * elem_bits))
        One window per transfer in output raster order; element (ky, kx, c) at index
        ``(ky*kw + kx)*C + c`` (bits [i*b, (i+1)*b)).

    Timing
    ------
    The block walks the padded raster, Hp = H + 2·ph rows of Wp = W + 2·pw positions, row by
    row, every position of every frame (the padding after a frame's last window included),
    frames back to back; kh - 1 line buffers of Wp pixels (block RAM) hold the rows above.

    * One position per *step*. A step happens in every enabled cycle in which the position is
      padding, or is inside the image and ``i_stream.valid`` is high: ``i_stream.ready`` is
      high iff the cycle is enabled and the position is inside the image, so an inside
      position's step is its pixel's handshake. An inside position waits (nothing moves) in
      cycles in which no pixel is offered; a padding position takes no pixel. So a frame
      takes Hp·Wp enabled cycles when pixels come back to back (H·W of them with a handshake).
    * The position (y, x) completes a window when y = oy·sh + kh - 1 and x = ox·sw + kw - 1
      (oy < OH, ox < OW); the window is written to the output register at the edge of that
      step's cycle, so ``o_stream.valid`` rises in the next cycle (attribute ``latency = 1``:
      a window whose last position is inside the image is valid from the cycle after that
      pixel's handshake).
    * After reset the block is at position (0, 0) of frame 0: top padding rows are walked in
      cycles 0, 1, … before any pixel arrives.
    * Global stall: while the output register is full and not accepted nothing moves and no
      pixel is accepted (``ready`` low).
    """

    @quiet_on_error
    def __init__(self, channels, height, width, kernel, stride=1, padding=0, pad_value=0,
                 elem_bits=1):
        self.channels = positive_int("channels", channels)
        self.height = positive_int("height", height)
        self.width = positive_int("width", width)
        self.kernel = pair("kernel", kernel)
        self.stride = pair("stride", stride)
        self.padding = pair("padding", padding, minimum=0)
        if elem_bits not in (1, 8) or isinstance(elem_bits, bool):
            raise ValueError(f"elem_bits must be 1 or 8, not {elem_bits!r}")
        self.elem_bits = int(elem_bits)
        if isinstance(pad_value, bool) or not isinstance(pad_value, (int, np.integer)) \
                or not 0 <= pad_value < (1 << self.elem_bits):
            raise ValueError(f"pad_value must be an integer 0..{(1 << self.elem_bits) - 1}, "
                             f"not {pad_value!r}")
        self.pad_value = int(pad_value)
        (kh, kw), (sh, sw), (ph, pw) = self.kernel, self.stride, self.padding
        #: the padded raster the block walks: (Hp, Wp)
        self.padded = (self.height + 2 * ph, self.width + 2 * pw)
        if kh > self.padded[0] or kw > self.padded[1]:
            raise ValueError(f"kernel {self.kernel} exceeds the padded input {self.padded}")
        self.out_height = (self.padded[0] - kh) // sh + 1
        self.out_width = (self.padded[1] - kw) // sw + 1
        #: pixels of a window (kh·kw)
        self.steps = kh * kw
        self.latency = 1
        super().__init__({
            "i_stream": In(stream.Signature(self.channels * self.elem_bits)),
            "o_stream": Out(stream.Signature(self.steps * self.channels * self.elem_bits))})

    def _masks(self) -> tuple[int, int, int, int]:
        """Bit masks over the padded rows and columns: inside the image, completing a window."""
        (kh, kw), (sh, sw), (ph, pw) = self.kernel, self.stride, self.padding
        oh, ow = self.out_height, self.out_width

        def mask(bits):
            return sum(1 << i for i in bits)

        return (mask(range(ph, ph + self.height)), mask(range(pw, pw + self.width)),
                mask(oy * sh + kh - 1 for oy in range(oh)),
                mask(ox * sw + kw - 1 for ox in range(ow)))

    def elaborate(self, platform):
        m = Module()
        i_s, o = self.i_stream, self.o_stream
        c, b = self.channels, self.elem_bits
        (kh, kw), (hp, wp) = self.kernel, self.padded
        pix = c * b
        row_in, col_in, row_win, col_win = self._masks()

        en = Signal()
        m.d.comb += en.eq(~(o.valid & ~o.ready))
        y = Signal(range(hp))
        x = Signal(range(wp))
        inside = Signal()
        window = Signal()
        m.d.comb += [
            inside.eq(Const(row_in, hp).bit_select(y, 1) & Const(col_in, wp).bit_select(x, 1)),
            window.eq(Const(row_win, hp).bit_select(y, 1) & Const(col_win, wp).bit_select(x, 1)),
        ]
        step = Signal()
        m.d.comb += [i_s.ready.eq(en & inside), step.eq(en & (~inside | i_s.valid))]
        last_x = x == wp - 1
        with m.If(step):
            m.d.sync += x.eq(Mux(last_x, 0, x + 1))
            with m.If(last_x):
                m.d.sync += y.eq(Mux(y == hp - 1, 0, y + 1))

        pad_pixel = Const(int(sum(self.pad_value << (i * b) for i in range(c))), pix)
        value = Signal(pix)
        m.d.comb += value.eq(Mux(inside, i_s.payload, pad_pixel))
        if kh > 1:
            # word x holds column x of the kh - 1 rows above, the oldest row in the lowest bits;
            # the read port fetches the next position's word in the cycle of a step, so it is
            # there (and held) when that position steps
            lines = Memory(shape=unsigned((kh - 1) * pix), depth=wp, init=[])
            m.submodules.lines = lines
            wr = lines.write_port()
            rd = lines.read_port(domain="sync", transparent_for=(wr,) if wp == 1 else ())
            column = Cat(rd.data, value)
            m.d.comb += [
                wr.addr.eq(x), wr.data.eq(column[pix:]), wr.en.eq(step),
                rd.addr.eq(Mux(last_x, 0, x + 1)), rd.en.eq(step),
            ]
        else:
            column = value
        word, shift = shift_in(column, kw, "win", reset_less=True)
        with m.If(step):
            m.d.sync += shift
        # word: column kx (oldest first) in bits [kx·kh·pix, …), row ky of it at ky·pix
        out = Cat(*[word[(kx * kh + ky) * pix:(kx * kh + ky + 1) * pix]
                    for ky in range(kh) for kx in range(kw)])
        register_output(m, o, en, step & window, out)
        return m


class MaxPool(wiring.Component):
    """Binary max-pool: the OR of each window's bits, per channel; no padding.

    Parameters
    ----------
    channels, height, width : int
        Input feature map (C, H, W) of bits.
    kernel, stride : int or (int, int)

    Ports
    -----
    i_stream : In(stream.Signature(C))  — one pixel per transfer, raster order.
    o_stream : Out(stream.Signature(C)) — one pooled pixel per transfer, output raster order.

    Timing
    ------
    Exactly :class:`SlidingWindow`\\ (C, H, W, kernel, stride, padding 0, elem_bits 1): the
    OR is combinational on that block's output register.
    """

    @quiet_on_error
    def __init__(self, channels, height, width, kernel, stride=None):
        if stride is None:
            stride = kernel
        self.window = SlidingWindow(channels, height, width, kernel, stride, 0, 0, 1)
        silence(self.window)    # elaborated as a part of this block; only this one may warn
        self.channels = self.window.channels
        self.out_height, self.out_width = self.window.out_height, self.window.out_width
        self.latency = self.window.latency
        super().__init__({"i_stream": In(stream.Signature(self.channels)),
                          "o_stream": Out(stream.Signature(self.channels))})

    def elaborate(self, platform):
        m = Module()
        m.submodules.window = win = self.window
        wiring.connect(m, wiring.flipped(self.i_stream), win.i_stream)
        c = self.channels
        payload = win.o_stream.payload
        pooled = Signal(c)
        acc = payload[0:c]
        for i in range(1, win.steps):
            acc = acc | payload[c * i:c * (i + 1)]
        m.d.comb += [
            pooled.eq(acc),
            self.o_stream.payload.eq(pooled),
            *pass_handshake(win.o_stream, self.o_stream),
        ]
        return m
