"""bnnforge benchmarks (``make bench``): throughput measured side by side in one run.

Each section prints what it measured; nothing here gates CI.

1. The reference executor's throughput on sfc (one core).
2. For sfc and CNV, each folded at a middle throughput and emitted into a temporary build folder:
   Verilator and Icarus driven by cocotb as ``bnnforge verify`` drives them, Verilator driven by
   a minimal C++ testbench (``bench/tb_main.cpp``), and the cycle-accurate Python simulator
   (reference values + ``simulate_timing`` cycles), on the same frames; then their ratios.
3. The Verilog emission time of sfc.

Usage: ``python bench/run.py [--quick]`` (``--quick``: fewer frames; the builds stay).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")       # one core, as the targets are stated

import numpy as np  # noqa: E402
import torch  # noqa: E402

import bnnforge  # noqa: E402
from bnnforge.nn import build  # noqa: E402


def _model(arch: str, shape=(1, 28, 28), input_bits: int = 1):
    torch.manual_seed(0)
    model = build(arch, shape, 10, input_bits=input_bits).eval()
    rng = np.random.default_rng(0)
    for m in model.modules():
        if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
            m.running_mean.copy_(torch.tensor(rng.normal(0, 3, m.num_features)))
    return model


def bench_reference(frames: int) -> None:
    """Reference executor throughput on sfc (goal: >= 20,000 frames/s on one core)."""
    torch.set_num_threads(1)
    graph = bnnforge.lower(_model("sfc"), (1, 28, 28))
    x = np.random.default_rng(1).integers(0, 256, (frames, 1, 28, 28), dtype=np.uint8)
    bnnforge.reference(graph, x[:512])                 # warm-up
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        bnnforge.reference(graph, x)
        best = min(best, time.perf_counter() - start)
    fps = frames / best
    print(f"reference  sfc (784-256-256-256-10, 1-bit input): {fps:,.0f} frames/s on one core "
          f"({frames} frames, best of 3) — goal 20,000: {'met' if fps >= 20000 else 'MISSED'}")


@contextlib.contextmanager
def _one_core():
    """Pin this process to one core (the reference target is stated on one), then unpin."""
    if not hasattr(os, "sched_setaffinity"):
        yield
        return
    cores = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {sorted(cores)[0]})
    try:
        yield
    finally:
        os.sched_setaffinity(0, cores)


# design -> (label, ChooseFolding target cycles per frame): a middle folding whose RTL
# simulation of a few dozen frames stays well under a minute.
DESIGNS = {"sfc": ("784-256-256-256-10, 1-bit input", 3136),
           "cnv": ("CNV, 4 conv + 2 pool + fc", 12544),
           "resnet": ("binary ResNet: 3 residual blocks, identity and projection shortcuts",
                      18816)}
# (frames through Verilator, cocotb and C++; frames through Icarus) per design, full and quick
FRAMES = {"sfc": (50, 10), "cnv": (25, 3), "resnet": (25, 2)}
FRAMES_QUICK = {"sfc": (10, 3), "cnv": (5, 2), "resnet": (5, 2)}
#: short runs, where per-run costs weigh most: the simulator against the C++ testbench
SHORT = 5
#: the long run of the simulator (frames), per design: most of it in the periodic steady state
LONG = {"sfc": 10000, "cnv": 10000, "resnet": 10000}


def _si(v: float) -> str:
    for div, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(v) >= div:
            return f"{v / div:.3g}{suffix}"
    return f"{v:.3g}"


def _ratio(a: float, b: float) -> str:
    r = a / b
    return f"{r:,.0f}x" if r >= 10 else f"{r:.2f}x"


def _table(d, runs: list) -> list[str]:
    lines = [f"{'engine':<42}{'frames':>7}{'cycles':>13}{'time s':>9}{'frames/s':>11}"
             f"{'cycles/s':>10}  checks"]
    for r in runs:
        checks = "; ".join(text for _, text in r.checks)
        lines.append(f"{r.engine:<42}{r.frames:>7,}{r.cycles:>13,}{r.seconds:>9.3f}"
                     f"{r.fps:>11,.1f}{_si(r.cps):>10}  {checks}")
    return lines


def bench_rtl(quick: bool) -> tuple[list[str], bool]:
    """Sections 2 and 3: every engine on both designs; return the report lines and all-ok."""
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np
    import rtl_bench as rb

    from bnnforge.sim import simulate_timing

    frames = FRAMES_QUICK if quick else FRAMES
    out: list[str] = []
    failed = []
    with tempfile.TemporaryDirectory(prefix="bnnforge-bench-") as tmp:
        root = Path(tmp)
        designs, builds = [], []
        # Preparation: every design is lowered, folded, FIFO-sized (timed: SizeFifos) and
        # emitted first, with nothing else running; then the builds run one after the other
        # (the second reuses Verilator's runtime objects from the first). Nothing is timed as
        # throughput until all are done.
        for name, (label, target) in DESIGNS.items():
            rb.log(f"{name}: lower, fold (target {target} cycles/frame), size FIFOs, emit")
            designs.append(rb.prepare(name, label, _model(name), target, root))
        with ThreadPoolExecutor(max_workers=1) as pool:
            for d in designs:
                builds.append(pool.submit(rb.build_all, d, root / "tb-runtime", icarus=True))
            for b in builds:
                b.result()
        x_all = np.random.default_rng(1).integers(0, 256, (max(LONG.values()), 1, 28, 28),
                                                   dtype=np.uint8)
        for d in designs:
            n, n_ic = frames[d.name]
            big = LONG[d.name] // (10 if quick else 1)
            x = x_all[:n]
            expected = np.asarray(bnnforge.reference(d.graph, x), dtype=np.int64)
            timing = simulate_timing(d.graph, n, record=False)
            timing_ic = simulate_timing(d.graph, n_ic, record=False)
            ver = rb.run_cocotb(d, x, "verilator", expected, timing)
            ver_ic = rb.run_cocotb(d, x[:n_ic], "verilator", expected[:n_ic], timing_ic)
            ver_ic.checks.append((True, "Icarus's frames"))
            ica = rb.run_cocotb(d, x[:n_ic], "icarus", expected[:n_ic], timing_ic)
            tb = rb.run_tb(d, x, expected, timing)
            tb_short = rb.run_tb(d, x[:SHORT], expected[:SHORT],
                                 simulate_timing(d.graph, SHORT, record=False))
            py = rb.run_python(d, x, repeat=3)
            py_short = rb.run_python(d, x[:SHORT], repeat=3)
            py_big = rb.run_python(d, x_all[:big], repeat=1)
            runs = [ver, ver_ic, ica, tb, tb_short, py, py_short, py_big]
            failed += [f"{d.name}: {r.engine}: {text}" for r in runs for ok, text in r.checks
                       if not ok]
            folds = ", ".join(f"{k} {v['pe']}x{v['simd']}" for k, v in
                              ((k, d.graph.attrs(k).get("fold")) for k in d.graph.order()) if v)
            out += ["", f"{d.name} ({d.label}): ChooseFolding(target_cycles={d.target}) -> "
                    f"{d.cycles_per_frame:,} cycles/frame (PE x SIMD: {folds}); "
                    f"{d.verilog_kb:,.0f} kB of Verilog",
                    "  builds, not timed above: " + ", ".join(
                        f"{k} {v:.1f} s" for k, v in d.builds.items())
                    + f"; SizeFifos {d.fifo_s:.1f} s"
                    + (f" (goal <= 5 s: {'met' if d.fifo_s <= 5 else 'MISSED'})"
                       if d.name == "cnv" else "")
                    + f"; emit_verilog {d.emit_s:.1f} s"]
            out += ["  " + line for line in _table(d, runs)]
            goal = py.fps / ver.fps
            out += [
                f"  sim vs Verilator as verify drives it: {_ratio(py.fps, ver.fps)} per frame "
                f"at {n} frames (goal >= 100x: {'met' if goal >= 100 else 'MISSED'}); "
                f"{_ratio(py_big.fps, ver.fps)} at {big:,} frames",
                f"  sim vs the C++ testbench:             {_ratio(py.fps, tb.fps)} per frame "
                f"at {n} frames; {_ratio(py_short.fps, tb_short.fps)} at {SHORT} frames "
                f"(goal >= 10x: {'met' if py_short.fps >= 10 * tb_short.fps else 'MISSED'}); "
                f"{_ratio(py_big.fps, tb.fps)} at {big:,} frames",
                f"  Verilator vs Icarus (both via cocotb, the same {n_ic} frames): "
                f"{_ratio(ver_ic.fps, ica.fps)}; C++ testbench vs cocotb-driven Verilator: "
                f"{_ratio(tb.fps, ver.fps)} per frame",
            ]
        sfc = designs[0]
        out += ["", f"Verilog emission, sfc (middle folding, {sfc.verilog_kb:,.0f} kB): "
                f"{sfc.emit_s:.1f} s (goal < 30 s: {'met' if sfc.emit_s < 30 else 'MISSED'})"]
    if failed:
        out += ["", "!" * 100, "CHECKS FAILED:"] + ["  " + f for f in failed] + ["!" * 100]
    return out, not failed


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--frames", type=int, default=None,
                   help="frames for the reference-executor benchmark (default 20000; "
                        "2000 with --quick)")
    p.add_argument("--quick", action="store_true", help="fewer frames everywhere")
    p.add_argument("--no-rtl", action="store_true", help="the reference benchmark only")
    args = p.parse_args(argv)
    start = time.perf_counter()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"bnnforge bench{' --quick' if args.quick else ''}: {os.cpu_count()} cores, "
          f"load average {load:.1f} at start (wall-clock timings; noisy on a busy machine)")
    with _one_core():
        bench_reference(args.frames or (2000 if args.quick else 20000))
    ok = True
    if not args.no_rtl:
        sys.stdout.flush()
        lines, ok = bench_rtl(args.quick)
        print("\n".join(lines))
    print(f"\nbench finished in {time.perf_counter() - start:.0f} s")
    return 0 if ok else 1          # a failed correctness check, never a slow timing


if __name__ == "__main__":
    sys.exit(main())
