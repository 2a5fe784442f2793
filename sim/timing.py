"""Cycle-accurate timing model of the generated accelerator: the cycle of every handshake.

Values come from :mod:`bnnforge.sim.reference`; this module adds cycles. It implements the
timing contract of docs/design.md §4 as the hardware blocks document it (their docstrings),
independently of the RTL: it never imports ``bnnforge.hw``.

Stimulus contract (the arrays a cocotb testbench drives the RTL with)
---------------------------------------------------------------------
Cycles are numbered from 0 by rising clock edges after reset: cycle ``k`` ends with the
``k``-th rising edge (from 0) at which reset is low; a handshake *in cycle k* is ``valid`` and
``ready`` both high when sampled at that edge. This is the numbering of
``bnnforge.hw.testing.stream_put``/``stream_get`` (Amaranth's simulator, both testbenches started
at time 0) and of a cocotb testbench that releases reset, counts rising edges from 0 and samples
just before each edge.

* Input (``i_stream``): transfers ``n = 0 .. frames * transfers_per_frame - 1``. A transfer
  carries P = ``pixels_per_transfer`` consecutive pixels (the input node's attribute, default
  1; all channels of each, raster HWC order, frames back to back), so ``transfers_per_frame =
  H·W / P``. ``in_gaps[n]`` is the number of idle cycles (``valid`` low) the driver inserts
  before offering transfer ``n``: transfer 0 is offered (``valid`` high) from cycle
  ``in_gaps[0]``; transfer ``n > 0`` from cycle ``a[n-1] + 1 + in_gaps[n]``, where ``a[n-1]``
  is the handshake cycle of transfer ``n - 1``. Once offered, a transfer stays valid until its
  handshake. ``in_gaps=None`` means all zero (back-to-back); a shorter array is padded with
  zeros.
* Output (``o_stream``): ``ready`` in cycle ``k`` is ``out_ready[k]`` for ``k < len(out_ready)``
  and 1 for every later cycle. ``out_ready=None`` means always ready.

Model
-----
Every stage of the chain ``bnnforge.hw.generate.Accelerator`` builds is a *block* (FIFO,
serializer, sliding window / max-pool, deserializer, MVTU, score unit; the input threshold and
the input table are wires).
Each block offers output token ``j`` from a cycle ``V_j`` on (and holds it), and is ready for
input token ``j`` from a cycle ``r_j`` on (every block's input ``ready`` is a step for one token:
once high it stays high until that token's handshake), so the handshake is ``max(V_j, r_j)``;
only the accelerator's output meets the arbitrary ``out_ready``. Window generators, max-pools,
deserializers and MST layers stall globally: a cycle is *disabled* while the output register
holds a token that is not accepted, i.e. in ``[w + 1, b - 1]`` for an output written at the
edge of cycle ``w`` and handshaken in cycle ``b``; their pipelines advance in enabled cycles
only. Matrix units never stall their pipeline; they issue a vector's last step on a credit.
Per block:

* FIFO of depth D: input ``j`` ready from ``out[j-D] + 1``; output ``j`` valid from
  ``max(in[j] + 1, out[j-1] + 1)`` (no bypass: a read frees no room in its own cycle).
* Deserializer (``count`` transfers to one): the first element of vector ``v`` is accepted from
  ``b[v-1]`` (the previous vector's output handshake), the others whenever offered; the vector
  is offered from the cycle after its last element's handshake.
* Serializer (one transfer to ``count`` elements, in front of a window when P > 1): transfer
  ``j`` is accepted from the handshake cycle of element ``j·count - 1`` (the previous word's
  last); element 0 of a word is offered from the cycle after the word's handshake, element
  ``e > 0`` from the cycle after element ``e - 1``'s handshake.
* MVTU and score unit (F = C/PE · K/SIMD steps per vector, ``count`` transfers per vector,
  an output queue of Q = ``slots`` results): the first transfer of vector ``j`` is ready from
  the cycle ``t[j-1]`` the previous vector left the input buffer, the others whenever offered
  (with ``word_transfers`` = W > 1, every W-th transfer is ready from ``t[j-1] + 1``, the
  others whenever offered);
  with ``a[j]`` the handshake of its last transfer, vector ``j`` leaves the buffer in cycle
  ``t[j] = max(a[j] + 1, L[j-1])``, where ``L`` is the cycle of a vector's last step; its
  other steps take the next F - 1 cycles and its last step waits for a credit:
  ``L[j] = max(t[j] + F, b[j-Q] + 1)`` with ``b`` the output handshakes; the result is
  offered from ``max(L[j] + latency + 1, b[j-1] + 1)`` (``latency``: the cycles from the last
  step to the write, :class:`~bnnforge.compiler.pipeline.Pipeline` ``mvtu_latency`` /
  ``score_latency``; the plan block carries it and ``slots``).
* MST layer (``mst``: PE = C, SIMD = K, a pipeline of L = ``Pipeline.mst_latency`` registers
  after its input register, ``ready`` = enabled): input ``j`` is accepted in the
  first enabled cycle >= its offer; its result is written L enabled cycles later (a whole
  vector per transfer; a dense stage on a feature map gets a deserializer in front).
* Sliding window / max-pool (line buffers): the block steps through every position of the
  padded raster (Hp·Wp a frame, row by row, frames back to back), one a step; with ``s`` the
  previous position's step (-1 before the first), a padding position steps in the first
  enabled cycle > ``s`` and an image position (pixel ``p``, offered from ``V_p``) in the first
  enabled cycle >= max(s + 1, V_p), which is pixel ``p``'s handshake. A window is written in
  the step of the position that completes it (its bottom-right), so it is offered from the
  next cycle. The positions after a frame's last window take their pixels too (they are walked
  once that window's handshake is known).

Speed: the model is evaluated per token (pull order, from the output back), never per cycle;
while the remaining stimulus is constant (no more input gaps, output always ready) it
snapshots every block's state relative to the last output after each frame (once every
window has walked the frame to its end), and once a snapshot repeats, the rest of the run is
an exact periodic continuation (filled in with numpy). Back-to-back runs of any length thus
cost a few frames of per-token work.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

import numpy as np

from ..compiler.ir import DataflowGraph
from ..compiler.plan import build_plan
from .dataflow import Deadlock, Enable, extend, max_occupancy, run_plan, window_walk

__all__ = ["TimingResult", "simulate_timing", "chain"]

_NEG = -(1 << 60)       # "no such event": earlier than any cycle


# -- the blocks ----------------------------------------------------------------------------------

def chain(graph: DataflowGraph) -> list[dict]:
    """Return the accelerator's blocks in topological order: the hardware plan's block dicts
    (:func:`bnnforge.compiler.plan.build_plan`), the same list ``hw.generate`` builds from.

    Each dict has ``name`` (``"node:kind"``), ``node``, ``kind`` (``fifo``, ``threshold``,
    ``table``, ``serializer``, ``window``, ``maxpool``, ``deserializer``, ``mvtu``, ``mst``,
    ``score``, ``fork``, ``add``, ``concat``), ``inputs``, ``tokens`` (input transfers per
    frame), ``out_tokens``, ``width`` and the kind's parameters.
    """
    return build_plan(graph).blocks


# -- per-token block models (pull order) ----------------------------------------------------------

def _rel(v: int, ref: int):
    return None if v <= _NEG // 2 else v - ref


class _Block:
    """Base: ``hs`` holds the handshake cycle of every input token (this block's input)."""

    def __init__(self, spec: dict):
        self.spec = spec
        self.hs: list[int] = []
        self.up = None
        self.down_hs: list[int] = []     # handshakes of this block's output tokens
        self.busy = 0

    def settle(self) -> bool:
        """Do the work that waited for a downstream handshake now known; return whether the
        block has taken every input token of the frames it has output (only windows wait)."""
        return True


class _Source:
    """The input driver: pixel n offered from a[n-1] + 1 + gaps[n]."""

    def __init__(self, gaps):
        self.gaps = gaps
        self.n = 0
        self.down_hs: list[int] = []

    def offer(self, j: int) -> int:
        g = self.gaps
        gap = int(g[j]) if g is not None and j < len(g) else 0
        if j == 0:
            return gap
        return self.down_hs[j - 1] + 1 + gap

    def state(self, ref: int) -> tuple:
        return (self.down_hs[-1] - ref,) if self.down_hs else ()


class _Fifo(_Block):
    def __init__(self, spec):
        super().__init__(spec)
        self.depth = spec["depth"]
        self.ptr = 0               # outputs handshaken at or before the last input
        self.max_occ = 0

    def offer(self, j: int) -> int:
        v = self.up.offer(j)
        out = self.down_hs
        d = self.depth
        a = out[j - d] + 1 if j >= d and out[j - d] + 1 > v else v
        self.hs.append(a)
        p = self.ptr
        while p < j and out[p] <= a:
            p += 1
        self.ptr = p
        if j + 1 - p > self.max_occ:
            self.max_occ = j + 1 - p
        if j and out[j - 1] + 1 > a + 1:
            return out[j - 1] + 1
        return a + 1

    def state(self, ref):
        n = len(self.hs)
        return (tuple(_rel(x, ref) for x in self.down_hs[max(0, n - self.depth):]),
                self.ptr - n)


class _Deserializer(_Block):
    def __init__(self, spec):
        super().__init__(spec)
        self.count = spec["count"]

    def offer(self, v: int) -> int:
        up, hs, count = self.up, self.hs, self.count
        r = self.down_hs[v - 1] if v else _NEG
        base = v * count
        a = up.offer(base)
        if r > a:
            a = r
        hs.append(a)
        for e in range(base + 1, base + count):
            a = up.offer(e)
            hs.append(a)
        return a + 1

    def state(self, ref):
        return (_rel(self.down_hs[-1], ref) if self.down_hs else None,)


class _Serializer(_Block):
    """One input word to ``count`` elements (in front of a window when P > 1)."""

    def __init__(self, spec):
        super().__init__(spec)
        self.count = spec["count"]

    def offer(self, q: int) -> int:
        j, e = divmod(q, self.count)
        if e:
            return self.down_hs[q - 1] + 1
        a = self.up.offer(j)
        if q and self.down_hs[q - 1] > a:
            a = self.down_hs[q - 1]
        self.hs.append(a)
        return a + 1

    def state(self, ref):
        return (_rel(self.down_hs[-1], ref) if self.down_hs else None,)


class _Matrix(_Block):
    """MVTU or score unit (collecting ``count`` input transfers per vector; issue on credit)."""

    def __init__(self, spec):
        super().__init__(spec)
        self.f = spec["cycles"]
        self.lat = spec["latency"]
        self.count = spec.get("count", 1)
        self.slots = spec["slots"]
        self.words = spec.get("word_transfers", 0)
        self.t = _NEG
        self.last = _NEG

    def offer(self, j: int) -> int:
        up, hs, base, wt = self.up, self.hs, j * self.count, self.words
        if wt:      # a RAM word's last transfer waits for the buffer (the cycle after a take)
            r = self.t + 1
            for e in range(self.count):
                a = up.offer(base + e)
                if (e + 1) % wt == 0 and r > a:
                    a = r
                hs.append(a)
        else:       # the first transfer waits for the buffer (from the take on)
            v = up.offer(base)
            a = v if v > self.t else self.t
            hs.append(a)
            for e in range(base + 1, base + self.count):
                a = up.offer(e)
                hs.append(a)
        t = a + 1 if a + 1 > self.last else self.last
        last = t + self.f
        down, q = self.down_hs, self.slots
        if j >= q and down[j - q] + 1 > last:
            last = down[j - q] + 1
        v = last + self.lat + 1
        if j and down[j - 1] + 1 > v:
            v = down[j - 1] + 1
        self.t, self.last = t, last
        return v

    def state(self, ref):
        # the handshakes of the last ``slots`` results (the credits ahead); one no later than
        # the last step cannot delay a later step or offer, so it is keyed as that step
        n = len(self.hs) // self.count
        down = self.down_hs[max(0, n - self.slots):n] if len(self.down_hs) >= n else None
        return (_rel(self.t, ref), _rel(self.last, ref),
                None if down is None else tuple(_rel(max(x, self.last), ref) for x in down))


class _Window(_Block):
    """Sliding window (conv) or max-pool: one position of the padded raster a step.

    A frame's positions after its last window (its *tail*) depend on that window's handshake:
    they are walked when the next frame's first window is pulled, or by :meth:`settle` as soon
    as the handshake is known (the values are the same either way).
    """

    def __init__(self, spec):
        super().__init__(spec)
        self.head, self.mids, self.tail = window_walk(spec)
        self.windows = spec["windows"]
        self.pixels = spec["pixels"]
        self.en = Enable()
        self.s = -1             # cycle of the last position walked
        self.w = _NEG           # write cycle of the last window
        self.q = 0              # windows offered
        self.tails = 0          # frames whose tail is walked

    def _walk(self, runs, base: int) -> None:
        en, up, hs, s = self.en, self.up, self.hs, self.s
        en.prune(s)
        for pads, first, n in runs:
            if pads:
                s = en.advance(s, pads)
            for p in range(base + first, base + first + n):
                v = up.offer(p)
                s = en.first(s + 1 if s + 1 > v else v)
                hs.append(s)
        self.s = s

    def _walk_tail(self) -> None:
        f = self.tails
        self.en.add(self.w, self.down_hs[(f + 1) * self.windows - 1])
        self._walk(self.tail, f * self.pixels)
        self.tails = f + 1

    def offer(self, q: int) -> int:
        f, lq = divmod(q, self.windows)
        if lq == 0:
            if f > self.tails:
                self._walk_tail()
            self._walk(self.head, f * self.pixels)
        else:
            self.en.add(self.w, self.down_hs[q - 1])
            self._walk(self.mids[lq], f * self.pixels)
        self.w = self.s
        self.q = q + 1
        return self.w + 1

    def settle(self) -> bool:
        """Walk the tail of the last frame offered in full once its last window is taken;
        return whether every frame offered in full is walked to its end."""
        if self.q % self.windows == 0 and self.q // self.windows > self.tails \
                and len(self.down_hs) >= self.q:
            self._walk_tail()
        return self.q == self.tails * self.windows

    def state(self, ref):
        n = len(self.down_hs)
        return (_rel(self.s, ref), _rel(self.w, ref), self.q - self.tails * self.windows,
                _rel(self.down_hs[-1], ref) if n else None, self.en.state(ref))


class _MSTPipe(_Block):
    """MST layer: a globally stalled pipeline of ``latency`` registers after its input register.

    Input ``j`` is accepted in the first enabled cycle ``a`` >= its offer (``ready`` = enabled);
    the result is written in the ``latency``-th enabled cycle after ``a`` and valid from the
    next cycle.
    """

    def __init__(self, spec):
        super().__init__(spec)
        self.lat = spec["latency"]
        self.en = Enable()
        self.a = _NEG
        self.w = _NEG

    def offer(self, j: int) -> int:
        en = self.en
        if j:
            en.add(self.w, self.down_hs[j - 1])
        v = self.up.offer(j)
        en.prune(self.a)
        a = en.first(v)
        self.hs.append(a)
        w = en.advance(a, self.lat)
        self.a, self.w = a, w
        return w + 1

    def state(self, ref):
        n = len(self.hs)
        b = self.down_hs[n - 1] - ref if n and len(self.down_hs) >= n else None
        return (_rel(self.a, ref), _rel(self.w, ref), b, self.en.state(ref))


_BLOCKS = {"fifo": _Fifo, "deserializer": _Deserializer, "mvtu": _Matrix, "score": _Matrix,
           "window": _Window, "maxpool": _Window, "serializer": _Serializer, "mst": _MSTPipe}


# -- result ---------------------------------------------------------------------------------------

@dataclass
class TimingResult:
    """Handshake cycles of a timing simulation and figures derived from them.

    Attributes
    ----------
    frames : int
    pixels_per_frame : int
        H·W (1 for a vector input).
    input_cycles : numpy.ndarray
        (frames * transfers_per_frame,) int64: the cycle of every input handshake.
    output_cycles : numpy.ndarray
        (frames,) int64: the cycle of every output handshake.
    boundaries : dict
        ``"node:kind"`` (a block of :func:`chain`, e.g. ``"fc0:fifo"``, ``"conv0:window"``,
        ``"scores:score"``) -> int64 array of the handshake cycle of every token at that
        block's *input* (``tokens`` per frame); ``"output"`` is the accelerator's output.
        Empty when the run was made with ``record=False``.
    fifo_max_occupancy : dict
        Graph stage -> the most tokens its input FIFO ever held (stages with a FIFO only).
    stage_busy : dict
        Graph stage -> cycles per frame its busiest block does work (MVTU steps, window positions,
        one per input transfer for FIFO-only and deserializer stages).
    cycles_per_frame : float
        Steady-state cycles per frame: exactly ``period_cycles / period`` when the run reached
        a repeating state, else the mean spacing of the output handshakes over the second half
        of the run (over all of it for fewer than 4 frames; first input to output for 1 frame).
    cycles_per_frame_median : float
        Median spacing of the output handshakes over the same frames.
    latency_cycles : int
        Frame 0: first output handshake cycle minus first input handshake cycle.
    bottleneck : str
        The stage with the most busy cycles per frame.
    total_cycles : int
        Cycles until the last output handshake (inclusive).
    periodic_from : int or None
        Frame after which the run was continued periodically (exactly), if it was.
    period : int
        With ``periodic_from``: the period in frames of the steady state, which takes exactly
        ``period_cycles`` cycles (so the steady-state cycles per frame is their ratio).
    period_cycles : int
    transfers_per_frame : int
        Input transfers per frame: ``pixels_per_frame / pixels_per_transfer``.
    """

    frames: int
    pixels_per_frame: int
    input_cycles: np.ndarray
    output_cycles: np.ndarray
    boundaries: dict = field(default_factory=dict)
    fifo_max_occupancy: dict = field(default_factory=dict)
    stage_busy: dict = field(default_factory=dict)
    cycles_per_frame: float = 0.0
    cycles_per_frame_median: float = 0.0
    latency_cycles: int = 0
    bottleneck: str = ""
    total_cycles: int = 0
    periodic_from: int | None = None
    period: int = 0
    period_cycles: int = 0
    transfers_per_frame: int = 0
    blocks: list = field(default_factory=list, repr=False)

    def busy_fraction(self) -> dict:
        """Return stage -> busy cycles per frame / steady-state cycles per frame."""
        cpf = self.cycles_per_frame or 1.0
        return {k: v / cpf for k, v in self.stage_busy.items()}


# -- driver ---------------------------------------------------------------------------------------

def _check_stimulus(gaps, ready, total: int):
    if gaps is not None:
        gaps = np.asarray(gaps)
        if gaps.ndim != 1 or not (np.issubdtype(gaps.dtype, np.integer) or gaps.dtype == bool):
            raise ValueError(f"in_gaps must be a 1-D integer array, not {gaps.dtype} of shape "
                             f"{gaps.shape}")
        if gaps.size and gaps.min() < 0:
            raise ValueError(f"in_gaps must be non-negative, got {int(gaps.min())}")
        gaps = gaps[:total].astype(np.int64)
        if not gaps.any():
            gaps = None
    nxt = None
    if ready is not None:
        ready = np.asarray(ready)
        if ready.ndim != 1:
            raise ValueError(f"out_ready must be a 1-D boolean array, not shape {ready.shape}")
        ready = ready.astype(bool)
        if ready.size and not ready.all():
            # nxt[k]: first ready cycle >= k (len(ready) when none is left in the array)
            idx = np.where(ready, np.arange(ready.size), ready.size)
            nxt = np.minimum.accumulate(idx[::-1])[::-1].astype(np.int64)
    return gaps, nxt


def simulate_timing(graph: DataflowGraph, frames: int, *, in_gaps=None, out_ready=None,
                    record: bool = True, periodic: bool = True,
                    engine: str = "auto") -> TimingResult:
    """Simulate the accelerator built from ``graph`` cycle by cycle for ``frames`` frames.

    Parameters
    ----------
    graph
        A folded graph (every matrix stage has ``fold``; optional ``fifo_depth``, default 2).
    frames
        Number of frames streamed in.
    in_gaps, out_ready
        The stimulus (see the module docstring): idle cycles before each input transfer, and the
        output ``ready`` of each cycle (1 after the array ends). ``None``: back-to-back input,
        output always ready.
    record
        Keep every token's handshake cycle at every block boundary (``boundaries``); without
        it only input and output cycles are kept (memory stays small for long runs).
    periodic
        Allow the exact periodic continuation once the stimulus is constant (turn off only to
        check it).
    engine
        ``"auto"``: a chain is pulled from the output (this module's per-token models, with the
        periodic continuation); a plan that forks and joins runs as processes
        (:mod:`bnnforge.sim.dataflow`). ``"process"`` runs a chain as processes too (the two
        agree on every cycle; a test checks it).

    Raises
    ------
    bnnforge.sim.dataflow.Deadlock
        When the accelerator stops before its last output (its ``result`` holds the
        handshakes that do happen).

    Returns
    -------
    TimingResult
    """
    if isinstance(frames, bool) or not isinstance(frames, (int, np.integer)) or frames < 1:
        raise ValueError(f"frames must be a positive integer, not {frames!r}")
    frames = int(frames)
    plan = build_plan(graph)
    specs = plan.blocks
    px = plan.transfers_per_frame
    total_px = frames * px
    gaps, nxt = _check_stimulus(in_gaps, out_ready, total_px)
    if engine not in ("auto", "process"):
        raise ValueError(f"engine must be 'auto' or 'process', not {engine!r}")
    last_gap = int(np.flatnonzero(gaps)[-1]) if gaps is not None else -1
    ready_end = int(np.flatnonzero(~np.asarray(out_ready, dtype=bool))[-1]) + 1 \
        if nxt is not None else 0
    if engine == "process" or not plan.is_chain():
        return _simulate_processes(graph, plan, frames, gaps, nxt, record, periodic, last_gap,
                                   ready_end)

    source = _Source(gaps)
    blocks: list[_Block] = []
    prev = source
    aliases: dict[str, int] = {}
    for spec in specs:
        if spec["kind"] in ("threshold", "table"):    # a wire: the next block's handshakes
            aliases[f"{spec['node']}:{spec['kind']}"] = len(blocks)
            continue
        blk = _BLOCKS[spec["kind"]](spec)
        blk.up = prev
        prev.down_hs = blk.hs
        blocks.append(blk)
        prev = blk
    out_hs: list[int] = []
    last = blocks[-1]
    last.down_hs = out_hs

    if sys.getrecursionlimit() < 4 * len(blocks) + 200:
        sys.setrecursionlimit(4 * len(blocks) + 200)

    seen: dict[tuple, int] = {}
    periodic_from = None
    period = shift = 0
    for j in range(frames):
        v = last.offer(j)
        if nxt is not None and v < len(nxt):
            v = int(nxt[v])
        out_hs.append(v)
        if not periodic or j + 1 >= frames:
            continue
        if (j + 1) * px <= last_gap or v + 1 < ready_end:
            continue                              # stimulus not constant yet
        if not all([b.settle() for b in reversed(blocks)]):
            continue                              # a frame not taken in full: no snapshot
        key = tuple([source.state(v)] + [b.state(v) for b in blocks])
        if key in seen:
            periodic_from, period = j, j - seen[key]
            shift = v - out_hs[seen[key]]
            break
        seen[key] = j
    for b in reversed(blocks):                    # the inputs after the last outputs' windows
        b.settle()

    def extend(values: list, per_frame: int) -> np.ndarray:
        if periodic_from is None:
            return np.asarray(values, dtype=np.int64)
        done = (periodic_from + 1) * per_frame
        out = np.empty(frames * per_frame, dtype=np.int64)
        out[:done] = values[:done]
        rest = frames - periodic_from - 1
        if rest <= 0 or per_frame == 0:
            return out
        span = period * per_frame
        block = out[done - span:done]
        full, part = divmod(rest, period)
        if full:
            view = out[done:done + full * span].reshape(full, span)
            np.add(block[None, :], shift * np.arange(1, full + 1, dtype=np.int64)[:, None],
                   out=view)
        if part:
            out[done + full * span:] = block[:part * per_frame] + shift * (full + 1)
        return out

    inputs = extend(blocks[0].hs, px)
    outputs = extend(out_hs, 1)
    boundaries = {}
    if record:
        for blk in blocks:
            boundaries[f"{blk.spec['node']}:{blk.spec['kind']}"] = extend(
                blk.hs, blk.spec["tokens"])
        for name, idx in aliases.items():
            boundaries[name] = boundaries[
                f"{blocks[idx].spec['node']}:{blocks[idx].spec['kind']}"]
        boundaries["output"] = outputs

    fifo_occ = {blk.spec["node"]: int(blk.max_occ) for blk in blocks if isinstance(blk, _Fifo)}
    return _finish(graph, plan, frames, inputs, outputs, boundaries, fifo_occ,
                   periodic_from, period, shift)


def _finish(graph, plan, frames, inputs, outputs, boundaries, fifo_occ, periodic_from=None,
            period=0, shift=0) -> TimingResult:
    px = plan.transfers_per_frame
    busy: dict[str, int] = {graph.input_node(): px}
    for node, b in plan.busy().items():
        busy[node] = max(busy.get(node, 0), b)
    diffs = np.diff(outputs)
    if frames == 1 or len(outputs) < 2:
        cpf = med = float(outputs[0] - inputs[0] + 1) if len(outputs) else float("inf")
    else:
        tail = diffs[len(diffs) // 2:] if len(outputs) >= 4 else diffs
        cpf, med = float(tail.mean()), float(np.median(tail))
    if periodic_from is not None:
        cpf = shift / period                     # exact steady state
    bottleneck = max(busy, key=lambda k: (busy[k], k))
    return TimingResult(
        frames=frames, pixels_per_frame=px * graph.pixels_per_transfer(),
        transfers_per_frame=px, input_cycles=inputs, output_cycles=outputs,
        boundaries=boundaries, fifo_max_occupancy=fifo_occ, stage_busy=busy,
        cycles_per_frame=cpf, cycles_per_frame_median=med,
        latency_cycles=int(outputs[0] - inputs[0]) if len(outputs) else -1,
        bottleneck=bottleneck, total_cycles=int(outputs[-1]) + 1 if len(outputs) else 0,
        periodic_from=periodic_from, period=period, period_cycles=shift, blocks=plan.blocks)


_WIRES = ("threshold", "table")


def _fifo_key(spec: dict) -> str:
    """``fifo_max_occupancy`` key of a FIFO block: its node (port 0) or ``node[p]``."""
    suffix = spec["name"].rsplit(":fifo", 1)[-1]
    return spec["node"] if not suffix else f"{spec['node']}[{suffix}]"


def _simulate_processes(graph, plan, frames, gaps, nxt, record, periodic, last_gap,
                        ready_end) -> TimingResult:
    """Run the plan as processes (:mod:`bnnforge.sim.dataflow`); wires are skipped (their
    boundary is their consumer's)."""
    alias: dict[str, list] = {}            # wire -> its inputs ([] = the accelerator's input)
    wire_of: dict[str, str] = {}           # consumer block -> the wire it reads
    blocks = []
    for b in plan.blocks:
        ins = []
        for name, k in b["inputs"]:
            if name in alias:
                wire_of[b["name"]] = name
                ins += alias[name]
            else:
                ins.append((name, k))
        if b["kind"] in _WIRES:
            alias[b["name"]] = ins
            continue
        blocks.append({**b, "inputs": ins})
    per = None
    try:
        nodes, first, out_hs, per = run_plan(blocks, frames, plan.transfers_per_frame, gaps,
                                             nxt, periodic, last_gap, ready_end)
        err = None
    except Deadlock as exc:
        (nodes, first, out_hs), err = exc.partial, exc

    def arr(x, tokens):
        return extend(x, tokens, frames, per) if per is not None and err is None \
            else np.asarray(x, dtype=np.int64)

    inputs = arr(first, plan.transfers_per_frame)
    outputs = arr(out_hs, 1)
    boundaries = {}
    if record:
        for b in blocks:
            for p, h in enumerate(nodes[b["name"]].hs):
                boundaries[b["name"] if not p else f"{b['name']}#{p}"] = arr(h, b["tokens"])
        for cons, wire in wire_of.items():     # a wire's handshakes are its consumer's
            boundaries[wire] = boundaries[cons]
        boundaries["output"] = outputs
    # occupancy over the whole run: on the extended arrays (a list cut at the repeat holds
    # inputs whose outputs are not computed yet)
    fifo_occ = {_fifo_key(b): max_occupancy(arr(nodes[b["name"]].hs[0], b["tokens"]),
                                            arr(nodes[b["name"]].down[0], b["tokens"]))
                for b in blocks if b["kind"] == "fifo"}
    res = _finish(graph, plan, frames, inputs, outputs, boundaries, fifo_occ,
                  *(per if per is not None and err is None else ()))
    if err is not None:
        err.result = res
        raise err
    return res
