"""Energy per frame from the operations and memory accesses of a simulated run.

Method
------
Every block of the accelerator (the hardware plan, :mod:`bnnforge.compiler.plan`) does a fixed
amount of work per token — its kind's ``ops`` in :data:`bnnforge.compiler.plan.KINDS` — so the
counts of a run are per-token counts times the tokens the timing simulation moved through each
block:

* ``xnor`` — XNOR gates evaluated: K·C per vector of a binary-input matrix stage.
* ``popcount_bits`` — full-adder bits of the popcount / signed-sum adder trees: per lane and
  step, the tree over SIMD terms (level ``l`` has ``ceil(SIMD / 2^l)`` adders of ``l + w``
  bits, ``w`` = 1 for bits, 10 for signed bytes).
* ``acc_adds`` — accumulator additions: one per lane and step (C·K/SIMD per vector).
* ``compares`` — threshold comparisons (C per vector), and the score unit's argmax compares.
* ``score_ops`` — the score unit's integer multiply-adds (``mul·s + add``, C per vector).
* ``weight_rom_bits`` / ``threshold_rom_bits`` — bits read from the weight ROM (K·C per vector)
  and the threshold ROM (C · threshold width per vector, when thresholds live in a ROM).
* ``register_bits`` — bits written into activation registers and FIFOs: FIFO and window-buffer
  writes, window, serializer and deserializer registers, the MVTU's input buffer (which
  collects a feature map's transfers in place), its current-vector register (once per vector;
  steps read it through a word select) and output registers.

Energy = Σ count × coefficient (picojoules) + static power × run time at ``clock_mhz``; reported
per frame, with a breakdown whose entries (static included) sum to the total.

Coefficients
------------
Per FPGA family, a dict of ``xnor_pj``, ``adder_bit_pj``, ``acc_add_pj``, ``compare_pj``,
``score_op_pj``, ``rom_bit_pj``, ``reg_bit_pj``, ``static_mw`` and a ``source`` string. Board
profiles hold their own; :data:`DEFAULT_COEFFICIENTS` are documented fallbacks derived as
follows (the sources are cited inline; docs/design.md §5):

* ASIC base (Horowitz, ISSCC 2014, 45 nm, 0.9 V): int32 add 0.1 pJ, so an adder bit is
  0.1/32 ≈ 0.0031 pJ and an XNOR about half of one (0.0016 pJ); a 16-bit accumulator add or
  compare 0.05 pJ; a score multiply-add ≈ int32 mult + add = 3.2 pJ; a ROM bit ≈ 10 pJ per
  64-bit read of an 8 KB SRAM = 0.156 pJ; a flip-flop write 0.01 pJ per bit (our assumption:
  Horowitz lists no register figure).
* FPGA overhead ×14: the dynamic-power gap between FPGA fabric and standard cells measured by
  Kuon & Rose ("Measuring the gap between FPGAs and ASICs", IEEE TCAD 26(2), 2007: 7–14×; we
  take the logic-only upper end and apply it to memories too).
* Supply: energy scales with V²; iCE40 UltraPlus core 1.2 V → ×(1.2/0.9)² = 1.78; ECP5 core
  1.1 V → ×(1.1/0.9)² = 1.49. Both are 40 nm; the 45→40 nm difference is ignored.
* Static power (assumption from the vendor data sheets' standby core currents): iCE40UP5K
  ≈ 100 µW (~75–100 µA at 1.2 V, DS1056); ECP5-85F ≈ 40 mW (tens of mA standby at 1.1 V plus
  auxiliary rails, FPGA-DS-02012).

Limits
------
A first-order activity model: no switching activity (every counted operation costs its full
coefficient whatever the data), no clock tree or routing energy beyond the overhead factor, no
I/O, and the weight ROM's idle reads are not counted (the RTL enables its read port in every
enabled cycle, not only when a step is issued). Calibrate against a vendor power calculator or a
measured board before trusting absolute numbers; ratios between foldings are more reliable.
"""

from __future__ import annotations

from ..compiler.ir import DataflowGraph
from ..compiler.plan import build_plan
from .timing import TimingResult, simulate_timing

__all__ = ["DEFAULT_COEFFICIENTS", "COUNT_NAMES", "PROFILE_KEYS", "estimate_energy",
           "count_operations"]

_HOROWITZ = {"xnor_pj": 0.1 / 64, "adder_bit_pj": 0.1 / 32, "acc_add_pj": 0.05,
             "compare_pj": 0.05, "score_op_pj": 3.2, "rom_bit_pj": 10.0 / 64,
             "reg_bit_pj": 0.01}
_FPGA_FACTOR = 14.0


def _family(vdd: float, static_mw: float, source: str) -> dict:
    scale = _FPGA_FACTOR * (vdd / 0.9) ** 2
    out = {k: v * scale for k, v in _HOROWITZ.items()}
    out["static_mw"] = static_mw
    out["source"] = source
    return out


#: Fallback coefficients per FPGA family (pJ per operation or bit; static power in mW).
DEFAULT_COEFFICIENTS = {
    "ice40up": _family(1.2, 0.1, (
        "Horowitz ISSCC 2014 45 nm/0.9 V ASIC figures x14 FPGA dynamic-power gap (Kuon & Rose, "
        "IEEE TCAD 2007) x(1.2/0.9)^2 for the 1.2 V iCE40 UltraPlus core; flip-flop write "
        "0.01 pJ/bit assumed; static 100 uW assumed from the iCE40 UltraPlus data sheet "
        "(DS1056) standby core current")),
    "ecp5": _family(1.1, 40.0, (
        "Horowitz ISSCC 2014 45 nm/0.9 V ASIC figures x14 FPGA dynamic-power gap (Kuon & Rose, "
        "IEEE TCAD 2007) x(1.1/0.9)^2 for the 1.1 V ECP5 core; flip-flop write 0.01 pJ/bit "
        "assumed; static 40 mW assumed for an ECP5-85F from the ECP5 data sheet "
        "(FPGA-DS-02012) standby currents")),
}

#: count name -> coefficient that prices it
COUNT_NAMES = {"xnor": "xnor_pj", "popcount_bits": "adder_bit_pj", "acc_adds": "acc_add_pj",
               "compares": "compare_pj", "score_ops": "score_op_pj",
               "weight_rom_bits": "rom_bit_pj", "threshold_rom_bits": "rom_bit_pj",
               "register_bits": "reg_bit_pj"}


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


#: board-profile coefficient names (``bnnforge.boards`` ENERGY_KEYS) -> ours
PROFILE_KEYS = {"xnor_pj_per_bit": "xnor_pj", "popcount_pj_per_adder_bit": "adder_bit_pj",
                "register_pj_per_bit_write": "reg_bit_pj", "rom_pj_per_bit_read": "rom_bit_pj",
                "static_mw": "static_mw"}
#: coefficients a profile may leave out, in adder bits: a 16-bit add or compare; an int32
#: multiply-add (Horowitz: 3.1 + 0.1 pJ = 32 int32 adds of 32 bits)
_DERIVED = {"acc_add_pj": 16, "compare_pj": 16, "score_op_pj": 1024}


def _check_coefficients(coefficients, family: str) -> dict:
    """Return our coefficient dict from ours, a board profile's ``energy`` mapping, or family.

    A board profile's entries are ``{"value", "unit", "source"}`` under the names of
    :data:`PROFILE_KEYS`; the accumulator, compare and score coefficients it lacks are derived
    from its adder-bit energy (:data:`_DERIVED`).
    """
    if coefficients is None:
        if family not in DEFAULT_COEFFICIENTS:
            raise ValueError(f"no energy coefficients for family {family!r}; known: "
                             f"{', '.join(sorted(DEFAULT_COEFFICIENTS))} (or pass "
                             "coefficients=)")
        return DEFAULT_COEFFICIENTS[family]
    coef, sources = {}, []
    for key, value in dict(coefficients).items():
        if isinstance(value, dict) or hasattr(value, "keys"):
            if value.get("source"):
                sources.append(f"{key}: {value['source']}")
            value = value["value"]
        if key == "source":
            sources.insert(0, str(value))
            continue
        coef[PROFILE_KEYS.get(key, key)] = value
    if "adder_bit_pj" in coef:
        for key, bits in _DERIVED.items():
            coef.setdefault(key, bits * float(coef["adder_bit_pj"]))
    missing = [k for k in (*set(COUNT_NAMES.values()), "static_mw") if k not in coef]
    if missing:
        raise ValueError(f"energy coefficients lack {', '.join(sorted(missing))}")
    coef["source"] = "; ".join(sources)
    return coef


def estimate_energy(graph: DataflowGraph, timing: TimingResult | None = None, *,
                    frames: int | None = None, coefficients: dict | None = None,
                    family: str = "ice40up", clock_mhz: float = 100.0) -> dict:
    """Return the energy per frame of a simulated run.

    Parameters
    ----------
    graph
        The folded graph that was simulated.
    timing
        The run (:func:`~bnnforge.sim.timing.simulate_timing`); simulated back-to-back for
        ``frames`` frames (default 100) when not given.
    coefficients
        Per-operation energies (see the module docstring), or a board profile's ``energy``
        mapping; default ``DEFAULT_COEFFICIENTS`` of ``family``.
    clock_mhz
        The clock, for static energy = static power × cycles per frame / clock.

    Returns
    -------
    dict
        ``energy_nj_per_frame``, ``breakdown`` ({name: nJ per frame}, static included, summing
        to the total), ``static_nj``, ``dynamic_nj`` (per frame), ``counts`` (totals over the
        run), ``frames``, ``cycles_per_frame``, ``clock_mhz``, ``source``.
    """
    if not clock_mhz or clock_mhz <= 0:
        raise ValueError(f"clock_mhz must be positive, not {clock_mhz!r}")
    coef = _check_coefficients(coefficients, family)
    if timing is None:
        timing = simulate_timing(graph, frames or 100, record=False)
    n = timing.frames
    counts = count_operations(graph, n)["total"]
    breakdown = {}
    for name, value in counts.items():
        breakdown[name] = value * coef[COUNT_NAMES[name]] / n / 1000.0     # pJ -> nJ
    dynamic = sum(breakdown.values())
    cpf = float(timing.cycles_per_frame)
    static = coef["static_mw"] * 1e-3 * cpf / (clock_mhz * 1e6) * 1e9     # W * s -> nJ
    breakdown["static"] = static
    return {"energy_nj_per_frame": dynamic + static, "breakdown": breakdown,
            "static_nj": static, "dynamic_nj": dynamic, "counts": counts, "frames": n,
            "cycles_per_frame": cpf, "clock_mhz": float(clock_mhz),
            "source": coef.get("source", "")}
