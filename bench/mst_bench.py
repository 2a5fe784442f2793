"""MST compression benchmark: time to build one layer's tree (Hamming matrix + minimum-depth MST).

Prints the wall time of each step for a 512-channel layer with K = 4608 (a 3x3x512 convolution),
on random rows and on clustered rows (small and complement distances, as trained layers have),
with and without a depth bound. The target is a tree in under 5 s; nothing here gates CI.

Usage: ``python bench/mst_bench.py [--channels 512] [--k 4608] [--repeat 3]``
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")       # one core, as the targets are stated

import numpy as np  # noqa: E402

from bnnforge.compiler.ir import pack_bits  # noqa: E402
from bnnforge.compiler.mst import hamming_matrix, mst_tree  # noqa: E402


def _rows(kind: str, c: int, k: int, rng: np.random.Generator) -> np.ndarray:
    if kind == "random":
        return rng.random((c, k)) < 0.5
    centers = rng.random((max(1, c // 16), k)) < 0.5
    rows = centers[rng.integers(0, len(centers), c)] ^ (rng.random((c, k)) < 0.05)
    rows[rng.random(c) < 0.3] ^= True
    return rows


def _best(repeat: int, fn, *args, **kwargs):
    times, out = [], None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn(*args, **kwargs)
        times.append(time.perf_counter() - t)
    return min(times), out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--channels", type=int, default=512)
    ap.add_argument("--k", type=int, default=4608)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    c, k = args.channels, args.k
    rng = np.random.default_rng(0)
    print(f"MST tree of a {c}-channel layer, K = {k} (best of {args.repeat})")
    print(f"{'rows':<10}{'max_depth':>10}{'hamming s':>11}{'tree s':>9}{'total s':>9}"
          f"{'depth':>7}{'roots':>7}{'ratio':>8}")
    for kind in ("random", "clustered"):
        packed = pack_bits(_rows(kind, c, k, rng))
        t_ham, dist = _best(args.repeat, hamming_matrix, packed, k)
        for max_depth in (None, 4):
            t_tree, tree = _best(args.repeat, mst_tree, dist, k,
                                 max_depth=max_depth)
            ratio = c * k / tree.xnor_mst
            print(f"{kind:<10}{str(max_depth):>10}{t_ham:>11.3f}{t_tree:>9.3f}"
                  f"{t_ham + t_tree:>9.3f}{tree.max_depth:>7}{len(tree.roots):>7}{ratio:>8.2f}")


if __name__ == "__main__":
    main()
