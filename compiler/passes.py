"""Graph passes. Each is a small named class with ``apply(graph) -> graph`` that returns a new
graph and leaves its argument untouched; each is tested for equivalence with the reference
executor."""

from __future__ import annotations

import dataclasses
import math
from fractions import Fraction

import numpy as np

from .ir import DataflowGraph, ResidualAdd, ScoreLayer, _Matrix, pack_bits

__all__ = ["FoldThresholds", "fold_residual", "fold_score_affine", "score_bits"]


def _signed_domain(op) -> np.ndarray:
    """Every value the signed dot product ``s`` of ``op`` can take."""
    if op.input_bits == 1:
        return np.arange(-op.k, op.k + 1, 2, dtype=np.int64)
    return np.arange(-255 * op.k, 255 * op.k + 1, dtype=np.int64)


def _threshold(a: float, b: float, k: int, input_bits: int) -> int:
    """Smallest accumulator value whose output bit is 1 for ``a * s + b >= 0`` with ``a > 0``.

    Exact: computed on the float64 values as rationals.
    """
    t = -Fraction(b) / Fraction(a)          # s >= t
    if input_bits == 1:                      # s = 2P - K  ->  P >= (K + t) / 2
        return math.ceil((k + t) / 2)
    return math.ceil(t)                      # s = A


class FoldThresholds:
    """Fold each binary layer's BatchNorm/scale affine into one integer threshold per channel
    (per channel and pad class for a convolution with pad classes: affine (classes, 2, C)
    gives thresholds (classes, C)).

    A channel with a negative scale gets its weight row inverted (so every comparison is
    ``accumulator >= threshold``); a channel with a zero scale becomes constant (threshold at the
    accumulator's minimum for a constant 1, one past its maximum for a constant 0). The score
    layer's affine becomes integer ``mul``/``add`` (see :func:`fold_score_affine`).

    A :class:`ResidualAdd` gets one threshold row per shortcut value (the bit, or the
    shortcut's popcount ``P2``) on its main stage's popcount ``P``, by the same rules with the
    shortcut's exact contribution moved into the offset; where the main path's ``a < 0`` the
    main stage's weight row is inverted.
    """

    name = "fold_thresholds"

    def apply(self, graph: DataflowGraph) -> DataflowGraph:
        out = graph.copy()
        for node, op in graph:
            if isinstance(op, _Matrix) and not op.folded:
                out.replace_op(node, self._fold_matrix(op))
            elif isinstance(op, ScoreLayer) and not op.folded:
                mul, add, gain = fold_score_affine(op.affine[0], op.affine[1],
                                                   _signed_domain(op))
                op = dataclasses.replace(op, mul=mul, add=add, gain=gain, affine=None)
                out.replace_op(node, dataclasses.replace(op, score_bits=score_bits(op)))
            elif isinstance(op, ResidualAdd) and not op.folded:
                main = graph.inputs(node)[0]
                folded, invert = fold_residual(op)
                if invert.any():
                    mop = out.op(main)
                    bits = mop.weight_bits()
                    bits[invert] = ~bits[invert]
                    out.replace_op(main, dataclasses.replace(mop, weights=pack_bits(bits)))
                out.replace_op(node, folded)
        return out

    @staticmethod
    def _fold_matrix(op: _Matrix) -> _Matrix:
        lo, hi = op.accumulator_range()
        bits = op.weight_bits()
        affine = op.affine if op.affine.ndim == 3 else op.affine[None]   # (classes, 2, C)
        thresholds = np.empty((affine.shape[0], op.channels), dtype=np.int64)
        for c in range(op.channels):
            a = float(affine[0, 0, c])          # one scale per channel, shared by the classes
            if a < 0:
                bits[c] = ~bits[c]
            for j in range(affine.shape[0]):
                b = float(affine[j, 1, c])
                if a == 0.0:
                    thresholds[j, c] = lo if b >= 0 else hi + 1
                    continue
                t = _threshold(abs(a), b, op.k, op.input_bits)
                thresholds[j, c] = min(max(t, lo), hi + 1)
        if op.affine.ndim == 2:
            thresholds = thresholds[0]
        return dataclasses.replace(op, weights=pack_bits(bits), thresholds=thresholds,
                                   affine=None)


def _shortcut_offsets(op: ResidualAdd) -> list[list[Fraction]]:
    """Per selector row and channel, the shortcut's exact contribution to the main sum."""
    if op.short == "bits":
        return [[Fraction(x)] * op.channels for x in (-1, 1)]
    a2, b2 = op.short_affine
    return [[Fraction(float(a2[c])) * (2 * p2 - op.short_k) + Fraction(float(b2[c]))
             for c in range(op.channels)] for p2 in range(op.short_k + 1)]


def fold_residual(op: ResidualAdd) -> tuple[ResidualAdd, np.ndarray]:
    """Return ``op`` with integer thresholds, and which main weight rows to invert (a < 0).

    Row ``j`` of the (S, C) table is the smallest popcount ``P`` (``s = 2P - main_k``) with
    ``a s + b + offset_j >= 0``, computed on the float64 values as exact rationals (``offset``:
    the shortcut's ±1, or ``a2 (2 P2 - short_k) + b2``). ``a < 0``: the main row is inverted
    (``s -> -s``) and ``a := -a``; ``a = 0``: 0 or ``main_k + 1`` by the sign of ``b +
    offset``. Thresholds are clamped to [0, main_k + 1].
    """
    a_row, b_row = op.affine
    k = op.main_k
    offsets = _shortcut_offsets(op)
    thresholds = np.empty((op.selectors, op.channels), dtype=np.int64)
    invert = np.zeros(op.channels, dtype=bool)
    for c in range(op.channels):
        a, b = float(a_row[c]), Fraction(float(b_row[c]))
        invert[c] = a < 0
        for j, row in enumerate(offsets):
            rest = b + row[c]
            if a == 0.0:
                thresholds[j, c] = 0 if rest >= 0 else k + 1
                continue
            thresholds[j, c] = min(max(_threshold(abs(a), rest, k, 1), 0), k + 1)
    folded = dataclasses.replace(op, thresholds=thresholds, affine=None, short_affine=None)
    return folded, invert


def fold_score_affine(a: np.ndarray, b: np.ndarray, domain: np.ndarray
                      ) -> tuple[np.ndarray, np.ndarray, float]:
    """Return integer ``mul``, ``add`` and a float ``gain`` for class scores ``a * s + b``.

    With no affine beyond one common positive scale the scores stay the exact dot products
    (``mul = 1``, ``add = 0``). Otherwise the smallest fixed-point scaling is chosen whose integer
    scores keep the order of every two reachable scores (over all classes and all dot products)
    that differ by more than float32 resolution (2**-20 of the largest magnitude): the torch
    model computes in float32 and cannot order closer scores reliably itself. Scores stay within
    52 bits (see :func:`score_bits` for the width the hardware needs).

    Raises
    ------
    ValueError
        When no fixed-point scaling within 52 bits keeps the order.
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    channels = a.shape[0]
    if np.all(b == 0) and np.all(a == a[0]) and a[0] > 0:
        return np.ones(channels, np.int64), np.zeros(channels, np.int64), float(a[0])
    m = float(np.max(np.abs(a)))
    if m == 0.0:
        m = float(np.max(np.abs(b))) or 1.0
    values = (a[:, None] * domain[None, :] + b[:, None]).ravel()
    order = np.argsort(values, kind="stable")
    sorted_values = values[order]
    tol = 2.0 ** -20 * float(np.max(np.abs(values)))
    # first sorted position clearly above each value: every score there must get a larger int
    above = np.searchsorted(sorted_values, sorted_values + tol, side="right")
    smax = float(np.max(np.abs(domain)))
    for shift in range(0, 62):
        scale = 2.0 ** shift / m
        mul = np.round(a * scale).astype(np.int64)
        add = np.round(b * scale).astype(np.int64)
        if float(np.max(np.abs(mul))) * smax + float(np.max(np.abs(add))) >= 2.0 ** 52:
            break
        ints = (mul[:, None] * domain[None, :] + add[:, None]).ravel()[order]
        suffix_min = np.append(np.minimum.accumulate(ints[::-1])[::-1], np.inf)
        if np.all(ints < suffix_min[above]):
            return mul, add, 1.0 / scale
    raise ValueError("the last layer's BatchNorm/scale cannot be represented as integer scores "
                     "of up to 52 bits that keep the class order; reduce its spread or drop the "
                     "BatchNorm")


def score_bits(op) -> int:
    """Two's complement width (at least 32) that holds every score of a folded ScoreLayer."""
    smax = op.k * (255 if op.input_bits == 8 else 1)
    bound = int(np.max(np.abs(op.mul))) * smax + int(np.max(np.abs(op.add)))
    return max(32, bound.bit_length() + 1)
