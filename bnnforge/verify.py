"""Verify a build folder's RTL against the bit-exact reference executor (``bnnforge verify``).

The RTL runs under cocotb (:func:`bnnforge.hw.harness.run_rtl`, Icarus or Verilator); the expected
values come from :func:`bnnforge.sim.reference` — two independent implementations side by side.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from .buildfolder import require_build, update_report
from .compiler import load_graph

__all__ = ["verify_build", "choose_frames"]

_SIMULATORS = ("icarus", "verilator")


def load_inputs(path, shape: tuple) -> np.ndarray:
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"inputs file {path} not found; give a .npy of uint8 frames "
                         f"(N, {', '.join(map(str, shape))})")
    try:
        x = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise ValueError(f"inputs file {path} is not a readable .npy array ({exc})") from None
    if not isinstance(x, np.ndarray):
        raise ValueError(f"inputs file {path} holds several arrays; save one array with np.save")
    if x.dtype != np.uint8:
        raise ValueError(f"inputs file {path} holds {x.dtype} values; frames must be uint8 "
                         "pixels 0..255 (convert floats in [0, 1] with "
                         "np.round(x * 255).astype(np.uint8))")
    if x.ndim != len(shape) + 1 or tuple(x.shape[1:]) != tuple(shape) or x.shape[0] < 1:
        raise ValueError(f"inputs file {path} holds shape {tuple(x.shape)}, but the model takes "
                         f"frames (N, {', '.join(map(str, shape))}) with N >= 1")
    return x


def choose_frames(graph, frames: int = 100, inputs=None, seed: int = 0) -> tuple[np.ndarray, str]:
    """Return up to ``frames`` uint8 frames to verify with, and where they come from.

    ``inputs`` (a .npy file) first; else the held-out test frames of the model's dataset
    (``graph.meta["dataset"]``) when it is a bundled one; else seeded random frames.
    """
    shape = tuple(graph.input_shape)
    if inputs is not None:
        return load_inputs(inputs, shape)[:frames], f"file:{inputs}"
    from .nn.datasets import DATASETS, load_dataset

    name = graph.meta.get("dataset")
    if name in DATASETS:
        data = load_dataset(name)
        if tuple(data.x_test.shape[1:]) == shape:
            return data.x_test[:frames], f"dataset:{name}"
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (frames,) + shape, dtype=np.uint8), f"random:seed={seed}"


def make_stimulus(graph, frames: int, input_gap: float, output_stall: float,
                  seed: int) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Return the seeded stimulus shared by the RTL run and the timing model.

    ``in_gaps[n]``: idle cycles before input transfer ``n`` (geometric, mean p / (1 - p); a
    transfer carries the input node's ``pixels_per_transfer`` pixels) and
    ``out_ready[k]``: the output's ready in cycle ``k`` (low with probability ``output_stall``;
    1 after the array, which covers several times the expected run).
    """
    from .sim import simulate_timing

    for name, value in (("input_gap", input_gap), ("output_stall", output_stall)):
        if not 0.0 <= float(value) < 1.0:
            raise ValueError(f"{name} must be a probability in [0, 1), not {value!r}")
    seq_in, seq_out = np.random.SeedSequence(seed).spawn(2)
    pixels = int(np.prod(graph.input_shape[1:])) if len(graph.input_shape) == 3 else 1
    total = frames * (pixels // graph.pixels_per_transfer())
    in_gaps = out_ready = None
    if input_gap > 0:
        in_gaps = np.random.default_rng(seq_in).geometric(1.0 - input_gap, total) - 1
    if output_stall > 0:
        base = simulate_timing(graph, frames, in_gaps=in_gaps, record=False).total_cycles
        length = int(3 * base / (1.0 - output_stall)) + 1024
        out_ready = np.random.default_rng(seq_out).random(length) >= output_stall
    return in_gaps, out_ready


def verify_build(folder: str | os.PathLike, simulator: str = "icarus", frames: int = 100,
                 inputs: str | os.PathLike | None = None, input_gap: float = 0.0,
                 output_stall: float = 0.0, seed: int = 0, progress: bool = True) -> dict:
    """Run the build folder's RTL on ``frames`` frames and compare every output with the reference.

    Parameters
    ----------
    folder
        A compiled build folder (``graph.json``, ``weights.npz``, ``rtl/bnnforge_top.v``).
    simulator
        ``"icarus"`` or ``"verilator"``.
    frames
        How many frames to run (at most; a dataset or inputs file may hold fewer).
    inputs
        A .npy of uint8 frames of the model's input shape; default: the model's held-out test
        frames when its dataset is bundled, else seeded random frames.
    input_gap, output_stall, seed
        Idle input cycles and output back-pressure, as in :func:`bnnforge.hw.harness.run_rtl`.
    progress
        Show a progress bar over frames.

    Returns
    -------
    dict
        The report's ``verify`` section (also written to ``folder/report.json``): ``simulator``,
        ``frames``, ``value_mismatches`` (frames whose scores or class differ from the
        reference), ``wall_s``, ``input_gap``, ``output_stall``, ``source`` (where the frames
        came from).

    Raises
    ------
    ValueError
        On a bad simulator, frame count or inputs file, or a folder without RTL.
    RuntimeError
        When the RTL does not build or its simulation fails (timeout, X outputs, extra output).
    """
    start = time.perf_counter()
    if simulator not in _SIMULATORS:
        raise ValueError(f"unknown simulator {simulator!r}; choose icarus or verilator")
    if isinstance(frames, bool) or not isinstance(frames, (int, np.integer)) or frames < 1:
        raise ValueError(f"frames must be a positive number of frames, not {frames!r}")
    folder = require_build(folder)
    rtl = folder / "rtl" / "bnnforge_top.v"
    if not rtl.is_file():
        raise ValueError(f"{rtl} is missing; run 'bnnforge compile MODEL -o {folder}' to emit "
                         "the RTL first")
    graph = load_graph(folder)
    x, source = choose_frames(graph, int(frames), inputs, seed)

    from .hw.harness import run_rtl
    from .sim import reference

    expected = np.asarray(reference(graph, x), dtype=np.int64)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(x), desc=f"verify ({simulator})", unit="frame")

    def advance(done: int, total: int) -> None:
        bar.update(done - bar.n)

    try:
        in_gaps, out_ready = make_stimulus(graph, len(x), input_gap, output_stall, seed)
        result = run_rtl(rtl.parent, x, simulator, input_gap=input_gap,
                         output_stall=output_stall, seed=seed,
                         progress=advance if bar is not None else None,
                         in_gaps=in_gaps, out_ready=out_ready)
        if bar is not None:
            bar.update(len(x) - bar.n)
    finally:
        if bar is not None:
            bar.close()
    bad = np.any(result["scores"] != expected, axis=1) | \
        (result["classes"] != expected.argmax(axis=1))
    from .sim import simulate_timing

    timing = simulate_timing(graph, len(x), in_gaps=in_gaps, out_ready=out_ready, record=False)
    cycle_bad = int(np.count_nonzero(timing.output_cycles != result["out_cycles"])
                    + np.count_nonzero(timing.input_cycles != result["in_cycles"]))
    section = {"simulator": simulator, "frames": int(len(x)),
               "value_mismatches": int(np.count_nonzero(bad)),
               "cycle_mismatches": cycle_bad,
               "handshakes_checked": int(len(result["out_cycles"]) + len(result["in_cycles"])),
               "rtl_cycles": int(result["cycles"]),
               "wall_s": round(time.perf_counter() - start, 3),
               "input_gap": float(input_gap), "output_stall": float(output_stall),
               "source": source}
    update_report(folder, "verify", section)
    return section
