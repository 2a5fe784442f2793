"""Timing-aware compile: the clock a placed design meets, predicted per FPGA family.

``compile --board`` no longer takes the board's clock on trust: :func:`design_clock` predicts
the Fmax nextpnr reaches for a design of the estimated size from :data:`FMAX_MODELS` (one
model per family, fitted on our own place-and-route results with the family's
:class:`~bnnforge.compiler.pipeline.Pipeline`), takes :data:`MARGIN` of it, caps it at the
family's ceiling, and rounds it down to a whole MHz the board's PLL makes. The folding search
(:func:`bnnforge.boards.fit.fit_to_board`) then counts frames/s at that clock, so it picks a
folding and a clock together; the compile report records the prediction
(``compile.timing``).

The model is deliberately simple: a piecewise-linear Fmax over the share of the device's logic
cells the design uses (routing gets longer as a device fills), through the measured points.
Beyond the last point it stays at the last value times the cell ratio's decline.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .profiles import BoardProfile

__all__ = ["FMAX_MODELS", "MARGIN", "FmaxModel", "design_clock", "predict_fmax"]

#: The share of the predicted Fmax a compile clocks at, unless a family's model says otherwise
#: (nextpnr's result varies by a few percent with the seed and the weights; the build retries
#: two more seeds on a near miss).
MARGIN = 0.93


@dataclass(frozen=True)
class FmaxModel:
    """Predicted Fmax of a family's designs against the share of logic cells they use.

    Attributes
    ----------
    family : str
    points : tuple of (float, float)
        (logic-cell utilisation 0..1, Fmax in MHz), increasing utilisation: measured designs.
    ceiling_mhz : float
        The fastest clock a compile picks on this family (global clock network, PLL output and
        the UART's divisor stay comfortable below it).
    source : str
        Where the points come from.
    margin : float
        The share of the prediction a compile clocks at (:data:`MARGIN` by default).
    window_mhz : float or None
        The most a design with a sliding window (a convolution) is predicted to reach, at any
        size: its critical path is the handshake from the matrix unit's issue credit through
        the window to the window's input FIFO, not the datapath (``None``: no such limit
        measured).
    """

    family: str
    points: tuple
    ceiling_mhz: float
    source: str
    margin: float = MARGIN
    window_mhz: float | None = None

    def predict(self, utilisation: float) -> float:
        """Fmax (MHz) at ``utilisation``: linear between points, flat before the first; after
        the last, falling along the steeper of the last segment and the first-to-last line
        (never rising, never below a fifth of the first point)."""
        pts = sorted(self.points)
        u = max(0.0, float(utilisation))
        if u <= pts[0][0] or len(pts) == 1:
            return pts[0][1]
        for (u0, f0), (u1, f1) in zip(pts, pts[1:], strict=False):
            if u <= u1:
                return f0 + (f1 - f0) * (u - u0) / (u1 - u0)
        (ua, fa), (ub, fb), (ul, fl) = pts[0], pts[-2], pts[-1]
        slope = min(0.0, (fl - fb) / (ul - ub), (fl - fa) / (ul - ua))
        return max(fa / 5, fl + slope * (u - ul))


#: One model per family (``BoardProfile.family``). Points: placed-and-routed designs of the
#: test suite and the README (tfc, sfc, cnv, resnet on their boards), nextpnr's Fmax with the
#: family's pipeline; docs/design.md "Clock" lists them.
FMAX_MODELS = {
    "ice40up": FmaxModel("ice40up", ((0.55, 54.1), (0.70, 54.1), (0.80, 45.8)), 60.0,
                         "iCEBreaker tfc builds: at 128k frames/s 54.1 MHz, at 200k frames/s "
                         "(3,651 cells estimated, 69%) 59.3 MHz (the lower taken); 45.8 at 74% "
                         "from the pipeline before the credit-issue units, kept as the decline "
                         "(YoWASP nextpnr-ice40, pipeline ice40, seed 1)"),
    "ice40hx": FmaxModel("ice40hx", ((0.55, 54.1), (0.70, 54.1), (0.80, 45.8)), 60.0,
                         "as ice40up (the same logic tile; no HX8K build measured)"),
    "ecp5": FmaxModel("ecp5", ((0.016, 141.2), (0.125, 141.2), (0.38, 120.4)), 150.0,
                      "ULX3S-85F builds: tfc at 200k frames/s 140.4-141.2 MHz (1.7% of the "
                      "cells), sfc at 1M frames/s 138.9-159.8 MHz (8-12%; the lower taken), "
                      "sfc at 2M frames/s 120.4 MHz (31,911 cells estimated, 38%; 33,156 "
                      "placed, weights in logic); designs with a sliding window: cnv on "
                      "3x32x32 at 20k frames/s placed at 119.5 MHz (YoWASP nextpnr-ecp5, "
                      "pipeline ecp5)", window_mhz=119.5),
}


def predict_fmax(profile: BoardProfile, luts: int, windows: bool = False) -> float:
    """Predicted Fmax (MHz) of a design of ``luts`` estimated logic cells on ``profile``
    (``windows``: the design has a sliding window, :attr:`FmaxModel.window_mhz`)."""
    model = FMAX_MODELS.get(profile.family)
    if model is None:
        raise ValueError(f"no Fmax model for the {profile.family} family")
    fmax = model.predict(luts / profile.luts)
    if windows and model.window_mhz is not None:
        fmax = min(fmax, model.window_mhz)
    return fmax


def design_clock(profile: BoardProfile, luts: int,
                 windows: bool = False) -> tuple[BoardProfile, float]:
    """The board profile at the clock a compile picks for a design of ``luts`` logic cells, and
    the predicted Fmax it came from.

    The clock is the model's margin (:data:`MARGIN` by default: the models take the lower of
    their measured points) of the prediction, at most the family's ceiling, rounded down
    to a whole MHz the board's PLL makes exactly (or a little below it); a board without a PLL
    keeps its oscillator clock.
    """
    fmax = predict_fmax(profile, luts, windows)
    if profile.pll is None:
        return profile, fmax
    model = FMAX_MODELS[profile.family]
    want = math.floor(min(model.margin * fmax, model.ceiling_mhz))
    for mhz in range(want, 0, -1):
        try:
            at = profile.with_clock(float(mhz))
        except ValueError:
            continue
        if at.clock_mhz <= mhz:         # the PLL's nearest may be a little above: skip it
            return at, fmax
    return profile, fmax
