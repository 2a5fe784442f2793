"""Unit tests of the hw components in Amaranth's Python simulator against numpy models."""

import numpy as np
import pytest
from amaranth.hdl import Module, Signal
from amaranth.sim import Simulator

from bnnforge.compiler.pipeline import PIPELINES, Pipeline, lane_stages
from bnnforge.hw import (
    MVTU,
    Deserializer,
    InputThreshold,
    MaxPool,
    ScoreUnit,
    Serializer,
    SlidingWindow,
    StreamFIFO,
    argmax_stages,
    tree_stages,
)
from bnnforge.hw.checks import silence
from bnnforge.hw.matrix import adder_tree
from bnnforge.hw.testing import simulate_stream, simulate_streams
from bnnforge.sim.timing import _BLOCKS, _Source


def pack(values, bits):
    """Pack a sequence of non-negative ints of ``bits`` bits, element 0 lowest."""
    out = 0
    for i, v in enumerate(values):
        out |= int(v) << (i * bits)
    return out


def unpack(word, bits, count):
    mask = (1 << bits) - 1
    return [(word >> (i * bits)) & mask for i in range(count)]


def accumulate(x, w, input_bits):
    """(N, K) inputs, (C, K) weight bits -> (N, C) accumulators."""
    if input_bits == 1:
        return (~(x[:, None, :].astype(bool) ^ w[None])).sum(-1)
    return x.astype(np.int64) @ np.where(w, 1, -1).T


def random_inputs(rng, n, k, input_bits):
    if input_bits == 1:
        return rng.integers(0, 2, (n, k)).astype(np.int64)
    return rng.integers(0, 256, (n, k)).astype(np.int64)


# -- MVTU --------------------------------------------------------------------------------------

@pytest.mark.parametrize("k,c,pe,simd,bits", [
    (12, 6, 2, 4, 1), (12, 6, 6, 12, 1), (12, 6, 1, 1, 1), (20, 4, 4, 10, 1),
    (64, 8, 2, 64, 1), (6, 4, 2, 3, 8), (6, 4, 4, 6, 8), (9, 3, 1, 1, 8),
])
def test_mvtu_random(k, c, pe, simd, bits):
    rng = np.random.default_rng(k * 100 + c + pe + simd + bits)
    w = rng.integers(0, 2, (c, k)).astype(bool)
    lo, hi = (0, k) if bits == 1 else (-255 * k, 255 * k)
    t = rng.integers(lo // 4 if bits == 8 else lo, (hi // 4 if bits == 8 else hi) + 2, c)
    t[0] = lo - 1000        # constant 1
    t[-1] = hi + 5          # constant 0
    x = random_inputs(rng, 12, k, bits)
    expected = accumulate(x, w, bits) >= t[None]
    dut = MVTU(k, c, pe, simd, w, t.tolist(), bits)
    out, _ic, _oc = simulate_stream(dut, [pack(v, bits) for v in x], len(x), seed=k + c,
                           idle=0.4, stall=0.4)
    assert out == [pack(e, 1) for e in expected]


def test_mvtu_packed_weights_match_bool_weights():
    rng = np.random.default_rng(5)
    w = rng.integers(0, 2, (4, 13)).astype(bool)
    packed = np.packbits(w, axis=-1, bitorder="little")
    a = MVTU(13, 4, 2, 13, w, [7] * 4)
    b = MVTU(13, 4, 2, 13, packed, [7] * 4)
    silence(a, b)                       # built only to compare their ROM contents
    assert np.array_equal(a.weights, b.weights)


#: every pipeline shape: the named ones and one with only the ROM register, one adder level a stage
PIPES = [*PIPELINES.values(), Pipeline("rom-only", 1, 1, False)]


@pytest.mark.parametrize("pipe", PIPES, ids=lambda p: p.name)
@pytest.mark.parametrize("k,c,pe,simd,popcount", [(12, 6, 2, 4, False), (8, 2, 2, 8, False),
                                                   (16, 4, 1, 2, False), (12, 4, 2, 3, True)])
def test_mvtu_timing_contract(k, c, pe, simd, popcount, pipe):
    rng = np.random.default_rng(1)
    w = rng.integers(0, 2, (c, k)).astype(bool)
    t = rng.integers(0, k + 1, c)
    dut = MVTU(k, c, pe, simd, w, None if popcount else t.tolist(), pipeline=pipe)
    x = random_inputs(rng, 6, k, 1)
    out, ic, oc = simulate_stream(dut, [pack(v, 1) for v in x], len(x))
    acc = accumulate(x, w, 1)
    if popcount:
        nb = dut.count_bits
        assert out == [sum(int(v) << (nb * i) for i, v in enumerate(row)) for row in acc]
    else:
        assert out == [pack(e, 1) for e in acc >= t[None]]
    f = (c // pe) * (k // simd)
    # an adder tree has ceil(log2 SIMD) levels; a carry-chain lane floor(log2 SIMD) (a level
    # of segments A + B + c holds up to 2^(D+1) - 1 terms); a register every tree_levels
    levels = max(simd - 1, 0).bit_length() if pipe.lanes == "adder" else simd.bit_length() - 1
    d = (levels + pipe.tree_levels - 1) // pipe.tree_levels
    assert dut.cycles == f and dut.tree_stages == d
    assert dut.latency == f + 3 + d + pipe.operand_stage + pipe.compare_register
    assert oc[0] - ic[0] == dut.latency
    assert np.all(np.diff(oc) == f)            # II = F back to back
    # and under gaps and back-pressure the values stay exact
    again = MVTU(k, c, pe, simd, w, None if popcount else t.tolist(), pipeline=pipe)
    assert simulate_stream(again, [pack(v, 1) for v in x], len(x), seed=3, idle=0.4,
                           stall=0.5)[0] == out


@pytest.mark.parametrize("ram", [False, True])
@pytest.mark.parametrize("k,c,pe,simd,bits,count", [
    (12, 6, 2, 4, 1, 3), (6, 4, 2, 3, 8, 2), (16, 4, 4, 1, 1, 4),
    (24, 4, 2, 6, 1, 12),       # 3 transfers gathered into each RAM word
    (24, 4, 1, 4, 1, 4),        # RAM words of 12 elements: 2 transfers in, 3 steps out
    (20, 2, 2, 10, 8, 10),      # 8-bit elements, 5 transfers a word
])
@pytest.mark.parametrize("pipe", ["generic", "ice40"])
def test_mvtu_collects_count_transfers(k, c, pe, simd, bits, count, ram, pipe):
    rng = np.random.default_rng(k + c + count)
    w = rng.integers(0, 2, (c, k)).astype(bool)
    t = rng.integers(0, k + 1, c) if bits == 1 else rng.integers(-200 * k, 200 * k, c)
    x = random_inputs(rng, 8, k, bits)
    expected = [pack(e, 1) for e in accumulate(x, w, bits) >= t[None]]
    dut = MVTU(k, c, pe, simd, w, t.tolist(), bits, count=count, input_ram=ram, pipeline=pipe)
    assert dut.input_ram == ram
    e = k // count
    parts = [pack(v[i:i + e], bits) for v in x for i in range(0, k, e)]
    out, _, _ = simulate_stream(dut, parts, len(x), seed=count, idle=0.3, stall=0.4)
    assert out == expected
    dut = MVTU(k, c, pe, simd, w, t.tolist(), bits, count=count, input_ram=ram, pipeline=pipe)
    _, ic, oc = simulate_stream(dut, parts, len(x))
    f = dut.cycles
    # the last transfer of a vector starts its latency; II = max(F, count) back to back
    # both pipelines: a ROM / operand and a compare register
    assert oc[0] - ic[count - 1] == dut.latency == f + 3 + dut.pipeline.lane_stages(simd, bits) + 2
    assert np.all(np.diff(oc) == max(f, count))


def test_mvtu_input_buffer_placement():
    w = np.zeros((6, 12), bool)
    units = [MVTU(12, 6, 6, 12, w, [0] * 6, count=12), MVTU(12, 6, 2, 4, w, [0] * 6),
             MVTU(12, 6, 2, 4, w, [0] * 6, count=3)]
    silence(*units)                     # built only to read where the buffer goes
    # a 12-element vector in 12 transfers read 12 at a time is one RAM word: registers; one
    # transfer a vector: registers; 3 transfers into 4-element words: RAM
    assert [u.input_ram for u in units] == [False, False, True]
    with pytest.raises(ValueError, match=r"input_ram needs count > 1 .* K=12, count=12, "
                                         r"SIMD=12, input_bits=1"):
        MVTU(12, 6, 6, 12, w, [0] * 6, count=12, input_ram=True)
    with pytest.raises(ValueError, match=r"count must divide K=12, not 5"):
        MVTU(12, 6, 2, 4, np.zeros((6, 12), bool), [0] * 6, count=5)


def test_tree_stages():
    assert [tree_stages(s) for s in (1, 2, 8, 9, 64, 65, 784)] == [0, 1, 1, 2, 2, 3, 4]
    assert [tree_stages(s, 2) for s in (1, 2, 4, 5, 16, 17, 784)] == [0, 1, 1, 2, 2, 3, 5]


@pytest.mark.parametrize("n", [0, 1, 2, 3, 8, 9, 20, 64, 65])
def test_adder_tree_sums_with_the_contract_registers(n):
    """The one adder tree (MVTU, ScoreUnit, MSTLayer): tree_stages(n) registers, exact sum."""
    en = Signal(init=1)
    terms = [Signal(4, name=f"t{i}") for i in range(n)]
    if n < 2:                               # nothing to add: no logic, no register
        total, regs = adder_tree(None, terms, en, "t")
        assert regs == 0 and (total is terms[0] if n else total.value == 0)
        return
    m = Module()
    total, regs = adder_tree(m, terms, en, "t")
    assert regs == tree_stages(n)
    values = np.random.default_rng(n).integers(0, 16, (6, n))
    seen = []

    async def bench(ctx):
        for row in values:
            for t, v in zip(terms, row, strict=True):
                ctx.set(t, int(v))
            await ctx.tick()
        ctx.set(en, 0)                      # a disabled cycle: the tree holds
        await ctx.tick()
        seen.append(ctx.get(total))

    sim = Simulator(m)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    # after 6 enabled edges the last register holds the row fed `regs` edges before the end
    assert seen == [int(values[len(values) - regs].sum())]


def test_mvtu_errors():
    w = np.zeros((4, 6), bool)
    with pytest.raises(ValueError, match=r"SIMD must divide K=6, not 4"):
        MVTU(6, 4, 2, 4, w, [0] * 4)
    with pytest.raises(ValueError, match=r"PE must divide channels=4, not 3"):
        MVTU(6, 4, 3, 2, w, [0] * 4)
    with pytest.raises(ValueError, match=r"input_bits must be 1 or 8, not 4"):
        MVTU(6, 4, 2, 2, w, [0] * 4, 4)
    with pytest.raises(ValueError, match=r"thresholds must hold 4 values, not 3"):
        MVTU(6, 4, 2, 2, w, [0] * 3)
    with pytest.raises(TypeError, match=r"PE must be an integer, not 'x'"):
        MVTU(6, 4, "x", 2, w, [0] * 4)
    with pytest.raises(ValueError, match=r"SIMD must be at least 1, not 0"):
        MVTU(6, 4, 2, 0, w, [0] * 4)
    with pytest.raises(ValueError, match=r"weights must be \(channels=4, K=6\)"):
        MVTU(6, 4, 2, 2, np.zeros((4, 5), bool), [0] * 4)
    with pytest.raises(TypeError, match=r"thresholds must be integers, not 1.5"):
        MVTU(6, 4, 2, 2, w, [0, 1.5, 0, 0])


# -- ScoreUnit ---------------------------------------------------------------------------------

def decode_scores(word, classes, sw=32):
    scores = [v - (1 << sw) if v >> (sw - 1) else v for v in unpack(word, sw, classes)]
    return scores, word >> (sw * classes)


@pytest.mark.parametrize("k,n,pe,simd,bits", [
    (16, 10, 2, 4, 1), (16, 10, 10, 16, 1), (8, 3, 1, 1, 1), (6, 4, 2, 3, 8), (4, 1, 1, 2, 1),
])
def test_score_unit_random(k, n, pe, simd, bits):
    rng = np.random.default_rng(k + n + pe + simd + bits)
    w = rng.integers(0, 2, (n, k)).astype(bool)
    mul = rng.integers(-300, 300, n)
    add = rng.integers(-10 ** 5, 10 ** 5, n)
    x = random_inputs(rng, 10, k, bits)
    if n > 1:
        mul[1], add[1] = mul[0], add[0]       # force ties between classes 0 and 1
        w[1] = w[0]
    acc = accumulate(x, w, bits)
    s = 2 * acc - k if bits == 1 else acc
    scores = mul[None] * s + add[None]
    dut = ScoreUnit(k, n, pe, simd, w, mul.tolist(), add.tolist(), bits)
    assert dut.class_width == max(1, int(np.ceil(np.log2(n))))
    out, _ic, _oc = simulate_stream(dut, [pack(v, bits) for v in x], len(x), seed=n, idle=0.3,
                           stall=0.5)
    for word, sc in zip(out, scores, strict=True):
        got, cls = decode_scores(word, n)
        assert got == sc.tolist()
        assert cls == int(np.argmax(sc))


@pytest.mark.parametrize("pipe", PIPES, ids=lambda p: p.name)
def test_score_unit_timing_and_errors(pipe):
    rng = np.random.default_rng(2)
    w = rng.integers(0, 2, (4, 8)).astype(bool)
    mul, add = [3, -1, 2, 1], [5, 0, -7, 2]
    dut = ScoreUnit(8, 4, 2, 4, w, mul, add, pipeline=pipe)
    x = random_inputs(rng, 5, 8, 1)
    out, ic, oc = simulate_stream(dut, [pack(v, 1) for v in x], len(x))
    scores = (2 * accumulate(x, w, 1) - 8) * np.array(mul) + np.array(add)
    assert [decode_scores(word, 4)[0] for word in out] == scores.tolist()
    # the argmax runs over a group's PE = 2 lanes, then a running best over the groups (its
    # compare a stage of its own with the compare register: K/SIMD = 2 steps a group)
    assert dut.latency == dut.cycles + 5 + pipe.lane_stages(4) + \
        pipe.operand_stage + argmax_stages(2, pipe.argmax_levels) + pipe.compare_register
    assert oc[0] - ic[0] == dut.latency and np.all(np.diff(oc) == dut.cycles)
    again = ScoreUnit(8, 4, 2, 4, w, mul, add, pipeline=pipe)
    assert simulate_stream(again, [pack(v, 1) for v in x], len(x), seed=4, idle=0.4,
                           stall=0.5)[0] == out
    with pytest.raises(ValueError, match=r"PE must divide classes=4, not 3"):
        ScoreUnit(8, 4, 3, 4, w, [1] * 4, [0] * 4)
    with pytest.raises(ValueError, match=r"mul must hold 4 values, not 2"):
        ScoreUnit(8, 4, 2, 4, w, [1] * 2, [0] * 4)


def test_argmax_stages_and_narrow_scores():
    assert [argmax_stages(n) for n in (1, 2, 3, 4, 5, 10, 16, 17, 64, 65)] == \
        [0, 1, 2, 2, 3, 4, 4, 5, 6, 7]
    rng = np.random.default_rng(9)
    w = rng.integers(0, 2, (10, 64)).astype(bool)
    dut = ScoreUnit(64, 10, 10, 64, w, [1] * 10, [0] * 10)
    assert dut.score_bits == 8                  # scores in [-64, 64]
    # generic: one ROM register; an argmax tree of 4 levels over the 10 lanes
    assert dut.latency == 1 + 5 + lane_stages(64, 2) + 1 + 4
    x = random_inputs(rng, 6, 64, 1)
    out, ic, oc = simulate_stream(dut, [pack(v, 1) for v in x], len(x), idle=0.2, stall=0.5)
    scores = 2 * accumulate(x, w, 1) - 64
    for word, sc in zip(out, scores, strict=True):
        got, cls = decode_scores(word, 10)
        assert got == sc.tolist() and cls == int(np.argmax(sc))
    _, ic, oc = simulate_stream(ScoreUnit(64, 10, 10, 64, w, [1] * 10, [0] * 10),
                         [pack(v, 1) for v in x], len(x))
    assert oc[0] - ic[0] == dut.latency and np.all(np.diff(oc) == 1)
    wide = ScoreUnit(8, 3, 1, 1, w[:3, :8], [1 << 30] * 3, [0] * 3)
    silence(wide, dut)
    assert wide.score_bits == 32                # reachable scores need all 32 bits


# -- SlidingWindow / MaxPool -------------------------------------------------------------------

def im2col(frame, kernel, stride, padding, pad_value):
    """(H, W, C) -> list of (kh*kw*C,) windows in output raster order."""
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
    x = np.pad(frame, ((ph, ph), (pw, pw), (0, 0)), constant_values=pad_value)
    oh = (x.shape[0] - kh) // sh + 1
    ow = (x.shape[1] - kw) // sw + 1
    return [x[i * sh:i * sh + kh, j * sw:j * sw + kw].reshape(-1)
            for i in range(oh) for j in range(ow)]


def window_block(dut, kind="window"):
    """The hardware-plan block of a SlidingWindow (or the window of a MaxPool): what the timing
    model's window process reads (compiler.plan.build_plan writes the same keys)."""
    (h, w), (hp, wp) = (dut.height, dut.width), dut.padded
    windows = dut.out_height * dut.out_width
    return {"name": f"w:{kind}", "node": "w", "kind": kind, "inputs": [], "tokens": h * w,
            "out_tokens": windows, "steps": dut.steps, "windows": windows, "pixels": h * w,
            "image": (h, w), "padded": (hp, wp), "kernel": dut.kernel, "stride": dut.stride,
            "padding": dut.padding, "positions": hp * wp}


def window_model(block, gaps, ready, n_out):
    """The timing model's window block (sim.timing's pull engine) alone, between the stimulus
    contract's input driver and a consumer whose ``ready`` in cycle k is ``ready[k]`` (1 after
    the array): (input handshakes, output handshakes)."""
    src = _Source(gaps)
    win = _BLOCKS[block["kind"]](block)
    win.up, src.down_hs, out = src, win.hs, []
    win.down_hs = out
    for q in range(n_out):
        v = win.offer(q)
        while ready is not None and v < len(ready) and not ready[v]:
            v += 1
        out.append(v)
    win.settle()                # the positions after the last window take their pixels
    return win.hs, out


def check_window_exact(dut, block, pixels, expected, seed, idle, stall):
    """Run ``dut`` in Amaranth's simulator and the timing model on one stimulus (input gaps,
    output ready): the same values, and every input and output handshake in the same cycle."""
    rng = np.random.default_rng(seed)
    gaps = rng.geometric(1 - idle, len(pixels)) - 1 if idle else None
    ready = rng.random(40 * len(pixels) + 400) >= stall if stall else None
    (out,), (ic,), (oc,) = simulate_streams(dut, [(dut.i_stream, pixels, gaps)],
                                            [(dut.o_stream, len(expected), ready)])
    assert out == expected
    assert window_model(block, gaps, ready, len(expected)) == (ic, oc)
    return ic, oc


WINDOWS = [      # c, h, w, kernel, stride, padding, pad, bits
    (2, 5, 6, 3, 1, 1, 0, 1), (3, 6, 5, (3, 2), (2, 1), (1, 0), 1, 1), (1, 4, 4, 1, 1, 0, 0, 1),
    (2, 5, 5, 3, 2, 1, 200, 8), (1, 3, 3, 3, 1, 2, 7, 8), (2, 4, 4, 2, 2, 0, 0, 1),
    (1, 7, 6, 2, 2, 0, 0, 8),       # row 6 after the last window: pixels consumed, no window
    (2, 6, 7, 3, 2, 0, 0, 1),       # a last row and column after the last window
    (1, 5, 1, (3, 1), 1, 0, 0, 1),  # Wp = 1: each line-buffer word read as it is written
    (2, 4, 5, (1, 3), 1, (0, 1), 1, 8), (3, 6, 6, 2, 1, 1, 5, 8),
]


@pytest.mark.parametrize("c,h,w,kernel,stride,padding,pad,bits", WINDOWS)
def test_sliding_window_values_and_cycles_match_the_timing_model(c, h, w, kernel, stride,
                                                                 padding, pad, bits):
    rng = np.random.default_rng(c + h + w + bits)
    frames = rng.integers(0, 1 << bits, (3, h, w, c))
    kp = (kernel, kernel) if isinstance(kernel, int) else kernel
    sp = (stride, stride) if isinstance(stride, int) else stride
    pp = (padding, padding) if isinstance(padding, int) else padding
    expected = [pack(win, bits) for f in frames for win in im2col(f, kp, sp, pp, pad)]
    pixels = [pack(p, bits) for f in frames for p in f.reshape(-1, c)]
    for seed, idle, stall in ((h, 0.0, 0.0), (h + 1, 0.3, 0.4), (h + 2, 0.6, 0.0),
                              (h + 3, 0.0, 0.7)):
        dut = SlidingWindow(c, h, w, kernel, stride, padding, pad, bits)
        ic, _ = check_window_exact(dut, window_block(dut), pixels, expected, seed, idle, stall)
        if not idle and not stall:
            # back to back: one padded position a cycle, Hp·Wp cycles a frame
            hp, wp = dut.padded
            assert ic[h * w] - ic[0] == ic[2 * h * w] - ic[h * w] == hp * wp


def test_sliding_window_timing_and_errors():
    dut = SlidingWindow(1, 4, 4, 2, 2, 0, 0, 1)
    pixels = [p & 1 for p in range(16 * 3)]
    _, ic, oc = simulate_stream(dut, pixels, 12)
    assert dut.latency == 1 and dut.padded == (4, 4)
    assert ic == list(range(48))                     # no padding: a pixel every cycle
    assert oc[:4] == [ic[5] + 1, ic[7] + 1, ic[13] + 1, ic[15] + 1]  # a window's last pixel + 1
    # 3x3, padding 1: the 6x6 padded raster takes 36 cycles a frame, padding without input
    dut = SlidingWindow(1, 4, 4, 3, 1, 1, 0, 1)
    _, ic, oc = simulate_stream(dut, pixels, 48)
    assert ic[0] == 7 and ic[16] == 7 + 36 and ic[:4] == [7, 8, 9, 10] and ic[4] == 13
    assert oc[0] == ic[5] + dut.latency == 15        # window (0, 0) ends at pixel (1, 1)
    assert oc[3] == 18 and oc[4] == 21               # pad positions (2, 5), (3, 0) between
    with pytest.raises(ValueError, match=r"pad_value must be an integer 0..1, not 2"):
        SlidingWindow(1, 4, 4, 3, 1, 1, 2, 1)
    with pytest.raises(ValueError, match=r"kernel \(5, 5\) exceeds the padded input \(4, 4\)"):
        SlidingWindow(1, 4, 4, 5)
    with pytest.raises(ValueError, match=r"stride must be at least 1, not \(0, 1\)"):
        SlidingWindow(1, 4, 4, 3, (0, 1))


@pytest.mark.parametrize("c,h,w,kernel,stride", [(3, 6, 6, 2, 2), (2, 5, 7, 3, 2),
                                                 (4, 4, 4, 2, 1), (2, 5, 5, 2, 2)])
def test_maxpool_values_and_cycles_match_the_timing_model(c, h, w, kernel, stride):
    rng = np.random.default_rng(c * h * w)
    frames = rng.integers(0, 2, (3, h, w, c)).astype(bool)
    expected = []
    for f in frames:
        for win in im2col(f, (kernel, kernel), (stride, stride), (0, 0), 0):
            expected.append(pack(win.reshape(-1, c).any(0), 1))
    pixels = [pack(p, 1) for f in frames for p in f.reshape(-1, c)]
    for seed, idle, stall in ((c, 0.0, 0.0), (c + 1, 0.3, 0.4)):
        dut = MaxPool(c, h, w, kernel, stride)
        assert dut.latency == 1
        check_window_exact(dut, window_block(dut.window, "maxpool"), pixels, expected, seed,
                           idle, stall)


# -- Deserializer, InputThreshold, StreamFIFO ---------------------------------------------------

@pytest.mark.parametrize("width,count", [(1, 1), (3, 2), (2, 5), (8, 16)])
def test_deserializer_random(width, count):
    rng = np.random.default_rng(width * count)
    elems = rng.integers(0, 1 << width, 4 * count)
    dut = Deserializer(width, count)
    expected = [pack(elems[i:i + count], width) for i in range(0, len(elems), count)]
    out, ic, oc = simulate_stream(dut, elems.tolist(), 4, seed=count, idle=0.3, stall=0.5)
    assert out == expected
    _, ic, oc = simulate_stream(dut, elems.tolist(), 4)
    assert [o - ic[count * (j + 1) - 1] for j, o in enumerate(oc)] == [1] * 4
    with pytest.raises(ValueError, match=r"count must be at least 1, not 0"):
        Deserializer(1, 0)


@pytest.mark.parametrize("width,count", [(1, 1), (3, 2), (8, 4), (2, 16)])
def test_serializer_random(width, count):
    rng = np.random.default_rng(width + count)
    words = rng.integers(0, 1 << (width * count), 6, dtype=np.uint64).tolist()
    expected = [e for wd in words for e in unpack(int(wd), width, count)]
    out, _, _ = simulate_stream(Serializer(width, count), words, len(expected), seed=count,
                         idle=0.4, stall=0.5)
    assert out == expected
    out, ic, oc = simulate_stream(Serializer(width, count), words, len(expected))
    # back to back: one element a cycle without gaps, the first one cycle after the word
    assert oc == list(range(ic[0] + 1, ic[0] + 1 + len(expected)))
    assert ic == [ic[0]] + [oc[count * j - 1] for j in range(1, len(words))]
    with pytest.raises(ValueError, match=r"count must be at least 1, not 0"):
        Serializer(1, 0)


def test_input_threshold():
    rng = np.random.default_rng(3)
    px = rng.integers(0, 256, (30, 3))
    px[0] = [127, 128, 255]
    dut = InputThreshold(3)
    out, ic, oc = simulate_stream(dut, [pack(p, 8) for p in px], len(px), idle=0.3, stall=0.3)
    assert out == [pack(p >= 128, 1) for p in px]
    assert ic == oc                                     # combinational
    with pytest.raises(ValueError, match=r"threshold must be an integer 0..256, not -1"):
        InputThreshold(3, -1)
    dut = InputThreshold(3, 100, pixels=4)
    words = px[:28].reshape(-1, 12)
    out, ic, oc = simulate_stream(dut, [pack(p, 8) for p in words], len(words), stall=0.3)
    assert out == [pack(p >= 100, 1) for p in words] and ic == oc


@pytest.mark.parametrize("depth", [1, 2, 5])
def test_stream_fifo(depth):
    rng = np.random.default_rng(depth)
    data = rng.integers(0, 1 << 12, 40).tolist()
    dut = StreamFIFO(12, depth)
    out, ic, oc = simulate_stream(dut, data, len(data), seed=depth, idle=0.3, stall=0.6)
    assert out == data
    assert all(o >= i + 1 for i, o in zip(ic, oc, strict=True))
    _, ic, oc = simulate_stream(dut, data, len(data))
    assert oc == [i + 1 for i in ic]
    with pytest.raises(ValueError, match=r"depth must be at least 1, not 0"):
        StreamFIFO(12, 0)


def test_only_the_ice40_pipelines_rotate_a_held_vector_of_many_words():
    # the rotation writes all K·b flip-flops every step (energy); iCE40 needs it for its clock
    for name in ("ice40", "compact"):
        assert PIPELINES[name].rotates(5) and not PIPELINES[name].rotates(4)
    for name in ("ecp5", "generic"):
        assert not PIPELINES[name].rotates(64) and PIPELINES[name].rotates(65)
    from bnnforge.compiler.cycles import held_vector_rotates
    assert held_vector_rotates(256, 1, 8, 1, "ice40")
    assert not held_vector_rotates(256, 1, 8, 1, "ecp5")
    assert not held_vector_rotates(256, 8, 8, 1, "ice40")      # its input buffer is a RAM
