"""The timing model for accelerators that fork and join: one process per block side.

:mod:`bnnforge.sim.timing` evaluates a *chain* of blocks by pulling tokens from the output.
Once a stream forks, one branch can run ahead of the other, and a pull from one output no
longer sees every event it depends on in time. This module evaluates any plan (a DAG of
blocks, :mod:`bnnforge.compiler.plan`) with the same per-block rules (the module docstring of
:mod:`bnnforge.sim.timing`, docs/design.md §4) written as small sequential processes — Python
generators — that exchange cycle numbers through lists:

* ``V`` of a block: the cycle from which it offers each output token (written by the block);
* ``hs[p]`` of a block: the handshake cycle of each token on its input port ``p`` (written by
  the block, read by the producer, whose next offers and stalls depend on it).

A process that needs a value not yet computed waits for it; the scheduler runs whichever
process can go on. Every value is the one the rules define, whatever the order they were
computed in, so chains give exactly the pull model's cycles (a test checks both on every
chain). When no process can go on before the last output, the hardware deadlocks in the same
place: the run stops there, with every handshake that does happen, and names the cycle of
blocks that wait on one another (:class:`Deadlock`).

Blocks with an input side that runs ahead of the output side in hardware (a FIFO accepts while
its head waits; a matrix unit fills its input buffer while it computes and issues steps while its
output queue waits) have two or three processes, so no waiting is modelled that the hardware
does not do. A window generator takes its pixels in
the steps that also make its windows (the global stall holds both), so it is one process.

Once the stimulus is constant the state after each output is keyed relative to that output's
cycle; when a key repeats, the rest of the run is its exact periodic continuation
(:func:`extend`), as in the pull engine.
"""

from __future__ import annotations

from collections import deque

import numpy as np

__all__ = ["Deadlock", "Enable", "max_occupancy", "run_plan", "window_walk"]

_NEG = -(1 << 60)


class Deadlock(RuntimeError):
    """The accelerator stops before the last output: a cycle of blocks waits on one another.

    Attributes: ``blocked`` (the block names in the waiting cycle, in wait order),
    ``inputs_accepted``, ``outputs`` (handshakes that happen), ``full_fifos`` (names of the
    FIFOs in the cycle that are full), ``result`` (the partial
    :class:`~bnnforge.sim.timing.TimingResult`, set by ``simulate_timing``).
    """

    def __init__(self, message, blocked, inputs_accepted, outputs, full_fifos):
        super().__init__(message)
        self.blocked = blocked
        self.inputs_accepted = inputs_accepted
        self.outputs = outputs
        self.full_fifos = full_fifos
        self.result = None


class Enable:
    """Disabled intervals [w + 1, b - 1] of a globally stalled block, and enabled-cycle counting.

    A block with an output register is disabled from the cycle after it writes a result that is
    not taken until the cycle before the handshake; its pipeline moves in enabled cycles only.
    Both timing engines (this module and :mod:`bnnforge.sim.timing`) use it.
    """

    __slots__ = ("iv", "head")

    def __init__(self):
        self.iv: list[tuple[int, int]] = []
        self.head = 0

    def add(self, w: int, b: int) -> None:
        if b > w + 1:
            self.iv.append((w + 1, b - 1))

    def prune(self, x: int) -> None:
        """Forget intervals that end before cycle ``x`` (no later query looks before it)."""
        iv, i = self.iv, self.head
        while i < len(iv) and iv[i][1] < x:
            i += 1
        if i > 256:
            del iv[:i]
            i = 0
        self.head = i

    def first(self, x: int) -> int:
        """Return the first enabled cycle >= x."""
        iv = self.iv
        for i in range(self.head, len(iv)):
            lo, hi = iv[i]
            if hi < x:
                continue
            return hi + 1 if lo <= x else x
        return x

    def advance(self, x: int, n: int) -> int:
        """Return the n-th enabled cycle after cycle x (x itself when n = 0)."""
        y = x + n
        if n == 0:
            return y
        iv = self.iv
        for i in range(self.head, len(iv)):
            lo, hi = iv[i]
            if hi <= x:
                continue
            if lo > y:
                break
            y += hi - (lo if lo > x else x + 1) + 1
        return y

    def state(self, ref: int) -> tuple:
        return tuple((lo - ref, hi - ref) for lo, hi in self.iv[self.head:])


def window_walk(spec: dict) -> tuple[list, list, list]:
    """The positions a window generator (``window``, ``maxpool``) walks in a frame, in runs.

    The generator steps through the padded raster (``padded`` = (Hp, Wp)) one position at a
    time; the positions inside the image (``image``, offset by ``padding``) take the frame's
    pixels in raster order. Returns ``(head, mids, tail)``: ``head`` the positions up to and
    including the one that completes window 0, ``mids[l]`` (l >= 1) those after window l - 1's
    up to window l's (``mids[0]`` is empty), ``tail`` those after the last window to the end
    of the frame. Each is a list of runs ``(pads, first pixel, pixels)``: ``pads`` padding
    positions, then the pixels ``first .. first + pixels - 1`` of the frame.
    """
    (h, w), (hp, wp) = spec["image"], spec["padded"]
    (kh, kw), (sh, sw), (ph, pw) = spec["kernel"], spec["stride"], spec["padding"]
    oh, ow = (hp - kh) // sh + 1, (wp - kw) // sw + 1
    ends = [(oy * sh + kh - 1) * wp + ox * sw + kw - 1 for oy in range(oh) for ox in range(ow)]

    def runs(lo: int, hi: int) -> list:
        out: list = []
        for k in range(lo, hi):
            y, x = divmod(k, wp)
            if ph <= y < ph + h and pw <= x < pw + w:
                p = (y - ph) * w + x - pw
                if out and out[-1][2] and out[-1][1] + out[-1][2] == p:
                    out[-1][2] += 1
                elif out and not out[-1][2]:
                    out[-1][1:] = [p, 1]
                else:
                    out.append([0, p, 1])
            elif out and not out[-1][2]:
                out[-1][0] += 1
            else:
                out.append([1, 0, 0])
        return [tuple(r) for r in out]

    mids = [[]] + [runs(ends[i - 1] + 1, ends[i] + 1) for i in range(1, len(ends))]
    return runs(0, ends[0] + 1), mids, runs(ends[-1] + 1, hp * wp)


def _gather(up: list, hs: list, base: int, count: int, ready: int):
    """Accept input tokens ``base .. base + count - 1`` of a unit that collects a vector: the
    first from cycle ``ready`` on, the others whenever offered."""
    for e in range(base, base + count):
        while len(up) <= e:
            yield up, e
        hs.append(up[e] if e > base or up[e] > ready else ready)


class _Node:
    """One block of the plan: its lists and processes."""

    def __init__(self, spec):
        self.spec = spec
        self.name = spec["name"]
        self.kind = spec["kind"]
        self.V: list[int] = []
        ports = max(1, len(spec["inputs"]))
        self.hs: list[list[int]] = [[] for _ in range(ports)]
        self.up: list[list[int]] = []        # producers' V, per input port
        self.down: list[list[int]] = []      # consumers' hs, per output port
        self.frames = 0                      # frames in the run (a window walks the last tail)
        self.T: list[int] = []               # matrix unit: cycle each vector leaves the buffer
        self.L: list[int] = []               # matrix unit: cycle of each vector's last step
        self.en = Enable()                   # the global stall of a block with an output register
        self.st: tuple = ()                  # scalars a process carries from token to token

    # each process: a generator yielding (list, index) while it waits for list[index]
    def processes(self):
        k = self.kind
        if k == "fifo":
            return [(self._fifo_in(), [self.hs[0]]), (self._fifo_out(), [self.V])]
        if k in ("window", "maxpool"):
            return [(self._window(), [self.V, self.hs[0]])]
        if k in ("mvtu", "score"):
            return [(self._matrix_in(), [self.hs[0]]), (self._matrix_steps(), [self.T, self.L]),
                    (self._matrix_out(), [self.V])]
        fn = {"deserializer": self._deserializer, "serializer": self._serializer,
              "mst": self._mst,
              "add": self._join, "concat": self._concat, "fork": self._fork}[k]
        return [(fn(), [self.V, *self.hs])]

    def _fifo_in(self):
        up, hs, out, d = self.up[0], self.hs[0], self.down[0], self.spec["depth"]
        j = 0
        while True:
            while len(up) <= j:
                yield up, j
            a = up[j]
            if j >= d:
                while len(out) <= j - d:
                    yield out, j - d
                if out[j - d] + 1 > a:
                    a = out[j - d] + 1
            hs.append(a)
            j += 1

    def _fifo_out(self):
        hs, out, V = self.hs[0], self.down[0], self.V
        j = 0
        while True:
            while len(hs) <= j:
                yield hs, j
            v = hs[j] + 1
            if j:
                while len(out) < j:
                    yield out, j - 1
                if out[j - 1] + 1 > v:
                    v = out[j - 1] + 1
            V.append(v)
            j += 1

    def _deserializer(self):
        up, hs, out, V, count = self.up[0], self.hs[0], self.down[0], self.V, self.spec["count"]
        v = 0
        while True:
            r = _NEG
            if v:
                while len(out) < v:
                    yield out, v - 1
                r = out[v - 1]
            yield from _gather(up, hs, v * count, count, r)
            V.append(hs[-1] + 1)
            v += 1

    def _serializer(self):
        up, hs, out, V, count = self.up[0], self.hs[0], self.down[0], self.V, self.spec["count"]
        q = 0
        while True:
            j, e = divmod(q, count)
            if q:
                while len(out) < q:
                    yield out, q - 1
            if e:
                V.append(out[q - 1] + 1)
            else:
                while len(up) <= j:
                    yield up, j
                a = up[j]
                if q and out[q - 1] > a:
                    a = out[q - 1]
                hs.append(a)
                V.append(a + 1)
            q += 1

    def _matrix_in(self):
        up, hs, T, count = self.up[0], self.hs[0], self.T, self.spec.get("count", 1)
        wt = self.spec.get("word_transfers", 0)
        j = 0
        while True:
            if wt:
                # a RAM word's last transfer waits for the buffer (the cycle after the take)
                for e in range(count):
                    p = j * count + e
                    while len(up) <= p:
                        yield up, p
                    a = up[p]
                    if (e + 1) % wt == 0 and j:
                        while len(T) < j:
                            yield T, j - 1
                        if T[j - 1] + 1 > a:
                            a = T[j - 1] + 1
                    hs.append(a)
                j += 1
                continue
            t = _NEG
            if j:
                while len(T) < j:
                    yield T, j - 1
                t = T[j - 1]
            yield from _gather(up, hs, j * count, count, t)
            j += 1

    def _matrix_steps(self):
        """When each vector is taken (T) and its last step issues (L): T_j = max(a_j + 1,
        L_{j-1}) for a_j its last transfer's handshake; L_j = max(T_j + F, H_{j-Q} + 1), H the
        output handshakes, Q the output slots (the credit)."""
        s = self.spec
        hs, out, T, L = self.hs[0], self.down[0], self.T, self.L
        f, count, q = s["cycles"], s.get("count", 1), s["slots"]
        last = _NEG
        j = 0
        while True:
            e = (j + 1) * count - 1
            while len(hs) <= e:
                yield hs, e
            t = hs[e] + 1 if hs[e] + 1 > last else last
            T.append(t)
            last = t + f
            if j >= q:
                while len(out) <= j - q:
                    yield out, j - q
                if out[j - q] + 1 > last:
                    last = out[j - q] + 1
            L.append(last)
            j += 1

    def _matrix_out(self):
        """Result j is offered from max(L_j + latency + 1, H_{j-1} + 1): in order from the
        output queue."""
        L, out, V, lat = self.L, self.down[0], self.V, self.spec["latency"]
        j = 0
        while True:
            while len(L) <= j:
                yield L, j
            v = L[j] + lat + 1
            if j:
                while len(out) < j:
                    yield out, j - 1
                if out[j - 1] + 1 > v:
                    v = out[j - 1] + 1
            V.append(v)
            j += 1

    def _window(self):
        """Window generator: every position of the padded raster in one enabled cycle of its own
        (a pixel position also no earlier than its pixel's offer), frames back to back; a window
        is written in the cycle of the position that completes it."""
        s = self.spec
        out, V = self.down[0], self.V
        head, mids, tail = window_walk(s)
        windows, pixels = s["windows"], s["pixels"]
        en = self.en
        step, w = -1, _NEG          # the last position's cycle; the last window's write
        q = 0
        while True:
            f, lq = divmod(q, windows)
            if q:
                while len(out) < q:
                    self.st = (step, w)
                    yield out, q - 1
                en.add(w, out[q - 1])
            if lq == 0 and f:
                step = yield from self._walk(tail, (f - 1) * pixels, step, w)
                if f == self.frames:
                    self.st = (step, w)
                    return
            step = yield from self._walk(mids[lq] if lq else head, f * pixels, step, w)
            w = step
            V.append(w + 1)
            q += 1

    def _walk(self, runs, base, step, w):
        """Step through ``runs`` (:func:`window_walk`) from cycle ``step``; return the last
        position's cycle."""
        up, hs, en = self.up[0], self.hs[0], self.en
        for pads, first, n in runs:
            en.prune(step)
            if pads:
                step = en.advance(step, pads)
            for p in range(base + first, base + first + n):
                while len(up) <= p:
                    self.st = (step, w)
                    yield up, p
                v = up[p]
                step = en.first(step + 1 if step + 1 > v else v)
                hs.append(step)
        return step

    def _mst(self):
        up, hs, out, V, lat = self.up[0], self.hs[0], self.down[0], self.V, self.spec["latency"]
        en = self.en
        a = w = _NEG
        j = 0
        while True:
            while len(up) <= j:
                yield up, j
            en.prune(a)
            early = False
            if j and len(out) < j:
                a = en.first(up[j])
                if a <= w:               # accepted before the previous result's stall matters
                    hs.append(a)
                    early = True
                while len(out) < j:
                    yield out, j - 1
            if j:
                en.add(w, out[j - 1])
            a = en.first(up[j])
            if not early:
                hs.append(a)
            w = en.advance(a, lat)
            V.append(w + 1)
            self.st = (a, w)
            j += 1

    def _join(self):
        (u0, u1), (h0, h1), out, V = self.up, self.hs, self.down[0], self.V
        en = self.en
        a = w = _NEG
        j = 0
        while True:
            if j:
                while len(out) < j:
                    yield out, j - 1
                en.add(w, out[j - 1])
            while len(u0) <= j:
                yield u0, j
            while len(u1) <= j:
                yield u1, j
            v = u0[j] if u0[j] > u1[j] else u1[j]
            en.prune(a)
            a = en.first(v)
            h0.append(a)
            h1.append(a)
            w = a
            V.append(w + 1)
            self.st = (a,)
            j += 1

    def _concat(self):
        ups, hss, out, V = self.up, self.hs, self.down[0], self.V
        j = 0
        while True:
            v = _NEG
            for u in ups:
                while len(u) <= j:
                    yield u, j
                if u[j] > v:
                    v = u[j]
            V.append(v)
            while len(out) <= j:
                yield out, j
            for h in hss:
                h.append(out[j])
            j += 1

    def _fork(self):
        up, hs, outs, V = self.up[0], self.hs[0], self.down, self.V
        j = 0
        while True:
            while len(up) <= j:
                yield up, j
            V.append(up[j])
            a = _NEG
            for out in outs:
                while len(out) <= j:
                    yield out, j
                if out[j] > a:
                    a = out[j]
            hs.append(a)
            j += 1


def run_plan(blocks: list, frames: int, tokens: int, gaps, nxt, periodic: bool = False,
             last_gap: int = -1, ready_end: int = 0):
    """Run the processes of ``blocks`` (plan dicts; wires already removed and rewired) for
    ``frames`` frames of ``tokens`` input transfers.

    ``gaps``: idle cycles before each input transfer (None: none); ``nxt``: first ready output
    cycle >= k (None: always ready). Returns ``(nodes by name, input handshakes, outputs,
    periodic)``; raises :class:`Deadlock` when the run stops early (its ``partial`` attribute
    then holds the first three).

    With ``periodic``, once the stimulus is constant (no input gap after transfer
    ``last_gap``, the output ready from cycle ``ready_end`` on) the state after each output is
    keyed relative to that output's cycle: every list's length against the frames done and its
    last values (as far back as any process reads: the deepest FIFO), every block's carried
    scalars and stall intervals. When a key repeats the run stops, and ``periodic`` is
    ``(frame, period in frames, shift in cycles)``: from there on every list repeats with that
    period, shifted by that many cycles (:func:`extend` fills it in); else ``None``.
    """
    nodes = {b["name"]: _Node(b) for b in blocks}
    for node in nodes.values():
        node.frames = frames
    src_V: list[int] = []
    out_hs: list[int] = []
    first = None
    for b in blocks:
        node = nodes[b["name"]]
        for port, (name, k) in enumerate(b["inputs"] or [(None, 0)]):
            if name is None:
                node.up.append(src_V)
                first = node.hs[port]
            else:
                prod = nodes[name]
                node.up.append(prod.V)
                while len(prod.down) <= k:
                    prod.down.append(None)
                prod.down[k] = node.hs[port]
    last = nodes[blocks[-1]["name"]]
    last.down = [out_hs]
    total = frames * tokens

    def source():
        for n in range(total):
            g = int(gaps[n]) if gaps is not None and n < len(gaps) else 0
            if n == 0:
                src_V.append(g)
                continue
            while len(first) < n:
                yield first, n - 1
            src_V.append(first[n - 1] + 1 + g)

    lists = [(src_V, tokens), (out_hs, 1)]
    for node in nodes.values():
        b = node.spec
        lists.append((node.V, b["out_tokens"]))
        lists += [(h, b["tokens"]) for h in node.hs]
        if b["kind"] in ("mvtu", "score"):
            lists += [(node.T, b["out_tokens"]), (node.L, b["out_tokens"])]
    # how far back from its end a process may read a list (values written ahead of their
    # reader included); everything not listed below reads the last one or two
    back = {id(lst): 4 for lst, _ in lists}

    def reach(lst, n):
        back[id(lst)] = max(back[id(lst)], n + 2)

    for node in nodes.values():
        b = node.spec
        if node.kind == "fifo":
            # the input side reads the consumer's handshakes ``depth`` back; the output side
            # reads its own input handshakes, which run up to ``depth`` ahead of it
            reach(node.down[0], b["depth"])
            reach(node.hs[0], b["depth"])
        elif node.kind in ("mvtu", "score"):
            reach(node.hs[0], b.get("count", 1))  # a vector's last transfer; the next may fill
    seen: dict = {}
    found: list = []

    def key(j, ref):
        parts = []
        for lst, per in lists:
            n = len(lst)
            parts.append((n - (j + 1) * per,
                          tuple(_rel(x, ref) for x in lst[max(0, n - back[id(lst)]):])))
        for node in nodes.values():
            parts.append((tuple(_rel(x, ref) for x in node.st), node.en.state(ref)))
            if node.kind in ("mvtu", "score") and node.L:
                parts.append(_matrix_key(node, ref))
        return tuple(parts)

    def sink():
        V = last.V
        for j in range(frames):
            while len(V) <= j:
                yield V, j
            v = V[j]
            if nxt is not None and v < len(nxt):
                v = int(nxt[v])
            out_hs.append(v)
            if not periodic or j + 1 >= frames or len(src_V) <= last_gap or v + 1 < ready_end:
                continue
            k = key(j, v)
            if k in seen:
                found.append((j, j - seen[k], v - out_hs[seen[k]]))
                return
            seen[k] = j

    procs = [(source(), [src_V], "input"), (sink(), [out_hs], "output")]
    writer: dict[int, int] = {id(src_V): 0, id(out_hs): 1}
    for name, node in nodes.items():
        for gen, writes in node.processes():
            for lst in writes:
                writer[id(lst)] = len(procs)
            procs.append((gen, writes, name))
    waiting: dict[int, list] = {}
    wait_of: list = [None] * len(procs)
    done = [False] * len(procs)
    runnable = deque(range(len(procs)))
    queued = [True] * len(procs)
    while runnable:
        p = runnable.popleft()
        queued[p] = False
        gen, writes, _ = procs[p]
        try:
            lst, idx = next(gen)
        except StopIteration:
            done[p] = True
            wait_of[p] = None
            if p == 1 and found:
                break           # the rest is the periodic continuation
        else:
            wait_of[p] = (lst, idx)
            waiting.setdefault(id(lst), []).append((idx, p))
        for lst in writes:
            ws = waiting.get(id(lst))
            if not ws:
                continue
            n = len(lst)
            keep = []
            for idx, q in ws:
                if idx < n:
                    if not queued[q]:
                        queued[q] = True
                        runnable.append(q)
                else:
                    keep.append((idx, q))
            waiting[id(lst)] = keep
    if done[1]:
        return nodes, first, out_hs, (found[0] if found else None)
    # deadlock: follow the waits from the output back to a repeated process
    seen: list[int] = []
    p = 1
    while p not in seen and wait_of[p] is not None:
        seen.append(p)
        p = writer.get(id(wait_of[p][0]), p)
    cycle = seen[seen.index(p):] if p in seen else seen
    names = []
    for q in reversed(cycle):
        name = procs[q][2]
        if name not in names and name not in ("input", "output"):
            names.append(name)
    full = [n for n in names if nodes[n].kind == "fifo"
            and wait_of[next(i for i, pr in enumerate(procs) if pr[2] == n)] is not None
            and _fifo_full(nodes[n])]
    n_in, n_out = len(first), len(out_hs)
    msg = (f"deadlock: the accelerator stops after {n_in} of {total} input transfers and "
           f"{n_out} of {frames} frames; blocked in a cycle: {' -> '.join(names)}")
    if full:
        msg += ("; full FIFO" + ("s " if len(full) > 1 else " ") + ", ".join(
            f"{n} (depth {nodes[n].spec['depth']})" for n in full)
            + ": deepen it (SizeFifos sizes every FIFO from this simulator)")
    err = Deadlock(msg, names, n_in, n_out, full)
    err.partial = (nodes, first, out_hs)
    raise err


def _rel(v: int, ref: int):
    return None if v <= _NEG // 2 else v - ref


def _matrix_key(node, ref) -> tuple:
    """What a matrix unit's processes will still read: the last steps whose offers are not
    computed yet, and the output handshakes they or later last steps compare with (the
    credits), each clamped from below to the earliest value that can still make a
    difference, so that old handshakes from before a stall key alike."""
    L, V, out = node.L, node.V, node.down[0]
    kl, kv, q = len(L), len(V), node.spec["slots"]
    lat = node.spec["latency"]
    floor = L[-1] if kv >= kl else min(L[-1], L[kv] + lat)
    lo = max(0, min(kv - 1, kl - q))
    return (kl - kv, tuple(_rel(x, ref) for x in L[max(0, kv - 1):]),
            tuple(_rel(max(x, floor), ref) for x in out[lo:]))


def extend(values: list, per_frame: int, frames: int, periodic) -> np.ndarray:
    """``values`` (a list of cycles, ``per_frame`` a frame) as an int64 array for ``frames``
    frames: as computed, or with ``periodic = (frame, period, shift)`` the values computed until
    the repeat and their periodic continuation."""
    if periodic is None:
        return np.asarray(values, dtype=np.int64)
    _, period, shift = periodic
    out = np.empty(frames * per_frame, dtype=np.int64)
    # at the repeat every list is as far ahead of the frames done as one period earlier, so
    # each value not computed yet is the one a period before it, shifted
    pos = min(len(values), out.size)
    out[:pos] = values[:pos]
    span = period * per_frame
    while pos < out.size and span:
        n = min(span, out.size - pos)
        out[pos:pos + n] = out[pos - span:pos - span + n] + shift
        pos += n
    return out


def _fifo_full(node) -> bool:
    """A FIFO whose input side waits for room (its j-th input needs output j - depth)."""
    return len(node.hs[0]) >= node.spec["depth"] and len(node.down[0]) < \
        len(node.hs[0]) - node.spec["depth"] + 1


def max_occupancy(hs_in: list, hs_out: list) -> int:
    """The most tokens a FIFO held at the end of a cycle: after input j, j + 1 minus the outputs
    handshaken at or before that cycle."""
    a = np.asarray(hs_in, dtype=np.int64)
    b = np.asarray(hs_out, dtype=np.int64)
    if not a.size:
        return 0
    out = np.searchsorted(b, a, side="right")
    return int((np.arange(1, a.size + 1) - out).max())
