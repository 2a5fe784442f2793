"""Energy of a build folder two ways (``bnnforge energy``): op counts and RTL switching activity.

The op-count model (:func:`bnnforge.sim.estimate_energy`) prices the hardware plan's operations
with an assumed activity; the activity model (:func:`bnnforge.sim.energy.activity_energy`)
prices the toggles a Verilator run of the emitted Verilog counted over the same frames
(:func:`bnnforge.hw.activity.run_activity`, its own build in ``sim_build/verilator-toggle``).
Both share the fixed terms (clock tree, PLL, static). The ``energy`` section of ``report.json``
holds both, side by side per layer, with every term's basis (measured-derived or estimate).
"""

from __future__ import annotations

import os
import time

import numpy as np

from .buildfolder import read_report, require_build, update_report
from .compiler import load_graph

__all__ = ["DATA_CHOICES", "GATE_SHARE", "MAX_RATIO", "energy_build"]

#: where the frames of an activity run come from
DATA_CHOICES = ("dataset", "random", "zero")
#: the op model and the activity model should agree per layer within this factor, on every
#: layer holding at least GATE_SHARE of the layers' energy (a stage of a few toggles, the input
#: FIFO, differs in ratio by its control logic, which neither model prices with care)
MAX_RATIO = 2.0
GATE_SHARE = 0.05


def _frames(graph, frames: int, data: str, seed: int) -> tuple[np.ndarray, str]:
    from .simulate import simulation_frames

    shape = tuple(graph.input_shape)
    if data == "zero":
        return np.zeros((frames, *shape), dtype=np.uint8), "zero"
    if data == "random":
        rng = np.random.default_rng(seed)
        return rng.integers(0, 256, (frames, *shape), dtype=np.uint8), f"random:seed={seed}"
    return simulation_frames(graph, frames, seed)


def energy_build(folder: str | os.PathLike, frames: int = 20, *, family: str | None = None,
                 clock_mhz: float | None = None, data: str = "dataset", seed: int = 0,
                 calibration: str | os.PathLike | None = None, progress: bool = True) -> dict:
    """Estimate a build's energy per frame with both models; write report.json ``energy``.

    Parameters
    ----------
    folder
        A compiled build folder with its RTL (``rtl/top.json``).
    frames
        Frames streamed back to back through the RTL and the timing simulation.
    family
        Energy coefficients of this FPGA family (``ice40up``, ``ice40hx``, ``ecp5``); default the
        compile board's family, else ``ice40up``.
    calibration
        A JSON file of measured coefficients that replace the family's
        (:func:`bnnforge.flow.read_calibration`).
    clock_mhz
        The clock (default the report's ``compile.clock_mhz``, else 100). The PLL term applies
        when the compile board makes this clock with its PLL.
    data
        ``"dataset"`` (the model's held-out frames, else random), ``"random"`` or ``"zero"``.
    seed
        Seeds random frames.

    Returns
    -------
    dict
        The ``energy`` section (docs/design.md §5).
    """
    from .flow import energy_profile
    from .hw.activity import run_activity
    from .sim import reference, simulate_timing
    from .sim.energy import (
        DEFAULT_COEFFICIENTS,
        activity_energy,
        compare_models,
        estimate_energy,
    )
    from .simulate import board_uses_pll

    start = time.perf_counter()
    if isinstance(frames, bool) or not isinstance(frames, (int, np.integer)) or frames < 1:
        raise ValueError(f"frames must be a positive number of frames, not {frames!r}")
    if data not in DATA_CHOICES:
        raise ValueError(f"data must be one of {', '.join(DATA_CHOICES)}, not {data!r}")
    if family is not None and family not in DEFAULT_COEFFICIENTS:
        raise ValueError(f"no energy coefficients for family {family!r}; known: "
                         f"{', '.join(sorted(DEFAULT_COEFFICIENTS))}")
    folder = require_build(folder)
    if clock_mhz is None:
        clock_mhz = read_report(folder).get("compile", {}).get("clock_mhz") or 100.0
    if isinstance(clock_mhz, bool) or not isinstance(clock_mhz, (int, float)) \
            or not clock_mhz > 0:
        raise ValueError(f"clock_mhz must be positive, not {clock_mhz!r}")
    if not (folder / "rtl" / "top.json").is_file():
        raise ValueError(f"{folder} has no RTL (rtl/top.json); compile it without --no-rtl")
    fam, coefficients = energy_profile(folder, family, calibration)
    board = read_report(folder).get("compile", {}).get("board")
    pll = board_uses_pll(folder, float(clock_mhz))
    graph = load_graph(folder)
    x, source = _frames(graph, int(frames), data, seed)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=3, desc="energy", unit="step")
    try:
        timing = simulate_timing(graph, int(frames), record=False)
        op = estimate_energy(graph, timing, coefficients=coefficients, family=fam,
                             clock_mhz=float(clock_mhz), pll=pll)
        if bar is not None:
            bar.update(1)
        act_raw = run_activity(folder / "rtl", x)
        if bar is not None:
            bar.update(1)
        expected = np.asarray(reference(graph, x)).reshape(len(x), -1)
        mismatches = int((np.any(np.asarray(act_raw["scores"]) != expected, axis=1)
                          | (np.asarray(act_raw["classes"]) != expected.argmax(axis=1))).sum())
        act = activity_energy(act_raw, coefficients=coefficients, family=fam,
                              clock_mhz=float(clock_mhz), pll=pll)
        rows = compare_models(op, act)
        if bar is not None:
            bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    coef_table = _coefficient_table(coefficients, fam)
    layers = []
    for row in rows[:-2]:
        a = act["layers"].get(row["name"], {})
        layers.append({"name": row["name"], "op_nj": round(row["op_nj"], 4),
                       "activity_nj": round(row["activity_nj"], 4),
                       "ratio": round(row["ratio"], 3),
                       "net_toggles": round(a.get("net_toggles", 0.0), 1),
                       "ff_toggles": round(a.get("ff_toggles", 0.0), 1),
                       "ff_bits": int(a.get("ff_bits", 0))})
    dynamic = sum(max(r["op_nj"], r["activity_nj"]) for r in layers)
    for r in layers:
        r["gated"] = max(r["op_nj"], r["activity_nj"]) >= GATE_SHARE * dynamic
    ratios = [r["ratio"] for r in layers if r["gated"]]
    worst = max((max(r, 1 / r) if r > 0 else float("inf")) for r in ratios) if ratios else 1.0
    section = {
        "frames": int(frames), "source": source, "family": fam, "board": board,
        "clock_mhz": float(clock_mhz), "pll": bool(pll),
        "cycles_per_frame": round(float(timing.cycles_per_frame), 3),
        "rtl_cycles_per_frame": round(float(act["cycles_per_frame"]), 3),
        "value_mismatches": mismatches,
        "op_nj_per_frame": round(op["energy_nj_per_frame"], 4),
        "activity_nj_per_frame": round(act["energy_nj_per_frame"], 4),
        "op_breakdown": {k: round(v, 4) for k, v in op["breakdown"].items()},
        "activity_breakdown": {k: round(v, 4) for k, v in act["breakdown"].items()},
        "basis": {**op["basis"], **act["basis"]},
        "glitch_factor": act["glitch_factor"], "glitch_range": coef_table["glitch_factor"]["range"],
        "layers": layers,
        "fixed": {k: round(rows[-2][k], 4) for k in ("op_nj", "activity_nj")},
        "worst_ratio": round(worst, 3), "within_2x": bool(worst <= MAX_RATIO),
        "coefficients": coef_table,
    }
    section["wall_s"] = round(time.perf_counter() - start, 3)
    update_report(folder, "energy", section)
    return section


def _coefficient_table(coefficients, family: str) -> dict:
    from .boards.profiles import FAMILY_ENERGY

    entries = coefficients if coefficients is not None else FAMILY_ENERGY[family]
    return {k: {"value": v["value"], "unit": v["unit"], "basis": v.get("basis", "estimate"),
                "range": list(v.get("range", [])), "source": v["source"]}
            for k, v in dict(entries).items()}
