"""The dataflow IR: a chain of streaming stages over a networkx graph.

Every node of a :class:`DataflowGraph` is one streaming stage. Its attribute ``op`` is a frozen
dataclass from this module that holds the stage's shapes and numpy data. Micro-architecture
choices made by passes live in separate node attributes (``fold``, ``mst``, ``fifo_depth``).

Layout conventions (shared by every backend):

* Feature maps stream in HWC order: pixel by pixel, channels innermost. A shape is still written
  (C, H, W) as in torch.
* A binary value is one bit: 1 means +1, 0 means -1.
* Weight rows are packed with ``np.packbits(..., bitorder="little")`` along the reduction axis K
  (bit ``i`` of byte ``j`` is element ``8 j + i``); pad bits are 0. For convolutions the K axis is
  in im2col order (kernel row, kernel column, input channel), channels innermost. 8-bit first
  layers keep their weights as bits too (1 = +1, 0 = -1); their inputs are unsigned bytes.
* A binary layer's accumulator is ``P = popcount(XNOR(x, w))`` over K inputs; an 8-bit first
  layer's accumulator is ``A = sum(w_i * q_i)`` with ``w_i`` in {-1, +1}.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field, fields

import networkx as nx
import numpy as np

__all__ = [
    "Op", "InputLayer", "BinaryDense", "BinaryConv", "MaxPool", "ScoreLayer",
    "DataflowGraph", "OP_TYPES", "pack_bits", "unpack_bits", "check_pixels_per_transfer",
]


def pack_bits(bits: np.ndarray) -> np.ndarray:
    """Pack a boolean array along its last axis into little-endian bytes."""
    return np.packbits(np.asarray(bits, dtype=bool), axis=-1, bitorder="little")


def unpack_bits(packed: np.ndarray, k: int) -> np.ndarray:
    """Unpack little-endian bytes along the last axis into ``k`` booleans."""
    return np.unpackbits(packed, axis=-1, count=k, bitorder="little").astype(bool)


@dataclass(frozen=True, eq=False)
class Op:
    """Base of every IR operation. Array fields are numpy arrays; the rest are plain values."""

    in_shape: tuple
    out_shape: tuple

    kind = "op"

    @property
    def in_bits(self) -> int:
        return 1

    @property
    def out_bits(self) -> int:
        return 1

    def arrays(self) -> dict[str, np.ndarray]:
        """Return the array-valued fields by name."""
        return {f.name: getattr(self, f.name) for f in fields(self)
                if isinstance(getattr(self, f.name), np.ndarray)}

    def params(self) -> dict:
        """Return the scalar and tuple fields by name (JSON-able)."""
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, np.ndarray) or value is None:
                continue
            out[f.name] = list(value) if isinstance(value, tuple) else value
        return out

    def same_as(self, other: Op) -> bool:
        """Return whether two ops are equal field by field (arrays compared by value)."""
        if type(self) is not type(other):
            return False
        for f in fields(self):
            a, b = getattr(self, f.name), getattr(other, f.name)
            if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
                if not (isinstance(a, np.ndarray) and isinstance(b, np.ndarray)):
                    return False
                if a.dtype != b.dtype or not np.array_equal(a, b):
                    return False
            elif a != b:
                return False
        return True


@dataclass(frozen=True, eq=False)
class InputLayer(Op):
    """The accelerator's input: one frame of unsigned 8-bit pixels, shape (C, H, W).

    ``bits`` is 1 when the first layer sees binarized pixels (bit = pixel >= ``threshold``,
    1..255; 128 is x = pixel / 255 >= 0.5) and 8 when it sees bytes: the pixels themselves, or
    ``table[pixel]`` when ``table`` (256 ints 0..255) is set. A table comes from
    ``InputQuant(levels=...)``: ``table = levels - min(levels)``; lowering folds the constant
    ``min(levels)`` into the first layer's affine.
    """

    bits: int = 1
    threshold: int = 128
    table: tuple | None = None

    def __post_init__(self):
        if self.table is not None:
            table = tuple(int(v) for v in self.table)
            if len(table) != 256 or not all(0 <= v <= 255 for v in table) or self.bits != 8:
                raise ValueError("InputLayer table must be 256 integers 0..255 on an 8-bit "
                                 f"input, not {len(table)} values (bits={self.bits})")
            object.__setattr__(self, "table", table)

    kind = "input"

    @property
    def out_bits(self) -> int:
        return self.bits


@dataclass(frozen=True, eq=False)
class _Matrix(Op):
    """A matrix-vector stage: XNOR-popcount (or signed sum for 8-bit inputs) per output channel.

    Before :class:`~bnnforge.compiler.passes.FoldThresholds` the stage holds the float64
    per-channel affine map ``a * s + b`` (``affine`` of shape (2, C_out)) applied to the signed
    dot product ``s`` (``s = 2P - K`` for binary inputs, ``s = A`` for 8-bit inputs), and its
    output bit is ``a * s + b >= 0``. After folding it holds integer ``thresholds`` instead, and the
    output bit is ``accumulator >= threshold`` with weights inverted on channels whose scale was
    negative.
    """

    k: int = 0
    channels: int = 0
    weights: np.ndarray = field(default=None, repr=False)
    input_bits: int = 1
    thresholds: np.ndarray | None = field(default=None, repr=False)
    affine: np.ndarray | None = field(default=None, repr=False)

    @property
    def in_bits(self) -> int:
        return self.input_bits

    @property
    def folded(self) -> bool:
        return self.thresholds is not None

    @property
    def classes(self) -> int:
        """Rows of the threshold table: 1 (a convolution with pad classes has more)."""
        return 1

    def weight_bits(self) -> np.ndarray:
        """Return the weights as a boolean (C_out, K) matrix (True = +1)."""
        return unpack_bits(self.weights, self.k)

    def accumulator_range(self) -> tuple[int, int]:
        """Return the smallest and largest value the accumulator can take."""
        if self.input_bits == 1:
            return 0, self.k
        return -255 * self.k, 255 * self.k


@dataclass(frozen=True, eq=False)
class BinaryDense(_Matrix):
    """Fully connected binary layer: (K,) or a flattened (C, H, W) in, (C_out,) bits out.

    When the input is a feature map, K follows the stream order (H, W, C).
    """

    kind = "dense"


@dataclass(frozen=True, eq=False)
class BinaryConv(_Matrix):
    """Binary convolution: (C, H, W) in, (C_out, OH, OW) bits out.

    The input is padded with ``pad_value`` (a bit for binary inputs, a byte for 8-bit inputs)
    by ``padding`` pixels on each side, then windows of ``kernel`` are taken every ``stride``.

    When the model pads with a value the hardware cannot hold (0 in the ±1 domain, a level
    whose byte is out of 0..255), the stage still pads with ``pad_value`` and corrects the
    difference in its thresholds: the padded taps of an output depend only on its row class
    (``row_class[oy]``) and column class (``col_class[ox]``), so ``thresholds`` (and ``affine``
    before folding) get one row per class, shape (classes, C) (and (classes, 2, C)). Without
    class maps the layer has one class and the usual (C,) and (2, C) shapes.
    """

    kernel: tuple = (1, 1)
    stride: tuple = (1, 1)
    padding: tuple = (0, 0)
    pad_value: int = 0
    row_class: np.ndarray | None = field(default=None, repr=False)
    col_class: np.ndarray | None = field(default=None, repr=False)

    kind = "conv"

    def __post_init__(self):
        rows, cols = self.row_class, self.col_class
        if (rows is None) != (cols is None):
            raise ValueError("BinaryConv needs both row_class and col_class, or neither")
        n = self.classes
        if rows is not None:
            oh, ow = int(self.out_shape[1]), int(self.out_shape[2])
            for what, arr, length in (("row_class", rows, oh), ("col_class", cols, ow)):
                if not isinstance(arr, np.ndarray) or arr.shape != (length,) \
                        or not np.issubdtype(arr.dtype, np.integer) or arr.min() < 0:
                    raise ValueError(f"BinaryConv {what} must be {length} non-negative integers "
                                     f"(one per output {what[:3]}), not {arr!r}")
        for what in ("thresholds", "affine"):
            arr = getattr(self, what)
            if arr is None:
                continue
            lead = (2,) if what == "affine" else ()
            want = (*lead, self.channels) if n == 1 else (n, *lead, self.channels)
            if tuple(arr.shape) != want:
                raise ValueError(f"BinaryConv {what} must have shape {want} for {n} pad "
                                 f"class(es), not {tuple(arr.shape)}")
            if what == "affine" and n > 1 and not np.array_equal(arr[:, 0], arr[:1, 0].repeat(
                    n, axis=0)):
                raise ValueError("BinaryConv affine: the pad classes must share one scale "
                                 "(row 0) per channel; only the offsets differ")

    @property
    def classes(self) -> int:
        """Output-position classes with their own thresholds (1 unless the pad is corrected).

        Output (oy, ox) has class ``row_class[oy] * (max(col_class) + 1) + col_class[ox]``.
        """
        if self.row_class is None:
            return 1
        return int((self.row_class.max() + 1) * (self.col_class.max() + 1))

    def class_map(self) -> np.ndarray:
        """Return the (OH, OW) class of every output position (all 0 for one class)."""
        oh, ow = int(self.out_shape[1]), int(self.out_shape[2])
        if self.row_class is None:
            return np.zeros((oh, ow), dtype=np.int64)
        ncol = int(self.col_class.max()) + 1
        return self.row_class.astype(np.int64)[:, None] * ncol + \
            self.col_class.astype(np.int64)[None, :]


@dataclass(frozen=True, eq=False)
class MaxPool(Op):
    """Binary max-pool: the OR of each window's bits, per channel; no padding."""

    kernel: tuple = (2, 2)
    stride: tuple = (2, 2)

    kind = "maxpool"


@dataclass(frozen=True, eq=False)
class ScoreLayer(Op):
    """The last layer: binary weights, integer class scores and their argmax.

    ``score_c = mul_c * s_c + add_c`` with ``s_c`` the signed dot product (``2P - K`` or ``A``).
    The torch model's score is ``gain * score_c`` up to float rounding, and both give the same
    argmax: ``mul``/``add`` are exact integers when the model's last layer has no BatchNorm or
    per-class scale, else a fixed-point version checked to keep the order of every reachable
    score. ``score_bits`` (at least 32) is the two's complement width that holds every score.
    """

    k: int = 0
    channels: int = 0
    weights: np.ndarray = field(default=None, repr=False)
    input_bits: int = 1
    mul: np.ndarray = field(default=None, repr=False)
    add: np.ndarray = field(default=None, repr=False)
    gain: float = 1.0
    score_bits: int = 32
    affine: np.ndarray | None = field(default=None, repr=False)

    kind = "score"

    @property
    def in_bits(self) -> int:
        return self.input_bits

    @property
    def out_bits(self) -> int:
        return 32

    @property
    def folded(self) -> bool:
        return self.mul is not None

    weight_bits = _Matrix.weight_bits
    accumulator_range = _Matrix.accumulator_range


OP_TYPES = {cls.__name__: cls for cls in (InputLayer, BinaryDense, BinaryConv, MaxPool, ScoreLayer)}


def check_pixels_per_transfer(name: str, op: Op, value) -> int:
    """Return ``value`` as the input's pixels per transfer, or raise ``ValueError``.

    It must be a positive integer that divides the H·W pixels of ``op``'s frames (a (K,) vector
    input is one pixel); the message lists the legal values.
    """
    shape = tuple(op.in_shape)
    pixels = int(shape[1] * shape[2]) if len(shape) == 3 else 1
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1 \
            or pixels % value:
        legal = [d for d in range(1, pixels + 1) if pixels % d == 0]
        raise ValueError(f"stage {name!r}: pixels_per_transfer must divide the {pixels} pixels "
                         f"of a frame (legal: {', '.join(map(str, legal))}), not {value!r}")
    return int(value)


class DataflowGraph:
    """A chain of streaming stages: a ``networkx.DiGraph`` whose nodes carry an ``op``.

    Nodes are named (``"input"``, ``"conv0"``, ``"fc1"``, ``"scores"`` …). Edges carry the tensor
    ``shape`` and the ``bits`` per element. Passes set further node attributes: ``fold``
    (``{"pe": …, "simd": …}``), ``mst``, ``fifo_depth``; the input node may carry
    ``pixels_per_transfer`` (default 1: pixels the accelerator's input stream carries per
    transfer; see :meth:`pixels_per_transfer`).
    """

    def __init__(self, name: str = "model", meta: dict | None = None):
        self.nx = nx.DiGraph()
        self.name = name
        self.meta = dict(meta or {})

    # -- building ------------------------------------------------------------------------------
    def add(self, name: str, op: Op, **attrs) -> None:
        """Append a stage after the current last one."""
        if name in self.nx:
            raise ValueError(f"a stage named {name!r} exists already")
        last = self.output_node() if len(self.nx) else None
        self.nx.add_node(name, op=op, **attrs)
        if last is not None:
            prev = self.nx.nodes[last]["op"]
            if tuple(prev.out_shape) != tuple(op.in_shape):
                raise ValueError(f"stage {name!r} expects shape {op.in_shape}, but {last!r} "
                                 f"produces {prev.out_shape}")
            self.nx.add_edge(last, name, shape=tuple(op.in_shape), bits=prev.out_bits)

    def copy(self) -> DataflowGraph:
        """Return a copy sharing the (immutable) ops but not the attribute dicts."""
        other = DataflowGraph(self.name, self.meta)
        other.nx = self.nx.copy()
        for n in other.nx.nodes:
            other.nx.nodes[n].update({k: _copy_attr(v) for k, v in self.nx.nodes[n].items()})
        return other

    def replace_op(self, name: str, op: Op) -> None:
        """Swap the op of stage ``name`` for one of the same shapes."""
        old = self.nx.nodes[name]["op"]
        if tuple(old.in_shape) != tuple(op.in_shape) or tuple(old.out_shape) != tuple(op.out_shape):
            raise ValueError(f"replacement op for {name!r} changes its shapes")
        self.nx.nodes[name]["op"] = op

    # -- reading -------------------------------------------------------------------------------
    def order(self) -> list[str]:
        """Return the stage names from input to output."""
        return list(nx.lexicographical_topological_sort(self.nx))

    def __iter__(self) -> Iterator[tuple[str, Op]]:
        for name in self.order():
            yield name, self.nx.nodes[name]["op"]

    def __len__(self) -> int:
        return len(self.nx)

    def op(self, name: str) -> Op:
        return self.nx.nodes[name]["op"]

    def attrs(self, name: str) -> dict:
        return self.nx.nodes[name]

    def input_node(self) -> str:
        return self.order()[0]

    def output_node(self) -> str:
        return self.order()[-1]

    @property
    def input_shape(self) -> tuple:
        return tuple(self.op(self.input_node()).in_shape)

    def pixels_per_transfer(self) -> int:
        """Return the input node's ``pixels_per_transfer`` (default 1), checked: it must divide
        the H·W pixels of a frame (``ValueError`` listing the legal values otherwise)."""
        name = self.input_node()
        return check_pixels_per_transfer(name, self.op(name),
                                         self.attrs(name).get("pixels_per_transfer", 1))

    @property
    def num_classes(self) -> int:
        return int(self.op(self.output_node()).channels)

    def same_as(self, other: DataflowGraph) -> bool:
        """Return whether two graphs hold the same stages, ops and attributes."""
        if self.order() != other.order() or self.name != other.name or self.meta != other.meta:
            return False
        for name in self.order():
            a, b = self.attrs(name), other.attrs(name)
            if not a["op"].same_as(b["op"]):
                return False
            if {k: v for k, v in a.items() if k != "op"} != \
                    {k: v for k, v in b.items() if k != "op"}:
                return False
        return True


def _copy_attr(value):
    if isinstance(value, dict):
        return {k: _copy_attr(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copy_attr(v) for v in value]
    return value
