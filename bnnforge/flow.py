"""The steps of the flow as library functions; the CLI is a thin layer over these."""

from __future__ import annotations

import math
import os
import time
from pathlib import Path

import numpy as np

from .buildfolder import staged_folder, update_report
from .compiler.lower import lower
from .compiler.plan import fifo_depth_table
from .compiler.serialize import load_graph, save_graph
from .modelfile import load, save
from .sim.reference import reference

__all__ = ["train_model", "load_model", "compile_model", "accuracy_section", "layer_table",
           "fold_graph"]


def train_model(arch: str, dataset: str, quantizer: str, output: str | os.PathLike, *,
                epochs: int = 10, input_bits: int = 1, seed: int = 0, lr: float | None = None,
                batch_size: int | None = None, mst_reg: float = 0.0, shift: int = 0,
                progress: bool = True) -> dict:
    """Train ``arch`` on ``dataset`` with ``quantizer`` and save it to ``output``.

    Returns the metadata stored with the model (accuracy included).
    """
    import torch

    from .nn.archs import build
    from .nn.datasets import load_dataset
    from .nn.train import evaluate, train

    if epochs < 1:
        raise ValueError(f"--epochs must be at least 1, not {epochs}")
    out = Path(output)
    if not out.parent.exists():
        raise ValueError(f"cannot write {out}: folder {out.parent} does not exist")
    data = load_dataset(dataset)
    torch.manual_seed(seed)
    model = build(arch, data.input_shape, data.num_classes, quantizer=quantizer,
                  input_bits=input_bits)
    kwargs = {k: v for k, v in (("lr", lr), ("batch_size", batch_size)) if v is not None}
    start = time.perf_counter()
    train(model, data, epochs=epochs, seed=seed, progress=progress, mst_reg=mst_reg,
          shift=shift, **kwargs)
    seconds = time.perf_counter() - start
    accuracy = evaluate(model, data.x_test, data.y_test)
    meta = {"name": arch, "arch": arch, "dataset": dataset, "quantizer": quantizer,
            "input_bits": input_bits, "epochs": epochs, "seed": seed, "mst_reg": mst_reg,
            "shift": shift,
            "accuracy_torch": round(float(accuracy), 6), "test_frames": int(len(data.y_test))}
    save(model, out, data.input_shape, meta)
    meta["train_seconds"] = seconds
    return meta


def accuracy_section(model, graph, meta: dict, frames: int | None = None) -> dict:
    """Compare torch and the reference on the model's held-out frames (if its dataset is known).

    Returns the report's ``model`` section: name, dataset, accuracies and disagreements.
    """
    from .nn.datasets import DATASETS, load_dataset
    from .nn.train import predict_scores

    section = {"name": meta.get("name", graph.name), "dataset": meta.get("dataset"),
               "accuracy_torch": None, "accuracy_reference": None, "disagreements": None,
               "frames": 0}
    dataset = meta.get("dataset")
    if dataset not in DATASETS:
        return section
    data = load_dataset(dataset)
    x, y = data.x_test, data.y_test
    if frames is not None:
        x, y = x[:frames], y[:frames]
    if tuple(x.shape[1:]) != tuple(graph.input_shape):
        return section
    torch_pred = np.argmax(predict_scores(model, x), axis=1)
    ref_pred = np.argmax(reference(graph, x), axis=1)
    section.update(accuracy_torch=float(np.mean(torch_pred == y)),
                   accuracy_reference=float(np.mean(ref_pred == y)),
                   disagreements=int(np.sum(torch_pred != ref_pred)), frames=int(len(y)))
    return section


def layer_table(graph) -> list[dict]:
    """Return one row per stage: name, op, shapes, K/channels, PE/SIMD and cycles per frame."""
    from .compiler.cycles import pipeline_cycles

    cycles = pipeline_cycles(graph)
    rows = []
    for name, op in graph:
        row = {"name": name, "op": type(op).__name__, "in_shape": list(op.in_shape),
               "out_shape": list(op.out_shape), "source": graph.attrs(name).get("source"),
               "pe": None, "simd": None, "cycles_per_frame": int(cycles[name])}
        if hasattr(op, "k"):
            row.update(k=int(op.k), channels=int(op.channels), input_bits=int(op.in_bits))
        fold = graph.attrs(name).get("fold")
        if fold:
            row.update(pe=int(fold["pe"]), simd=int(fold["simd"]), mst=bool(fold.get("mst")))
        rows.append(row)
    return rows


def fold_graph(graph, *, fps: float | None = None, clock_mhz: float = 100.0,
               luts: int | None = None, fold: list[str] | None = None, mst: bool = False,
               mst_max_depth: int | None = None):
    """Run ChooseFolding for a throughput target (``fps`` at ``clock_mhz``) or a LUT budget.

    With ``mst``, hidden binary layers become MST-compressed layers where that is estimated to
    take fewer LUTs than their cheapest dense folding (``ChooseFolding(mst=True)``), with trees
    of depth at most ``mst_max_depth`` (``None``: unbounded).
    """
    from .compiler.folding import ChooseFolding, FoldingError, parse_fold_overrides

    if fps is not None and luts is not None:
        raise FoldingError("give --fps or --luts, not both")
    if clock_mhz <= 0:
        raise FoldingError(f"--clock-mhz must be positive, not {clock_mhz}")
    target = None
    if fps is not None:
        if fps <= 0:
            raise FoldingError(f"--fps must be positive, not {fps}")
        # floor of clock / fps, safe against float rounding (1e8 / (1e8 / 576) is 575.99...)
        target = max(1, math.floor(clock_mhz * 1e6 / fps * (1 + 1e-9)))
    return ChooseFolding(target_cycles=target, luts=luts,
                         overrides=parse_fold_overrides(fold), mst=mst,
                         mst_max_depth=mst_max_depth).apply(graph)


def load_model(path: str | os.PathLike):
    """Load a bnnforge model file, or import a QONNX file (``.onnx``) in memory.

    The module has ``input_shape`` (one frame) and ``bnnforge_meta`` set, as
    :func:`bnnforge.load` gives them.
    """
    if str(path).lower().endswith(".onnx"):
        from .onnx_import import import_onnx

        model, input_shape, meta = import_onnx(path)
        model.input_shape, model.bnnforge_meta = tuple(input_shape), dict(meta)
        return model
    return load(path)


def compile_model(model_path: str | os.PathLike, output: str | os.PathLike, *,
                  fps: float | None = None, clock_mhz: float | None = None,
                  luts: int | None = None, fold: list[str] | None = None,
                  board: str | None = None, mst: bool = False,
                  mst_max_depth: int | None = None, rtl: bool = True) -> dict:
    """Compile a model file (or a QONNX file, imported in memory) into the build folder
    ``output``: graph files, RTL and report.json.

    With ``board`` the folding is the fastest that fits that board at its clock (or the cheapest
    that meets ``fps`` and fits); otherwise it follows ``fps`` at ``clock_mhz`` (default 100),
    ``luts`` or the default balance. ``mst`` lets the folding use MST-compressed layers where
    they are cheaper. ``mst_max_depth`` bounds the depth of every MST (channel order and
    MST-compressed layers; ``None``: unbounded). The folder is written in full or not at all.
    Returns the report.
    """
    from .compiler.cycles import pipeline_cycles

    start = time.perf_counter()
    if mst_max_depth is not None and (isinstance(mst_max_depth, bool)
                                      or not isinstance(mst_max_depth, int) or mst_max_depth < 1):
        raise ValueError(f"--mst-depth must be a positive whole number, not {mst_max_depth!r}")
    model = load_model(model_path)
    meta = model.bnnforge_meta
    name = str(meta.get("name") or Path(model_path).stem)
    graph = lower(model, model.input_shape, name=name,
                  meta={"dataset": meta.get("dataset"), "source": Path(model_path).name})
    timing = None
    if board is not None:
        from .boards import get_board
        from .boards.fit import fit_board

        profile = get_board(board)
        if luts is not None or fold:
            raise ValueError("--board chooses the folding itself; drop --luts/--fold, or "
                             "drop --board and fold by hand")
        # the folding, the family's pipeline and the clock the placed design should meet
        graph, profile, timing = fit_board(graph, profile, fps=fps, clock_mhz=clock_mhz,
                                           mst=mst, mst_max_depth=mst_max_depth)
        clock_mhz = float(profile.clock_mhz)
    else:
        clock_mhz = 100.0 if clock_mhz is None else float(clock_mhz)
        graph = fold_graph(graph, fps=fps, clock_mhz=clock_mhz, luts=luts, fold=fold, mst=mst,
                           mst_max_depth=mst_max_depth)
    from .boards.estimate import estimate_design_brams, estimate_design_luts
    from .compiler.mst import OrderChannelsByMST, analyse_graph
    from .sim.fifo_sizing import SizeFifos

    graph = SizeFifos().apply(graph)
    graph = OrderChannelsByMST(max_depth=mst_max_depth).apply(graph)
    with staged_folder(output) as tmp:
        save_graph(graph, tmp)
        reloaded = load_graph(tmp)
        if rtl:
            from .hw.generate import emit_verilog
            emit_verilog(reloaded, tmp)
        model_section = accuracy_section(model, reloaded, meta)
        update_report(tmp, "model", model_section)
        cycles = pipeline_cycles(reloaded)
        report = update_report(tmp, "compile", {
            "board": board,
            "clock_mhz": clock_mhz,
            "timing": timing,
            "pipeline": reloaded.meta.get("pipeline", "generic"),
            "target_fps": fps,
            "lut_budget": luts,
            "layers": layer_table(reloaded),
            "cycles_per_frame": int(max(cycles.values())),
            "bottleneck": max(cycles, key=lambda n: (cycles[n], n)),
            "fifo_depths": fifo_depth_table(reloaded),
            "mst": analyse_graph(reloaded),
            "mst_max_depth": mst_max_depth,
            "resources_estimate": {"luts": estimate_design_luts(reloaded,
                                                                reloaded.meta.get("family")),
                                   "brams": estimate_design_brams(reloaded)},
            "wall_s": round(time.perf_counter() - start, 3)})
    return report


def energy_profile(folder, family: str | None = None,
                   calibration: str | os.PathLike | None = None) -> tuple[str, dict | None]:
    """The energy family and coefficients for a build: the compile board's, else ``family``;
    with ``calibration`` (a JSON file, see :func:`read_calibration`) its values replace the
    family's."""
    from .buildfolder import read_report

    board = read_report(folder).get("compile", {}).get("board")
    if family is None and board:
        from .boards import get_board

        profile = get_board(board)
        family, coefficients = profile.family, dict(profile.energy)
    else:
        family, coefficients = family or "ice40up", None
    if calibration is not None:
        from .boards.profiles import FAMILY_ENERGY

        base = dict(coefficients if coefficients is not None else FAMILY_ENERGY[family])
        base.update(read_calibration(calibration))
        coefficients = base
    return family, coefficients


def read_calibration(path: str | os.PathLike) -> dict:
    """Read measured energy coefficients: a JSON object ``{"coefficients": {name: value}}``
    (names of :data:`bnnforge.boards.profiles.ENERGY_KEYS`, positive numbers in their units;
    any subset) with an optional ``"source"`` (how they were measured). Returns them as
    coefficient entries marked ``measured``. Raises ``ValueError`` naming the problem."""
    import json
    import sys

    from .boards.profiles import ENERGY_KEYS, FAMILY_ENERGY

    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"calibration file {path} does not exist") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"calibration file {path} is not valid JSON ({exc}); write "
                         '{"coefficients": {"static_mw": 0.1, ...}, "source": "..."}') from None
    values = doc.get("coefficients") if isinstance(doc, dict) else None
    if not isinstance(values, dict) or not values:
        raise ValueError(f"calibration file {path} has no \"coefficients\" object; write "
                         '{"coefficients": {"static_mw": 0.1, ...}, "source": "..."}')
    unknown = sorted(k for k in values if k not in ENERGY_KEYS)
    if unknown:
        raise ValueError(f"calibration file {path}: unknown coefficient(s) "
                         f"{', '.join(unknown)}; known: {', '.join(ENERGY_KEYS)}")
    source = f"calibration {path.name}" + (f": {doc['source']}" if doc.get("source") else "")
    units = {k: v["unit"] for k, v in FAMILY_ENERGY["ice40up"].items()}
    out = {}
    for key, value in values.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) \
                or not 0 < value <= sys.float_info.max:
            raise ValueError(f"calibration file {path}: {key} must be a positive number, "
                             f"not {value!r}")
        out[key] = {"value": float(value), "unit": units[key], "basis": "measured",
                    "range": [float(value), float(value)], "source": source}
    return out


def run_demo(output: str | os.PathLike = "demo-build", *, board: str = "icebreaker",
             arch: str = "tfc", dataset: str = "mnist5k", quantizer: str = "ste",
             epochs: int = 20, shift: int = 1, frames: int = 100,
             simulator: str = "verilator", fps: float | None = 200_000,
             clock_mhz: float | None = None, bitstream: bool = True,
             progress: bool = True) -> dict:
    """Run the whole flow on the embedded default and return the build folder's report.

    Trains ``arch`` on ``dataset`` (``epochs``, images moved by up to ``shift`` pixels; kept as
    ``output/model.bnn`` and reused when present), compiles it for ``board`` at ``clock_mhz``
    (``None``: the clock the timing-aware compile predicts the placed design meets) with the
    cheapest folding that reaches ``fps`` (``None``: the fastest that fits), simulates 10,000
    frames, verifies ``frames`` frames as RTL, builds the bitstream and prints one summary. The
    defaults: tfc on the iCEBreaker (iCE40UP5K), folded for 200,000 frames/s.
    """
    from .boards import get_board
    from .buildfolder import read_report

    get_board(board)                # an unknown board fails before anything is trained
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    model_path = out / "model.bnn"
    build = out / "build"

    def say(step: str) -> None:
        print(f"\n== {step}", flush=True)

    say(f"1/5 train {arch} on {dataset} ({quantizer}, {epochs} epochs, shifts of up to "
        f"{shift} px)")
    if model_path.exists():
        print(f"reusing {model_path} (delete it to retrain)")
    else:
        meta = train_model(arch, dataset, quantizer, model_path, epochs=epochs, shift=shift,
                           progress=progress)
        print(f"held-out accuracy {100 * meta['accuracy_torch']:.2f}% "
              f"({meta['train_seconds']:.0f} s)")
    say(f"2/5 compile for {board}")
    compile_model(model_path, build, board=board, fps=fps, clock_mhz=clock_mhz)
    say("3/5 simulate 10,000 frames (cycle-accurate)")
    from .simulate import simulate_build

    family, coefficients = energy_profile(build)
    simulate_build(build, frames=10000, family=family, coefficients=coefficients,
                   progress=progress)
    say(f"4/5 verify {frames} frames as RTL on {simulator}")
    from .verify import verify_build

    verify_build(build, simulator=simulator, frames=frames, progress=progress)
    if bitstream:
        say(f"5/5 bitstream for {board} (Yosys + nextpnr via YoWASP)")
        from .build import build_board

        build_board(build, board, progress=progress,
                    clock_mhz=read_report(build)["compile"]["clock_mhz"])
    report = read_report(build)
    print("\n" + summary_table(report))
    return report


def summary_table(report: dict) -> str:
    """A short table of the report a person can read at a glance."""
    m, c = report.get("model", {}), report.get("compile", {})
    s, v, b = report.get("sim", {}), report.get("verify", {}), report.get("build", {})

    def pct(x):
        return "-" if x is None else f"{100 * x:.2f}%"

    hw_acc = m.get("accuracy_reference")
    rows = [
        ("model", f"{m.get('name')} on {m.get('dataset')} ({m.get('frames')} held-out frames)"),
        ("accuracy", f"torch {pct(m.get('accuracy_torch'))}, hardware {pct(hw_acc)}, "
                     f"disagreements {m.get('disagreements')}"),
        ("board", f"{b.get('board', c.get('board', '-'))} {b.get('device', '')}".strip()),
        ("cycles/frame", f"{s.get('cycles_per_frame', c.get('cycles_per_frame'))} "
                         f"(bottleneck {s.get('bottleneck', c.get('bottleneck'))})"),
        ("throughput", f"{s.get('fps', 0):,.0f} frames/s at {s.get('clock_mhz')} MHz"),
        ("latency", f"{s.get('latency_cycles')} cycles = "
                    f"{(s.get('latency_cycles') or 0) / (s.get('clock_mhz') or 1):.2f} µs"),
        ("energy", f"{s.get('energy_nj_per_frame', 0):.2f} nJ/frame (estimate)"),
        ("RTL check", f"{v.get('frames')} frames on {v.get('simulator')}: "
                      f"{v.get('value_mismatches')} value, {v.get('cycle_mismatches')} cycle "
                      "mismatches"),
        ("resources", f"{b.get('luts_used', '-')}/{b.get('luts_total', '-')} LUTs, "
                      f"{b.get('ffs_used', '-')} FFs, {b.get('bram_used', '-')}/"
                      f"{b.get('bram_total', '-')} BRAM"),
        ("timing", f"Fmax {b.get('fmax_mhz', 0):.1f} MHz at a {b.get('clock_mhz', '-')} MHz "
                   "clock" if b.get("fmax_mhz") else "-"),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {val}" for k, val in rows)
