"""The generated accelerator against the reference executor; Verilog emission."""

import json

import numpy as np
import pytest
import torch
from amaranth.sim import Simulator
from torch import nn

import bnnforge
from bnnforge.hw import Accelerator, emit_verilog, stream_get, stream_put
from bnnforge.hw.checks import silence
from bnnforge.nn import BinaryActivation, BinaryConv2d, BinaryLinear, InputQuant


def random_bn(model, seed):
    gen = torch.Generator().manual_seed(seed)
    for mod in model.modules():
        if isinstance(mod, (nn.BatchNorm1d, nn.BatchNorm2d)):
            n = mod.num_features
            mod.running_mean.copy_(torch.rand(n, generator=gen) * 6 - 3)
            mod.running_var.copy_(torch.rand(n, generator=gen) * 4 + 0.5)
            mod.weight.data.copy_(torch.rand(n, generator=gen) * 2 - 1)
            mod.bias.data.copy_(torch.rand(n, generator=gen) * 2 - 1)
    return model


def mlp(seed=0):
    torch.manual_seed(seed)
    return random_bn(nn.Sequential(
        InputQuant(1), nn.Flatten(), BinaryLinear(64, 16), nn.BatchNorm1d(16),
        BinaryActivation(), BinaryLinear(16, 10)), seed)


def convnet(bits, seed=0):
    torch.manual_seed(seed)
    pad = -1.0 if bits == 1 else 40.0
    return random_bn(nn.Sequential(
        InputQuant(bits), BinaryConv2d(2, 4, 3, padding=1, pad_value=pad), nn.BatchNorm2d(4),
        BinaryActivation(), nn.MaxPool2d(2),
        BinaryConv2d(4, 6, 3, stride=2, padding=1), nn.BatchNorm2d(6), BinaryActivation(),
        nn.Flatten(), BinaryLinear(24, 8), nn.BatchNorm1d(8), BinaryActivation(),
        BinaryLinear(8, 3), nn.BatchNorm1d(3)), seed)


def set_folds(graph, folds, fifo_depths=None):
    for name, fold in folds.items():
        graph.attrs(name)["fold"] = fold
    for name, depth in (fifo_depths or {}).items():
        graph.attrs(name)["fifo_depth"] = depth
    return graph


def pixels(graph, frames):
    """uint8 frames (N, *input_shape) -> the accelerator's input payloads (HWC, P pixels a
    transfer, pixel 0 and channel 0 low)."""
    if len(graph.input_shape) == 3:
        hwc = frames.transpose(0, 2, 3, 1)
    else:
        hwc = frames.reshape(frames.shape[0], 1, 1, -1)
    out = []
    for px in hwc.reshape(-1, hwc.shape[-1] * graph.pixels_per_transfer()):
        out.append(sum(int(v) << (8 * i) for i, v in enumerate(px)))
    return out


def run_accelerator(graph, frames, *, idle=0.0, stall=0.0, seed=0):
    dut = Accelerator(graph)
    n = frames.shape[0]
    res = {}

    async def put(ctx):
        await stream_put(ctx, dut.i_stream, pixels(graph, frames),
                         rng=np.random.default_rng(seed), idle=idle)

    async def get(ctx):
        res["out"] = await stream_get(ctx, dut.o_stream, n, rng=np.random.default_rng(seed + 1),
                                      stall=stall, timeout=200000)

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(put)
    sim.add_testbench(get)
    sim.run()
    classes = graph.num_classes
    scores = np.array([[(w >> (32 * c)) & 0xFFFFFFFF for c in range(classes)]
                       for w in res["out"]], dtype=np.int64)
    scores = np.where(scores >= 1 << 31, scores - (1 << 32), scores)
    argmax = np.array([w >> (32 * classes) for w in res["out"]])
    return scores, argmax


def check(graph, n_frames, seed, **kw):
    shape = graph.input_shape
    frames = np.random.default_rng(seed).integers(0, 256, (n_frames,) + shape).astype(np.uint8)
    expected = bnnforge.reference(graph, frames)
    scores, argmax = run_accelerator(graph, frames, seed=seed, **kw)
    np.testing.assert_array_equal(scores, expected)
    np.testing.assert_array_equal(argmax, expected.argmax(axis=1))


@pytest.mark.parametrize("folds,kw", [
    ({"fc0": {"pe": 4, "simd": 8}, "scores": {"pe": 2, "simd": 4}}, {}),
    ({"fc0": {"pe": 16, "simd": 64}, "scores": {"pe": 10, "simd": 16}},
     {"idle": 0.3, "stall": 0.5}),
    ({"fc0": {"pe": 1, "simd": 2}, "scores": {"pe": 5, "simd": 1}}, {"stall": 0.3}),
])
def test_mlp_matches_reference(folds, kw):
    graph = set_folds(bnnforge.lower(mlp(), (1, 8, 8)), folds)
    check(graph, 5, seed=3, **kw)


def test_mlp_on_vector_input_with_fifo_depths():
    torch.manual_seed(4)
    model = random_bn(nn.Sequential(InputQuant(8), BinaryLinear(12, 8), nn.BatchNorm1d(8),
                                    BinaryActivation(), BinaryLinear(8, 4)), 4)
    graph = set_folds(bnnforge.lower(model, (12,)),
                      {"fc0": {"pe": 2, "simd": 3}, "scores": {"pe": 4, "simd": 8}},
                      {"input": 0, "fc0": 1, "scores": 4})
    check(graph, 6, seed=4, idle=0.2, stall=0.3)


@pytest.mark.parametrize("bits", [1, 8])
def test_convnet_matches_reference(bits):
    graph = set_folds(bnnforge.lower(convnet(bits, seed=bits), (2, 8, 8)), {
        "conv0": {"pe": 2, "simd": 6}, "conv1": {"pe": 3, "simd": 12},
        "fc0": {"pe": 4, "simd": 24}, "scores": {"pe": 3, "simd": 2}})
    check(graph, 3, seed=bits, idle=0.2, stall=0.3)


@pytest.mark.parametrize("ppt", [2, 16, 64])
def test_mlp_with_pixels_per_transfer_matches_reference(ppt):
    graph = set_folds(bnnforge.lower(mlp(), (1, 8, 8)),
                      {"fc0": {"pe": 4, "simd": 8}, "scores": {"pe": 5, "simd": 4}})
    graph.attrs("input")["pixels_per_transfer"] = ppt
    acc = Accelerator(graph)
    assert acc.i_stream.payload.shape().width == 8 * ppt
    kinds = [kind for _, kind, _ in acc.stages]
    assert "deserializer" not in kinds and "serializer" not in kinds
    mvtu = next(c for _, kind, c in acc.stages if kind == "mvtu")
    assert mvtu.count == 64 // ppt
    silence(acc, *(c for _, _, c in acc.stages))
    check(graph, 4, seed=ppt, idle=0.2, stall=0.3)


@pytest.mark.parametrize("bits,ppt", [(1, 4), (8, 8)])
def test_convnet_with_pixels_per_transfer_matches_reference(bits, ppt):
    graph = set_folds(bnnforge.lower(convnet(bits, seed=bits), (2, 8, 8)), {
        "conv0": {"pe": 2, "simd": 6}, "conv1": {"pe": 3, "simd": 12},
        "fc0": {"pe": 4, "simd": 24}, "scores": {"pe": 3, "simd": 2}})
    graph.attrs("input")["pixels_per_transfer"] = ppt
    acc = Accelerator(graph)
    kinds = [(node, kind) for node, kind, _ in acc.stages]
    assert ("conv0", "serializer") in kinds
    assert kinds.index(("conv0", "serializer")) + 1 == kinds.index(("conv0", "window"))
    silence(acc, *(c for _, _, c in acc.stages))
    check(graph, 2, seed=bits, idle=0.2, stall=0.3)


def test_fold_errors_name_the_node():
    graph = bnnforge.lower(mlp(), (1, 8, 8))
    with pytest.raises(ValueError, match=r"stage 'fc0' has no fold attribute"):
        Accelerator(graph)
    set_folds(graph, {"fc0": {"pe": 3, "simd": 8}, "scores": {"pe": 2, "simd": 4}})
    with pytest.raises(ValueError, match=r"stage 'fc0': PE must be a positive divisor of "
                                         r"channels=16, not 3"):
        Accelerator(graph)
    set_folds(graph, {"fc0": {"pe": 4, "simd": 0}})
    with pytest.raises(ValueError, match=r"stage 'fc0': SIMD must be a positive divisor of "
                                         r"K=64, not 0"):
        Accelerator(graph)
    set_folds(graph, {"fc0": {"pe": 4, "simd": 8}}, {"scores": -1})
    with pytest.raises(ValueError, match=r"stage 'scores': fifo_depth must be a non-negative"):
        Accelerator(graph)
    unfolded = set_folds(bnnforge.lower(mlp(), (1, 8, 8), fold=False),
                         {"fc0": {"pe": 4, "simd": 8}, "scores": {"pe": 2, "simd": 4}})
    with pytest.raises(ValueError, match=r"stage 'fc0' is not folded"):
        Accelerator(unfolded)


def test_emit_verilog_is_deterministic(tmp_path):
    folds = {"conv0": {"pe": 2, "simd": 6}, "conv1": {"pe": 3, "simd": 12},
             "fc0": {"pe": 4, "simd": 24}, "scores": {"pe": 3, "simd": 2}}
    paths = []
    for i in range(2):
        graph = set_folds(bnnforge.lower(convnet(1), (2, 8, 8)), folds)
        paths.append(emit_verilog(graph, tmp_path / str(i)))
    a, b = (p.read_bytes() for p in paths)
    assert a == b
    assert paths[0] == tmp_path / "0" / "rtl" / "bnnforge_top.v"
    text = a.decode()
    assert "module bnnforge_top(" in text
    for port in ("clk", "rst", "i_stream__payload", "i_stream__valid", "i_stream__ready",
                 "o_stream__payload", "o_stream__valid", "o_stream__ready"):
        assert f" {port}" in text
    ja, jb = ((p.parent / "top.json").read_bytes() for p in paths)
    assert ja == jb
    info = json.loads(ja)
    assert info["top"] == "bnnforge_top"
    assert info["pixel_width"] == 16 and info["pixels_per_frame"] == 64
    assert info["pixels_per_transfer"] == 1 and info["transfer_width"] == 16
    assert info["classes"] == 3 and info["score_width"] == 32 and info["class_width"] == 2
    stages = {s["name"]: s for s in info["stages"]}
    assert stages["conv0"]["pe"] == 2 and stages["conv0"]["cycles_per_vector"] == 2 * 3
    assert stages["scores"]["cycles_per_vector"] == 1 * 4
    graph = set_folds(bnnforge.lower(convnet(1), (2, 8, 8)), folds)
    graph.attrs("input")["pixels_per_transfer"] = 4
    path = emit_verilog(graph, tmp_path / "p4")
    info = json.loads((path.parent / "top.json").read_text())
    assert info["pixel_width"] == 16 and info["pixels_per_frame"] == 64
    assert info["pixels_per_transfer"] == 4 and info["transfer_width"] == 64
    graph.attrs("input")["pixels_per_transfer"] = 5
    with pytest.raises(ValueError, match=r"stage 'input': pixels_per_transfer must divide the "
                                         r"64 pixels of a frame \(legal: 1, 2, 4, 8, 16, 32, "
                                         r"64\), not 5"):
        Accelerator(graph)
