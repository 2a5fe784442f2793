"""UART (8N1) receiver and transmitter, and the board top: UART ↔ accelerator.

Wire format (what :class:`BoardTop` expects and answers; ``bnnforge.host`` speaks it)
--------------------------------------------------------------------------------------
Serial 8N1 (one start bit, 8 data bits LSB first, one stop bit, no parity) at
``clk_hz / divisor`` baud.

* Host → board, per frame: ``pixels_per_frame * C_in`` bytes, one byte per pixel channel, pixels
  in raster (row-major, HWC) order, the channels of a pixel consecutive (channel 0 first). An
  image of shape (C, H, W) is ``image.transpose(1, 2, 0).tobytes()``; a (K,) vector input is one
  pixel of K channels, i.e. its K bytes in order. Frames follow each other with no separator.
* Board → host, per frame: ``class_bytes`` bytes of the argmax class index, then ``classes``
  scores of ``score_bytes`` bytes each, class 0 first, every field little-endian; scores are
  two's complement, sign-extended to whole bytes. ``class_bytes = ceil(class_width / 8)`` (one
  byte for up to 256 classes), ``score_bytes = ceil(score_width / 8)`` (4 for 32-bit scores).
  An answer is ``class_bytes + classes * score_bytes`` bytes (41 for 10 classes).

The board answers frames in order. It has no flow control on its receive side: the accelerator
takes a pixel within a byte time in practice, but a host that keeps several frames in flight
while a slow accelerator is still busy may overrun the receiver; :attr:`BoardTop.error` then goes
high and stays high (a lost byte shifts every later frame). Send one frame, read its answer,
repeat (what ``bnnforge.host.classify`` does by default).
"""

from __future__ import annotations

from amaranth.hdl import Cat, Const, Module, Mux, Signal, signed
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from ..compiler.ir import DataflowGraph
from .checks import quiet_on_error, silence
from .generate import Accelerator

__all__ = ["MIN_DIVISOR", "BoardTop", "UARTRx", "UARTTx", "answer_layout", "uart_divisor"]

#: Smallest clock cycles per bit the receiver handles (it samples mid-bit after a 2-FF sync).
MIN_DIVISOR = 4


def _divisor(value) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"divisor must be an integer number of clock cycles per bit, "
                        f"not {value!r}")
    if value < MIN_DIVISOR:
        raise ValueError(f"divisor must be at least {MIN_DIVISOR} clock cycles per bit, "
                         f"not {value}")
    return value


def uart_divisor(clk_hz: float, baud: int, tolerance: float = 0.02) -> int:
    """Return ``round(clk_hz / baud)``, or raise if the baud rate it gives is off by more than
    ``tolerance`` (UART receivers tolerate a few percent)."""
    if baud <= 0:
        raise ValueError(f"baud must be positive, not {baud!r}")
    div = round(clk_hz / baud)
    if div < MIN_DIVISOR:
        raise ValueError(f"{baud} baud is too fast for a {clk_hz / 1e6:g} MHz clock (at least "
                         f"{MIN_DIVISOR} cycles per bit); choose at most "
                         f"{int(clk_hz // MIN_DIVISOR)} baud")
    err = abs(clk_hz / div - baud) / baud
    if err > tolerance:
        raise ValueError(f"{baud} baud from a {clk_hz / 1e6:g} MHz clock is off by "
                         f"{100 * err:.1f}% (divisor {div}); choose a baud rate closer to "
                         f"{clk_hz / 1e6:g} MHz / n, e.g. {round(clk_hz / div)}")
    return div


def answer_layout(classes: int, score_width: int, class_width: int) -> dict:
    """Return the byte layout of one answer: class_bytes, score_bytes, answer_bytes."""
    cb, sb = -(-class_width // 8), -(-score_width // 8)
    return {"class_bytes": cb, "score_bytes": sb, "answer_bytes": cb + classes * sb}


class UARTRx(wiring.Component):
    """UART receiver, 8N1, ``divisor`` clock cycles per bit.

    Ports
    -----
    rx : In(1)
        The serial line (idle high); synchronized by two flip-flops inside.
    o_stream : Out(stream.Signature(8))
        One transfer per received byte. Held until accepted.
    overrun : Out(1)
        High for one cycle when a byte completes while the previous one is still not accepted
        (the new byte is dropped).
    framing_error : Out(1)
        High for one cycle when a stop bit reads 0 (the byte is dropped).

    Timing
    ------
    The start bit's falling edge is seen 2 cycles late (synchronizer); the start bit is checked
    ``divisor // 2`` cycles later and every further bit ``divisor`` cycles apart, i.e. in the
    middle of each bit. A byte is offered in the cycle after its stop bit was sampled (mid stop
    bit), so the receiver is back in idle half a bit before the next start bit may begin.
    """

    @quiet_on_error
    def __init__(self, divisor: int):
        self.divisor = _divisor(divisor)
        super().__init__({"rx": In(1, init=1), "o_stream": Out(stream.Signature(8)),
                          "overrun": Out(1), "framing_error": Out(1)})

    def elaborate(self, platform):
        m = Module()
        div = self.divisor
        s1 = Signal(init=1)
        line = Signal(init=1)
        m.d.sync += [s1.eq(self.rx), line.eq(s1)]

        timer = Signal(range(div))
        bit = Signal(range(8))
        data = Signal(8)
        tick = Signal(init=1)           # timer == 0, registered beside it
        with m.If(~tick):
            m.d.sync += [timer.eq(timer - 1), tick.eq(timer == 1)]

        def load(value):
            return [timer.eq(value), tick.eq(value == 0)]

        o = self.o_stream
        with m.If(o.valid & o.ready):
            m.d.sync += o.valid.eq(0)
        m.d.sync += [self.overrun.eq(0), self.framing_error.eq(0)]

        with m.FSM():
            with m.State("IDLE"):
                with m.If(~line):
                    m.d.sync += load(div // 2 - 1)
                    m.next = "START"
            with m.State("START"):
                with m.If(tick):
                    with m.If(line):            # a glitch, not a start bit
                        m.next = "IDLE"
                    with m.Else():
                        m.d.sync += [*load(div - 1), bit.eq(0)]
                        m.next = "DATA"
            with m.State("DATA"):
                with m.If(tick):
                    m.d.sync += [data.eq(Cat(data[1:], line)), *load(div - 1),
                                 bit.eq(bit + 1)]
                    with m.If(bit == 7):
                        m.next = "STOP"
            with m.State("STOP"):
                with m.If(tick):
                    with m.If(~line):
                        m.d.sync += self.framing_error.eq(1)
                    with m.Elif(o.valid & ~o.ready):
                        m.d.sync += self.overrun.eq(1)
                    with m.Else():
                        m.d.sync += [o.payload.eq(data), o.valid.eq(1)]
                    m.next = "IDLE"
        return m


class UARTTx(wiring.Component):
    """UART transmitter, 8N1, ``divisor`` clock cycles per bit.

    Ports
    -----
    i_stream : In(stream.Signature(8))
        Bytes to send; ``ready`` is high while the transmitter is idle.
    tx : Out(1)
        The serial line (idle high), straight from a register bit.

    Timing
    ------
    A byte accepted in cycle t drives its start bit from cycle t+1 for ``divisor`` cycles, then
    the 8 data bits LSB first and the stop bit, ``10 * divisor`` cycles in all; the next byte can
    be accepted in the last cycle of the stop bit, so back-to-back bytes keep the line busy.
    """

    @quiet_on_error
    def __init__(self, divisor: int):
        self.divisor = _divisor(divisor)
        super().__init__({"i_stream": In(stream.Signature(8)), "tx": Out(1, init=1)})

    def elaborate(self, platform):
        m = Module()
        div = self.divisor
        shreg = Signal(10, init=0x3FF)
        left = Signal(range(11))
        timer = Signal(range(div))
        zero = Signal(init=1)           # timer == 0, registered beside it (no compare on the path)
        m.d.comb += self.tx.eq(shreg[0])
        last = Signal()
        m.d.comb += [last.eq((left == 1) & zero),
                     self.i_stream.ready.eq((left == 0) | last)]
        with m.If(left != 0):
            with m.If(zero):
                m.d.sync += [timer.eq(div - 1), zero.eq(div == 1),
                             shreg.eq(Cat(shreg[1:], Const(1, 1))), left.eq(left - 1)]
            with m.Else():
                m.d.sync += [timer.eq(timer - 1), zero.eq(timer == 1)]
        with m.If(self.i_stream.valid & self.i_stream.ready):
            m.d.sync += [shreg.eq(Cat(Const(0, 1), self.i_stream.payload, Const(1, 1))),
                         left.eq(10), timer.eq(div - 1), zero.eq(div == 1)]
        return m


class BoardTop(wiring.Component):
    """UART receiver → accelerator → UART transmitter (the module file's wire format).

    Parameters
    ----------
    graph_or_accelerator : DataflowGraph or Accelerator
        A folded graph (an :class:`~bnnforge.hw.generate.Accelerator` is built from it) or an
        accelerator.
    divisor : int
        Clock cycles per bit (``clk_hz / baud``, see :func:`uart_divisor`); at least 4.

    Ports
    -----
    rx : In(1)
        From the host (idle high).
    tx : Out(1)
        To the host (idle high).
    error : Out(1)
        Sticky: goes high on the first receive overrun or framing error and stays high until
        reset (light an LED with it).

    Attributes
    ----------
    accelerator, rx_unit, tx_unit
        The submodules. ``frame_bytes``, ``class_bytes``, ``score_bytes``, ``answer_bytes``:
        the wire format's sizes.
    """

    def __init__(self, graph_or_accelerator, divisor: int):
        if isinstance(graph_or_accelerator, DataflowGraph):
            acc = Accelerator(graph_or_accelerator)
        elif isinstance(graph_or_accelerator, Accelerator):
            acc = graph_or_accelerator
        else:
            raise TypeError(f"BoardTop takes a folded DataflowGraph or an Accelerator, not "
                            f"{graph_or_accelerator!r}")
        try:
            self.rx_unit = UARTRx(divisor)
            self.tx_unit = UARTTx(divisor)
        except Exception:
            silence(acc)
            raise
        self.divisor = divisor
        self.accelerator = acc
        self.channels = acc.in_channels
        self.pixels_per_frame = acc.pixels_per_frame
        self.frame_bytes = self.channels * self.pixels_per_frame
        self.classes, self.score_width, self.class_width = (acc.classes, acc.score_width,
                                                            acc.class_width)
        layout = answer_layout(self.classes, self.score_width, self.class_width)
        self.class_bytes = layout["class_bytes"]
        self.score_bytes = layout["score_bytes"]
        self.answer_bytes = layout["answer_bytes"]
        super().__init__({"rx": In(1, init=1), "tx": Out(1, init=1), "error": Out(1)})

    def top_info(self) -> dict:
        """Return the accelerator's :meth:`top_info` plus the wire format's sizes."""
        info = self.accelerator.top_info()
        info.update({"divisor": self.divisor, "frame_bytes": self.frame_bytes,
                     "class_bytes": self.class_bytes, "score_bytes": self.score_bytes,
                     "answer_bytes": self.answer_bytes})
        return info

    def elaborate(self, platform):
        m = Module()
        m.submodules.rx = rx = self.rx_unit
        m.submodules.tx = tx = self.tx_unit
        m.submodules.accelerator = acc = self.accelerator
        m.d.comb += [rx.rx.eq(self.rx), self.tx.eq(tx.tx)]
        with m.If(rx.overrun | rx.framing_error):
            m.d.sync += self.error.eq(1)

        # -- bytes → transfers of P pixels (pixel 0's channel 0 first, in the low byte) ---------
        c = self.channels * acc.pixels_per_transfer
        pixel = Signal(8 * c)
        pvalid = Signal()
        count = Signal(range(c))
        m.d.comb += [rx.o_stream.ready.eq(~pvalid),
                     acc.i_stream.payload.eq(pixel), acc.i_stream.valid.eq(pvalid)]
        with m.If(acc.i_stream.valid & acc.i_stream.ready):
            m.d.sync += pvalid.eq(0)
        with m.If(rx.o_stream.valid & rx.o_stream.ready):
            if c == 1:
                m.d.sync += [pixel.eq(rx.o_stream.payload), pvalid.eq(1)]
            else:
                m.d.sync += pixel.eq(Cat(pixel[8:], rx.o_stream.payload))
                with m.If(count == c - 1):
                    m.d.sync += [count.eq(0), pvalid.eq(1)]
                with m.Else():
                    m.d.sync += count.eq(count + 1)

        # -- answer → bytes: class index, then every score, little-endian -------------------------
        # The answer stays in the accelerator's output register while its bytes go out (no
        # copy). A field counter (the class, then score i) and a byte counter select each byte
        # in two registered steps (the field, then its byte: the wide multiplexer is two short
        # paths); a byte is offered once both steps have seen the counters, and the last
        # byte's handshake takes the answer.
        w, cw, k = self.score_width, self.class_width, self.classes
        payload = acc.o_stream.payload
        sb = self.score_bytes
        fields = [payload[k * w:k * w + cw]] + [payload[i * w:(i + 1) * w].as_signed()
                                                for i in range(k)]
        field = Signal(range(k + 1))
        part = Signal(range(max(sb, self.class_bytes)))
        last_part = Signal()
        last_field = Signal()
        sent = Signal()
        chosen = Signal(signed(8 * max(sb, self.class_bytes)), reset_less=True)
        byte = Signal(8, reset_less=True)
        fresh = Signal(2)           # the counters have stood still for one / two cycles
        with m.Switch(field):
            for i, f in enumerate(fields):
                with m.Case(i):
                    m.d.sync += chosen.eq(f)
        m.d.sync += [byte.eq(chosen.word_select(part, 8)),
                     fresh.eq(Mux(acc.o_stream.valid & ~sent, Cat(1, fresh[0]), 0))]
        m.d.comb += [last_part.eq(Mux(field == 0, part == self.class_bytes - 1,
                                      part == sb - 1)),
                     last_field.eq(field == k),
                     tx.i_stream.payload.eq(byte),
                     tx.i_stream.valid.eq(acc.o_stream.valid & fresh[1]),
                     sent.eq(tx.i_stream.valid & tx.i_stream.ready),
                     acc.o_stream.ready.eq(sent & last_part & last_field)]
        with m.If(sent):
            m.d.sync += part.eq(Mux(last_part, 0, part + 1))
            with m.If(last_part):
                m.d.sync += field.eq(Mux(last_field, 0, field + 1))
        return m
