"""Blocks of branching networks in Amaranth's simulator: values and every handshake's cycle.

StreamFork, StreamConcat, ResidualJoin and the MVTU's popcount mode, each against a numpy model
of its values and an event model of its timing contract (docs/design.md §4, the block's
docstring), under random input gaps and output stalls that differ per port.
"""

import json

import numpy as np
import pytest
from amaranth.back import verilog
from amaranth.hdl import Module
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from bnnforge.hw import MVTU, ResidualJoin, StreamConcat, StreamFIFO, StreamFork
from bnnforge.hw.harness import run_rtl
from bnnforge.hw.testing import simulate_stream, simulate_streams


def pack(values, bits):
    out = 0
    for i, v in enumerate(values):
        out |= int(v) << (i * bits)
    return out


def gaps(rng, n, p):
    """Geometric idle gaps (mean p / (1 - p)) before each of n transfers."""
    return (rng.geometric(1.0 - p, n) - 1).tolist() if p > 0 else [0] * n


def ready(rng, cycles, stall):
    return (rng.random(cycles) >= stall).tolist()


def first_ready(pattern, t):
    """The first cycle >= t in which ``pattern`` (1 after its end) is high."""
    while t < len(pattern) and not pattern[t]:
        t += 1
    return t


# -- StreamFork --------------------------------------------------------------------------------

def fork_model(in_gaps, readies):
    """Event form of the fork's contract: output k offers token j from the cycle the input
    offers it and takes it at its first ready cycle; the input handshake is the last of those."""
    hs, outs, prev = [], [[] for _ in readies], -1
    for g in in_gaps:
        offer = prev + 1 + g
        ts = [first_ready(r, offer) for r in readies]
        for k, t in enumerate(ts):
            outs[k].append(t)
        prev = max(ts)
        hs.append(prev)
    return hs, outs


@pytest.mark.parametrize("n,idle,stalls", [
    (2, 0.0, (0.0, 0.0)), (2, 0.3, (0.7, 0.1)), (3, 0.5, (0.0, 0.5, 0.8)), (1, 0.2, (0.4,)),
])
def test_fork_copies_every_token_with_the_contract_timing(n, idle, stalls):
    rng = np.random.default_rng(n * 10 + len(stalls))
    tokens = 40
    data = rng.integers(0, 1 << 12, tokens).tolist()
    g = gaps(rng, tokens, idle)
    readies = [ready(rng, 600, s) for s in stalls]
    dut = StreamFork(12, n)
    assert len(dut.o_streams) == n and dut.latency == 0
    sinks = [(o, tokens, r) for o, r in zip(dut.o_streams, readies, strict=True)]
    outs, ic, oc = simulate_streams(dut, [(dut.i_stream, data, g)], sinks)
    assert outs == [data] * n
    hs, model_out = fork_model(g, readies)
    assert ic[0] == hs
    assert oc == model_out


def test_fork_consumers_see_tokens_at_different_cycles():
    # one consumer always ready, one stalled in long bursts: the fast one gets token j before
    # the slow one, and the producer waits for the slow one
    dut = StreamFork(4, 2)
    slow = ([0] * 5 + [1]) * 20
    outs, ic, oc = simulate_streams(dut, [(dut.i_stream, list(range(10)), None)],
                                    [(dut.o_stream0, 10, None), (dut.o_stream1, 10, slow)])
    assert outs == [list(range(10))] * 2
    assert oc[1] == [5 + 6 * j for j in range(10)]
    assert oc[0] == [0] + [6 + 6 * j for j in range(9)]    # offered after the last handshake
    assert ic[0] == oc[1]


# -- StreamConcat ------------------------------------------------------------------------------

@pytest.mark.parametrize("widths,idles,stall", [
    ((3, 5), (0.0, 0.0), 0.0), ((3, 5), (0.6, 0.1), 0.4), ((1, 8, 2), (0.2, 0.5, 0.0), 0.6),
])
def test_concat_joins_ports_in_the_same_cycle(widths, idles, stall):
    rng = np.random.default_rng(sum(widths))
    tokens = 30
    data = [rng.integers(0, 1 << w, tokens).tolist() for w in widths]
    g = [gaps(rng, tokens, p) for p in idles]
    r = ready(rng, 800, stall)
    dut = StreamConcat(list(widths))
    outs, ic, oc = simulate_streams(
        dut, [(port, d, gk) for port, d, gk in zip(dut.i_streams, data, g, strict=True)],
        [(dut.o_stream, tokens, r)])
    shifts = np.cumsum((0,) + widths[:-1])
    assert outs[0] == [sum(d[j] << int(s) for d, s in zip(data, shifts, strict=True))
                       for j in range(tokens)]
    hs, prev = [], -1
    for j in range(tokens):
        prev = first_ready(r, max(prev + 1 + gk[j] for gk in g))
        hs.append(prev)
    assert oc[0] == hs
    assert ic == [hs] * len(widths)


# -- ResidualJoin ------------------------------------------------------------------------------

def join_model(a_gaps, b_gaps, r):
    """Taken at t_j = max(offers, the previous output's handshake); out from t_j + 1."""
    takes, outs, t_prev, h_prev = [], [], -1, -1
    for ga, gb in zip(a_gaps, b_gaps, strict=True):
        t = max(t_prev + 1 + ga, t_prev + 1 + gb, h_prev)
        h = first_ready(r, t + 1)
        takes.append(t)
        outs.append(h)
        t_prev, h_prev = t, h
    return takes, outs


@pytest.mark.parametrize("short,c,main_k,short_k,idles,stall", [
    ("bits", 5, 9, 0, (0.0, 0.0), 0.0),
    ("bits", 4, 16, 0, (0.5, 0.1), 0.5),
    ("popcount", 3, 12, 7, (0.1, 0.6), 0.3),
    ("popcount", 6, 1, 1, (0.3, 0.3), 0.7),
])
def test_residual_join_values_and_timing(short, c, main_k, short_k, idles, stall):
    rng = np.random.default_rng(c * 100 + main_k)
    tokens = 40
    s_rows = 2 if short == "bits" else short_k + 1
    thr = rng.integers(-2, main_k + 3, (s_rows, c))
    p = rng.integers(0, main_k + 1, (tokens, c))
    sel = rng.integers(0, s_rows, (tokens, c))
    mb, sb = main_k.bit_length(), (1 if short == "bits" else short_k.bit_length())
    dut = ResidualJoin(c, main_k, thr, short, short_k)
    assert dut.i_stream0.payload.shape().width == c * mb
    assert dut.i_stream1.payload.shape().width == c * sb
    assert dut.o_stream.payload.shape().width == c
    ga, gb = gaps(rng, tokens, idles[0]), gaps(rng, tokens, idles[1])
    r = ready(rng, 800, stall)
    outs, ic, oc = simulate_streams(
        dut, [(dut.i_stream0, [pack(v, mb) for v in p], ga),
              (dut.i_stream1, [pack(v, sb) for v in sel], gb)],
        [(dut.o_stream, tokens, r)])
    expected = p >= thr[sel, np.arange(c)[None, :]]
    assert outs[0] == [pack(e, 1) for e in expected]
    takes, hs = join_model(ga, gb, r)
    assert ic == [takes, takes]
    assert oc[0] == hs


def test_residual_join_latency_one_and_back_to_back():
    thr = np.array([[1, 2], [0, 3]])
    dut = ResidualJoin(2, 3, thr)
    outs, ic, oc = simulate_streams(
        dut, [(dut.i_stream0, [0b1101] * 6, None), (dut.i_stream1, [0b10] * 6, [3])],
        [(dut.o_stream, 6, None)])
    assert outs[0] == [0b11] * 6          # P = (1, 3) against (T[0,0], T[1,1]) = (1, 3)
    assert ic == [[3, 4, 5, 6, 7, 8]] * 2  # the early input waits for the shortcut
    assert oc[0] == [4, 5, 6, 7, 8, 9]


def test_residual_join_errors():
    with pytest.raises(ValueError, match=r"short must be 'bits' or 'popcount', not 'sum'"):
        ResidualJoin(2, 3, np.zeros((2, 2), int), "sum")
    with pytest.raises(ValueError, match=r"a bits shortcut has short_k=0, not 4"):
        ResidualJoin(2, 3, np.zeros((2, 2), int), "bits", 4)
    with pytest.raises(ValueError, match=r"short_k must be at least 1, not 0"):
        ResidualJoin(2, 3, np.zeros((1, 2), int), "popcount", 0)
    with pytest.raises(ValueError, match=r"thresholds must have shape \(S, C\) = \(5, 2\) for "
                                         r"a popcount shortcut, not \(2, 2\)"):
        ResidualJoin(2, 3, np.zeros((2, 2), int), "popcount", 4)
    with pytest.raises(TypeError, match=r"thresholds must be an integer array, not dtype "
                                        r"float64"):
        ResidualJoin(2, 3, np.zeros((2, 2)))
    with pytest.raises(TypeError, match=r"channels must be an integer, not 2.0"):
        ResidualJoin(2.0, 3, np.zeros((2, 2), int))


def test_fork_and_concat_errors():
    with pytest.raises(ValueError, match=r"n must be at least 1, not 0"):
        StreamFork(4, 0)
    with pytest.raises(TypeError, match=r"width must be an integer, not '4'"):
        StreamFork("4", 2)
    with pytest.raises(ValueError, match=r"widths\[1\] must be at least 1, not 0"):
        StreamConcat([3, 0])
    with pytest.raises(ValueError, match=r"widths must name at least one input port, not \[\]"):
        StreamConcat([])
    with pytest.raises(TypeError, match=r"widths must be a sequence of integers, not 5"):
        StreamConcat(5)


# -- MVTU popcount mode ------------------------------------------------------------------------

def popcounts(x, w):
    return (~(x[:, None, :].astype(bool) ^ w[None])).sum(-1)


@pytest.mark.parametrize("k,c,pe,simd,count,ram", [
    (12, 6, 2, 4, 1, False), (12, 6, 6, 12, 1, False), (9, 3, 1, 1, 1, False),
    (16, 4, 2, 4, 4, True), (7, 5, 5, 7, 1, False), (8, 2, 1, 8, 2, False),
])
def test_mvtu_popcount_mode(k, c, pe, simd, count, ram):
    rng = np.random.default_rng(k * 7 + c)
    w = rng.integers(0, 2, (c, k)).astype(bool)
    x = rng.integers(0, 2, (10, k))
    pb = int(k).bit_length()
    e = k // count
    parts = [pack(v[i:i + e], 1) for v in x for i in range(0, k, e)]
    dut = MVTU(k, c, pe, simd, w, None, count=count, input_ram=ram)
    assert (dut.popcount, dut.count_bits, dut.out_width) == (True, pb, c * pb)
    assert dut.o_stream.payload.shape().width == c * pb
    assert dut.latency == dut.cycles + 5 + dut.tree_stages    # generic: ROM + compare registers
    out, ic, oc = simulate_stream(dut, parts, len(x), seed=k, idle=0.3, stall=0.5)
    assert out == [pack(v, pb) for v in popcounts(x, w)]
    # the same stimulus through the thresholded unit: every handshake in the same cycle
    ref = MVTU(k, c, pe, simd, w, [k // 2] * c, count=count, input_ram=ram)
    _, ric, roc = simulate_stream(ref, parts, len(x), seed=k, idle=0.3, stall=0.5)
    assert (ic, oc) == (ric, roc)


def test_mvtu_popcount_mode_errors():
    w = np.zeros((4, 6), bool)
    with pytest.raises(ValueError, match=r"popcount mode \(thresholds=None\) takes binary inputs "
                                         r"only \(input_bits=1\), not input_bits=8"):
        MVTU(6, 4, 2, 3, w, None, input_bits=8)
    with pytest.raises(ValueError, match=r"popcount mode \(thresholds=None\) takes one pad class "
                                         r"only; row_class and col_class need thresholds"):
        MVTU(6, 4, 2, 3, w, None, row_class=[0, 1], col_class=[0, 0])


# -- a residual block from the parts -----------------------------------------------------------

class Residual(wiring.Component):
    """x → fork → (MVTU popcounts, a skip FIFO) → ResidualJoin: out_c = P_c >= T[x_c, c]."""

    def __init__(self, c, w, thr, pe, simd, depth):
        self.fork = StreamFork(c, 2)
        self.main = MVTU(c, c, pe, simd, w, None)
        self.skip = StreamFIFO(c, depth)
        self.join = ResidualJoin(c, c, thr)
        super().__init__({"i_stream": In(stream.Signature(c)),
                          "o_stream": Out(stream.Signature(c))})

    def elaborate(self, platform):
        m = Module()
        m.submodules.fork, m.submodules.main = self.fork, self.main
        m.submodules.skip, m.submodules.join = self.skip, self.join
        wiring.connect(m, wiring.flipped(self.i_stream), self.fork.i_stream)
        wiring.connect(m, self.fork.o_stream0, self.main.i_stream)
        wiring.connect(m, self.fork.o_stream1, self.skip.i_stream)
        wiring.connect(m, self.main.o_stream, self.join.i_stream0)
        wiring.connect(m, self.skip.o_stream, self.join.i_stream1)
        wiring.connect(m, self.join.o_stream, wiring.flipped(self.o_stream))
        return m


@pytest.mark.parametrize("pe,simd,depth", [(2, 3, 1), (6, 6, 4), (3, 2, 2)])
def test_residual_block_from_fork_mvtu_fifo_and_join(pe, simd, depth):
    c = 6
    rng = np.random.default_rng(pe + simd + depth)
    w = rng.integers(0, 2, (c, c)).astype(bool)
    thr = rng.integers(0, c + 2, (2, c))
    x = rng.integers(0, 2, (30, c))
    dut = Residual(c, w, thr, pe, simd, depth)
    out, _, _ = simulate_stream(dut, [pack(v, 1) for v in x], len(x), seed=depth, idle=0.4,
                                stall=0.4)
    expected = popcounts(x, w) >= thr[x, np.arange(c)[None, :]]
    assert out == [pack(e, 1) for e in expected]


@pytest.mark.rtl
def test_residual_block_on_icarus_matches_amaranth(tmp_path):
    """The same block as emitted Verilog under the cocotb harness (8 channels: one byte in, one
    byte out, read back as a 4-bit "score" and a 4-bit "class"): values and every handshake."""
    c = 8
    rng = np.random.default_rng(11)
    w = rng.integers(0, 2, (c, c)).astype(bool)
    thr = rng.integers(0, c + 2, (2, c))
    rtl = tmp_path / "rtl"
    rtl.mkdir()
    (rtl / "bnnforge_top.v").write_text(verilog.convert(Residual(c, w, thr, 4, 4, 2),
                                                        name="bnnforge_top", emit_src=False))
    (rtl / "top.json").write_text(json.dumps(
        {"top": "bnnforge_top", "pixel_width": 8, "pixels_per_frame": 1, "classes": 1,
         "score_width": 4, "class_width": 4}))
    x = rng.integers(0, 256, 40).astype(np.uint8)
    gaps_in = rng.integers(0, 3, 40)
    ready_out = rng.random(400) < 0.6
    res = run_rtl(rtl, x.reshape(40, 1, 1), in_gaps=gaps_in, out_ready=ready_out)
    got = (res["scores"][:, 0] & 0xF) | (res["classes"] << 4)
    bits = np.unpackbits(x[:, None], axis=1, bitorder="little").astype(np.int64)
    expected = popcounts(bits, w) >= thr[bits, np.arange(c)[None, :]]
    assert got.tolist() == [pack(e, 1) for e in expected]
    dut = Residual(c, w, thr, 4, 4, 2)
    _, ic, oc = simulate_streams(dut, [(dut.i_stream, x.tolist(), gaps_in.tolist())],
                                 [(dut.o_stream, 40, ready_out.tolist())])
    assert res["in_cycles"].tolist() == ic[0]
    assert res["out_cycles"].tolist() == oc[0]
