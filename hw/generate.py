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
    InputThreshold,
    ScoreUnit,
    SlidingWindow,
    StreamFIFO,
    silence,
)
from .components import MaxPool as MaxPoolUnit

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

    Ports
    -----
    i_stream : In(stream.Signature(8 * C_in))
        One input pixel (all channels, channel 0 in the low byte) per transfer, frames back to
        back in raster (HWC) order. A (K,) input is one "pixel" of K channels.
    o_stream : Out(stream.Signature(classes * score_width + class_width))
        One transfer per frame: class c's score at bits [w·c, w·c + w) with w = the score
        layer's ``score_bits`` (32 unless its fixed-point scores need more), the argmax above.

    Structure and timing
    --------------------
    A chain, in graph order, each stage preceded by its FIFO: input → [InputThreshold if the
    first layer is binary]; BinaryConv → SlidingWindow → MVTU; MaxPool → MaxPool;
    BinaryDense/ScoreLayer → [Deserializer(C*bits, H*W) if the input is a feature map of more
    than one pixel] → MVTU/ScoreUnit. Each block's timing is its docstring's; ``stages`` lists
    the blocks as ``(node, kind, component)`` in chain order.
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
        self.stages: list[tuple[str, str, wiring.Component]] = []
        self.info: list[dict] = []
        fmap = (c_in, h, w)           # current stream: pixels of C elements
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
                    add(name, "threshold", InputThreshold(c_in, op.threshold), depth)
                    bits = 1
                elif depth:
                    self.stages.append((name, "fifo", StreamFIFO(8 * c_in, depth)))
                self.info.append({"name": name, "kind": op.kind, "fifo_depth": depth})
            elif isinstance(op, BinaryConv):
                if op.thresholds is None:
                    raise ValueError(f"stage {name!r} is not folded (no thresholds); run "
                                     "FoldThresholds")
                pe, simd = _fold(graph, name, op)
                c, ih, iw = op.in_shape
                win = SlidingWindow(c, ih, iw, op.kernel, op.stride, op.padding, op.pad_value,
                                    op.input_bits)
                add(name, "window", win, depth)
                mv = MVTU(op.k, op.channels, pe, simd, op.weights, op.thresholds,
                          op.input_bits)
                add(name, "mvtu", mv)
                self.info.append({"name": name, "kind": op.kind, "pe": pe, "simd": simd,
                                  "cycles_per_vector": mv.cycles, "fifo_depth": depth,
                                  "vectors_per_frame": win.out_height * win.out_width,
                                  "window_cycles_per_vector": win.steps})
                fmap, bits = tuple(op.out_shape), 1
            elif isinstance(op, MaxPool):
                c, ih, iw = op.in_shape
                pool = MaxPoolUnit(c, ih, iw, op.kernel, op.stride)
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
                first = True
                if ph * pw > 1:
                    add(name, "deserializer", Deserializer(c * bits, ph * pw), depth)
                    first = False
                if isinstance(op, ScoreLayer):
                    unit = ScoreUnit(op.k, op.channels, pe, simd, op.weights, op.mul, op.add,
                                     op.input_bits, score_width=op.score_bits)
                    kind = "score"
                else:
                    unit = MVTU(op.k, op.channels, pe, simd, op.weights, op.thresholds,
                                op.input_bits)
                    kind = "mvtu"
                add(name, kind, unit, depth if first else None)
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
            "i_stream": In(stream.Signature(8 * c_in)),
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
                "pixels_per_frame": self.pixels_per_frame, "classes": self.classes,
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

