"""The board's top level: the accelerator's :class:`BoardTop` on the board's clock and UART.

The design clock is the profile's ``clock_mhz``, made by the FPGA's PLL from the oscillator when
they differ (:class:`BoardDesign`); nextpnr times the PLL's output against it.
"""

from __future__ import annotations

import contextlib

from amaranth.build import ResourceError
from amaranth.hdl import (
    ClockDomain,
    ClockSignal,
    Elaboratable,
    Instance,
    Module,
    ResetSignal,
    Signal,
)
from amaranth.lib import io
from amaranth.lib.cdc import FFSynchronizer

from ..compiler.ir import DataflowGraph
from ..hw.uart import BoardTop, uart_divisor
from .profiles import BoardProfile

__all__ = ["BoardDesign"]

#: Reset held after the PLL locks (and after configuration without a PLL): iCE40 block RAMs
#: read zeros for ~3 us after configuration; 5x margin, as Amaranth's iCE40 platform does.
_POR_S = 15e-6


class BoardDesign(Elaboratable):
    """The board's top level: :class:`BoardTop` on the board's design clock and UART.

    When ``profile.clock_mhz`` differs from the oscillator, the ``sync`` domain runs from the
    family's PLL (``SB_PLL40_PAD`` on the oscillator's pad, ``SB_PLL40_CORE`` behind its input
    buffer, ``EHXPLLL``) with the dividers of :meth:`BoardProfile.pll_settings`, and stays in
    reset until the PLL has locked plus 15 us (iCE40 block RAMs read zeros for ~3 us after
    configuration). Otherwise the platform's default clock domain is used. The PLL output
    carries a clock constraint at ``clock_mhz``, so nextpnr's Fmax is checked against it.

    LED 0 (where the board has one) lights on a receive overrun or framing error.
    """

    def __init__(self, graph: DataflowGraph, profile: BoardProfile, baud: int = 115200):
        self.profile = profile
        self.divisor = uart_divisor(profile.clock_mhz * 1e6, baud)
        self.top = BoardTop(graph, self.divisor)

    def _pll_domain(self, m: Module, platform) -> None:
        profile = self.profile
        pll = profile.pll_settings()
        clk, locked = Signal(name="pll_clk"), Signal(name="pll_locked")
        osc = platform.request(platform.default_clk, dir="-")
        params = {f"p_{k}": v for k, v in pll.parameters().items()}
        if profile.pll == "SB_PLL40_PAD":
            m.submodules.pll = Instance("SB_PLL40_PAD", **params, i_PACKAGEPIN=osc.io,
                                        i_RESETB=1, i_BYPASS=0, o_PLLOUTGLOBAL=clk,
                                        o_LOCK=locked)
        else:
            m.submodules.osc_buffer = buf = io.Buffer("i", osc)
            if profile.pll == "SB_PLL40_CORE":
                m.submodules.pll = Instance("SB_PLL40_CORE", **params, i_REFERENCECLK=buf.i,
                                            i_RESETB=1, i_BYPASS=0, o_PLLOUTGLOBAL=clk,
                                            o_LOCK=locked)
            elif profile.pll == "EHXPLLL":
                attrs = {"FREQUENCY_PIN_CLKI": f"{pll.f_in:g}",
                         "FREQUENCY_PIN_CLKOP": f"{pll.f_out:g}", "ICP_CURRENT": "12",
                         "LPF_RESISTOR": "8", "MFG_ENABLE_FILTEROPAMP": "1",
                         "MFG_GMCREF_SEL": "2"}
                m.submodules.pll = Instance(
                    "EHXPLLL", a_keep=1, **{f"a_{k}": v for k, v in attrs.items()}, **params,
                    i_CLKI=buf.i, i_CLKFB=clk, o_CLKOP=clk, i_RST=0, i_STDBY=0,
                    i_PHASESEL0=0, i_PHASESEL1=0, i_PHASEDIR=1, i_PHASESTEP=1,
                    i_PHASELOADREG=1, i_PLLWAKESYNC=0, i_ENCLKOP=0, o_LOCK=locked)
            else:
                raise ValueError(f"unknown PLL primitive {profile.pll!r} on {profile.name}")
        platform.add_clock_constraint(clk, profile.clock_mhz * 1e6)
        # reset until locked, plus the power-on delay
        m.domains.por = ClockDomain("por", reset_less=True, local=True)
        m.domains.sync = ClockDomain("sync")
        m.d.comb += [ClockSignal("por").eq(clk), ClockSignal("sync").eq(clk)]
        lock = Signal()
        m.submodules.lock_sync = FFSynchronizer(locked, lock, o_domain="por")
        delay = max(1, int(_POR_S * profile.clock_mhz * 1e6))
        timer, ready = Signal(range(delay + 1)), Signal()
        with m.If(~lock):
            m.d.por += [timer.eq(0), ready.eq(0)]
        with m.Elif(timer == delay):
            m.d.por += ready.eq(1)
        with m.Else():
            m.d.por += timer.eq(timer + 1)
        m.d.comb += ResetSignal("sync").eq(~ready)

    def elaborate(self, platform):
        m = Module()
        if self.profile.uses_pll:
            self._pll_domain(m, platform)
        m.submodules.board = top = self.top
        uart = platform.request(*self.profile.uart, dir="-")
        m.submodules.rx_buffer = rx = io.Buffer("i", uart.rx)
        m.submodules.tx_buffer = tx = io.Buffer("o", uart.tx)
        m.d.comb += [top.rx.eq(rx.i), tx.o.eq(top.tx)]
        with contextlib.suppress(ResourceError):
            m.submodules.led_buffer = led = io.Buffer("o", platform.request("led", 0, dir="-"))
            m.d.comb += led.o.eq(top.error)
        return m
