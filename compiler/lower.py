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


def _offset_affine(a: np.ndarray, b: np.ndarray, offset: np.ndarray, k: int,
                   final: bool) -> np.ndarray:
    """Return ``b'`` with ``a * A + b'`` standing for ``a * (A + offset) + b`` per channel.

    ``A`` is the hardware's sum over table bytes and ``offset`` the integer ``min(levels) * Σw``.
    For a hidden layer only the sign matters: ``b'`` puts the exact (rational) threshold
    ``A >= T`` (or ``A <= U`` for ``a < 0``) half-way between two integers, so
    :class:`FoldThresholds` finds exactly ``T``. The score layer needs values: ``b + a * offset``
    in float64.
    """
    if final:
        return b + a * offset
    lo, hi = -255 * k, 255 * k
    out = b.copy()
    for c in range(a.shape[0]):
        ac, bc, off = float(a[c]), float(b[c]), int(offset[c])
        if ac == 0.0:
            continue
        t = -Fraction(bc) / Fraction(ac) - off          # a > 0: A >= t; a < 0: A <= t
        if ac > 0:
            edge = min(max(math.ceil(t), lo - 1), hi + 1) - 0.5
        else:
            edge = min(max(math.floor(t), lo - 1), hi + 1) + 0.5
        out[c] = -ac * edge
    return out


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
        if p.extra["input_bits"] == 8 and level_min:
            b = _offset_affine(p.a, p.b, level_min * (2 * p.bits.sum(axis=1) - k), k, final)
        common = dict(k=k, channels=p.bits.shape[0], weights=pack_bits(p.bits),
                      input_bits=p.extra["input_bits"], affine=np.stack([p.a, b]))
        in_shape = graph.op(graph.output_node()).out_shape
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
                            padding=p.extra["padding"], pad_value=p.extra["pad_value"], **common)
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
                if stream_bits == 1:
                    if pad not in (-1.0, 1.0):
                        raise UnsupportedModelError(
                            f"BinaryConv2d {step.name!r} pads with {pad}; a binary layer pads "
                            "with -1 or +1")
                    pad_value = int(pad > 0)
                elif levels is not None:
                    if pad != round(pad) or not 0 <= pad - level_min <= 255:
                        raise UnsupportedModelError(
                            f"BinaryConv2d {step.name!r} pads with {pad}; on InputQuant levels "
                            f"{level_min}..{max(levels)} it must be an integer level "
                            f"{level_min}..{level_min + 255} (the pad byte is pad_value - "
                            f"{level_min})")
                    pad_value = int(pad) - level_min
                else:
                    if pad != round(pad) or not 0 <= pad <= 255:
                        raise UnsupportedModelError(
                            f"BinaryConv2d {step.name!r} pads with {pad}; a layer on 8-bit "
                            "inputs pads with an integer pixel value 0..255")
                    pad_value = int(pad)
                pending = _Pending(step, "conv", wb, _f64(m.channel_scale()),
                                   input_bits=stream_bits, kernel=_pair(m.kernel_size),
                                   stride=_pair(m.stride), padding=_pair(m.padding),
                                   pad_value=pad_value)
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
