"""Lower a torch BNN to a :class:`~bnnforge.compiler.ir.DataflowGraph`.

The lowering keeps BatchNorm (and any per-channel weight scale) as an exact float64 affine map
on each binary layer; :class:`~bnnforge.compiler.passes.FoldThresholds` turns those into integer
thresholds. :func:`lower` runs that pass by default.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import torch
from torch import nn

from ..nn.chain import Step, UnsupportedModelError, trace_chain
from .ir import BinaryConv, BinaryDense, DataflowGraph, InputLayer, MaxPool, ScoreLayer, pack_bits

__all__ = ["lower", "UnsupportedModelError"]


def _f64(t: torch.Tensor) -> np.ndarray:
    return t.detach().to(torch.float64).cpu().numpy()


def _pair(v) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


class _Pending:
    """A matrix layer whose output affine is still being composed (BatchNorm, scale)."""

    def __init__(self, step: Step, kind: str, bits: np.ndarray, scale: np.ndarray, **extra):
        self.step = step
        self.kind = kind
        self.bits = bits
        self.a = scale.astype(np.float64)
        self.b = np.zeros_like(self.a)
        self.has_bn = False
        self.extra = extra


def lower(model: nn.Module, input_shape: tuple, *, fold: bool = True,
          name: str | None = None, meta: dict | None = None) -> DataflowGraph:
    """Lower ``model`` (any fx-traceable chain of bnnforge layers) for frames of ``input_shape``.

    Parameters
    ----------
    model
        The trained torch model; it is evaluated in eval mode (its mode is restored).
    input_shape
        One frame's shape without the batch dimension, e.g. ``(1, 28, 28)``.
    fold
        Run :class:`FoldThresholds` (integer thresholds); ``False`` keeps the float affine maps.

    Raises
    ------
    UnsupportedModelError
        When a layer or the model's structure is not supported, naming the layer.
    ValueError
        When ``input_shape`` does not fit the model.
    """
    input_shape = tuple(int(d) for d in input_shape)
    steps = trace_chain(model, input_shape)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            graph = _build(steps, input_shape, name or type(model).__name__, meta)
    finally:
        model.train(was_training)
    if fold:
        from .passes import FoldThresholds
        graph = FoldThresholds().apply(graph)
    return graph


def _offset_affine(a: np.ndarray, b: np.ndarray, offset, k: int, final: bool,
                   step: int = 1) -> np.ndarray:
    """Return ``b'`` with ``a * s + b'`` standing for ``a * (s + offset) + b`` per channel.

    ``s`` is the hardware's signed sum: over table bytes (``step`` 1, range ±255·K), or the
    binary ``2P - K`` (``step`` 2, range ±K); ``offset`` holds integers (``min(levels) * Σw``)
    or exact rationals (a pad correction). For a hidden layer only the sign matters: ``b'``
    puts the exact (rational) threshold ``s >= T`` (or ``s <= U`` for ``a < 0``) half-way
    between two reachable sums, so :class:`FoldThresholds` finds exactly ``T``. The score layer
    needs values: ``b + a * offset`` in float64.
    """
    if final:
        return b + a * np.asarray(offset, dtype=np.float64)
    lo, hi = (-255 * k, 255 * k) if step == 1 else (-k, k)
    out = b.copy()
    for c in range(a.shape[0]):
        ac, bc, off = float(a[c]), float(b[c]), offset[c]
        off = Fraction(int(off)) if isinstance(off, (int, np.integer)) else Fraction(off)
        if ac == 0.0:
            continue
        t = -Fraction(bc) / Fraction(ac) - off          # a > 0: s >= t; a < 0: s <= t
        if ac > 0:
            g = lo + step * math.ceil((t - lo) / step)   # smallest reachable s >= t
            edge = Fraction(min(max(g, lo - step), hi + step)) - Fraction(step, 2)
        else:
            g = lo + step * math.floor((t - lo) / step)  # largest reachable s <= t
            edge = Fraction(min(max(g, lo - step), hi + step)) + Fraction(step, 2)
        out[c] = -ac * float(edge)
    return out


def _pad_classes(bits: np.ndarray, in_shape: tuple, out_shape: tuple, kernel: tuple,
                 stride: tuple, padding: tuple) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return ``row_class`` (OH,), ``col_class`` (OW,) and ``taps`` (classes, C).

    ``taps[k, c]`` is the sum of channel c's ±1 weights over the padded taps (all input
    channels) of an output of class k; class = ``row_class[oy] * ncol + col_class[ox]``.
    """
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
    cin, h, w = in_shape
    _, oh, ow = out_shape
    signs = np.where(bits, 1, -1).astype(np.int64).reshape(bits.shape[0], kh, kw, cin).sum(-1)

    def classes(n_out, n_in, size, st, pad):
        masks, index = [], []
        for o in range(n_out):
            mask = tuple(not 0 <= o * st + i - pad < n_in for i in range(size))
            if mask not in masks:
                masks.append(mask)
            index.append(masks.index(mask))
        return np.array(index, dtype=np.int64), np.array(masks, dtype=bool)

    row_class, row_masks = classes(oh, h, kh, sh, ph)
    col_class, col_masks = classes(ow, w, kw, sw, pw)
    taps = np.stack([signs[:, rm[:, None] | cm[None, :]].sum(axis=1)
                     for rm in row_masks for cm in col_masks])
    return row_class, col_class, taps


def _build(steps: list[Step], input_shape: tuple, name: str, meta: dict | None) -> DataflowGraph:
    graph = DataflowGraph(name, meta)
    first = steps[0]
    if first.kind != "input":
        raise UnsupportedModelError(
            f"the model must start with bnnforge.nn.InputQuant(bits=1 or 8); its first layer is "
            f"{first.name!r} ({type(first.module).__name__ if first.module else first.kind})")
    bits = int(first.module.bits)
    levels = getattr(first.module, "levels", None)
    level_min = min(levels) if levels is not None else 0   # the table's constant offset
    table = tuple(int(v) - level_min for v in levels) if levels is not None else None
    frame = input_shape if len(input_shape) == 3 else (input_shape[0], 1, 1) \
        if len(input_shape) == 1 else None
    if frame is None:
        raise ValueError(f"input shape {input_shape} must be (C, H, W) or (K,)")
    threshold = int(getattr(first.module, "threshold", 128))
    graph.add("input", InputLayer(in_shape=input_shape, out_shape=input_shape, bits=bits,
                                  threshold=threshold, table=table), source=first.name)
    shape = input_shape          # the torch shape of the current tensor (no batch)
    fmap = input_shape if len(input_shape) == 3 else None   # last feature map before flatten
    stream_bits = bits           # bits per element of the current stream
    binary = True                # the stream is bits or bytes (not a pending accumulator)
    pending: _Pending | None = None
    counters = {"conv": 0, "fc": 0, "pool": 0}

    def emit(p: _Pending, final: bool) -> None:
        nonlocal stream_bits
        s = p.step
        k = p.bits.shape[1]
        b = p.b
        in_shape = graph.op(graph.output_node()).out_shape
        eight = p.extra["input_bits"] == 8
        level_offset = level_min * (2 * p.bits.sum(axis=1) - k) if eight else \
            np.zeros(p.bits.shape[0], dtype=np.int64)
        if eight and level_min:
            b = _offset_affine(p.a, p.b, level_offset, k, final)
        classes = {}
        correction = p.extra.get("pad_correction", 0)
        if correction:
            # the hardware pads with pad_value; the model with pad_value + correction (§2)
            rows, cols, taps = _pad_classes(p.bits, tuple(in_shape), tuple(s.out_shape),
                                            p.extra["kernel"], p.extra["stride"],
                                            p.extra["padding"])
            bs = [_offset_affine(p.a, p.b, [int(lv) + correction * int(tc) for lv, tc in
                                            zip(level_offset, taps[j], strict=True)],
                                 k, False, 1 if eight else 2) for j in range(taps.shape[0])]
            if len(bs) == 1:
                b = bs[0]
            else:
                classes = dict(row_class=rows, col_class=cols)
                b = np.stack(bs)
        affine = np.stack([p.a, b]) if b.ndim == 1 else \
            np.stack([np.stack([p.a, bk]) for bk in b])
        common = dict(k=k, channels=p.bits.shape[0], weights=pack_bits(p.bits),
                      input_bits=p.extra["input_bits"], affine=affine)
        if final:
            if p.kind != "linear":
                raise UnsupportedModelError(
                    f"the model's last layer {s.name!r} is a convolution; it must end with a "
                    "BinaryLinear that gives the class scores")
            op = ScoreLayer(in_shape=tuple(in_shape), out_shape=(p.bits.shape[0],), **common)
            graph.add("scores", op, source=s.name)
            return
        if p.kind == "linear":
            node = f"fc{counters['fc']}"
            counters["fc"] += 1
            op = BinaryDense(in_shape=tuple(in_shape), out_shape=tuple(s.out_shape), **common)
        else:
            node = f"conv{counters['conv']}"
            counters["conv"] += 1
            op = BinaryConv(in_shape=tuple(in_shape), out_shape=tuple(s.out_shape),
                            kernel=p.extra["kernel"], stride=p.extra["stride"],
                            padding=p.extra["padding"], pad_value=p.extra["pad_value"],
                            **classes, **common)
        graph.add(node, op, source=s.name)
        stream_bits = 1

    for step in steps[1:]:
        m = step.module
        if step.kind == "input":
            raise UnsupportedModelError(f"InputQuant {step.name!r} may only be the first layer")
        if step.kind in ("linear", "conv"):
            if pending is not None:
                raise UnsupportedModelError(
                    f"{type(m).__name__} {step.name!r} follows {pending.step.name!r} without a "
                    "BinaryActivation between them; binary layers take binary inputs")
            if not binary:
                raise UnsupportedModelError(f"{type(m).__name__} {step.name!r} has no binary input")
            if step.kind == "linear":
                if len(shape) != 1:
                    raise UnsupportedModelError(
                        f"BinaryLinear {step.name!r} gets a {shape} input; put a Flatten before it")
                wb = _f64(m.binary_weight()) > 0
                if fmap is not None and math.prod(fmap) == wb.shape[1]:
                    c, h, w = fmap      # torch flattens CHW; the stream is HWC
                    wb = wb.reshape(wb.shape[0], c, h, w).transpose(0, 2, 3, 1).reshape(
                        wb.shape[0], -1)
                pending = _Pending(step, "linear", wb, _f64(m.channel_scale()),
                                   input_bits=stream_bits)
            else:
                if len(shape) != 3:
                    raise UnsupportedModelError(
                        f"BinaryConv2d {step.name!r} gets a {shape} input; it needs (C, H, W)")
                wb = _f64(m.binary_weight()) > 0
                wb = wb.transpose(0, 2, 3, 1).reshape(wb.shape[0], -1)   # (kh, kw, C) order
                pad = float(m.pad_value)
                if not math.isfinite(pad):
                    raise UnsupportedModelError(
                        f"BinaryConv2d {step.name!r} pads with {pad}; the pad value must be "
                        "finite")
                # the hardware pads with a bit or byte; any other value is corrected exactly
                # in per-position-class thresholds (pad_correction = true - hardware element)
                if stream_bits == 1:
                    pad_value = int(pad > 0) if pad in (-1.0, 1.0) else 0
                    element = 2 * pad_value - 1
                else:
                    byte = pad - level_min
                    pad_value = int(byte) if byte == round(byte) and 0 <= byte <= 255 else 0
                    element = pad_value + level_min
                correction = Fraction(pad) - element if _pair(m.padding) != (0, 0) else 0
                pending = _Pending(step, "conv", wb, _f64(m.channel_scale()),
                                   input_bits=stream_bits, kernel=_pair(m.kernel_size),
                                   stride=_pair(m.stride), padding=_pair(m.padding),
                                   pad_value=pad_value, pad_correction=correction)
            binary = False
            fmap = step.out_shape if len(step.out_shape) == 3 else None
        elif step.kind == "batchnorm":
            if pending is None or pending.has_bn:
                raise UnsupportedModelError(
                    f"{type(m).__name__} {step.name!r} must directly follow a BinaryLinear or "
                    "BinaryConv2d (one BatchNorm per layer)")
            sigma = np.sqrt(_f64(m.running_var) + float(m.eps))
            gamma = _f64(m.weight) if m.affine else np.ones_like(sigma)
            beta = _f64(m.bias) if m.affine else np.zeros_like(sigma)
            mean = _f64(m.running_mean)
            if not (np.all(np.isfinite(sigma)) and np.all(np.isfinite(gamma))
                    and np.all(np.isfinite(beta)) and np.all(np.isfinite(mean))):
                raise UnsupportedModelError(f"{type(m).__name__} {step.name!r} holds NaN or "
                                            "infinite parameters; retrain the model")
            scale = gamma / sigma
            pending.a, pending.b = pending.a * scale, (pending.b - mean) * scale + beta
            pending.has_bn = True
        elif step.kind == "activation":
            if pending is None:
                if binary and stream_bits == 1:
                    continue            # sign of a binary stream is the stream itself
                raise UnsupportedModelError(
                    f"BinaryActivation {step.name!r} must follow a BinaryLinear or BinaryConv2d "
                    "(and its BatchNorm)")
            emit(pending, final=False)
            pending = None
            binary = True
        elif step.kind == "maxpool":
            if pending is not None:
                raise UnsupportedModelError(
                    f"MaxPool2d {step.name!r} sits between {pending.step.name!r} and its "
                    "BinaryActivation; move it after the activation (binary max-pool is an OR "
                    "of bits)")
            if stream_bits != 1 or len(shape) != 3:
                raise UnsupportedModelError(
                    f"MaxPool2d {step.name!r} must pool a binary (C, H, W) feature map")
            if _pair(m.padding) != (0, 0) or _pair(m.dilation) != (1, 1) or m.ceil_mode:
                raise UnsupportedModelError(
                    f"MaxPool2d {step.name!r} uses padding, dilation or ceil_mode; only plain "
                    "windows (padding=0, dilation=1, ceil_mode=False) are supported")
            stride = _pair(m.stride if m.stride is not None else m.kernel_size)
            graph.add(f"pool{counters['pool']}",
                      MaxPool(in_shape=tuple(shape), out_shape=tuple(step.out_shape),
                              kernel=_pair(m.kernel_size), stride=stride), source=step.name)
            counters["pool"] += 1
            fmap = step.out_shape
        elif step.kind == "flatten":
            if pending is not None:
                raise UnsupportedModelError(
                    f"Flatten {step.name!r} sits between {pending.step.name!r} and its "
                    "BinaryActivation; flatten binary feature maps only")
        shape = tuple(step.out_shape)
    if pending is None:
        raise UnsupportedModelError(
            "the model must end with a BinaryLinear that gives the class scores (optionally "
            "with a BatchNorm1d), with no activation after it")
    emit(pending, final=True)
    return graph
