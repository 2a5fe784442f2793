"""popcount_lane: the carry-chain XNOR-popcount lane, its latency contract and its cost.

The behavioural build (``primitives=False``) runs in Amaranth's simulator against Python
popcounts: the value, the latency (exactly :func:`lane_stages` cycles, the same number the lane
reports as ``registers``) and the clock enable. The primitive builds (``CCU2C`` on ECP5,
``SB_LUT4`` + ``SB_CARRY`` on iCE40) run as emitted Verilog under Icarus with Yosys's own cell
models, and go through ``synth_ecp5`` / ``synth_ice40`` to check :func:`lane_cost`.
"""

import random
import re
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest
from amaranth.back import rtlil, verilog
from amaranth.hdl import Module, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out
from amaranth.sim import Simulator

from bnnforge.compiler.pipeline import lane_levels, lane_stages
from bnnforge.hw.popcount import lane_cost, popcount_lane
from conftest import ecp5_cell_models, run_yosys, tool, yosys_share

FAMILIES = ("ecp5", "ice40")
#: what elaborate() asks of a platform of each family (amaranth-boards spells iCE40 so)
PLATFORMS = {"ecp5": SimpleNamespace(family="ecp5"), "ice40": SimpleNamespace(family="iCE40")}


class Lane(wiring.Component):
    """One lane and nothing else: ``sum`` = popcount(~(x ^ w)) of the inputs ``registers``
    enabled cycles ago (known once elaborated)."""

    def __init__(self, n, levels_per_stage, **kwargs):
        self.n, self.levels_per_stage, self.kwargs = n, levels_per_stage, kwargs
        self.registers = None
        super().__init__({"x": In(n), "w": In(n), "en": In(1), "sum": Out(n.bit_length())})

    def elaborate(self, platform):
        m = Module()
        total, self.registers = popcount_lane(m, self.x, self.w, self.en, "lane",
                                              self.levels_per_stage, **self.kwargs)
        m.d.comb += self.sum.eq(total)
        return m


def _count(n, x, w):
    return n - bin((x ^ w) & ((1 << n) - 1)).count("1")


def _vectors(n, count, seed):
    """(x, w) pairs: the extremes (counts n, 0, 0, n, n - 1, 1), then random pairs of random
    bit densities, so that the counts spread over 0..n."""
    rng = random.Random(seed)
    full, one = (1 << n) - 1, 1 << rng.randrange(n)
    out = [(0, 0), (full, 0), (0, full), (full, full), (one, 0), (full ^ one, 0)]

    def bits(p):
        return sum(1 << i for i in range(n) if rng.random() < p)
    while len(out) < count:
        out.append((bits(rng.random()), bits(rng.random())))
    return out


def _stimulus(n, count, seed, p_enable=1.0):
    """(en, x, w) per cycle; with p_enable < 1 the disabled cycles carry inputs of their own,
    in runs of up to four."""
    rng = random.Random(seed + 1)
    stim = []
    for x, w in _vectors(n, count, seed):
        while rng.random() >= p_enable:
            for _ in range(rng.randint(1, 4)):
                stim.append((0, rng.getrandbits(n), rng.getrandbits(n)))
        stim.append((1, x, w))
    return stim + [(1, 0, 0)] * 12          # flush the pipeline


def _expected(n, stim, registers):
    """The lane's ``sum`` in each cycle (None before ``registers`` enabled cycles have gone
    by): the count of the input presented ``registers`` enabled cycles earlier, or of the
    current input when the lane has no register."""
    taken, out = [], []
    for en, x, w in stim:
        if registers == 0:
            out.append(_count(n, x, w))
        else:
            k = len(taken) - registers
            out.append(taken[k] if k >= 0 else None)
        if en:
            taken.append(_count(n, x, w))
    return out


def _check(n, stim, registers, got):
    want = _expected(n, stim, registers)
    assert len(got) == len(want)
    checked = 0
    for i, (g, e) in enumerate(zip(got, want, strict=True)):
        if e is not None:
            assert g == e, f"cycle {i}: sum {g!r}, expected {e} (registers = {registers})"
            checked += 1
    assert checked >= sum(en for en, _, _ in stim) - registers


def _simulate(dut, stim):
    """Run ``stim`` through ``dut`` in Amaranth's simulator; ``sum`` in each cycle, read after
    the inputs are set and before the clock edge."""
    sim = Simulator(dut)
    registered = dut.registers > 0          # a lane without register has no clock domain
    got = []

    async def bench(ctx):
        for en, x, w in stim:
            ctx.set(dut.en, en)
            ctx.set(dut.x, x)
            ctx.set(dut.w, w)
            got.append(ctx.get(dut.sum))
            if registered:
                await ctx.tick()
            else:
                await ctx.delay(1e-6)

    if registered:
        sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    return got


# -- the behavioural build in Amaranth's simulator ---------------------------------------------

SMALL = (1, 2, 3, 4, 5, 7, 8, 15, 16, 17)
LARGE = (31, 49, 64, 98, 127, 128, 196)


def _cases():
    """Every family and L for the small widths (no tree at all, the plain-logic n < 4, the
    powers of two and their neighbours); each larger width once for each L, the family
    alternating, so that every width meets both families and every (family, L) several widths;
    and one 784-bit lane (the MNIST input layer's width; about 4 s)."""
    cases = [(f, n, L) for n in SMALL for f in FAMILIES for L in (1, 2, 3)]
    cases += [(FAMILIES[(i + L) % 2], n, L) for i, n in enumerate(LARGE) for L in (1, 2, 3)]
    return cases + [("ecp5", 784, 2)]


@pytest.mark.parametrize("family, n, levels_per_stage", _cases())
def test_lane_counts_with_the_contracted_latency(family, n, levels_per_stage):
    dut = Lane(n, levels_per_stage, family=family, primitives=False)
    stim = _stimulus(n, 40 if n < 100 else 24, seed=n * 3 + levels_per_stage)
    got = _simulate(dut, stim)
    assert dut.registers == lane_stages(n, levels_per_stage)
    _check(n, stim, dut.registers, got)


@pytest.mark.parametrize("family, n, levels_per_stage, options", [
    ("ecp5", 49, 2, {"max_chain": 1}), ("ecp5", 98, 1, {"max_chain": 16}),
    ("ice40", 49, 2, {"max_chain": 2}), ("ice40", 98, 3, {"max_chain": 16}),
    ("ecp5", 98, 2, {"ff_weight": 4.0}), ("ice40", 31, 1, {"ff_weight": 0.0}),
])
def test_chain_cuts_and_shape_weights_keep_value_and_latency(family, n, levels_per_stage,
                                                             options):
    dut = Lane(n, levels_per_stage, family=family, primitives=False, **options)
    stim = _stimulus(n, 40, seed=n)
    got = _simulate(dut, stim)
    assert dut.registers == lane_stages(n, levels_per_stage)
    _check(n, stim, dut.registers, got)


@pytest.mark.parametrize("family, n, levels_per_stage, levels", [
    ("ecp5", 98, 2, 7), ("ice40", 98, 2, 7), ("ecp5", 5, 1, 3), ("ice40", 17, 3, 5),
    ("ecp5", 3, 1, 2), ("ecp5", 64, 2, 6),
])
def test_extra_levels_give_the_deeper_latency(family, n, levels_per_stage, levels):
    """``levels=(n - 1).bit_length()``: the binary adder tree's latency, ceil(ceil(log2 n) / L)
    (and a level of its own beyond it, n = 5 and 17)."""
    dut = Lane(n, levels_per_stage, family=family, primitives=False, levels=levels)
    stim = _stimulus(n, 30, seed=n + levels)
    got = _simulate(dut, stim)
    assert dut.registers == lane_stages(n, levels_per_stage, levels) \
        == -(-levels // levels_per_stage)
    _check(n, stim, dut.registers, got)


@pytest.mark.parametrize("family, n, levels_per_stage", [
    ("ecp5", 1, 1), ("ice40", 2, 1), ("ecp5", 3, 2), ("ecp5", 5, 1), ("ice40", 17, 1),
    ("ecp5", 49, 2), ("ice40", 49, 2), ("ecp5", 98, 3), ("ice40", 98, 1),
])
def test_registers_hold_while_enable_is_low(family, n, levels_per_stage):
    """With ``en`` low in about half the cycles (other inputs on x, w then), the count of an
    input presented in an enabled cycle appears ``registers`` enabled cycles later."""
    dut = Lane(n, levels_per_stage, family=family, primitives=False)
    stim = _stimulus(n, 40, seed=n + 7, p_enable=0.5)
    assert sum(1 - en for en, _, _ in stim) > 20
    got = _simulate(dut, stim)
    assert dut.registers == lane_stages(n, levels_per_stage)
    _check(n, stim, dut.registers, got)


@pytest.mark.parametrize("family, n, levels_per_stage", [
    ("ecp5", 49, 2), ("ice40", 49, 2), ("ecp5", 5, 1), ("ice40", 17, 3),
])
def test_platform_family_picks_the_primitives(family, n, levels_per_stage):
    """Vendor cells with a platform of the lane's family, as many as :func:`lane_cost` counts;
    behavioural logic without a platform or with another family's."""
    cell = {"ecp5": "CCU2C", "ice40": "SB_LUT4"}

    def cells(platform, **kwargs):
        text = rtlil.convert(Lane(n, levels_per_stage, family=family, **kwargs),
                             name="lane", platform=platform)
        return {k: len(re.findall(rf"^\s*cell \\{k} ", text, re.M)) for k in cell.values()}

    other = "ice40" if family == "ecp5" else "ecp5"
    expected = lane_cost(n, levels_per_stage, family)["cells"]
    assert cells(PLATFORMS[family]) == {cell[family]: expected, cell[other]: 0}
    assert cells(None, primitives=True) == {cell[family]: expected, cell[other]: 0}
    assert cells(None) == {cell[family]: 0, cell[other]: 0}
    assert cells(PLATFORMS[other]) == {cell[family]: 0, cell[other]: 0}
    assert cells(PLATFORMS[family], primitives=False) == {cell[family]: 0, cell[other]: 0}


# -- argument checks -----------------------------------------------------------------------------

@pytest.mark.parametrize("x_bits, w_bits, args, match", [
    (5, 4, {}, r"x and w differ in width \(5 / 4\)"),
    (1, 2, {}, r"x and w differ in width \(1 / 2\)"),
    (8, 8, {"levels_per_stage": 0}, r"levels_per_stage must be at least 1"),
    (8, 8, {"levels_per_stage": -2}, r"levels_per_stage must be at least 1"),
    (8, 8, {"family": "xilinx"}, r"family must be 'ecp5' or 'ice40', not 'xilinx'"),
    (8, 8, {"family": "iCE40"}, r"family must be 'ecp5' or 'ice40', not 'iCE40'"),
    (98, 98, {"levels": 5}, r"98 terms need at least 6 levels, not 5"),
    (4, 4, {"levels": 1}, r"4 terms need at least 2 levels, not 1"),
    (8, 8, {"levels_per_stage": 1.5}, r"levels_per_stage must be at least 1, not 1\.5"),
    (8, 8, {"max_chain": 0}, r"max_chain must be a positive integer or None, not 0"),
    (1, 1, {"family": "xilinx"}, r"family must be 'ecp5' or 'ice40', not 'xilinx'"),
])
def test_arguments_are_checked(x_bits, w_bits, args, match):
    args = {"levels_per_stage": 2} | args
    m = Module()
    with pytest.raises(ValueError, match=match):
        popcount_lane(m, Signal(x_bits), Signal(w_bits), Signal(), "lane", **args)
    m._MustUse__silence = True
    cost_args = {k: v for k, v in args.items() if k != "levels_per_stage"}
    if x_bits == w_bits:            # lane_cost checks the same arguments
        with pytest.raises(ValueError, match=match):
            lane_cost(x_bits, args["levels_per_stage"], **cost_args)


def test_cost_follows_the_shape():
    """lane_cost: 0 for one term, the plain logic below 4 terms, and the report's figures for
    98 terms at L = 2 (74 CCU2C, 148 LUT4 equivalents, 240 placed, 78 flip-flops)."""
    assert lane_cost(1, 2) == {"cells": 0, "lut4": 0, "placed_lut4": 0, "ffs": 0}
    assert lane_cost(3, 1, "ice40")["ffs"] == 2
    assert lane_cost(3, 1, "ecp5", levels=3)["ffs"] == 6      # three registers of 2 bits
    assert lane_cost(98, 2, "ecp5") == {"cells": 74, "lut4": 148, "placed_lut4": 240,
                                        "ffs": 78}
    # longer chains: fewer feed-in/feed-out pairs, the same cells
    assert lane_cost(98, 2, max_chain=8)["placed_lut4"] < lane_cost(98, 2)["placed_lut4"]
    assert lane_levels(98) == 6 and lane_levels(1) == 0


# -- the primitive builds under Icarus -----------------------------------------------------------

def _testbench(n: int, cycles: int) -> str:
    return f"""
`timescale 1ns/1ns
module tb;
  reg clk = 0, rst = 0, en = 0;
  reg [{n - 1}:0] x = 0, w = 0;
  wire [{n.bit_length() - 1}:0] sum;
  reg [{2 * n}:0] stim [0:{cycles - 1}];
  integer i, f;
  lane dut(.clk(clk), .rst(rst), .en(en), .x(x), .w(w), .sum(sum));
  initial begin
    $readmemh("stim.hex", stim);
    f = $fopen("sum.txt", "w");
    for (i = 0; i < {cycles}; i = i + 1) begin
      {{en, w, x}} = stim[i];
      #4 $fdisplay(f, "%h", sum);
      #1 clk = 1;
      #5 clk = 0;
    end
    $fclose(f);
    $finish;
  end
endmodule
"""


def _run_icarus(folder: Path, family: str, netlist: str, n: int, stim) -> list:
    (folder / "lane.v").write_text(netlist)
    (folder / "tb.v").write_text(_testbench(n, len(stim)))
    (folder / "stim.hex").write_text(
        "".join(f"{(en << 2 * n) | (w << n) | x:x}\n" for en, x, w in stim))
    if family == "ecp5":
        (folder / "cells.v").write_text(ecp5_cell_models())
        models = ["-I", str(yosys_share() / "ecp5"), "cells.v"]
    else:
        models = ["-DNO_ICE40_DEFAULT_ASSIGNMENTS", str(yosys_share() / "ice40" / "cells_sim.v")]
    build = subprocess.run([tool("iverilog"), "-g2012", "-o", "sim.vvp", "-s", "tb", "tb.v",
                            "lane.v", *models], cwd=folder, capture_output=True, text=True)
    assert build.returncode == 0, build.stdout + build.stderr
    run = subprocess.run([tool("vvp"), "-n", "sim.vvp"], cwd=folder, capture_output=True,
                         text=True)
    assert run.returncode == 0, run.stdout + run.stderr
    lines = (folder / "sum.txt").read_text().split()
    return [None if re.search("[xz]", s, re.I) else int(s, 16) for s in lines]


@pytest.mark.rtl
@pytest.mark.parametrize("family, n, levels_per_stage, max_chain", [
    ("ecp5", 5, 1, None), ("ecp5", 5, 2, None), ("ecp5", 49, 1, None), ("ecp5", 49, 2, None),
    ("ecp5", 98, 1, None), ("ecp5", 98, 2, None), ("ecp5", 98, 2, 8), ("ecp5", 98, 1, 4),
    ("ecp5", 49, 3, 8), ("ecp5", 127, 2, 4),
    ("ice40", 5, 1, None), ("ice40", 5, 2, None), ("ice40", 49, 1, None),
    ("ice40", 49, 2, None), ("ice40", 98, 1, None), ("ice40", 98, 2, None),
    ("ice40", 98, 3, 8),
])
def test_primitive_netlist_counts_under_icarus(tmp_path, family, n, levels_per_stage,
                                               max_chain):
    """The vendor-primitive lane (forced, no platform) with Yosys's CCU2C / SB_LUT4 +
    SB_CARRY models: every count exact, ``registers`` enabled cycles late (en high, then low in
    about a third of the cycles)."""
    dut = Lane(n, levels_per_stage, family=family, primitives=True, max_chain=max_chain)
    text = verilog.convert(dut, name="lane")
    cell = {"ecp5": "CCU2C", "ice40": "SB_LUT4"}[family]
    assert len(re.findall(rf"^\s*{cell} #\(", text, re.M)) == \
        lane_cost(n, levels_per_stage, family, max_chain=max_chain)["cells"]
    assert dut.registers == lane_stages(n, levels_per_stage)
    stim = _stimulus(n, 150, seed=n * levels_per_stage) + \
        _stimulus(n, 150, seed=n + levels_per_stage, p_enable=0.7)
    got = _run_icarus(tmp_path, family, text, n, stim)
    _check(n, stim, dut.registers, got)


# -- the primitive builds through Yosys ----------------------------------------------------------

def _synth(folder: Path, family: str, netlist: str) -> dict:
    run_yosys(folder, netlist, f"synth_{family} -top lane; tee -o stat.txt stat")
    stat = (folder / "stat.txt").read_text()
    return {name: int(k) for k, name in re.findall(r"^\s+(\d+)\s+(\S+)$", stat, re.M)}


@pytest.mark.rtl
@pytest.mark.parametrize("n, levels_per_stage", [(98, 2), (49, 1)])
def test_synth_ecp5_maps_the_lane_to_ccu2c_only(tmp_path, n, levels_per_stage):
    """Elaborated for an ECP5 platform: ``lane_cost``'s CCU2C and flip-flops, no LUT4."""
    text = verilog.convert(Lane(n, levels_per_stage, family="ecp5"), name="lane",
                           platform=PLATFORMS["ecp5"])
    cells = _synth(tmp_path, "ecp5", text)
    cost = lane_cost(n, levels_per_stage, "ecp5")
    assert cells.get("CCU2C") == cost["cells"], cells
    assert cells.get("TRELLIS_FF") == cost["ffs"], cells
    assert not {"LUT4", "PFUMX", "L6MUX21"} & set(cells), cells
    assert cost["lut4"] == 2 * cost["cells"]


@pytest.mark.rtl
@pytest.mark.parametrize("n, levels_per_stage", [(98, 2), (49, 3)])
def test_synth_ice40_keeps_the_lane_cells(tmp_path, n, levels_per_stage):
    """Elaborated for an iCE40 platform: the SB_CARRY and flip-flops of the netlist, and
    ``lane_cost``'s logic cells less at most the pass-through ones (O = I3: the cells that
    inject a carry-in or read a carry-out), which Yosys may remove (nextpnr gives each a logic
    cell again)."""
    text = verilog.convert(Lane(n, levels_per_stage, family="ice40"), name="lane",
                           platform=PLATFORMS["ice40"])
    cost = lane_cost(n, levels_per_stage, "ice40")
    luts = len(re.findall(r"^\s*SB_LUT4 #\(", text, re.M))
    carries = len(re.findall(r"^\s*SB_CARRY ", text, re.M))
    passing = len(re.findall(r"\.LUT_INIT\(16'hff00\)", text))
    assert luts == cost["cells"] and 0 < passing < luts and carries > 0
    cells = _synth(tmp_path, "ice40", text)
    assert cost["cells"] - passing <= cells.get("SB_LUT4", 0) <= cost["cells"], cells
    assert cells.get("SB_CARRY") == carries, cells
    assert cells.get("SB_DFFE") == cost["ffs"], cells
