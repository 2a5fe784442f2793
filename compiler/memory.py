"""Where a ROM goes: block RAM or logic, by cost, on the FPGA family it is built for.

One rule, read by the cost model (:mod:`bnnforge.compiler.costs`), the hardware plan
(:mod:`bnnforge.compiler.plan`, which writes each matrix block's choice into the block) and the
generator (:mod:`bnnforge.hw.matrix`, which marks the memory ``rom_style = "block"`` or
``"logic"`` so that Yosys builds what was priced):

* a ROM of one word is a constant (``"const"``);
* deeper than :data:`LOGIC_ROM_DEPTH` words it goes to block RAM (a deep logic ROM's
  multiplexer tree is too slow);
* otherwise it costs ``ceil(width x depth / 16)`` logic cells in logic (a LUT4 holds 16 bits;
  Yosys's ROM-to-logic mapping comes close to it on random weights) or :func:`ram_blocks` block
  RAMs of the family in ``"bram"``, and the cheaper wins, a block RAM priced at
  :data:`BRAM_PRICE` logic cells for the family (:data:`BRAM_CELLS` without one).

A shallow, wide ROM fills few words of many block RAMs (a 3,136-bit x 64-word weight ROM took 88
of the ECP5-85F's DP16KD blocks and congested the router), so it goes to logic; a deep one fills
its blocks and goes to block RAM.
"""

from __future__ import annotations

__all__ = ["BLOCK_SHAPES", "BRAM_CELLS", "BRAM_PRICE", "LOGIC_ROM_DEPTH", "ROM_STYLES",
           "bram_price", "ram_blocks", "rom_cost", "rom_style"]

#: Block RAM shapes (width, depth) a ROM or RAM may use, per block family: iCE40 SB_RAM40_4K
#: (4 kbit) and ECP5 DP16KD (18 kbit: 36 bits wide as a pseudo-dual-port ROM).
BLOCK_SHAPES = {
    "ice40": ((16, 256), (8, 512), (4, 1024), (2, 2048)),
    "ecp5": ((36, 512), (18, 1024), (9, 2048), (4, 4096), (2, 8192), (1, 16384)),
}

#: Logic cells a block RAM is priced at without a board: about a UP5K's cells per block (the
#: default rule then puts a ROM of 128 words or more of 16-bit multiples in block RAM).
BRAM_CELLS = 128

#: Logic cells a block RAM is priced at, per FPGA family. iCE40: :data:`BRAM_CELLS` (the
#: iCEBreaker builds with 256-word weight ROMs in block RAM and 64-word ones in logic placed and
#: met their clocks). ECP5: 256, so a 36-bit-wide ROM goes to block RAM from about 114 words: a
#: wide, shallow ROM spread over many DP16KD columns makes long routes to the lanes (the
#: blocks now read through their own output register and a fabric register, so their
#: clock-to-out no longer limits the clock; before that the sfc builds with weights in block
#: RAM stopped at 106 MHz).
BRAM_PRICE = {"ice40up": BRAM_CELLS, "ice40hx": BRAM_CELLS, "ecp5": 256}

#: The deepest ROM built in logic: a deeper one's multiplexer tree takes more than a cycle on an
#: iCE40 at 50 MHz (a 640-word score ROM read in logic was the critical path at 48.9 MHz; a
#: 320-word one met 54), so it goes to block RAM whatever the cells say.
LOGIC_ROM_DEPTH = 512

#: What :func:`rom_style` answers.
ROM_STYLES = ("const", "logic", "bram")


def _shapes(family: str | None) -> tuple:
    return BLOCK_SHAPES["ecp5" if family == "ecp5" else "ice40"]


def ram_blocks(width: int, depth: int, family: str | None = None) -> int:
    """Block RAMs of ``family`` (``None`` or an iCE40 family: 4-kbit SB_RAM40_4K; ``"ecp5"``:
    DP16KD) that hold ``depth`` words of ``width`` bits, in the best of the family's shapes."""
    return min(-(-width // w) * -(-depth // d) for w, d in _shapes(family))


def bram_price(family: str | None = None) -> int:
    """Logic cells a block RAM of ``family`` is priced at (:data:`BRAM_PRICE`;
    :data:`BRAM_CELLS` for another family or none)."""
    return BRAM_PRICE.get(family, BRAM_CELLS)


def rom_cost(width: int, depth: int, style: str, family: str | None = None) -> tuple[int, int]:
    """(logic cells, block RAMs of ``family``) of a ROM of ``depth`` words of ``width`` bits
    built in ``style`` (:data:`ROM_STYLES`)."""
    if style == "const" or depth <= 1:
        return 0, 0
    if style == "logic":
        return -(-width * depth // 16), 0
    if style == "bram":
        return 0, ram_blocks(width, depth, family)
    raise ValueError(f"ROM style must be one of {', '.join(ROM_STYLES)}, not {style!r}")


def rom_style(width: int, depth: int, family: str | None = None,
              bram_cells: int | None = None) -> str:
    """The cheaper home of a ROM of ``depth`` words of ``width`` bits on ``family``:
    ``"const"`` (one word), ``"bram"`` when its blocks, at ``bram_cells`` logic cells each
    (``None``: the family's :data:`BRAM_PRICE`), cost no more than the logic would, else
    ``"logic"``."""
    if depth <= 1:
        return "const"
    if depth > LOGIC_ROM_DEPTH:
        return "bram"
    price = bram_price(family) if bram_cells is None else int(bram_cells)
    logic, _ = rom_cost(width, depth, "logic")
    return "bram" if price * ram_blocks(width, depth, family) <= logic else "logic"
