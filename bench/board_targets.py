"""The issue's board targets, measured end to end (train → compile --board → bitstream).

For each target: train the model on mnist5k (or reuse ``--models DIR/<arch>.bnn``), compile it
for the board at the target frame rate (``compile --board B --fps N``: the folding and the clock
come from the timing-aware compile), take frames/s and latency from the cycle-accurate
simulator at the design clock, build the bitstream and print accuracy (held-out, hardware
arithmetic), cycles per frame, frames/s, latency, resources and Fmax, and whether the target is
met (the placed design must meet its clock). When the frame rate is out of reach on the board,
the row says why (the compile error) and builds the fastest folding that fits instead.
Nothing here gates CI; the iCEBreaker tfc at 200,000 frames/s is also a test
(tests/boards/test_build.py).

Usage: ``python bench/board_targets.py [--only NAME] [--models DIR] [--out DIR]``
(``make targets``). The ECP5 rows take several minutes each on two cores.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from bnnforge.boards import BitstreamError
from bnnforge.build import build_board
from bnnforge.compiler import load_graph
from bnnforge.flow import compile_model, train_model
from bnnforge.sim import simulate_timing, steady_cycles_per_frame

#: name, board, arch, epochs, quantizer, accuracy target, frames/s target, latency target (µs).
#: ``cnv32``: cnv on a 3x32x32 input with random weights (no 3-channel 32x32 data is bundled;
#: frames/s do not depend on the weights), so no accuracy target.
TARGETS = [
    ("icebreaker-tfc", "icebreaker", "tfc", 20, "ste", 0.90, 200_000, None),
    ("ulx3s-sfc", "ulx3s-85f", "sfc", 10, "ste", 0.93, 1_000_000, None),
    ("ulx3s-tfc-latency", "ulx3s-85f", "tfc", 20, "ste", 0.90, 1_000_000, 10.0),
    ("ulx3s-cnv", "ulx3s-85f", "cnv32", 0, "ste", 0.0, 20_000, None),
]


def _random_cnv32(path: Path) -> None:
    """cnv on 3x32x32 with seeded random weights and BatchNorm statistics."""
    import numpy as np
    import torch

    from bnnforge.modelfile import save
    from bnnforge.nn import build

    torch.manual_seed(0)
    model = build("cnv", (3, 32, 32), 10).eval()
    rng = np.random.default_rng(0)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d | torch.nn.BatchNorm1d):
            m.running_mean.copy_(torch.tensor(rng.normal(0, 3, m.num_features)))
    save(model, path, (3, 32, 32), meta={"dataset": "random", "name": "cnv32"})


def _compile(model, folder, board, fps):
    """compile --board at ``fps``; when out of reach, the fastest folding that fits (and why)."""
    try:
        return compile_model(model, folder, board=board, fps=fps), None
    except ValueError as exc:
        if fps is None:
            raise
        return compile_model(model, folder, board=board), str(exc)


def run(name, board, arch, epochs, quantizer, acc_target, fps_target, latency_us, out: Path,
        models: Path | None) -> dict:
    start = time.perf_counter()
    model = (models or out) / f"{arch}.bnn"
    if not model.exists() and arch == "cnv32":
        _random_cnv32(model)
    elif not model.exists():
        train_model(arch, "mnist5k", quantizer, model, epochs=epochs, shift=1, progress=False)
    folder = out / name
    report, why = _compile(model, folder, board, fps_target)
    clock = report["compile"]["clock_mhz"]
    graph = load_graph(folder)
    cycles = float(steady_cycles_per_frame(graph))
    latency = int(simulate_timing(graph, 1).latency_cycles)
    row = {"target": name, "board": board, "arch": arch,
           "accuracy": report["model"].get("accuracy_reference") or 0.0,
           "cycles_per_frame": cycles,
           "clock_mhz": clock, "timing": report["compile"].get("timing"),
           "fps": clock * 1e6 / cycles, "latency_cycles": latency,
           "latency_us": latency / clock, "fps_out_of_reach": why}
    try:
        result = build_board(folder, board, progress=False, clock_mhz=clock)
        row.update({k: result[k] for k in ("luts_used", "ffs_used", "bram_used", "fmax_mhz")})
    except BitstreamError as exc:
        row["build_error"] = str(exc)
        row.update({k: exc.report.get(k) for k in ("luts_used", "fmax_mhz")})
    fmax = row.get("fmax_mhz") or 0.0
    row["meets_clock"] = bool(fmax >= clock)
    if row.get("luts_used"):
        row["fps_per_lut4"] = row["fps"] / row["luts_used"]
    row["met"] = bool(row["accuracy"] >= acc_target and row["meets_clock"]
                      and (fps_target is None or row["fps"] >= fps_target)
                      and (latency_us is None or row["latency_us"] < latency_us))
    row["wall_s"] = round(time.perf_counter() - start, 1)
    return row


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", choices=[t[0] for t in TARGETS])
    p.add_argument("--models", default=None, help="reuse trained models DIR/<arch>.bnn")
    p.add_argument("--out", default=None, help="keep the build folders here")
    args = p.parse_args()
    out = Path(args.out or tempfile.mkdtemp(prefix="bnnforge-targets-"))
    out.mkdir(parents=True, exist_ok=True)
    for target in TARGETS:
        if args.only and target[0] != args.only:
            continue
        row = run(*target, out, Path(args.models) if args.models else None)
        print(json.dumps(row), flush=True)
        goal = [f"{100 * target[5]:.0f}%"] if target[5] else []
        goal += [f"{target[6]:,} frames/s"] if target[6] else []
        goal += [f"latency < {target[7]:g} us"] if target[7] else []
        acc = f"{100 * row['accuracy']:.1f}%" if target[5] else "random weights"
        print(f"{row['target']}: {acc}, {row['fps']:,.0f} frames/s at "
              f"{row['clock_mhz']:g} MHz, latency {row['latency_us']:.2f} us, Fmax "
              f"{row.get('fmax_mhz') or 0:.1f} MHz (target {', '.join(goal)}): "
              f"{'met' if row['met'] else 'MISSED'}", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
