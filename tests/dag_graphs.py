"""Small branching graphs built by hand with the DAG IR (``add(name, op, inputs=[...])``), shared
by the folding, cost-model and board-estimate tests.

Importing this module skips the importing test module when the IR cannot build branching
graphs yet (no ``ResidualAdd``, ``Concat`` or ``DataflowGraph.consumers``).
"""

from __future__ import annotations

import numpy as np
import pytest

from bnnforge.compiler import ir

if not all(hasattr(ir, n) for n in ("ResidualAdd", "Concat")) or \
        not hasattr(ir.DataflowGraph, "consumers"):
    pytest.skip("the IR cannot build branching graphs yet", allow_module_level=True)

from bnnforge.compiler.ir import (  # noqa: E402
    BinaryConv,
    BinaryDense,
    Concat,
    DataflowGraph,
    InputLayer,
    MaxPool,
    ResidualAdd,
    ScoreLayer,
    pack_bits,
)

__all__ = ["concat_net", "conv", "dense", "forked_input_net", "input_layer", "residual_net",
           "scores", "side_branch_net"]


def _weights(rng: np.random.Generator, channels: int, k: int) -> np.ndarray:
    return pack_bits(rng.random((channels, k)) < 0.5)


def input_layer(shape: tuple) -> InputLayer:
    return InputLayer(in_shape=shape, out_shape=shape, bits=1)


def conv(rng, shape: tuple, channels: int, kernel: int = 3, pad: int = 1,
         emit: str = "bits") -> BinaryConv:
    """A stride-1 binary convolution of ``shape`` to ``channels`` channels."""
    c, h, w = shape
    oh, ow = h + 2 * pad - kernel + 1, w + 2 * pad - kernel + 1
    k = c * kernel * kernel
    thresholds = None if emit == "popcount" else rng.integers(0, k + 1, channels)
    return BinaryConv(in_shape=shape, out_shape=(channels, oh, ow), k=k, channels=channels,
                      weights=_weights(rng, channels, k), thresholds=thresholds,
                      kernel=(kernel, kernel), stride=(1, 1), padding=(pad, pad), emit=emit)


def dense(rng, shape: tuple, channels: int, emit: str = "bits") -> BinaryDense:
    k = int(np.prod(shape))
    thresholds = None if emit == "popcount" else rng.integers(0, k + 1, channels)
    return BinaryDense(in_shape=shape, out_shape=(channels,), k=k, channels=channels,
                       weights=_weights(rng, channels, k), thresholds=thresholds, emit=emit)


def scores(rng, shape: tuple, classes: int = 10) -> ScoreLayer:
    k = int(np.prod(shape))
    return ScoreLayer(in_shape=shape, out_shape=(classes,), k=k, channels=classes,
                      weights=_weights(rng, classes, k), mul=np.ones(classes, np.int64),
                      add=np.zeros(classes, np.int64))


def residual_net(seed: int = 0, short: str = "bits") -> DataflowGraph:
    """input (1,8,8) -> conv0 (8ch) -> [conv1 popcount, shortcut] -> add0 -> pool0 -> fc0 ->
    scores. The shortcut is conv0's stream itself (``short="bits"``: conv0 forks) or a 1x1
    popcount convolution of it (``short="popcount"``: conv0 forks into two convolutions)."""
    rng = np.random.default_rng(seed)
    g = DataflowGraph("residual")
    g.add("input", input_layer((1, 8, 8)), inputs=[])
    g.add("conv0", conv(rng, (1, 8, 8), 8), inputs=["input"])
    g.add("conv1", conv(rng, (8, 8, 8), 8, emit="popcount"), inputs=["conv0"])
    if short == "bits":
        g.add("add0", ResidualAdd(in_shape=(8, 8, 8), out_shape=(8, 8, 8), main_k=72,
                                  thresholds=rng.integers(0, 73, (2, 8))),
              inputs=["conv1", "conv0"])
    else:
        g.add("proj", conv(rng, (8, 8, 8), 8, kernel=1, pad=0, emit="popcount"),
              inputs=["conv0"])
        g.add("add0", ResidualAdd(in_shape=(8, 8, 8), out_shape=(8, 8, 8), main_k=72,
                                  short="popcount", short_k=8,
                                  thresholds=rng.integers(0, 73, (9, 8))),
              inputs=["conv1", "proj"])
    g.add("pool0", MaxPool(in_shape=(8, 8, 8), out_shape=(8, 4, 4)), inputs=["add0"])
    g.add("fc0", dense(rng, (8, 4, 4), 32), inputs=["pool0"])
    g.add("scores", scores(rng, (32,)), inputs=["fc0"])
    return g


def side_branch_net(seed: int = 0, ppt: int = 1) -> DataflowGraph:
    """The input forks into a convolution branch (conv0 -> pool0 -> fcA, popcount) and a dense
    stage reading the input stream itself (fcB, added last so that fcA, a vector stage, is the
    node before it in graph order); add0 joins them (a (32,) vector), then scores."""
    rng = np.random.default_rng(seed)
    g = DataflowGraph("side")
    g.add("input", input_layer((1, 8, 8)), inputs=[], pixels_per_transfer=ppt)
    g.add("conv0", conv(rng, (1, 8, 8), 8), inputs=["input"])
    g.add("pool0", MaxPool(in_shape=(8, 8, 8), out_shape=(8, 4, 4)), inputs=["conv0"])
    g.add("fcA", dense(rng, (8, 4, 4), 32, emit="popcount"), inputs=["pool0"])
    g.add("fcB", dense(rng, (1, 8, 8), 32), inputs=["input"])
    g.add("add0", ResidualAdd(in_shape=(32,), out_shape=(32,), main_k=128,
                              thresholds=rng.integers(0, 129, (2, 32))),
          inputs=["fcA", "fcB"])
    g.add("scores", scores(rng, (32,)), inputs=["add0"])
    return g


def concat_net(seed: int = 0) -> DataflowGraph:
    """input (1,8,8) -> conv0 (8ch) -> [conv1a (4ch), conv1b (4ch)] -> cat0 (8ch) -> pool0 ->
    fc0 -> scores."""
    rng = np.random.default_rng(seed)
    g = DataflowGraph("concat")
    g.add("input", input_layer((1, 8, 8)), inputs=[])
    g.add("conv0", conv(rng, (1, 8, 8), 8), inputs=["input"])
    g.add("conv1a", conv(rng, (8, 8, 8), 4), inputs=["conv0"])
    g.add("conv1b", conv(rng, (8, 8, 8), 4, kernel=1, pad=0), inputs=["conv0"])
    g.add("cat0", Concat(in_shape=(8, 8, 8), out_shape=(8, 8, 8), parts=(4, 4)),
          inputs=["conv1a", "conv1b"])
    g.add("pool0", MaxPool(in_shape=(8, 8, 8), out_shape=(8, 4, 4)), inputs=["cat0"])
    g.add("fc0", dense(rng, (8, 4, 4), 16), inputs=["pool0"])
    g.add("scores", scores(rng, (16,)), inputs=["fc0"])
    return g


def forked_input_net(seed: int = 0) -> DataflowGraph:
    """The input (1,8,8) forks into two dense stages, fcA (popcount) and fcB, that add0 joins
    (a (32,) vector), then scores: no window generator, so the input's transfer rate is the
    slowest stage (64 cycles per frame at one pixel a transfer)."""
    rng = np.random.default_rng(seed)
    g = DataflowGraph("forked")
    g.add("input", input_layer((1, 8, 8)), inputs=[])
    g.add("fcA", dense(rng, (1, 8, 8), 32, emit="popcount"), inputs=["input"])
    g.add("fcB", dense(rng, (1, 8, 8), 32), inputs=["input"])
    g.add("add0", ResidualAdd(in_shape=(32,), out_shape=(32,), main_k=64,
                              thresholds=rng.integers(0, 65, (2, 32))), inputs=["fcA", "fcB"])
    g.add("scores", scores(rng, (32,)), inputs=["add0"])
    return g
