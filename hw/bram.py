"""A read-only memory in block RAM that reads through the block's own output register.

:class:`BlockROM` is a ROM with a two-cycle read. On an ECP5 platform it is built from
``DP16KD`` instances with ``REGMODE = "OUTREG"``, so no path starts at the block's slow
array clock-to-output (about 5.8 ns; Yosys's ECP5 memory library maps no output register).
Elsewhere it is an :class:`amaranth.lib.memory.Memory` with a synchronous read port and a fabric
register behind it, with the same timing. :func:`dp16kd_blocks` counts the blocks the ECP5 build
uses, for the cost model.

How the ECP5 build splits a ROM of ``width`` bits x ``depth`` words (see :func:`dp16kd_blocks`):

* **Bands.** The words are cut into bands of ``B`` words (a power of two; the last band holds the
  rest), so a band's local address is the low address bits and its index the high ones. ``B``
  is the one that needs the fewest blocks (ties: the largest, fewest bands).
* **Blocks.** In a band of ``d`` words a block serves up to two column slices through its two
  read ports, each port in a ``DP16KD`` shape (1 x 16384, 2 x 8192, 4 x 4096, 9 x 2048,
  18 x 1024) of at least ``d`` words: port A's region starts at entry 0, port B's at an entry
  offset that is a multiple of the next power of two >= ``d`` (so its address is the local
  address with constant high bits, no adder), and the two regions may not share a bit of the
  block's 2048 nine-bit bytes. The band's columns are cut into slices of the widest such pair
  (18 + 18 up to 512 words, 18 + 4 up to 768, 18 + 2 up to 896, 18 + 1 up to 960, then 18 to
  1024, 9 + 2 to 1536, 9 + 1 to 1792, 9 to 2048, 4 + 1 to 3072, 4, 2 and 1).
* **Contents.** ``INITVAL_00`` .. ``INITVAL_3F`` are laid out as Yosys's
  ``brams_map_16kd.v`` and nextpnr read them: 1024 eighteen-bit words, 16 to a parameter at
  bit ``20 j``; a word is two nine-bit bytes, low byte first. An 18-bit port reads word
  ``e``, a 9-bit port byte ``e``, and a 1-, 2- or 4-bit port data bits ``[w e, w e + w)``
  counted over the eight low bits of each byte (the ninth, parity, bit unused).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping

import numpy as np
from amaranth.hdl import Cat, ClockSignal, Const, Instance, Module, Mux, Signal, unsigned
from amaranth.lib import wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from .checks import positive_int, quiet_on_error

__all__ = ["BlockROM", "DP16KD_PORTS", "dp16kd_blocks"]

#: Port widths of a ``DP16KD`` and the words a port of that width addresses.
DP16KD_PORTS = {18: 1024, 9: 2048, 4: 4096, 2: 8192, 1: 16384}

_BYTES = 2048               # nine-bit bytes in a DP16KD (18 kbit)
_ADDR_PINS = 14             # AD[AB]0..13; a port of width w uses the top log2(depth(w)) pins
_MAX_BAND = max(DP16KD_PORTS.values())
_MIN_BAND = 512             # up to 512 words a block reads 36 bits; a shorter band gains nothing


def _bytes(w: int, entries: int) -> int:
    """Nine-bit bytes that ``entries`` entries of a ``w``-bit port span (a partial byte
    counted)."""
    if w >= 9:
        return entries * w // 9
    return -(-entries * w // 8)


def _ceil_pow2(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()


@functools.cache
def _block_shape(d: int) -> tuple:
    """The widest block for a band of ``d`` words: ``((width_a,), width)`` for one port or
    ``((width_a, width_b, offset_b), width)`` for two, ``offset_b`` port B's first entry."""
    best = ((), 0)
    fits = [w for w in DP16KD_PORTS if DP16KD_PORTS[w] >= d]
    for wa in fits:                                  # one port (preferred on a tie)
        if wa > best[1]:
            best = ((wa,), wa)
    p = _ceil_pow2(d)
    for wa in fits:                                  # two: A at entry 0, B at k * p
        for wb in fits:
            if wa + wb <= best[1]:
                continue
            for off in range(p, DP16KD_PORTS[wb] - d + 1, p):
                if off * wb // (9 if wb >= 9 else 8) >= _bytes(wa, d) and \
                        _bytes(wb, off + d) <= _BYTES:
                    best = ((wa, wb, off), wa + wb)
                    break
    return best


def _band_blocks(width: int, d: int) -> int:
    return -(-width // _block_shape(d)[1])


@functools.cache
def _band_size(width: int, depth: int) -> int:
    """The band size of the fewest blocks (ties: the largest)."""
    best = None
    band = min(_ceil_pow2(depth), _MAX_BAND)
    while True:
        full, rest = divmod(depth, band)
        blocks = full * _band_blocks(width, band) + (_band_blocks(width, rest) if rest else 0)
        if best is None or blocks < best[0]:
            best = (blocks, band)
        if band <= _MIN_BAND:
            return best[1]
        band //= 2


def _plan(width: int, depth: int) -> tuple[int, list]:
    """``(band size, bands)``; a band is ``(first word, words, blocks)``, a block a list of
    ports ``(port width, first column, columns, first entry)``."""
    band = _band_size(width, depth)
    bands = []
    for r0 in range(0, depth, band):
        d = min(band, depth - r0)
        shape, _ = _block_shape(d)
        slots = [(shape[0], 0)] + ([(shape[1], shape[2])] if len(shape) == 3 else [])
        blocks, col = [], 0
        while col < width:
            ports = []
            for w, off in slots:
                if col < width:
                    n = min(w, width - col)
                    ports.append((w, col, n, off))
                    col += n
            blocks.append(ports)
        bands.append((r0, d, blocks))
    return band, bands


def dp16kd_blocks(width: int, depth: int) -> int:
    """Return how many ``DP16KD`` blocks :class:`BlockROM` builds for ``depth`` words of
    ``width`` bits on ECP5 (the split is the module's: bands and two-port blocks)."""
    width = positive_int("width", width)
    depth = positive_int("depth", depth)
    return sum(len(blocks) for _, _, blocks in _plan(width, depth)[1])


def _initvals(init: list[int], r0: int, d: int, ports: list) -> dict:
    """A block's ``INITVAL_00`` .. ``INITVAL_3F`` as ``Const(.., 320)`` parameters."""
    words = [0] * (_BYTES // 2)
    for w, col, n, off in ports:
        mask = (1 << n) - 1
        for i in range(d):
            v = (init[r0 + i] >> col) & mask
            if not v:
                continue
            e = off + i
            if w == 18:
                words[e] |= v
            elif w == 9:
                words[e >> 1] |= v << (9 * (e & 1))
            else:
                byte, pos = divmod(e * w, 8)
                words[byte >> 1] |= v << (9 * (byte & 1) + pos)
    params = {}
    for k in range(len(words) // 16):
        value = 0
        for j in range(16):
            value |= words[16 * k + j] << (20 * j)
        params[f"p_INITVAL_{k:02X}"] = Const(value, 320)
    return params


class BlockROM(wiring.Component):
    """A read-only memory of ``depth`` words of ``width`` bits with a two-cycle read.

    Parameters
    ----------
    width : int
        Bits a word (at least 1).
    depth : int
        Words (at least 1).
    init : sequence of int
        The contents: word ``i`` is ``init[i]``, each in ``0 .. 2**width - 1``; words past the
        end of a shorter sequence are 0.
    attrs : mapping of str to str or int, optional
        Attributes of the generic build's :class:`~amaranth.lib.memory.Memory` (for example
        :func:`~bnnforge.hw.checks.rom_attrs`' ``{"rom_style": "block"}``); the ECP5 build,
        whose blocks are explicit, ignores them.

    Ports
    -----
    addr : In(range(depth))
        The read address. An address of ``depth`` or more reads an unspecified word.
    en : In(1)
        Read and clock enable: both the address register and the output register load only
        at edges where ``en`` is high (the global-stall convention; tie it to 1 for none).
    data : Out(width)
        The word read.

    Timing
    ------
    Latency 2 enabled cycles, II 1: the word at the ``addr`` presented in an enabled cycle is on
    ``data`` after the second enabled edge from that cycle's (the first registers the address,
    the second the word) and stays there until the next enabled edge; cycles with ``en`` low
    change nothing. Until two enabled edges have passed ``data`` is unspecified.

    Builds
    ------
    On a platform whose ``family`` is ``"ecp5"``: :func:`dp16kd_blocks` ``DP16KD`` blocks with
    their output registers (``REGMODE_A/B = "OUTREG"``, ``CE = OCE = en``, clock of the
    ``sync`` domain, reset and chip select unused); words in several bands add a band select
    (registered beside the read) and a multiplexer behind the blocks. Otherwise a ``Memory``
    with a synchronous read port (enable ``en``) and a reset-less fabric register behind it.
    """

    @quiet_on_error
    def __init__(self, width, depth, init, attrs=None):
        self.width = positive_int("width", width)
        self.depth = positive_int("depth", depth)
        values = init.tolist() if isinstance(init, np.ndarray) else init
        if isinstance(values, (str, bytes)) or not hasattr(values, "__len__"):
            raise TypeError(f"init must be a sequence of integers, not {init!r}")
        values = list(values)
        if len(values) > self.depth:
            raise ValueError(f"init must hold at most depth={self.depth} words, "
                             f"not {len(values)}")
        for v in values:
            if not isinstance(v, (int, np.integer)) or isinstance(v, bool):
                raise TypeError(f"init must be integers, not {v!r}")
            if not 0 <= v < 1 << self.width:
                raise ValueError(f"init words must be in 0 .. 2**{self.width} - 1, not {v!r}")
        #: the contents, ``depth`` Python ints
        self.init = [int(v) for v in values] + [0] * (self.depth - len(values))
        if attrs is None:
            attrs = {}
        if not isinstance(attrs, Mapping) or not all(
                isinstance(k, str) and isinstance(v, (str, int)) for k, v in attrs.items()):
            raise TypeError(f"attrs must map names to str or int values, not {attrs!r}")
        self.attrs = dict(attrs)
        #: read latency in enabled cycles
        self.latency = 2
        super().__init__({"addr": In(range(self.depth)), "en": In(1),
                          "data": Out(self.width)})

    def elaborate(self, platform):
        m = Module()
        if getattr(platform, "family", None) == "ecp5":
            self._dp16kd(m)
        else:
            mem = Memory(shape=unsigned(self.width), depth=self.depth, init=self.init,
                         attrs=self.attrs)
            m.submodules.mem = mem
            rd = mem.read_port(domain="sync")
            data = Signal(self.width, reset_less=True)
            m.d.comb += [rd.addr.eq(self.addr), rd.en.eq(self.en), self.data.eq(data)]
            with m.If(self.en):
                m.d.sync += data.eq(rd.data)
        return m

    def _dp16kd(self, m: Module) -> None:
        band, bands = _plan(self.width, self.depth)
        band_bits = band.bit_length() - 1
        local = self.addr[:band_bits] if len(bands) > 1 else self.addr
        outs = []
        for b, (r0, d, blocks) in enumerate(bands):
            out = Signal(self.width, name=f"band{b}")
            p_bits = _ceil_pow2(d).bit_length() - 1
            for i, ports in enumerate(blocks):
                params = self._ports(m, local[:p_bits], p_bits, out, ports)
                params.update(_initvals(self.init, r0, d, ports))
                m.submodules[f"dp16kd_{b}_{i}"] = Instance("DP16KD", **params)
            outs.append(out)
        if len(bands) == 1:
            m.d.comb += self.data.eq(outs[0])
            return
        # the band of the word on `data`: the address's high bits, registered twice like it
        sel = self.addr[band_bits:]
        for stage in range(2):
            reg = Signal(len(sel), name=f"band_sel{stage}", reset_less=True)
            with m.If(self.en):
                m.d.sync += reg.eq(sel)
            sel = reg
        m.d.comb += self.data.eq(_mux_tree(sel, outs))

    def _ports(self, m: Module, local, p_bits: int, out: Signal, ports: list) -> dict:
        params = {"p_REGMODE_A": "NOREG", "p_REGMODE_B": "NOREG",
                  "p_DATA_WIDTH_A": 18, "p_DATA_WIDTH_B": 18,
                  "p_RESETMODE": "SYNC", "p_ASYNC_RESET_RELEASE": "SYNC",
                  "p_CSDECODE_A": "0b000", "p_CSDECODE_B": "0b000",
                  "p_WRITEMODE_A": "NORMAL", "p_WRITEMODE_B": "NORMAL",
                  "p_CLKAMUX": "CLKA", "p_CLKBMUX": "CLKB", "p_GSR": "DISABLED"}
        for port in "AB":
            params.update({f"i_CLK{port}": Const(0, 1), f"i_CE{port}": Const(0, 1),
                           f"i_OCE{port}": Const(0, 1), f"i_WE{port}": Const(0, 1),
                           f"i_RST{port}": Const(0, 1)})
            for j in range(3):
                params[f"i_CS{port}{j}"] = Const(0, 1)
            for j in range(_ADDR_PINS):
                params[f"i_AD{port}{j}"] = Const(0, 1)
            for j in range(18):
                params[f"i_DI{port}{j}"] = Const(0, 1)
        for port, (w, col, n, off) in zip("AB", ports, strict=False):
            abits = DP16KD_PORTS[w].bit_length() - 1
            entry = Cat(local, Const(off >> p_bits, abits - p_bits))
            params.update({f"p_REGMODE_{port}": "OUTREG", f"p_DATA_WIDTH_{port}": w,
                           f"i_CLK{port}": ClockSignal("sync"), f"i_CE{port}": self.en,
                           f"i_OCE{port}": self.en})
            for j in range(abits):
                params[f"i_AD{port}{_ADDR_PINS - abits + j}"] = entry[j]
            for j in range(n):
                params[f"o_DO{port}{j}"] = out[col + j]
        return params


def _mux_tree(sel, values: list):
    """``values[sel]`` as a tree of two-way multiplexers on the bits of ``sel`` (an index past
    the end gives one of the values)."""
    if len(values) == 1:
        return values[0]
    half = 1 << (len(values) - 1).bit_length() - 1
    return Mux(sel[(len(values) - 1).bit_length() - 1], _mux_tree(sel, values[half:]),
               _mux_tree(sel, values[:half]))
