"""sim.timing against the RTL: every input and output handshake cycle, in Amaranth's simulator."""

import numpy as np
import pytest
from amaranth.sim import Simulator
from torch import nn

import bnnforge
from bnnforge.compiler.cycles import window_cycles
from bnnforge.compiler.folding import ChooseFolding
from bnnforge.hw.generate import Accelerator
from bnnforge.nn import BinaryActivation, BinaryConv2d, BinaryLinear, InputQuant
from bnnforge.sim import chain, simulate_timing
from conftest import random_frames, randomize_model, small_cnn, small_mlp


def payloads(graph, frames):
    """uint8 frames -> one int per input transfer: P pixels (HWC order, pixel 0 and channel 0
    in the low byte)."""
    if len(graph.input_shape) == 3:
        hwc = frames.transpose(0, 2, 3, 1)
    else:
        hwc = frames.reshape(frames.shape[0], 1, 1, -1)
    per = graph.pixels_per_transfer()
    px = hwc.reshape(-1, hwc.shape[-1] * per).astype(np.int64)
    return [sum(int(v) << (8 * i) for i, v in enumerate(row)) for row in px]


def run_rtl(graph, frames, in_gaps, out_ready, timeout=400_000, probe=False, cycles=None):
    """Drive the Amaranth accelerator with the stimulus contract of sim.timing.

    Returns (input handshake cycles, output handshake cycles, output payloads, and with
    ``probe`` the handshake cycles at every block's input port as {"node:kind" (port p > 0:
    "node:kind#p"): list}). With ``cycles`` the run stops after that many cycles whatever has
    come out (a deadlock).
    """
    dut = Accelerator(graph)
    data = payloads(graph, frames)
    n_out = frames.shape[0]
    res = {"in": [], "out": [], "val": []}
    probes = []
    for b in dut.plan.blocks if probe else []:
        comp = dut.blocks[b["name"]]
        ports = getattr(comp, "i_streams", None) or [comp.i_stream]
        for p, st in enumerate(ports):
            probes.append((b["name"] if not p else f"{b['name']}#{p}", st))
    seen = {name: [] for name, _ in probes}
    sigs = [x for _, st in probes for x in (st.valid, st.ready)]
    limit = cycles if cycles is not None else timeout

    async def put(ctx):
        cycle = 0
        for n, payload in enumerate(data):
            for _ in range(int(in_gaps[n]) if in_gaps is not None else 0):
                ctx.set(dut.i_stream.valid, 0)
                await ctx.tick()
                cycle += 1
            ctx.set(dut.i_stream.payload, payload)
            ctx.set(dut.i_stream.valid, 1)
            while True:
                _, _, ready = await ctx.tick().sample(dut.i_stream.ready)
                cycle += 1
                if ready:
                    break
                if cycle >= limit:
                    return
            res["in"].append(cycle - 1)
        ctx.set(dut.i_stream.valid, 0)

    async def get(ctx):
        cycle = 0
        while len(res["out"]) < n_out and cycle < limit:
            ready = True if out_ready is None or cycle >= len(out_ready) else bool(
                out_ready[cycle])
            ctx.set(dut.o_stream.ready, int(ready))
            _, _, valid, payload, *hs = await ctx.tick().sample(
                dut.o_stream.valid, dut.o_stream.payload, *sigs)
            for i, (name, _) in enumerate(probes):
                if hs[2 * i] and hs[2 * i + 1]:
                    seen[name].append(cycle)
            if valid and ready:
                res["out"].append(cycle)
                res["val"].append(int(payload))
            cycle += 1
        assert cycles is not None or len(res["out"]) == n_out, "timeout"

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(put, background=cycles is not None)
    sim.add_testbench(get)
    sim.run()
    return np.array(res["in"]), np.array(res["out"]), res["val"], seen


def chain_tokens(graph, name):
    node, kind = name.split(":")
    return next(b["tokens"] for b in chain(graph) if (b["node"], b["kind"]) == (node, kind))


def stimulus(graph, n_frames, seed, idle, stall, horizon):
    rng = np.random.default_rng(seed)
    total = n_frames * chain(graph)[0]["tokens"]
    gaps = rng.geometric(1 - idle, total) - 1 if idle else None
    ready = rng.random(horizon) >= stall if stall else None
    return gaps, ready


def check_exact(graph, n_frames, seed=0, idle=0.0, stall=0.0, probe=False):
    frames = random_frames(graph.input_shape, n_frames, seed)
    free = simulate_timing(graph, n_frames)
    horizon = int(free.total_cycles * (1 + 3 * stall) * (1 + 2 * idle)) + 50
    gaps, ready = stimulus(graph, n_frames, seed, idle, stall, horizon)
    model = simulate_timing(graph, n_frames, in_gaps=gaps, out_ready=ready)
    rtl_in, rtl_out, values, seen = run_rtl(graph, frames, gaps, ready, probe=probe)
    np.testing.assert_array_equal(model.input_cycles, rtl_in)
    np.testing.assert_array_equal(model.output_cycles, rtl_out)
    assert set(seen) <= set(model.boundaries)
    for name, cycles in seen.items():
        # the RTL may have accepted tokens of a frame that never completes: compare a prefix
        got = model.boundaries[name]
        np.testing.assert_array_equal(got[:len(cycles)], cycles, err_msg=name)
        assert len(cycles) >= n_frames * chain_tokens(graph, name), name
    # the RTL computed the right values too (the same frames through the reference)
    scores = bnnforge.reference(graph, frames)
    classes = graph.num_classes
    got = np.array([[(w >> (32 * c)) & 0xFFFFFFFF for c in range(classes)] for w in values])
    np.testing.assert_array_equal(np.where(got >= 1 << 31, got - (1 << 32), got), scores)
    return model


def check_periodic(graph, frames, tokens, seed, horizon, gap_frames=5, settled_by=None):
    """The periodic continuation gives exactly the step-by-step run, free and under
    ``gap_frames`` frames of random input gaps (``tokens`` input transfers a frame) and random
    back-pressure; the repeat is found before frame ``settled_by`` (default the last)."""
    rng = np.random.default_rng(seed)
    gaps = np.concatenate([rng.geometric(0.6, tokens * gap_frames) - 1,
                           np.zeros(tokens * (frames - gap_frames), dtype=int)])
    ready = rng.random(horizon) > 0.5
    settled_by = frames - 1 if settled_by is None else settled_by
    for kw in ({}, {"in_gaps": gaps, "out_ready": ready}):
        fast = simulate_timing(graph, frames, **kw)
        slow = simulate_timing(graph, frames, periodic=False, **kw)
        assert fast.periodic_from is not None and fast.periodic_from < settled_by
        assert slow.periodic_from is None
        assert fast.boundaries.keys() == slow.boundaries.keys()
        for key in slow.boundaries:
            np.testing.assert_array_equal(fast.boundaries[key], slow.boundaries[key], key)
        assert fast.fifo_max_occupancy == slow.fifo_max_occupancy
        assert fast.cycles_per_frame == fast.period_cycles / fast.period
        assert fast.cycles_per_frame_median == slow.cycles_per_frame_median


def folded(model, shape, folds=None, depths=None, depth=None):
    graph = bnnforge.lower(model, shape)
    if folds is None:
        graph = ChooseFolding().apply(graph)
    else:
        for name, (pe, simd) in folds.items():
            graph.attrs(name)["fold"] = {"pe": pe, "simd": simd}
    for name in graph.order():
        if depth is not None:
            graph.attrs(name)["fifo_depth"] = depth
        if depths and name in depths:
            graph.attrs(name)["fifo_depth"] = depths[name]
    return graph


def mlp(bits=1):
    return randomize_model(small_mlp(bits, hidden=16), seed=bits)


def cnn(bits=1):
    return randomize_model(small_cnn(bits), seed=10 + bits)


MLP_FOLDS = {
    "serial": {"fc0": (1, 4), "fc1": (2, 2), "scores": (1, 1)},
    "middle": {"fc0": (4, 16), "fc1": (4, 8), "scores": (2, 4)},
    "parallel": {"fc0": (16, 64), "fc1": (16, 16), "scores": (10, 16)},
    "unbalanced": {"fc0": (16, 64), "fc1": (1, 1), "scores": (10, 16)},
}


@pytest.mark.parametrize("bits", [1, 8])
@pytest.mark.parametrize("fold", sorted(MLP_FOLDS))
def test_mlp_cycle_exact(bits, fold):
    graph = folded(mlp(bits), (1, 8, 8), MLP_FOLDS[fold])
    seed = 17 * bits + len(fold)
    check_exact(graph, 3, seed=seed)
    check_exact(graph, 3, seed=seed + 1, idle=0.3, stall=0.4, probe=fold == "middle")


@pytest.mark.parametrize("depth", [0, 1, 2, 3, 4])
def test_mlp_fifo_depths_cycle_exact(depth):
    graph = folded(mlp(1), (1, 8, 8), MLP_FOLDS["parallel"], depth=depth)
    check_exact(graph, 4, seed=depth, idle=0.2, stall=0.5, probe=True)
    check_exact(graph, 4, seed=depth + 10)


@pytest.mark.parametrize("pipeline", ["compact", "ice40", "ecp5"])
@pytest.mark.parametrize("bits,fold", [(1, "middle"), (8, "serial")])
def test_every_pipeline_cycle_exact(pipeline, bits, fold):
    """Each family's pipeline (compiler.pipeline: adder levels a stage, ROM / operand and compare
    registers) is one latency contract: the model and the generated hardware agree on it."""
    graph = folded(mlp(bits), (1, 8, 8), MLP_FOLDS[fold])
    graph.meta["pipeline"] = pipeline
    check_exact(graph, 3, seed=len(pipeline), idle=0.3, stall=0.4, probe=True)


CNN_FOLDS = {
    "serial": {"conv0": (1, 3), "conv1": (2, 8), "fc0": (2, 8), "scores": (1, 4)},
    "middle": {"conv0": (4, 9), "conv1": (4, 24), "fc0": (4, 16), "scores": (2, 10)},
    "parallel": {"conv0": (8, 9), "conv1": (6, 72), "fc0": (20, 48), "scores": (10, 20)},
}


@pytest.mark.parametrize("bits,fold", [(1, "serial"), (1, "parallel"), (8, "middle"),
                                       (8, "parallel")])
def test_cnn_cycle_exact(bits, fold):
    graph = folded(cnn(bits), (1, 8, 8), CNN_FOLDS[fold])
    check_exact(graph, 2, seed=bits)
    check_exact(graph, 2, seed=bits + 5, idle=0.25, stall=0.4, probe=fold == "parallel")


@pytest.mark.parametrize("depths", [{"input": 0, "conv0": 0, "pool0": 0, "conv1": 0,
                                     "fc0": 0, "scores": 0},
                                    {"input": 1, "conv0": 3, "pool0": 1, "conv1": 4,
                                     "fc0": 1, "scores": 2}])
def test_cnn_fifo_depths_cycle_exact(depths):
    graph = folded(cnn(1), (1, 8, 8), CNN_FOLDS["middle"], depths=depths)
    check_exact(graph, 2, seed=7, idle=0.3, stall=0.3, probe=True)


@pytest.mark.parametrize("name", ["mlp-middle", "mlp-serial", "cnn-middle", "cnn-deep-fifos"])
def test_periodic_continuation_is_exact(name):
    if name.startswith("mlp"):
        graph = folded(mlp(1), (1, 8, 8), MLP_FOLDS[name.split("-")[1]], depth=1)
    else:
        graph = folded(cnn(8), (1, 8, 8), CNN_FOLDS["middle"],
                       depth=7 if name.endswith("fifos") else None)
    check_periodic(graph, 40, 64, seed=3, horizon=3000)


def test_result_figures():
    graph = folded(mlp(1), (1, 8, 8), MLP_FOLDS["unbalanced"])
    res = simulate_timing(graph, 12)
    assert res.bottleneck == "fc1"                       # fc1 at PE=1, SIMD=1: 256 cycles
    assert res.stage_busy == {"input": 64, "fc0": 64, "fc1": 256, "scores": 1}
    assert res.cycles_per_frame == 256 == res.cycles_per_frame_median
    assert res.latency_cycles == res.output_cycles[0] - res.input_cycles[0]
    assert res.input_cycles.shape == (12 * 64,) and res.output_cycles.shape == (12,)
    assert set(res.boundaries) == {"input:fifo", "input:threshold", "fc0:fifo", "fc0:mvtu",
                                   "fc1:fifo", "fc1:mvtu", "scores:fifo", "scores:score",
                                   "output"}
    assert res.pixels_per_frame == res.transfers_per_frame == 64
    np.testing.assert_array_equal(res.boundaries["input:fifo"], res.input_cycles)
    assert res.busy_fraction()["fc1"] == 1.0
    small = simulate_timing(graph, 12, record=False)
    assert small.boundaries == {}
    np.testing.assert_array_equal(small.output_cycles, res.output_cycles)
    # output back-pressure holds outputs back exactly as the ready pattern says
    ready = np.ones(res.output_cycles[3] + 10, dtype=bool)
    ready[res.output_cycles[0]:res.output_cycles[0] + 5] = False
    held = simulate_timing(graph, 1, out_ready=ready)
    assert held.output_cycles[0] == res.output_cycles[0] + 5


def test_stimulus_errors():
    graph = folded(mlp(1), (1, 8, 8), MLP_FOLDS["middle"])
    with pytest.raises(ValueError, match=r"frames must be a positive integer, not 0"):
        simulate_timing(graph, 0)
    with pytest.raises(ValueError, match=r"in_gaps must be non-negative, got -1"):
        simulate_timing(graph, 1, in_gaps=np.array([0, -1]))
    with pytest.raises(ValueError, match=r"in_gaps must be a 1-D integer array"):
        simulate_timing(graph, 1, in_gaps=np.zeros(3))
    with pytest.raises(ValueError, match=r"out_ready must be a 1-D boolean array"):
        simulate_timing(graph, 1, out_ready=np.ones((2, 2)))
    unfolded = bnnforge.lower(mlp(1), (1, 8, 8))
    with pytest.raises(ValueError, match=r"stage 'fc0' has no fold attribute"):
        simulate_timing(unfolded, 1)
    graph.attrs("fc1")["fifo_depth"] = -2
    with pytest.raises(ValueError, match=r"stage 'fc1': fifo_depth must be a non-negative"):
        simulate_timing(graph, 1)


# -- window geometries: the line-buffer window generator cycle by cycle -------------------------

def conv_net(c, h, w, kernel, stride, padding, bits, pool=None):
    """input (c, h, w) -> a 4-channel convolution [-> a max-pool of ``pool``] -> 10 scores."""
    (kh, kw), (sh, sw), (ph, pw) = (x if isinstance(x, tuple) else (x, x)
                                    for x in (kernel, stride, padding))
    oh, ow = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
    layers = [InputQuant(bits), BinaryConv2d(c, 4, kernel, stride, padding,
                                             pad_value=-1.0 if bits == 1 else 0.0),
              nn.BatchNorm2d(4), BinaryActivation()]
    if pool:
        layers.append(nn.MaxPool2d(pool))
        oh, ow = oh // pool, ow // pool
    layers += [nn.Flatten(), BinaryLinear(4 * oh * ow, 10)]
    return randomize_model(nn.Sequential(*layers), seed=c + h + w + bits)


GEOMETRIES = {   # c, h, w, kernel, stride, padding, bits, pool
    "k3-s1-p1-bits": (2, 6, 7, 3, 1, 1, 1, None),
    "k3-s2-p0-bytes": (1, 7, 6, 3, 2, 0, 8, None),      # a last row and column in the tail
    "k2-s2-p0-bits": (2, 7, 7, 2, 2, 0, 1, None),
    "k2-s1-p1-bytes": (1, 5, 6, 2, 1, 1, 8, None),
    "k3x2-s1x2-p1x0-bits": (3, 6, 7, (3, 2), (1, 2), (1, 0), 1, None),
    "k3-s1-p1-pool-bytes": (1, 7, 7, 3, 1, 1, 8, 2),    # the pool leaves a row and a column
}


@pytest.mark.parametrize("name", sorted(GEOMETRIES))
def test_window_geometries_cycle_exact(name):
    """Strides 1 and 2, padding 0 and 1, kernels 2 and 3, 1- and 8-bit pixels; folded so that
    the MVTU (PE = 1) holds the window back: the model and the RTL agree at every boundary,
    back to back and under input gaps and output back-pressure, and so do both engines."""
    c, h, w, kernel, stride, padding, bits, pool = GEOMETRIES[name]
    graph = bnnforge.lower(conv_net(*GEOMETRIES[name][:7], pool=pool), (c, h, w))
    graph = ChooseFolding().apply(graph)
    graph.attrs("conv0")["fold"] = {"pe": 1, "simd": graph.op("conv0").k}
    check_exact(graph, 3, seed=len(name), probe=True)
    check_exact(graph, 3, seed=len(name) + 1, idle=0.3, stall=0.4, probe=True)
    rng = np.random.default_rng(len(name))
    gaps = rng.geometric(0.6, 5 * h * w) - 1
    ready = rng.random(20_000) < 0.6
    for kw in ({}, {"in_gaps": gaps, "out_ready": ready}):
        pull = simulate_timing(graph, 5, periodic=False, **kw)
        proc = simulate_timing(graph, 5, engine="process", **kw)
        assert pull.boundaries.keys() == proc.boundaries.keys()
        for key in pull.boundaries:
            np.testing.assert_array_equal(pull.boundaries[key], proc.boundaries[key], key)
    check_periodic(graph, 30, h * w, seed=len(name), horizon=800)
    # one padded position a cycle: the window is not what limits the frame rate
    plan = {b["name"]: b for b in chain(graph)}
    hp, wp = plan["conv0:window"]["padded"]
    assert plan["conv0:window"]["positions"] == hp * wp == window_cycles(graph.op("conv0"))


# -- several pixels per input transfer ----------------------------------------------------------

def with_ppt(graph, ppt):
    graph.attrs(graph.input_node())["pixels_per_transfer"] = ppt
    return graph


@pytest.mark.parametrize("bits,fold,ppt", [(1, "middle", 4), (8, "parallel", 16),
                                           (1, "parallel", 64), (8, "serial", 2),
                                           (1, "unbalanced", 8)])
def test_mlp_pixels_per_transfer_cycle_exact(bits, fold, ppt):
    graph = with_ppt(folded(mlp(bits), (1, 8, 8), MLP_FOLDS[fold]), ppt)
    model = check_exact(graph, 3, seed=ppt)
    assert model.input_cycles.shape == (3 * 64 // ppt,)
    assert model.transfers_per_frame == 64 // ppt and model.pixels_per_frame == 64
    check_exact(graph, 3, seed=ppt + 1, idle=0.3, stall=0.4, probe=True)


def test_mlp_pixels_per_transfer_with_fifo_depths_cycle_exact():
    graph = with_ppt(folded(mlp(1), (1, 8, 8), MLP_FOLDS["parallel"], depths={
        "input": 0, "fc0": 1, "fc1": 0, "scores": 3}), 4)
    check_exact(graph, 4, seed=21, idle=0.5, stall=0.5, probe=True)


@pytest.mark.parametrize("bits,fold,ppt", [(1, "middle", 4), (8, "parallel", 2),
                                           (1, "serial", 16), (8, "middle", 64)])
def test_cnn_pixels_per_transfer_cycle_exact(bits, fold, ppt):
    graph = with_ppt(folded(cnn(bits), (1, 8, 8), CNN_FOLDS[fold]), ppt)
    assert [b["kind"] for b in chain(graph)][:4] == (
        ["fifo", "threshold", "fifo", "serializer"] if bits == 1
        else ["fifo", "fifo", "serializer", "window"])
    check_exact(graph, 2, seed=ppt)
    check_exact(graph, 2, seed=ppt + 3, idle=0.3, stall=0.4, probe=True)


def test_cnn_pixels_per_transfer_without_fifos_cycle_exact():
    depths = {"input": 0, "conv0": 0, "pool0": 0, "conv1": 0, "fc0": 0, "scores": 0}
    graph = with_ppt(folded(cnn(1), (1, 8, 8), CNN_FOLDS["parallel"], depths=depths), 8)
    check_exact(graph, 2, seed=5, idle=0.4, stall=0.5, probe=True)


def test_pixels_per_transfer_periodic_continuation_is_exact():
    graph = with_ppt(folded(mlp(1), (1, 8, 8), MLP_FOLDS["parallel"], depth=1), 8)
    check_periodic(graph, 40, 8, seed=4, horizon=600)
    # 8 pixels a transfer: the input no longer limits a fast pipeline to 64 cycles a frame
    # (depth-1 FIFOs pass a token every other cycle; the default depth 2 every cycle)
    assert simulate_timing(graph, 40).cycles_per_frame == 16
    fast = with_ppt(folded(mlp(1), (1, 8, 8), MLP_FOLDS["parallel"]), 8)
    assert simulate_timing(fast, 40).cycles_per_frame == 8


def test_pixels_per_transfer_errors():
    graph = with_ppt(folded(mlp(1), (1, 8, 8), MLP_FOLDS["middle"]), 3)
    msg = (r"stage 'input': pixels_per_transfer must divide the 64 pixels of a frame "
           r"\(legal: 1, 2, 4, 8, 16, 32, 64\), not 3")
    with pytest.raises(ValueError, match=msg):
        simulate_timing(graph, 1)
    with pytest.raises(ValueError, match=msg):
        Accelerator(graph)
    with_ppt(graph, 0)
    with pytest.raises(ValueError, match=r"pixels_per_transfer must divide .* not 0"):
        simulate_timing(graph, 1)
