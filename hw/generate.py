"""Build the accelerator (one Amaranth component) from a folded dataflow graph; emit Verilog."""

from __future__ import annotations

import json
import pathlib

from amaranth.back import verilog
from amaranth.hdl import Module
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from ..compiler.ir import BinaryConv, BinaryDense, DataflowGraph, InputLayer, MaxPool, ScoreLayer
from .components import (
    MVTU,
    Deserializer,
    InputTable,
    InputThreshold,
    ScoreUnit,
    Serializer,
    SlidingWindow,
    StreamFIFO,
    silence,
)
from .components import MaxPool as MaxPoolUnit
from .mst_layer import MSTLayer

__all__ = ["TOP_NAME", "Accelerator", "emit_verilog"]

TOP_NAME = "bnnforge_top"


def _fold(graph: DataflowGraph, name: str, op) -> tuple[int, int]:
    fold = graph.attrs(name).get("fold")
    if not isinstance(fold, dict) or "pe" not in fold or "simd" not in fold:
        raise ValueError(f"stage {name!r} has no fold attribute {{'pe': int, 'simd': int}}; "
                         f"got {fold!r} (run a folding pass first)")
    pe, simd = fold["pe"], fold["simd"]
    for what, v, total, label in (("PE", pe, op.channels, "channels"), ("SIMD", simd, op.k, "K")):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1 or total % v:
            raise ValueError(f"stage {name!r}: {what} must be a positive divisor of "
                             f"{label}={total}, not {v!r}")
    return pe, simd


def _is_mst(graph: DataflowGraph, name: str) -> bool:
    fold = graph.attrs(name).get("fold")
    return isinstance(fold, dict) and bool(fold.get("mst", False))


def _mst_unit(graph: DataflowGraph, name: str, op, pe: int, simd: int) -> MSTLayer:
    """Build the MSTLayer of a stage whose fold is ``{"pe": C, "simd": K, "mst": True}``."""
    if (pe, simd) != (op.channels, op.k):
        raise ValueError(f"stage {name!r}: an MST layer needs PE = channels = {op.channels} and "
                         f"SIMD = K = {op.k}, not PE={pe}, SIMD={simd}")
    if op.input_bits != 1:
        raise ValueError(f"stage {name!r}: an MST layer takes binary inputs only, not "
                         f"{op.input_bits}-bit inputs; drop 'mst' from its fold")
    if op.classes > 1:
        raise ValueError(f"stage {name!r}: an MST layer has one threshold per channel, but this "
                         f"convolution has {op.classes} pad classes (its pad value is corrected "
                         "per output position); drop 'mst' from its fold")
    tree = graph.attrs(name).get("mst")
    if not isinstance(tree, dict) or "parent" not in tree or "complement" not in tree:
        raise ValueError(f"stage {name!r} is folded as an MST layer but has no 'mst' attribute "
                         "(parent, complement, depth); run OrderChannelsByMST first")
    return MSTLayer(op.k, op.channels, op.weights, op.thresholds, tree["parent"],
                    tree["complement"], depth=tree.get("depth"))


def _fifo_depth(graph: DataflowGraph, name: str) -> int:
    depth = graph.attrs(name).get("fifo_depth", 2)
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 0:
        raise ValueError(f"stage {name!r}: fifo_depth must be a non-negative integer, "
                         f"not {depth!r}")
    return depth


class Accelerator(wiring.Component):
    """The whole accelerator for a folded :class:`~bnnforge.compiler.ir.DataflowGraph`.

    Parameters
    ----------
    graph : DataflowGraph
        Folded (integer thresholds, ``mul``/``add``); every BinaryDense, BinaryConv and
        ScoreLayer node has ``fold = {"pe": int, "simd": int}``; optional ``fifo_depth``
        (default 2; 0 = none) is the depth of the :class:`StreamFIFO` in front of the stage.
        The input node's optional ``pixels_per_transfer`` P (default 1, must divide H·W) sets
        how many pixels one input transfer carries.

    Ports
    -----
    i_stream : In(stream.Signature(P * 8 * C_in))
        P consecutive input pixels per transfer (all channels; pixel p of the transfer at bits
        [p·8·C_in, (p+1)·8·C_in), channel 0 lowest), H·W/P transfers per frame, frames back to
        back in raster (HWC) order. A (K,) input is one "pixel" of K channels.
    o_stream : Out(stream.Signature(classes * score_width + class_width))
        One transfer per frame: class c's score at bits [w·c, w·c + w) with w = the score
        layer's ``score_bits`` (32 unless its fixed-point scores need more), the argmax above.

    Structure and timing
    --------------------
    A chain, in graph order, each stage preceded by its FIFO: input → [InputThreshold(P pixels) if
    the first layer is binary, InputTable(P pixels) if its bytes go through a table]; BinaryConv →
    [Serializer(C*bits, P) if the stream still carries P > 1 pixels per transfer] → SlidingWindow →
    MVTU; MaxPool → [Serializer] → MaxPool; BinaryDense/ScoreLayer → MVTU/ScoreUnit with ``count`` =
    the transfers per frame of its input stream (H·W/P for the first layer, H·W after a convolution;
    the unit collects them into its input buffer). Each block's timing is its docstring's;
    ``stages`` lists the blocks as ``(node, kind, component)`` in chain order.
    """

    def __init__(self, graph: DataflowGraph):
        try:
            self._build(graph)
        except Exception:
            silence(self, *(comp for _, _, comp in getattr(self, "stages", [])))
            raise

    def _build(self, graph: DataflowGraph) -> None:
        if not isinstance(graph, DataflowGraph):
            raise TypeError(f"graph must be a DataflowGraph, not {graph!r}")
        ops = list(graph)
        if not ops or not isinstance(ops[0][1], InputLayer):
            raise ValueError("the graph must start with an InputLayer")
        if not isinstance(ops[-1][1], ScoreLayer):
            raise TypeError(f"the graph must end with a ScoreLayer, not {ops[-1][0]!r}")
        inp = ops[0][1]
        shape = tuple(inp.in_shape)
        c_in, h, w = shape if len(shape) == 3 else (shape[0], 1, 1)
        self.in_channels, self.pixels_per_frame = c_in, h * w
        self.pixels_per_transfer = per = graph.pixels_per_transfer()
        self.stages: list[tuple[str, str, wiring.Component]] = []
        self.info: list[dict] = []
        fmap = (c_in, h, w)           # current stream: pixels of C elements, `per` a transfer
        bits = 8

        def add(node, kind, comp, depth=None):
            if depth:
                self.stages.append((node, "fifo", StreamFIFO(comp.i_stream.payload.shape().width,
                                                             depth)))
            self.stages.append((node, kind, comp))

        for name, op in ops:
            depth = _fifo_depth(graph, name)
            if isinstance(op, InputLayer):
                if op.bits == 1:
                    add(name, "threshold", InputThreshold(c_in, op.threshold, per), depth)
                    bits = 1
                elif op.table is not None:
                    add(name, "table", InputTable(c_in, op.table, per), depth)
                elif depth:
                    self.stages.append((name, "fifo", StreamFIFO(8 * c_in * per, depth)))
                self.info.append({"name": name, "kind": op.kind, "fifo_depth": depth})
            elif isinstance(op, BinaryConv):
                if op.thresholds is None:
                    raise ValueError(f"stage {name!r} is not folded (no thresholds); run "
                                     "FoldThresholds")
                pe, simd = _fold(graph, name, op)
                c, ih, iw = op.in_shape
                win = SlidingWindow(c, ih, iw, op.kernel, op.stride, op.padding, op.pad_value,
                                    op.input_bits)
                if per > 1:
                    add(name, "serializer", Serializer(c * op.input_bits, per), depth)
                    depth, per = None, 1
                add(name, "window", win, depth)
                if _is_mst(graph, name):
                    mv = _mst_unit(graph, name, op, pe, simd)
                    add(name, "mst", mv)
                else:
                    classes = {} if op.classes == 1 else dict(
                        row_class=op.row_class.tolist(), col_class=op.col_class.tolist())
                    mv = MVTU(op.k, op.channels, pe, simd, op.weights, op.thresholds,
                              op.input_bits, **classes)
                    add(name, "mvtu", mv)
                self.info.append({"name": name, "kind": op.kind, "pe": pe, "simd": simd,
                                  "cycles_per_vector": mv.cycles, "fifo_depth": depth,
                                  "vectors_per_frame": win.out_height * win.out_width,
                                  "window_cycles_per_vector": win.steps})
                fmap, bits = tuple(op.out_shape), 1
            elif isinstance(op, MaxPool):
                c, ih, iw = op.in_shape
                pool = MaxPoolUnit(c, ih, iw, op.kernel, op.stride)
                if per > 1:
                    add(name, "serializer", Serializer(c, per), depth)
                    depth, per = None, 1
                add(name, "maxpool", pool, depth)
                self.info.append({"name": name, "kind": op.kind, "fifo_depth": depth,
                                  "cycles_per_vector": pool.window.steps,
                                  "vectors_per_frame": pool.out_height * pool.out_width})
                fmap = tuple(op.out_shape)
            elif isinstance(op, (BinaryDense, ScoreLayer)):
                if not op.folded:
                    raise ValueError(f"stage {name!r} is not folded; run FoldThresholds")
                pe, simd = _fold(graph, name, op)
                c, ph, pw = fmap
                if c * ph * pw != op.k or bits != op.input_bits:
                    raise ValueError(f"stage {name!r} expects {op.k} elements of "
                                     f"{op.input_bits} bits, but its input stream carries "
                                     f"{fmap} of {bits} bits")
                count = ph * pw // per            # transfers per vector
                if isinstance(op, BinaryDense) and _is_mst(graph, name):
                    unit = _mst_unit(graph, name, op, pe, simd)
                    kind = "mst"
                    if count > 1:                 # the MST layer takes whole vectors
                        add(name, "deserializer",
                            Deserializer(op.k * op.input_bits // count, count), depth)
                        depth = None
                elif isinstance(op, ScoreLayer):
                    unit = ScoreUnit(op.k, op.channels, pe, simd, op.weights, op.mul, op.add,
                                     op.input_bits, score_width=op.score_bits, count=count)
                    kind = "score"
                else:
                    unit = MVTU(op.k, op.channels, pe, simd, op.weights, op.thresholds,
                                op.input_bits, count=count)
                    kind = "mvtu"
                add(name, kind, unit, depth)
                per = 1
                self.info.append({"name": name, "kind": op.kind, "pe": pe, "simd": simd,
                                  "cycles_per_vector": unit.cycles, "fifo_depth": depth,
                                  "vectors_per_frame": 1})
                fmap, bits = (op.channels, 1, 1), 1
            else:
                raise TypeError(f"stage {name!r}: no hardware for {type(op).__name__}")
        score = self.stages[-1][2]
        self.classes = score.channels
        self.class_width = score.class_width
        self.score_width = score.score_width
        super().__init__({
            "i_stream": In(stream.Signature(8 * c_in * self.pixels_per_transfer)),
            "o_stream": Out(stream.Signature(self.classes * self.score_width
                                             + self.class_width))})

    def elaborate(self, platform):
        m = Module()
        prev = wiring.flipped(self.i_stream)
        for i, (node, kind, comp) in enumerate(self.stages):
            m.submodules[f"s{i}_{node}_{kind}"] = comp
            wiring.connect(m, prev, comp.i_stream)
            prev = comp.o_stream
        wiring.connect(m, prev, wiring.flipped(self.o_stream))
        return m

    def top_info(self) -> dict:
        """Return the JSON-able description written to ``rtl/top.json``."""
        return {"top": TOP_NAME, "pixel_width": 8 * self.in_channels,
                "pixels_per_frame": self.pixels_per_frame,
                "pixels_per_transfer": self.pixels_per_transfer,
                "transfer_width": 8 * self.in_channels * self.pixels_per_transfer,
                "classes": self.classes,
                "score_width": self.score_width, "class_width": self.class_width,
                "stages": self.info}


def emit_verilog(graph: DataflowGraph, folder) -> pathlib.Path:
    """Write ``folder/rtl/bnnforge_top.v`` and ``folder/rtl/top.json``; return the .v path.

    Both files are byte-identical for identical graphs (no source locations, sorted JSON).
    """
    top = Accelerator(graph)
    rtl = pathlib.Path(folder) / "rtl"
    rtl.mkdir(parents=True, exist_ok=True)
    text = verilog.convert(top, name=TOP_NAME, emit_src=False)
    path = rtl / f"{TOP_NAME}.v"
    path.write_text(text)
    (rtl / "top.json").write_text(json.dumps(top.top_info(), indent=2, sort_keys=True) + "\n")
    return path

