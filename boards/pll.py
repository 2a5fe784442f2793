"""PLL settings: the divider search of icepll (iCE40) and ecppll (ECP5), in Python.

Both searches are the tools' own (Project IceStorm ``icepll``, Project Trellis ``ecppll``): the
same legal ranges, loop order and tie-breaking, so the dividers agree with what the tools print
(``yowasp-icepll -i 12 -o 24``, ``yowasp-ecppll -i 25 -o 75``). The results feed the primitives
in :class:`~bnnforge.boards.top.BoardDesign`: ``SB_PLL40_PAD``/``SB_PLL40_CORE`` (iCE40, simple
feedback) and ``EHXPLLL`` (ECP5, feedback from CLKOP).
"""

from __future__ import annotations

import dataclasses

__all__ = ["ECP5PLL", "ICE40PLL", "PLLError", "ecp5_pll", "ice40_pll", "pll_for"]

#: iCE40 sysCLOCK PLL limits (iCE40 sysCLOCK PLL design guide, TN1251; icepll), MHz.
ICE40_IN = (10.0, 133.0)
ICE40_OUT = (16.0, 275.0)
ICE40_PFD = (10.0, 133.0)
ICE40_VCO = (533.0, 1066.0)

#: ECP5 sysCLOCK PLL limits (ECP5 sysCLOCK PLL/DLL design guide, TN1263; ecppll), MHz.
ECP5_IN = (8.0, 400.0)
ECP5_OUT = (10.0, 400.0)
ECP5_PFD = (3.125, 400.0)
ECP5_VCO = (400.0, 800.0)

#: How far the PLL's output may be from the requested clock.
TOLERANCE = 0.01


class PLLError(ValueError):
    """The requested clock cannot be made from the oscillator."""


@dataclasses.dataclass(frozen=True)
class ICE40PLL:
    """iCE40 PLL settings, simple feedback: ``f_out = f_in * (DIVF + 1) / ((DIVR + 1) * 2**DIVQ)``.

    The ``divr``, ``divf``, ``divq`` and ``filter_range`` fields are the primitive's parameters
    of the same names; the frequencies are in MHz.
    """

    divr: int
    divf: int
    divq: int
    filter_range: int
    f_in: float
    f_pfd: float
    f_vco: float
    f_out: float

    def parameters(self) -> dict:
        """Return the ``SB_PLL40_*`` parameters."""
        return {"FEEDBACK_PATH": "SIMPLE", "DIVR": self.divr, "DIVF": self.divf,
                "DIVQ": self.divq, "FILTER_RANGE": self.filter_range}


@dataclasses.dataclass(frozen=True)
class ECP5PLL:
    """ECP5 ``EHXPLLL`` settings, feedback from CLKOP:
    ``f_out = f_in * CLKFB_DIV / CLKI_DIV`` and ``f_vco = f_out * CLKOP_DIV``.

    The frequencies are in MHz; ``clkop_cphase`` shifts CLKOP by 180 degrees as ecppll does.
    """

    clki_div: int
    clkfb_div: int
    clkop_div: int
    clkop_cphase: int
    f_in: float
    f_pfd: float
    f_vco: float
    f_out: float

    def parameters(self) -> dict:
        """Return the ``EHXPLLL`` parameters."""
        return {"PLLRST_ENA": "DISABLED", "INTFB_WAKE": "DISABLED", "STDBY_ENABLE": "DISABLED",
                "DPHASE_SOURCE": "DISABLED", "OUTDIVIDER_MUXA": "DIVA",
                "OUTDIVIDER_MUXB": "DIVB", "OUTDIVIDER_MUXC": "DIVC",
                "OUTDIVIDER_MUXD": "DIVD", "CLKI_DIV": self.clki_div,
                "CLKOP_ENABLE": "ENABLED", "CLKOP_DIV": self.clkop_div,
                "CLKOP_CPHASE": self.clkop_cphase, "CLKOP_FPHASE": 0,
                "FEEDBK_PATH": "CLKOP", "CLKFB_DIV": self.clkfb_div}


def _check(what: str, value: float, lo: float, hi: float, family: str) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise TypeError(f"{what} must be a number of MHz, not {value!r}")
    if not lo <= value <= hi:
        raise PLLError(f"{what} of {value:g} MHz is outside the {family} PLL's range of "
                       f"{lo:g}-{hi:g} MHz")


def _close(best, f_out: float, f_in: float, family: str, tolerance: float | None):
    if tolerance is not None and abs(best.f_out - f_out) > tolerance * f_out:
        raise PLLError(f"the {family} PLL cannot make {f_out:g} MHz from {f_in:g} MHz within "
                       f"{100 * tolerance:g}%: the nearest is {best.f_out:.4g} MHz; choose "
                       f"{best.f_out:.4g} MHz")
    return best


def ice40_pll(f_in: float, f_out: float, *, tolerance: float | None = TOLERANCE) -> ICE40PLL:
    """Return the iCE40 PLL settings (simple feedback) that come closest to ``f_out`` MHz.

    The search is icepll's: DIVR 0-15, DIVF 0-127, DIVQ 1-6 with the phase detector at
    10-133 MHz and the VCO at 533-1066 MHz; the first setting found at the smallest error wins.
    ``FILTER_RANGE`` follows from the phase-detector frequency as in icepll.

    Raises
    ------
    PLLError
        When ``f_in`` or ``f_out`` is outside the PLL's range, or the nearest output is more than
        ``tolerance`` (relative; ``None``: any) from ``f_out``.
    """
    _check("input clock", f_in, *ICE40_IN, "iCE40")
    _check("output clock", f_out, *ICE40_OUT, "iCE40")
    best, err = None, None
    for divr in range(16):
        f_pfd = f_in / (divr + 1)
        if not ICE40_PFD[0] <= f_pfd <= ICE40_PFD[1]:
            continue
        for divf in range(128):
            f_vco = f_pfd * (divf + 1)
            if not ICE40_VCO[0] <= f_vco <= ICE40_VCO[1]:
                continue
            for divq in range(1, 7):
                out = f_vco / 2 ** divq
                if err is None or abs(out - f_out) < err:
                    err = abs(out - f_out)
                    best = (divr, divf, divq, f_pfd, f_vco, out)
    if best is None:
        raise PLLError(f"the iCE40 PLL has no setting for {f_in:g} MHz in")
    divr, divf, divq, f_pfd, f_vco, out = best
    filter_range = 1 + sum(f_pfd >= top for top in (17, 26, 44, 66, 101))
    return _close(ICE40PLL(divr, divf, divq, filter_range, float(f_in), f_pfd, f_vco, out),
                  f_out, f_in, "iCE40", tolerance)


def ecp5_pll(f_in: float, f_out: float, *, tolerance: float | None = TOLERANCE) -> ECP5PLL:
    """Return the ECP5 ``EHXPLLL`` settings that come closest to ``f_out`` MHz.

    The search is ecppll's: CLKI_DIV 1-128, CLKFB_DIV 1-80, CLKOP_DIV 1-128 with the phase
    detector at 3.125-400 MHz and the VCO at 400-800 MHz; at equal error the VCO nearest
    600 MHz wins.

    Raises
    ------
    PLLError
        As :func:`ice40_pll`.
    """
    _check("input clock", f_in, *ECP5_IN, "ECP5")
    _check("output clock", f_out, *ECP5_OUT, "ECP5")
    best, err = None, None
    for clki in range(1, 129):
        f_pfd = f_in / clki
        if not ECP5_PFD[0] <= f_pfd <= ECP5_PFD[1]:
            continue
        for fb in range(1, 81):
            # only the output dividers that put the VCO in range (ecppll tries all 128)
            lo = max(1, int(ECP5_VCO[0] / (f_pfd * fb)) - 1)
            hi = min(128, int(ECP5_VCO[1] / (f_pfd * fb)) + 1)
            for op in range(lo, hi + 1):
                f_vco = f_pfd * fb * op
                if not ECP5_VCO[0] <= f_vco <= ECP5_VCO[1]:
                    continue
                out = f_vco / op
                e = abs(out - f_out)
                if err is None or e < err or (e == err and abs(f_vco - 600) < abs(best[3] - 600)):
                    err = e
                    best = (clki, fb, op, f_vco, out, f_pfd)
    if best is None:
        raise PLLError(f"the ECP5 PLL has no setting for {f_in:g} MHz in")
    clki, fb, op, f_vco, out, f_pfd = best
    return _close(ECP5PLL(clki, fb, op, op // 2, float(f_in), f_pfd, f_vco, out),
                  f_out, f_in, "ECP5", tolerance)


def pll_for(family: str, f_in: float, f_out: float, *,
            tolerance: float | None = TOLERANCE) -> ICE40PLL | ECP5PLL:
    """Return the PLL settings of an FPGA family (``ice40up``, ``ice40hx``, ``ecp5``)."""
    if family.startswith("ice40"):
        return ice40_pll(f_in, f_out, tolerance=tolerance)
    if family == "ecp5":
        return ecp5_pll(f_in, f_out, tolerance=tolerance)
    raise ValueError(f"no PLL model for FPGA family {family!r}; one of ice40up, ice40hx, ecp5")
