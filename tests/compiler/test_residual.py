"""Branching graphs: residual sums and concatenations from torch to the IR and the reference.

Every model here is lowered, folded and run by the reference executor, and compared with torch
in eval mode on every frame: the argmax (the scores too where they are exact) and the value of
every stage (bits, and the popcounts that feed a residual join).
"""

from __future__ import annotations

import dataclasses

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
    Concat,
    DataflowGraph,
    FoldThresholds,
    GraphFileError,
    InputLayer,
    MaxPool,
    OrderChannelsByMST,
    ResidualAdd,
    ScoreLayer,
    UnsupportedModelError,
    analyse_graph,
    load_graph,
    pack_bits,
    save_graph,
)
from bnnforge.compiler.serialize import graph_bytes
from bnnforge.nn import BinaryActivation, BinaryConv2d, BinaryLinear, InputQuant, predict_scores
from conftest import random_frames, randomize_model

QUANTIZERS = ["ste", "approx_sign", "reste", "biper"]


def _bits(t: torch.Tensor) -> np.ndarray:
    """A torch ±1 tensor as the reference's booleans: (N, C, H, W) -> (N, H, W, C)."""
    a = t.detach().numpy() >= 0
    return a.transpose(0, 2, 3, 1) if a.ndim == 4 else a.reshape(a.shape[0], 1, 1, -1)


def _counts(t: torch.Tensor, k: int) -> np.ndarray:
    """A binary layer's torch output s (scale "none") as the popcount P = (s + K) / 2."""
    s = t.detach().numpy().astype(np.int64)
    s = s.transpose(0, 2, 3, 1) if s.ndim == 4 else s.reshape(s.shape[0], 1, 1, -1)
    return (s + k) // 2


def check(model, shape, frames, expected=None, exact=True):
    """Lower ``model`` unfolded and folded; both must agree with torch and with each other.

    ``expected(x)`` returns ``{stage: torch tensor}``: ±1 tensors for bit stages, for popcount
    stages the layer's torch output s (checked as P in the unfolded graph, and as P or K - P by
    the inverted rows in the folded one).
    """
    raw = bnnforge.lower(model, shape, fold=False)
    folded = FoldThresholds().apply(raw)
    before = bnnforge.reference(raw, frames, return_all=True)
    after = bnnforge.reference(folded, frames, return_all=True)
    scores = predict_scores(model, frames)
    np.testing.assert_array_equal(after["scores"].argmax(1), scores.argmax(1))
    if exact:
        np.testing.assert_array_equal(after["scores"], scores)
    for name in folded.order():
        if name != "scores" and getattr(folded.op(name), "emit", "bits") == "bits":
            np.testing.assert_array_equal(before[name], after[name], err_msg=name)
    if expected is not None:
        with torch.no_grad():
            want = expected(torch.as_tensor(frames, dtype=torch.float32) / 255.0)
        for name, tensor in want.items():
            op = folded.op(name)
            if getattr(op, "emit", "bits") == "popcount":
                p = _counts(tensor, op.k)
                np.testing.assert_array_equal(before[name], p, err_msg=name)
                inverted = op.weight_bits()[:, 0] != raw.op(name).weight_bits()[:, 0]
                np.testing.assert_array_equal(after[name], np.where(inverted, op.k - p, p),
                                              err_msg=name)
            else:
                np.testing.assert_array_equal(after[name], _bits(tensor), err_msg=name)
    return folded


# -- models ----------------------------------------------------------------------------------

class Identity(nn.Module):
    """stem conv -> act(bn(conv(x)) + x) -> fc: one identity block at 8x8."""

    def __init__(self, q="ste", bits=1, c=6):
        super().__init__()
        self.q = InputQuant(bits)
        self.stem = BinaryConv2d(1, c, 3, padding=1, pad_value=-1.0 if bits == 1 else 0.0,
                                 weight_quantizer=q)
        self.stem_bn, self.stem_act = nn.BatchNorm2d(c), BinaryActivation(q)
        self.conv, self.bn, self.act = BinaryConv2d(c, c, 3, padding=1, weight_quantizer=q), \
            nn.BatchNorm2d(c), BinaryActivation(q)
        self.fc = BinaryLinear(c * 64, 10, q)

    def parts(self, x):
        a = self.stem_act(self.stem_bn(self.stem(self.q(x))))
        s = self.conv(a)
        return a, s, self.act(self.bn(s) + a)

    def expected(self, x):
        a, s, y = self.parts(x)
        return {"conv0": a, "conv1": s, "add0": y}

    def forward(self, x):
        return self.fc(torch.flatten(self.parts(x)[2], 1))


class Projection(nn.Module):
    """act(bn(conv3x3 stride 2 (x)) + bn_s(conv1x1 stride 2 (x))) on the binarized input."""

    def __init__(self, q="ste"):
        super().__init__()
        self.q = InputQuant(1)
        self.conv, self.bn = BinaryConv2d(1, 8, 3, stride=2, padding=1, weight_quantizer=q), \
            nn.BatchNorm2d(8)
        self.short, self.short_bn = BinaryConv2d(1, 8, 1, stride=2, weight_quantizer=q), \
            nn.BatchNorm2d(8)
        self.act = BinaryActivation(q)
        self.fc = BinaryLinear(8 * 16, 10, q)

    def expected(self, x):
        x = self.q(x)
        s, s2 = self.conv(x), self.short(x)
        return {"conv0": s, "conv1": s2, "add0": self.act(self.bn(s) + self.short_bn(s2))}

    def forward(self, x):
        return self.fc(torch.flatten(self.expected(x)["add0"], 1))


class CatNet(nn.Module):
    """Two branches on one binary map, concatenated (torch.cat dim=1) and max-pooled."""

    def __init__(self, q="ste"):
        super().__init__()
        self.q = InputQuant(1)
        self.a, self.a_bn = BinaryConv2d(1, 3, 3, padding=1, weight_quantizer=q), \
            nn.BatchNorm2d(3)
        self.b, self.b_bn = BinaryConv2d(1, 5, 1, weight_quantizer=q), nn.BatchNorm2d(5)
        self.act_a, self.act_b = BinaryActivation(q), BinaryActivation(q)
        self.pool = nn.MaxPool2d(2)
        self.fc = BinaryLinear(9 * 16, 10, q)

    def expected(self, x):
        x = self.q(x)
        a, b = self.act_a(self.a_bn(self.a(x))), self.act_b(self.b_bn(self.b(x)))
        cat = torch.cat([a, b, x], dim=1)
        return {"conv0": a, "conv1": b, "cat0": cat, "pool0": self.pool(cat)}

    def forward(self, x):
        return self.fc(torch.flatten(self.expected(x)["pool0"], 1))


class Shared(nn.Module):
    """One activation module called at three places, two identity blocks and a concat."""

    def __init__(self, q="ste"):
        super().__init__()
        self.q = InputQuant(1)
        self.act = BinaryActivation(q)
        self.c0, self.b0 = BinaryConv2d(1, 4, 3, padding=1, weight_quantizer=q), \
            nn.BatchNorm2d(4)
        self.c1, self.b1 = BinaryConv2d(4, 4, 3, padding=1, weight_quantizer=q), \
            nn.BatchNorm2d(4)
        self.c2, self.b2 = BinaryConv2d(4, 4, 3, padding=1, weight_quantizer=q), \
            nn.BatchNorm2d(4)
        self.fc = BinaryLinear(8 * 64, 10, q)

    def forward(self, x):
        x = self.act(self.b0(self.c0(self.q(x))))
        y = self.act(self.b1(self.c1(x)) + x)
        z = self.act(torch.add(self.b2(self.c2(y)), y))
        return self.fc(torch.flatten(torch.cat((x, z), 1), 1))


class DenseResidual(nn.Module):
    """Not a reference architecture: a residual MLP on vectors, a shortcut straight from the
    binarized input, a forked stream read by two later layers, and a BatchNorm'd score layer."""

    def __init__(self, q="ste"):
        super().__init__()
        self.q, self.flat = InputQuant(1, threshold=90), nn.Flatten()
        self.fc0, self.bn0 = BinaryLinear(64, 64, q), nn.BatchNorm1d(64)
        self.fc1, self.bn1 = BinaryLinear(64, 24, q), nn.BatchNorm1d(24)
        self.fc2, self.bn2 = BinaryLinear(24, 24, q), nn.BatchNorm1d(24)
        self.act = BinaryActivation(q)
        self.out, self.out_bn = BinaryLinear(48, 7, q), nn.BatchNorm1d(7)

    def expected(self, x):
        x = self.flat(self.q(x))
        h = self.act(self.bn0(self.fc0(x)) + x)            # shortcut from the input bits
        g = self.act(self.bn1(self.fc1(h)))
        r = self.act(operator_add(self.bn2(self.fc2(g)), g))
        return {"add0": h, "fc1": g, "add1": r, "cat0": torch.cat([r, g], dim=1)}

    def forward(self, x):
        return self.out_bn(self.out(self.expected(x)["cat0"]))


def operator_add(a, b):
    import operator
    return operator.add(a, b)


# -- agreement -------------------------------------------------------------------------------

@pytest.mark.parametrize("bits", [1, 8])
@pytest.mark.parametrize("quantizer", QUANTIZERS)
def test_identity_block_agrees(bits, quantizer):
    model = randomize_model(Identity(quantizer, bits), seed=bits)
    frames = random_frames((1, 8, 8), 1500, seed=1)
    exact = quantizer in ("ste", "approx_sign")
    graph = check(model, (1, 8, 8), frames, model.expected if exact else None, exact)
    assert [type(op) for _, op in graph] == [InputLayer, BinaryConv, BinaryConv, ResidualAdd,
                                             ScoreLayer]
    assert graph.inputs("add0") == ["conv1", "conv0"] and graph.consumers("conv0") == [
        "conv1", "add0"]
    add, main = graph.op("add0"), graph.op("conv1")
    assert main.emit == "popcount" and main.thresholds is None and main.folded
    assert main.out_bits == 6 and add.short == "bits" and add.short_k == 0
    assert add.thresholds.shape == (2, 6) and add.thresholds.dtype == np.int64
    assert graph.attrs("add0")["source"] == "add" and graph.attrs("conv1")["source"] == "conv"
    assert not graph.is_chain()


@pytest.mark.parametrize("quantizer", QUANTIZERS)
def test_projection_block_agrees(quantizer):
    model = randomize_model(Projection(quantizer), seed=3)
    exact = quantizer in ("ste", "approx_sign")
    graph = check(model, (1, 8, 8), random_frames((1, 8, 8), 1500, seed=2),
                  model.expected if exact else None, exact)
    add = graph.op("add0")
    assert graph.inputs("add0") == ["conv0", "conv1"]       # the larger K is the main path
    assert (add.main_k, add.short, add.short_k) == (9, "popcount", 1)
    assert add.thresholds.shape == (2, 8)
    assert graph.op("conv1").emit == "popcount" and graph.op("conv1").kernel == (1, 1)
    assert graph.consumers("input") == ["conv0", "conv1"]


def test_concat_agrees():
    model = randomize_model(CatNet(), seed=4)
    graph = check(model, (1, 8, 8), random_frames((1, 8, 8), 1500, seed=3), model.expected)
    cat = graph.op("cat0")
    assert isinstance(cat, Concat) and cat.parts == (3, 5, 1) and cat.out_shape == (9, 8, 8)
    assert graph.inputs("cat0") == ["conv0", "conv1", "input"]
    assert isinstance(graph.op("pool0"), MaxPool) and graph.inputs("pool0") == ["cat0"]


@pytest.mark.parametrize("quantizer", QUANTIZERS)
def test_shared_activation_agrees(quantizer):
    model = randomize_model(Shared(quantizer), seed=5)
    graph = check(model, (1, 8, 8), random_frames((1, 8, 8), 1500, seed=4),
                  exact=quantizer in ("ste", "approx_sign"))
    assert graph.order() == ["input", "conv0", "conv1", "add0", "conv2", "add1", "cat0",
                             "scores"]
    assert graph.inputs("add1") == ["conv2", "add0"] and graph.inputs("cat0") == ["conv0",
                                                                                 "add1"]
    assert graph.consumers("conv0") == ["conv1", "add0", "cat0"]


def test_hand_written_dense_residual_agrees():
    model = randomize_model(DenseResidual(), seed=6)
    graph = check(model, (64,), random_frames((64,), 2000, seed=5), model.expected,
                  exact=False)
    assert [type(op) for _, op in graph] == [InputLayer, BinaryDense, ResidualAdd, BinaryDense,
                                             BinaryDense, ResidualAdd, Concat, ScoreLayer]
    assert graph.inputs("add0") == ["fc0", "input"] and graph.op("add0").in_shape == (64,)
    assert graph.consumers("fc1") == ["fc2", "add1", "cat0"]


def test_constant_channels_and_negative_scales():
    model = randomize_model(Identity(), seed=7)
    with torch.no_grad():
        model.bn.weight[:] = torch.tensor([0.0, 0.0, 0.0, -1.5, -0.2, 2.0])
        model.bn.bias[:3] = torch.tensor([0.5, -1.5, -1.0])    # +x ±1: on/on-or-off/off, tie
        model.stem_bn.weight[0] = 0.0
    frames = random_frames((1, 8, 8), 1500, seed=6)
    graph = check(model, (1, 8, 8), frames, model.expected)
    t, k = graph.op("add0").thresholds, graph.op("add0").main_k
    # a = 0: b + x >= 0 decides; row 0 is x = -1, row 1 x = +1 (b = -1, x = +1: 0 counts as on)
    np.testing.assert_array_equal(t[:, :3], [[k + 1, k + 1, k + 1], [0, k + 1, 0]])
    raw = bnnforge.lower(model, (1, 8, 8), fold=False)
    a = raw.op("add0").affine[0]
    assert np.all(a[3:5] < 0) and a[5] > 0
    before, after = raw.op("conv1").weight_bits(), graph.op("conv1").weight_bits()
    np.testing.assert_array_equal(after[a < 0], ~before[a < 0])
    np.testing.assert_array_equal(after[a >= 0], before[a >= 0])


def test_thresholds_are_exact_at_the_boundary():
    # a s + b + x >= 0 with a = 0.5, b = -1.5, K = 5 (s = 2P - 5): x = -1 -> s >= 5 -> P >= 5;
    # x = +1 -> s >= 1 -> P >= 3
    from bnnforge.compiler import fold_residual
    op = ResidualAdd(in_shape=(1,), out_shape=(1,), main_k=5,
                     affine=np.array([[0.5], [-1.5]]))
    folded, invert = fold_residual(op)
    np.testing.assert_array_equal(folded.thresholds, [[5], [3]])
    assert not invert.any() and folded.affine is None
    # popcount shortcut, K2 = 2: a2 = 1, b2 = 0 -> s2 in {-2, 0, 2}; a = -1 inverts the row
    op = ResidualAdd(in_shape=(1,), out_shape=(1,), main_k=4, short="popcount", short_k=2,
                     affine=np.array([[-1.0], [0.0]]), short_affine=np.array([[1.0], [0.0]]))
    folded, invert = fold_residual(op)
    assert invert.all()                        # -s + s2 >= 0 -> s' >= -s2 -> P' >= (4 - s2)/2
    np.testing.assert_array_equal(folded.thresholds[:, 0], [3, 2, 1])


class _RandomNet(nn.Module):
    """A stem and a list of blocks: ("id", pad) identity, ("proj", c, stride, k, pad)
    projection, ("cat", c) concatenation of a new branch, ("pool",) max-pool."""

    def __init__(self, q, bits, c, shape, plan, classes, hidden):
        super().__init__()
        self.q = InputQuant(bits)
        self.stem = BinaryConv2d(shape[0], c, 3, padding=1, weight_quantizer=q,
                                 pad_value=0.0 if bits == 8 else -1.0)
        self.stem_bn, self.act = nn.BatchNorm2d(c), BinaryActivation(q)
        self.plan, self.mods = plan, nn.ModuleList()
        h, w = shape[1:]
        for item in plan:
            if item[0] == "id":
                self.mods.append(nn.ModuleList([
                    BinaryConv2d(c, c, 3, padding=1, pad_value=item[1], weight_quantizer=q),
                    nn.BatchNorm2d(c)]))
            elif item[0] == "proj":
                _, co, st, k, pad = item
                self.mods.append(nn.ModuleList([
                    BinaryConv2d(c, co, k, stride=st, padding=k // 2, pad_value=pad,
                                 weight_quantizer=q), nn.BatchNorm2d(co),
                    BinaryConv2d(c, co, 1, stride=st, weight_quantizer=q), nn.BatchNorm2d(co)]))
                c, h, w = co, (h - 1) // st + 1, (w - 1) // st + 1
            elif item[0] == "cat":
                self.mods.append(nn.ModuleList([
                    BinaryConv2d(c, item[1], 1, weight_quantizer=q), nn.BatchNorm2d(item[1])]))
                c += item[1]
            else:
                self.mods.append(nn.ModuleList([nn.MaxPool2d(2)]))
                h, w = h // 2, w // 2
        self.fc = BinaryLinear(c * h * w, hidden, q)
        self.fc_bn = nn.BatchNorm1d(hidden)
        self.out = BinaryLinear(hidden, classes, q)

    def forward(self, x):
        x = self.act(self.stem_bn(self.stem(self.q(x))))
        for item, m in zip(self.plan, self.mods, strict=True):
            if item[0] == "id":
                x = self.act(m[1](m[0](x)) + x)
            elif item[0] == "proj":
                x = self.act(m[1](m[0](x)) + m[3](m[2](x)))
            elif item[0] == "cat":
                x = torch.cat([x, self.act(m[1](m[0](x)))], dim=1)
            else:
                x = m[0](x)
        return self.out(self.act(self.fc_bn(self.fc(torch.flatten(x, 1)))))


@st.composite
def residual_nets(draw):
    q = draw(st.sampled_from(QUANTIZERS))
    bits = draw(st.sampled_from([1, 8]))
    shape = (draw(st.integers(1, 2)), draw(st.integers(4, 9)), draw(st.integers(4, 9)))
    c, h, w = draw(st.integers(1, 6)), shape[1], shape[2]
    plan = []
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["id", "proj", "cat", "pool"]))
        pad = draw(st.sampled_from([-1.0, 1.0]))
        if kind == "id":
            plan.append(("id", pad))
        elif kind == "proj":
            st_, k = draw(st.integers(1, 2)), draw(st.sampled_from([1, 3]))
            co = draw(st.integers(1, 7))
            plan.append(("proj", co, st_, k, pad))
            h, w = (h - 1) // st_ + 1, (w - 1) // st_ + 1
        elif kind == "cat":
            plan.append(("cat", draw(st.integers(1, 4))))
        elif min(h, w) >= 2:
            plan.append(("pool",))
            h, w = h // 2, w // 2
    model = _RandomNet(q, bits, c, shape, plan, draw(st.integers(2, 6)), draw(st.integers(1, 20)))
    return model, shape, draw(st.integers(0, 2**16))


@settings(max_examples=30, deadline=None)
@given(residual_nets())
def test_random_residual_nets_agree(net):
    model, shape, seed = net
    randomize_model(model, seed)
    check(model, shape, random_frames(shape, 300, seed=seed), exact=False)


# -- refusals: the node and the fix ------------------------------------------------------------

class _Body(nn.Module):
    """A stem (binary 4x8x8 map ``x``; ``q`` is the quantized input) and ``body(self, q, x)``,
    then a score layer sized for whatever the body returns."""

    def __init__(self, body, c=4):
        super().__init__()
        self.q = InputQuant(1)
        self.c0, self.b0 = BinaryConv2d(1, c, 3, padding=1), nn.BatchNorm2d(c)
        self.c1, self.b1 = BinaryConv2d(c, c, 3, padding=1), nn.BatchNorm2d(c)
        self.c2, self.b2 = BinaryConv2d(c, c, 1), nn.BatchNorm2d(c)
        self.zero = BinaryConv2d(c, c, 3, padding=1, pad_value=0.0)
        self.act, self.pool = BinaryActivation(), nn.MaxPool2d(2)
        self.body = body
        with torch.no_grad():
            n = self._features(torch.zeros(2, 1, 8, 8)).shape[1]
        self.fc = BinaryLinear(n, 3)

    def _features(self, x):
        q = self.q(x)
        x = self.act(self.b0(self.c0(q)))
        return torch.flatten(self.body(self, q, x), 1)

    def forward(self, x):
        return self.fc(self._features(x))


REFUSALS = {
    "two binary tensors": (lambda m, q, x: m.act(x + m.act(m.b1(m.c1(x)))),
                           r"the sum 'add' adds two binary tensors \('conv0', 'conv1'\); one "
                           r"term must be a BinaryConv2d or BinaryLinear output"),
    "three terms": (lambda m, q, x: m.act(m.b1(m.c1(x)) + x + m.b2(m.c2(x))),
                    r"the sum 'add_1' adds to the sum 'add' \(before its BinaryActivation\), a "
                    r"sum of three terms; .* put a BinaryActivation after the first sum"),
    "constant": (lambda m, q, x: m.act(m.b1(m.c1(x)) + 1.0),
                 r"the sum 'add' \(add\) adds a constant to a tensor; fold constants into a "
                 r"BatchNorm"),
    "alpha": (lambda m, q, x: m.act(torch.add(m.b1(m.c1(x)), x, alpha=2)),
              r"the sum 'add' \(add\) scales a term \(alpha=2\); bnnforge folds plain sums "
              r"of two tensors"),
    "fork before activation": (lambda m, q, x: (lambda y: m.act(y) + m.act(m.b2(y)))(m.c1(x)),
                               r"the output of 'c1' feeds 2 operations before a "
                               r"BinaryActivation; only binary tensors may branch"),
    "batchnorm after sum": (lambda m, q, x: m.act(m.b2(m.c1(x) + x)),
                            r"BatchNorm2d 'b2' follows the sum 'add'; put the BatchNorm on the "
                            r"layer before the sum"),
    "pool between sum and act": (lambda m, q, x: m.act(m.pool(m.b1(m.c1(x)) + x)),
                                 r"MaxPool2d 'pool' sits between the sum 'add' and its "
                                 r"BinaryActivation"),
    "flatten between sum and act": (lambda m, q, x: m.act(torch.flatten(m.b1(m.c1(x)) + x, 1)),
                                    r"Flatten 'flatten' sits between the sum 'add' and its "
                                    r"BinaryActivation"),
    "conv after sum": (lambda m, q, x: m.act(m.b2(m.c2(m.b1(m.c1(x)) + x))),
                       r"BinaryConv2d 'c2' follows the sum 'add' without a BinaryActivation"),
    "zero pad": (lambda m, q, x: m.act(m.b1(m.zero(x)) + x),
                 r"the sum 'add' adds 'zero', which pads with 0.0; a summed convolution must "
                 r"pad with -1 or \+1"),
    "cat dim": (lambda m, q, x: torch.cat([x, x], dim=2),
                r"the concatenation 'cat' \(cat\) joins along dim=2; bnnforge concatenates "
                r"channels only"),
    "cat before activation": (lambda m, q, x: m.act(torch.cat([m.b1(m.c1(x)), x], dim=1)),
                              r"the concatenation 'cat' joins 'c1' \(before its "
                              r"BinaryActivation\); concatenate binary tensors"),
    "cat of the 8-bit input": (lambda m, q, x: torch.cat([q, x], dim=1), None),
    "cat with itself": (lambda m, q, x: torch.cat([x, x], dim=1),
                        r"the concatenation 'cat' joins a tensor with itself"),
    "itself": (lambda m, q, x: m.act(x + x), r"the sum 'add' adds a tensor to itself"),
    "other op": (lambda m, q, x: x * m.act(m.b1(m.c1(x))),
                 r"operation 'mul' \(mul\) combines several tensors; bnnforge combines tensors "
                 r"only by sums \(x \+ y\) and channel concatenation"),
}


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_refusals(case):
    body, match = REFUSALS[case]
    model = _Body(body)
    if match is None:             # the binarized input is a binary tensor: fine
        check(randomize_model(model, 1), (1, 8, 8), random_frames((1, 8, 8), 300))
        return
    with pytest.raises(UnsupportedModelError, match=match) as err:
        bnnforge.lower(model.eval(), (1, 8, 8))
    assert "\n" not in str(err.value)


def test_refuses_the_8bit_input_as_a_term():
    class Short8(nn.Module):
        def __init__(self, cat):
            super().__init__()
            self.q = InputQuant(8)
            self.conv, self.bn = BinaryConv2d(1, 1, 3, padding=1, pad_value=0.0), \
                nn.BatchNorm2d(1)
            self.act, self.fc = BinaryActivation(), BinaryLinear(128 if cat else 64, 2)
            self.cat = cat

        def forward(self, x):
            q = self.q(x)
            y = self.bn(self.conv(q))
            y = torch.cat([self.act(y), q], 1) if self.cat else self.act(y + q)
            return self.fc(torch.flatten(y, 1))

    with pytest.raises(UnsupportedModelError, match=r"the sum 'add' adds the 8-bit input; a "
                                                    r"shortcut must be a binary tensor"):
        bnnforge.lower(Short8(False).eval(), (1, 8, 8))
    with pytest.raises(UnsupportedModelError, match=r"the concatenation 'cat' joins the 8-bit "
                                                    r"input; concatenate binary tensors"):
        bnnforge.lower(Short8(True).eval(), (1, 8, 8))


def test_refuses_a_summed_layer_on_the_8bit_input():
    class Stem8(nn.Module):
        def __init__(self):
            super().__init__()
            self.q = InputQuant(8)
            self.conv, self.bn = BinaryConv2d(1, 2, 3, padding=1, pad_value=0.0), \
                nn.BatchNorm2d(2)
            self.short, self.sbn = BinaryConv2d(1, 2, 1), nn.BatchNorm2d(2)
            self.act, self.fc = BinaryActivation(), BinaryLinear(128, 2)

        def forward(self, x):
            q = self.q(x)
            y = self.act(self.bn(self.conv(q)) + self.sbn(self.short(q)))
            return self.fc(torch.flatten(y, 1))

    with pytest.raises(UnsupportedModelError, match=r"the sum 'add' adds 'conv', which reads "
                                                    r"the 8-bit input; a summed layer needs "
                                                    r"binary inputs"):
        bnnforge.lower(Stem8().eval(), (1, 8, 8))


def test_refuses_a_model_that_ends_with_a_sum():
    class EndsWithSum(nn.Module):
        def __init__(self):
            super().__init__()
            self.q, self.flat, self.fc = InputQuant(1), nn.Flatten(), BinaryLinear(64, 64)

        def forward(self, x):
            x = self.flat(self.q(x))
            return self.fc(x) + x

    with pytest.raises(UnsupportedModelError, match=r"must end with a BinaryLinear that gives "
                                                    r"the class scores"):
        bnnforge.lower(EndsWithSum().eval(), (64,))


# -- the IR ------------------------------------------------------------------------------------

def _tiny_graph() -> DataflowGraph:
    """input -> conv0 (popcount) -> add0 <- input; add0 -> cat0 <- input; fc; scores."""
    rng = np.random.default_rng(0)
    g = DataflowGraph("tiny")
    g.add("input", InputLayer(in_shape=(2, 3, 3), out_shape=(2, 3, 3)), inputs=[])
    w = pack_bits(rng.random((2, 18)) < 0.5)
    g.add("conv0", BinaryConv(in_shape=(2, 3, 3), out_shape=(2, 3, 3), k=18, channels=2,
                              weights=w, kernel=(3, 3), padding=(1, 1), emit="popcount"))
    g.add("add0", ResidualAdd(in_shape=(2, 3, 3), out_shape=(2, 3, 3), main_k=18,
                              thresholds=np.array([[9, 0], [5, 19]])), inputs=["conv0", "input"])
    g.add("cat0", Concat(in_shape=(4, 3, 3), out_shape=(4, 3, 3), parts=(2, 2)),
          inputs=["input", "add0"])
    g.add("scores", ScoreLayer(in_shape=(4, 3, 3), out_shape=(3,), k=36, channels=3,
                               weights=pack_bits(rng.random((3, 36)) < 0.5),
                               mul=np.ones(3, np.int64), add=np.zeros(3, np.int64)))
    return g


def test_graph_api():
    g = _tiny_graph()
    assert g.order() == ["input", "conv0", "add0", "cat0", "scores"]
    assert g.input_node() == "input" and g.output_node() == "scores" and not g.is_chain()
    assert g.inputs("add0") == ["conv0", "input"] and g.inputs("input") == []
    assert g.consumers("input") == ["conv0", "add0", "cat0"] and g.consumers("scores") == []
    assert g.port("input", "add0") == 1 and g.port("input", "cat0") == 0
    edge = g.nx.edges["conv0", "add0"]
    assert edge == {"shape": (2, 3, 3), "bits": 5, "port": 0}
    assert g.nx.edges["input", "add0"]["bits"] == 1
    assert g.fifo_depths("add0") == [2, 2] and g.fifo_depths("conv0") == [2]
    g.attrs("add0")["fifo_depth"] = [0, 7]
    assert g.fifo_depths("add0") == [0, 7]
    g.attrs("add0")["fifo_depth"] = [1]
    with pytest.raises(ValueError, match=r"stage 'add0': fifo_depth must list 2 depths"):
        g.fifo_depths("add0")
    out = bnnforge.reference(_tiny_graph(), random_frames((2, 3, 3), 50), return_all=True)
    assert out["conv0"].dtype == np.int64 and out["conv0"].max() <= 18
    assert out["add0"].dtype == bool and out["cat0"].shape == (50, 3, 3, 4)
    np.testing.assert_array_equal(out["add0"][..., 1], ~out["input"][..., 1])  # T = 0 | 19
    np.testing.assert_array_equal(out["add0"][..., 0], np.where(
        out["input"][..., 0], out["conv0"][..., 0] >= 5, out["conv0"][..., 0] >= 9))
    np.testing.assert_array_equal(out["cat0"], np.concatenate([out["input"], out["add0"]], -1))


def test_order_breaks_ties_by_insertion():
    g = DataflowGraph()
    g.add("input", InputLayer(in_shape=(4,), out_shape=(4,)))
    for name in ("zeta", "alpha"):
        g.add(name, MaxPool(in_shape=(4,), out_shape=(4,)), inputs=["input"])
    g.add("cat", Concat(in_shape=(8,), out_shape=(8,), parts=(4, 4)), inputs=["zeta", "alpha"])
    assert g.order() == ["input", "zeta", "alpha", "cat"]
    assert g.copy().order() == g.order()


def test_graph_add_errors():
    g = _tiny_graph()
    cat = Concat(in_shape=(4, 3, 3), out_shape=(4, 3, 3), parts=(2, 2))
    with pytest.raises(ValueError, match=r"stage 'x' \(Concat\) takes 2 input\(s\), not 1"):
        g.add("x", cat, inputs=["input"])
    with pytest.raises(ValueError, match=r"stage 'x' reads 'nope', which is not in the graph"):
        g.add("x", cat, inputs=["input", "nope"])
    with pytest.raises(ValueError, match=r"each producer may feed one port"):
        g.add("x", cat, inputs=["input", "input"])
    with pytest.raises(ValueError, match=r"stage 'x' expects shape \(2, 3, 3\) on port 1, but "
                                         r"'cat0' produces \(4, 3, 3\)"):
        g.add("x", cat, inputs=["input", "cat0"])


def test_graph_checks_popcount_streams():
    g = _tiny_graph()
    add = g.op("add0")
    with pytest.raises(ValueError, match=r"ResidualAdd 'x' port 0 needs a popcount stage of "
                                         r"K=18, not 'input' \(InputLayer, emit='bits', "
                                         r"out_bits=1\)"):
        g.add("x", add, inputs=["input", "add0"])
    pop = dataclasses.replace(g.op("conv0"))
    g.add("pop", pop, inputs=["input"])
    with pytest.raises(ValueError, match=r"stage 'x' reads the popcounts of 'pop'; only a "
                                         r"ResidualAdd takes popcounts"):
        g.add("x", MaxPool(in_shape=(2, 3, 3), out_shape=(2, 1, 1)), inputs=["pop"])
    with pytest.raises(ValueError, match=r"ResidualAdd 'x' port 1 needs a binary stream, not "
                                         r"'conv0' \(BinaryConv, emit='popcount', out_bits=5\)"):
        g.add("x", add, inputs=["pop", "conv0"])
    with pytest.raises(ValueError, match=r"reads the popcounts of 'conv0', which feed "
                                         r"\['add0'\] already; a popcount stage has one "
                                         r"consumer"):
        g.add("x", add, inputs=["conv0", "input"])
    wrong_k = dataclasses.replace(add, main_k=9, thresholds=np.zeros((2, 2), np.int64))
    with pytest.raises(ValueError, match=r"port 0 needs a popcount stage of K=9"):
        g.add("x", wrong_k, inputs=["pop", "input"])


def test_op_checks():
    with pytest.raises(ValueError, match=r"emit must be 'bits' or 'popcount', not 'ints'"):
        BinaryDense(in_shape=(4,), out_shape=(2,), k=4, channels=2, emit="ints")
    with pytest.raises(ValueError, match=r"emit='popcount' has no thresholds and no affine"):
        BinaryDense(in_shape=(4,), out_shape=(2,), k=4, channels=2, emit="popcount",
                    thresholds=np.zeros(2, np.int64))
    with pytest.raises(ValueError, match=r"emit='popcount' needs binary inputs"):
        BinaryDense(in_shape=(4,), out_shape=(2,), k=4, channels=2, emit="popcount",
                    input_bits=8)
    with pytest.raises(ValueError, match=r"ResidualAdd thresholds must have shape \(3, 2\)"):
        ResidualAdd(in_shape=(2,), out_shape=(2,), main_k=3, short="popcount", short_k=2,
                    thresholds=np.zeros((2, 2), np.int64))
    with pytest.raises(ValueError, match=r"ResidualAdd needs thresholds, or affine \(and "
                                         r"short_affine"):
        ResidualAdd(in_shape=(2,), out_shape=(2,), main_k=3, short="popcount", short_k=2,
                    affine=np.zeros((2, 2)))
    with pytest.raises(ValueError, match=r"Concat needs at least two positive channel counts"):
        Concat(in_shape=(2,), out_shape=(2,), parts=(2,))
    dense = BinaryDense(in_shape=(4,), out_shape=(2,), k=4, channels=2)
    assert "emit" not in dense.params()             # the default stays out of graph.json
    pop = BinaryDense(in_shape=(4,), out_shape=(2,), k=4, channels=2, emit="popcount")
    assert pop.params()["emit"] == "popcount" and pop.out_bits == 3 and pop.folded


# -- passes and files --------------------------------------------------------------------------

def test_mst_skips_popcount_stages():
    graph = bnnforge.lower(randomize_model(Projection(), seed=8), (1, 8, 8))
    out = OrderChannelsByMST().apply(graph)
    assert "mst" not in out.attrs("conv0") and "mst" not in out.attrs("conv1")
    assert "mst" in out.attrs("scores")
    assert [row["name"] for row in analyse_graph(graph)["layers"]] == ["scores"]


def test_fold_thresholds_leaves_its_argument_alone():
    raw = bnnforge.lower(randomize_model(Identity(), seed=9), (1, 8, 8), fold=False)
    weights = raw.op("conv1").weights.copy()
    folded = FoldThresholds().apply(raw)
    assert not raw.op("add0").folded and folded.op("add0").folded
    np.testing.assert_array_equal(raw.op("conv1").weights, weights)
    assert FoldThresholds().apply(folded).same_as(folded)     # folding twice changes nothing


def test_residual_graph_roundtrip(tmp_path):
    model = randomize_model(Shared("biper"), seed=10)
    graph = bnnforge.lower(model, (1, 8, 8), name="shared", meta={"dataset": "digits"})
    graph.attrs("add0")["fifo_depth"] = [3, 40]
    save_graph(graph, tmp_path)
    back = load_graph(tmp_path)
    assert back.same_as(graph) and back.order() == graph.order()
    assert back.attrs("add0")["fifo_depth"] == [3, 40]
    frames = random_frames((1, 8, 8), 300)
    np.testing.assert_array_equal(bnnforge.reference(back, frames),
                                  bnnforge.reference(graph, frames))
    assert graph_bytes(back) == graph_bytes(graph)
    again = bnnforge.lower(model, (1, 8, 8), name="shared", meta={"dataset": "digits"})
    again.attrs("add0")["fifo_depth"] = [3, 40]
    assert graph_bytes(again) == graph_bytes(graph)
    import json
    doc = json.loads((tmp_path / "graph.json").read_text())
    assert doc["version"] == 1
    nodes = {n["name"]: n for n in doc["nodes"]}
    assert nodes["add1"]["inputs"] == ["conv2", "add0"] and nodes["input"]["inputs"] == []
    assert nodes["conv1"]["params"]["emit"] == "popcount"
    nodes["cat0"]["inputs"] = ["conv0", "nope"]
    (tmp_path / "graph.json").write_text(json.dumps(doc))
    with pytest.raises(GraphFileError, match=r"graph.json does not match .*weights.npz "
                                             r"\(ValueError: stage 'cat0' reads 'nope'"):
        load_graph(tmp_path)


def test_chain_files_list_no_inputs(tmp_path):
    from conftest import small_cnn
    graph = bnnforge.lower(randomize_model(small_cnn(), seed=1), (1, 8, 8))
    assert graph.is_chain()
    save_graph(graph, tmp_path)
    text = (tmp_path / "graph.json").read_text()
    assert '"inputs"' not in text and '"emit"' not in text and '"port"' not in text
