"""First-layer input quantizers: a byte threshold other than 128 and a 256-entry level table."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import bnnforge
from bnnforge.compiler import InputLayer
from bnnforge.compiler.serialize import graph_bytes, load_graph, save_graph
from bnnforge.nn import (
    BinaryActivation,
    BinaryConv2d,
    BinaryLinear,
    InputQuant,
    predict_scores,
)
from conftest import random_frames, randomize_model, small_cnn, small_mlp


def cnv_levels():
    """CNV-w1a1's 2x - 1 then 8-bit Q1.7 quantizer: signed levels -127..127."""
    q = np.arange(256)
    return [int(v) for v in np.clip(np.round((2 * q / 255 - 1) * 128), -127, 127)]


def monotone_levels(seed=0):
    rng = np.random.default_rng(seed)
    steps = rng.integers(0, 2, 256)
    return [int(v) - 100 for v in np.cumsum(steps) - steps[0]]     # within -100..155


def shuffled_levels(seed=0):
    return [int(v) for v in np.random.default_rng(seed).integers(-60, 196, 256)]


LEVELS = {"cnv": cnv_levels, "monotone": monotone_levels, "shuffled": shuffled_levels}


def with_input(model, quant):
    model[0] = quant
    return model


def assert_agree(model, shape, n=600, seed=1, exact_scores=True):
    graph = bnnforge.lower(model, shape)
    frames = random_frames(shape, n, seed=seed)
    ref = bnnforge.reference(graph, frames)
    torch_scores = predict_scores(model, frames)
    np.testing.assert_array_equal(ref.argmax(axis=1), torch_scores.argmax(axis=1))
    if exact_scores:
        np.testing.assert_array_equal(ref, torch_scores)
    return graph


def test_threshold_128_is_todays_numerics():
    x = torch.arange(256, dtype=torch.float32) / 255
    assert torch.equal(InputQuant(1)(x), torch.where(x >= 0.5, 1.0, -1.0))
    assert torch.equal(InputQuant(1, threshold=128)(x), InputQuant(1)(x))
    assert InputQuant(1).config() == {"bits": 1}


@pytest.mark.parametrize("threshold", [1, 77, 200, 255])
def test_threshold_forward_is_byte_compare(threshold):
    x = torch.arange(256, dtype=torch.float32) / 255
    expected = torch.where(torch.arange(256) >= threshold, 1.0, -1.0)
    assert torch.equal(InputQuant(1, threshold=threshold)(x), expected)


@pytest.mark.parametrize("threshold", [1, 77, 200])
@pytest.mark.parametrize("builder", [small_mlp, small_cnn])
def test_threshold_agrees(threshold, builder):
    model = randomize_model(with_input(builder(1), InputQuant(1, threshold=threshold)), seed=5)
    graph = assert_agree(model, (1, 8, 8))
    assert graph.op("input").threshold == threshold and graph.op("input").table is None


def test_levels_forward():
    levels = shuffled_levels(3)
    q = torch.arange(256, dtype=torch.float32)
    out = InputQuant(8, levels=levels)(q / 255)
    assert out.dtype == torch.float32
    assert out.tolist() == [float(v) for v in levels]
    assert torch.equal(InputQuant(8)(q / 255), q)


@pytest.mark.parametrize("levels", sorted(LEVELS))
@pytest.mark.parametrize("builder", [small_mlp, small_cnn])
def test_levels_agree(levels, builder):
    table = LEVELS[levels]()
    model = randomize_model(with_input(builder(8), InputQuant(8, levels=table)), seed=6)
    graph = assert_agree(model, (1, 8, 8))
    op = graph.op("input")
    assert op.bits == 8 and op.table == tuple(v - min(table) for v in table)
    if builder is small_cnn:        # pads with level 0: the byte 0 - min(levels)
        assert graph.op("conv0").pad_value == -min(table)


@pytest.mark.parametrize("levels", sorted(LEVELS))
@pytest.mark.parametrize("bn", [False, True])
def test_levels_on_a_first_layer_that_is_the_score_layer(levels, bn):
    torch.manual_seed(2)
    layers = [InputQuant(8, levels=LEVELS[levels]()), nn.Flatten(), BinaryLinear(64, 10)]
    model = randomize_model(nn.Sequential(*layers, *([nn.BatchNorm1d(10)] if bn else [])), 8)
    graph = assert_agree(model, (1, 8, 8), exact_scores=False)
    assert [name for name, _ in graph] == ["input", "scores"]


def test_unfolded_graph_agrees_with_folded_stage_by_stage():
    model = randomize_model(with_input(small_cnn(8), InputQuant(8, levels=cnv_levels())), 9)
    frames = random_frames((1, 8, 8), 500, seed=4)
    folded = bnnforge.reference(bnnforge.lower(model, (1, 8, 8)), frames, return_all=True)
    affine = bnnforge.reference(bnnforge.lower(model, (1, 8, 8), fold=False), frames,
                                return_all=True)
    for name in ("input", "conv0", "pool0", "conv1", "fc0"):
        np.testing.assert_array_equal(folded[name], affine[name])
    np.testing.assert_array_equal(folded["scores"].argmax(1), affine["scores"].argmax(1))


def test_bias_free_first_layer_keeps_sign_of_zero():
    """No BatchNorm: b = 0, so a sum of exactly 0 in the level domain must give +1 (sign(0))."""
    torch.manual_seed(0)
    levels = [(-1) ** q * (q // 2) for q in range(256)]        # many ways to sum to 0
    levels = [min(max(v, -127), 128) for v in levels]
    model = nn.Sequential(InputQuant(8, levels=levels), nn.Flatten(), BinaryLinear(4, 8),
                          BinaryActivation(), BinaryLinear(8, 10)).eval()
    frames = np.random.default_rng(0).integers(0, 8, (4000, 4)).astype(np.uint8)
    graph = bnnforge.lower(model, (4,))
    hidden = bnnforge.reference(graph, frames, return_all=True)["fc0"].reshape(len(frames), -1)
    with torch.no_grad():
        x = model[1](model[0](torch.tensor(frames, dtype=torch.float32) / 255))
        pre = x @ model[2].binary_weight().T
    assert np.any(pre.numpy() == 0)
    np.testing.assert_array_equal(hidden, pre.numpy() >= 0)
    np.testing.assert_array_equal(bnnforge.reference(graph, frames), predict_scores(model, frames))


@pytest.mark.parametrize("quant", [InputQuant(1, threshold=77),
                                   InputQuant(8, levels=shuffled_levels(1))])
def test_graph_files_round_trip_byte_identically(quant, tmp_path):
    model = randomize_model(with_input(small_cnn(quant.bits), quant), seed=4)
    graph = bnnforge.lower(model, (1, 8, 8))
    save_graph(graph, tmp_path / "a")
    again = load_graph(tmp_path / "a")
    assert again.same_as(graph)
    assert again.op("input").same_as(graph.op("input"))
    assert graph_bytes(again) == graph_bytes(graph)
    save_graph(again, tmp_path / "b")
    for name in ("graph.json", "weights.npz"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    frames = random_frames((1, 8, 8), 100)
    np.testing.assert_array_equal(bnnforge.reference(again, frames),
                                  bnnforge.reference(graph, frames))


@pytest.mark.parametrize("quant", [InputQuant(1, threshold=3),
                                   InputQuant(8, levels=cnv_levels())])
def test_model_file_round_trip(quant, tmp_path):
    model = randomize_model(with_input(small_mlp(quant.bits), quant), seed=2)
    bnnforge.save(model, tmp_path / "m.bnn", (1, 8, 8))
    loaded = bnnforge.load(tmp_path / "m.bnn")
    loaded = loaded[0] if isinstance(loaded, tuple) else loaded
    first = next(m for m in loaded.modules() if isinstance(m, InputQuant))
    assert first.config() == quant.config()
    frames = random_frames((1, 8, 8), 200)
    np.testing.assert_array_equal(predict_scores(loaded, frames), predict_scores(model, frames))


def test_input_layer_is_hashable_and_compares():
    a = InputLayer(in_shape=(1, 2, 2), out_shape=(1, 2, 2), bits=8, table=list(range(256)))
    b = InputLayer(in_shape=(1, 2, 2), out_shape=(1, 2, 2), bits=8, table=tuple(range(256)))
    assert a.table == tuple(range(256)) and a.same_as(b) and hash(a) != 0
    assert not a.same_as(InputLayer(in_shape=(1, 2, 2), out_shape=(1, 2, 2), bits=8))
    with pytest.raises(ValueError, match="table must be 256 integers 0..255"):
        InputLayer(in_shape=(1,), out_shape=(1,), bits=8, table=(256,) * 256)


@pytest.mark.parametrize("kwargs,match", [
    ({"bits": 8, "levels": list(range(255))}, "levels must be a sequence of 256 integers"),
    ({"bits": 8, "levels": [0.5] * 256}, "levels must be a sequence of 256 integers"),
    ({"bits": 8, "levels": ["a"] * 256}, "levels must be a sequence of 256 integers"),
    ({"bits": 8, "levels": list(range(-1, 254)) + [300]}, r"levels span -1\.\.300 \(301 > 255\)"),
    ({"bits": 1, "levels": list(range(256))}, "levels need bits=8"),
    ({"bits": 1, "threshold": 0}, "threshold must be an integer 1..255, not 0"),
    ({"bits": 1, "threshold": 256}, "threshold must be an integer 1..255, not 256"),
    ({"bits": 1, "threshold": 7.5}, "threshold must be an integer 1..255, not 7.5"),
    ({"bits": 8, "threshold": 100}, "threshold=100 needs bits=1"),
])
def test_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        InputQuant(**kwargs)


def test_levels_accept_integral_arrays():
    assert InputQuant(8, levels=np.arange(256.0) - 3).levels == tuple(range(-3, 253))


@pytest.mark.parametrize("pad", [-128.0, 129.0, 0.5])
def test_pad_byte_out_of_range_is_corrected_per_class(pad):
    model = randomize_model(nn.Sequential(
        InputQuant(8, levels=cnv_levels()), BinaryConv2d(1, 4, 3, padding=1, pad_value=pad),
        nn.BatchNorm2d(4), BinaryActivation(), nn.Flatten(), BinaryLinear(256, 10)), 3)
    graph = assert_agree(model, (1, 8, 8))
    assert graph.op("conv0").classes == 9 and graph.op("conv0").pad_value == 0
