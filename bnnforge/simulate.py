"""Simulate a build folder (``bnnforge sim``): values, cycles and energy, into report.json.

Values come from :func:`bnnforge.sim.reference`, cycles from
:func:`bnnforge.sim.simulate_timing` (back-to-back input, output always ready), energy from
:func:`bnnforge.sim.estimate_energy`. The ``sim`` section of ``report.json`` gets the keys of
docs/design.md §6 plus ``layers``; ``sim_cycles.png`` and ``sim_energy.png`` are drawn beside it.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from .buildfolder import read_report, require_build, update_report
from .compiler import load_graph
from .compiler.plan import fifo_depth_table

__all__ = ["board_uses_pll", "simulate_build", "simulation_frames"]


def simulation_frames(graph, frames: int, seed: int = 0) -> tuple[np.ndarray, str]:
    """Return ``frames`` uint8 frames and where they come from.

    The held-out test frames of the model's dataset (``graph.meta["dataset"]``) when it is a
    bundled one, repeated to ``frames``; else seeded random frames.
    """
    from .nn.datasets import DATASETS, load_dataset

    shape = tuple(graph.input_shape)
    name = graph.meta.get("dataset")
    if name in DATASETS:
        x = load_dataset(name).x_test
        if tuple(x.shape[1:]) == shape and len(x):
            return x[np.arange(frames) % len(x)], f"dataset:{name}"
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (frames, *shape), dtype=np.uint8), f"random:seed={seed}"


def _plot_cycles(path: Path, layers: list[dict], cycles_per_frame: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [layer["name"] for layer in layers]
    values = [layer["cycles_per_frame"] for layer in layers]
    colors = ["tab:red" if layer["bottleneck"] else "tab:blue" for layer in layers]
    fig, ax = plt.subplots(figsize=(max(4.0, 0.9 * len(names) + 2), 3.5))
    ax.bar(names, values, color=colors)
    ax.axhline(cycles_per_frame, color="black", linestyle="--", linewidth=1,
               label=f"pipeline: {cycles_per_frame:,.0f} cycles/frame")
    ax.set_ylabel("busy cycles per frame")
    ax.set_title("per-layer cycles per frame (bottleneck in red)")
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100, metadata={"Software": None})
    plt.close(fig)


def _plot_energy(path: Path, breakdown: dict, family: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = sorted(breakdown, key=lambda k: -breakdown[k])
    values = [breakdown[k] for k in names]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.barh(names[::-1], values[::-1], color="tab:green")
    ax.set_xlabel("nJ per frame")
    ax.set_title(f"energy per frame: {sum(values):,.3g} nJ ({family})")
    fig.tight_layout()
    fig.savefig(path, dpi=100, metadata={"Software": None})
    plt.close(fig)


def board_uses_pll(folder, clock_mhz: float) -> bool:
    """Whether the report's compile board makes ``clock_mhz`` with its PLL."""
    board = read_report(folder).get("compile", {}).get("board")
    if not board:
        return False
    from .boards import get_board

    try:
        return get_board(board).with_clock(clock_mhz).uses_pll
    except ValueError:
        return True


def simulate_build(folder: str | os.PathLike, frames: int = 1000,
                   clock_mhz: float | None = None, family: str = "ice40up",
                   progress: bool = True, coefficients: dict | None = None,
                   seed: int = 0, pll: bool | None = None) -> dict:
    """Simulate ``frames`` frames of a build folder's accelerator; write report.json ``sim``.

    Parameters
    ----------
    folder
        A compiled build folder (``graph.json``, ``weights.npz``).
    frames
        Frames to stream through, back to back.
    clock_mhz
        The clock for frames per second and static energy; default the report's
        ``compile.clock_mhz``, else 100.
    family
        FPGA family whose energy coefficients apply (``ice40up``, ``ecp5``) unless
        ``coefficients`` are given (a board profile's).
    progress
        Show a progress bar over the steps.
    pll
        Whether the PLL makes the clock (its fixed power counts); default: when the report's
        compile board makes ``clock_mhz`` with its PLL.

    Returns
    -------
    dict
        The ``sim`` section: ``frames``, ``cycles_per_frame``, ``latency_cycles``,
        ``clock_mhz``, ``fps``, ``energy_nj_per_frame``, ``energy_breakdown``,
        ``energy_basis`` (each breakdown term: measured-derived or estimate), ``bottleneck``,
        ``fifo_depths``, ``wall_s``, ``layers`` (per stage: ``name``, ``cycles_per_frame``,
        ``busy``, ``bottleneck``).
    """
    from .sim import estimate_energy, reference, simulate_timing

    start = time.perf_counter()
    if isinstance(frames, bool) or not isinstance(frames, (int, np.integer)) or frames < 1:
        raise ValueError(f"frames must be a positive number of frames, not {frames!r}")
    folder = require_build(folder)
    if clock_mhz is None:
        clock_mhz = read_report(folder).get("compile", {}).get("clock_mhz") or 100.0
    if not isinstance(clock_mhz, (int, float)) or clock_mhz <= 0:
        raise ValueError(f"clock_mhz must be positive, not {clock_mhz!r}")
    if pll is None:
        pll = board_uses_pll(folder, float(clock_mhz))
    graph = load_graph(folder)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=4, desc="sim", unit="step")

    def step(what: str) -> None:
        if bar is not None:
            bar.set_postfix_str(what)
            bar.update(1)

    try:
        x, _ = simulation_frames(graph, int(frames), seed)
        reference(graph, x)
        step("values")
        timing = simulate_timing(graph, int(frames), record=False)
        step("cycles")
        energy = estimate_energy(graph, timing, coefficients=coefficients, family=family,
                                 clock_mhz=float(clock_mhz), pll=bool(pll))
        step("energy")
        cpf = float(timing.cycles_per_frame)
        layers = []
        for name in graph.order():
            busy = int(timing.stage_busy.get(name, 0))
            layers.append({"name": name, "cycles_per_frame": busy,
                           "busy": round(busy / cpf, 4) if cpf else 0.0,
                           "bottleneck": name == timing.bottleneck})
        section = {
            "frames": int(frames),
            "cycles_per_frame": round(cpf, 3),
            "latency_cycles": int(timing.latency_cycles),
            "clock_mhz": float(clock_mhz),
            "fps": round(float(clock_mhz) * 1e6 / cpf, 3) if cpf else 0.0,
            "energy_nj_per_frame": round(energy["energy_nj_per_frame"], 6),
            "energy_breakdown": {k: round(v, 6) for k, v in energy["breakdown"].items()},
            "energy_basis": energy["basis"],
            "bottleneck": timing.bottleneck,
            "fifo_depths": fifo_depth_table(graph),
            "layers": layers,
        }
        _plot_cycles(folder / "sim_cycles.png", layers, cpf)
        _plot_energy(folder / "sim_energy.png", energy["breakdown"], family)
        step("plots")
    finally:
        if bar is not None:
            bar.close()
    section["wall_s"] = round(time.perf_counter() - start, 3)
    update_report(folder, "sim", section)
    return section
