"""Bit-exact reference executor of the dataflow IR: vectorized numpy over packed bits.

Feature maps are held as (N, H, W, C) arrays (the stream order), bits as booleans, popcounts
(stages with ``emit="popcount"``) as int64; binary dot products XOR 64-bit words and count bits
with ``np.bitwise_count``. Stages run in the graph's topological order, each on its producers'
outputs in port order.
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from ..compiler.ir import (
    BinaryConv,
    BinaryDense,
    Concat,
    DataflowGraph,
    InputLayer,
    MaxPool,
    ResidualAdd,
    ScoreLayer,
)

__all__ = ["reference", "check_frames"]

# Largest (frames x output channels) block one XOR-popcount step holds (cache-sized).
_CHUNK_WORDS = 1 << 16


def check_frames(graph: DataflowGraph, x) -> np.ndarray:
    """Return ``x`` as uint8 frames of the graph's input shape, or raise a ValueError saying why."""
    if not isinstance(x, np.ndarray):
        raise ValueError(f"frames must be a numpy array of uint8 pixels, got {type(x).__name__}")
    if x.dtype != np.uint8:
        if np.issubdtype(x.dtype, np.integer) and x.size and (x.min() < 0 or x.max() > 255):
            raise ValueError(f"frames must be uint8 pixels 0..255; got {x.dtype} values "
                             f"{int(x.min())}..{int(x.max())}")
        if not np.issubdtype(x.dtype, np.integer):
            raise ValueError(f"frames must be uint8 pixels 0..255, got {x.dtype}; convert "
                             "floats in [0, 1] with np.round(x * 255).astype(np.uint8)")
        x = x.astype(np.uint8)
    shape = graph.input_shape
    if x.ndim != len(shape) + 1 or tuple(x.shape[1:]) != tuple(shape):
        raise ValueError(f"frames have shape {tuple(x.shape)}, but the model takes "
                         f"(N, {', '.join(map(str, shape))})")
    return x


def _words(bits: np.ndarray) -> np.ndarray:
    """Pack (..., K) booleans into (..., ceil(K/64)) uint64 words (zero padding)."""
    packed = np.packbits(bits, axis=-1, bitorder="little")
    pad = (-packed.shape[-1]) % 8
    if pad:
        packed = np.concatenate(
            [packed, np.zeros(packed.shape[:-1] + (pad,), dtype=np.uint8)], axis=-1)
    return np.ascontiguousarray(packed).view(np.uint64)


class _Weights:
    """Per-op caches of weights in the forms the executor uses."""

    def __init__(self):
        self._cache: dict[int, tuple] = {}

    def get(self, op) -> tuple:
        key = id(op)
        if key not in self._cache:
            bits = op.weight_bits()
            if op.input_bits == 1:
                self._cache[key] = (op, _words(bits))
            else:
                self._cache[key] = (op, np.where(bits, 1.0, -1.0).T.copy())
        return self._cache[key][1]


def _accumulate(op, x: np.ndarray, cache: _Weights) -> np.ndarray:
    """Accumulator (P for binary inputs, A for bytes) of (M, K) inputs: (M, C_out) int64."""
    w = cache.get(op)
    if op.input_bits == 8:
        return (x.astype(np.float64) @ w).astype(np.int64)   # exact: |A| < 2**53
    xw = _words(x)
    m, words = xw.shape
    out = np.empty((m, w.shape[0]), dtype=np.int64)
    rows = max(1, _CHUNK_WORDS // max(1, w.shape[0]))
    wt = np.ascontiguousarray(w.T)                  # (words, C_out)
    for start in range(0, m, rows):
        block = xw[start:start + rows]
        diff = np.zeros((block.shape[0], w.shape[0]), dtype=np.int32)
        for j in range(words):                      # sum over words as whole-array adds
            diff += np.bitwise_count(block[:, j, None] ^ wt[j][None, :])
        out[start:start + rows] = op.k - diff
    return out


def _signed(op, acc: np.ndarray) -> np.ndarray:
    return 2 * acc - op.k if op.input_bits == 1 else acc


def _activate(op, acc: np.ndarray, cls: np.ndarray | None = None) -> np.ndarray:
    """Output bits of (M, C) accumulators; ``cls`` (M,) picks each row's pad class.

    A popcount stage (``emit="popcount"``) outputs the accumulators themselves.
    """
    if getattr(op, "emit", "bits") == "popcount":
        return acc
    if op.folded:
        t = op.thresholds if cls is None else op.thresholds[cls]
        return acc >= np.atleast_2d(t)
    a, b = op.affine if cls is None else (op.affine[0, 0], op.affine[cls, 1])
    return np.atleast_2d(a) * _signed(op, acc) + np.atleast_2d(b) >= 0


def _im2col(op: BinaryConv, x: np.ndarray) -> np.ndarray:
    """(N, H, W, C) -> (N, OH, OW, kh * kw * C) in (kernel row, kernel column, channel) order."""
    (kh, kw), (sh, sw), (ph, pw) = op.kernel, op.stride, op.padding
    if ph or pw:
        fill = bool(op.pad_value) if x.dtype == bool else op.pad_value
        x = np.pad(x, ((0, 0), (ph, ph), (pw, pw), (0, 0)), constant_values=fill)
    win = sliding_window_view(x, (kh, kw), axis=(1, 2))[:, ::sh, ::sw]  # N,OH,OW,C,kh,kw
    _, oh, ow = op.out_shape
    win = win[:, :oh, :ow]
    return np.ascontiguousarray(win.transpose(0, 1, 2, 4, 5, 3)).reshape(
        x.shape[0], oh, ow, kh * kw * x.shape[3])


def _residual(op: ResidualAdd, p: np.ndarray, short: np.ndarray) -> np.ndarray:
    """Output bits of a residual join: main popcounts ``p`` and the shortcut (bits or P2)."""
    if op.folded:
        sel = short.astype(np.int64)
        return p >= op.thresholds[sel, np.arange(op.channels)]
    a, b = op.affine
    value = a * (2 * p - op.main_k) + b
    if op.short == "bits":
        value = value + np.where(short, 1.0, -1.0)
    else:
        a2, b2 = op.short_affine
        value = value + a2 * (2 * short - op.short_k) + b2
    return value >= 0


def _run(graph: DataflowGraph, frames: np.ndarray, cache: _Weights, keep: bool) -> dict:
    outs = {}
    values: dict[str, np.ndarray] = {}
    pending = {n: graph.nx.out_degree(n) for n in graph.nx}   # consumers still to run
    x = None
    for name, op in graph:
        ins = graph.inputs(name)
        x = values[ins[0]] if ins else None
        if isinstance(op, InputLayer):
            if len(op.in_shape) == 3:
                x = frames.transpose(0, 2, 3, 1)
            else:
                x = frames.reshape(frames.shape[0], 1, 1, -1)
            if op.bits == 1:
                x = x >= op.threshold
            elif op.table is not None:
                x = np.asarray(op.table, dtype=np.uint8)[x]
        elif isinstance(op, BinaryConv):
            cols = _im2col(op, x)
            n, oh, ow, k = cols.shape
            acc = _accumulate(op, cols.reshape(-1, k), cache)
            cls = np.tile(op.class_map().reshape(-1), n) if op.classes > 1 else None
            x = _activate(op, acc, cls).reshape(n, oh, ow, op.channels)
        elif isinstance(op, MaxPool):
            (kh, kw), (sh, sw) = op.kernel, op.stride
            _, oh, ow = op.out_shape[0], op.out_shape[1], op.out_shape[2]
            win = sliding_window_view(x, (kh, kw), axis=(1, 2))[:, ::sh, ::sw][:, :oh, :ow]
            x = win.any(axis=(-2, -1))
        elif isinstance(op, BinaryDense):
            acc = _accumulate(op, x.reshape(x.shape[0], -1), cache)
            x = _activate(op, acc).reshape(x.shape[0], 1, 1, op.channels)
        elif isinstance(op, ScoreLayer):
            s = _signed(op, _accumulate(op, x.reshape(x.shape[0], -1), cache))
            if op.folded:
                x = op.mul[None, :] * s + op.add[None, :]
            else:
                x = op.affine[0][None, :] * s + op.affine[1][None, :]
        elif isinstance(op, ResidualAdd):
            x = _residual(op, x, values[ins[1]])
        elif isinstance(op, Concat):
            x = np.concatenate([values[n] for n in ins], axis=-1)
        else:
            raise TypeError(f"the reference executor has no rule for {type(op).__name__}")
        values[name] = x
        for n in ins:                          # free streams no stage reads any more
            pending[n] -= 1
            if not pending[n] and not keep:
                del values[n]
        if keep:
            outs[name] = x
    outs["__out__"] = x
    return outs


def reference(graph: DataflowGraph, x: np.ndarray, *, return_all: bool = False,
              batch: int = 256):
    """Run ``graph`` on uint8 frames ``x`` of shape (N, *input_shape); return class scores.

    Returns
    -------
    numpy.ndarray
        (N, classes) int64 scores for a folded graph (float64 before FoldThresholds).
        With ``return_all``, a dict from stage name to that stage's output for every frame
        (feature maps as (N, H, W, C) booleans, dense outputs as (N, 1, 1, C); popcount
        stages as int64 of the same layouts).

    Raises
    ------
    ValueError
        When ``x`` is not uint8 frames of the graph's input shape.
    """
    x = check_frames(graph, x)
    cache = _Weights()
    parts: list[dict] = []
    for start in range(0, max(1, x.shape[0]), batch):
        parts.append(_run(graph, x[start:start + batch], cache, return_all))
    if return_all:
        names = [n for n, _ in graph]
        return {n: np.concatenate([p[n] for p in parts]) for n in names}
    return np.concatenate([p["__out__"] for p in parts])
