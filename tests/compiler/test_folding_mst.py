"""ChooseFolding(mst=True): the MST-compressed layer where it is estimated cheaper."""

import numpy as np
import pytest
import torch

import bnnforge
from bnnforge.compiler.costs import estimate_luts, estimate_mst_luts, mst_eligible
from bnnforge.compiler.cycles import pipeline_cycles
from bnnforge.compiler.folding import ChooseFolding
from bnnforge.compiler.mst import OrderChannelsByMST, layer_tree, tree_attr
from bnnforge.nn import BinaryLinear
from conftest import random_frames, randomize_model, small_mlp


def clustered(model, seed, flip=0.05):
    """Give every hidden BinaryLinear rows near a few centers (some inverted): MST-friendly."""
    rng = np.random.default_rng(seed)
    layers = [m for m in model.modules() if isinstance(m, BinaryLinear)][:-1]
    for m in layers:
        c, k = m.weight.shape
        centers = rng.random((3, k)) < 0.5
        rows = centers[rng.integers(0, 3, c)] ^ (rng.random((c, k)) < flip)
        rows[rng.random(c) < 0.3] ^= True
        with torch.no_grad():
            m.weight.copy_(torch.tensor(np.where(rows, 0.5, -0.5), dtype=torch.float32))
    return model


def vector_graph(seed=0, bits=1, mst_friendly=True):
    model = randomize_model(small_mlp(bits, hidden=32), seed)
    if mst_friendly:
        model = clustered(model, seed)
    return bnnforge.lower(model, (64,))


def test_estimate_mst_luts():
    graph = vector_graph()
    op = graph.op("fc0")
    tree = layer_tree(op)
    est = estimate_mst_luts(op, tree)
    assert est == estimate_mst_luts(op, tree_attr(tree)) == estimate_mst_luts(op)
    acc_bits = 7 + 2                                    # ceil(log2(65)) + 2
    roots = len(tree.roots)
    assert est == 2 * (64 * roots + tree.weight) + 32 * acc_bits + (32 - roots) * acc_bits
    assert est < estimate_luts(op, 32, 64)              # clustered rows compress well
    # random rows compress less, so they cost more
    rnd = vector_graph(mst_friendly=False).op("fc0")
    assert estimate_mst_luts(rnd) > est


def test_fast_target_picks_mst_and_the_tree_order_channels_by_mst_stores():
    graph = vector_graph()
    out = ChooseFolding(target_cycles=1, mst=True).apply(graph)
    for name in ("fc0", "fc1"):
        op = graph.op(name)
        assert out.attrs(name)["fold"] == {"pe": op.channels, "simd": op.k, "mst": True}
        assert out.attrs(name)["mst"] == tree_attr(layer_tree(op))
    assert "mst" not in out.attrs("scores")["fold"] and "mst" not in out.attrs("scores")
    assert pipeline_cycles(out)["fc0"] == 1
    # the later pass stores the very same (deterministic) tree
    again = OrderChannelsByMST().apply(out)
    for name in ("fc0", "fc1"):
        assert again.attrs(name)["mst"] == out.attrs(name)["mst"]
    # folding changes no value
    frames = random_frames((64,), 16, seed=1)
    np.testing.assert_array_equal(bnnforge.reference(graph, frames),
                                  bnnforge.reference(again, frames))
    # without mst=True nothing changes
    plain = ChooseFolding(target_cycles=1).apply(graph)
    assert plain.attrs("fc0")["fold"] == {"pe": 32, "simd": 64} and "mst" not in plain.attrs("fc0")


def test_slow_target_keeps_dense_and_random_rows_stay_dense():
    graph = vector_graph()
    out = ChooseFolding(target_cycles=64, mst=True).apply(graph)
    assert not any(out.attrs(n)["fold"].get("mst") for n in ("fc0", "fc1", "scores"))
    rnd = vector_graph(mst_friendly=False)
    op = rnd.op("fc1")                                   # 32 x 32 random: ratio below 2
    choice = ChooseFolding(target_cycles=1, mst=True).apply(rnd).attrs("fc1")["fold"]
    assert choice.get("mst", False) == (estimate_mst_luts(op) < estimate_luts(op, 32, 32))


def test_existing_tree_is_used_and_depth_bound():
    graph = OrderChannelsByMST(max_depth=2).apply(vector_graph())
    out = ChooseFolding(target_cycles=1, mst=True).apply(graph)
    assert out.attrs("fc0")["mst"] == graph.attrs("fc0")["mst"]
    assert max(out.attrs("fc0")["mst"]["depth"]) <= 2
    bounded = ChooseFolding(target_cycles=1, mst=True, mst_max_depth=2).apply(vector_graph())
    assert bounded.attrs("fc0")["mst"] == graph.attrs("fc0")["mst"]


def test_eight_bit_first_layer_and_overrides_are_not_mst():
    graph = vector_graph(bits=8)
    assert not mst_eligible(graph.op("fc0")) and mst_eligible(graph.op("fc1"))
    assert not mst_eligible(graph.op("scores"))
    out = ChooseFolding(target_cycles=1, mst=True, overrides={"fc1": (32, 32)}).apply(graph)
    assert "mst" not in out.attrs("fc0")["fold"]
    assert out.attrs("fc1")["fold"] == {"pe": 32, "simd": 32}


def test_lut_budget_counts_mst_estimates():
    graph = vector_graph()
    mst_total = sum(estimate_mst_luts(graph.op(n)) for n in ("fc0", "fc1")) \
        + estimate_luts(graph.op("scores"), 10, 32)
    dense_total = sum(estimate_luts(graph.op(n), graph.op(n).channels, graph.op(n).k)
                      for n in ("fc0", "fc1", "scores"))
    assert mst_total < dense_total
    out = ChooseFolding(luts=mst_total, mst=True).apply(graph)
    assert max(pipeline_cycles(out).values()) == 1       # fully parallel fits only with MST
    assert out.attrs("fc0")["fold"]["mst"] and out.attrs("fc1")["fold"]["mst"]
    dense = ChooseFolding(luts=mst_total).apply(graph)
    assert max(pipeline_cycles(dense).values()) > 1


def test_compile_reports_the_per_layer_choice(tmp_path):
    from bnnforge.flow import compile_model
    from bnnforge.modelfile import save

    model = clustered(randomize_model(small_mlp(1, hidden=32), 3), 3)
    path = tmp_path / "m.pt"
    save(model, path, (64,), {"name": "mlp"})
    report = compile_model(path, tmp_path / "build", fps=100e6, clock_mhz=100.0, mst=True)
    rows = {r["name"]: r for r in report["compile"]["layers"]}
    assert rows["fc0"]["mst"] and rows["fc1"]["mst"] and not rows["scores"]["mst"]
    assert rows["fc0"]["pe"] == 32 and rows["fc0"]["simd"] == 64
    graph = bnnforge.compiler.load_graph(tmp_path / "build")
    assert graph.attrs("fc0")["mst"] == tree_attr(layer_tree(graph.op("fc0")))
    assert (tmp_path / "build" / "rtl" / "bnnforge_top.v").is_file()


def test_errors():
    with pytest.raises(ValueError, match=r"an mst attribute needs 'weight' and 'roots', got "
                                         r"keys \['weight'\]"):
        estimate_mst_luts(vector_graph().op("fc0"), {"weight": 3})


def test_compile_bounds_every_tree_with_mst_depth(tmp_path):
    from bnnforge.flow import compile_model
    from bnnforge.modelfile import save

    model = clustered(randomize_model(small_mlp(1, hidden=32), 3), 3)
    path = tmp_path / "m.pt"
    save(model, path, (64,), {"name": "mlp"})
    free = compile_model(path, tmp_path / "free", fps=100e6, clock_mhz=100.0, mst=True,
                         rtl=False)["compile"]
    report = compile_model(path, tmp_path / "build", fps=100e6, clock_mhz=100.0, mst=True,
                           mst_max_depth=2, rtl=False)["compile"]
    assert free["mst"]["max_depth"] > 2
    assert report["mst_max_depth"] == 2 and report["mst"]["max_depth"] <= 2
    graph = bnnforge.compiler.load_graph(tmp_path / "build")
    for name in graph.order():
        if "mst" in graph.attrs(name):
            assert max(graph.attrs(name)["mst"]["depth"]) <= 2
            assert graph.attrs(name)["mst"] == tree_attr(layer_tree(graph.op(name), max_depth=2))
    assert report["resources_estimate"]["luts"] > 0
    with pytest.raises(ValueError, match="--mst-depth must be a positive whole number, not 0"):
        compile_model(path, tmp_path / "zero", mst_max_depth=0)
    assert not (tmp_path / "zero").exists()
