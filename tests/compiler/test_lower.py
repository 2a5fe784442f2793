"""Lowering: torch eval mode and the reference executor agree on every frame."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import bnnforge
from bnnforge.compiler import (
    BinaryConv,
    BinaryDense,
    InputLayer,
    MaxPool,
    ScoreLayer,
    UnsupportedModelError,
)
from bnnforge.nn import BinaryActivation, BinaryConv2d, BinaryLinear, InputQuant, predict_scores
from conftest import random_frames, randomize_model, small_cnn, small_mlp


def assert_agree(model, shape, frames, exact_scores: bool):
    graph = bnnforge.lower(model, shape)
    ref = bnnforge.reference(graph, frames)
    torch_scores = predict_scores(model, frames)
    assert ref.dtype == np.int64
    np.testing.assert_array_equal(ref.argmax(axis=1), torch_scores.argmax(axis=1))
    if exact_scores:
        np.testing.assert_array_equal(ref, torch_scores)
    return graph


@pytest.mark.parametrize("bits", [1, 8])
@pytest.mark.parametrize("quantizer", ["ste", "approx_sign", "reste", "biper"])
def test_small_cnn_agrees(bits, quantizer):
    model = randomize_model(small_cnn(bits, quantizer), seed=bits)
    graph = assert_agree(model, (1, 8, 8), random_frames((1, 8, 8), 3000, seed=1),
                         exact_scores=quantizer in ("ste", "approx_sign"))
    kinds = [type(op) for _, op in graph]
    assert kinds == [InputLayer, BinaryConv, MaxPool, BinaryConv, BinaryDense, ScoreLayer]


@pytest.mark.parametrize("bits", [1, 8])
def test_last_batchnorm_keeps_argmax(bits):
    model = randomize_model(small_cnn(bits, last_bn=True), seed=7)
    graph = assert_agree(model, (1, 8, 8), random_frames((1, 8, 8), 3000, seed=2),
                         exact_scores=False)
    score = graph.op("scores")
    assert score.mul.dtype == np.int64 and score.add.dtype == np.int64


def test_scores_are_exact_without_last_batchnorm():
    model = randomize_model(small_mlp(), seed=3)
    graph = assert_agree(model, (1, 8, 8), random_frames((1, 8, 8), 2000), exact_scores=True)
    score = graph.op("scores")
    assert np.all(score.mul == 1) and np.all(score.add == 0) and score.gain == 1.0


def test_reste_mean_scale_scores_are_scaled_dot_products():
    model = randomize_model(small_mlp(quantizer="reste"), seed=4)
    frames = random_frames((1, 8, 8), 1000)
    graph = bnnforge.lower(model, (1, 8, 8))
    ref = bnnforge.reference(graph, frames)
    np.testing.assert_allclose(ref * graph.op("scores").gain, predict_scores(model, frames),
                               rtol=1e-5)


@st.composite
def architectures(draw):
    bits = draw(st.sampled_from([1, 8]))
    quantizer = draw(st.sampled_from(["ste", "approx_sign", "reste", "biper"]))
    c = draw(st.integers(1, 3))
    h = draw(st.integers(5, 11))
    w = draw(st.integers(5, 11))
    layers = [InputQuant(bits)]
    shape = (c, h, w)
    first = True
    for _ in range(draw(st.integers(0, 2))):
        k = draw(st.integers(1, 3))
        s = draw(st.integers(1, 2))
        p = draw(st.integers(0, 1))
        oh, ow = (shape[1] + 2 * p - k) // s + 1, (shape[2] + 2 * p - k) // s + 1
        if oh < 1 or ow < 1:
            break
        co = draw(st.integers(1, 9))
        pad = (-1.0 if draw(st.booleans()) else 1.0) if (bits == 1 or not first) else \
            float(draw(st.sampled_from([0, 255])))
        layers += [BinaryConv2d(shape[0], co, k, stride=s, padding=p, pad_value=pad,
                                weight_quantizer=quantizer), nn.BatchNorm2d(co),
                   BinaryActivation(quantizer)]
        shape = (co, oh, ow)
        first = False
        if draw(st.booleans()) and min(oh, ow) >= 2:
            pk = draw(st.integers(1, 2))
            ps = draw(st.integers(1, 2))
            layers.append(nn.MaxPool2d(pk, ps))
            shape = (co, (oh - pk) // ps + 1, (ow - pk) // ps + 1)
    layers.append(nn.Flatten())
    n_in = int(np.prod(shape))
    for _ in range(draw(st.integers(0, 2))):
        width = draw(st.integers(1, 40))
        layers += [BinaryLinear(n_in, width, quantizer), nn.BatchNorm1d(width),
                   BinaryActivation(quantizer)]
        n_in = width
    classes = draw(st.integers(2, 12))
    layers.append(BinaryLinear(n_in, classes, quantizer))
    last_bn = draw(st.booleans())
    if last_bn:
        layers.append(nn.BatchNorm1d(classes))
    seed = draw(st.integers(0, 2**16))
    exact = not last_bn and quantizer in ("ste", "approx_sign")
    return nn.Sequential(*layers), (c, h, w), seed, exact


@settings(max_examples=40, deadline=None)
@given(architectures())
def test_random_architectures_agree(arch):
    model, shape, seed, exact = arch
    randomize_model(model, seed)
    assert_agree(model, shape, random_frames(shape, 400, seed=seed), exact_scores=exact)


def test_non_sequential_module_is_traced():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.quant = InputQuant(1)
            self.conv = BinaryConv2d(1, 4, 3, padding=1)
            self.bn = nn.BatchNorm2d(4)
            self.act = BinaryActivation()
            self.head = BinaryLinear(4 * 8 * 8, 10)

        def forward(self, x):
            x = self.act(self.bn(self.conv(self.quant(x))))
            return self.head(torch.flatten(x, 1))

    model = randomize_model(Net(), seed=5)
    assert_agree(model, (1, 8, 8), random_frames((1, 8, 8), 500), exact_scores=True)


def test_view_flatten_is_traced():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(InputQuant(1), BinaryConv2d(1, 2, 3), nn.BatchNorm2d(2),
                                      BinaryActivation())
            self.head = BinaryLinear(2 * 6 * 6, 5)

        def forward(self, x):
            x = self.body(x)
            return self.head(x.view(x.size(0), -1))

    model = randomize_model(Net(), seed=6)
    assert_agree(model, (1, 8, 8), random_frames((1, 8, 8), 500), exact_scores=True)


# -- refusals: each names the layer and what to use instead -----------------------------------

def _refuse(model, match, shape=(1, 8, 8), exc=UnsupportedModelError):
    with pytest.raises(exc, match=match):
        bnnforge.lower(model.eval(), shape)


def test_refuses_unsupported_layer():
    _refuse(nn.Sequential(InputQuant(1), nn.Flatten(), BinaryLinear(64, 8), nn.ReLU(),
                          BinaryLinear(8, 2)),
            r"unsupported layer '3' \(ReLU\); supported: InputQuant, BinaryLinear")


def test_refuses_float_linear():
    _refuse(nn.Sequential(InputQuant(1), nn.Flatten(), BinaryLinear(64, 8), nn.BatchNorm1d(8),
                          BinaryActivation(), nn.Linear(8, 2)),
            r"layer '5' is a float torch.nn.Linear; .* use bnnforge.nn.BinaryLinear")


def test_refuses_float_conv():
    _refuse(nn.Sequential(InputQuant(1), nn.Conv2d(1, 2, 3)),
            r"layer '1' is a float torch.nn.Conv2d; .* use bnnforge.nn.BinaryConv2d")


def test_refuses_missing_input_quant():
    _refuse(nn.Sequential(nn.Flatten(), BinaryLinear(64, 2)),
            r"must start with bnnforge.nn.InputQuant")


def test_refuses_maxpool_before_activation():
    _refuse(nn.Sequential(InputQuant(1), BinaryConv2d(1, 2, 3), nn.MaxPool2d(2),
                          nn.BatchNorm2d(2), BinaryActivation(), nn.Flatten(),
                          BinaryLinear(18, 2)),
            r"MaxPool2d '2' sits between '1' and its BinaryActivation; move it after")


def test_refuses_activation_at_the_end():
    _refuse(nn.Sequential(InputQuant(1), nn.Flatten(), BinaryLinear(64, 2), nn.BatchNorm1d(2),
                          BinaryActivation()),
            r"must end with a BinaryLinear that gives the class scores")


def test_refuses_branches():
    class Residual(nn.Module):
        def __init__(self):
            super().__init__()
            self.q = InputQuant(1)
            self.fc = BinaryLinear(64, 64)

        def forward(self, x):
            x = torch.flatten(self.q(x), 1)
            return x + self.fc(x)

    _refuse(Residual(), r"the sum 'add' adds the flattened feature map of 'input' \(1, 8, 8\); "
                        r"sum feature maps before the Flatten")
    # trace_chain (chains only) keeps refusing every branch
    from bnnforge.nn.chain import trace_chain
    with pytest.raises(UnsupportedModelError, match=r"the model branches at 'add' \(residual or "
                                                    r"concatenation\); bnnforge compiles chains"):
        trace_chain(Residual(), (1, 8, 8))


def test_refuses_wrong_input_shape():
    _refuse(small_mlp(), r"input shape \(1, 28, 28\) does not fit the model", shape=(1, 28, 28),
            exc=ValueError)


def test_refuses_non_finite_pad_value_on_8bit_input():
    _refuse(nn.Sequential(InputQuant(8), BinaryConv2d(1, 2, 3, padding=1, pad_value=float("nan")),
                          nn.BatchNorm2d(2), BinaryActivation(), nn.Flatten(),
                          BinaryLinear(128, 2)),
            r"BinaryConv2d '1' pads with nan; the pad value must be finite")


def test_reference_rejects_bad_frames():
    graph = bnnforge.lower(randomize_model(small_mlp(), 1), (1, 8, 8))
    with pytest.raises(ValueError, match=r"frames have shape \(3, 64\), but the model takes "
                                         r"\(N, 1, 8, 8\)"):
        bnnforge.reference(graph, np.zeros((3, 64), np.uint8))
    with pytest.raises(ValueError, match=r"frames must be uint8 pixels 0..255, got float32"):
        bnnforge.reference(graph, np.zeros((3, 1, 8, 8), np.float32))
