"""Build the accelerator (one Amaranth component) from a folded dataflow graph; emit Verilog."""

from __future__ import annotations

import json
import pathlib

from amaranth.back import verilog
from amaranth.hdl import Module
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from ..compiler.ir import DataflowGraph
from ..compiler.plan import build_plan
from .checks import silence
from .join import ResidualJoin
from .matrix import MVTU, ScoreUnit
from .mst_layer import MSTLayer
from .streams import (
    Deserializer,
    InputTable,
    InputThreshold,
    Serializer,
    StreamConcat,
    StreamFIFO,
    StreamFork,
)
from .window import MaxPool as MaxPoolUnit
from .window import SlidingWindow

__all__ = ["TOP_NAME", "Accelerator", "emit_verilog"]

TOP_NAME = "bnnforge_top"


def _mvtu(b: dict):
    op = b["op"]
    kw = {}
    if getattr(op, "classes", 1) > 1:
        kw = dict(row_class=op.row_class.tolist(), col_class=op.col_class.tolist())
    if b["count"] > 1:
        kw["count"] = b["count"]
    thresholds = None if b.get("emit") == "popcount" else op.thresholds
    return MVTU(op.k, op.channels, b["pe"], b["simd"], op.weights, thresholds, op.input_bits,
                pipeline=b.get("pipeline"), roms=b.get("roms"), **kw)


def _mst(b: dict):
    op, tree = b["op"], b["tree"]
    return MSTLayer(op.k, op.channels, op.weights, op.thresholds, tree["parent"],
                    tree["complement"], depth=tree.get("depth"), pipeline=b.get("pipeline"))


def _window(b: dict):
    op = b["op"]
    c, ih, iw = op.in_shape
    return SlidingWindow(c, ih, iw, op.kernel, op.stride, op.padding, op.pad_value,
                         op.input_bits)


def _maxpool(b: dict):
    op = b["op"]
    c, ih, iw = op.in_shape
    return MaxPoolUnit(c, ih, iw, op.kernel, op.stride)


def _score(b: dict):
    op = b["op"]
    return ScoreUnit(op.k, op.channels, b["pe"], b["simd"], op.weights, op.mul, op.add,
                     op.input_bits, score_width=op.score_bits, count=b["count"],
                     pipeline=b.get("pipeline"), roms=b.get("roms"))


def _join(b: dict):
    op = b["op"]
    return ResidualJoin(op.out_shape[0], op.main_k, op.thresholds, op.short, op.short_k)


#: the component of each block kind of the hardware plan (compiler.plan.KINDS)
FACTORIES = {
    "fifo": lambda b: StreamFIFO(b["width"], b["depth"]),
    "threshold": lambda b: InputThreshold(b["channels"], b["threshold"], b["per"]),
    "table": lambda b: InputTable(b["channels"], b["table"], b["per"]),
    "serializer": lambda b: Serializer(b["element_width"], b["count"]),
    "deserializer": lambda b: Deserializer(b["width"], b["count"]),
    "window": _window,
    "maxpool": _maxpool,
    "mvtu": _mvtu,
    "mst": _mst,
    "score": _score,
    "fork": lambda b: StreamFork(b["width"], b["outputs"]),
    "add": _join,
    "concat": lambda b: StreamConcat(b["widths"]),
}


def _out_port(comp, k: int):
    """Output ``k`` of a component (a fork has one per consumer)."""
    ports = getattr(comp, "o_streams", None)
    return comp.o_stream if ports is None else ports[k]


def _in_port(comp, p: int):
    """Input ``p`` of a component (a join has one per operand)."""
    ports = getattr(comp, "i_streams", None)
    return comp.i_stream if ports is None else ports[p]


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
    One component per block of the hardware plan (:func:`bnnforge.compiler.plan.build_plan`),
    made by :data:`FACTORIES` and connected along the plan's edges: a stage's FIFO(s) in front
    of it; input → [InputThreshold / InputTable]; BinaryConv → [Serializer] → SlidingWindow →
    MVTU (or MSTLayer); MaxPool → [Serializer] → MaxPool; BinaryDense/ScoreLayer → MVTU,
    [Deserializer →] MSTLayer or ScoreUnit; a stream that several stages read → StreamFork;
    a residual add → ResidualJoin; a concatenation → StreamConcat. Each block's timing is its
    docstring's; ``stages`` lists the blocks as ``(node, kind, component)`` in plan order and
    ``blocks`` maps plan block names to components.
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
        plan = build_plan(graph)
        self.plan = plan
        self.in_channels, self.pixels_per_frame = plan.in_channels, plan.pixels_per_frame
        self.pixels_per_transfer = plan.pixels_per_transfer
        self.stages: list[tuple[str, str, wiring.Component]] = []
        self.blocks: dict[str, wiring.Component] = {}
        for b in plan.blocks:
            comp = FACTORIES[b["kind"]](b)
            self.stages.append((b["node"], b["kind"], comp))
            self.blocks[b["name"]] = comp
        self.info = _stage_info(graph, plan, self.blocks)
        score = self.blocks[plan.output]
        self.classes = score.channels
        self.class_width = score.class_width
        self.score_width = score.score_width
        super().__init__({
            "i_stream": In(stream.Signature(plan.transfer_width)),
            "o_stream": Out(stream.Signature(self.classes * self.score_width
                                             + self.class_width))})

    def elaborate(self, platform):
        m = Module()
        for i, b in enumerate(self.plan.blocks):
            comp = self.blocks[b["name"]]
            m.submodules[f"s{i}_{b['node']}_{b['kind']}{b['name'].rsplit(b['kind'], 1)[-1]}"] \
                = comp
            if not b["inputs"]:
                wiring.connect(m, wiring.flipped(self.i_stream), _in_port(comp, 0))
            for p, (src, k) in enumerate(b["inputs"]):
                wiring.connect(m, _out_port(self.blocks[src], k), _in_port(comp, p))
        wiring.connect(m, self.blocks[self.plan.output].o_stream,
                       wiring.flipped(self.o_stream))
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


def _stage_info(graph: DataflowGraph, plan, comps: dict) -> list[dict]:
    """One entry a graph node for ``rtl/top.json``: its kind, fold, FIFO depth and cycles."""
    info: dict[str, dict] = {}
    for b in plan.blocks:
        node, kind = b["node"], b["kind"]
        op = graph.op(node)
        e = info.setdefault(node, {"name": node, "kind": op.kind, "fifo_depth": 0})
        comp = comps[b["name"]]
        if kind == "fifo" and b["name"].endswith(":fifo"):
            e["fifo_depth"] = b["depth"]                       # port 0 (a join: fifo_depths)
        elif kind in ("mvtu", "score", "mst"):
            e.update(pe=b["pe"], simd=b["simd"], cycles_per_vector=comp.cycles)
            e.setdefault("vectors_per_frame", 1)
        elif kind in ("window", "maxpool"):
            # the line-buffer generator walks every padded position once a frame
            e.update(vectors_per_frame=b["windows"], window_cycles_per_frame=b["positions"])
        elif kind in ("add", "concat"):
            e.update(vectors_per_frame=b["tokens"], fifo_depths=graph.fifo_depths(node))
    return list(info.values())


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

