"""Import QONNX models exported by Brevitas (``export_qonnx``) as bnnforge models.

:func:`import_onnx` reads a QONNX file and builds the equivalent ``nn.Sequential`` of bnnforge
layers (``InputQuant``, ``BinaryConv2d``, ``BatchNorm2d``, ``MaxPool2d``, ``Flatten``,
``BinaryLinear``, ``BatchNorm1d``, ``BinaryActivation``), so lowering, compiling and verifying
go exactly as for any bnnforge model. Supported today: the w1a1 graphs of FINN's BNN-PYNQ
family, fully connected (tfc, sfc, lfc) and convolutional (cnv), as the dynamo and the
TorchScript exporters write them. Anything else is refused at the front door with one line
naming the node and the fix.

Mapping (docs/design.md §2 for the numeric contract):

- every node whose inputs are all constants is folded first (initializers, ``Constant`` nodes,
  initializers listed as graph inputs);
- the input chain up to the first ``BipolarQuant`` is evaluated in float32 for all 256 byte
  values; its bit must be ``byte >= T`` for one T (``InputQuant(bits=1, threshold=T)``);
- an input ``Quant`` (CNV's 8-bit Q1.7 after ``2x − 1``) is evaluated the same way, as qonnx
  computes it (clip, then round; ``ROUND`` is half to even): the integer level of every byte
  becomes ``InputQuant(bits=8, levels=...)`` and the scale moves into the first layer's
  channel scale;
- ``BipolarQuant`` on a constant gives binary weights; positive scales (per tensor or per
  output channel, times the scalar scale of the activations feeding the layer) become
  ``BinaryLinear``/``BinaryConv2d(scale="channel")``'s ``alpha``;
- ``Conv`` (group 1, dilation 1, no padding, no bias) becomes ``BinaryConv2d``; a 2x2 stride-2
  ``MaxPool`` after a binary activation becomes ``MaxPool2d(2)``; the ``Reshape``/``Flatten``
  to (N, C·H·W) before the first dense layer becomes ``Flatten`` (torch's order; lowering
  permutes the weights);
- ``BatchNormalization`` becomes ``BatchNorm1d`` (``BatchNorm2d`` after a Conv) with its own
  parameters and ``epsilon``;
- any other chain of elementwise ``Add``/``Sub``/``Mul``/``Div`` with constants (TensorNorm, the
  tail after the last layer) is composed in float64 into ``a·x + c`` and kept as a
  ``BatchNorm1d`` with ``running_mean = 0``, ``running_var = 1``, ``eps = 0``, ``weight = a``,
  ``bias = c``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

__all__ = ["OnnxImportError", "import_onnx", "import_onnx_file", "check_against_qonnx"]

_ELEMENTWISE = ("Add", "Sub", "Mul", "Div")
_FOLDABLE = frozenset({
    "Reshape", "Flatten", "Transpose", "Identity", "Cast", "Squeeze", "Unsqueeze", "Shape",
    "Gather", "Concat", "Slice", "Neg", "Sqrt", "Pow", "Reciprocal", "Add", "Sub", "Mul", "Div",
})
_CONV_OPS = frozenset({"ConvTranspose", "AveragePool", "GlobalAveragePool", "GlobalMaxPool",
                       "Pad", "QuantAvgPool2d", "Im2Col", "LpPool", "MaxUnpool"})
_MULTIBIT_OPS = frozenset({"Quant", "IntQuant", "FloatQuant", "Trunc"})


class OnnxImportError(ValueError):
    """A QONNX model bnnforge cannot import; the message names the node and the fix."""


def _node_label(node) -> str:
    return f"node {node.name or node.output[0]!r} ({node.op_type})"


# ---------------------------------------------------------------------------- reading the file

def _read_model(path: Path):
    import onnx
    from onnx import external_data_helper

    if not path.is_file():
        raise OnnxImportError(f"ONNX file {path} not found")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception:   # protobuf raises DecodeError, RuntimeWarning-based errors and others
        proto = None
    if proto is None or proto.ir_version <= 0 or not proto.graph.node:
        raise OnnxImportError(f"{path.name} is not a readable ONNX file; export it again with "
                              "brevitas.export.export_qonnx")
    tensors = list(proto.graph.initializer) + [a.t for n in proto.graph.node
                                               for a in n.attribute if a.HasField("t")]
    for tensor in tensors:
        if not external_data_helper.uses_external_data(tensor):
            continue
        info = {e.key: e.value for e in tensor.external_data}
        location = info.get("location", "")
        if not (path.parent / location).is_file():
            raise OnnxImportError(f"{path.name} keeps its weights in {location}, which is "
                                  f"missing; put {location} next to {path.name}")
    try:
        external_data_helper.load_external_data_for_model(proto, str(path.parent))
    except Exception as exc:
        raise OnnxImportError(f"the external data of {path.name} is unreadable or truncated "
                              f"({type(exc).__name__}); export it again") from None
    return proto


def _attrs(node) -> dict:
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _constant_value(node) -> np.ndarray:
    from onnx import numpy_helper

    for a in node.attribute:
        if a.name == "value":
            return numpy_helper.to_array(a.t)
    attrs = _attrs(node)
    for key, dtype in (("value_float", np.float32), ("value_floats", np.float32),
                       ("value_int", np.int64), ("value_ints", np.int64)):
        if key in attrs:
            return np.asarray(attrs[key], dtype=dtype)
    raise OnnxImportError(f"{_node_label(node)} holds no tensor value bnnforge can read")


def _bipolar_quant(x: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """qonnx's BipolarQuant: ``scale·(x >= 0 ? +1 : -1)``."""
    return np.where(x >= 0, 1.0, -1.0).astype(x.dtype) * scale


def _fold_constants(graph) -> tuple[dict, list]:
    """Return the constant tensors (initializers and folded nodes) and the remaining nodes."""
    from onnx import numpy_helper
    from onnx.reference import ReferenceEvaluator

    consts = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    live = []
    for node in graph.node:
        if node.op_type == "Constant" and not node.domain:
            consts[node.output[0]] = _constant_value(node)
            continue
        inputs = [i for i in node.input if i]
        if not all(i in consts for i in inputs):
            live.append(node)
            continue
        if node.op_type == "BipolarQuant":
            scale = np.asarray(consts[node.input[1]])
            _check_scale(node, scale)
            consts[node.output[0]] = _bipolar_quant(consts[node.input[0]], scale)
        elif not node.domain and node.op_type in _FOLDABLE:
            try:
                values = ReferenceEvaluator(node).run(None, {i: consts[i] for i in inputs})
            except Exception as exc:
                raise OnnxImportError(f"{_node_label(node)} on constants cannot be evaluated "
                                      f"({type(exc).__name__}: {exc})") from None
            for name, value in zip(node.output, values, strict=False):
                consts[name] = np.asarray(value)
        else:
            live.append(node)
    return consts, live


def _check_scale(node, scale: np.ndarray) -> None:
    if not np.all(np.isfinite(scale)) or not np.all(scale > 0):
        raise OnnxImportError(f"{_node_label(node)} has a non-positive or non-finite scale "
                              f"{np.ravel(scale)[:4].tolist()}; bnnforge needs scales > 0")


def _input_quant_name(graph) -> str | None:
    """The ``Quant`` node the float input reaches through elementwise preprocessing, if any."""
    consts = {t.name for t in graph.initializer} | {
        o for n in graph.node if n.op_type == "Constant" for o in n.output}
    tensor = next((i.name for i in graph.input if i.name not in consts), None)
    for _ in range(len(graph.node)):
        users = [n for n in graph.node if tensor in n.input]
        if len(users) != 1:
            return None
        node = users[0]
        if node.op_type == "Quant":
            return node.name or node.output[0]
        if node.op_type not in _ELEMENTWISE + ("Reshape", "Flatten", "Identity"):
            return None
        tensor = node.output[0]
    return None


def _refuse_unsupported(graph) -> None:
    from onnx import numpy_helper

    consts = {t.name: t for t in graph.initializer}
    for node in graph.node:
        if "fpgadataflow" in node.domain or node.op_type == "MultiThreshold":
            raise OnnxImportError(f"{_node_label(node)} comes from FINN's transformations; "
                                  "export QONNX straight from Brevitas, before FINN's "
                                  "transformations")
    for node in graph.node:
        if node.op_type in _CONV_OPS:
            raise OnnxImportError(f"{_node_label(node)} is not supported; bnnforge imports "
                                  "Conv (binary weights) and 2x2 MaxPool after a binary "
                                  "activation, as in CNV")
    input_quant = _input_quant_name(graph)
    for node in graph.node:
        if node.op_type in _MULTIBIT_OPS and (node.name or node.output[0]) != input_quant:
            bits = consts.get(node.input[3]) if len(node.input) > 3 else None
            width = (f", {float(np.ravel(numpy_helper.to_array(bits))[0]):g}-bit"
                     if bits is not None else "")
            raise OnnxImportError(f"{_node_label(node)[:-1]}{width}): bnnforge supports binary "
                                  "weights and activations; export a w1a1 model")
        known = node.op_type in _FOLDABLE or node.op_type in (
            "Constant", "BipolarQuant", "Gemm", "MatMul", "BatchNormalization", "Conv",
            "MaxPool", "Quant")
        if not known:
            raise OnnxImportError(f"{_node_label(node)} is not supported; bnnforge imports "
                                  "chains of BipolarQuant, Conv, MaxPool, Gemm/MatMul, "
                                  "BatchNormalization and elementwise Add/Sub/Mul/Div")


# ------------------------------------------------------------------------------ the chain walk

class _Walk:
    """The remaining (non-constant) nodes as a chain from the input to the output."""

    def __init__(self, live: list, consts: dict, output: str):
        self.consts = consts
        self.output = output
        self.consumers: dict[str, list] = {}
        for node in live:
            for name in dict.fromkeys(node.input):      # a tensor used twice is one use
                if name and name not in consts:
                    self.consumers.setdefault(name, []).append(node)

    def next(self, tensor: str):
        users = self.consumers.get(tensor, [])
        if len(users) > 1:
            names = ", ".join(f"{n.name} ({n.op_type})" for n in users)
            raise OnnxImportError(f"tensor {tensor!r} feeds several nodes ({names}); bnnforge "
                                  "imports chains of layers, not branching or residual graphs")
        if not users:
            if tensor != self.output:
                raise OnnxImportError(f"tensor {tensor!r} leads nowhere; the graph is not a "
                                      "chain from its input to its output")
            return None
        return users[0]

    def const(self, node, index: int) -> np.ndarray:
        name = node.input[index] if index < len(node.input) else ""
        if name not in self.consts:
            raise OnnxImportError(f"{_node_label(node)} input {index} ({name!r}) is not a "
                                  "constant; bnnforge needs constant parameters there")
        value = np.asarray(self.consts[name])
        if value.dtype.kind == "f" and not np.all(np.isfinite(value)):
            raise OnnxImportError(f"{_node_label(node)} holds NaN or infinite parameters "
                                  f"({name!r}); fix the model and export it again")
        return value

    def operand(self, node, tensor: str) -> tuple[np.ndarray, bool]:
        """The constant operand of a binary elementwise node and whether it comes first."""
        ins = list(node.input)
        if len(ins) != 2 or ins.count(tensor) != 1:
            raise OnnxImportError(f"{_node_label(node)} must combine the data with one "
                                  "constant")
        other = 1 - ins.index(tensor)
        return self.const(node, other), other == 0


def _affine_step(node, k: np.ndarray, k_first: bool, a, c):
    """Compose ``y = a·x + c`` with one elementwise node (constant ``k``)."""
    k = k.astype(np.float64)
    op = node.op_type
    if op == "Add":
        return a, c + k
    if op == "Mul":
        return a * k, c * k
    if op == "Sub":
        return (-a, k - c) if k_first else (a, c - k)
    if k_first:
        raise OnnxImportError(f"{_node_label(node)} divides a constant by the data; only "
                              "affine maps a·x + c are supported")
    return a / k, c / k


def _per_channel(node, value, channels: int, spatial: bool = False) -> np.ndarray:
    value = np.asarray(value, dtype=np.float64)
    shape = (1, channels, 1, 1) if spatial else (1, channels)
    try:
        out = np.broadcast_to(value, shape)
    except ValueError:
        out = None
    if out is None or value.ndim > len(shape):
        raise OnnxImportError(f"{_node_label(node)} has a constant of shape {value.shape}; "
                              f"expected a scalar or one value per channel ({channels})")
    return np.array(out.reshape(channels))


def _binary_weight(node, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Split a folded (out, in) weight into bits and a positive per-output scale."""
    mag = np.abs(w)
    scale = mag.max(axis=1)
    if not np.all(scale > 0) or not np.all(mag == scale[:, None]):
        raise OnnxImportError(f"{_node_label(node)} has weights that are not binary "
                              "(±scale per output channel); quantize them with a 1-bit "
                              "Brevitas weight quantizer (BipolarQuant)")
    return w >= 0, scale


def _input_chain(nodes: list, walk: _Walk, input_shape: tuple) -> tuple[np.ndarray, bool]:
    """Evaluate the input preprocessing in float32 on every byte value.

    Returns the values, shape ``(256,) + frame shape`` (or ``(256, K)`` once flattened), and
    whether the chain flattens the frame.
    """
    x = np.arange(256, dtype=np.float32) / np.float32(255)
    y = np.broadcast_to(x.reshape((256,) + (1,) * len(input_shape)),
                        (256,) + tuple(input_shape)).copy()
    flattened = False
    for node in nodes:
        data = next(i for i in node.input if i not in walk.consts)
        if node.op_type in ("Reshape", "Flatten"):
            if node.op_type == "Reshape":
                shape = walk.const(node, 1).astype(np.int64).tolist()
                ok = len(shape) == 2 and shape[0] in (-1, 0, 1) and shape[1] in (-1, y[0].size)
            else:
                ok = _attrs(node).get("axis", 1) == 1
            if not ok:
                raise OnnxImportError(f"{_node_label(node)} does not flatten one frame into a "
                                      "vector; only (N, C, H, W) -> (N, C·H·W) is supported")
            y = y.reshape(256, -1)
            flattened = True
        elif node.op_type == "Identity":
            continue
        else:
            k, k_first = walk.operand(node, data)
            k = k.astype(np.float32)
            a, b = (k, y) if k_first else (y, k)
            y = {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply,
                 "Div": np.divide}[node.op_type](a, b).astype(np.float32)
    return y, flattened


def _input_threshold(y: np.ndarray, quant) -> int:
    """The byte threshold T of the input chain's values ``y`` at the BipolarQuant.

    Every input position's bit must be ``byte >= T`` for one T in 1..255
    (``InputQuant(bits=1, threshold=T)``).
    """
    bits = (y >= 0).reshape(256, -1)
    if not np.all(bits == bits[:, :1]):
        raise OnnxImportError(f"{_node_label(quant)}: the 1-bit input threshold differs between "
                              "channels or pixels; bnnforge binarizes every byte with one "
                              "threshold")
    column = bits[:, 0]
    ones = np.nonzero(column)[0]
    if not len(ones) or not np.all(column[ones[0]:]) or not 1 <= ones[0] <= 255:
        found = "constant" if len(ones) in (0, 256) else "not a single threshold on the byte"
        raise OnnxImportError(f"{_node_label(quant)}: the first-layer 1-bit input is {found}; "
                              "bnnforge binarizes bytes as byte >= T with T in 1..255")
    return int(ones[0])


# QONNX Quant's rounding modes (qonnx.custom_op.general.intquant.resolve_rounding_mode), kept
# here so that importing needs only onnx (qonnx is the tests' oracle, not a dependency)
_ROUNDING = {
    "ROUND": np.round, "HALF_EVEN": np.round, "CEIL": np.ceil, "FLOOR": np.floor,
    "UP": lambda x: np.sign(x) * np.ceil(np.abs(x)), "DOWN": np.fix,
    "HALF_UP": lambda x: np.sign(x) * np.floor(np.abs(x) + 0.5),
    "HALF_DOWN": lambda x: np.sign(x) * np.ceil(np.abs(x) - 0.5),
}


def _input_levels(y: np.ndarray, quant, walk: _Walk) -> tuple[list, float]:
    """The integer level of every byte at a multi-bit input ``Quant``, and its scale.

    Evaluates qonnx's ``Quant`` (``qonnx.custom_op.general.intquant.int_quant``) in float32:
    ``q = round_mode(clip(y / scale + zeropt))``, output ``(q − zeropt)·scale``. The level is
    ``q − zeropt``; it must be an integer and the same at every input position. The scale moves
    after the first layer's sum (its channel scale).
    """
    attrs = _attrs(quant)
    scale, zeropt, bitwidth = (walk.const(quant, i) for i in (1, 2, 3))
    if scale.size != 1 or not np.isfinite(scale).all() or not np.all(scale > 0):
        raise OnnxImportError(f"{_node_label(quant)} on the input has the scale "
                              f"{np.ravel(scale)[:4].tolist()}; bnnforge needs one positive "
                              "scale for the whole input")
    bits = float(np.ravel(bitwidth)[0])
    if bitwidth.size != 1 or zeropt.size != 1 or bits != int(bits) or not 2 <= bits <= 8:
        raise OnnxImportError(f"{_node_label(quant)} on the input has bit width "
                              f"{np.ravel(bitwidth)[:4].tolist()}; bnnforge takes an input "
                              "quantizer of 2 to 8 bits with one scale and zero point")
    signed, narrow = bool(attrs.get("signed", 1)), bool(attrs.get("narrow", 0))
    mode = attrs.get("rounding_mode", "ROUND")
    mode = mode.decode() if isinstance(mode, bytes) else str(mode)
    rounding = _ROUNDING.get(mode.upper())
    if rounding is None:
        raise OnnxImportError(f"{_node_label(quant)} has rounding mode {mode!r}; QONNX defines "
                              f"{', '.join(sorted(_ROUNDING))}")
    scale32 = scale.astype(np.float32).reshape(())
    zp32 = zeropt.astype(np.float32).reshape(())
    q = y / scale32 + zp32
    b = int(bits)
    lo = (-(2 ** (b - 1)) + int(narrow)) if signed else 0
    hi = (2 ** (b - 1) - 1) if signed else (2 ** b - 1 - int(narrow))
    q = np.where(q > hi, np.float32(hi), q)
    q = np.where(q < lo, np.float32(lo), q)
    q = rounding(q).astype(np.float32)
    level = (q - zp32).astype(np.float32)
    level = level.reshape(256, -1)
    if not np.all(level == level[:, :1]):
        raise OnnxImportError(f"{_node_label(quant)}: the input preprocessing differs between "
                              "channels or pixels; bnnforge maps every input byte through one "
                              "table")
    level = level[:, 0]
    if not np.all(level == np.round(level)):
        raise OnnxImportError(f"{_node_label(quant)}: the input levels q − zero point are not "
                              f"integers (zero point {float(zp32):g}); bnnforge needs an "
                              "integer level per input byte")
    levels = [int(v) for v in level]
    if max(levels) - min(levels) > 255:
        raise OnnxImportError(f"{_node_label(quant)}: the input levels span "
                              f"{min(levels)}..{max(levels)}, more than 256 values")
    return levels, float(scale32)


def _spatial_after(node, shape: tuple, kernel: tuple, stride: tuple) -> tuple:
    c, h, w = shape
    oh, ow = (h - kernel[0]) // stride[0] + 1, (w - kernel[1]) // stride[1] + 1
    if oh < 1 or ow < 1:
        raise OnnxImportError(f"{_node_label(node)} sees a {h}x{w} feature map, smaller than "
                              f"its {kernel[0]}x{kernel[1]} window")
    return oh, ow


def import_onnx(path: str | os.PathLike):
    """Read a QONNX file and build the equivalent bnnforge model.

    Returns
    -------
    model, input_shape, meta
        An ``nn.Sequential`` of bnnforge layers in eval mode, one frame's shape (no batch) and
        the model-file metadata (``name``, ``source``, ``imported_from``).

    Raises
    ------
    OnnxImportError
        (a ``ValueError``) When the file is unreadable or the graph is not supported; the
        message names the node and the fix.
    """
    import torch
    from torch import nn

    from .nn.layers import BinaryActivation, InputQuant

    path = Path(path)
    proto = _read_model(path)
    graph = proto.graph
    _refuse_unsupported(graph)
    consts, live = _fold_constants(graph)
    inputs = [i for i in graph.input if i.name not in consts]
    if len(inputs) != 1 or len(graph.output) != 1:
        raise OnnxImportError(
            f"{path.name} has {len(inputs)} inputs and {len(graph.output)} outputs; bnnforge "
            "imports models with one image input and one score output")
    dims = [d.dim_value for d in inputs[0].type.tensor_type.shape.dim]
    input_shape = tuple(int(d) for d in dims[1:])
    if not input_shape or not all(d > 0 for d in input_shape):
        raise OnnxImportError(f"input {inputs[0].name!r} of {path.name} has shape {dims}; "
                              "bnnforge needs a fixed frame shape (N, C, H, W) or (N, K)")
    walk = _Walk(live, consts, graph.output[0].name)

    # the input chain, up to the first BipolarQuant (1-bit input) or Quant (input table)
    tensor, pre = inputs[0].name, []
    node = walk.next(tensor)
    while node is not None and node.op_type not in ("BipolarQuant", "Quant"):
        if node.op_type not in _ELEMENTWISE + ("Reshape", "Flatten", "Identity"):
            raise OnnxImportError(f"{_node_label(node)} sees the float input before any "
                                  "BipolarQuant or Quant; bnnforge's first layer takes "
                                  "quantized inputs")
        pre.append(node)
        tensor = node.output[0]
        node = walk.next(tensor)
    if node is None:
        raise OnnxImportError(f"{path.name} has no BipolarQuant or Quant on its input; "
                              "bnnforge's first layer takes quantized inputs")
    y, flattened = _input_chain(pre, walk, input_shape)
    if node.op_type == "BipolarQuant":
        act_scale = walk.const(node, 1)
        _check_scale(node, act_scale)
        layers: list = [InputQuant(bits=1, threshold=_input_threshold(y, node))]
        binary_act = True
    else:
        levels, s = _input_levels(y, node, walk)
        act_scale = np.float64(s)
        layers = [InputQuant(bits=8, levels=levels)]
        binary_act = False
    spatial = None if flattened or len(input_shape) == 1 else input_shape
    if spatial is not None and len(spatial) != 3:
        raise OnnxImportError(f"{path.name} has {input_shape} frames; bnnforge takes (C, H, W) "
                              "images or (K,) vectors")
    if flattened and len(input_shape) > 1:
        layers.append(nn.Flatten())
    tensor = node.output[0]

    while True:
        act_node, node = node, walk.next(tensor)
        if node is not None and node.op_type == "MaxPool" and spatial is not None:
            if not binary_act:
                raise OnnxImportError(f"{_node_label(node)} max-pools the quantized input; "
                                      "bnnforge max-pools binary activations only")
            spatial = _maxpool(node, spatial)
            layers.append(nn.MaxPool2d(2))
            tensor = node.output[0]
            node = walk.next(tensor)
        if node is not None and node.op_type in ("Reshape", "Flatten") and spatial is not None:
            _check_flatten(node, walk, spatial)
            layers.append(nn.Flatten())
            spatial = None
            tensor = node.output[0]
            node = walk.next(tensor)
        want = "Conv" if spatial is not None else "Gemm or MatMul"
        ops = ("Conv",) if spatial is not None else ("Gemm", "MatMul")
        if node is None or node.op_type not in ops:
            what = "the graph ends" if node is None else _node_label(node)
            raise OnnxImportError(f"{what} after {_node_label(act_node)}; bnnforge expects a "
                                  f"{want} with binary weights there")
        if act_scale.size != 1:
            raise OnnxImportError(f"{_node_label(act_node)} has a per-feature scale; bnnforge "
                                  "folds only one scalar activation scale into the next layer")
        scalar = float(np.ravel(act_scale)[0])
        if spatial is not None:
            layer, lin, spatial, bias = _conv(node, tensor, walk, scalar, spatial)
            channels = layer.out_channels
        else:
            layer, lin, bias = _linear(node, tensor, walk, scalar)
            channels = layer.out_features
        layers.append(layer)
        tensor = node.output[0]
        segment, node = [], walk.next(tensor)
        while node is not None and node.op_type != "BipolarQuant":
            if node.op_type == "MaxPool":
                raise OnnxImportError(f"{_node_label(node)} comes before the binary activation "
                                      f"of {_node_label(lin)}; bnnforge max-pools binary "
                                      "activations only (MaxPool after the sign)")
            if node.op_type not in _ELEMENTWISE + ("BatchNormalization",):
                raise OnnxImportError(f"{_node_label(node)} after {_node_label(lin)} is not "
                                      "supported; expected BatchNormalization, elementwise "
                                      "Add/Sub/Mul/Div with constants, or BipolarQuant")
            segment.append(node)
            tensor = node.output[0]
            node = walk.next(tensor)
        if node is None:
            if spatial is not None:
                raise OnnxImportError(f"the graph ends after {_node_label(lin)}; bnnforge's "
                                      "scores come from a Gemm/MatMul after a Flatten")
            bn = _affine_module(segment, walk, lin.output[0], channels, final=True, bias=bias)
            if bn is not None:
                layers.append(bn)
            break
        bn = _affine_module(segment, walk, lin.output[0], channels, final=False,
                            spatial=spatial is not None, bias=bias)
        if bn is not None:
            layers.append(bn)
        act_scale = walk.const(node, 1)
        _check_scale(node, act_scale)
        layers.append(BinaryActivation())
        binary_act = True
        tensor = node.output[0]

    model = nn.Sequential(*layers).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                m.num_batches_tracked.zero_()
    meta = {"name": path.stem, "source": path.name, "imported_from": "qonnx"}
    return model, input_shape, meta


def _maxpool(node, spatial: tuple) -> tuple:
    """Check a MaxPool is 2x2, stride 2, unpadded; return the pooled (C, H, W)."""
    attrs = _attrs(node)
    pads = list(attrs.get("pads", [0, 0, 0, 0]))
    auto = attrs.get("auto_pad", b"NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else str(auto)
    ok = (list(attrs.get("kernel_shape", [])) == [2, 2]
          and list(attrs.get("strides", [1, 1])) == [2, 2] and not any(pads)
          and list(attrs.get("dilations", [1, 1])) == [1, 1] and not attrs.get("ceil_mode", 0)
          and auto in ("NOTSET", "VALID") and len([o for o in node.output if o]) == 1)
    if not ok:
        raise OnnxImportError(f"{_node_label(node)} is not a 2x2 max-pool with stride 2 and no "
                              "padding; bnnforge supports MaxPool2d(2) only")
    c, h, w = spatial
    return (c, h // 2, w // 2)


def _check_flatten(node, walk: _Walk, spatial: tuple) -> None:
    """Check a Reshape/Flatten turns (N, C, H, W) into (N, C·H·W), torch's ``view(N, -1)``."""
    size = int(np.prod(spatial))
    if node.op_type == "Reshape":
        shape = walk.const(node, 1).astype(np.int64).tolist()
        ok = len(shape) == 2 and shape[0] in (-1, 0, 1) and shape[1] in (-1, size)
        ok = ok and not (shape[0] == -1 and shape[1] == -1)
        if ok and shape[0] == 0 and _attrs(node).get("allowzero", 0):
            ok = False
    else:
        ok = _attrs(node).get("axis", 1) == 1
    if not ok:
        raise OnnxImportError(f"{_node_label(node)} does not flatten the {spatial} feature map "
                              f"into {size} features; only (N, C, H, W) -> (N, C·H·W) is "
                              "supported")


def _conv(node, tensor: str, walk: _Walk, act_scale: float, spatial: tuple):
    """Build the BinaryConv2d of a Conv whose data input is ``tensor``."""
    import torch

    from .nn.layers import BinaryConv2d

    attrs = _attrs(node)
    if node.input[0] != tensor:
        raise OnnxImportError(f"{_node_label(node)} takes the data as its weight; bnnforge "
                              "expects a constant weight")
    w = walk.const(node, 1).astype(np.float64)
    if w.ndim != 4:
        raise OnnxImportError(f"{_node_label(node)} has a {w.ndim}-D weight; bnnforge supports "
                              "2-D convolutions (4-D weights)")
    if attrs.get("group", 1) != 1:
        raise OnnxImportError(f"{_node_label(node)} is a grouped convolution "
                              f"(group={attrs['group']}); bnnforge supports group=1 only")
    if any(d != 1 for d in attrs.get("dilations", [1, 1])):
        raise OnnxImportError(f"{_node_label(node)} is dilated ({attrs['dilations']}); "
                              "bnnforge supports dilation 1 only")
    auto = attrs.get("auto_pad", b"NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else str(auto)
    if auto not in ("NOTSET", "VALID"):
        raise OnnxImportError(f"{_node_label(node)} has auto_pad={auto}; bnnforge takes "
                              "explicit pads: export with padding=(ph, pw)")
    top, left, bottom, right = (int(v) for v in attrs.get("pads", [0, 0, 0, 0]))
    if (top, left) != (bottom, right):
        raise OnnxImportError(f"{_node_label(node)} pads asymmetrically ({top}, {left}, "
                              f"{bottom}, {right}); bnnforge pads both sides alike")
    bias = _bias(node, walk, 1.0)
    out_ch, in_ch, kh, kw = w.shape
    if list(attrs.get("kernel_shape", [kh, kw])) != [kh, kw]:
        raise OnnxImportError(f"{_node_label(node)} has kernel_shape {attrs['kernel_shape']} "
                              f"but a {kh}x{kw} weight")
    if in_ch != spatial[0]:
        raise OnnxImportError(f"{_node_label(node)} takes {in_ch} channels but receives "
                              f"{spatial[0]}")
    stride = tuple(int(v) for v in attrs.get("strides", [1, 1]))
    c, h, wd = spatial
    oh, ow = _spatial_after(node, (c, h + 2 * top, wd + 2 * left), (kh, kw), stride)
    bits, scale = _binary_weight(node, w.reshape(out_ch, -1))
    scale = scale * act_scale
    unit = bool(np.all(scale == 1.0))
    # ONNX pads with 0, which adds nothing to a ±1 (or level) sum: bnnforge's exact zero padding
    layer = BinaryConv2d(in_ch, out_ch, (kh, kw), stride=stride, padding=(top, left),
                         weight_quantizer="ste", scale="none" if unit else "channel",
                         pad_value=0.0)
    with torch.no_grad():
        layer.weight.copy_(torch.from_numpy(np.where(bits, 1.0, -1.0).reshape(w.shape)).float())
        if not unit:
            layer.alpha.copy_(torch.from_numpy(scale).float())
    return layer, node, (out_ch, oh, ow), bias


def _linear(node, tensor: str, walk: _Walk, act_scale: float):
    """Build the BinaryLinear of a Gemm or MatMul whose data input is ``tensor``."""
    import torch

    from .nn.layers import BinaryLinear

    attrs = _attrs(node)
    if node.input[0] != tensor:
        raise OnnxImportError(f"{_node_label(node)} takes the data as its second operand; "
                              "bnnforge expects x·W with constant W")
    w = walk.const(node, 1).astype(np.float64)
    if w.ndim != 2:
        raise OnnxImportError(f"{_node_label(node)} has a {w.ndim}-D weight; expected 2-D")
    if node.op_type == "Gemm":
        if attrs.get("transA", 0):
            raise OnnxImportError(f"{_node_label(node)} transposes its data (transA=1); "
                                  "not supported")
        w = (w if attrs.get("transB", 0) else w.T) * float(attrs.get("alpha", 1.0))
        bias = _bias(node, walk, float(attrs.get("beta", 1.0)))
    else:
        w = w.T
        bias = None
    bits, scale = _binary_weight(node, w)
    scale = scale * act_scale
    out_features, in_features = bits.shape
    unit = bool(np.all(scale == 1.0))
    layer = BinaryLinear(in_features, out_features, "ste", scale="none" if unit else "channel")
    with torch.no_grad():
        layer.weight.copy_(torch.from_numpy(np.where(bits, 1.0, -1.0)).float())
        if not unit:
            layer.alpha.copy_(torch.from_numpy(scale).float())
    return layer, node, bias


def _bias(node, walk: _Walk, beta: float) -> np.ndarray | None:
    """A Gemm's or Conv's bias (times Gemm's beta), or None when absent or zero. Binary layers
    have none: it is added to the affine map after the layer (:func:`_affine_module`)."""
    if len(node.input) < 3 or not node.input[2]:
        return None
    bias = np.ravel(walk.const(node, 2)).astype(np.float64) * beta
    if not np.all(np.isfinite(bias)):
        raise OnnxImportError(f"{_node_label(node)} holds NaN or infinite parameters")
    return bias if np.any(bias != 0) else None


def _affine_module(segment: list, walk: _Walk, start: str, channels: int, *, final: bool,
                   spatial: bool = False, bias: np.ndarray | None = None):
    """The BatchNorm1d (BatchNorm2d after a Conv) for the nodes after a layer (output
    ``start``) up to its sign or the end; ``bias`` is the layer's own bias, added first.
    """
    import torch
    from torch import nn

    if not segment and bias is None:
        return None
    if len(segment) == 1 and segment[0].op_type == "BatchNormalization" and not final \
            and bias is None:
        return _batchnorm(segment[0], walk, channels, spatial)
    if bias is not None and bias.size not in (1, channels):
        raise OnnxImportError(f"the bias of the layer giving {start!r} has {bias.size} values "
                              f"for {channels} channels; give one per channel")
    a = np.ones(channels)
    c = np.zeros(channels) if bias is None else np.broadcast_to(bias, (channels,)).copy()
    x = start
    for node in segment:
        if node.op_type == "BatchNormalization":
            bn = _batchnorm(node, walk, channels, spatial)
            with torch.no_grad():
                s = (bn.weight.double() / torch.sqrt(bn.running_var.double() + bn.eps)).numpy()
                shift = bn.bias.double().numpy()
            a, c = a * s, (c - bn.running_mean.double().numpy()) * s + shift
        else:
            k, k_first = walk.operand(node, x)
            a, c = _affine_step(node, _per_channel(node, k, channels, spatial), k_first, a, c)
        x = node.output[0]
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(c))):
        raise OnnxImportError(f"{_node_label(segment[-1])} makes the affine map non-finite")
    if final and not np.all(a > 0):
        raise OnnxImportError(f"{_node_label(segment[-1])}: scores scaled by a non-positive "
                              "factor change the argmax; bnnforge needs a positive scale per "
                              "class after the last layer")
    bn = (nn.BatchNorm2d if spatial else nn.BatchNorm1d)(channels, eps=0.0)
    with torch.no_grad():
        bn.weight.copy_(torch.from_numpy(a).float())
        bn.bias.copy_(torch.from_numpy(c).float())
    return bn.eval()


def _batchnorm(node, walk: _Walk, channels: int, spatial: bool = False):
    import torch
    from torch import nn

    attrs = _attrs(node)
    if attrs.get("training_mode", 0) or len([o for o in node.output if o]) != 1:
        raise OnnxImportError(f"{_node_label(node)} is in training mode; export the model in "
                              "eval mode (model.eval())")
    params = [walk.const(node, i).astype(np.float32) for i in range(1, 5)]
    if any(p.shape != (channels,) for p in params):
        raise OnnxImportError(f"{_node_label(node)} has parameters of shapes "
                              f"{[p.shape for p in params]}; expected ({channels},)")
    gamma, beta, mean, var = params
    eps = float(attrs.get("epsilon", 1e-5))
    if np.any(var < 0) or eps < 0:
        raise OnnxImportError(f"{_node_label(node)} has a negative variance or epsilon")
    bn = (nn.BatchNorm2d if spatial else nn.BatchNorm1d)(channels, eps=eps)
    with torch.no_grad():
        bn.weight.copy_(torch.from_numpy(gamma))
        bn.bias.copy_(torch.from_numpy(beta))
        bn.running_mean.copy_(torch.from_numpy(mean))
        bn.running_var.copy_(torch.from_numpy(var))
    return bn.eval()


# --------------------------------------------------------------------------- file and checking

def import_onnx_file(path: str | os.PathLike, output: str | os.PathLike, *,
                     check: int | None = None, seed: int = 0) -> dict:
    """Import the QONNX file ``path`` and write it as the bnnforge model file ``output``.

    The model is lowered (and with ``check``, compared with qonnx's executor on that many
    random frames) before the file is written, atomically. Returns ``{"model", "input_shape",
    "meta", "agree"}`` (``agree``: frames with the same argmax, ``None`` without ``check``).
    """
    from .compiler.lower import lower
    from .modelfile import save

    model, input_shape, meta = import_onnx(path)
    lower(model, input_shape, name=meta["name"])
    agree = None
    if check:
        agree = check_against_qonnx(path, model, input_shape, check, seed=seed)
    save(model, output, input_shape, meta)
    return {"model": model, "input_shape": input_shape, "meta": meta, "agree": agree}


def check_against_qonnx(path: str | os.PathLike, model, input_shape: tuple, frames: int,
                        seed: int = 0) -> int:
    """Count the seeded random frames on which qonnx and bnnforge give the same argmax.

    Runs qonnx's executor on ``frames`` random uint8 frames (``x = frame/255``) in one batch
    and compares with ``bnnforge.reference`` of the lowered model.
    """
    try:
        from qonnx.core.modelwrapper import ModelWrapper
        from qonnx.core.onnx_exec import execute_onnx
        from qonnx.util.cleanup import cleanup_model
    except ImportError:
        raise OnnxImportError("--check needs qonnx (pip install qonnx)") from None
    from .compiler.lower import lower
    from .sim.reference import reference

    x = np.random.default_rng(seed).integers(0, 256, (frames,) + tuple(input_shape),
                                             dtype=np.uint8)
    wrapper = cleanup_model(ModelWrapper(str(path)), override_inpsize=frames)
    name_in, name_out = wrapper.graph.input[0].name, wrapper.graph.output[0].name
    scores = execute_onnx(wrapper, {name_in: x.astype(np.float32) / np.float32(255)})[name_out]
    ours = reference(lower(model, input_shape), x)
    return int(np.sum(np.argmax(scores, axis=1) == np.argmax(ours, axis=1)))
