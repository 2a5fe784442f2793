"""The hardware plan: the folded dataflow graph as a DAG of hardware blocks, without Amaranth.

:func:`build_plan` walks a folded :class:`~bnnforge.compiler.ir.DataflowGraph` once and lists the
blocks the accelerator is made of — FIFOs, stream adapters, window generators, matrix units,
forks and joins — with their stream widths, tokens per frame, folds, FIFO depths, MST trees and
parameters. Every backend reads this list instead of walking the graph again:

* ``bnnforge.hw.generate`` builds one component per block (its factory table, by kind);
* ``bnnforge.sim.timing`` (chains) and ``bnnforge.sim.dataflow`` (any plan) build one cycle
  model per block (their own tables, by kind);
* ``bnnforge.sim.energy`` multiplies :data:`KINDS`' per-frame operation counts;
* the board estimates add ``bnnforge.compiler.costs.COSTS``' resource rules.

``hw`` and ``sim`` still never import each other: the plan says *what* each block is; the timing
contract of a kind (docs/design.md §4) is written in its hw docstring and implemented again in
``sim``, and ``bnnforge verify`` compares the two.

A block is a plain dict (JSON-able apart from ``op``):

``name``       unique, ``"<node>:<kind>"`` (a node's FIFO on input port p > 0: ``"<node>:fifo<p>"``)
``node``       the graph node it belongs to
``kind``       a key of :data:`KINDS`
``inputs``     ``[(block name, output port), ...]`` in input-port order; ``[]`` for the first
``tokens``     transfers per frame on each input port (all ports of a join carry as many)
``out_tokens`` transfers per frame on the output (on each output of a fork)
``width``      payload bits of input port 0; ``widths``: of every input port
``out_width``  payload bits of the output
``op``         the IR op of ``node`` (weights, thresholds); ``None`` for stream adapters
and the kind's parameters (see :data:`KINDS`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .costs import matrix_roms
from .cycles import held_vector_rotates, input_word_transfers
from .ir import BinaryConv, BinaryDense, DataflowGraph, InputLayer, MaxPool, ScoreLayer
from .pipeline import output_slots, pipeline_for

__all__ = ["KINDS", "BlockKind", "Plan", "PlanError", "build_plan"]


class PlanError(ValueError):
    """The graph cannot be turned into hardware as it stands (the message names the fix)."""


# -- the block kinds ----------------------------------------------------------------------------

def _ops(**counts) -> dict:
    base = dict.fromkeys(OP_COUNTS, 0)
    base.update(counts)
    return base


#: Operation counts per frame a block kind reports (``sim.energy`` prices them).
OP_COUNTS = ("xnor", "popcount_bits", "acc_adds", "compares", "score_ops", "weight_rom_bits",
             "threshold_rom_bits", "logic_rom_bits", "register_bits")


def _tree_bits(simd: int, term_bits: int) -> int:
    """Full-adder bits of a SIMD-input adder tree (level l: ceil(SIMD/2^l) adders of l+w bits)."""
    bits, n, level = 0, simd, 0
    while n > 1:
        level += 1
        n = -(-n // 2)
        bits += n * (level + term_bits)
    return bits


def _acc_bits(k: int, input_bits: int) -> int:
    return max(1, int(k * (255 if input_bits == 8 else 1)).bit_length()) + 2


def _ops_matrix(b: dict) -> dict:
    k, ch, pe, simd, ib = b["k"], b["channels"], b["pe"], b["simd"], b["input_bits"]
    vectors = b["tokens"] // b.get("count", 1)
    groups = ch // pe
    lane_steps = groups * (k // simd) * pe
    roms = b.get("roms") or {}
    # weight bits read: from block RAM, or from a ROM in logic (LUT outputs)
    rom_key = "weight_rom_bits" if roms.get("weights", "bram") == "bram" else "logic_rom_bits"
    c = _ops(xnor=k * ch * vectors if ib == 1 else 0,
             popcount_bits=lane_steps * _tree_bits(simd, 1 if ib == 1 else 10) * vectors,
             acc_adds=lane_steps * vectors, **{rom_key: k * ch * vectors})
    acc = _acc_bits(k, ib)
    # input buffer and held vector (2·K·b), the step operand register (SIMD·b bits every step:
    # groups · K · b a vector); an MVTU gathers its C/PE output groups in a shift register of
    # (groups − 1) · PE lanes, shifted once a group (hw/matrix.py ``_output``)
    base = 2 * k * ib + groups * k * ib
    if held_vector_rotates(k, b.get("count", 1), simd, ib, b.get("pipeline")):
        # a held vector of many words rotates by a word a step: all K·b bits written a step
        base += lane_steps // pe * k * ib
    pipe = pipeline_for(b.get("pipeline"))
    # the adder trees' pipeline registers, every lane every step
    base += groups * (k // simd) * pe * pipe.tree_register_bits(simd, 1 if ib == 1 else 10)
    if pipe.operand_stage:
        # the operand's second register and the ROM data register (PE·SIMD bits), every step
        rom = pe * simd * int(pipe.rom_register) if groups * (k // simd) > 1 else 0
        base += groups * (k // simd) * (rom + pipe.operand_stage * simd * ib)
    if b["kind"] == "score":
        c["score_ops"] = ch * vectors
        c["compares"] = (ch - 1) * vectors
        # the lane scores, the collected scores and the output register, once a class
        c["register_bits"] = (base + ch * (acc + 2 * int(b["op"].score_bits))) * vectors
        return c
    lane_bits = int(k).bit_length() if b.get("emit") == "popcount" else 1
    shift = groups * (groups - 1) * pe * lane_bits
    c["register_bits"] = (base + shift + ch * lane_bits) * vectors
    if lane_bits == 1:
        c["compares"] = ch * vectors
        if groups > 1:
            key = "threshold_rom_bits" if roms.get("thresholds", "bram") == "bram" \
                else "logic_rom_bits"
            c[key] += ch * acc * vectors
    return c


def _ops_mst(b: dict) -> dict:
    # XNORs and popcount inputs only at the tree's positions (K per root plus every edge's
    # distance), one adder per child, weights fixed in the logic (no ROM)
    t = b["tokens"]
    return _ops(xnor=b["xnor"] * t, popcount_bits=b["xnor"] * t, acc_adds=b["channels"] * t,
                compares=b["channels"] * t,
                register_bits=(b["k"] + b["channels"] * (1 + b["tree_depth"])) * t)


def _ops_window(b: dict) -> dict:
    (kh, kw), n = b["kernel"], b["positions"]
    # every position (one a step): a line-buffer word of kh - 1 pixels written and the window's
    # kw - 1 held columns of kh pixels shifted; every window: the output register
    return _ops(register_bits=(n * (kh - 1 + (kw - 1) * kh) + b["out_tokens"] * b["steps"])
                * b["width"])


@dataclass(frozen=True)
class BlockKind:
    """What the plan knows of a block kind, defined once.

    ``busy(block)``: cycles per frame the block does work (its bottleneck share);
    ``ops(block)``: operation counts per frame (:data:`OP_COUNTS`) for the energy model;
    The cycle model lives in ``sim.timing`` and the component in ``hw`` (their tables are keyed
    by the same kinds); the resource cost in ``compiler.costs`` (``block_luts``, ``block_brams``).
    """

    name: str
    summary: str
    busy: object
    ops: object


def _busy_tokens(b):
    return b["tokens"]


KINDS: dict[str, BlockKind] = {k.name: k for k in (
    BlockKind("fifo", "StreamFIFO of `depth` tokens in front of a stage's input port",
              _busy_tokens, lambda b: _ops(register_bits=b["tokens"] * b["width"])),
    BlockKind("threshold", "input bytes to bits (byte >= threshold), combinational",
              _busy_tokens, lambda b: _ops()),
    BlockKind("table", "input bytes through a 256-entry table, combinational",
              _busy_tokens, lambda b: _ops()),
    BlockKind("serializer", "one transfer of `count` pixels to `count` transfers",
              lambda b: b["out_tokens"], lambda b: _ops(register_bits=b["tokens"] * b["width"])),
    BlockKind("deserializer", "`count` transfers to one vector",
              _busy_tokens, lambda b: _ops(register_bits=2 * b["tokens"] * b["width"])),
    BlockKind("window", "sliding window on line buffers, one padded position a cycle",
              lambda b: b["positions"], _ops_window),
    BlockKind("maxpool", "max-pool (OR) on a sliding window",
              lambda b: b["positions"], _ops_window),
    BlockKind("mvtu", "matrix-vector threshold unit (PE x SIMD lanes)",
              lambda b: max(b["cycles"] * b["out_tokens"], b["tokens"]), _ops_matrix),
    BlockKind("score", "matrix unit with integer scores and argmax",
              lambda b: max(b["cycles"] * b["out_tokens"], b["tokens"]), _ops_matrix),
    BlockKind("mst", "MST-compressed fully parallel layer", _busy_tokens, _ops_mst),
    BlockKind("fork", "eager stream fork, one output per consumer, combinational",
              _busy_tokens, lambda b: _ops()),
    BlockKind("add", "residual join: popcount >= threshold selected by the shortcut",
              _busy_tokens, lambda b: _ops(compares=b["channels"] * b["tokens"],
                                           register_bits=b["channels"] * b["tokens"])),
    BlockKind("concat", "channel concatenation of pixel-aligned streams, combinational",
              _busy_tokens, lambda b: _ops()),
)}


# -- the plan -------------------------------------------------------------------------------------

@dataclass
class Plan:
    """The blocks of an accelerator in topological order (see the module docstring).

    Attributes
    ----------
    blocks : list of dict
    in_channels, pixels_per_frame, pixels_per_transfer : int
        The input stream: ``pixels_per_transfer`` pixels of ``in_channels`` bytes a transfer.
    transfer_width : int
        Bits of an input transfer.
    transfers_per_frame : int
    classes, score_width, class_width : int
        The output: one transfer a frame of ``classes`` scores and the argmax.
    """

    blocks: list = field(default_factory=list)
    in_channels: int = 0
    pixels_per_frame: int = 0
    pixels_per_transfer: int = 1
    transfer_width: int = 0
    transfers_per_frame: int = 0
    classes: int = 0
    score_width: int = 0
    class_width: int = 0
    pipeline: str = "generic"
    #: the FPGA family the ROMs and RAMs are sized for (``graph.meta["family"]``; None: iCE40
    #: blocks)
    family: str | None = None

    def __iter__(self):
        return iter(self.blocks)

    def __len__(self):
        return len(self.blocks)

    def block(self, name: str) -> dict:
        for b in self.blocks:
            if b["name"] == name:
                return b
        raise KeyError(name)

    @property
    def output(self) -> str:
        """The name of the block whose output is the accelerator's."""
        return self.blocks[-1]["name"]

    def is_chain(self) -> bool:
        return all(len(b["inputs"]) <= 1 and b["kind"] != "fork" for b in self.blocks)

    def busy(self) -> dict:
        """Graph node -> cycles per frame its busiest block works."""
        out: dict[str, int] = {}
        for b in self.blocks:
            out[b["node"]] = max(out.get(b["node"], 0), KINDS[b["kind"]].busy(b))
        return out

    def ops(self) -> list[tuple[dict, dict]]:
        """``[(block, its operation counts per frame), ...]``."""
        return [(b, KINDS[b["kind"]].ops(b)) for b in self.blocks]


def _check_depth(name: str, v) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
        raise PlanError(f"stage {name!r}: fifo_depth must be a non-negative integer, "
                        f"not {v!r}")
    return int(v)


def _fold(graph: DataflowGraph, name: str, op) -> tuple[int, int]:
    fold = graph.attrs(name).get("fold")
    if not isinstance(fold, dict) or "pe" not in fold or "simd" not in fold:
        raise PlanError(f"stage {name!r} has no fold attribute {{'pe': int, 'simd': int}}; "
                        f"got {fold!r} (run ChooseFolding first)")
    pe, simd = fold["pe"], fold["simd"]
    for what, v, total, label in (("PE", pe, op.channels, "channels"), ("SIMD", simd, op.k, "K")):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1 or total % v:
            raise PlanError(f"stage {name!r}: {what} must be a positive divisor of "
                            f"{label}={total}, not {v!r}")
    return int(pe), int(simd)


def _memories(plan: Plan, op, pe: int, simd: int) -> dict:
    """A matrix block's ``family`` and ``roms`` (``{"weights": style, "thresholds": style}``:
    where each ROM goes, :func:`~bnnforge.compiler.costs.matrix_roms` on the plan's family)."""
    roms = matrix_roms(op, pe, simd, plan.family)
    return {"family": plan.family, "roms": {k: v[2] for k, v in roms.items()}}


def _fifo_depths(graph: DataflowGraph, name: str, ports: int) -> list[int]:
    depth = graph.attrs(name).get("fifo_depth", 2)
    if isinstance(depth, (list, tuple)):
        if len(depth) != ports:
            raise PlanError(f"stage {name!r}: fifo_depth lists {len(depth)} depths for "
                            f"{ports} input ports")
        return [_check_depth(name, d) for d in depth]
    depth = _check_depth(name, depth)
    return [depth] * ports


def _mst(graph: DataflowGraph, name: str, op, pe: int, simd: int) -> dict | None:
    """The MST layer's parameters when the stage's fold says ``"mst": True``, else None."""
    fold = graph.attrs(name).get("fold")
    if not (isinstance(fold, dict) and fold.get("mst", False)):
        return None
    if isinstance(op, ScoreLayer):
        raise PlanError(f"stage {name!r}: the score layer cannot be an MST layer; drop 'mst' "
                        "from its fold")
    if (pe, simd) != (op.channels, op.k):
        raise PlanError(f"stage {name!r}: an MST layer needs PE = channels = {op.channels} and "
                        f"SIMD = K = {op.k}, not PE={pe}, SIMD={simd}")
    if op.input_bits != 1:
        raise PlanError(f"stage {name!r}: an MST layer takes binary inputs only, not "
                        f"{op.input_bits}-bit inputs; drop 'mst' from its fold")
    if getattr(op, "classes", 1) > 1:
        raise PlanError(f"stage {name!r}: an MST layer has one threshold per channel, but this "
                        f"convolution has {op.classes} pad classes (its pad value is corrected "
                        "per output position); drop 'mst' from its fold")
    if getattr(op, "emit", "bits") != "bits":
        raise PlanError(f"stage {name!r}: an MST layer thresholds its outputs, but this stage "
                        "feeds a residual add with its popcounts; drop 'mst' from its fold")
    tree = graph.attrs(name).get("mst")
    if not isinstance(tree, dict) or "parent" not in tree or "complement" not in tree:
        raise PlanError(f"stage {name!r} is folded as an MST layer but has no 'mst' attribute "
                        "(parent, complement, depth); run OrderChannelsByMST first")
    parent = [int(p) for p in tree["parent"]]
    depth = [0 if p < 0 else -1 for p in parent]
    for _ in range(len(parent)):
        for v, p in enumerate(parent):
            if depth[v] < 0 and depth[p] >= 0:
                depth[v] = depth[p] + 1
    if min(depth, default=0) < 0:
        raise PlanError(f"stage {name!r}: the 'mst' attribute's parent array is not a forest")
    d = max(depth, default=0)
    latency = pipeline_for(graph.meta.get("pipeline")).mst_latency(op.k, d)
    return {"cycles": 1, "latency": latency, "tree_depth": d,
            "xnor": int(op.k * parent.count(-1) + tree.get("weight", 0)), "tree": tree}


class _Stream:
    """A node's output stream while the plan is built."""

    __slots__ = ("src", "fmap", "bits", "per", "tokens", "width")

    def __init__(self, src, fmap, bits, per, tokens, width):
        self.src, self.fmap, self.bits, self.per = src, fmap, bits, per
        self.tokens, self.width = tokens, width


def _elements(fmap) -> tuple[int, int]:
    c, h, w = fmap
    return c, h * w


def build_plan(graph: DataflowGraph) -> Plan:
    """Return the hardware plan of a folded graph (see the module docstring).

    Raises :class:`PlanError` (a ``ValueError``) when the graph is not ready for hardware: a
    matrix stage without a fold, an unfolded stage, a shape that does not match its input.
    """
    if not isinstance(graph, DataflowGraph):
        raise TypeError(f"graph must be a DataflowGraph, not {graph!r}")
    order = graph.order()
    if not order or not isinstance(graph.op(order[0]), InputLayer):
        raise PlanError("the graph must start with an InputLayer")
    if not isinstance(graph.op(order[-1]), ScoreLayer):
        raise PlanError(f"the graph must end with a ScoreLayer, not {order[-1]!r}")
    inp = graph.op(order[0])
    shape = tuple(inp.in_shape)
    c_in, h, w = shape if len(shape) == 3 else (shape[0], 1, 1)
    per0 = graph.pixels_per_transfer()
    pipe = pipeline_for(graph.meta.get("pipeline"))
    plan = Plan(in_channels=c_in, pixels_per_frame=h * w, pixels_per_transfer=per0,
                transfer_width=8 * c_in * per0, transfers_per_frame=h * w // per0,
                pipeline=pipe.name, family=graph.meta.get("family"))
    blocks = plan.blocks
    streams: dict[str, _Stream] = {}
    taken: dict[str, int] = {}          # node -> consumers served so far (fork ports)

    def add(node, kind, ins, widths, tokens, out_tokens, out_width, op=None, suffix="", **kw):
        name = f"{node}:{kind}{suffix}"
        ins = [x for x in ins if x is not None]     # None: the accelerator's input
        blocks.append({"name": name, "node": node, "kind": kind, "inputs": ins,
                       "tokens": tokens, "out_tokens": out_tokens, "width": widths[0],
                       "widths": list(widths), "out_width": out_width, "op": op, **kw})
        return (name, 0)

    def fifo(node, src, width, tokens, depth, port):
        if not depth:
            return src
        return add(node, "fifo", [src], [width], tokens, tokens, width,
                   suffix=str(port) if port else "", depth=depth)

    def source_of(producer) -> _Stream:
        """The stream a consumer of ``producer`` reads (a fork port when it has several)."""
        s = streams[producer]
        if not isinstance(s.src, list):
            return s
        k = taken.get(producer, 0)
        taken[producer] = k + 1
        return _Stream(s.src[k], s.fmap, s.bits, s.per, s.tokens, s.width)

    for name in order:
        op = graph.op(name)
        ins = [source_of(p) for p in graph.inputs(name)]
        depths = _fifo_depths(graph, name, max(1, len(ins)))
        kind = op.kind
        if isinstance(op, InputLayer):
            width, tokens = 8 * c_in * per0, h * w // per0
            src = None
            if depths[0]:
                src = add(name, "fifo", [], [width], tokens, tokens, width, depth=depths[0])
            s = _Stream(src, (c_in, h, w), 8, per0, tokens, width)
            if op.bits == 1:
                s.src = add(name, "threshold", [src] if src else [], [width], tokens, tokens,
                            c_in * per0, channels=c_in, threshold=int(op.threshold), per=per0)
                s.bits, s.width = 1, c_in * per0
            elif op.table is not None:
                s.src = add(name, "table", [src] if src else [], [width], tokens, tokens, width,
                            channels=c_in, table=op.table, per=per0)
            streams[name] = s
        elif isinstance(op, (BinaryConv, MaxPool)):
            (s_in,) = ins
            if isinstance(op, BinaryConv) and not op.folded:
                raise PlanError(f"stage {name!r} is not folded (no thresholds); run "
                                "FoldThresholds")
            c, ih, iw = op.in_shape
            _, oh, ow = op.out_shape
            kh, kw = op.kernel
            ibits = op.input_bits if isinstance(op, BinaryConv) else 1
            if (c, ih, iw) != tuple(s_in.fmap) or s_in.bits != ibits:
                raise PlanError(f"stage {name!r} expects {op.in_shape} of {ibits}-bit elements, "
                                f"but its input stream carries {s_in.fmap} of {s_in.bits} bits")
            src = fifo(name, s_in.src, s_in.width, s_in.tokens, depths[0], 0)
            tokens, width = s_in.tokens, s_in.width
            if s_in.per > 1:
                src = add(name, "serializer", [src], [width], tokens, tokens * s_in.per,
                          width // s_in.per, count=s_in.per, element_width=c * ibits)
                tokens, width = tokens * s_in.per, width // s_in.per
            wkind = "window" if isinstance(op, BinaryConv) else "maxpool"
            (sh, sw), (ph, pw) = op.stride, getattr(op, "padding", (0, 0))
            src = add(name, wkind, [src], [width], tokens, oh * ow,
                      kh * kw * c * ibits if wkind == "window" else c, op=op,
                      steps=kh * kw, windows=oh * ow, pixels=ih * iw, channels=c,
                      image=(ih, iw), padded=(ih + 2 * ph, iw + 2 * pw), kernel=(kh, kw),
                      stride=(sh, sw), padding=(ph, pw), positions=(ih + 2 * ph) * (iw + 2 * pw),
                      family=plan.family)
            out_width = c
            if isinstance(op, BinaryConv):
                pe, simd = _fold(graph, name, op)
                mst = _mst(graph, name, op, pe, simd)
                emit = getattr(op, "emit", "bits")
                out_bits = 1 if emit == "bits" else int(op.k).bit_length()
                out_width = op.channels * out_bits
                common = dict(pe=pe, simd=simd, k=op.k, channels=op.channels,
                              input_bits=op.input_bits, count=1, emit=emit,
                              pipeline=pipe.name)
                if mst is not None:
                    src = add(name, "mst", [src], [kh * kw * c * ibits], oh * ow, oh * ow,
                              out_width, op=op, **common, **mst)
                else:
                    f = (op.channels // pe) * (op.k // simd)
                    lat = pipe.mvtu_latency(simd, op.input_bits)
                    src = add(name, "mvtu", [src], [kh * kw * c * ibits], oh * ow, oh * ow,
                              out_width, op=op, cycles=f, latency=lat,
                              slots=output_slots(f, lat), word_transfers=0, **common,
                              **_memories(plan, op, pe, simd))
                streams[name] = _Stream(src, tuple(op.out_shape), out_bits, 1, oh * ow,
                                        out_width)
            else:
                streams[name] = _Stream(src, tuple(op.out_shape), 1, 1, oh * ow, c)
        elif isinstance(op, (BinaryDense, ScoreLayer)):
            (s_in,) = ins
            if not op.folded:
                raise PlanError(f"stage {name!r} is not folded; run FoldThresholds")
            pe, simd = _fold(graph, name, op)
            c, pix = _elements(s_in.fmap if len(s_in.fmap) == 3 else (*s_in.fmap, 1, 1))
            if c * pix != op.k or s_in.bits != op.input_bits:
                raise PlanError(f"stage {name!r} expects {op.k} elements of {op.input_bits} "
                                f"bits, but its input stream carries {s_in.fmap} of "
                                f"{s_in.bits} bits")
            count = s_in.tokens                   # transfers per vector, collected by the unit
            src = fifo(name, s_in.src, s_in.width, s_in.tokens, depths[0], 0)
            score = isinstance(op, ScoreLayer)
            mst = None if score else _mst(graph, name, op, pe, simd)
            emit = "bits" if score else getattr(op, "emit", "bits")
            out_bits = 1 if emit == "bits" else int(op.k).bit_length()
            common = dict(pe=pe, simd=simd, k=op.k, channels=op.channels,
                          input_bits=op.input_bits, emit=emit, pipeline=pipe.name)
            if mst is not None:
                width = s_in.width
                if count > 1:                     # whole vectors into the MST layer
                    src = add(name, "deserializer", [src], [width], count, 1, op.k,
                              count=count)
                    width = op.k
                src = add(name, "mst", [src], [width], 1, 1, op.channels * out_bits, op=op,
                          count=1, **common, **mst)
            else:
                kind = "score" if score else "mvtu"
                f = (op.channels // pe) * (op.k // simd)
                lat = pipe.score_latency(simd, pe, op.k // simd, op.input_bits) if score \
                    else pipe.mvtu_latency(simd, op.input_bits)
                out_width = (op.channels * op.score_bits
                             + max(1, (op.channels - 1).bit_length())) if score \
                    else op.channels * out_bits
                src = add(name, kind, [src], [s_in.width], count, 1, out_width, op=op,
                          cycles=f, latency=lat, slots=output_slots(f, lat), count=count,
                          word_transfers=input_word_transfers(op.k, count, simd,
                                                              op.input_bits),
                          **common, **_memories(plan, op, pe, simd))
            streams[name] = _Stream(src, (op.channels, 1, 1), out_bits, 1, 1,
                                    op.channels * out_bits)
        elif kind in ("add", "concat"):
            if any(s.per != 1 for s in ins):
                raise PlanError(f"stage {name!r} joins streams that carry several pixels a "
                                "transfer; fold the input at pixels_per_transfer = 1")
            toks = {s.tokens for s in ins}
            if len(toks) != 1:
                raise PlanError(f"stage {name!r} joins streams of {sorted(toks)} transfers a "
                                "frame; its inputs must have the same height and width")
            srcs = [fifo(name, s.src, s.width, s.tokens, d, p)
                    for p, (s, d) in enumerate(zip(ins, depths, strict=True))]
            widths = [s.width for s in ins]
            (t,) = toks
            fmap = tuple(op.out_shape) if len(op.out_shape) == 3 else (*op.out_shape, 1, 1)
            if kind == "add":
                if not op.folded:
                    raise PlanError(f"stage {name!r} is not folded; run FoldThresholds")
                src = add(name, "add", srcs, widths, t, t, fmap[0], op=op, channels=fmap[0],
                          main_k=op.main_k, short=op.short, short_k=op.short_k)
            else:
                src = add(name, "concat", srcs, widths, t, t, sum(widths), op=op,
                          parts=[int(p) for p in op.parts])
            streams[name] = _Stream(src, fmap, 1, 1, t, fmap[0])
        else:
            raise PlanError(f"stage {name!r}: no hardware for {type(op).__name__}")
        # a stream several stages read goes through a fork, one output each
        cons = graph.consumers(name)
        if len(cons) > 1:
            s = streams[name]
            if s.per != 1:
                raise PlanError(f"stage {name!r} feeds {len(cons)} stages but its stream "
                                "carries several pixels a transfer; fold the input at "
                                "pixels_per_transfer = 1")
            fork = add(name, "fork", [s.src], [s.width], s.tokens, s.tokens, s.width,
                       outputs=len(cons), consumers=list(cons))
            s.src = [(fork[0], k) for k in range(len(cons))]
    last = blocks[-1]
    score = graph.op(order[-1])
    plan.classes = int(score.channels)
    plan.score_width = int(score.score_bits)
    plan.class_width = max(1, (plan.classes - 1).bit_length())
    if last["kind"] == "fork":
        raise PlanError("the score layer's output cannot feed other stages")
    return plan


def fifo_depth_table(graph: DataflowGraph) -> dict[str, int]:
    """``{stage: depth}`` of the FIFO in front of every stage, for reports; a stage with several
    input ports lists port p > 0 as ``"stage[p]"``."""
    out: dict[str, int] = {}
    for name in graph.order():
        d = graph.attrs(name).get("fifo_depth", 2)
        if isinstance(d, (list, tuple)):
            for p, v in enumerate(d):
                out[name if p == 0 else f"{name}[{p}]"] = int(v)
        else:
            out[name] = int(d)
    return out
