"""Board profiles: which amaranth-boards platform, its clock, UART pins, resource budget, energy.

Every number here is a property of a board or of its FPGA and says where it comes from. The
resource budgets are the device data sheets' totals (and what nextpnr reports as available for the
device). The energy coefficients are *estimates* for planning, not measurements: see
:data:`ENERGY_METHOD`.
"""

from __future__ import annotations

import dataclasses
import importlib
from types import MappingProxyType

__all__ = ["BOARDS", "DEFAULT_CLOCKS_MHZ", "ENERGY_KEYS", "ENERGY_METHOD", "BoardProfile",
           "get_board"]

#: The energy coefficients every profile defines (each ``{"value", "unit", "source"}``).
ENERGY_KEYS = ("xnor_pj_per_bit", "popcount_pj_per_adder_bit", "register_pj_per_bit_write",
               "rom_pj_per_bit_read", "static_mw")

ENERGY_METHOD = (
    "Dynamic coefficients start from Horowitz, 'Computing's energy problem', ISSCC 2014 (45 nm, "
    "0.9 V ASIC): int32 add 0.1 pJ, i.e. ~0.0031 pJ per full-adder bit; 64-bit read of an 8 KB "
    "SRAM 10 pJ, i.e. ~0.16 pJ per bit. Lattice iCE40 and ECP5 are 40 nm parts, so no node "
    "scaling is applied; energy is scaled by (V_core / 0.9 V)^2 and logic by the FPGA/ASIC "
    "dynamic-power gap of ~14x (Kuon & Rose, 'Measuring the gap between FPGAs and ASICs', IEEE "
    "TCAD 2007, 90 nm: 7.1-14x; the upper end since LUT4 fabrics with no carry-chain-friendly "
    "popcount pay more routing). Hard block RAM reads get only the voltage factor. An XNOR bit "
    "is taken as half a full-adder bit (one XOR of the two), a register bit write as one "
    "full-adder bit. Static power is the data sheet's typical core standby current times the "
    "core voltage. All are estimates to compare designs, not measurements: calibrate against "
    "Lattice's power calculator or a measured board before quoting absolute energy.")

_HOROWITZ_ADD_BIT_PJ = 0.1 / 32        # int32 add, 45 nm, 0.9 V
_HOROWITZ_SRAM_BIT_PJ = 10.0 / 64      # 64-bit read from an 8 KB SRAM
_FPGA_LOGIC_GAP = 14.0                 # Kuon & Rose 2007, dynamic power


def _energy(vcore: float, static_mw: float, static_source: str) -> MappingProxyType:
    v = (vcore / 0.9) ** 2
    add = _HOROWITZ_ADD_BIT_PJ * _FPGA_LOGIC_GAP * v
    base = (f"estimate: Horowitz ISSCC 2014 45 nm figure x (V_core {vcore} V / 0.9 V)^2 = "
            f"x{v:.2f}")
    return MappingProxyType({
        "xnor_pj_per_bit": {
            "value": round(add / 2, 5), "unit": "pJ per XNOR bit",
            "source": f"{base}, x{_FPGA_LOGIC_GAP:g} FPGA/ASIC gap (Kuon & Rose 2007); half of "
                      "an int32-add bit (0.1 pJ / 32)"},
        "popcount_pj_per_adder_bit": {
            "value": round(add, 5), "unit": "pJ per adder bit",
            "source": f"{base}, x{_FPGA_LOGIC_GAP:g} FPGA/ASIC gap (Kuon & Rose 2007); one "
                      "int32-add bit (0.1 pJ / 32)"},
        "register_pj_per_bit_write": {
            "value": round(add, 5), "unit": "pJ per register bit written",
            "source": f"{base}, x{_FPGA_LOGIC_GAP:g} FPGA/ASIC gap (Kuon & Rose 2007); taken "
                      "equal to one int32-add bit"},
        "rom_pj_per_bit_read": {
            "value": round(_HOROWITZ_SRAM_BIT_PJ * v, 5), "unit": "pJ per ROM bit read",
            "source": f"{base}; 8 KB SRAM 64-bit read 10 pJ / 64 bits (hard block RAM: no "
                      "fabric gap)"},
        "static_mw": {"value": static_mw, "unit": "mW", "source": static_source},
    })


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
        ``{key: {"value", "unit", "source"}}`` for every key in :data:`ENERGY_KEYS`.
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
        d["energy"] = {k: dict(v) for k, v in self.energy.items()}
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
        energy=_energy(1.2, 0.09,
                       "estimate: iCE40 UltraPlus data sheet typical core standby current "
                       "~75 uA at V_core 1.2 V (0.09 mW)")),
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
        energy=_energy(1.1, 85.0,
                       "estimate: ECP5 data sheet order of magnitude for the LFE5U-85 typical "
                       "core standby current (~75 mA at V_core 1.1 V, 85 mW); check Lattice's "
                       "power calculator for the exact figure")),
    "ice40-hx8k": BoardProfile(
        name="ice40-hx8k", title="Lattice iCE40-HX8K breakout board (iCE40HX8K-CT256)",
        platform="amaranth_boards.ice40_hx8k_b_evn:ICE40HX8KBEVNPlatform", family="ice40hx",
        device="iCE40HX8K", package="CT256", oscillator_mhz=12.0, clock_mhz=12.0,
        clock_source="12 MHz oscillator (clk12, pin J3) directly, no PLL",
        pll="SB_PLL40_CORE",
        uart=("uart", 0), luts=7680, ffs=7680, bram_blocks=32, bram_bits=4096, dsps=0,
        resources_source="Lattice iCE40 LP/HX family data sheet (DS1040): HX8K has 7,680 LUT4 + "
                         "FF logic cells, 32 RAM4K blocks of 4 kbit, no DSP",
        energy=_energy(1.2, 1.37,
                       "estimate: iCE40 LP/HX data sheet typical core standby current of the "
                       "HX8K ~1,140 uA at V_core 1.2 V (1.37 mW)")),
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
