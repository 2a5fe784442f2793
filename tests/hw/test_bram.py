"""BlockROM: the generic build in Amaranth's simulator, the ECP5 build (DP16KD with output
registers) under Icarus, its block count and its Yosys synthesis.

Yosys ships no behavioural DP16KD (``share/ecp5/cells_sim.v`` declares it a blackbox), so
:func:`dp16kd_model` writes one for the read-only use here: ``INITVAL`` and address pins as
Yosys's ``brams_map_16kd.v`` and nextpnr's bitstream writer read them, ``CE`` loading the
address (array) latch and ``OCE`` the output register under ``REGMODE = "OUTREG"``. The model is
itself checked against Yosys: the generic ROM mapped to DP16KD by ``synth_ecp5`` (Yosys's own
address wiring and ``INITVAL`` layout) must read back its contents through it.
"""

import random
import re
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest
from amaranth.back import verilog
from amaranth.sim import Simulator

from bnnforge.compiler.memory import ram_blocks
from bnnforge.hw.bram import DP16KD_PORTS, BlockROM, dp16kd_blocks
from conftest import ecp5_cell_models, run_yosys, tool, yosys_share

ECP5 = SimpleNamespace(family="ecp5")       # what elaborate() asks of an ECP5 platform


def _random_rom(width, depth, seed):
    rng = random.Random(seed)
    return [rng.getrandbits(width) for _ in range(depth)]


def _stimulus(depth, cycles, seed, sweep=True):
    """(en, addr) per cycle: every address in order (en low in about a quarter of the cycles),
    then random addresses with random en."""
    rng = random.Random(seed)
    out = []
    if sweep:
        for a in range(depth):
            while rng.random() < 0.25:
                out.append((0, rng.randrange(depth)))
            out.append((1, a))
    out += [(int(rng.random() < 0.7), rng.randrange(depth)) for _ in range(cycles)]
    return out + [(1, 0), (1, 0)]


def _expected(init, stim):
    """``data`` after each cycle's edge (None until two enabled edges have passed)."""
    a_reg = out = None
    seen, result = 0, []
    for en, addr in stim:
        if en:
            out = None if a_reg is None else init[a_reg]
            a_reg = addr
            seen += 1
        result.append(out if seen >= 2 else None)
    return result


def _check(init, stim, got):
    want = _expected(init, stim)
    assert len(got) == len(want)
    checked = 0
    for i, (w, g) in enumerate(zip(want, got, strict=True)):
        if w is not None:
            assert g == w, f"cycle {i}: data {g!r}, expected {w:#x}"
            checked += 1
    assert checked > len(stim) // 2


# -- argument checks -----------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, error, match", [
    ({"width": 0}, ValueError, r"width must be at least 1, not 0"),
    ({"depth": "8"}, TypeError, r"depth must be an integer, not '8'"),
    ({"init": [1] * 9}, ValueError, r"init must hold at most depth=8 words, not 9"),
    ({"init": [1, 16]}, ValueError, r"init words must be in 0 \.\. 2\*\*4 - 1, not 16"),
    ({"init": [1, -1]}, ValueError, r"init words must be in 0 \.\. 2\*\*4 - 1, not -1"),
    ({"init": [1, 2.0]}, TypeError, r"init must be integers, not 2\.0"),
    ({"init": 7}, TypeError, r"init must be a sequence of integers, not 7"),
    ({"attrs": {"rom_style": 1.5}}, TypeError, r"attrs must map names to str or int values"),
])
def test_arguments_are_checked(kwargs, error, match):
    args = {"width": 4, "depth": 8, "init": [1, 2, 3]} | kwargs
    with pytest.raises(error, match=match):
        BlockROM(**args)


@pytest.mark.parametrize("width, depth, error, match", [
    (0, 8, ValueError, r"width must be at least 1, not 0"),
    (8, 2.5, TypeError, r"depth must be an integer, not 2\.5"),
])
def test_block_count_arguments_are_checked(width, depth, error, match):
    with pytest.raises(error, match=match):
        dp16kd_blocks(width, depth)


def test_short_init_is_zero_filled():
    rom = BlockROM(3, 5, [7, 1])
    assert rom.init == [7, 1, 0, 0, 0] and rom.latency == 2
    assert len(rom.addr) == 3 and len(rom.data) == 3


# -- the generic build in Amaranth's simulator ---------------------------------------------------

@pytest.mark.parametrize("width, depth", [(1, 2), (13, 37), (72, 256), (5, 1)])
def test_generic_reads_with_two_enabled_cycles_latency(width, depth):
    init = _random_rom(width, depth, seed=width * depth)
    rom = BlockROM(width, depth, init, attrs={"rom_style": "block"})
    stim = _stimulus(depth, 400, seed=depth, sweep=depth < 100)
    got = []

    async def bench(ctx):
        for en, addr in stim:
            ctx.set(rom.en, en)
            ctx.set(rom.addr, addr)
            await ctx.tick()
            got.append(ctx.get(rom.data))

    sim = Simulator(rom)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    _check(init, stim, got)


def test_generic_memory_carries_the_attributes():
    rom = BlockROM(36, 98, _random_rom(36, 98, 1), attrs={"rom_style": "block"})
    text = verilog.convert(rom, name="rom")
    assert re.search(r'\(\*[^*]*rom_style = "block"', text)


# -- the ECP5 build: block counts ----------------------------------------------------------------

# (width, depth, blocks): two 18-bit ports up to 512 words, mixed port widths, bands
SHAPES = [
    (36, 98, 1), (80, 512, 3), (5, 3000, 1), (1, 20000, 2), (144, 1100, 12),
    (22, 700, 1), (11, 1300, 1), (40, 2500, 7), (72, 256, 2), (18, 1024, 1), (7, 1, 1),
]


@pytest.mark.parametrize("width, depth, blocks", SHAPES)
def test_block_count_matches_the_instances(width, depth, blocks):
    assert dp16kd_blocks(width, depth) == blocks
    rom = BlockROM(width, depth, _random_rom(width, depth, 2))
    text = verilog.convert(rom, name="rom", platform=ECP5)
    assert text.count("DP16KD #(") == blocks
    assert len(re.findall(r'\.REGMODE_[AB]\("OUTREG"\)', text)) >= blocks


def test_block_count_never_exceeds_the_single_shape_count():
    for width in (1, 2, 3, 5, 8, 9, 17, 18, 19, 22, 36, 37, 64, 100, 144, 300):
        for depth in (2, 50, 300, 512, 513, 700, 800, 1000, 1024, 1100, 1500, 2048, 2100,
                      3000, 4096, 5000, 9000, 16384, 20000, 40000):
            assert dp16kd_blocks(width, depth) <= ram_blocks(width, depth, "ecp5"), \
                (width, depth)
    assert dp16kd_blocks(3136, 64) == 88                 # wide and shallow: 36 bits a block


# -- the ECP5 build under Icarus -----------------------------------------------------------------

def dp16kd_model() -> str:
    """A behavioural DP16KD for reading (writes, CS decode and resets are refused)."""
    pins = []
    for p in "AB":
        pins += [f"DI{p}{i}" for i in range(18)] + [f"AD{p}{i}" for i in range(14)]
        pins += [f"CE{p}", f"OCE{p}", f"CLK{p}", f"WE{p}", f"RST{p}"]
        pins += [f"CS{p}{i}" for i in range(3)]
    outs = [f"DO{p}{i}" for p in "AB" for i in range(18)]
    params = ["DATA_WIDTH_A = 18", "DATA_WIDTH_B = 18", 'REGMODE_A = "NOREG"',
              'REGMODE_B = "NOREG"', 'RESETMODE = "SYNC"', 'ASYNC_RESET_RELEASE = "SYNC"',
              'CSDECODE_A = "0b000"', 'CSDECODE_B = "0b000"', 'WRITEMODE_A = "NORMAL"',
              'WRITEMODE_B = "NORMAL"', 'CLKAMUX = "CLKA"', 'CLKBMUX = "CLKB"',
              'GSR = "ENABLED"', "WID = 0", 'INIT_DATA = "STATIC"']
    params += [f"[319:0] INITVAL_{k:02X} = 320'h0" for k in range(64)]
    loads = "\n".join(f"      mem[{16 * k} + j] = INITVAL_{k:02X}[20 * j +: 18];"
                      for k in range(64))
    ports = []
    for p in "AB":
        ad = ", ".join(f"AD{p}{i}" for i in reversed(range(14)))
        do = ", ".join(f"DO{p}{i}" for i in reversed(range(18)))
        ports.append(f"""
  wire [13:0] ad_{p} = {{{ad}}};
  reg [17:0] latch_{p}, out_{p};
  always @(posedge CLK{p}) begin
    if (WE{p} !== 1'b0 || RST{p} !== 1'b0 || {{CS{p}2, CS{p}1, CS{p}0}} !== 3'b000) begin
      $display("DP16KD model: port {p} writes, resets or selects"); $fatal;
    end
    if (CE{p}) latch_{p} <= read(DATA_WIDTH_{p}, ad_{p});
    if (OCE{p}) out_{p} <= latch_{p};
  end
  assign {{{do}}} = REGMODE_{p} == "OUTREG" ? out_{p} : latch_{p};
  initial if (DATA_WIDTH_{p} != 1 && DATA_WIDTH_{p} != 2 && DATA_WIDTH_{p} != 4 &&
              DATA_WIDTH_{p} != 9 && DATA_WIDTH_{p} != 18) begin
    $display("DP16KD model: width %0d", DATA_WIDTH_{p}); $fatal;
  end""")
    return f"""
module DP16KD(input {", ".join(pins)}, output {", ".join(outs)});
{"".join(f"  parameter {p};{chr(10)}" for p in params)}
  reg [17:0] mem [0:1023];   // 1024 words of two nine-bit bytes
  integer j;
  initial begin
    for (j = 0; j < 16; j = j + 1) begin
{loads}
    end
  end
  // a w-bit port reads entry e from the top log2(depth) address pins: an 18-bit word, a
  // byte, or data bits [w e, w e + w) over the eight low bits of each byte
  function [17:0] read(input integer w, input [13:0] ad);
    integer e, b;
    begin
      if (w == 18) read = mem[ad[13:4]];
      else if (w == 9) read = (mem[ad[13:4]] >> (9 * ad[3])) & 18'h1ff;
      else begin
        e = w == 4 ? ad[13:2] : w == 2 ? ad[13:1] : ad;
        b = (e * w) / 8;
        read = (mem[b / 2] >> (9 * (b % 2) + (e * w) % 8)) & ((1 << w) - 1);
      end
    end
  endfunction
{"".join(ports)}
endmodule
"""


def _testbench(top: str, addr_bits: int, width: int, cycles: int) -> str:
    return f"""
`timescale 1ns/1ns
module tb;
  reg clk = 0, rst = 0, en = 0;
  reg [{max(addr_bits, 1) - 1}:0] addr = 0;
  wire [{width - 1}:0] data;
  reg [{addr_bits}:0] stim [0:{cycles - 1}];
  integer i, f;
  {top} dut(.clk(clk), .rst(rst), .en(en), {".addr(addr), " if addr_bits else ""}.data(data));
  initial begin
    $readmemh("stim.hex", stim);
    f = $fopen("data.txt", "w");
    for (i = 0; i < {cycles}; i = i + 1) begin
      en = stim[i][0];
      addr = stim[i] >> 1;
      #5 clk = 1;
      #5 clk = 0;
      $fdisplay(f, "%h", data);
    end
    $fclose(f);
    $finish;
  end
endmodule
"""


def _run_icarus(folder: Path, sources: dict, stim, addr_bits: int, width: int,
                include: Path | None = None) -> list:
    for name, text in sources.items():
        (folder / name).write_text(text)
    (folder / "tb.v").write_text(_testbench("rom", addr_bits, width, len(stim)))
    (folder / "stim.hex").write_text("".join(f"{(a << 1) | e:x}\n" for e, a in stim))
    cmd = [tool("iverilog"), "-g2012", "-o", "sim.vvp", "-s", "tb", "tb.v", *sources]
    if include is not None:
        cmd[1:1] = ["-I", str(include)]
    build = subprocess.run(cmd, cwd=folder, capture_output=True, text=True)
    assert build.returncode == 0, build.stdout + build.stderr
    run = subprocess.run([tool("vvp"), "-n", "sim.vvp"], cwd=folder, capture_output=True,
                         text=True)
    assert run.returncode == 0 and "DP16KD model" not in run.stdout, run.stdout + run.stderr
    lines = (folder / "data.txt").read_text().split()
    return [None if re.search("[xz]", s, re.I) else int(s, 16) for s in lines]


@pytest.mark.rtl
@pytest.mark.parametrize("width, depth, blocks", SHAPES)
def test_ecp5_build_reads_under_icarus(tmp_path, width, depth, blocks):
    init = _random_rom(width, depth, seed=3 + width + depth)
    rom = BlockROM(width, depth, init)
    text = verilog.convert(rom, name="rom", platform=ECP5)
    stim = _stimulus(depth, 3000, seed=depth)
    got = _run_icarus(tmp_path, {"rom.v": text, "dp16kd.v": dp16kd_model()}, stim,
                      len(rom.addr), width)
    _check(init, stim, got)


@pytest.mark.rtl
@pytest.mark.parametrize("width, depth", [(18, 1024), (9, 2048), (4, 4096), (2, 8192),
                                          (1, 16384), (30, 700)])
def test_model_reads_what_yosys_maps(tmp_path, width, depth):
    """The model agrees with Yosys: the generic ROM, mapped to DP16KD by synth_ecp5 in each
    port width, reads back its contents through it."""
    init = _random_rom(width, depth, seed=width)
    rom = BlockROM(width, depth, init, attrs={"rom_style": "block"})
    run_yosys(tmp_path, verilog.convert(rom, name="rom"),
              "synth_ecp5 -top rom; stat; write_verilog -noattr synth.v")
    netlist = (tmp_path / "synth.v").read_text()
    widths = {int(w) for w in re.findall(r"\.DATA_WIDTH_A\(32'd(\d+)\)", netlist)}
    assert widths and widths <= set(DP16KD_PORTS)
    if depth == DP16KD_PORTS.get(width):
        assert widths == {width}
    stim = _stimulus(depth, 2000, seed=width, sweep=depth <= 4096)
    got = _run_icarus(tmp_path, {"synth.v": netlist, "dp16kd.v": dp16kd_model(),
                                 "cells.v": ecp5_cell_models(without_dp16kd=True)},
                      stim, len(rom.addr), width, include=yosys_share() / "ecp5")
    _check(init, stim, got)


# -- the ECP5 build through Yosys ----------------------------------------------------------------

@pytest.mark.rtl
@pytest.mark.parametrize("width, depth, flip_flops", [(72, 256, 0), (22, 700, 0), (144, 1100, 2)])
def test_synth_ecp5_keeps_the_output_registers(tmp_path, width, depth, flip_flops):
    """Every block reads through its output register and no flip-flop is on the data path
    (two bands: the band select, registered twice, is the only one)."""
    rom = BlockROM(width, depth, _random_rom(width, depth, 4))
    log = run_yosys(tmp_path, verilog.convert(rom, name="rom", platform=ECP5),
                    "synth_ecp5 -top rom; tee -o stat.txt stat; write_verilog -noattr synth.v")
    stat = (tmp_path / "stat.txt").read_text()
    cells = {name: int(n) for n, name in re.findall(r"^\s+(\d+)\s+(\S+)$", stat, re.M)}
    assert cells.get("DP16KD") == dp16kd_blocks(width, depth), stat + log
    assert sum(n for name, n in cells.items() if name.startswith("TRELLIS_FF")) == flip_flops
    netlist = (tmp_path / "synth.v").read_text()
    regmodes = re.findall(r'\.REGMODE_A\("(\w+)"\)', netlist)
    assert regmodes == ["OUTREG"] * dp16kd_blocks(width, depth)
