"""MST compression analysis: Hamming distances, exact minimum-depth MSTs, the ordering pass."""

from __future__ import annotations

import json
from collections import deque

import numpy as np
import pytest
from scipy.sparse.csgraph import minimum_spanning_tree

import bnnforge
from bnnforge.compiler import load_graph, pack_bits, save_graph
from bnnforge.compiler.ir import MaxPool
from bnnforge.compiler.mst import (
    MSTResult,
    OrderChannelsByMST,
    analyse_graph,
    analyse_layer,
    effective_distance,
    hamming_matrix,
    mst_tree,
)
from conftest import random_frames, randomize_model, small_cnn, small_mlp


def _clustered_bits(rng, c: int, k: int, flips: float = 0.08) -> np.ndarray:
    """Rows near a few centers, some inverted: many small and many complement distances."""
    centers = rng.random((max(1, c // 6), k)) < 0.5
    rows = centers[rng.integers(0, len(centers), c)] ^ (rng.random((c, k)) < flips)
    rows[rng.random(c) < 0.3] ^= True
    return rows


def _scipy_mst_weight(cost: np.ndarray) -> int:
    """Independent MST weight; scipy reads zeros as missing edges, so shift by one."""
    c = cost.shape[0]
    shifted = cost.astype(np.float64) + 1.0
    np.fill_diagonal(shifted, 0.0)
    return int(round(minimum_spanning_tree(shifted).sum())) - (c - 1)


def _depth_from(parent: np.ndarray, root: int) -> int:
    """Height of the undirected tree of ``parent`` when rooted at ``root`` (brute force)."""
    adj = {v: [] for v in range(len(parent))}
    for v, p in enumerate(parent):
        if p >= 0:
            adj[v].append(int(p))
            adj[int(p)].append(v)
    seen, queue, far = {root: 0}, deque([root]), 0
    while queue:
        u = queue.popleft()
        far = max(far, seen[u])
        for v in adj[u]:
            if v not in seen:
                seen[v] = seen[u] + 1
                queue.append(v)
    return far


def _check_forest(res: MSTResult, dist: np.ndarray, k: int) -> None:
    c = len(res.parent)
    assert sorted(res.order) == list(range(c))
    pos = {v: i for i, v in enumerate(res.order)}
    for v in range(c):
        p = int(res.parent[v])
        if p < 0:
            assert res.depth[v] == 0 and v in res.roots
        else:
            assert pos[p] < pos[v] and res.depth[v] == res.depth[p] + 1
    assert res.roots == sorted(int(v) for v in np.flatnonzero(res.parent < 0))
    edges = [(v, int(res.parent[v])) for v in range(c) if res.parent[v] >= 0]
    weight = sum(k - dist[v, p] if res.complement[v] else dist[v, p] for v, p in edges)
    assert weight == res.weight
    assert res.xnor_mst == k * len(res.roots) + res.weight


# -- hamming_matrix -------------------------------------------------------------------------
@pytest.mark.parametrize("c,k", [(1, 1), (7, 13), (33, 64), (40, 130), (16, 4608)])
def test_hamming_matrix_equals_naive(c, k):
    rng = np.random.default_rng(c * 1000 + k)
    bits = rng.random((c, k)) < 0.5
    packed = pack_bits(bits)
    if k % 8:
        packed[:, -1] |= np.uint8(0xFF << (k % 8) & 0xFF)       # garbage pad bits are ignored
    naive = (bits[:, None, :] != bits[None, :, :]).sum(axis=2)
    got = hamming_matrix(packed, k)
    assert got.dtype == np.int64 and got.shape == (c, c)
    np.testing.assert_array_equal(got, naive)


def test_hamming_matrix_rejects_bad_input():
    with pytest.raises(ValueError, match="2-D uint8"):
        hamming_matrix(np.zeros((3, 2), dtype=np.int32), 16)
    with pytest.raises(ValueError, match="cannot hold k=17 bits"):
        hamming_matrix(np.zeros((3, 2), dtype=np.uint8), 17)


# -- mst_tree -------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("complement", [True, False])
def test_mst_weight_is_exact_and_depth_minimal(seed, complement):
    rng = np.random.default_rng(seed)
    c, k = int(rng.integers(2, 60)), int(rng.integers(5, 300))
    bits = _clustered_bits(rng, c, k) if seed % 2 else rng.random((c, k)) < 0.5
    dist = hamming_matrix(pack_bits(bits), k)
    res = mst_tree(dist, k, complement=complement)
    _check_forest(res, dist, k)
    cost, _ = effective_distance(dist, k, complement)
    assert len(res.roots) == 1          # no edge costs more than a root here
    assert res.weight == _scipy_mst_weight(cost)
    root = res.roots[0]
    assert res.max_depth == _depth_from(res.parent, root)
    assert res.max_depth == min(_depth_from(res.parent, r) for r in range(c))


@pytest.mark.parametrize("seed", range(4))
def test_complement_edges_only_where_they_help(seed):
    rng = np.random.default_rng(100 + seed)
    c, k = 50, 97
    bits = _clustered_bits(rng, c, k)
    dist = hamming_matrix(pack_bits(bits), k)
    res = mst_tree(dist, k)
    has = res.parent >= 0
    d = dist[np.arange(c)[has], res.parent[has]]
    flagged = res.complement[has]
    assert flagged.any() and not res.complement[~has].any()
    assert np.all(k - d[flagged] < d[flagged])
    assert np.all(d[~flagged] <= k - d[~flagged])
    plain = mst_tree(dist, k, complement=False)
    assert not plain.complement.any() and plain.weight > res.weight


def test_root_cost_model_and_complement_pair():
    k = 10
    bits = np.array([[0] * k, [1] * k], dtype=bool)
    dist = hamming_matrix(pack_bits(bits), k)
    plain = mst_tree(dist, k, complement=False)      # an edge of cost k is no cheaper than a root
    assert plain.roots == [0, 1] and plain.weight == 0 and plain.xnor_mst == 2 * k
    comp = mst_tree(dist, k)
    assert len(comp.roots) == 1 and comp.weight == 0 and comp.complement.sum() == 1
    assert comp.xnor_mst == k


def test_equal_costs_prefer_a_shallow_tree():
    # one-hot rows: every two channels are at distance 2, so every spanning tree is minimal;
    # the shallowest is a star (depth 1), a path would be depth c // 2
    c = 40
    bits = np.eye(c, dtype=bool)
    res = mst_tree(hamming_matrix(pack_bits(bits), c), c)
    assert res.weight == 2 * (c - 1) and res.max_depth == 1


def test_identical_rows_cost_nothing():
    bits = np.tile(np.random.default_rng(0).random(33) < 0.5, (12, 1))
    res = mst_tree(hamming_matrix(pack_bits(bits), 33), 33)
    assert res.weight == 0 and len(res.roots) == 1 and res.max_depth == 1


@pytest.mark.parametrize("max_depth", [0, 1, 2, 3, 5])
def test_max_depth_is_respected(max_depth):
    rng = np.random.default_rng(7)
    c, k = 80, 200
    bits = _clustered_bits(rng, c, k)
    dist = hamming_matrix(pack_bits(bits), k)
    free = mst_tree(dist, k)
    res = mst_tree(dist, k, max_depth=max_depth)
    _check_forest(res, dist, k)
    assert res.max_depth <= max_depth
    assert res.xnor_mst >= free.xnor_mst
    if max_depth == 0:
        assert len(res.roots) == c and res.xnor_mst == c * k
    if max_depth >= free.max_depth:
        assert res.xnor_mst == free.xnor_mst


def test_max_depth_trades_weight_for_depth():
    rng = np.random.default_rng(8)
    bits = _clustered_bits(rng, 120, 300, flips=0.2)
    dist = hamming_matrix(pack_bits(bits), 300)
    costs = [mst_tree(dist, 300, max_depth=d).xnor_mst for d in (1, 2, 4, None)]
    assert costs == sorted(costs, reverse=True) and costs[0] > costs[-1]
    # a depth-1 bound with one root is a star: the search must beat the star at the best center
    cost, _ = effective_distance(dist, 300)
    best_star = min(300 + int(cost[r].sum()) for r in range(120))
    assert costs[0] <= best_star


def test_mst_tree_rejects_bad_arguments():
    with pytest.raises(ValueError, match="square matrix"):
        mst_tree(np.zeros((2, 3)), 4)
    with pytest.raises(ValueError, match="k must be positive"):
        mst_tree(np.zeros((2, 2)), 0)
    with pytest.raises(ValueError, match="max_depth must be a non-negative integer"):
        mst_tree(np.zeros((2, 2)), 4, max_depth=-1)
    with pytest.raises(ValueError, match="max_depth must be a non-negative integer"):
        OrderChannelsByMST(max_depth=1.5)


# -- analyses and the pass -------------------------------------------------------------------
_LAYER_KEYS = {"name", "k", "channels", "mst_weight", "depth", "roots", "complement"}


@pytest.mark.parametrize("builder", [small_cnn, small_mlp])
def test_analyse_graph_keys_and_sums(builder):
    model = randomize_model(builder(), seed=5)
    graph = bnnforge.lower(model, (1, 8, 8))
    out = analyse_graph(graph)
    assert set(out) == {"xnor_dense", "xnor_mst", "ratio", "max_depth", "layers"}
    binary = [n for n, op in graph if hasattr(op, "weights")]
    assert [layer["name"] for layer in out["layers"]] == binary and "scores" in binary
    dense = mst = 0
    for layer in out["layers"]:
        assert set(layer) == _LAYER_KEYS
        op = graph.op(layer["name"])
        single = analyse_layer(op)
        assert single["xnor_dense"] == op.channels * op.k
        assert single["xnor_mst"] == op.k * single["roots"] + single["mst_weight"]
        assert {key: single[key] for key in _LAYER_KEYS - {"name"}} == \
            {key: layer[key] for key in _LAYER_KEYS - {"name"}}
        dense += single["xnor_dense"]
        mst += single["xnor_mst"]
    assert out["xnor_dense"] == dense and out["xnor_mst"] == mst
    assert out["ratio"] == pytest.approx(dense / mst) and out["ratio"] > 1
    assert out["max_depth"] == max(layer["depth"] for layer in out["layers"])
    json.dumps(out)


def test_analyse_layer_needs_a_binary_layer():
    op = MaxPool(in_shape=(1, 4, 4), out_shape=(1, 2, 2))
    with pytest.raises(TypeError, match="MaxPool has no 'weights'"):
        analyse_layer(op)


@pytest.mark.parametrize("max_depth", [None, 2])
def test_order_channels_by_mst_is_equivalent(max_depth, tmp_path):
    model = randomize_model(small_cnn(), seed=9)
    graph = bnnforge.lower(model, (1, 8, 8))
    ordered = OrderChannelsByMST(max_depth=max_depth).apply(graph)
    assert all("mst" not in graph.attrs(n) for n in graph.order())      # argument untouched
    frames = random_frames((1, 8, 8), 500, seed=4)
    before = bnnforge.reference(graph, frames, return_all=True)
    after = bnnforge.reference(ordered, frames, return_all=True)
    for name in before:
        np.testing.assert_array_equal(before[name], after[name])
    for name, op in ordered:
        if not hasattr(op, "weights"):
            assert "mst" not in ordered.attrs(name)
            continue
        assert op is graph.op(name)                                     # weights unchanged
        attr = ordered.attrs(name)["mst"]
        assert set(attr) == {"parent", "complement", "depth", "order", "weight", "roots"}
        assert json.loads(json.dumps(attr)) == attr
        assert len(attr["parent"]) == op.channels
        if max_depth is not None:
            assert max(attr["depth"]) <= max_depth
    # the summary reads the trees the pass chose, and they survive the build folder
    summary = analyse_graph(ordered)
    assert summary == analyse_graph(graph, max_depth=max_depth)
    save_graph(ordered, tmp_path)
    assert load_graph(tmp_path).same_as(ordered)
    assert analyse_graph(load_graph(tmp_path)) == summary
