"""Lower a torch BNN to a :class:`~bnnforge.compiler.ir.DataflowGraph`.

The lowering keeps BatchNorm (and any per-channel weight scale) as an exact float64 affine map
on each binary layer; :class:`~bnnforge.compiler.passes.FoldThresholds` turns those into integer
thresholds. :func:`lower` runs that pass by default.

Graphs may branch. A binary tensor may feed several layers (a fork). A residual sum
``sign(bn(conv(x)) + x)`` (identity shortcut, ``x`` binary) or ``sign(bn(conv(x)) +
bn_s(conv_s(x)))`` (projection shortcut) becomes popcount stage(s) (``emit="popcount"``) and a
:class:`~bnnforge.compiler.ir.ResidualAdd` holding both affines; in a projection the layer with
the larger K is the main path (port 0). ``torch.cat([...], dim=1)`` of binary tensors becomes a
:class:`~bnnforge.compiler.ir.Concat`. Everything else that branches is refused at the front
door, naming the operation and the fix.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

import numpy as np
import torch
from torch import nn

from ..nn.chain import Step, UnsupportedModelError, trace_graph
from .ir import (
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

__all__ = ["lower", "UnsupportedModelError"]


def _f64(t: torch.Tensor) -> np.ndarray:
    return t.detach().to(torch.float64).cpu().numpy()


def _pair(v) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


class _Pending:
    """A matrix layer whose output affine is still being composed (BatchNorm, scale)."""

    def __init__(self, step: Step, kind: str, bits: np.ndarray, scale: np.ndarray,
                 src: _Stream, **extra):
        self.step = step
        self.kind = kind
        self.bits = bits
        self.a = scale.astype(np.float64)
        self.b = np.zeros_like(self.a)
        self.has_bn = False
        self.src = src
        self.extra = extra


@dataclass
class _Stream:
    """A tensor the IR holds: the output of stage ``node`` (bits or the 8-bit input)."""

    node: str
    bits: int
    shape: tuple        # the torch shape (a flattened feature map is 1-D here)


@dataclass
class _Sum:
    """A residual sum before its activation: ``main`` plus a bit or popcount shortcut."""

    step: Step
    main: _Pending
    short: _Stream | _Pending


def lower(model: nn.Module, input_shape: tuple, *, fold: bool = True,
          name: str | None = None, meta: dict | None = None) -> DataflowGraph:
    """Lower ``model`` (any fx-traceable model of bnnforge layers, residual sums and channel
    concatenations included) for frames of ``input_shape``.

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
    steps = trace_graph(model, input_shape)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            graph = _Lowering(name or type(model).__name__, meta).run(steps, input_shape)
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


def _step_name(value: _Pending | _Sum) -> str:
    """Name a matrix layer or a sum for a message: ``'conv'``, ``the sum 'add'``."""
    return f"the sum {value.step.name!r}" if isinstance(value, _Sum) else repr(value.step.name)


def _label(value) -> str:
    """Name a value for a message: its layer (or sum) and what it is."""
    if isinstance(value, (_Pending, _Sum)):
        return f"{_step_name(value)} (before its BinaryActivation)"
    return repr(value.node)


class _Lowering:
    """Walk the traced steps in data order, keeping one value per step output.

    A value is a :class:`_Stream` (bits or bytes the IR holds), a :class:`_Pending` (a matrix
    layer's accumulator with its affine so far) or a :class:`_Sum` (a residual sum). IR stages
    are added when a value becomes bits: at a BinaryActivation (or the end: the scores).
    """

    def __init__(self, name: str, meta: dict | None):
        self.graph = DataflowGraph(name, meta)
        self.counters = {"conv": 0, "fc": 0, "pool": 0, "add": 0, "cat": 0}
        self.level_min = 0

    def _name(self, prefix: str) -> str:
        n = self.counters[prefix]
        self.counters[prefix] += 1
        return f"{prefix}{n}"

    def _ir_shape(self, node: str) -> tuple:
        return tuple(self.graph.op(node).out_shape)

    # -- driver --------------------------------------------------------------------------------
    def run(self, steps: list[Step], input_shape: tuple) -> DataflowGraph:
        first = steps[0]
        if first.kind != "input":
            raise UnsupportedModelError(
                f"the model must start with bnnforge.nn.InputQuant(bits=1 or 8); its first "
                f"layer is {first.name!r} "
                f"({type(first.module).__name__ if first.module else first.kind})")
        placeholder = first.inputs[0] if first.inputs else None
        bits = int(first.module.bits)
        levels = getattr(first.module, "levels", None)
        self.level_min = min(levels) if levels is not None else 0   # the table's offset
        table = tuple(int(v) - self.level_min for v in levels) if levels is not None else None
        if len(input_shape) not in (1, 3):
            raise ValueError(f"input shape {input_shape} must be (C, H, W) or (K,)")
        threshold = int(getattr(first.module, "threshold", 128))
        self.graph.add("input", InputLayer(in_shape=input_shape, out_shape=input_shape,
                                           bits=bits, threshold=threshold, table=table),
                       source=first.name)
        values: dict = {first.node: _Stream("input", bits, input_shape)}
        uses: dict = {}
        for step in steps:
            for i in step.inputs:
                uses[i] = uses.get(i, 0) + 1
        by_node = {step.node: step for step in steps}
        for step in steps[1:]:
            if step.kind == "input":
                raise UnsupportedModelError(
                    f"InputQuant {step.name!r} may only be the first layer")
            if placeholder is not None and placeholder in step.inputs:
                raise UnsupportedModelError(
                    f"the model must start with bnnforge.nn.InputQuant(bits=1 or 8); "
                    f"{step.name!r} reads the raw input")
            args = [values[i] for i in step.inputs]
            for i, value in zip(step.inputs, args, strict=True):
                if isinstance(value, (_Pending, _Sum)) and uses[i] > 1:
                    raise UnsupportedModelError(
                        f"the output of {by_node[i].name!r} feeds {uses[i]} operations before "
                        "a BinaryActivation; only binary tensors may branch: put the "
                        "activation before the fork")
            values[step.node] = getattr(self, f"_{step.kind}")(step, *args)
        self._scores(values[steps[-1].node])
        return self.graph

    # -- layers --------------------------------------------------------------------------------
    def _matrix(self, step: Step, x) -> _Pending:
        m = step.module
        if isinstance(x, (_Pending, _Sum)):
            raise UnsupportedModelError(
                f"{type(m).__name__} {step.name!r} follows {_step_name(x)} without a "
                "BinaryActivation between them; binary layers take binary inputs")
        shape, ir_shape = tuple(x.shape), self._ir_shape(x.node)
        if step.kind == "linear":
            if len(shape) != 1:
                raise UnsupportedModelError(
                    f"BinaryLinear {step.name!r} gets a {shape} input; put a Flatten before it")
            wb = _f64(m.binary_weight()) > 0
            if len(ir_shape) == 3 and math.prod(ir_shape) == wb.shape[1]:
                c, h, w = ir_shape      # torch flattens CHW; the stream is HWC
                wb = wb.reshape(wb.shape[0], c, h, w).transpose(0, 2, 3, 1).reshape(
                    wb.shape[0], -1)
            return _Pending(step, "linear", wb, _f64(m.channel_scale()), x,
                            input_bits=x.bits)
        if len(shape) != 3:
            raise UnsupportedModelError(
                f"BinaryConv2d {step.name!r} gets a {shape} input; it needs (C, H, W)")
        wb = _f64(m.binary_weight()) > 0
        wb = wb.transpose(0, 2, 3, 1).reshape(wb.shape[0], -1)   # (kh, kw, C) order
        pad = float(m.pad_value)
        if not math.isfinite(pad):
            raise UnsupportedModelError(
                f"BinaryConv2d {step.name!r} pads with {pad}; the pad value must be finite")
        # the hardware pads with a bit or byte; any other value is corrected exactly in
        # per-position-class thresholds (pad_correction = true - hardware element)
        if x.bits == 1:
            pad_value = int(pad > 0) if pad in (-1.0, 1.0) else 0
            element = 2 * pad_value - 1
        else:
            byte = pad - self.level_min
            pad_value = int(byte) if byte == round(byte) and 0 <= byte <= 255 else 0
            element = pad_value + self.level_min
        correction = Fraction(pad) - element if _pair(m.padding) != (0, 0) else 0
        return _Pending(step, "conv", wb, _f64(m.channel_scale()), x, input_bits=x.bits,
                        kernel=_pair(m.kernel_size), stride=_pair(m.stride),
                        padding=_pair(m.padding), pad_value=pad_value, pad_correction=correction)

    _linear = _conv = _matrix

    def _batchnorm(self, step: Step, x) -> _Pending:
        m = step.module
        if isinstance(x, _Sum):
            raise UnsupportedModelError(
                f"{type(m).__name__} {step.name!r} follows the sum {x.step.name!r}; put the "
                "BatchNorm on the layer before the sum (bn(conv(x)) + shortcut)")
        if not isinstance(x, _Pending) or x.has_bn:
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
        x.a, x.b = x.a * scale, (x.b - mean) * scale + beta
        x.has_bn = True
        return x

    def _activation(self, step: Step, x) -> _Stream:
        if isinstance(x, _Pending):
            return _Stream(self._emit(x), 1, tuple(x.step.out_shape))
        if isinstance(x, _Sum):
            return _Stream(self._emit_sum(x), 1, tuple(x.main.step.out_shape))
        if x.bits == 1:
            return x                # sign of a binary stream is the stream itself
        raise UnsupportedModelError(
            f"BinaryActivation {step.name!r} must follow a BinaryLinear or BinaryConv2d "
            "(and its BatchNorm)")

    def _maxpool(self, step: Step, x) -> _Stream:
        m = step.module
        if isinstance(x, (_Pending, _Sum)):
            raise UnsupportedModelError(
                f"MaxPool2d {step.name!r} sits between {_step_name(x)} and its "
                "BinaryActivation; move it after the activation (binary max-pool is an OR of "
                "bits)")
        if x.bits != 1 or len(x.shape) != 3:
            raise UnsupportedModelError(
                f"MaxPool2d {step.name!r} must pool a binary (C, H, W) feature map")
        if _pair(m.padding) != (0, 0) or _pair(m.dilation) != (1, 1) or m.ceil_mode:
            raise UnsupportedModelError(
                f"MaxPool2d {step.name!r} uses padding, dilation or ceil_mode; only plain "
                "windows (padding=0, dilation=1, ceil_mode=False) are supported")
        stride = _pair(m.stride if m.stride is not None else m.kernel_size)
        node = self._name("pool")
        self.graph.add(node, MaxPool(in_shape=self._ir_shape(x.node),
                                     out_shape=tuple(step.out_shape),
                                     kernel=_pair(m.kernel_size), stride=stride),
                       inputs=[x.node], source=step.name)
        return _Stream(node, 1, tuple(step.out_shape))

    def _flatten(self, step: Step, x) -> _Stream:
        if isinstance(x, (_Pending, _Sum)):
            raise UnsupportedModelError(
                f"Flatten {step.name!r} sits between {_step_name(x)} and its BinaryActivation; "
                "flatten binary feature maps only")
        return _Stream(x.node, x.bits, tuple(step.out_shape))

    # -- branches ------------------------------------------------------------------------------
    def _add(self, step: Step, *terms) -> _Sum:
        where = f"the sum {step.name!r}"
        if len(set(step.inputs)) != 2:
            raise UnsupportedModelError(
                f"{where} adds a tensor to itself; bnnforge folds a layer's output plus a "
                "different shortcut tensor")
        for t in terms:
            if isinstance(t, _Sum):
                raise UnsupportedModelError(
                    f"{where} adds to {_label(t)}, a sum of three terms; bnnforge folds sums "
                    "of two terms: put a BinaryActivation after the first sum")
            if isinstance(t, _Stream) and t.bits != 1:
                raise UnsupportedModelError(
                    f"{where} adds the 8-bit input; a shortcut must be a binary tensor "
                    "(after InputQuant(bits=1), a BinaryActivation or a max-pool)")
        pending = [t for t in terms if isinstance(t, _Pending)]
        if not pending:
            raise UnsupportedModelError(
                f"{where} adds two binary tensors ({terms[0].node!r}, {terms[1].node!r}); one "
                "term must be a BinaryConv2d or BinaryLinear output (with its BatchNorm) before "
                "the BinaryActivation, e.g. act(bn(conv(x)) + x)")
        if len(pending) == 2:       # projection: the larger K is the main path
            main, short = sorted(pending, key=lambda p: -p.bits.shape[1])
        else:
            main = pending[0]
            short = next(t for t in terms if t is not main)
        shape = tuple(main.step.out_shape)
        for p in pending:
            if p.extra["input_bits"] != 1:
                raise UnsupportedModelError(
                    f"{where} adds {p.step.name!r}, which reads the 8-bit input; a summed layer "
                    "needs binary inputs: give the block a binary stem layer first")
            if p.extra.get("pad_correction", 0):
                raise UnsupportedModelError(
                    f"{where} adds {p.step.name!r}, which pads with {p.step.module.pad_value}; "
                    "a summed convolution must pad with -1 or +1 (pad_value), which the "
                    "hardware holds")
        other = tuple(short.step.out_shape if isinstance(short, _Pending) else short.shape)
        if other != shape:
            raise UnsupportedModelError(
                f"{where} adds tensors of shapes {shape} and {other}; the terms must have one "
                "shape")
        if isinstance(short, _Stream) and self._ir_shape(short.node) != shape:
            raise UnsupportedModelError(
                f"{where} adds the flattened feature map of {short.node!r} "
                f"{self._ir_shape(short.node)}; sum feature maps before the Flatten")
        return _Sum(step, main, short)

    def _concat(self, step: Step, *parts) -> _Stream:
        where = f"the concatenation {step.name!r}"
        if len(set(step.inputs)) != len(step.inputs):
            raise UnsupportedModelError(
                f"{where} joins a tensor with itself; concatenate different tensors")
        for t in parts:
            if not isinstance(t, _Stream) or t.bits != 1:
                what = _label(t) if not isinstance(t, _Stream) else "the 8-bit input"
                raise UnsupportedModelError(
                    f"{where} joins {what}; concatenate binary tensors (after a "
                    "BinaryActivation)")
            if tuple(t.shape) != self._ir_shape(t.node):
                raise UnsupportedModelError(
                    f"{where} joins flattened feature maps; concatenate the feature maps "
                    "(dim=1) before the Flatten")
        out = tuple(step.out_shape)
        node = self._name("cat")
        self.graph.add(node, Concat(in_shape=out, out_shape=out,
                                    parts=tuple(int(t.shape[0]) for t in parts)),
                       inputs=[t.node for t in parts], source=step.name)
        return _Stream(node, 1, out)

    # -- emitting stages -----------------------------------------------------------------------
    def _emit_sum(self, s: _Sum) -> str:
        """Add the popcount stage(s) of a sum and its ResidualAdd; return the add's name."""
        main = self._emit(s.main, popcount=True)
        shape = tuple(s.main.step.out_shape)
        fields = dict(main_k=int(s.main.bits.shape[1]), affine=np.stack([s.main.a, s.main.b]))
        if isinstance(s.short, _Pending):
            short = self._emit(s.short, popcount=True)
            fields.update(short="popcount", short_k=int(s.short.bits.shape[1]),
                          short_affine=np.stack([s.short.a, s.short.b]))
        else:
            short = s.short.node
        node = self._name("add")
        self.graph.add(node, ResidualAdd(in_shape=shape, out_shape=shape, **fields),
                       inputs=[main, short], source=s.step.name)
        return node

    def _scores(self, value) -> None:
        if not isinstance(value, _Pending):
            raise UnsupportedModelError(
                "the model must end with a BinaryLinear that gives the class scores (optionally "
                "with a BatchNorm1d), with no activation after it")
        self._emit(value, final=True)

    def _emit(self, p: _Pending, final: bool = False, popcount: bool = False) -> str:
        """Add the IR stage of a matrix layer; return its name."""
        s = p.step
        k = p.bits.shape[1]
        in_shape = self._ir_shape(p.src.node)
        matrix = dict(k=k, channels=p.bits.shape[0], weights=pack_bits(p.bits))
        if popcount:
            return self._add_matrix(p, in_shape, input_bits=1, emit="popcount", **matrix)
        b = p.b
        eight = p.extra["input_bits"] == 8
        level_offset = self.level_min * (2 * p.bits.sum(axis=1) - k) if eight else \
            np.zeros(p.bits.shape[0], dtype=np.int64)
        if eight and self.level_min:
            b = _offset_affine(p.a, p.b, level_offset, k, final)
        classes = {}
        correction = p.extra.get("pad_correction", 0)
        if correction:
            # the hardware pads with pad_value; the model with pad_value + correction (§2)
            rows, cols, taps = _pad_classes(p.bits, in_shape, tuple(s.out_shape),
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
        matrix.update(input_bits=p.extra["input_bits"], affine=affine)
        if final:
            if p.kind != "linear":
                raise UnsupportedModelError(
                    f"the model's last layer {s.name!r} is a convolution; it must end with a "
                    "BinaryLinear that gives the class scores")
            op = ScoreLayer(in_shape=in_shape, out_shape=(p.bits.shape[0],), **matrix)
            self.graph.add("scores", op, inputs=[p.src.node], source=s.name)
            return "scores"
        return self._add_matrix(p, in_shape, **classes, **matrix)

    def _add_matrix(self, p: _Pending, in_shape: tuple, **fields) -> str:
        """Add ``p`` as a BinaryDense or a BinaryConv stage (its kernel, stride and padding
        from ``p.extra``) with ``fields``; return its name."""
        out_shape = tuple(p.step.out_shape)
        if p.kind == "linear":
            node = self._name("fc")
            op = BinaryDense(in_shape=in_shape, out_shape=out_shape, **fields)
        else:
            node = self._name("conv")
            op = BinaryConv(in_shape=in_shape, out_shape=out_shape, kernel=p.extra["kernel"],
                            stride=p.extra["stride"], padding=p.extra["padding"],
                            pad_value=p.extra["pad_value"], **fields)
        self.graph.add(node, op, inputs=[p.src.node], source=p.step.name)
        return node
