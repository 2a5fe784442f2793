"""The ``bnnforge`` command line: one subcommand per step of the flow.

Every user error ends in one line on stderr (``bnnforge <command>: error: …``) and exit code 2;
nothing is half-written.
"""

from __future__ import annotations

import argparse
import os
import sys

__all__ = ["main"]


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line."""

    def error(self, message: str):  # noqa: D401 - argparse's hook
        raise _UsageError(f"{self.prog}: error: {message}")


class _UsageError(Exception):
    pass


def _int_at_least(minimum: int, what: str):
    """An argparse type: an integer of at least ``minimum``, else "expected <what>"."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < minimum:
            raise argparse.ArgumentTypeError(f"expected {what}, not {text!r}")
        return value
    return parse


_positive_int = _int_at_least(1, "a positive integer")
_nonnegative_int = _int_at_least(0, "a whole number >= 0")


def _parser() -> _Parser:
    from .nn.archs import ARCHS
    from .nn.datasets import DATASETS
    from .nn.quantizers import QUANTIZERS

    p = _Parser(prog="bnnforge", description="Binary neural networks from PyTorch to FPGAs.")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    t = sub.add_parser("train", help="train a reference BNN on a bundled dataset")
    t.add_argument("--arch", required=True, help=f"architecture: {', '.join(ARCHS)}")
    t.add_argument("--dataset", required=True, help=f"dataset: {', '.join(DATASETS)}")
    t.add_argument("--quantizer", default="ste", help=f"binarizer: {', '.join(QUANTIZERS)}")
    t.add_argument("--epochs", type=_positive_int, default=10)
    t.add_argument("--input-bits", type=int, choices=(1, 8), default=1,
                   help="first-layer input: 1 = binarized pixels, 8 = bytes")
    t.add_argument("--lr", type=float, default=None)
    t.add_argument("--batch-size", type=_positive_int, default=None)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--mst-reg", type=float, default=0.0, metavar="LAMBDA",
                   help="MST-distance regularizer weight (e.g. 0.1; 0 = off)")
    t.add_argument("--shift", type=_nonnegative_int, default=0, metavar="PIXELS",
                   help="augment: move each training image by up to this many pixels "
                        "(default 0 = off; 1 helps on mnist5k)")
    t.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    t.add_argument("-o", "--output", required=True, help="model file to write")

    c = sub.add_parser("compile", help="compile a model file into a build folder")
    c.add_argument("model", help="model file written by 'bnnforge train' or bnnforge.save, "
                   "or a QONNX file (.onnx) to import first")
    c.add_argument("-o", "--output", required=True, help="build folder to write")
    c.add_argument("--fps", type=float, default=None,
                   help="throughput target in frames/s at --clock-mhz (sets PE/SIMD)")
    c.add_argument("--clock-mhz", type=float, default=None,
                   help="clock for --fps in MHz (default 100, or the board's)")
    c.add_argument("--board", default=None,
                   help="fold to fit this board at its clock (icebreaker, ulx3s-85f, ...)")
    c.add_argument("--luts", type=_positive_int, default=None,
                   help="LUT budget: the fastest balanced folding that fits")
    c.add_argument("--fold", action="append", metavar="LAYER=PE,SIMD",
                   help="fix one stage's folding (repeatable)")
    c.add_argument("--mst", action="store_true",
                   help="use MST-compressed layers where they need fewer LUTs")
    c.add_argument("--mst-depth", type=_positive_int, default=None, metavar="N",
                   help="bound every MST to depth N (channel order and MST layers)")
    c.add_argument("--no-rtl", action="store_true", help=argparse.SUPPRESS)

    i = sub.add_parser("import", help="import a QONNX model exported by Brevitas (w1a1 FC)")
    i.add_argument("model", help="QONNX file (.onnx) written by brevitas.export.export_qonnx")
    i.add_argument("-o", "--output", required=True, help="model file to write")
    i.add_argument("--check", type=_positive_int, default=None, metavar="N",
                   help="compare with qonnx's executor on N random frames (argmax)")

    v = sub.add_parser("verify", help="run the RTL under cocotb and compare with the reference")
    v.add_argument("build", help="build folder written by 'bnnforge compile'")
    v.add_argument("--sim", choices=("icarus", "verilator"), default="verilator",
                   help="RTL simulator (default: verilator)")
    v.add_argument("--frames", type=_positive_int, default=100)
    v.add_argument("--inputs", default=None, help=".npy of uint8 frames to use instead")
    v.add_argument("--input-gap", type=float, default=0.0,
                   help="probability of an idle cycle before each input pixel")
    v.add_argument("--output-stall", type=float, default=0.0,
                   help="probability that the output is not ready in a cycle")
    v.add_argument("--seed", type=int, default=0)
    v.add_argument("--no-progress", action="store_true", help="hide the progress bar")

    s = sub.add_parser("sim", help="cycle-accurate simulation: throughput, latency, energy")
    s.add_argument("build", help="build folder written by 'bnnforge compile'")
    s.add_argument("--frames", type=_positive_int, default=1000)
    s.add_argument("--clock-mhz", type=float, default=None,
                   help="clock (default: the compile or build clock)")
    s.add_argument("--family", choices=("ice40up", "ice40hx", "ecp5"), default=None,
                   help="energy coefficients (default: the board's family, else ice40up)")
    s.add_argument("--calibration", metavar="FILE", default=None,
                   help="JSON of measured energy coefficients that replace the family's "
                        "(docs/design.md section 5)")
    s.add_argument("--no-progress", action="store_true", help="hide the progress bar")

    e = sub.add_parser("energy", help="energy per frame two ways: op counts and RTL switching "
                       "activity (Verilator toggle counts), side by side per layer")
    e.add_argument("build", help="build folder written by 'bnnforge compile'")
    e.add_argument("--frames", type=_positive_int, default=20,
                   help="frames streamed through the RTL (default 20)")
    e.add_argument("--data", choices=("dataset", "random", "zero"), default="dataset",
                   help="frames: the model's held-out frames (default), random or all-zero")
    e.add_argument("--clock-mhz", type=float, default=None,
                   help="clock (default: the compile clock)")
    e.add_argument("--family", choices=("ice40up", "ice40hx", "ecp5"), default=None,
                   help="energy coefficients (default: the board's family, else ice40up)")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--calibration", metavar="FILE", default=None,
                   help="JSON of measured energy coefficients that replace the family's "
                        "(docs/design.md section 5)")
    e.add_argument("--no-progress", action="store_true", help="hide the progress bar")

    b = sub.add_parser("build", help="build a bitstream for a board (Yosys/nextpnr via YoWASP)")
    b.add_argument("build", help="build folder written by 'bnnforge compile'")
    b.add_argument("--board", required=True, help="board profile, e.g. icebreaker, ulx3s-85f")
    b.add_argument("--baud", type=_positive_int, default=115200)
    b.add_argument("--no-progress", action="store_true", help="hide the progress bar")

    r = sub.add_parser("run", help="classify images on a board over its serial port")
    r.add_argument("build", help="build folder the board's bitstream came from")
    r.add_argument("--port", required=True, help="serial port, e.g. /dev/ttyUSB1")
    r.add_argument("--images", required=True, help=".npy of uint8 images (N, C, H, W)")
    r.add_argument("--baud", type=_positive_int, default=115200)
    r.add_argument("--timeout", type=float, default=5.0, help="seconds to wait per answer")

    w = sub.add_parser("sweep", help="design-space sweep on Dask: results table, Pareto fronts",
                       description="Run every point of SPEC (a TOML grid over arch, quantizer, "
                       "mst_reg, board, fps, seed, ...): train, compile, simulate and optionally "
                       "verify and build each; write DIR/results.csv and DIR/index.html. Rerun "
                       "to resume: finished points are kept.")
    w.add_argument("spec", help="sweep spec (TOML)")
    w.add_argument("-o", "--output", required=True, help="sweep folder")
    w.add_argument("--scheduler", default=None, metavar="tcp://HOST:PORT",
                   help="run on this Dask scheduler (default: a local cluster)")
    w.add_argument("--workers", type=_positive_int, default=None,
                   help="local workers (default: one per core)")
    w.add_argument("--retry-failed", action="store_true",
                   help="run points again that failed before")
    w.add_argument("--dry-run", action="store_true", help="list the points and stop")
    w.add_argument("--no-progress", action="store_true", help="hide the progress bar")

    d = sub.add_parser("demo", help="train -> compile -> simulate -> verify -> bitstream")
    d.add_argument("-o", "--output", default="demo-build", help="demo folder")
    d.add_argument("--board", default="icebreaker")
    d.add_argument("--arch", default="tfc")
    d.add_argument("--epochs", type=_positive_int, default=20)
    d.add_argument("--shift", type=_nonnegative_int, default=1, metavar="PIXELS",
                   help="training augmentation: pixels each image may move (default 1)")
    d.add_argument("--fps", type=float, default=200_000,
                   help="throughput to fold for (default 200000; 0 = the fastest that fits)")
    d.add_argument("--clock-mhz", type=float, default=0.0,
                   help="design clock in MHz (default 0 = the clock the timing-aware compile "
                        "predicts the placed design meets)")
    d.add_argument("--no-bitstream", action="store_true", help="skip place-and-route")
    d.add_argument("--no-progress", action="store_true", help="hide progress bars")
    return p


def _run(args) -> int:
    from . import flow

    if args.command == "train":
        meta = flow.train_model(args.arch, args.dataset, args.quantizer, args.output,
                                epochs=args.epochs, input_bits=args.input_bits,
                                seed=args.seed, lr=args.lr, batch_size=args.batch_size,
                                mst_reg=args.mst_reg, shift=args.shift,
                                progress=not args.no_progress)
        print(f"{args.arch} on {args.dataset} ({args.quantizer}): held-out accuracy "
              f"{100 * meta['accuracy_torch']:.2f}% on {meta['test_frames']} frames, "
              f"trained in {meta['train_seconds']:.1f} s -> {args.output}")
        return 0
    if args.command == "import":
        from .onnx_import import import_onnx_file

        res = import_onnx_file(args.model, args.output, check=args.check)
        print(f"imported {args.model} -> {args.output} ({len(res['model'])} layers, input "
              f"{'x'.join(map(str, res['input_shape']))})")
        if args.check:
            print(f"{args.check} frames: qonnx and bnnforge agree on {res['agree']} of "
                  f"{args.check} (argmax)")
            return 0 if res["agree"] == args.check else 1
        return 0
    if args.command == "compile":
        report = flow.compile_model(args.model, args.output, fps=args.fps,
                                    clock_mhz=args.clock_mhz, luts=args.luts, fold=args.fold,
                                    board=args.board, mst=args.mst,
                                    mst_max_depth=args.mst_depth, rtl=not args.no_rtl)
        m = report["model"]
        comp = report["compile"]
        print(f"compiled {args.model} -> {args.output}")
        print(f"{'stage':<8} {'op':<12} {'in':>12} {'out':>10} {'PE':>5} {'SIMD':>5} "
              f"{'cycles/frame':>13}")
        for row in comp["layers"]:
            mark = "  <- bottleneck" if row["name"] == comp["bottleneck"] else ""
            print(f"{row['name']:<8} {row['op']:<12} {'x'.join(map(str, row['in_shape'])):>12} "
                  f"{'x'.join(map(str, row['out_shape'])):>10} {row['pe'] or '-':>5} "
                  f"{row['simd'] or '-':>5} {row['cycles_per_frame']:>13}{mark}")
        cycles, clock = comp["cycles_per_frame"], comp["clock_mhz"]
        how = comp.get("timing") or {}
        why = {"fmax model": f" (timing-aware: predicted Fmax {how.get('predicted_fmax_mhz')} "
                             f"MHz x {how.get('margin')}, pipeline {comp.get('pipeline')})",
               "given": " (given)", "oscillator": " (the board's oscillator)"}.get(
            how.get("clock_from"), "")
        print(f"{cycles} cycles/frame at {clock:g} MHz{why}: {clock * 1e6 / cycles:,.0f} "
              "frames/s")
        if m.get("frames"):
            print(f"held-out accuracy: torch {100 * m['accuracy_torch']:.2f}%, reference "
                  f"{100 * m['accuracy_reference']:.2f}%, disagreements {m['disagreements']} "
                  f"of {m['frames']}")
        return 0
    if args.command == "sim":
        from .simulate import simulate_build

        family, coefficients = flow.energy_profile(args.build, args.family, args.calibration)
        sec = simulate_build(args.build, frames=args.frames, clock_mhz=args.clock_mhz,
                             family=family, coefficients=coefficients,
                             progress=not args.no_progress)
        print(f"{'stage':<10} {'cycles/frame':>13} {'busy':>6}")
        for row in sec["layers"]:
            mark = "  <- bottleneck" if row.get("bottleneck") else ""
            print(f"{row['name']:<10} {row['cycles_per_frame']:>13} "
                  f"{100 * row['busy']:>5.0f}%{mark}")
        print(f"{sec['frames']} frames: {sec['cycles_per_frame']} cycles/frame, latency "
              f"{sec['latency_cycles']} cycles, {sec['fps']:,.0f} frames/s at "
              f"{sec['clock_mhz']} MHz, {sec['energy_nj_per_frame']:.2f} nJ/frame "
              f"(simulated in {sec['wall_s']:.2f} s)")
        return 0
    if args.command == "energy":
        return _energy(args)
    if args.command == "sweep":
        return _sweep(args)
    if args.command == "demo":
        flow.run_demo(args.output, board=args.board, arch=args.arch, epochs=args.epochs,
                      shift=args.shift,
                      fps=args.fps or None, clock_mhz=args.clock_mhz or None,
                      bitstream=not args.no_bitstream,
                      progress=not args.no_progress)
        return 0
    if args.command == "build":
        from .build import build_board
        from .buildfolder import read_report

        compiled = read_report(args.build).get("compile", {})
        clock = compiled.get("clock_mhz") if compiled.get("board") == args.board else None
        res = build_board(args.build, args.board, progress=not args.no_progress,
                          baud=args.baud, clock_mhz=clock)
        print(f"bitstream for {res['board']} ({res['device']}): {res['bitstream']}")
        print(f"LUTs {res['luts_used']}/{res['luts_total']}, FFs {res['ffs_used']}, BRAM "
              f"{res['bram_used']}/{res['bram_total']}, Fmax {res['fmax_mhz']:.1f} MHz at a "
              f"{res['clock_mhz']} MHz clock, built in {res['wall_s']:.0f} s")
        return 0
    if args.command == "run":
        from .buildfolder import require_build
        from .compiler import load_graph
        from .host import classify
        from .verify import load_inputs

        folder = require_build(args.build)
        images = load_inputs(args.images, load_graph(folder).input_shape)
        answers = classify(args.port, images, baud=args.baud, timeout=args.timeout,
                           layout=folder)
        for i, (cls, scores) in enumerate(answers):
            print(f"{i}: class {cls}  scores {' '.join(str(int(v)) for v in scores)}")
        return 0
    if args.command == "verify":
        from .verify import verify_build

        section = verify_build(args.build, simulator=args.sim, frames=args.frames,
                               inputs=args.inputs, input_gap=args.input_gap,
                               output_stall=args.output_stall, seed=args.seed,
                               progress=not args.no_progress)
        ok = section["value_mismatches"] == 0 and not section.get("cycle_mismatches")
        print(f"verify ({section['simulator']}): {section['frames']} frames, "
              f"{section['value_mismatches']} value mismatches"
              + (f", {section['cycle_mismatches']} cycle mismatches"
                 if "cycle_mismatches" in section else "")
              + f" in {section['wall_s']:.1f} s — {'PASS' if ok else 'FAIL'}")
        return 0 if ok else 1
    raise _UsageError(f"bnnforge: error: unknown command {args.command!r}")


def _energy(args) -> int:
    from .energy import energy_build

    sec = energy_build(args.build, frames=args.frames, family=args.family,
                       clock_mhz=args.clock_mhz, data=args.data, seed=args.seed,
                       calibration=args.calibration, progress=not args.no_progress)
    print(f"{'stage':<10} {'op nJ':>9} {'activity nJ':>12} {'op/act':>7}")
    for row in sec["layers"]:
        mark = "" if row["gated"] else "  (small: not gated)"
        print(f"{row['name']:<10} {row['op_nj']:>9.2f} {row['activity_nj']:>12.2f} "
              f"{row['ratio']:>7.2f}{mark}")
    fixed = sec["fixed"]
    print(f"{'fixed':<10} {fixed['op_nj']:>9.2f} {fixed['activity_nj']:>12.2f}   "
          "(clock tree, PLL, static)")
    print(f"{'total':<10} {sec['op_nj_per_frame']:>9.2f} {sec['activity_nj_per_frame']:>12.2f}")
    terms = sec["activity_breakdown"]
    print("activity terms (nJ/frame): " + ", ".join(
        f"{k} {v:.2f} [{sec['basis'].get(k, 'estimate')}]" for k, v in terms.items()))
    print(f"{sec['frames']} frames ({sec['source']}) on {sec['family']} at {sec['clock_mhz']} "
          f"MHz{' with the PLL' if sec['pll'] else ''}; glitch factor {sec['glitch_factor']} "
          f"(range {sec['glitch_range'][0]}-{sec['glitch_range'][1]}); worst layer ratio "
          f"{sec['worst_ratio']:.2f} ({'within' if sec['within_2x'] else 'outside'} 2x); "
          f"{sec['value_mismatches']} value mismatches, in {sec['wall_s']:.1f} s")
    return 0 if sec["value_mismatches"] == 0 else 1


def _sweep(args) -> int:
    from . import sweep

    if args.dry_run:
        spec = sweep.load_spec(args.spec)
        axes = list(spec.axes)
        print(f"{len(spec.points)} points ({spec.grid_size} in the grid) over "
              f"{', '.join(axes) or 'no axes'}:")
        for point in spec.points:
            print(f"{sweep.point_id(point)}  "
                  + " ".join(f"{k}={point[k]}" for k in axes))
        return 0
    if args.workers and args.scheduler:
        raise _UsageError("bnnforge sweep: error: --workers sizes the local cluster; with "
                          "--scheduler the cluster's own workers run the points")
    rows = sweep.run_sweep(args.spec, args.output, scheduler=args.scheduler,
                           workers=args.workers, retry_failed=args.retry_failed,
                           progress=not args.no_progress)
    ok = [r for r in rows if r["status"] == "ok"]
    print(f"{len(rows)} points: {len(ok)} ok, {len(rows) - len(ok)} failed -> "
          f"{os.path.join(args.output, 'results.csv')}, {os.path.join(args.output, 'index.html')}")
    for r in rows:
        if r["status"] != "ok":
            print(f"  {r['point']} failed: {r['error']}")
    return 0 if ok or not rows else 1


def main(argv: list[str] | None = None) -> int:
    """Run the command line; return the exit code."""
    try:
        args = _parser().parse_args(argv)
        return _run(args)
    except _UsageError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    except (ValueError, OSError, RuntimeError) as exc:    # RuntimeError: an RTL build or run
        command = (argv if argv is not None else sys.argv[1:])[:1]
        prog = f"bnnforge {command[0]}" if command else "bnnforge"
        print(f"{prog}: error: {exc}", file=sys.stderr)
        if os.environ.get("BNNFORGE_DEBUG"):
            raise
        return 2
    except KeyboardInterrupt:
        print("bnnforge: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
