"""The cocotb test that streams frames through ``bnnforge_top`` and records every handshake.

Run by :func:`bnnforge.hw.harness.run_rtl` (never by pytest directly). The harness writes the
frames and options to an npz file named by the environment variable ``BNNFORGE_HARNESS_IN``; this
test writes the results to the npz named by ``BNNFORGE_HARNESS_OUT`` and, while it runs, the
number of frames received so far to the text file named by ``BNNFORGE_HARNESS_PROGRESS``.

Cycle numbering: reset is released and the first pixel is offered on the same falling clock edge;
cycle ``k`` (from 0) is the clock period that ends with the ``k``-th rising edge (from 0) at
which ``rst`` reads low. A handshake "in cycle k" is ``valid & ready`` sampled just before that
edge, so the transfer happens on it.

Stalls: with ``idle_limit`` > 0 in the options, the test stops once the design has made no
progress for ``idle_limit`` cycles — cycles without any handshake in which the harness refused
none: every cycle counts except one in which the design was ready for input that the harness held
back (an input gap) or offered an output that the harness held back (``o_stream__ready`` low).
It then writes the handshakes so far with ``stalled = 1`` instead of failing, so a deadlocked
design can be inspected. ``last_progress`` is the cycle of the last handshake (-1: none).

Speed: the test drives inputs on falling edges and samples in the read-only phase (two awaits per
cycle). When neither its own outputs are due to change nor a handshake is possible, it waits on
value changes of ``i_stream__ready`` / ``o_stream__valid`` (or a timer for its next scheduled
change) instead of visiting every cycle, so the long busy stretches of a folded design cost one
wake-up each.
"""

from __future__ import annotations

import os
import time

import cocotb
import numpy as np
from cocotb.clock import Clock
from cocotb.simtime import get_sim_time
from cocotb.triggers import FallingEdge, First, ReadOnly, Timer

ENV_IN = "BNNFORGE_HARNESS_IN"
ENV_OUT = "BNNFORGE_HARNESS_OUT"
ENV_PROGRESS = "BNNFORGE_HARNESS_PROGRESS"

PERIOD = 2  # clock period in simulator steps (the harness builds with a 1ns/1ns timescale)
RESET_CYCLES = 4
_CHUNK = 1 << 16  # output-stall decisions drawn per chunk of cycles
_NEVER = 1 << 62


class HarnessError(AssertionError):
    """The design broke the stream contract (the message says how); fails the cocotb test."""


class _StallPattern:
    """Seeded per-cycle output back-pressure: ``ready(k)`` and the next cycle it changes."""

    def __init__(self, probability: float, rng: np.random.Generator):
        self.p = float(probability)
        self.rng = rng
        self.base = -_CHUNK
        self.bits = np.ones(0, dtype=bool)
        self.changes = np.zeros(0, dtype=np.int64)

    def _load(self, k: int) -> None:
        base = (k // _CHUNK) * _CHUNK
        while self.base < base:  # draw chunks in order so the pattern depends on the seed only
            self.base += _CHUNK
            self.bits = self.rng.random(_CHUNK) >= self.p
            self.changes = np.flatnonzero(self.bits[1:] != self.bits[:-1]) + 1

    def ready(self, k: int) -> bool:
        if self.p == 0.0:
            return True
        if k >= self.base + _CHUNK:
            self._load(k)
        return bool(self.bits[k - self.base])

    def next_change(self, k: int) -> int:
        """Return the first cycle after ``k`` whose ready differs from cycle ``k``'s."""
        if self.p == 0.0:
            return _NEVER
        if k >= self.base + _CHUNK:
            self._load(k)
        pos = int(np.searchsorted(self.changes, k - self.base, side="right"))
        if pos < len(self.changes):
            return self.base + int(self.changes[pos])
        return self.base + _CHUNK  # re-examine at the chunk boundary


class _ReadyArray:
    """Output back-pressure from an explicit per-cycle array; ready is 1 once it runs out."""

    def __init__(self, bits: np.ndarray):
        self.bits = np.asarray(bits, dtype=bool)
        self.p = 0.0 if self.bits.all() else 1.0
        self.changes = np.flatnonzero(self.bits[1:] != self.bits[:-1]) + 1
        if len(self.bits) and not self.bits[-1]:
            self.changes = np.append(self.changes, len(self.bits))

    def ready(self, k: int) -> bool:
        return bool(self.bits[k]) if k < len(self.bits) else True

    def next_change(self, k: int) -> int:
        pos = int(np.searchsorted(self.changes, k, side="right"))
        return int(self.changes[pos]) if pos < len(self.changes) else _NEVER


def _decode(binstr: str, classes: int, score_width: int, class_width: int,
            frame: int) -> tuple[list[int], int]:
    if not set(binstr) <= {"0", "1"}:
        raise HarnessError(f"frame {frame}: o_stream__payload holds X/Z bits when valid: "
                           f"{binstr!r}")
    value = int(binstr, 2)
    width = len(binstr)
    mask = (1 << score_width) - 1
    half = 1 << (score_width - 1)
    scores = []
    for c in range(classes):
        s = (value >> (score_width * c)) & mask
        scores.append(s - (1 << score_width) if s & half else s)
    cls = value >> (width - class_width) if class_width else 0
    return scores, cls


@cocotb.test()
async def stream_frames(dut):
    """Stream every frame in, collect one output per frame, record all handshake cycles."""
    cfg = np.load(os.environ[ENV_IN])
    per = int(cfg["pixels_per_transfer"]) if "pixels_per_transfer" in cfg.files else 1
    # (transfers, pixels_per_transfer * channels) uint8, frames back to back: pixel 0 lowest
    pixels = cfg["pixels"]
    pixels = pixels.reshape(pixels.shape[0] // per, per * pixels.shape[1])
    n_frames = int(cfg["frames"])
    classes, score_width = int(cfg["classes"]), int(cfg["score_width"])
    class_width = int(cfg["class_width"])
    input_gap, output_stall = float(cfg["input_gap"]), float(cfg["output_stall"])
    timeout = int(cfg["timeout_cycles"])
    idle_limit = int(cfg["idle_limit"]) if "idle_limit" in cfg.files else 0
    seed = int(cfg["seed"])
    progress_path = os.environ.get(ENV_PROGRESS)
    total = int(pixels.shape[0])

    seq_in, seq_out = np.random.SeedSequence(seed).spawn(2)
    if "in_gaps" in cfg.files:          # explicit stimulus (what bnnforge verify and sim share)
        gaps = np.zeros(total + 1, dtype=np.int64)
        given = np.asarray(cfg["in_gaps"], dtype=np.int64)[:total]
        gaps[:len(given)] = given
    elif input_gap > 0.0:
        gaps = np.random.default_rng(seq_in).geometric(1.0 - input_gap, total + 1) - 1
    else:
        gaps = np.zeros(total + 1, dtype=np.int64)
    gaps = gaps.tolist()
    if "out_ready" in cfg.files:
        stall = _ReadyArray(cfg["out_ready"])
    else:
        stall = _StallPattern(output_stall, np.random.default_rng(seq_out))
    payloads = [int.from_bytes(row.tobytes(), "little") for row in pixels]

    clk, rst = dut.clk, dut.rst
    i_valid, i_payload, i_ready = dut.i_stream__valid, dut.i_stream__payload, dut.i_stream__ready
    o_valid, o_payload, o_ready = dut.o_stream__valid, dut.o_stream__payload, dut.o_stream__ready
    # Raw GPI reads of the two 1-bit signals polled every cycle (no Logic object per read).
    read_i_ready = i_ready._handle.get_signal_val_long
    read_o_valid = o_valid._handle.get_signal_val_long

    i_valid.value = 0
    i_payload.value = 0
    o_ready.value = 0
    rst.value = 1
    Clock(clk, PERIOD, unit="step", impl="gpi").start(start_high=False)
    falling = FallingEdge(clk)
    read_only = ReadOnly()
    for _ in range(RESET_CYCLES):
        await falling

    in_cycles = np.zeros(total, dtype=np.int64)
    out_cycles = np.zeros(n_frames, dtype=np.int64)
    scores = np.zeros((n_frames, classes), dtype=np.int64)
    labels = np.zeros(n_frames, dtype=np.int64)

    t_f0 = get_sim_time("step")  # time of the falling edge that opens cycle 0
    rst.value = 0
    k = 0  # current cycle; the loop body runs at its opening falling edge
    i = 0  # next pixel
    j = 0  # next frame out
    in_at = gaps[0]  # first cycle pixel i may be offered
    cur_valid, cur_payload, cur_ready = False, -1, False
    last_out = 0
    last_progress = -1
    idle = 0  # cycles without progress that the harness did not cause (see idle_limit)
    prev_k, prev_counts = -1, False
    stalled = False
    wall = time.perf_counter()
    while True:
        if prev_counts:  # the cycles slept through since the last visit: no handshake
            idle += k - prev_k - 1
        valid = i < total and k >= in_at
        if valid != cur_valid:
            i_valid.value = int(valid)
            cur_valid = valid
        if valid and cur_payload != i:
            i_payload.value = payloads[i]
            cur_payload = i
        ready = stall.ready(k)
        if ready != cur_ready:
            o_ready.value = int(ready)
            cur_ready = ready
        await read_only

        moved = False
        if valid and read_i_ready():
            in_cycles[i] = k
            i += 1
            in_at = k + 1 + gaps[i]
            moved = True
        if ready and read_o_valid():
            scores[j], labels[j] = _decode(o_payload._handle.get_signal_val_binstr(), classes,
                                           score_width, class_width, j)
            out_cycles[j] = k
            j += 1
            last_out = k
            moved = True
            if progress_path and (j == n_frames or time.perf_counter() - wall > 0.2):
                wall = time.perf_counter()
                with open(progress_path, "w") as f:
                    f.write(str(j))
            if j == n_frames:
                break
        counts = False
        if moved:
            idle = 0
            last_progress = k
        elif idle_limit:
            # i_ready/o_valid stay as read here until the next visit (the sleep wakes on them)
            refused = (i < total and not valid and read_i_ready()) or \
                (not ready and read_o_valid())
            counts = not refused
            idle += counts
            if idle >= idle_limit:
                stalled = True
                break
        prev_k, prev_counts = k, counts
        deadline = last_out + timeout
        if k >= deadline:
            raise HarnessError(
                f"timeout: no output for {timeout} cycles (cycle {k}); {j} of {n_frames} frames "
                f"came out and {i} of {total} input transfers went in; the design stopped "
                f"producing outputs (raise timeout_cycles if it is just slow)")

        nxt = k + 1
        if not moved:
            # Nothing changes on our side before `due`; sleep until the design moves.
            due = min(stall.next_change(k), deadline)
            if i < total and not valid:
                due = min(due, in_at)
            if counts:  # the cycle idle reaches idle_limit unless something moves
                due = min(due, k + idle_limit - idle)
            if due > nxt:
                timer = Timer(t_f0 + due * PERIOD - get_sim_time("step"), unit="step")
                fired = await First(i_ready.value_change, o_valid.value_change, timer)
                if fired is timer:
                    k = due
                    continue
                # A change at a rising edge opens the cycle whose falling edge comes next.
                now = get_sim_time("step")
                k = (now - t_f0) // PERIOD + 1
                await Timer(t_f0 + k * PERIOD - now, unit="step")
                continue
        await falling
        k = nxt

    cycles = k + 1
    if stalled:
        np.savez(os.environ[ENV_OUT], scores=scores[:j], classes=labels[:j],
                 out_cycles=out_cycles[:j], in_cycles=in_cycles[:i], cycles=np.int64(cycles),
                 stalled=np.int64(1), last_progress=np.int64(last_progress))
        return
    # Drain: the design must not emit a frame it was never given.
    await falling
    o_ready.value = 1
    i_valid.value = 0
    await read_only
    extra = bool(read_o_valid())
    if not extra:
        gaps_out = np.diff(out_cycles)
        drain = 64 + int(gaps_out.max() if gaps_out.size else out_cycles[0])
        timer = Timer(drain * PERIOD, unit="step")
        if (await First(o_valid.value_change, timer)) is not timer:
            await ReadOnly()
            extra = bool(read_o_valid())
    if extra:
        raise HarnessError(f"the design produced an output after all {n_frames} frames had come "
                           "out (a duplicated or invented frame)")
    np.savez(os.environ[ENV_OUT], scores=scores, classes=labels, out_cycles=out_cycles,
             in_cycles=in_cycles, cycles=np.int64(cycles), stalled=np.int64(0),
             last_progress=np.int64(last_progress))
