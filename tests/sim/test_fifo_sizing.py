"""SizeFifos: the smallest FIFO depths that keep the deep-FIFO throughput."""

import numpy as np
import pytest

import bnnforge
from bnnforge.compiler.folding import ChooseFolding
from bnnforge.sim import SizeFifos, simulate_timing, steady_cycles_per_frame
from bnnforge.sim.fifo_sizing import zero_depth_sites
from conftest import random_frames, randomize_model, small_cnn, small_mlp


def with_folds(graph, folds):
    for name, (pe, simd) in folds.items():
        graph.attrs(name)["fold"] = {"pe": pe, "simd": simd}
    return graph


def graphs():
    mlp = bnnforge.lower(randomize_model(small_mlp(1, hidden=16), 1), (1, 8, 8))
    cnn = bnnforge.lower(randomize_model(small_cnn(1), 2), (1, 8, 8))
    cnn8 = bnnforge.lower(randomize_model(small_cnn(8), 3), (1, 8, 8))
    return {
        # pixel-bound: the input stream is the bottleneck, so depth-1 FIFOs (half rate) hurt
        "mlp-parallel": with_folds(mlp.copy(), {"fc0": (16, 64), "fc1": (16, 16),
                                                "scores": (10, 16)}),
        "mlp-balanced": ChooseFolding().apply(mlp),
        "cnn-fast": with_folds(cnn.copy(), {"conv0": (8, 9), "conv1": (12, 72),
                                            "fc0": (20, 48), "scores": (10, 20)}),
        "cnn-serial": with_folds(cnn8, {"conv0": (1, 9), "conv1": (2, 8), "fc0": (2, 8),
                                        "scores": (1, 4)}),
    }


@pytest.mark.parametrize("min_depth", [0, 1])
@pytest.mark.parametrize("name", sorted(graphs()))
def test_sized_fifos_keep_throughput_and_are_minimal(name, min_depth):
    graph = graphs()[name]
    sizer = SizeFifos(min_depth=min_depth)
    sized = sizer.apply(graph)
    depths = {n: sized.attrs(n)["fifo_depth"] for n in sized.order()}
    assert set(depths) == set(graph.order())
    # at min_depth 1, depth 0 only where the stage's ready is registered (a matrix unit)
    sites = zero_depth_sites(graph)
    floor = {n: 0 if (n, 0) in sites else min_depth for n in depths}
    assert all(d >= floor[n] for n, d in depths.items())
    deep = graph.copy()
    for n in deep.order():
        deep.attrs(n)["fifo_depth"] = 500
    target = steady_cycles_per_frame(deep)
    assert sizer.target == target
    assert steady_cycles_per_frame(sized) == target
    # also over a plain long run without the periodic shortcut
    run = simulate_timing(sized, 40, periodic=False)
    ref = simulate_timing(deep, 40, periodic=False)
    assert run.output_cycles[-1] - run.output_cycles[20] == \
        ref.output_cycles[-1] - ref.output_cycles[20]
    for n, d in depths.items():
        if d == floor[n]:
            continue                                # already minimal
        for less in sorted({d - 1, floor[n]}):      # one token less (and no FIFO) is slower
            smaller = sized.copy()
            smaller.attrs(n)["fifo_depth"] = less
            assert steady_cycles_per_frame(smaller) > target, (n, d, less)
    # the input graph is untouched and values do not change (equivalence)
    assert all("fifo_depth" not in graph.attrs(n) for n in graph.order())
    x = random_frames(graph.input_shape, 8, seed=1)
    np.testing.assert_array_equal(bnnforge.reference(sized, x), bnnforge.reference(graph, x))


def test_pixel_bound_pipeline_needs_two_slots():
    graph = graphs()["mlp-parallel"]
    sized = SizeFifos(min_depth=1).apply(graph)
    # the input reaches fc0's matrix unit through a wire: no FIFO needed at all
    assert sized.attrs("input")["fifo_depth"] == 0 and sized.attrs("fc0")["fifo_depth"] == 0
    assert steady_cycles_per_frame(sized) == 64
    # a depth-1 FIFO takes a token every other cycle (a read frees no room in its own cycle)
    half = sized.copy()
    half.attrs("input")["fifo_depth"] = 1
    assert steady_cycles_per_frame(half) == 128
    half.attrs("input")["fifo_depth"] = 2
    assert steady_cycles_per_frame(half) == 64


def test_no_fifo_in_front_of_matrix_units_only():
    graph = graphs()["cnn-serial"]
    sized = SizeFifos().apply(graph)
    ok = {n: (n, 0) in zero_depth_sites(sized) for n in graph.order()}
    # dense stages read through their matrix unit's registered ready; a convolution's window
    # and a max-pool pass ready through combinationally
    assert ok == {"input": False, "conv0": False, "pool0": False, "conv1": False,
                  "fc0": True, "scores": True}
    assert [sized.attrs(n)["fifo_depth"] for n in ("fc0", "scores")] == [0, 0]


def test_no_fifo_beats_a_one_slot_fifo():
    graph = graphs()["mlp-parallel"]
    sized = SizeFifos(min_depth=0).apply(graph)
    assert sized.attrs("input")["fifo_depth"] == 0
    assert steady_cycles_per_frame(sized) == 64


def test_size_fifos_rejects_bad_options():
    with pytest.raises(ValueError, match=r"min_depth must be a non-negative integer, not -1"):
        SizeFifos(min_depth=-1)
    with pytest.raises(ValueError, match=r"frames must be an integer >= 4, not 2"):
        SizeFifos(frames=2)
