"""MSTLayer in Amaranth's simulator against numpy models of the layer and of its MST arithmetic."""

import numpy as np
import pytest
from amaranth.sim import Simulator

from bnnforge.compiler.ir import pack_bits
from bnnforge.compiler.mst import hamming_matrix, mst_tree
from bnnforge.hw import MSTLayer, stream_put, tree_stages
from bnnforge.hw.checks import silence
from bnnforge.hw.mst_layer import tree_levels
from bnnforge.hw.testing import simulate_stream


def clustered_rows(rng, c, k, flip=0.08, invert=0.3):
    """Rows near a few centers, some of them inverted (so complement edges pay off)."""
    centers = rng.random((max(1, c // 5), k)) < 0.5
    rows = centers[rng.integers(0, len(centers), c)] ^ (rng.random((c, k)) < flip)
    rows[rng.random(c) < invert] ^= True
    return rows


def popcounts(x, w):
    """(N, K) input bits, (C, K) weight bits -> (N, C) P = popcount(XNOR(x, w))."""
    return (x[:, None, :].astype(bool) == w[None]).sum(-1)


def mst_popcounts(x, w, parent, complement):
    """P of every channel computed the MST way (roots in full, children from their parents)."""
    n, k = x.shape
    c = w.shape[0]
    level = tree_levels(parent)
    p = np.zeros((n, c), dtype=np.int64)
    for ch in sorted(range(c), key=lambda v: (level[v], v)):
        par = parent[ch]
        if par < 0:
            p[:, ch] = (x == w[ch]).sum(-1)
            continue
        if complement[ch]:
            pos = w[ch] == w[par]                      # D': where the rows are equal
            e = (x[:, pos] == w[ch][pos]).sum(-1)
            p[:, ch] = k - p[:, par] - pos.sum() + 2 * e
        else:
            pos = w[ch] != w[par]                      # D: where the rows differ
            e = (x[:, pos] == w[par][pos]).sum(-1)     # the parent's agreements on D
            p[:, ch] = p[:, par] + pos.sum() - 2 * e
    return p


def to_int(bits):
    return int(sum(int(b) << i for i, b in enumerate(bits)))


def bits_of(word, n):
    return [(word >> i) & 1 for i in range(n)]


def random_layer(seed, c, k):
    rng = np.random.default_rng(seed)
    w = clustered_rows(rng, c, k)
    tree = mst_tree(hamming_matrix(pack_bits(w), k), k)
    thr = rng.integers(-2, k + 3, c)
    return rng, w, tree, thr


@pytest.mark.parametrize("seed,c,k", [(0, 12, 20), (1, 16, 64), (2, 9, 9), (3, 24, 40),
                                      (4, 5, 100)])
def test_mst_arithmetic_matches_popcount(seed, c, k):
    """The numpy MST recurrence (the formula the RTL implements) equals the full popcount."""
    rng, w, tree, _ = random_layer(seed, c, k)
    x = rng.integers(0, 2, (64, k)).astype(bool)
    np.testing.assert_array_equal(mst_popcounts(x, w, tree.parent, tree.complement),
                                  popcounts(x, w))


@pytest.mark.parametrize("seed,c,k", [(0, 12, 20), (1, 16, 64), (2, 9, 9), (3, 24, 40),
                                      (5, 7, 1), (6, 10, 3)])
@pytest.mark.parametrize("idle,stall", [(0.0, 0.0), (0.4, 0.5)])
def test_mst_layer_random(seed, c, k, idle, stall):
    rng, w, tree, thr = random_layer(seed, c, k)
    if k >= 20:
        assert tree.complement.any() and tree.max_depth >= 1, "the case should exercise edges"
    dut = MSTLayer(k, c, pack_bits(w), thr, tree.parent, tree.complement, depth=tree.depth)
    assert dut.max_depth == tree.max_depth and dut.xnors == tree.xnor_mst
    n = 40
    x = rng.integers(0, 2, (n, k)).astype(bool)
    x[0] = w[0]                                          # extremes: P = K and P = 0
    x[1] = ~w[0]
    out, ic, oc = simulate_stream(dut, [to_int(r) for r in x], n, seed=seed, idle=idle, stall=stall)
    expect = popcounts(x, w) >= thr[None]
    np.testing.assert_array_equal(np.array([bits_of(v, c) for v in out], dtype=bool), expect)
    if idle == 0 and stall == 0:
        # II = 1 and latency = tree_stages(K) + depth + 2, exactly
        assert ic == list(range(n))
        assert oc == [a + dut.latency for a in ic]
        assert dut.latency == tree_stages(k, 2) + tree.max_depth + 2


def test_deep_chain_and_duplicates():
    """A hand-made chain of depth 5 with duplicate rows (d = 0) and all-complement edges."""
    rng = np.random.default_rng(9)
    k, c = 17, 6
    w = np.zeros((c, k), dtype=bool)
    w[0] = rng.random(k) < 0.5
    w[1] = w[0]                                         # d = 0
    w[2] = ~w[1]                                        # complement, d' = 0
    w[3] = w[2] ^ (rng.random(k) < 0.2)
    w[4] = ~w[3] ^ (rng.random(k) < 0.2)
    w[5] = w[4]
    parent = [-1, 0, 1, 2, 3, 4]
    comp = [False, False, True, False, True, False]
    thr = rng.integers(0, k + 1, c)
    dut = MSTLayer(k, c, w, thr, parent, comp)
    assert dut.max_depth == 5 and dut.stages == tree_stages(k, 2) + 6
    x = rng.integers(0, 2, (30, k)).astype(bool)
    out, ic, oc = simulate_stream(dut, [to_int(r) for r in x], 30, seed=3, idle=0.3, stall=0.6)
    np.testing.assert_array_equal(np.array([bits_of(v, c) for v in out], dtype=bool),
                                  popcounts(x, w) >= thr[None])


def test_back_pressure_holds_everything():
    """Output ready low for a while: the result waits, the input stops, nothing is lost."""
    rng, w, tree, thr = random_layer(11, 8, 24)
    dut = MSTLayer(24, 8, w, thr, tree.parent, tree.complement)
    x = rng.integers(0, 2, (12, 24)).astype(bool)
    res = {"in": [], "out": [], "val": []}
    hold = range(dut.latency, dut.latency + 7)          # ready low in these cycles

    async def put(ctx):
        await stream_put(ctx, dut.i_stream, [to_int(r) for r in x], cycles=res["in"])

    async def get(ctx):
        cycle = 0
        while len(res["out"]) < len(x):
            ready = cycle not in hold
            ctx.set(dut.o_stream.ready, int(ready))
            _, _, valid, payload = await ctx.tick().sample(dut.o_stream.valid,
                                                           dut.o_stream.payload)
            if valid and ready:
                res["out"].append(cycle)
                res["val"].append(payload)
            cycle += 1

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(put)
    sim.add_testbench(get)
    sim.run()
    lat, s = dut.latency, dut.stages
    # vector 0 is valid from cycle lat but accepted only after the hold; the pipeline (s
    # registers after the input) stops once full: the input stalls from cycle lat on
    assert res["out"][0] == lat + 7
    assert res["in"][:lat] == list(range(lat))
    assert res["in"][lat] == lat + 7
    assert res["out"] == [lat + 7 + i for i in range(len(x))]
    assert s == lat - 1
    np.testing.assert_array_equal(np.array([bits_of(v, 8) for v in res["val"]], dtype=bool),
                                  popcounts(x, w) >= thr[None])


def test_errors():
    w = np.zeros((3, 8), dtype=bool)
    with pytest.raises(ValueError, match=r"MSTLayer takes binary inputs only \(input_bits=1\), "
                                         r"not input_bits=8"):
        MSTLayer(8, 3, w, [1, 2, 3], [-1, 0, 1], [False] * 3, input_bits=8)
    with pytest.raises(ValueError, match=r"parent array has a cycle through channel 0"):
        MSTLayer(8, 3, w, [1, 2, 3], [1, 2, 0], [False] * 3)
    with pytest.raises(ValueError, match=r"parent\[1\] must be -1 or another channel 0..2, "
                                         r"not 1"):
        MSTLayer(8, 3, w, [1, 2, 3], [-1, 1, 0], [False] * 3)
    with pytest.raises(ValueError, match=r"channel 0 is a root but has a complement edge"):
        MSTLayer(8, 3, w, [1, 2, 3], [-1, 0, 0], [True, False, False])
    with pytest.raises(ValueError, match=r"depth \[0, 1, 1\] does not match the tree of parent "
                                         r"\(depths \[0, 1, 2\]\)"):
        MSTLayer(8, 3, w, [1, 2, 3], [-1, 0, 1], [False] * 3, depth=[0, 1, 1])
    with pytest.raises(ValueError, match=r"complement must hold 3 values, not 2"):
        MSTLayer(8, 3, w, [1, 2, 3], [-1, 0, 1], [False] * 2)
    with pytest.raises(ValueError, match=r"thresholds must hold 3 values, not 1"):
        MSTLayer(8, 3, w, [1], [-1, 0, 1], [False] * 3)
    ok = MSTLayer(8, 3, w, [1, 2, 3], [-1, 0, 1], [False] * 3)
    silence(ok)


@pytest.fixture(scope="module")
def mst_build(tmp_path_factory):
    """A small MLP whose two hidden layers are MST layers, compiled to a build folder."""
    import bnnforge
    from bnnforge.compiler import save_graph
    from bnnforge.compiler.folding import ChooseFolding
    from bnnforge.compiler.mst import OrderChannelsByMST
    from bnnforge.hw.generate import emit_verilog
    from bnnforge.sim.fifo_sizing import SizeFifos
    from conftest import randomize_model, small_mlp

    graph = bnnforge.lower(randomize_model(small_mlp(1, hidden=32), seed=5), (1, 8, 8),
                           meta={"name": "mlp"})
    graph = OrderChannelsByMST().apply(ChooseFolding(target_cycles=64).apply(graph))
    for name in ("fc0", "fc1"):
        op = graph.op(name)
        graph.attrs(name)["fold"] = {"pe": op.channels, "simd": op.k, "mst": True}
        assert max(graph.attrs(name)["mst"]["depth"]) >= 2
    graph = SizeFifos().apply(graph)
    folder = tmp_path_factory.mktemp("mst_build")
    save_graph(graph, folder)
    emit_verilog(graph, folder)
    return folder


@pytest.mark.rtl
@pytest.mark.filterwarnings("ignore::amaranth.hdl.UnusedElaboratable")
@pytest.mark.parametrize("sim", ["icarus", "verilator"])
def test_accelerator_with_mst_layers_verifies(mst_build, sim):
    """The whole accelerator's RTL (cocotb) against the reference and sim.timing."""
    from bnnforge.verify import verify_build

    section = verify_build(mst_build, simulator=sim, frames=40, input_gap=0.3,
                           output_stall=0.4, seed=3, progress=False)
    assert section["value_mismatches"] == 0 and section["cycle_mismatches"] == 0
    assert section["handshakes_checked"] == 40 + 40 * 64
