"""The MST-distance regularizer: gradients, exact zero for equal rows, it lowers the tree weight."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.sparse.csgraph import minimum_spanning_tree

from bnnforge.nn import BinaryConv2d, BinaryLinear, build
from bnnforge.nn.mst import MSTLoss, layer_mst_weight, mst_loss, tree_edges


def _scipy_weight(bits: torch.Tensor) -> int:
    b = bits.reshape(bits.shape[0], -1).numpy().astype(np.int64)
    k = b.shape[1]
    d = (k - b @ b.T) // 2
    cost = np.minimum(d, k - d).astype(np.float64) + 1.0
    np.fill_diagonal(cost, 0.0)
    return int(round(minimum_spanning_tree(cost).sum())) - (b.shape[0] - 1)


def test_tree_edges_form_a_minimum_spanning_tree():
    torch.manual_seed(0)
    layer = BinaryLinear(70, 40)
    bits = layer.binary_weight()
    parent, child, sign = tree_edges(bits)
    assert len(parent) == 39 and sorted(child.tolist()) == [c for c in range(40) if c != 0]
    assert layer_mst_weight(layer) == _scipy_weight(bits)
    # complement edges exactly where the inverse is closer
    k = bits.shape[1]
    d = (bits[parent] != bits[child]).sum(dim=1)
    assert torch.equal(sign < 0, (k - d) < d)


def test_nearest_graph_and_bad_arguments():
    torch.manual_seed(1)
    bits = BinaryLinear(30, 12).binary_weight()
    parent, child, _ = tree_edges(bits, graph="nearest")
    assert child.tolist() == list(range(12)) and bool((parent != child).all())
    with pytest.raises(ValueError, match="graph must be 'tree' or 'nearest', not 'star'"):
        tree_edges(bits, graph="star")
    with pytest.raises(ValueError, match="beta must be positive"):
        MSTLoss(beta=0.0)
    with pytest.raises(ValueError, match="every must be a positive integer"):
        MSTLoss(every=0)
    with pytest.raises(ValueError, match="no BinaryLinear or BinaryConv2d"):
        mst_loss(torch.nn.Sequential(torch.nn.Linear(3, 3)))


@pytest.mark.parametrize("q", ["ste", "biper"])
def test_gradient_flows_to_every_binary_layer(q):
    torch.manual_seed(2)
    model = build("cnv", (1, 8, 8), 10, quantizer=q)
    loss = mst_loss(model)
    assert loss.dim() == 0 and float(loss.detach()) > 0
    loss.backward()
    for m in model.modules():
        if isinstance(m, (BinaryLinear, BinaryConv2d)):
            assert m.weight.grad is not None and float(m.weight.grad.abs().sum()) > 0


def test_identical_rows_cost_zero():
    layer = BinaryLinear(50, 16)
    with torch.no_grad():
        row = torch.randn(50)
        layer.weight.copy_(row.expand(16, 50) * torch.linspace(0.5, 2.0, 16)[:, None])
        layer.weight[3] = -layer.weight[3]  # an inverted row is free too
    loss = MSTLoss()(torch.nn.Sequential(layer))
    assert float(loss) == 0.0
    loss.backward()
    assert float(layer.weight.grad.abs().sum()) == 0.0
    assert layer_mst_weight(layer) == 0


def test_normalised_loss_approaches_the_tree_weight():
    torch.manual_seed(3)
    layer = BinaryLinear(64, 32)
    loss = MSTLoss(beta=50.0)(torch.nn.Sequential(layer))
    expected = layer_mst_weight(layer) / (32 * 64)
    assert float(loss) == pytest.approx(expected, rel=0.05)


@pytest.mark.parametrize("every", [1, 5])
def test_optimising_the_loss_lowers_the_tree_weight(every):
    torch.manual_seed(4)
    layer = BinaryLinear(200, 64)
    with torch.no_grad():
        layer.weight.uniform_(-1, 1)
    before = layer_mst_weight(layer)
    reg = MSTLoss(every=every)
    opt = torch.optim.Adam(layer.parameters(), lr=0.01)
    model = torch.nn.Sequential(layer)
    for _ in range(60):
        opt.zero_grad()
        reg(model).backward()
        opt.step()
    after = layer_mst_weight(layer)
    assert after < 0.6 * before


def test_tree_cache_is_reused_between_refreshes():
    torch.manual_seed(5)
    layer = BinaryLinear(20, 8)
    reg = MSTLoss(every=3)
    model = torch.nn.Sequential(layer)
    reg(model)
    first = reg._cache[layer][1]
    with torch.no_grad():
        layer.weight.neg_().mul_(torch.rand_like(layer.weight))  # a different tree
    reg(model)
    reg(model)
    assert reg._cache[layer][1] is first
    reg(model)
    assert reg._cache[layer][1] is not first
