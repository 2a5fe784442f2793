"""UART receiver, transmitter and board top in Amaranth's simulator."""

import numpy as np
import pytest
from amaranth.hdl import Module
from amaranth.sim import Simulator

import bnnforge
from bnnforge.compiler.folding import ChooseFolding
from bnnforge.host import SimulatedSerial, classify
from bnnforge.hw.testing import stream_get, stream_put
from bnnforge.hw.uart import BoardTop, UARTRx, UARTTx, answer_layout, uart_divisor
from conftest import random_frames, randomize_model, small_mlp

pytestmark = pytest.mark.filterwarnings("ignore::amaranth.hdl.UnusedElaboratable")


def line_bits(data, divisor, stretch=1.0, stop_bits=None):
    """Per-cycle levels of an 8N1 line carrying ``data`` (bit length ``divisor * stretch``)."""
    levels = []
    t = 0.0
    for i, byte in enumerate(data):
        stop = 1 if stop_bits is None else stop_bits[i]
        for bit in [0] + [(byte >> k) & 1 for k in range(8)] + [stop]:
            t += divisor * stretch
            levels += [bit] * (round(t) - len(levels))
        t += divisor                  # one idle bit between bytes
        levels += [1] * (round(t) - len(levels))
    return levels


def run_rx(divisor, levels, ready=True):
    rx = UARTRx(divisor)
    got, overruns, framing = [], [], []

    async def bench(ctx):
        ctx.set(rx.o_stream.ready, int(ready))
        for level in levels + [1] * (4 * divisor):
            ctx.set(rx.rx, level)
            _, _, valid, payload, ov, fe = await ctx.tick().sample(
                rx.o_stream.valid, rx.o_stream.payload, rx.overrun, rx.framing_error)
            if valid and ready:
                got.append(payload)
            overruns.append(ov)
            framing.append(fe)

    sim = Simulator(rx)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    return got, sum(overruns), sum(framing)


@pytest.mark.parametrize("divisor", [4, 7, 16])
def test_rx_receives_bytes(divisor):
    data = [0x00, 0xFF, 0x55, 0xAA, 0x01, 0x80, 0x3C]
    got, ov, fe = run_rx(divisor, line_bits(data, divisor))
    assert got == data and ov == 0 and fe == 0


@pytest.mark.parametrize("stretch", [0.96, 1.04])
def test_rx_tolerates_baud_error(stretch):
    data = list(range(0, 256, 37))
    got, _, _ = run_rx(16, line_bits(data, 16, stretch))
    assert got == data


def test_rx_drops_byte_without_stop_bit():
    data = [0x12, 0x34, 0x56]
    got, ov, fe = run_rx(8, line_bits(data, 8, stop_bits=[1, 0, 1]))
    assert got == [0x12, 0x56] and fe == 1 and ov == 0


def test_rx_reports_overrun():
    got, ov, fe = run_rx(8, line_bits([1, 2, 3], 8), ready=False)
    assert got == [] and ov == 2 and fe == 0


@pytest.mark.parametrize("divisor", [4, 9])
def test_tx_sends_bytes_with_exact_bit_times(divisor):
    tx = UARTTx(divisor)
    data = [0xA5, 0x00, 0xFF, 0x42]
    levels = []

    async def send(ctx):
        await stream_put(ctx, tx.i_stream, data)

    async def watch(ctx):
        for _ in range(len(data) * 10 * divisor + 2 * divisor):
            levels.append(ctx.get(tx.tx))
            await ctx.tick()

    sim = Simulator(tx)
    sim.add_clock(1e-6)
    sim.add_testbench(send)
    sim.add_testbench(watch)
    sim.run()
    # the line is idle for one cycle, then the bytes back to back with no gap, then idle
    assert levels[0] == 1
    expect = []
    for byte in data:
        for bit in [0] + [(byte >> k) & 1 for k in range(8)] + [1]:
            expect += [bit] * divisor
    assert levels[1:1 + len(expect)] == expect
    assert all(levels[1 + len(expect):])


def test_tx_to_rx_loopback_under_backpressure():
    divisor = 5
    m = Module()
    m.submodules.tx = tx = UARTTx(divisor)
    m.submodules.rx = rx = UARTRx(divisor)
    m.d.comb += rx.rx.eq(tx.tx)
    data = list(np.random.default_rng(1).integers(0, 256, 40))
    out = []

    async def send(ctx):
        await stream_put(ctx, tx.i_stream, data, rng=np.random.default_rng(2), idle=0.3)

    async def recv(ctx):
        out.extend(await stream_get(ctx, rx.o_stream, len(data), timeout=60 * 10 * divisor))

    sim = Simulator(m)
    sim.add_clock(1e-6)
    sim.add_testbench(send)
    sim.add_testbench(recv)
    sim.run()
    assert out == [int(d) for d in data]


@pytest.mark.parametrize("divisor", [0, 3, 2.5, True])
def test_divisor_is_checked(divisor):
    with pytest.raises((ValueError, TypeError), match="divisor must be"):
        UARTRx(divisor)


def test_uart_divisor():
    assert uart_divisor(12e6, 115200) == 104
    assert uart_divisor(25e6, 115200) == 217
    with pytest.raises(ValueError, match=r"off by 3\.2% \(divisor 4\); choose a baud rate closer"):
        uart_divisor(12e6, 3_100_000, tolerance=0.02)
    with pytest.raises(ValueError, match="too fast for a 12 MHz clock"):
        uart_divisor(12e6, 6_000_000)


def test_answer_layout():
    assert answer_layout(10, 32, 4) == {"class_bytes": 1, "score_bytes": 4, "answer_bytes": 41}
    assert answer_layout(300, 33, 9) == {"class_bytes": 2, "score_bytes": 5,
                                         "answer_bytes": 1502}


@pytest.fixture(scope="module")
def mlp():
    graph = bnnforge.lower(randomize_model(small_mlp(), 3), (1, 8, 8))
    return ChooseFolding().apply(graph)


def test_board_top_answers_like_the_reference(mlp):
    frames = random_frames((1, 8, 8), 2, seed=5)
    expected = bnnforge.reference(mlp, frames)
    with SimulatedSerial(mlp, divisor=4) as ser:
        assert ser.top_info()["answer_bytes"] == 41
        got = classify(ser, frames)
        assert ser.top.error.init == 0
    for (cls, scores), exp in zip(got, expected, strict=True):
        np.testing.assert_array_equal(scores, exp)
        assert cls == int(np.argmax(exp))


def test_board_top_rejects_other_things():
    with pytest.raises(TypeError, match="BoardTop takes a folded DataflowGraph"):
        BoardTop(object(), 8)
