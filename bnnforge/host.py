"""Talk to a board running a bnnforge bitstream over its UART: send frames, read class + scores.

The wire format is documented in :mod:`bnnforge.hw.uart`: per frame the host sends
``pixels_per_frame * C_in`` bytes (raster order, the channels of a pixel consecutive) and the
board answers ``class_bytes`` bytes of class index and ``classes`` little-endian two's-complement
scores of ``score_bytes`` bytes each.

:class:`SimulatedSerial` is a serial port whose other end is the board top's RTL in Amaranth's
simulator, bit by bit on the UART lines: host code can be tested without a board.
"""

from __future__ import annotations

import collections
import json
import os
from pathlib import Path

import numpy as np

__all__ = ["HostError", "SimulatedSerial", "classify", "encode_frames", "decode_answer",
           "read_layout"]


class HostError(ValueError):
    """The frames, the layout or the port cannot be used."""


_LAYOUT_KEYS = ("pixel_width", "pixels_per_frame", "classes", "score_width", "class_width")


def read_layout(layout) -> dict:
    """Return the wire layout from a ``top.json``-style dict, a build folder or a top.json path.

    The result holds ``channels``, ``pixels_per_frame``, ``frame_bytes``, ``classes``,
    ``score_width``, ``class_bytes``, ``score_bytes`` and ``answer_bytes``.
    """
    if isinstance(layout, (str, os.PathLike)):
        path = Path(layout)
        if path.is_dir():
            path = path / "rtl" / "top.json"
        if not path.is_file():
            raise HostError(f"{path} is missing; give the build folder that the bitstream was "
                            "built from (bnnforge compile writes rtl/top.json)")
        layout = json.loads(path.read_text())
    if not isinstance(layout, dict):
        raise HostError(f"layout must be a dict, a build folder or a top.json path, not "
                        f"{layout!r}")
    missing = [k for k in _LAYOUT_KEYS if k not in layout]
    if missing:
        raise HostError(f"layout lacks {', '.join(missing)}")
    channels = int(layout["pixel_width"]) // 8
    pixels = int(layout["pixels_per_frame"])
    classes, sw, cw = int(layout["classes"]), int(layout["score_width"]), \
        int(layout["class_width"])
    cb, sb = -(-cw // 8), -(-sw // 8)
    return {"channels": channels, "pixels_per_frame": pixels, "frame_bytes": channels * pixels,
            "classes": classes, "score_width": sw, "class_bytes": cb, "score_bytes": sb,
            "answer_bytes": cb + classes * sb}


def encode_frames(images: np.ndarray, layout: dict) -> list[bytes]:
    """Return the bytes the board expects for every image.

    ``images``: uint8 ``(N, C, H, W)``, or ``(N, K)`` for a model whose input is a K-vector.
    """
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8:
        got = images.dtype if isinstance(images, np.ndarray) else type(images).__name__
        raise HostError(f"images must be a uint8 numpy array, got {got}")
    c, p = layout["channels"], layout["pixels_per_frame"]
    if images.ndim == 4:
        n, ch, h, w = images.shape
        if ch != c or h * w != p:
            raise HostError(f"images of shape {images.shape} do not fit the board's model: it "
                            f"takes {c} channel(s) and {p} pixels per image")
        flat = images.transpose(0, 2, 3, 1).reshape(n, -1)
    elif images.ndim == 2 and p == 1 and images.shape[1] == c:
        flat = images
    else:
        want = f"(N, {c})" if p == 1 else f"(N, {c}, H, W) with H*W = {p}"
        raise HostError(f"images have shape {images.shape}; the board's model takes {want}")
    return [np.ascontiguousarray(f).tobytes() for f in flat]


def decode_answer(data: bytes, layout: dict) -> tuple[int, np.ndarray]:
    """Return (class, scores as int64) from one answer's bytes."""
    cb, sb, k = layout["class_bytes"], layout["score_bytes"], layout["classes"]
    if len(data) != layout["answer_bytes"]:
        raise HostError(f"an answer is {layout['answer_bytes']} bytes, not {len(data)}")
    cls = int.from_bytes(data[:cb], "little")
    scores = np.array([int.from_bytes(data[cb + i * sb:cb + (i + 1) * sb], "little", signed=True)
                       for i in range(k)], dtype=np.int64)
    return cls, scores


def _open(port, baud: int, timeout: float):
    if isinstance(port, (str, os.PathLike)):
        try:
            import serial
        except ImportError:  # pragma: no cover - pyserial is a dependency
            raise HostError("talking to a board needs pyserial: pip install pyserial==3.5") \
                from None
        try:
            return serial.serial_for_url(os.fspath(port), baudrate=baud, timeout=timeout), True
        except (serial.SerialException, ValueError) as exc:
            raise HostError(f"cannot open serial port {port}: {exc}") from None
    if not all(hasattr(port, a) for a in ("read", "write")):
        raise HostError(f"port must be a serial device name (e.g. /dev/ttyUSB1) or an open "
                        f"serial object, not {port!r}")
    return port, False


def classify(port, images: np.ndarray, baud: int = 115200, timeout: float = 5.0, *,
             layout=None, window: int = 1) -> list[tuple[int, np.ndarray]]:
    """Classify ``images`` on a board; return one ``(class, scores)`` per image.

    Parameters
    ----------
    port
        A serial device (``"/dev/ttyUSB1"``, any pyserial URL) opened at ``baud`` 8N1, or an open
        serial-like object with ``read``/``write`` (e.g. :class:`SimulatedSerial`).
    images
        uint8 ``(N, C, H, W)`` (or ``(N, K)`` for a vector input).
    baud, timeout
        Baud rate of a port opened by name; seconds to wait for each answer.
    layout
        The model's wire layout: the build folder, its ``rtl/top.json``, or that dict. May be
        left out when ``port`` has a ``top_info()`` (a :class:`SimulatedSerial`).
    window
        Frames in flight: 1 (default) sends a frame and waits for its answer, which can never
        overrun the board's receiver; more overlaps the USB latency with the next frame.
    """
    if layout is None:
        if not hasattr(port, "top_info"):
            raise HostError("give layout= (the build folder, or its rtl/top.json) so the host "
                            "knows the frame size and the answer format")
        layout = port.top_info()
    layout = read_layout(layout)
    if isinstance(window, bool) or not isinstance(window, int) or window < 1:
        raise HostError(f"window must be a positive number of frames, not {window!r}")
    frames = encode_frames(images, layout)
    ser, owned = _open(port, baud, timeout)
    out: list[tuple[int, np.ndarray]] = []
    pending: collections.deque[int] = collections.deque()

    def receive():
        i = pending.popleft()
        want = layout["answer_bytes"]
        data = b""
        while len(data) < want:
            chunk = ser.read(want - len(data))
            if not chunk:
                raise TimeoutError(
                    f"the board sent {len(data)} of {want} answer bytes for image {i} within "
                    f"{getattr(ser, 'timeout', timeout)} s: check the port, the baud rate "
                    f"({baud}) and that the board "
                    "runs the bitstream of this model")
            data += chunk
        out.append(decode_answer(data, layout))

    try:
        if hasattr(ser, "reset_input_buffer"):
            ser.reset_input_buffer()
        for i, frame in enumerate(frames):
            ser.write(frame)
            if hasattr(ser, "flush"):
                ser.flush()
            pending.append(i)
            if len(pending) >= window:
                receive()
        while pending:
            receive()
    finally:
        if owned:
            ser.close()
    return out


class SimulatedSerial:
    """A serial port wired to :class:`~bnnforge.hw.uart.BoardTop` in Amaranth's simulator.

    Bytes written are driven bit by bit onto the board's ``rx`` line; the board's ``tx`` line is
    decoded (sampled mid-bit) into bytes that :meth:`read` returns. Time is simulated: the clock
    runs at ``baud * divisor`` Hz, and :meth:`read` gives up after ``timeout`` simulated seconds.

    Parameters
    ----------
    graph_or_top
        A folded DataflowGraph, an Accelerator, or a BoardTop.
    divisor
        Clock cycles per UART bit (small keeps the simulation fast).
    baud, timeout
        Nominal baud rate (sets the simulated clock) and the read timeout in simulated seconds.
    """

    def __init__(self, graph_or_top, divisor: int = 8, baud: int = 115200,
                 timeout: float = 1.0):
        from amaranth.sim import Simulator

        from .hw.uart import BoardTop

        top = graph_or_top if isinstance(graph_or_top, BoardTop) else \
            BoardTop(graph_or_top, divisor)
        self.top = top
        self.divisor = top.divisor
        self.baudrate = baud
        self.timeout = timeout
        self.period = 1.0 / (baud * self.divisor)
        self._to_board: collections.deque[int] = collections.deque()
        self._from_board: collections.deque[int] = collections.deque()
        self.cycles = 0
        self.sim = Simulator(top)
        self.sim.add_clock(self.period)
        self.sim.add_testbench(self._drive, background=True)
        self.sim.add_testbench(self._listen, background=True)
        self.is_open = True

    def top_info(self) -> dict:
        """The board top's layout (see :meth:`BoardTop.top_info`)."""
        return self.top.top_info()

    async def _drive(self, ctx):
        div = self.divisor
        ctx.set(self.top.rx, 1)
        while True:
            if not self._to_board:
                await ctx.tick()
                continue
            byte = self._to_board.popleft()
            for bit in [0] + [(byte >> i) & 1 for i in range(8)] + [1]:
                ctx.set(self.top.rx, bit)
                await ctx.tick().repeat(div)

    async def _listen(self, ctx):
        div = self.divisor
        while True:
            if ctx.get(self.top.tx):
                await ctx.tick()
                continue
            await ctx.tick().repeat(div // 2)       # middle of the start bit
            byte = 0
            for i in range(8):
                await ctx.tick().repeat(div)
                byte |= ctx.get(self.top.tx) << i
            await ctx.tick().repeat(div)            # middle of the stop bit
            if ctx.get(self.top.tx):
                self._from_board.append(byte)
            else:
                raise AssertionError("the board sent a byte without a stop bit")

    def _run(self, cycles: int) -> None:
        self.cycles += cycles
        self.sim.run_until(self.cycles * self.period)

    def write(self, data) -> int:
        self._check_open()
        data = bytes(data)
        self._to_board.extend(data)
        return len(data)

    def flush(self) -> None:
        """Run the simulation until every written byte is on the line."""
        while self._to_board:
            self._run(10 * self.divisor)

    def read(self, size: int = 1) -> bytes:
        """Return up to ``size`` bytes; fewer only when ``timeout`` simulated seconds pass."""
        self._check_open()
        limit = self.cycles + (int(self.timeout / self.period) if self.timeout is not None
                               else 1 << 62)
        while len(self._from_board) < size and self.cycles < limit:
            self._run(min(20 * self.divisor, limit - self.cycles))
        n = min(size, len(self._from_board))
        return bytes(self._from_board.popleft() for _ in range(n))

    @property
    def in_waiting(self) -> int:
        return len(self._from_board)

    def reset_input_buffer(self) -> None:
        self._from_board.clear()

    def _check_open(self) -> None:
        if not self.is_open:
            raise HostError("the simulated serial port is closed")

    def close(self) -> None:
        self.is_open = False

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
