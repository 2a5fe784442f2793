"""bnnforge benchmarks (``make bench``): throughput measured side by side in one run.

Each section prints what it measured; nothing here gates CI.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

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


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--frames", type=int, default=20000)
    args = p.parse_args(argv)
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    bench_reference(args.frames)
    return 0


if __name__ == "__main__":
    sys.exit(main())
