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
    assert DEFAULT_COEFFICIENTS[family]["source"] == e["source"] and "Horowitz" in e["source"]
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
        assert "Horowitz" in e["source"]


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
                        "energy_nj_per_frame", "energy_breakdown", "bottleneck",
                        "fifo_depths", "wall_s", "layers"}
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
