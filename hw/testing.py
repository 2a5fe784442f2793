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

__all__ = ["simulate_stream", "simulate_streams", "stream_get", "stream_put"]


async def stream_put(ctx, stream, payloads, *, rng=None, idle: float = 0.0, gaps=None,
                     cycles: list | None = None, timeout: int | None = None) -> None:
    """Send ``payloads`` on ``stream`` (whose ``valid``/``payload`` the testbench drives).

    Parameters
    ----------
    rng : numpy.random.Generator, optional
        With ``idle > 0``, before each payload ``valid`` stays low for a geometric random number
        of cycles (each further idle cycle with probability ``idle``).
    gaps : sequence of int, optional
        Instead of ``rng``/``idle``: ``valid`` stays low for ``gaps[n]`` cycles before payload n
        (counted from the cycle after payload n-1's transfer; missing entries are 0) — the
        ``in_gaps`` stimulus of :func:`bnnforge.sim.simulate_timing` and the cocotb harness.
    cycles : list, optional
        Receives the cycle of every transfer.
    timeout : int, optional
        Raise ``TimeoutError`` when a payload still waits for ``ready`` at that cycle.
    """
    cycle = 0
    for n, payload in enumerate(payloads):
        if gaps is not None:
            ctx.set(stream.valid, 0)
            for _ in range(int(gaps[n]) if n < len(gaps) else 0):
                await ctx.tick()
                cycle += 1
        elif rng is not None and idle > 0:
            ctx.set(stream.valid, 0)
            while rng.random() < idle:
                await ctx.tick()
                cycle += 1
        ctx.set(stream.payload, int(payload))
        ctx.set(stream.valid, 1)
        while True:
            if timeout is not None and cycle >= timeout:
                raise TimeoutError(f"sent {n} of {len(payloads)} transfers in {timeout} cycles")
            _, _, ready = await ctx.tick().sample(stream.ready)
            cycle += 1
            if ready:
                break
        if cycles is not None:
            cycles.append(cycle - 1)
    ctx.set(stream.valid, 0)


async def stream_get(ctx, stream, count: int, *, rng=None, stall: float = 0.0, ready=None,
                     cycles: list | None = None, timeout: int | None = None) -> list[int]:
    """Receive ``count`` payloads from ``stream`` (whose ``ready`` the testbench drives).

    With ``rng`` and ``stall > 0``, ``ready`` is low in each cycle with probability ``stall``
    (random back-pressure); with ``ready`` (a sequence of bools), ``ready`` is ``ready[t]`` in
    cycle t and high after the sequence ends (the ``out_ready`` stimulus of
    :func:`bnnforge.sim.simulate_timing`). ``cycles`` receives the cycle of every transfer. With
    ``timeout``, raise ``TimeoutError`` when ``count`` transfers have not happened within that
    many cycles.
    """
    out = []
    cycle = 0
    while len(out) < count:
        if timeout is not None and cycle >= timeout:
            raise TimeoutError(f"received {len(out)} of {count} transfers in {timeout} cycles")
        if ready is not None:
            now = bool(ready[cycle]) if cycle < len(ready) else True
        else:
            now = not (rng is not None and stall > 0 and rng.random() < stall)
        ctx.set(stream.ready, int(now))
        _, _, valid, payload = await ctx.tick().sample(stream.valid, stream.payload)
        if valid and now:
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


def simulate_streams(dut, sources, sinks, *, timeout: int = 20000):
    """Run a component with several input and output streams in Amaranth's simulator.

    Parameters
    ----------
    dut : wiring.Component
    sources : list of (stream, payloads, gaps)
        One producer per input port of ``dut`` (e.g. ``dut.i_stream0``): it sends ``payloads``
        with ``gaps[n]`` idle cycles before payload n (``gaps`` may be None: no gaps), failing
        with ``TimeoutError`` when one still waits at cycle ``timeout``.
    sinks : list of (stream, count, ready)
        One consumer per output port: it takes ``count`` payloads with ``ready[t]`` in cycle t
        (None: always ready), failing with ``TimeoutError`` after ``timeout`` cycles.

    Returns
    -------
    (outputs, input cycles, output cycles)
        Lists in the order of ``sinks``, ``sources`` and ``sinks``: each sink's payloads, and
        the cycle of every transfer per port.
    """
    outs = [None] * len(sinks)
    ic = [[] for _ in sources]
    oc = [[] for _ in sinks]

    def producer(k, port, payloads, gaps):
        async def run(ctx):
            await stream_put(ctx, port, payloads, gaps=gaps, cycles=ic[k], timeout=timeout)
        return run

    def consumer(k, port, count, ready):
        async def run(ctx):
            outs[k] = await stream_get(ctx, port, count, ready=ready, cycles=oc[k],
                                       timeout=timeout)
        return run

    m = Module()
    m.domains.sync = ClockDomain()      # combinational blocks have no clock of their own
    m.submodules.dut = dut
    sim = Simulator(m)
    sim.add_clock(1e-6)
    for k, (port, payloads, gaps) in enumerate(sources):
        sim.add_testbench(producer(k, port, payloads, gaps))
    for k, (port, count, ready) in enumerate(sinks):
        sim.add_testbench(consumer(k, port, count, ready))
    sim.run()
    return outs, ic, oc
