"""FoldThresholds and ChooseFolding: equivalence, exact thresholds, legal balanced foldings."""

from __future__ import annotations

import numpy as np
import pytest

import bnnforge
from bnnforge.compiler import FoldThresholds, fold_score_affine
from bnnforge.compiler.costs import estimate_brams, estimate_luts, folding_cost
from bnnforge.compiler.cycles import (
    input_buffer_in_ram,
    matrix_ops,
    pipeline_cycles,
    stage_cycles,
    transfers_per_vector,
)
from bnnforge.compiler.folding import ChooseFolding, FoldingError, divisors, parse_fold_overrides
from bnnforge.nn import archs
from conftest import random_frames, randomize_model, small_cnn, small_mlp


@pytest.mark.parametrize("bits", [1, 8])
@pytest.mark.parametrize("last_bn", [False, True])
def test_fold_thresholds_is_equivalent(bits, last_bn):
    model = randomize_model(small_cnn(bits, last_bn=last_bn), seed=11 + bits)
    raw = bnnforge.lower(model, (1, 8, 8), fold=False)
    folded = FoldThresholds().apply(raw)
    frames = random_frames((1, 8, 8), 3000, seed=3)
    before = bnnforge.reference(raw, frames, return_all=True)
    after = bnnforge.reference(folded, frames, return_all=True)
    for name in folded.order():
        if name == "scores":
            np.testing.assert_array_equal(before[name].argmax(1), after[name].argmax(1))
        else:
            np.testing.assert_array_equal(before[name], after[name])
    # the pass returns a new graph and leaves its argument unfolded
    assert not raw.op("conv0").folded and folded.op("conv0").folded


def test_thresholds_cover_negative_and_zero_scales():
    model = randomize_model(small_mlp(), seed=2)
    bn = model[3]
    bn.weight.data[:3] = 0.0
    bn.bias.data[0], bn.bias.data[1], bn.bias.data[2] = 1.0, -1.0, 0.0
    bn.weight.data[3] = -2.0
    raw = bnnforge.lower(model, (1, 8, 8), fold=False)
    op = FoldThresholds().apply(raw).op("fc0")
    k = op.k
    # zero scale: constant channels (0 = always on, k + 1 = never, b = 0 counts as on)
    assert op.thresholds[0] == 0 and op.thresholds[1] == k + 1 and op.thresholds[2] == 0
    # negative scale: the weight row is inverted; positive: kept
    a = raw.op("fc0").affine[0]
    assert a[3] < 0
    before, after = raw.op("fc0").weight_bits(), op.weight_bits()
    np.testing.assert_array_equal(after[a < 0], ~before[a < 0])
    np.testing.assert_array_equal(after[a > 0], before[a > 0])


def test_threshold_is_exact_at_the_boundary():
    # a * s + b >= 0 with a = 0.5, b = -1.5: s >= 3, s = 2P - K, K = 5 -> P >= 4
    from bnnforge.compiler.passes import _threshold
    assert _threshold(0.5, -1.5, 5, 1) == 4
    assert _threshold(0.5, -1.0, 5, 1) == 4    # s >= 2 -> P >= 3.5 -> 4
    assert _threshold(1.0, 0.0, 5, 8) == 0
    assert _threshold(2.0, 7.0, 5, 8) == -3    # A >= -3.5


def test_fold_score_affine_keeps_the_order():
    rng = np.random.default_rng(0)
    a = rng.normal(0, 1, 10)
    a[2] = 0.0
    b = rng.normal(0, 3, 10)
    domain = np.arange(-31, 32, 2)
    mul, add, gain = fold_score_affine(a, b, domain)
    v = a[:, None] * domain + b[:, None]
    u = mul[:, None] * domain + add[:, None]
    for i in range(v.shape[1]):
        for j in range(v.shape[1]):
            assert np.array_equal(np.argmax(v[:, [i]] + 0 * v[:, [j]], 0),
                                  np.argmax(u[:, [i]], 0))
    # argmax over random picks of one s per class agrees
    picks = rng.integers(0, v.shape[1], (2000, 10))
    rows = np.arange(10)
    assert np.array_equal(v[rows, picks].argmax(1), u[rows, picks].argmax(1))
    assert gain > 0


def test_fold_score_affine_is_identity_for_a_common_positive_scale():
    mul, add, gain = fold_score_affine(np.full(4, 0.25), np.zeros(4), np.arange(-3, 4, 2))
    assert mul.tolist() == [1] * 4 and add.tolist() == [0] * 4 and gain == 0.25


# -- ChooseFolding ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def cnn_graph():
    return bnnforge.lower(randomize_model(small_cnn(), 1), (1, 8, 8))


def test_divisors():
    assert divisors(12) == [1, 2, 3, 4, 6, 12] and divisors(1) == [1]


def test_folding_meets_a_target_and_is_legal(cnn_graph):
    for target in (600, 1000, 5000, 20000):
        g = ChooseFolding(target_cycles=target).apply(cnn_graph)
        cycles = pipeline_cycles(g)
        for name in matrix_ops(g):
            op, fold = g.op(name), g.attrs(name)["fold"]
            assert op.channels % fold["pe"] == 0 and op.k % fold["simd"] == 0
            assert cycles[name] <= target
        assert "fold" not in cnn_graph.attrs("conv0")   # input graph untouched


def test_folding_balances_the_pipeline(cnn_graph):
    g = ChooseFolding(target_cycles=1000).apply(cnn_graph)
    counts = transfers_per_vector(g)
    for name in matrix_ops(g):
        op, fold, n = g.op(name), g.attrs(name)["fold"], counts[name]
        # no folding of smaller cost (LUTs + block RAMs) meets the target: nothing is faster
        # than needed
        cost = folding_cost(op, fold["pe"], fold["simd"], n)
        cheaper = [(pe, s) for pe in divisors(op.channels) for s in divisors(op.k)
                   if folding_cost(op, pe, s, n) < cost and stage_cycles(op, pe, s) <= 1000]
        assert not cheaper, (name, fold, cheaper)


def test_folding_cost_counts_the_input_buffer():
    """A 784-pixel input read 196 bits a step costs 1,568 registers; 28 bits a step from a
    block RAM costs a gather register: the RAM-friendly folding is cheaper though it has more
    lanes (the iCEBreaker tfc build)."""
    op = bnnforge.lower(randomize_model(archs.build("tfc", (1, 28, 28), 10), 0), (1, 28, 28))
    op = op.op(op.order()[1])
    assert input_buffer_in_ram(784, 196, 28) and not input_buffer_in_ram(784, 196, 196)
    assert estimate_luts(op, 1, 196, 196) > estimate_luts(op, 1, 196, 1) - 1 > 2 * 784
    assert folding_cost(op, 8, 28, 196) < folding_cost(op, 1, 196, 196)
    assert estimate_brams(op, 8, 28, 196) < estimate_brams(op, 1, 196, 196) + 13
    assert ChooseFolding.cheapest(op, 300, count=196) == (8, 28)


def test_folding_under_a_lut_budget_is_fastest_that_fits(cnn_graph):
    small = ChooseFolding(luts=2000).apply(cnn_graph)
    large = ChooseFolding(luts=50000).apply(cnn_graph)
    counts = transfers_per_vector(small)
    total = sum(estimate_luts(small.op(n), small.attrs(n)["fold"]["pe"],
                              small.attrs(n)["fold"]["simd"], counts[n])
                for n in matrix_ops(small))
    assert total <= 2000
    assert max(pipeline_cycles(large).values()) <= max(pipeline_cycles(small).values())
    with pytest.raises(FoldingError, match=r"even the most serial design needs about \d+ LUTs, "
                                           r"over the budget of 10: raise --luts"):
        ChooseFolding(luts=10).apply(cnn_graph)


def test_fold_override_and_its_errors(cnn_graph):
    g = ChooseFolding(overrides={"fc0": (4, 8)}).apply(cnn_graph)
    assert g.attrs("fc0")["fold"] == {"pe": 4, "simd": 8}
    with pytest.raises(FoldingError, match=r"illegal folding fc0=3,7: PE must divide 20 "
                                           r"\(legal: 1, 2, 4, 5, 10, 20\); SIMD must divide "
                                           r"K=48 \(legal: 1, 2, 3, 4, 6, 8, 12, 16, 24, 48\)"):
        ChooseFolding(overrides={"fc0": (3, 7)}).apply(cnn_graph)
    with pytest.raises(FoldingError, match=r"--fold names no foldable stage 'fc9'; stages: "
                                           r"conv0, conv1, fc0, scores"):
        ChooseFolding(overrides={"fc9": (1, 1)}).apply(cnn_graph)
    with pytest.raises(FoldingError, match=r"--fold 'fc0=4' is not LAYER=PE,SIMD"):
        parse_fold_overrides(["fc0=4"])


def test_folding_target_faster_than_the_input_is_refused(cnn_graph):
    with pytest.raises(FoldingError, match=r"faster than the streaming stages allow \(100 cycles"):
        ChooseFolding(target_cycles=10).apply(cnn_graph)


def test_folding_equivalence(cnn_graph):
    frames = random_frames((1, 8, 8), 500)
    g = ChooseFolding(target_cycles=700).apply(cnn_graph)
    np.testing.assert_array_equal(bnnforge.reference(cnn_graph, frames),
                                  bnnforge.reference(g, frames))


def test_folding_raises_pixels_per_transfer_when_the_input_is_the_bottleneck():
    graph = bnnforge.lower(randomize_model(small_mlp(1, hidden=16), 1), (1, 8, 8))
    assert "pixels_per_transfer" not in ChooseFolding(target_cycles=64).apply(graph).attrs(
        "input")
    g = ChooseFolding(target_cycles=20).apply(graph)
    assert g.attrs("input")["pixels_per_transfer"] == 4     # smallest P with 64 / P <= 20
    cycles = pipeline_cycles(g)
    assert cycles["input"] == 16 and max(cycles.values()) <= 20
    assert "pixels_per_transfer" not in graph.attrs("input")    # input graph untouched
    g = ChooseFolding(target_cycles=20, overrides={"input": (8, 1)}).apply(graph)
    assert g.attrs("input")["pixels_per_transfer"] == 8 and pipeline_cycles(g)["input"] == 8
    with pytest.raises(FoldingError, match=r"target of 20 cycles per frame is faster than the "
                                           r"streaming stages allow \(64 cycles per frame: one "
                                           r"input transfer of 1 pixel"):
        ChooseFolding(target_cycles=20, overrides={"input": (1, 1)}).apply(graph)
    with pytest.raises(FoldingError, match=r"\(4 cycles per frame: one input transfer of 16 "
                                           r"pixel\(s\)"):
        ChooseFolding(target_cycles=3).apply(graph)
    with pytest.raises(FoldingError, match=r"stage 'input': pixels_per_transfer must divide the "
                                           r"64 pixels of a frame \(legal: 1, 2, 4, 8, 16, 32, "
                                           r"64\), not 3"):
        ChooseFolding(target_cycles=20, overrides={"input": (3, 1)}).apply(graph)
    # a convolution's window generator still reads one pixel a cycle: P does not help there
    cnn = bnnforge.lower(randomize_model(small_cnn(), 1), (1, 8, 8))
    with pytest.raises(FoldingError, match=r"faster than the streaming stages allow"):
        ChooseFolding(target_cycles=40).apply(cnn)
