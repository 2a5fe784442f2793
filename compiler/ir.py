"""The dataflow IR: a directed acyclic graph of streaming stages over networkx.

Every node of a :class:`DataflowGraph` is one streaming stage. Its attribute ``op`` is a frozen
dataclass from this module that holds the stage's shapes and numpy data. Micro-architecture
choices made by passes live in separate node attributes (``fold``, ``mst``, ``fifo_depth``).
Most graphs are chains; residual models add forks (a stream with several consumers) and joins
(:class:`ResidualAdd`, :class:`Concat`, whose inputs are numbered ports).

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
* A matrix stage with ``emit="popcount"`` streams its accumulators ``P`` (unsigned,
  ``int(K).bit_length()`` bits each, channel 0 first) instead of bits; only a
  :class:`ResidualAdd` consumes them.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field, fields

import networkx as nx
import numpy as np

__all__ = [
    "Op", "InputLayer", "BinaryDense", "BinaryConv", "MaxPool", "ScoreLayer", "ResidualAdd",
    "Concat", "DataflowGraph", "OP_TYPES", "EMITS", "pack_bits", "unpack_bits",
    "check_pixels_per_transfer",
]

EMITS = ("bits", "popcount")


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
    # fields left out of params() while they hold their default (files stay as they were)
    _quiet_defaults = ()

    @property
    def in_bits(self) -> int:
        return 1

    @property
    def out_bits(self) -> int:
        return 1

    @property
    def num_inputs(self) -> int:
        """Number of input ports (0 for the input stage)."""
        return 1

    def port_shapes(self) -> list[tuple]:
        """Return the tensor shape each input port expects, port 0 first."""
        return [tuple(self.in_shape)] * self.num_inputs

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
            if f.name in self._quiet_defaults and value == f.default:
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

    @property
    def num_inputs(self) -> int:
        return 0


@dataclass(frozen=True, eq=False)
class _Matrix(Op):
    """A matrix-vector stage: XNOR-popcount (or signed sum for 8-bit inputs) per output channel.

    Before :class:`~bnnforge.compiler.passes.FoldThresholds` the stage holds the float64
    per-channel affine map ``a * s + b`` (``affine`` of shape (2, C_out)) applied to the signed
    dot product ``s`` (``s = 2P - K`` for binary inputs, ``s = A`` for 8-bit inputs), and its
    output bit is ``a * s + b >= 0``. After folding it holds integer ``thresholds`` instead, and the
    output bit is ``accumulator >= threshold`` with weights inverted on channels whose scale was
    negative.

    With ``emit="popcount"`` the stage has neither: it outputs the popcounts ``P`` in [0, K]
    (binary inputs and one pad class only; ``out_bits = int(K).bit_length()``) for the
    :class:`ResidualAdd` that folds its affine, and counts as folded.
    """

    k: int = 0
    channels: int = 0
    weights: np.ndarray = field(default=None, repr=False)
    input_bits: int = 1
    thresholds: np.ndarray | None = field(default=None, repr=False)
    affine: np.ndarray | None = field(default=None, repr=False)
    emit: str = "bits"

    _quiet_defaults = ("emit",)

    def __post_init__(self):
        if self.emit not in EMITS:
            raise ValueError(f"{type(self).__name__} emit must be 'bits' or 'popcount', "
                             f"not {self.emit!r}")
        if self.emit == "popcount":
            if self.thresholds is not None or self.affine is not None:
                raise ValueError(f"{type(self).__name__} with emit='popcount' has no thresholds "
                                 "and no affine (the ResidualAdd after it holds them)")
            if self.input_bits != 1:
                raise ValueError(f"{type(self).__name__} with emit='popcount' needs binary "
                                 f"inputs, not input_bits={self.input_bits}")

    @property
    def in_bits(self) -> int:
        return self.input_bits

    @property
    def out_bits(self) -> int:
        return int(self.k).bit_length() if self.emit == "popcount" else 1

    @property
    def folded(self) -> bool:
        return self.thresholds is not None or self.emit == "popcount"

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
        super().__post_init__()
        rows, cols = self.row_class, self.col_class
        if (rows is None) != (cols is None):
            raise ValueError("BinaryConv needs both row_class and col_class, or neither")
        n = self.classes
        if self.emit == "popcount" and rows is not None:
            raise ValueError("BinaryConv with emit='popcount' has one pad class only (pad with a "
                             "value the hardware holds)")
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


SHORTCUTS = EMITS              # what a residual add reads on its shortcut port


@dataclass(frozen=True, eq=False)
class ResidualAdd(Op):
    """The join of a residual block: ``sign(main + shortcut)`` per channel, as a threshold.

    Port 0 ("main") is a :class:`BinaryConv` or :class:`BinaryDense` with ``emit="popcount"``
    over ``main_k`` inputs: per channel its popcount ``P``, ``s = 2P - main_k``. Port 1
    ("shortcut") is, with ``short="bits"``, a binary tensor of the same shape (identity
    shortcut: ``x = ±1``), or with ``short="popcount"`` another popcount stage over ``short_k``
    inputs (projection shortcut: ``P2``, ``s2 = 2 P2 - short_k``). ``in_shape`` = ``out_shape``
    = (C, H, W) or (C,); the output is C bits.

    Before :class:`~bnnforge.compiler.passes.FoldThresholds`: ``affine`` (float64, (2, C): the
    main path's ``a``, ``b``) and for a popcount shortcut ``short_affine`` ((2, C): ``a2``,
    ``b2``); the output bit is ``a s + b + x >= 0`` or ``a s + b + a2 s2 + b2 >= 0``. After
    folding: ``thresholds``, int64 of shape (S, C), S = 2 for bits (row = the shortcut bit) and
    ``short_k + 1`` for popcounts (row = ``P2``); the output bit of channel c is
    ``P_c >= thresholds[sel_c, c]`` (the main stage's weight rows are inverted where ``a < 0``).
    """

    main_k: int = 0
    short: str = "bits"
    short_k: int = 0
    affine: np.ndarray | None = field(default=None, repr=False)
    short_affine: np.ndarray | None = field(default=None, repr=False)
    thresholds: np.ndarray | None = field(default=None, repr=False)

    kind = "add"

    def __post_init__(self):
        if tuple(self.in_shape) != tuple(self.out_shape) or len(self.out_shape) not in (1, 3):
            raise ValueError(f"ResidualAdd in_shape and out_shape must be one (C, H, W) or (C,) "
                             f"shape, not {self.in_shape} -> {self.out_shape}")
        if self.short not in SHORTCUTS:
            raise ValueError(f"ResidualAdd short must be 'bits' or 'popcount', not "
                             f"{self.short!r}")
        if self.main_k < 1 or (self.short == "popcount") != (self.short_k >= 1) \
                or self.short_k < 0:
            raise ValueError(f"ResidualAdd needs main_k >= 1 and short_k >= 1 for a popcount "
                             f"shortcut (0 for bits), not main_k={self.main_k}, "
                             f"short_k={self.short_k}")
        c = self.channels
        for what, arr, want in (("affine", self.affine, (2, c)),
                                ("short_affine", self.short_affine, (2, c)),
                                ("thresholds", self.thresholds, (self.selectors, c))):
            if arr is not None and tuple(arr.shape) != want:
                raise ValueError(f"ResidualAdd {what} must have shape {want}, not "
                                 f"{tuple(arr.shape)}")
        if (self.short_affine is not None) and self.short != "popcount":
            raise ValueError("ResidualAdd short_affine belongs to a popcount shortcut only")
        if self.thresholds is None and (self.affine is None or (
                self.short == "popcount") != (self.short_affine is not None)):
            raise ValueError("ResidualAdd needs thresholds, or affine (and short_affine for a "
                             "popcount shortcut)")

    @property
    def num_inputs(self) -> int:
        return 2

    @property
    def channels(self) -> int:
        return int(self.out_shape[0])

    @property
    def selectors(self) -> int:
        """Rows of the threshold table: 2 (shortcut bit) or ``short_k + 1`` (shortcut P2)."""
        return 2 if self.short == "bits" else self.short_k + 1

    @property
    def folded(self) -> bool:
        return self.thresholds is not None

    def port_bits(self) -> list[int]:
        """Bits per element on each port: the popcount widths (1 for a bits shortcut)."""
        short = 1 if self.short == "bits" else int(self.short_k).bit_length()
        return [int(self.main_k).bit_length(), short]


@dataclass(frozen=True, eq=False)
class Concat(Op):
    """Channel concatenation of n >= 2 binary tensors (torch.cat along channels).

    Port k carries ``parts[k]`` channels of the same (H, W) (or vectors of ``parts[k]``);
    ``in_shape`` = ``out_shape`` = (sum(parts), H, W) or (sum(parts),). In the stream each
    output pixel holds port 0's channels first.
    """

    parts: tuple = ()

    kind = "concat"

    def __post_init__(self):
        parts = tuple(int(p) for p in self.parts)
        object.__setattr__(self, "parts", parts)
        if len(parts) < 2 or min(parts) < 1:
            raise ValueError(f"Concat needs at least two positive channel counts, not {parts}")
        if tuple(self.in_shape) != tuple(self.out_shape) or len(self.out_shape) not in (1, 3) \
                or int(self.out_shape[0]) != sum(parts):
            raise ValueError(f"Concat in_shape and out_shape must be ({sum(parts)}, ...) for "
                             f"parts {parts}, not {self.in_shape} -> {self.out_shape}")

    @property
    def num_inputs(self) -> int:
        return len(self.parts)

    def port_shapes(self) -> list[tuple]:
        rest = tuple(self.out_shape[1:])
        return [(p, *rest) for p in self.parts]


OP_TYPES = {cls.__name__: cls for cls in (InputLayer, BinaryDense, BinaryConv, MaxPool, ScoreLayer,
                                          ResidualAdd, Concat)}


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
    """A directed acyclic graph of streaming stages: a ``networkx.DiGraph`` whose nodes carry an
    ``op``.

    Nodes are named (``"input"``, ``"conv0"``, ``"fc1"``, ``"add0"``, ``"scores"`` …). Edges
    carry the tensor ``shape``, the ``bits`` per element and the consumer's input ``port``
    (0 first). Most graphs are chains; a stream with several consumers is a fork, a stage with
    several inputs (:class:`ResidualAdd`, :class:`Concat`) a join. There is one input stage (no
    inputs) and one output stage (no consumers, the :class:`ScoreLayer`).

    Passes set further node attributes: ``fold`` (``{"pe": …, "simd": …}``), ``mst``,
    ``fifo_depth`` (an int, the FIFO in front of a one-input stage; for a stage with n > 1
    inputs a list of n ints, one per port; 0 = a wire); the input node may carry
    ``pixels_per_transfer`` (default 1: pixels the accelerator's input stream carries per
    transfer; see :meth:`pixels_per_transfer`).
    """

    def __init__(self, name: str = "model", meta: dict | None = None):
        self.nx = nx.DiGraph()
        self.name = name
        self.meta = dict(meta or {})

    # -- building ------------------------------------------------------------------------------
    def add(self, name: str, op: Op, inputs: list[str] | None = None, **attrs) -> None:
        """Add a stage.

        Parameters
        ----------
        name
            The stage's unique name.
        op
            Its operation.
        inputs
            Producer stage names in port order (port 0 first); ``[]`` for the input stage.
            ``None`` appends the stage after the last one added (a chain).
        **attrs
            Further node attributes (``source``, ``fold``, ``fifo_depth`` …).

        Raises
        ------
        ValueError
            For a name in use, an unknown producer, a wrong number of inputs or a shape that
            does not fit.
        """
        if name in self.nx:
            raise ValueError(f"a stage named {name!r} exists already")
        if inputs is None:
            inputs = [list(self.nx.nodes)[-1]] if len(self.nx) else []
        inputs = [str(n) for n in inputs]
        if len(inputs) != op.num_inputs and not (not inputs and not len(self.nx)):
            raise ValueError(f"stage {name!r} ({type(op).__name__}) takes {op.num_inputs} "
                             f"input(s), not {len(inputs)}: {inputs}")
        if len(set(inputs)) != len(inputs):
            raise ValueError(f"stage {name!r} reads {inputs}; each producer may feed one port")
        for port, (src, shape) in enumerate(zip(inputs, op.port_shapes(), strict=False)):
            if src not in self.nx:
                raise ValueError(f"stage {name!r} reads {src!r}, which is not in the graph")
            prev = self.nx.nodes[src]["op"]
            if tuple(prev.out_shape) != tuple(shape):
                where = f" on port {port}" if op.num_inputs > 1 else ""
                raise ValueError(f"stage {name!r} expects shape {shape}{where}, but {src!r} "
                                 f"produces {prev.out_shape}")
        self._check_streams(name, op, inputs)
        self.nx.add_node(name, op=op, **attrs)
        for port, (src, shape) in enumerate(zip(inputs, op.port_shapes(), strict=False)):
            self.nx.add_edge(src, name, shape=tuple(shape),
                             bits=self.nx.nodes[src]["op"].out_bits, port=port)

    def _check_streams(self, name: str, op: Op, inputs: list[str]) -> None:
        """Popcount streams go to a ResidualAdd only (one each, K as it says); the rest are
        bits or the input's bytes."""
        for port, src in enumerate(inputs):
            prev = self.nx.nodes[src]["op"]
            popcount = getattr(prev, "emit", "bits") == "popcount"
            if isinstance(op, ResidualAdd):
                want = port == 0 or op.short == "popcount"
                k = op.main_k if port == 0 else op.short_k
                if popcount != want or (popcount and int(prev.k) != k):
                    what = f"a popcount stage of K={k}" if want else "a binary stream"
                    raise ValueError(f"ResidualAdd {name!r} port {port} needs {what}, not "
                                     f"{src!r} ({type(prev).__name__}, emit="
                                     f"{getattr(prev, 'emit', 'bits')!r}, out_bits="
                                     f"{prev.out_bits})")
                if not popcount and prev.out_bits != 1:
                    raise ValueError(f"ResidualAdd {name!r} port {port} needs a binary stream, "
                                     f"not {src!r} ({prev.out_bits} bits)")
            elif popcount:
                raise ValueError(f"stage {name!r} reads the popcounts of {src!r}; only a "
                                 "ResidualAdd takes popcounts")
            elif isinstance(op, Concat) and prev.out_bits != 1:
                raise ValueError(f"Concat {name!r} joins binary streams, not {src!r} "
                                 f"({prev.out_bits} bits)")
            if popcount and self.nx.out_degree(src):
                raise ValueError(f"stage {name!r} reads the popcounts of {src!r}, which feed "
                                 f"{list(self.nx.successors(src))} already; a popcount stage "
                                 "has one consumer")

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
        """Return the stage names in a topological order, input first and output last.

        Deterministic: among stages that are ready at once, the one added first comes first
        (for a chain, the chain's order).
        """
        rank = {n: i for i, n in enumerate(self.nx.nodes)}
        return list(nx.lexicographical_topological_sort(self.nx, key=rank.__getitem__))

    def inputs(self, name: str) -> list[str]:
        """Return the producers of stage ``name`` in port order."""
        edges = sorted(self.nx.in_edges(name, data="port"), key=lambda e: e[2])
        return [src for src, _, _ in edges]

    def consumers(self, name: str) -> list[str]:
        """Return the stages that read stage ``name``'s stream, in graph order."""
        succ = set(self.nx.successors(name))
        return [n for n in self.order() if n in succ] if len(succ) > 1 else list(succ)

    def port(self, src: str, dst: str) -> int:
        """Return the input port of ``dst`` that ``src`` feeds."""
        return int(self.nx.edges[src, dst]["port"])

    def is_chain(self) -> bool:
        """Return whether every stage has at most one input and at most one consumer."""
        return all(self.nx.in_degree(n) <= 1 and self.nx.out_degree(n) <= 1 for n in self.nx)

    def fifo_depths(self, name: str, default: int = 2) -> list[int]:
        """Return the FIFO depth in front of each input port of ``name`` (``fifo_depth`` as a
        list, ``default`` per port when absent)."""
        n = max(1, self.nx.in_degree(name))
        value = self.attrs(name).get("fifo_depth", default)
        if isinstance(value, (list, tuple)):
            if len(value) != n:
                raise ValueError(f"stage {name!r}: fifo_depth must list {n} depths (one per "
                                 f"input port), not {value!r}")
            return [int(v) for v in value]
        return [int(value)] * n

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
        """Return the stage without inputs (the first in :meth:`order`)."""
        return self.order()[0]

    def output_node(self) -> str:
        """Return the stage without consumers (the last in :meth:`order`)."""
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
            if self.inputs(name) != other.inputs(name):
                return False
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
