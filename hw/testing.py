"""Stream helpers for Amaranth Python-simulator testbenches (async, ``ctx.set``/``ctx.tick``).

Cycle numbers count clock edges from the start of the testbench: the first edge a testbench
awaits is cycle 0. A transfer "in cycle t" is one whose ``valid`` and ``ready`` are both high
when sampled at edge t. Both helpers must be started at simulation time 0 for their cycle
numbers to agree.
"""

from __future__ import annotations

import numpy as np
from amaranth.hdl import ClockDomain, Module
from amaranth.sim import Simulator

__all__ = ["simulate_stream", "stream_get", "stream_put"]


async def stream_put(ctx, stream, payloads, *, rng=None, idle: float = 0.0,
                     cycles: list | None = None) -> None:
    """Send ``payloads`` on ``stream`` (whose ``valid``/``payload`` the testbench drives).

    Parameters
    ----------
    rng : numpy.random.Generator, optional
        With ``idle > 0``, before each payload ``valid`` stays low for a geometric random number
        of cycles (each further idle cycle with probability ``idle``).
    cycles : list, optional
        Receives the cycle of every transfer.
    """
    cycle = 0
    for payload in payloads:
        if rng is not None and idle > 0:
            ctx.set(stream.valid, 0)
            while rng.random() < idle:
                await ctx.tick()
                cycle += 1
        ctx.set(stream.payload, int(payload))
        ctx.set(stream.valid, 1)
        while True:
            _, _, ready = await ctx.tick().sample(stream.ready)
            cycle += 1
            if ready:
                break
        if cycles is not None:
            cycles.append(cycle - 1)
    ctx.set(stream.valid, 0)


async def stream_get(ctx, stream, count: int, *, rng=None, stall: float = 0.0,
                     cycles: list | None = None, timeout: int | None = None) -> list[int]:
    """Receive ``count`` payloads from ``stream`` (whose ``ready`` the testbench drives).

    With ``rng`` and ``stall > 0``, ``ready`` is low in each cycle with probability ``stall``
    (random back-pressure). ``cycles`` receives the cycle of every transfer. With ``timeout``,
    raise ``TimeoutError`` when ``count`` transfers have not happened within that many cycles.
    """
    out = []
    cycle = 0
    while len(out) < count:
        if timeout is not None and cycle >= timeout:
            raise TimeoutError(f"received {len(out)} of {count} transfers in {timeout} cycles")
        ready = not (rng is not None and stall > 0 and rng.random() < stall)
        ctx.set(stream.ready, int(ready))
        _, _, valid, payload = await ctx.tick().sample(stream.valid, stream.payload)
        if valid and ready:
            out.append(int(payload))
            if cycles is not None:
                cycles.append(cycle)
        cycle += 1
    ctx.set(stream.ready, 0)
    return out


def simulate_stream(dut, payloads, n_out: int, *, seed: int = 0, idle: float = 0.0,
                    stall: float = 0.0, timeout: int = 20000):
    """Run a one-stream-in, one-stream-out component in Amaranth's simulator.

    Feeds ``payloads`` to ``dut.i_stream`` (idle gaps with probability ``idle``) and takes
    ``n_out`` payloads from ``dut.o_stream`` (back-pressure with probability ``stall``), from
    generators seeded ``seed`` and ``seed + 1``. Returns (outputs, input transfer cycles, output
    transfer cycles).
    """
    rng_in, rng_out = np.random.default_rng(seed), np.random.default_rng(seed + 1)
    res, ic, oc = {}, [], []

    async def put(ctx):
        await stream_put(ctx, dut.i_stream, payloads, rng=rng_in, idle=idle, cycles=ic)

    async def get(ctx):
        res["out"] = await stream_get(ctx, dut.o_stream, n_out, rng=rng_out, stall=stall,
                                      cycles=oc, timeout=timeout)

    m = Module()
    m.domains.sync = ClockDomain()      # combinational blocks have no clock of their own
    m.submodules.dut = dut
    sim = Simulator(m)
    sim.add_clock(1e-6)
    sim.add_testbench(put)
    sim.add_testbench(get)
    sim.run()
    return res["out"], ic, oc
