"""The ``resnet`` reference architecture: layout, tracing, lowering and training."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import bnnforge
from bnnforge.compiler import BinaryConv, ResidualAdd, ScoreLayer
from bnnforge.nn import (
    ARCHS,
    QUANTIZERS,
    BinaryConv2d,
    BinaryLinear,
    build,
    evaluate,
    load_dataset,
    predict_scores,
    train,
)
from bnnforge.nn.archs import BasicBlock
from bnnforge.nn.chain import trace_graph
from conftest import random_frames, randomize_model

MNIST = (1, 28, 28)


def test_resnet_is_listed():
    assert "resnet" in ARCHS


@pytest.mark.parametrize("shape, maps, fc_in", [(MNIST, [28, 14, 14, 7], 1568),
                                                ((1, 8, 8), [8, 8, 8, 4], 512)])
def test_layout(shape, maps, fc_in):
    model = build("resnet", shape, 10)
    assert isinstance(model[-1], BinaryLinear) and model[-1].in_features == 64
    assert model.fc0.in_features == fc_in and model.fc0.out_features == 64
    blocks = [m for m in model if isinstance(m, BasicBlock)]
    assert [b.projection for b in blocks] == [False, True, False]
    assert blocks[1].conv.stride == (2, 2) and blocks[1].conv_s.kernel_size == (1, 1)
    steps = trace_graph(model, shape)
    conv_maps = [s.in_shape[1] for s in steps if s.kind == "conv"]
    # stem, block1, block2 (main and shortcut read the same map), block3
    assert conv_maps == [maps[0], maps[1], maps[2], maps[2], maps[3]]
    assert [s.kind for s in steps].count("add") == 3
    assert steps[-1].out_shape == (10,)


def test_window_buffers_are_small_on_mnist():
    graph = bnnforge.lower(randomize_model(build("resnet", MNIST, 10), 0), MNIST)
    maps = {name: op.in_shape for name, op in graph if isinstance(op, BinaryConv)}
    # only the stem sees the 28x28 frame (one channel); every other window is <= 14x14
    assert maps.pop("conv0") == MNIST
    assert all(h <= 14 and w <= 14 for _, h, w in maps.values())


@pytest.mark.parametrize("input_bits", [1, 8])
@pytest.mark.parametrize("quantizer", QUANTIZERS)
def test_lowers_and_agrees(quantizer, input_bits):
    model = randomize_model(build("resnet", (1, 8, 8), 10, quantizer, input_bits), 1)
    graph = bnnforge.lower(model, (1, 8, 8))
    kinds = [type(op).__name__ for _, op in graph]
    assert kinds == ["InputLayer", "BinaryConv", "BinaryConv", "ResidualAdd", "BinaryConv",
                     "BinaryConv", "ResidualAdd", "BinaryConv", "ResidualAdd", "BinaryDense",
                     "ScoreLayer"]
    adds = [op for _, op in graph if isinstance(op, ResidualAdd)]
    assert [a.short for a in adds] == ["bits", "popcount", "bits"]
    assert [(a.main_k, a.short_k) for a in adds] == [(144, 0), (144, 16), (288, 0)]
    assert graph.inputs("add1") == ["conv2", "conv3"]
    frames = random_frames((1, 8, 8), 1000, seed=2)
    ref = bnnforge.reference(graph, frames)
    scores = predict_scores(model, frames)
    np.testing.assert_array_equal(ref.argmax(1), scores.argmax(1))
    if quantizer in ("ste", "approx_sign"):
        np.testing.assert_array_equal(ref, scores)
    assert graph.inputs("fc0") == ["add2"] and isinstance(graph.op("scores"), ScoreLayer)


def test_build_errors():
    with pytest.raises(ValueError, match=r"unknown architecture 'vgg'; choose one of tfc, sfc, "
                                         r"lfc, cnv, resnet"):
        build("vgg", MNIST, 10)
    with pytest.raises(ValueError, match=r"input_shape \(1, 1, 1\) is too small for resnet"):
        build("resnet", (1, 1, 1), 10)
    assert build("resnet", (1, 2, 2), 10).fc0.in_features == 32


def test_basic_block():
    block = BasicBlock(4, 4)
    assert not block.projection and not hasattr(block, "conv_s")
    x = torch.where(torch.rand(3, 4, 5, 5) < 0.5, -1.0, 1.0)
    block.eval()
    with torch.no_grad():
        y = block(x)
        want = torch.where(block.bn(block.conv(x)) + x >= 0, 1.0, -1.0)
    assert torch.equal(y, want)
    proj = BasicBlock(4, 6, 2)
    assert proj.projection and proj(x).shape == (3, 6, 3, 3)
    assert isinstance(proj.conv_s, BinaryConv2d) and isinstance(proj.bn_s, nn.BatchNorm2d)


@pytest.mark.parametrize("quantizer", QUANTIZERS)
def test_trains_on_digits_with_every_quantizer(quantizer):
    ds = load_dataset("digits")
    torch.manual_seed(0)
    model = build("resnet", ds.input_shape, ds.num_classes, quantizer)
    hist = train(model, ds, epochs=3, lr=1e-2, seed=0, progress=False)
    assert hist["final_test_accuracy"] > 0.5, hist
    graph = bnnforge.lower(model, ds.input_shape)
    np.testing.assert_array_equal(bnnforge.reference(graph, ds.x_test).argmax(1),
                                  predict_scores(model, ds.x_test).argmax(1))


@pytest.mark.train
def test_resnet_reaches_95_percent_on_mnist5k():
    # `bnnforge train --arch resnet --dataset mnist5k --epochs 20 --shift 1`: 96.2% (ste),
    # about 20 s on 2 cores
    ds = load_dataset("mnist5k")
    torch.manual_seed(0)
    model = build("resnet", ds.input_shape, ds.num_classes, "ste")
    train(model, ds, epochs=20, seed=0, shift=1, progress=False)
    acc = evaluate(model, ds.x_test, ds.y_test)
    assert acc >= 0.95
    graph = bnnforge.lower(model, ds.input_shape)
    ref = bnnforge.reference(graph, ds.x_test).argmax(1)
    assert int(np.sum(ref != predict_scores(model, ds.x_test).argmax(1))) == 0
