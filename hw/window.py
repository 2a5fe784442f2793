"""Window blocks over a pixel stream: :class:`SlidingWindow` (im2col) and :class:`MaxPool`.

Stream and stall conventions: :mod:`bnnforge.hw.matrix` (module docstring).
"""

from __future__ import annotations

import numpy as np
from amaranth.hdl import Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from .checks import pair, positive_int, quiet_on_error, silence
from .streams import pass_handshake, register_output, shift_in

__all__ = ["MaxPool", "SlidingWindow"]


class SlidingWindow(wiring.Component):
    """Sliding-window (im2col) generator over a pixel stream, with a ping-pong frame buffer.

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
    The buffer holds two whole frames (banks; a frame buffer rather than a line buffer, kept
    for its simple contract; fine for small maps). Frame j is written to bank j mod 2.

    * Writer: ``i_stream.ready`` is high iff the bank of the frame being written is free.
      Bank b becomes busy in the cycle after its frame's last pixel is accepted and free again
      in the cycle after the reader issued the last read step of the frame in it.
    * Reader: windows are produced in output raster order, each in T = kh*kw read steps (one
      per kernel position, row-major), so II = kh*kw per window and OH*OW*kh*kw enabled
      cycles per frame. A frame's first step is issued in the first enabled cycle in which its
      bank is busy and the reader has issued the previous frame's last step (in an earlier
      cycle). Steps of successive windows and frames follow without gaps.
    * A window's output register is written 1 enabled cycle after its last step and
      ``o_stream.valid`` rises in the next cycle (``latency = 2`` enabled cycles after the
      last step; the first window of a frame whose last pixel was accepted in cycle a is valid
      from cycle a + T + 2 when nothing stalls — attribute ``latency = T + 2``).
    * Global stall: while the output register is full and not accepted, the reader holds
      (the writer still fills a free bank).
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
        self.out_height = (self.height + 2 * ph - kh) // sh + 1
        self.out_width = (self.width + 2 * pw - kw) // sw + 1
        if kh > self.height + 2 * ph or kw > self.width + 2 * pw:
            raise ValueError(f"kernel {self.kernel} exceeds the padded input "
                             f"{(self.height + 2 * ph, self.width + 2 * pw)}")
        self.steps = kh * kw
        self.latency = self.steps + 2
        super().__init__({
            "i_stream": In(stream.Signature(self.channels * self.elem_bits)),
            "o_stream": Out(stream.Signature(self.steps * self.channels * self.elem_bits))})

    def elaborate(self, platform):
        m = Module()
        i_s, o = self.i_stream, self.o_stream
        c, b = self.channels, self.elem_bits
        h, w = self.height, self.width
        (kh, kw), (sh, sw), (ph, pw) = self.kernel, self.stride, self.padding
        oh, ow = self.out_height, self.out_width
        pix = c * b
        frame = h * w
        en = Signal()
        m.d.comb += en.eq(~(o.valid & ~o.ready))

        mem = Memory(shape=unsigned(pix), depth=2 * frame, init=[])
        m.submodules.buffer = mem
        wr = mem.write_port()
        rd = mem.read_port(domain="sync")

        bank_busy = Signal(2)
        wbank = Signal()
        waddr = Signal(range(frame))
        rbank = Signal()
        set_busy = Signal(2)
        clr_busy = Signal(2)

        # writer
        m.d.comb += i_s.ready.eq(~bank_busy.bit_select(wbank, 1))
        m.d.comb += [wr.addr.eq(Mux(wbank, frame, 0) + waddr), wr.data.eq(i_s.payload),
                     wr.en.eq(i_s.valid & i_s.ready)]
        with m.If(i_s.valid & i_s.ready):
            with m.If(waddr == frame - 1):
                m.d.sync += [waddr.eq(0), wbank.eq(~wbank)]
                m.d.comb += set_busy.eq(Mux(wbank, 0b10, 0b01))
            with m.Else():
                m.d.sync += waddr.eq(waddr + 1)

        # reader sequencer over (oy, ox, ky, kx)
        oy = Signal(range(oh))
        ox = Signal(range(ow))
        ky = Signal(range(kh))
        kx = Signal(range(kw))
        iy = Signal(signed(max(oh * sh, h + ph).bit_length() + 2))
        ix = Signal(signed(max(ow * sw, w + pw).bit_length() + 2))
        m.d.comb += [iy.eq(oy * sh - ph + ky), ix.eq(ox * sw - pw + kx)]
        active = Signal()
        m.d.comb += active.eq(bank_busy.bit_select(rbank, 1))
        issue = Signal()
        m.d.comb += issue.eq(en & active)
        last_k = Signal()
        last_win = Signal()
        m.d.comb += [last_k.eq((ky == kh - 1) & (kx == kw - 1)),
                     last_win.eq((oy == oh - 1) & (ox == ow - 1))]
        inside = Signal()
        m.d.comb += inside.eq((iy >= 0) & (iy < h) & (ix >= 0) & (ix < w))
        raddr = Signal(range(2 * frame))
        m.d.comb += raddr.eq(Mux(rbank, frame, 0) + (iy * w + ix)[:len(raddr)])
        m.d.comb += [rd.addr.eq(raddr), rd.en.eq(en)]
        with m.If(issue):
            with m.If(kx == kw - 1):
                m.d.sync += kx.eq(0)
                with m.If(ky == kh - 1):
                    m.d.sync += ky.eq(0)
                    with m.If(ox == ow - 1):
                        m.d.sync += ox.eq(0)
                        with m.If(oy == oh - 1):
                            m.d.sync += [oy.eq(0), rbank.eq(~rbank)]
                            m.d.comb += clr_busy.eq(Mux(rbank, 0b10, 0b01))
                        with m.Else():
                            m.d.sync += oy.eq(oy + 1)
                    with m.Else():
                        m.d.sync += ox.eq(ox + 1)
                with m.Else():
                    m.d.sync += ky.eq(ky + 1)
            with m.Else():
                m.d.sync += kx.eq(kx + 1)
        m.d.sync += bank_busy.eq((bank_busy & ~clr_busy) | set_busy)

        # stage 1: read data (or padding) lands in the window
        v1 = Signal()
        pad1 = Signal()
        last1 = Signal()
        with m.If(en):
            m.d.sync += [v1.eq(issue), pad1.eq(~inside), last1.eq(last_k)]
        pad_pixel = Const(int(sum(self.pad_value << (i * b) for i in range(c))), pix)
        data = Signal(pix)
        m.d.comb += data.eq(Mux(pad1, pad_pixel, rd.data))
        full, shift = shift_in(data, self.steps, "win")
        with m.If(en & v1):
            m.d.sync += shift
        register_output(m, o, en, v1 & last1, full)
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
