"""Energy per frame: an operation-count model and an activity model from the RTL (v2).

Terms (per family, defined once in :data:`bnnforge.boards.profiles.FAMILY_ENERGY`, each with
its source and marked measured-derived or estimate; docs/design.md §5):

* **static** — ``static_mw`` × frame time.
* **clock tree** — ``clock_tree_pj_per_cycle`` × cycles per frame: the global clock network,
  whatever the design (iCE40UP5K: 36 µA/MHz measured).
* **clock load** — ``clock_pj_per_cell_cycle`` × used logic cells (flip-flops) × cycles.
* **PLL** — ``pll_mw`` × frame time when the PLL makes the clock.
* **logic** — logic-cell output toggles × ``toggle_pj`` (× ``glitch_factor`` for combinational
  nets: zero-delay toggles miss glitches; flip-flop outputs do not glitch).
* **block RAM** — bits read × ``bram_pj_per_bit_read``.

The **operation-count model** (:func:`estimate_energy`, used by ``bnnforge sim``) takes the
operations of every block of the hardware plan (:data:`bnnforge.compiler.plan.KINDS`) times the
tokens the timing simulation moved, and turns each operation into zero-delay toggles with
:data:`OP_TOGGLES` (an assumed activity: random data); ROM bits read are block-RAM bits where
the plan put the ROM in block RAM, logic toggles where it put it in logic; the
clock load counts the plan's cost-table logic cells (:func:`bnnforge.compiler.costs.block_luts`).

The **activity model** (:func:`activity_energy`, used by ``bnnforge energy``) takes the toggles
a Verilator run of the emitted Verilog counted per block (:mod:`bnnforge.hw.activity`):
flip-flop and net toggles, flip-flop bits for the clock load, and one read of every block-RAM
memory per cycle (the RTL enables its read port in every enabled cycle): a memory the Verilog
marks ``rom_style = "block"``, or an unmarked one that
:func:`~bnnforge.compiler.memory.rom_style` would put there. ROMs in logic show up as toggles.

Both are estimates of the FPGA core rail only (no I/O, no board). Their ratio per layer says
how far the op model's assumed activity is from the data's.
"""

from __future__ import annotations

from ..boards.profiles import ENERGY_KEYS, FAMILY_ENERGY
from ..compiler.costs import block_luts
from ..compiler.ir import DataflowGraph
from ..compiler.memory import rom_style
from ..compiler.plan import build_plan
from .timing import TimingResult, simulate_timing

__all__ = ["COUNT_NAMES", "DEFAULT_COEFFICIENTS", "OP_TOGGLES", "TERM_BASIS", "activity_energy",
           "compare_models", "count_operations", "estimate_energy"]

#: Zero-delay logic-cell output toggles per counted operation (op model; random data):
#: an XNOR output or an adder sum bit toggles with probability 1/2; an accumulator add moves
#: about 8 of its bits, a threshold compare about 2 (its borrow chain); a score multiply-add is
#: priced as the measured 8x8 multiply (~100 cells at 1/2); a register bit written toggles with
#: probability 1/2 (a flip-flop: no glitch factor). ROM bits read from block RAM are priced
#: per bit read (no toggles); from a ROM in logic, as a LUT output toggling with probability 1/2.
OP_TOGGLES = {"xnor": 0.5, "popcount_bits": 0.5, "acc_adds": 8.0, "compares": 2.0,
              "score_ops": 50.0, "logic_rom_bits": 0.5, "register_bits": 0.5}

#: count name -> how the op model prices it
COUNT_NAMES = {"xnor": "toggle_pj", "popcount_bits": "toggle_pj", "acc_adds": "toggle_pj",
               "compares": "toggle_pj", "score_ops": "toggle_pj",
               "weight_rom_bits": "bram_pj_per_bit_read",
               "threshold_rom_bits": "bram_pj_per_bit_read", "logic_rom_bits": "toggle_pj",
               "register_bits": "toggle_pj"}

def _flat(entries) -> dict:
    out = {k: float(v["value"]) for k, v in entries.items()}
    out["source"] = "; ".join(f"{k}: {v['source']}" for k, v in entries.items())
    out["basis"] = {k: v["basis"] for k, v in entries.items()}
    return out


#: Coefficients per FPGA family (flat: ``{key: value, "source": str, "basis": {key: basis}}``),
#: the same numbers as the board profiles (:data:`bnnforge.boards.profiles.FAMILY_ENERGY`).
DEFAULT_COEFFICIENTS = {family: _flat(entries) for family, entries in FAMILY_ENERGY.items()}

#: which coefficient decides each breakdown term (for its basis)
TERM_BASIS = {"clock_tree": "clock_tree_pj_per_cycle", "clock_cells": "clock_pj_per_cell_cycle",
              "pll": "pll_mw", "static": "static_mw", "logic": "toggle_pj",
              "bram": "bram_pj_per_bit_read",
              **{k: v for k, v in COUNT_NAMES.items()}}


def count_operations(graph: DataflowGraph, frames: int) -> dict:
    """Return {count name: total over ``frames`` frames} and per-stage totals.

    Returns ``{"total": {name: int}, "stages": {stage: {name: int}}}``.
    """
    total = dict.fromkeys(COUNT_NAMES, 0)
    stages: dict[str, dict] = {}
    for spec, per in build_plan(graph).ops():
        st = stages.setdefault(spec["node"], dict.fromkeys(COUNT_NAMES, 0))
        for name, v in per.items():
            st[name] += v * frames
            total[name] += v * frames
    return {"total": total, "stages": stages}


def _check_coefficients(coefficients, family: str) -> dict:
    """Return flat coefficients from ours, a board profile's ``energy`` mapping, or ``family``."""
    if coefficients is None:
        if family not in DEFAULT_COEFFICIENTS:
            raise ValueError(f"no energy coefficients for family {family!r}; known: "
                             f"{', '.join(sorted(DEFAULT_COEFFICIENTS))} (or pass "
                             "coefficients=)")
        return DEFAULT_COEFFICIENTS[family]
    coef, sources, basis = {}, [], {}
    for key, value in dict(coefficients).items():
        if key in ("source", "basis"):
            continue
        if isinstance(value, dict) or hasattr(value, "keys"):
            if value.get("source"):
                sources.append(f"{key}: {value['source']}")
            basis[key] = value.get("basis", "estimate")
            value = value["value"]
        coef[key] = float(value)
    missing = [k for k in ENERGY_KEYS if k not in coef]
    if missing:
        raise ValueError(f"energy coefficients lack {', '.join(missing)}")
    coef["source"] = "; ".join(sources) or str(dict(coefficients).get("source", ""))
    coef["basis"] = {k: basis.get(k, dict(coefficients).get("basis", {}).get(k, "estimate"))
                     for k in ENERGY_KEYS}
    return coef


def _fixed(coef: dict, cpf: float, clock_mhz: float, pll: bool) -> dict:
    frame_s = cpf / (clock_mhz * 1e6)
    return {"clock_tree": coef["clock_tree_pj_per_cycle"] * cpf / 1000.0,
            "pll": coef["pll_mw"] * 1e-3 * frame_s * 1e9 if pll else 0.0,
            "static": coef["static_mw"] * 1e-3 * frame_s * 1e9}


def _check_clock(clock_mhz) -> None:
    if not clock_mhz or clock_mhz <= 0:
        raise ValueError(f"clock_mhz must be positive, not {clock_mhz!r}")


def estimate_energy(graph: DataflowGraph, timing: TimingResult | None = None, *,
                    frames: int | None = None, coefficients: dict | None = None,
                    family: str = "ice40up", clock_mhz: float = 100.0,
                    pll: bool = False) -> dict:
    """Return the op-count model's energy per frame of a simulated run.

    Parameters
    ----------
    graph
        The folded graph that was simulated.
    timing
        The run (:func:`~bnnforge.sim.timing.simulate_timing`); simulated back-to-back for
        ``frames`` frames (default 100) when not given.
    coefficients
        A board profile's ``energy`` mapping or flat coefficients (:data:`ENERGY_KEYS`);
        default ``DEFAULT_COEFFICIENTS`` of ``family``.
    clock_mhz
        The clock, for static and PLL energy = power × cycles per frame / clock.
    pll
        Whether the PLL makes the clock (adds its fixed power).

    Returns
    -------
    dict
        ``energy_nj_per_frame``, ``breakdown`` ({term: nJ per frame}: every count, then
        ``clock_tree``, ``clock_cells``, ``pll``, ``static``; summing to the total),
        ``static_nj``, ``dynamic_nj`` (the rest), ``layers`` ({stage: {"logic", "bram",
        "clock_cells", "total"} nJ per frame}), ``basis`` ({term: "measured" or "estimate"}),
        ``counts`` (totals over the run), ``frames``, ``cycles_per_frame``, ``clock_mhz``,
        ``source``.
    """
    _check_clock(clock_mhz)
    coef = _check_coefficients(coefficients, family)
    if timing is None:
        timing = simulate_timing(graph, frames or 100, record=False)
    n = timing.frames
    cpf = float(timing.cycles_per_frame)
    g = coef["glitch_factor"]
    breakdown = dict.fromkeys(COUNT_NAMES, 0.0)
    breakdown["clock_cells"] = 0.0
    layers: dict[str, dict] = {}
    counts = dict.fromkeys(COUNT_NAMES, 0)
    for spec, per in build_plan(graph).ops():
        lay = layers.setdefault(spec["node"], {"logic": 0.0, "bram": 0.0, "clock_cells": 0.0})
        for name, v in per.items():
            counts[name] += v * n
            if COUNT_NAMES[name] == "bram_pj_per_bit_read":
                nj = v * coef["bram_pj_per_bit_read"] / 1000.0
                lay["bram"] += nj
            else:
                glitch = 1.0 if name == "register_bits" else g
                nj = v * OP_TOGGLES[name] * glitch * coef["toggle_pj"] / 1000.0
                lay["logic"] += nj
            breakdown[name] += nj
        clk = block_luts(spec) * coef["clock_pj_per_cell_cycle"] * cpf / 1000.0
        lay["clock_cells"] += clk
        breakdown["clock_cells"] += clk
    for lay in layers.values():
        lay["total"] = lay["logic"] + lay["bram"] + lay["clock_cells"]
    breakdown.update(_fixed(coef, cpf, float(clock_mhz), pll))
    total = sum(breakdown.values())
    return {"energy_nj_per_frame": total, "breakdown": breakdown,
            "static_nj": breakdown["static"], "dynamic_nj": total - breakdown["static"],
            "layers": layers, "basis": _basis(coef, breakdown), "counts": counts, "frames": n,
            "cycles_per_frame": cpf, "clock_mhz": float(clock_mhz),
            "source": coef.get("source", "")}


def _basis(coef: dict, terms) -> dict:
    """{term: "measured" | "estimate"}; a logic term also rests on the glitch estimate."""
    out = {}
    for term in terms:
        key = TERM_BASIS.get(term, "toggle_pj")
        b = coef["basis"].get(key, "estimate")
        if key == "toggle_pj" and term != "register_bits" and term != "ff":
            b = "measured x estimated glitch factor" if b == "measured" else b
        out[term] = b
    return out


def activity_energy(activity: dict, *, coefficients: dict | None = None,
                    family: str = "ice40up", clock_mhz: float = 100.0,
                    pll: bool = False) -> dict:
    """Return the activity model's energy per frame from a toggle-counting RTL run.

    Parameters
    ----------
    activity
        :func:`bnnforge.hw.activity.run_activity`'s result.
    coefficients, family, clock_mhz, pll
        As for :func:`estimate_energy`.

    Returns
    -------
    dict
        ``energy_nj_per_frame``, ``breakdown`` ({"logic", "ff", "bram", "clock_cells",
        "clock_tree", "pll", "static"} nJ per frame), ``layers`` ({stage: {"logic", "ff",
        "bram", "clock_cells", "total", "net_toggles", "ff_toggles", "ff_bits"}}, toggles per
        frame), ``basis``, ``glitch_factor`` with its ``glitch_range``, ``frames``,
        ``cycles_per_frame``, ``clock_mhz``.
    """
    _check_clock(clock_mhz)
    coef = _check_coefficients(coefficients, family)
    n = int(activity["frames"])
    cpf = float(activity["cycles_per_frame"])
    g = coef["glitch_factor"]
    layers: dict[str, dict] = {}
    for block in activity["blocks"].values():
        lay = layers.setdefault(block["node"] or "?", dict.fromkeys(
            ("logic", "ff", "bram", "clock_cells", "net_toggles", "ff_toggles", "ff_bits"), 0.0))
        lay["net_toggles"] += block["net_toggles"] / n
        lay["ff_toggles"] += block["ff_toggles"] / n
        lay["ff_bits"] += block["ff_bits"]
        lay["logic"] += block["net_toggles"] / n * g * coef["toggle_pj"] / 1000.0
        lay["ff"] += block["ff_toggles"] / n * coef["toggle_pj"] / 1000.0
        lay["clock_cells"] += block["ff_bits"] * coef["clock_pj_per_cell_cycle"] * cpf / 1000.0
        for _name, width, depth, style in block["memories"]:
            if (style or rom_style(width, depth)) == "bram":
                lay["bram"] += width * cpf * coef["bram_pj_per_bit_read"] / 1000.0
    breakdown = {k: sum(lay[k] for lay in layers.values())
                 for k in ("logic", "ff", "bram", "clock_cells")}
    for lay in layers.values():
        lay["total"] = lay["logic"] + lay["ff"] + lay["bram"] + lay["clock_cells"]
    breakdown.update(_fixed(coef, cpf, float(clock_mhz), pll))
    entry = FAMILY_ENERGY.get(family, {}).get("glitch_factor", {})
    return {"energy_nj_per_frame": sum(breakdown.values()), "breakdown": breakdown,
            "layers": layers, "basis": _basis(coef, breakdown), "glitch_factor": g,
            "glitch_range": list(entry.get("range", [1.0, 2.0])), "frames": n,
            "cycles_per_frame": cpf, "clock_mhz": float(clock_mhz)}


def compare_models(op: dict, act: dict) -> list[dict]:
    """Return per-stage rows ``{name, op_nj, activity_nj, ratio}`` (ratio = op / activity;
    dynamic per-layer energy: logic, flip-flops, block RAM and clock load), then a ``fixed``
    row (clock tree, PLL, static) and a ``total`` row."""
    rows = []
    for name in sorted(set(op["layers"]) | set(act["layers"]),
                       key=lambda s: list(op["layers"]).index(s) if s in op["layers"] else 1e9):
        o = op["layers"].get(name, {}).get("total", 0.0)
        a = act["layers"].get(name, {}).get("total", 0.0)
        rows.append({"name": name, "op_nj": o, "activity_nj": a,
                     "ratio": o / a if a else float("inf")})
    fo = sum(op["breakdown"][k] for k in ("clock_tree", "pll", "static"))
    fa = sum(act["breakdown"][k] for k in ("clock_tree", "pll", "static"))
    rows.append({"name": "fixed", "op_nj": fo, "activity_nj": fa,
                 "ratio": fo / fa if fa else float("inf")})
    to, ta = op["energy_nj_per_frame"], act["energy_nj_per_frame"]
    rows.append({"name": "total", "op_nj": to, "activity_nj": ta, "ratio": to / ta})
    return rows
