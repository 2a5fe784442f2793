"""cocotb test: drive the emitted board top's UART rx pin bit by bit, decode its tx pin.

Run by ``test_board_rtl.py`` through cocotb's Python runner (never collected by pytest). Reads
the bytes to send and the divisor from the npz named by ``BOARD_UART_IN``; writes every byte
decoded from ``tx`` (and the final ``error`` pin) to the npz named by ``BOARD_UART_OUT``.
"""

import os

import cocotb
import numpy as np
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, FallingEdge, First, Timer

PERIOD_NS = 10


async def _send(dut, data: bytes, divisor: int, gap_bits: int) -> None:
    for i, byte in enumerate(data):
        for bit in [0] + [(byte >> k) & 1 for k in range(8)] + [1]:
            dut.rx.value = bit
            await Timer(divisor * PERIOD_NS, unit="ns")
        if gap_bits and i % 7 == 3:              # some idle time between bytes, too
            await Timer(gap_bits * divisor * PERIOD_NS, unit="ns")


async def _receive(dut, count: int, divisor: int, out: list) -> None:
    while len(out) < count:
        await FallingEdge(dut.tx)
        await Timer(divisor * PERIOD_NS // 2, unit="ns")
        assert int(dut.tx.value) == 0, "start bit too short"
        byte = 0
        for k in range(8):
            await Timer(divisor * PERIOD_NS, unit="ns")
            byte |= int(dut.tx.value) << k
        await Timer(divisor * PERIOD_NS, unit="ns")
        assert int(dut.tx.value) == 1, f"byte {len(out)}: no stop bit"
        out.append(byte)


@cocotb.test()
async def board_uart(dut):
    cfg = np.load(os.environ["BOARD_UART_IN"])
    data = cfg["data"].tobytes()
    divisor, count = int(cfg["divisor"]), int(cfg["answer_bytes"])
    cocotb.start_soon(Clock(dut.clk, PERIOD_NS, unit="ns").start())
    dut.rx.value = 1
    dut.rst.value = 1
    await ClockCycles(dut.clk, 4)
    await FallingEdge(dut.clk)
    dut.rst.value = 0
    await ClockCycles(dut.clk, 3 * divisor)
    out: list = []
    receiver = cocotb.start_soon(_receive(dut, count, divisor, out))
    await _send(dut, data, divisor, int(cfg["gap_bits"]))
    limit = Timer(int(cfg["timeout_cycles"]) * PERIOD_NS, unit="ns")
    await First(receiver, limit)
    error = int(dut.error.value)
    np.savez(os.environ["BOARD_UART_OUT"], received=np.array(out, dtype=np.uint8),
             error=np.int64(error))
    assert len(out) == count, f"received {len(out)} of {count} answer bytes"
