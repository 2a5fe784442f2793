"""Energy model sanity, and simulate_build writing the report's sim section and plots."""

import json

import numpy as np
import pytest

import bnnforge
from bnnforge.buildfolder import update_report
from bnnforge.compiler.folding import ChooseFolding
from bnnforge.sim import DEFAULT_COEFFICIENTS, count_operations, estimate_energy, simulate_timing
from bnnforge.simulate import simulate_build
from conftest import randomize_model, small_cnn, small_mlp


@pytest.fixture(scope="module")
def cnn():
    return ChooseFolding().apply(bnnforge.lower(randomize_model(small_cnn(1), 4), (1, 8, 8)))


def test_counts_scale_with_frames(cnn):
    one = count_operations(cnn, 1)["total"]
    many = count_operations(cnn, 37)["total"]
    assert all(many[k] == 37 * one[k] for k in one)
    assert one["xnor"] == sum(op.k * op.channels * (op.out_shape[1] * op.out_shape[2]
                                                    if op.kind == "conv" else 1)
                              for _, op in cnn if op.kind in ("conv", "dense", "score"))
    e1 = estimate_energy(cnn, simulate_timing(cnn, 5, record=False))
    e2 = estimate_energy(cnn, simulate_timing(cnn, 50, record=False))
    assert e2["counts"]["xnor"] == 10 * e1["counts"]["xnor"]
    assert e1["dynamic_nj"] == pytest.approx(e2["dynamic_nj"])


@pytest.mark.parametrize("family", sorted(DEFAULT_COEFFICIENTS))
def test_breakdown_sums_to_total(cnn, family):
    e = estimate_energy(cnn, simulate_timing(cnn, 20), family=family, clock_mhz=24.0)
    assert e["energy_nj_per_frame"] > 0
    assert sum(e["breakdown"].values()) == pytest.approx(e["energy_nj_per_frame"])
    assert e["static_nj"] + e["dynamic_nj"] == pytest.approx(e["energy_nj_per_frame"])
    assert all(v >= 0 for v in e["breakdown"].values())
    assert DEFAULT_COEFFICIENTS[family]["source"] == e["source"]
    # static energy = static power x frame time
    cpf = e["cycles_per_frame"]
    assert e["static_nj"] == pytest.approx(
        DEFAULT_COEFFICIENTS[family]["static_mw"] * 1e-3 * cpf / 24e6 * 1e9)
    # a slower clock costs static energy only
    slow = estimate_energy(cnn, simulate_timing(cnn, 20), family=family, clock_mhz=12.0)
    assert slow["static_nj"] == pytest.approx(2 * e["static_nj"])
    assert slow["dynamic_nj"] == pytest.approx(e["dynamic_nj"])


def test_ecp5_idles_hungrier_than_ice40(cnn):
    t = simulate_timing(cnn, 10)
    assert estimate_energy(cnn, t, family="ecp5")["static_nj"] > \
        100 * estimate_energy(cnn, t, family="ice40up")["static_nj"]


def test_board_profile_coefficients(cnn):
    from bnnforge.boards.profiles import BOARDS

    t = simulate_timing(cnn, 10)
    for board in BOARDS.values():
        e = estimate_energy(cnn, t, coefficients=board.energy, clock_mhz=12.0)
        assert sum(e["breakdown"].values()) == pytest.approx(e["energy_nj_per_frame"])
        assert e["static_nj"] == pytest.approx(
            board.coefficient("static_mw") * 1e-3 * e["cycles_per_frame"] / 12e6 * 1e9)
        assert e["basis"]["static"] == board.energy["static_mw"]["basis"]


def test_one_set_of_coefficients_per_family():
    from bnnforge.boards.profiles import BOARDS, ENERGY_KEYS, FAMILY_ENERGY

    assert set(DEFAULT_COEFFICIENTS) == set(FAMILY_ENERGY) == {"ice40up", "ice40hx", "ecp5"}
    for board in BOARDS.values():
        assert board.energy is FAMILY_ENERGY[board.family]
        for key in ENERGY_KEYS:
            assert DEFAULT_COEFFICIENTS[board.family][key] == board.coefficient(key)
    # ECP5: one static figure (the former fallback said 40 mW, the profile 85 mW)
    assert DEFAULT_COEFFICIENTS["ecp5"]["static_mw"] == BOARDS["ulx3s-85f"].coefficient(
        "static_mw") == 85.0


def test_ice40up_terms_follow_the_measurements():
    up = DEFAULT_COEFFICIENTS["ice40up"]
    # blank design 85.6 uA at 1.219 V; PLL 0.84 mA fixed + 36 uA/MHz; +28 uA for 224 cells at
    # 12 MHz; 8x8 multiply +351 uA at 12 MHz over ~100 toggles
    assert up["static_mw"] == pytest.approx(0.0856 * 1.219, rel=1e-4)
    assert up["pll_mw"] == pytest.approx(0.84 * 1.219, rel=1e-4)
    assert up["clock_tree_pj_per_cycle"] == pytest.approx(36e-6 * 1.219 * 1e6, rel=1e-4)
    assert up["clock_pj_per_cell_cycle"] == pytest.approx(28e-6 / 224 * 1.219 / 12e6 * 1e12,
                                                          rel=1e-3)
    assert 100 * up["toggle_pj"] == pytest.approx(351e-6 * 1.219 / 12e6 * 1e12, rel=1e-4)
    # the clock tree and the PLL at 30 MHz: 2.3-2.5 mW, as the measurements say
    mw = up["pll_mw"] + up["clock_tree_pj_per_cycle"] * 30e6 * 1e-9
    assert 2.3 <= mw <= 2.5
    assert {up["basis"][k] for k in ("static_mw", "pll_mw", "clock_tree_pj_per_cycle",
                                     "clock_pj_per_cell_cycle", "toggle_pj")} == {"measured"}
    assert up["basis"]["glitch_factor"] == up["basis"]["bram_pj_per_bit_read"] == "estimate"
    assert set(DEFAULT_COEFFICIENTS["ecp5"]["basis"].values()) == {"estimate"}


def test_clock_and_pll_terms(cnn):
    t = simulate_timing(cnn, 10)
    up = DEFAULT_COEFFICIENTS["ice40up"]
    plain = estimate_energy(cnn, t, clock_mhz=30.0)
    pll = estimate_energy(cnn, t, clock_mhz=30.0, pll=True)
    cpf = plain["cycles_per_frame"]
    assert plain["breakdown"]["pll"] == 0.0
    assert pll["breakdown"]["pll"] == pytest.approx(up["pll_mw"] * 1e-3 * cpf / 30e6 * 1e9)
    assert pll["breakdown"]["clock_tree"] == pytest.approx(
        up["clock_tree_pj_per_cycle"] * cpf / 1000)
    assert pll["energy_nj_per_frame"] - plain["energy_nj_per_frame"] == \
        pytest.approx(pll["breakdown"]["pll"])
    assert sum(pll["layers"][s]["total"] for s in pll["layers"]) + sum(
        pll["breakdown"][k] for k in ("clock_tree", "pll", "static")) == \
        pytest.approx(pll["energy_nj_per_frame"])
    assert pll["basis"]["pll"] == "measured" and pll["basis"]["weight_rom_bits"] == "estimate"


def _activity(net: int, ff: int, frames: int = 4) -> dict:
    return {"frames": frames, "cycles_per_frame": 100.0, "blocks": {
        "s3_fc0_mvtu": {"node": "fc0", "ff_bits": 10, "ff_toggles": ff * frames,
                        "net_bits": 50, "net_toggles": net * frames,
                        "memories": [("weights", 16, 256, None),
                                     ("thresholds", 8, 16, None)]}}}


def test_activity_energy_prices_toggles():
    from bnnforge.sim.energy import activity_energy, compare_models

    up = DEFAULT_COEFFICIENTS["ice40up"]
    a = activity_energy(_activity(1000, 200), clock_mhz=30.0)
    lay = a["layers"]["fc0"]
    assert lay["logic"] == pytest.approx(1000 * up["glitch_factor"] * up["toggle_pj"] / 1000)
    assert lay["ff"] == pytest.approx(200 * up["toggle_pj"] / 1000)     # no glitch factor
    assert lay["bram"] == pytest.approx(16 * 100 * up["bram_pj_per_bit_read"] / 1000)
    assert lay["clock_cells"] == pytest.approx(10 * 100 * up["clock_pj_per_cell_cycle"] / 1000)
    assert sum(a["breakdown"].values()) == pytest.approx(a["energy_nj_per_frame"])
    assert a["glitch_range"] == [1.0, 2.0]
    quiet = activity_energy(_activity(10, 2), clock_mhz=30.0)
    assert quiet["energy_nj_per_frame"] < a["energy_nj_per_frame"]
    rows = compare_models({"layers": {"fc0": {"total": 2 * lay["total"]}},
                           "breakdown": a["breakdown"],
                           "energy_nj_per_frame": 1.0}, a)
    assert [r["name"] for r in rows] == ["fc0", "fixed", "total"]
    assert rows[0]["ratio"] == pytest.approx(2.0) and rows[1]["ratio"] == pytest.approx(1.0)


def test_energy_errors(cnn):
    with pytest.raises(ValueError, match=r"no energy coefficients for family 'xc7'"):
        estimate_energy(cnn, family="xc7")
    with pytest.raises(ValueError, match=r"energy coefficients lack .*static_mw"):
        estimate_energy(cnn, coefficients={"xnor_pj": 1.0})


def test_simulate_build_writes_sim_section(tmp_path):
    graph = ChooseFolding().apply(bnnforge.lower(randomize_model(small_mlp(1), 5), (1, 8, 8),
                                                 meta={"dataset": "digits"}))
    graph.attrs("fc0")["fifo_depth"] = 3
    bnnforge.save_graph(graph, tmp_path)
    update_report(tmp_path, "compile", {"clock_mhz": 12.0})
    sim = simulate_build(tmp_path, frames=50, progress=False)
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["sim"] == sim
    assert report["compile"] == {"clock_mhz": 12.0}
    assert set(sim) == {"frames", "cycles_per_frame", "latency_cycles", "clock_mhz", "fps",
                        "energy_nj_per_frame", "energy_breakdown", "energy_basis",
                        "bottleneck", "fifo_depths", "wall_s", "layers"}
    assert set(sim["energy_basis"]) == set(sim["energy_breakdown"])
    timing = simulate_timing(graph, 50)
    assert sim["frames"] == 50 and sim["clock_mhz"] == 12.0
    assert sim["cycles_per_frame"] == pytest.approx(timing.cycles_per_frame)
    assert sim["latency_cycles"] == timing.latency_cycles
    assert sim["fps"] == pytest.approx(12e6 / timing.cycles_per_frame, rel=1e-6)
    assert sim["fifo_depths"] == {"input": 2, "fc0": 3, "fc1": 2, "scores": 2}
    assert [layer["name"] for layer in sim["layers"]] == graph.order()
    assert [layer["name"] for layer in sim["layers"] if layer["bottleneck"]] == \
        [sim["bottleneck"]]
    assert sum(sim["energy_breakdown"].values()) == pytest.approx(
        sim["energy_nj_per_frame"], rel=1e-4)
    for name in ("sim_cycles.png", "sim_energy.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    again = simulate_build(tmp_path, frames=50, progress=False, clock_mhz=24.0)
    assert again["fps"] == pytest.approx(2 * sim["fps"], rel=1e-6)
    assert np.isclose(again["energy_breakdown"]["static"],
                      sim["energy_breakdown"]["static"] / 2, rtol=1e-3)


def test_simulate_build_errors(tmp_path):
    with pytest.raises(ValueError, match=r"is not a bnnforge build folder"):
        simulate_build(tmp_path, progress=False)
    with pytest.raises(ValueError, match=r"frames must be a positive number of frames, not 0"):
        simulate_build(tmp_path, frames=0, progress=False)
