"""Board profiles: which amaranth-boards platform, its clock, UART pins, resource budget, energy.

Every number here is a property of a board or of its FPGA and says where it comes from. The
resource budgets are the device data sheets' totals (and what nextpnr reports as available for the
device). The energy coefficients are one set per family (:data:`FAMILY_ENERGY`), each marked
measured-derived or estimate with its source: see :data:`ENERGY_METHOD`.
"""

from __future__ import annotations

import dataclasses
import importlib
from types import MappingProxyType

__all__ = ["BOARDS", "DEFAULT_CLOCKS_MHZ", "ENERGY_KEYS", "ENERGY_METHOD", "FAMILY_ENERGY",
           "BoardProfile", "get_board"]

#: The energy coefficients every profile defines (each ``{"value", "unit", "basis", "range",
#: "source"}``; ``basis`` is ``"measured"`` when derived from a public measurement of the device,
#: ``"estimate"`` otherwise). One set per FPGA family (:data:`FAMILY_ENERGY`), shared by every
#: board of the family and by ``bnnforge.sim.energy.DEFAULT_COEFFICIENTS``.
ENERGY_KEYS = ("static_mw", "clock_tree_pj_per_cycle", "clock_pj_per_cell_cycle", "pll_mw",
               "toggle_pj", "glitch_factor", "bram_pj_per_bit_read")

ENERGY_METHOD = (
    "Energy model v2 (docs/design.md section 5). iCE40 UltraPlus terms are derived from public "
    "measurements of an iCE40UP5K (tinyvision-ai-inc/ice40_power, Lattice UltraPlus breakout "
    "board, core rail 1.219 V): blank design 85.6 uA (static); PLL output at 16/32/48 MHz "
    "1.42/2.03/2.57 mA, a line of 0.84 mA + 36 uA/MHz (PLL fixed power, clock tree per cycle; "
    "an external 12 MHz clock into one 32-cell counter, (613.5 - 85.6) uA / 12 MHz = 44 uA/MHz, "
    "agrees within 20%); seven more 32-cell counters +28 uA at 12 MHz (clock load per used "
    "logic cell); an 8x8 LUT multiply every cycle +351 uA at 12 MHz = 35.7 pJ (energy per "
    "logic-cell output toggle, assuming ~100 real toggles per multiply). Block-RAM reads and "
    "every ECP5 and iCE40 HX term are estimates (Horowitz ISSCC 2014 SRAM figure scaled by "
    "(V_core / 0.9 V)^2; ECP5 clock tree and PLL scaled from the iCE40 measurements by die size; "
    "data-sheet standby currents). Calibrate with the recipe in docs/design.md section 5.")

_RAIL_V = 1.219                        # the measured iCE40UP5K core rail
_HOROWITZ_SRAM_BIT_PJ = 10.0 / 64      # 64-bit read from an 8 KB SRAM, 45 nm, 0.9 V
_ICE40_POWER = ("tinyvision-ai-inc/ice40_power (iCE40UP5K on the UltraPlus breakout, core rail "
                "1.219 V)")


def _entry(value: float, unit: str, basis: str, rng: tuple, source: str) -> MappingProxyType:
    return MappingProxyType({"value": round(float(value), 6), "unit": unit, "basis": basis,
                             "range": [round(float(r), 6) for r in rng], "source": source})


def _ice40up() -> MappingProxyType:
    tree = 36e-6 * _RAIL_V * 1e6            # 36 uA/MHz -> pJ per cycle
    cell = 28e-6 / (7 * 32) * _RAIL_V / 12e6 * 1e12
    toggle = 351e-6 * _RAIL_V / 12e6 * 1e12 / 100
    return MappingProxyType({
        "static_mw": _entry(85.6e-3 * _RAIL_V, "mW", "measured", (0.09, 0.12),
                            f"measured: blank design 85.6 uA x 1.219 V, {_ICE40_POWER}"),
        "clock_tree_pj_per_cycle": _entry(
            tree, "pJ per clock cycle", "measured", (tree, 44e-6 * _RAIL_V * 1e6),
            f"measured: slope of the PLL runs, (2.57 - 1.42) mA / (48 - 16) MHz = 36 uA/MHz x "
            f"1.219 V; the external 12 MHz clock run gives 44 uA/MHz (upper end); {_ICE40_POWER}"),
        "clock_pj_per_cell_cycle": _entry(
            cell, "pJ per used logic cell per cycle", "measured", (0.5 * cell, cell),
            f"measured: seven more 32-cell counters +28 uA at 12 MHz = 28 uA / 224 cells / "
            f"12 MHz x 1.219 V; an upper bound (it includes the counters' own toggles); "
            f"{_ICE40_POWER}"),
        "pll_mw": _entry(0.84e-3 * _RAIL_V * 1e3, "mW while the PLL runs", "measured",
                         (0.8, 1.1),
                         f"measured: intercept of the PLL runs at 16/32/48 MHz, 1.42 - 16 x "
                         f"0.036 = 0.84 mA x 1.219 V; {_ICE40_POWER}"),
        "toggle_pj": _entry(
            toggle, "pJ per logic-cell output toggle", "measured", (toggle / 2, toggle * 2),
            f"measured-derived: an 8x8 LUT multiply every cycle +351 uA at 12 MHz x 1.219 V = "
            f"35.7 pJ, over ~100 real output toggles (estimate: ~100 cells at a zero-delay "
            f"toggle rate of 0.5, x2 glitches of an array multiplier); {_ICE40_POWER}"),
        "glitch_factor": _entry(
            1.3, "real toggles per zero-delay toggle of a logic net", "estimate", (1.0, 2.0),
            "estimate: zero-delay simulation misses glitches; the adder trees are re-registered "
            "every 3 levels (compiler/pipeline.py), so fewer than an array multiplier's ~2x; "
            "flip-flop outputs do not glitch (factor 1)"),
        "bram_pj_per_bit_read": _entry(
            _HOROWITZ_SRAM_BIT_PJ * (1.2 / 0.9) ** 2, "pJ per block-RAM bit read", "estimate",
            (0.1, 0.6),
            "estimate: Horowitz ISSCC 2014 8 KB SRAM 64-bit read 10 pJ / 64 x (1.2 V / 0.9 V)^2 "
            "(no public iCE40 EBR measurement)"),
    })


def _scaled(base: MappingProxyType, vcore: float, static: tuple, tree_x: float, pll: tuple,
            family: str) -> MappingProxyType:
    """An estimate for another family: iCE40UP5K terms x (vcore / 1.219 V)^2, the clock tree
    x ``tree_x`` (die size), ``static`` = (mW, range, source), ``pll`` = (mW, range, source)."""
    v = (vcore / _RAIL_V) ** 2
    out = {}
    for key, e in base.items():
        if key in ("static_mw", "pll_mw", "glitch_factor"):
            continue
        scale = v * (tree_x if key == "clock_tree_pj_per_cycle" else 1.0)
        if key == "bram_pj_per_bit_read":
            scale = (vcore / 1.2) ** 2
        out[key] = _entry(e["value"] * scale, e["unit"], "estimate",
                          [r * scale for r in e["range"]],
                          f"estimate for {family}: the iCE40UP5K figure x (V_core {vcore} V / "
                          f"{_RAIL_V} V)^2" + (f" x {tree_x:g} (a larger clock network)"
                                               if key == "clock_tree_pj_per_cycle" else "")
                          + f" [{e['source']}]")
    out["static_mw"] = _entry(static[0], "mW", "estimate", static[1], static[2])
    out["pll_mw"] = _entry(pll[0], "mW while the PLL runs", "estimate", pll[1], pll[2])
    out["glitch_factor"] = base["glitch_factor"]
    return MappingProxyType({k: out[k] for k in ENERGY_KEYS})


_UP = _ice40up()
#: ``{family: {key: entry}}``: the energy coefficients of each FPGA family, defined once.
FAMILY_ENERGY: dict[str, MappingProxyType] = {
    "ice40up": _UP,
    "ice40hx": _scaled(_UP, 1.2, (1.37, (1.0, 2.0), "estimate: iCE40 LP/HX data sheet (DS1040) "
                                  "typical core standby current of the HX8K ~1,140 uA at 1.2 V"),
                       1.5, (1.0, (0.8, 1.5), "estimate: the iCE40UP5K PLL measurement"),
                       "ice40hx"),
    "ecp5": _scaled(_UP, 1.1, (85.0, (40.0, 120.0),
                               "estimate: ECP5 data sheet (FPGA-DS-02012) order of magnitude for "
                               "the LFE5U-85F typical core standby current (~75 mA at 1.1 V); "
                               "the former 40 mW fallback was the low end"),
                    4.0, (5.0, (2.0, 15.0), "estimate: one EHXPLLL, order of magnitude from "
                          "Lattice's power calculator class of figures (no public measurement "
                          "found); check on a board"),
                    "ecp5"),
}


def _pll_source(primitive: str, pll) -> str:
    from .pll import ICE40PLL

    if isinstance(pll, ICE40PLL):
        how = (f"DIVR={pll.divr} DIVF={pll.divf} DIVQ={pll.divq} "
               f"FILTER_RANGE={pll.filter_range}, VCO {pll.f_vco:g} MHz")
    else:
        how = (f"CLKI_DIV={pll.clki_div} CLKFB_DIV={pll.clkfb_div} CLKOP_DIV={pll.clkop_div}, "
               f"VCO {pll.f_vco:g} MHz")
    return f"{primitive} from the {pll.f_in:g} MHz oscillator to {pll.f_out:g} MHz ({how})"


@dataclasses.dataclass(frozen=True)
class BoardProfile:
    """One board bnnforge builds for.

    Attributes
    ----------
    name : str
        The name users type (``--board``).
    title : str
        The board's full name.
    platform : str
        ``module:Class`` of its amaranth-boards platform (see :meth:`platform_class`).
    family : str
        ``"ice40up"``, ``"ice40hx"`` or ``"ecp5"``.
    device, package : str
        The FPGA as the platform names it.
    oscillator_mhz : float
        The board's oscillator (also :attr:`osc_mhz`).
    clock_mhz : float
        The design clock: the accelerator, the UART (its divisor) and the timing check run at
        it. Made by the FPGA's PLL from the oscillator when it differs from it; chosen so that
        the models in the test suite meet timing on the board (see :meth:`with_clock` for
        another clock).
    clock_source : str
        How the design clock is made.
    pll : str or None
        The PLL primitive (``SB_PLL40_PAD``, ``SB_PLL40_CORE``, ``EHXPLLL``), ``None`` for a
        board without one.
    uart : tuple[str, int]
        The platform's UART resource (name, number); its ``rx``/``tx`` pins carry the frames.
    luts, ffs, bram_blocks, dsps : int
        The device's resources (LUT4s, flip-flops, block RAMs, multipliers/DSP blocks).
    bram_bits : int
        Bits per block RAM.
    resources_source : str
        Where the resource figures come from.
    energy : Mapping
        ``{key: {"value", "unit", "basis", "range", "source"}}`` for every key in
        :data:`ENERGY_KEYS`: its family's :data:`FAMILY_ENERGY`.
    """

    name: str
    title: str
    platform: str
    family: str
    device: str
    package: str
    oscillator_mhz: float
    clock_mhz: float
    clock_source: str
    pll: str | None
    uart: tuple
    luts: int
    ffs: int
    bram_blocks: int
    bram_bits: int
    dsps: int
    resources_source: str
    energy: MappingProxyType = dataclasses.field(compare=False)

    @property
    def osc_mhz(self) -> float:
        """The board's oscillator, MHz."""
        return self.oscillator_mhz

    @property
    def uses_pll(self) -> bool:
        """Whether the design clock comes from the PLL (it differs from the oscillator)."""
        return self.clock_mhz != self.oscillator_mhz

    def pll_settings(self):
        """Return the PLL's dividers for :attr:`clock_mhz` (see :mod:`~bnnforge.boards.pll`)."""
        from .pll import pll_for

        if self.pll is None:
            raise ValueError(f"{self.name} has no PLL; its clock is the {self.oscillator_mhz:g} "
                             "MHz oscillator")
        return pll_for(self.family, self.oscillator_mhz, self.clock_mhz)

    def with_clock(self, clock_mhz: float | None) -> BoardProfile:
        """Return this profile with the design clock ``clock_mhz`` (``None``: unchanged).

        The clock becomes what the PLL makes (within 1% of the request); the oscillator's own
        frequency needs no PLL.

        Raises
        ------
        PLLError
            When the PLL cannot make the clock (out of range, or not within 1%).
        """
        from .pll import pll_for

        if clock_mhz is None:
            return self
        if isinstance(clock_mhz, bool) or not isinstance(clock_mhz, (int, float)) \
                or not clock_mhz > 0:
            raise ValueError(f"clock_mhz must be a positive number of MHz, not {clock_mhz!r}")
        if clock_mhz == self.oscillator_mhz:
            return dataclasses.replace(self, clock_mhz=float(clock_mhz),
                                       clock_source=_OSCILLATOR_SOURCES.get(
                                           self.name, f"{self.oscillator_mhz:g} MHz oscillator "
                                           "directly, no PLL"))
        if self.pll is None:
            raise ValueError(f"{self.name} has no PLL: its clock is the "
                             f"{self.oscillator_mhz:g} MHz oscillator, not {clock_mhz:g} MHz")
        pll = pll_for(self.family, self.oscillator_mhz, float(clock_mhz))
        return dataclasses.replace(self, clock_mhz=round(pll.f_out, 6),
                                   clock_source=_pll_source(self.pll, pll))

    def platform_class(self):
        """Return the amaranth-boards platform class."""
        module, _, cls = self.platform.partition(":")
        return getattr(importlib.import_module(module), cls)

    def coefficient(self, key: str) -> float:
        """Return the value of energy coefficient ``key`` (one of :data:`ENERGY_KEYS`)."""
        if key not in self.energy:
            raise KeyError(f"no energy coefficient {key!r}; one of {', '.join(ENERGY_KEYS)}")
        return float(self.energy[key]["value"])

    def as_dict(self) -> dict:
        """Return the profile as JSON-able data."""
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["uart"] = list(self.uart)
        d["energy"] = {k: {**v, "range": list(v["range"])} for k, v in self.energy.items()}
        return d


_OSCILLATOR_PROFILES: dict[str, BoardProfile] = {
    "icebreaker": BoardProfile(
        name="icebreaker", title="1BitSquared iCEBreaker (iCE40UP5K-SG48)",
        platform="amaranth_boards.icebreaker:ICEBreakerPlatform", family="ice40up",
        device="iCE40UP5K", package="SG48", oscillator_mhz=12.0, clock_mhz=12.0,
        clock_source="12 MHz oscillator (clk12, pin 35) directly, no PLL",
        pll="SB_PLL40_PAD",
        uart=("uart", 0), luts=5280, ffs=5280, bram_blocks=30, bram_bits=4096, dsps=8,
        resources_source="Lattice iCE40 UltraPlus data sheet (FPGA-DS-02008): 5,280 LUT4 + FF "
                         "logic cells, 30 EBR of 4 kbit, 8 SB_MAC16 DSPs (and 4 SPRAM of 256 "
                         "kbit, unused)",
        energy=FAMILY_ENERGY["ice40up"]),
    "ulx3s-85f": BoardProfile(
        name="ulx3s-85f", title="Radiona ULX3S (ECP5 LFE5U-85F-6BG381)",
        platform="amaranth_boards.ulx3s:ULX3S_85F_Platform", family="ecp5",
        device="LFE5U-85F", package="BG381", oscillator_mhz=25.0, clock_mhz=25.0,
        clock_source="25 MHz oscillator (clk25, pin G2) directly, no PLL",
        pll="EHXPLLL",
        uart=("uart", 0), luts=83640, ffs=83640, bram_blocks=208, bram_bits=18432, dsps=156,
        resources_source="Lattice ECP5 family data sheet (FPGA-DS-02012): LFE5U-85 has 41,820 "
                         "slices = 83,640 LUT4 and 83,640 FFs, 208 sysMEM EBR of 18 kbit, 156 "
                         "18x18 multipliers",
        energy=FAMILY_ENERGY["ecp5"]),
    "ice40-hx8k": BoardProfile(
        name="ice40-hx8k", title="Lattice iCE40-HX8K breakout board (iCE40HX8K-CT256)",
        platform="amaranth_boards.ice40_hx8k_b_evn:ICE40HX8KBEVNPlatform", family="ice40hx",
        device="iCE40HX8K", package="CT256", oscillator_mhz=12.0, clock_mhz=12.0,
        clock_source="12 MHz oscillator (clk12, pin J3) directly, no PLL",
        pll="SB_PLL40_CORE",
        uart=("uart", 0), luts=7680, ffs=7680, bram_blocks=32, bram_bits=4096, dsps=0,
        resources_source="Lattice iCE40 LP/HX family data sheet (DS1040): HX8K has 7,680 LUT4 + "
                         "FF logic cells, 32 RAM4K blocks of 4 kbit, no DSP",
        energy=FAMILY_ENERGY["ice40hx"]),
}


_OSCILLATOR_SOURCES = {name: b.clock_source for name, b in _OSCILLATOR_PROFILES.items()}

#: The default design clock of each board (MHz), from measurements: nextpnr's Fmax of the board
#: tests' models stays ~10-15% above it (iCEBreaker: the pooled 49-32-10 MLP reached 34-35 MHz
#: with the PLL at 24 and 30 MHz; ULX3S: tfc at --luts 2000 reached 84-85 MHz at 50 and
#: 75 MHz). The HX8K has no bitstream test, so it keeps its oscillator (its PLL is available
#: through :meth:`BoardProfile.with_clock`).
DEFAULT_CLOCKS_MHZ = {"icebreaker": 30.0, "ulx3s-85f": 75.0, "ice40-hx8k": 12.0}

BOARDS: dict[str, BoardProfile] = {
    name: board.with_clock(DEFAULT_CLOCKS_MHZ[name])
    for name, board in _OSCILLATOR_PROFILES.items()}


def get_board(name: str) -> BoardProfile:
    """Return the profile of board ``name``."""
    if isinstance(name, BoardProfile):
        return name
    if name not in BOARDS:
        raise ValueError(f"unknown board {name!r}; choose one of {', '.join(BOARDS)}")
    return BOARDS[name]
