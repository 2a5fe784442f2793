"""Real bitstreams (Yosys + nextpnr from YoWASP) and the build's errors."""

import json
import time

import numpy as np
import pytest
from torch import nn

import bnnforge
from bnnforge.boards import BitstreamError, build_bitstream, estimate_design_luts, get_board
from bnnforge.boards.toolchain import _nextpnr_failure, _rerun_pnr, check_timing, tool_environment
from bnnforge.build import build_board
from bnnforge.compiler import load_graph, save_graph
from bnnforge.compiler.folding import ChooseFolding
from bnnforge.flow import compile_model, train_model
from bnnforge.nn import BinaryActivation, BinaryLinear, InputQuant, archs
from bnnforge.sim import steady_cycles_per_frame
from conftest import randomize_model

pytestmark = [pytest.mark.pnr,
              pytest.mark.filterwarnings("ignore::amaranth.hdl.UnusedElaboratable")]

MNIST = (1, 28, 28)


def pooled_mlp():
    """28x28 binarized, 4x4 binary max-pool to 7x7, 49-32-10: a max-pool stage on a board."""
    model = nn.Sequential(InputQuant(1), nn.MaxPool2d(4), nn.Flatten(), BinaryLinear(49, 32),
                          nn.BatchNorm1d(32), BinaryActivation(), BinaryLinear(32, 10))
    return ChooseFolding().apply(bnnforge.lower(randomize_model(model, 2), MNIST))


def tfc(luts=2000):
    model = randomize_model(archs.build("tfc", MNIST, 10), 1)
    return ChooseFolding(luts=luts).apply(bnnforge.lower(model, MNIST))


def check(result, board, folder, clock=None):
    """A built board design's report; ``clock``: the design clock (default the board's)."""
    profile = get_board(board).with_clock(clock)
    assert result["board"] == board and result["device"] == profile.device
    bitstream = folder / result["bitstream"]
    assert bitstream.parent == folder / "bitstream" and bitstream.stat().st_size > 10_000
    assert result["fmax_mhz"] >= result["clock_mhz"] == profile.clock_mhz
    assert 0 < result["luts_used"] <= result["luts_total"] == profile.luts
    assert 0 < result["ffs_used"] <= profile.ffs
    assert 0 <= result["bram_used"] <= result["bram_total"] == profile.bram_blocks
    assert result["wall_s"] > 0
    # nextpnr timed the PLL's output at the design clock
    report = json.loads((folder / "bitstream" / board / "report.json").read_text())
    constraints = [v["constraint"] for v in report["fmax"].values()]
    assert constraints and all(c == pytest.approx(profile.clock_mhz, rel=1e-3)
                               for c in constraints)
    print(f"\n{board}: {result}")


@pytest.fixture(scope="module")
def tfc_model(tmp_path_factory):
    """tfc trained on mnist5k as the demo trains it (20 epochs, shifts of up to 1 px)."""
    model = tmp_path_factory.mktemp("tfc") / "tfc.bnn"
    train_model("tfc", "mnist5k", "ste", model, epochs=20, shift=1, progress=False)
    return model


def test_icebreaker_bitstream_meets_the_target(tmp_path, tfc_model):
    """The iCEBreaker target, measured: the trained tfc classifies >= 90% of the 1,000
    held-out frames in hardware arithmetic and, folded by ``compile --board icebreaker --fps
    200000``, runs >= 200,000 frames/s at the clock the timing-aware compile chose, which the
    placed design meets, with an Fmax of at least 50 MHz (the issue's iCE40UP5K target)."""
    folder = tmp_path / "build"
    report = compile_model(tfc_model, folder, board="icebreaker", fps=200_000)
    assert report["model"]["accuracy_reference"] >= 0.90
    assert report["model"]["disagreements"] == 0
    clock = report["compile"]["clock_mhz"]
    assert report["compile"]["timing"]["clock_from"] == "fmax model" and clock > 40
    graph = load_graph(folder)
    fps = clock * 1e6 / steady_cycles_per_frame(graph)
    assert fps >= 200_000
    result = build_board(folder, "icebreaker", progress=False)     # at the compile's clock
    check(result, "icebreaker", folder, clock)
    assert result["fmax_mhz"] >= 50         # the iCE40UP5K target
    assert (folder / "bitstream" / "icebreaker.bin").is_file()
    assert json.loads((folder / "report.json").read_text())["build"] == result
    # the input vector sits in block RAM (the 784-bit registers would not fit beside the rest)
    assert result["bram_used"] >= 17
    assert 0 < result["lut4_used"] <= result["luts_used"]
    # the estimate that guards place and route (and fit_to_board), in nextpnr's count for the
    # family, is close to what nextpnr used
    assert 0.85 * result["luts_used"] < estimate_design_luts(graph, "ice40up") < \
        1.2 * result["luts_used"]
    print(f"\ntfc on icebreaker: {100 * report['model']['accuracy_reference']:.1f}%, "
          f"{fps:,.0f} frames/s at {clock:g} MHz")


def test_ulx3s_bitstream_of_the_trained_model(tmp_path, tfc_model):
    folder = tmp_path / "build"
    report = compile_model(tfc_model, folder, board="ulx3s-85f", fps=200_000)
    assert report["model"]["accuracy_reference"] >= 0.90
    result = build_board(folder, "ulx3s-85f", progress=False)
    check(result, "ulx3s-85f", folder, report["compile"]["clock_mhz"])
    assert result["bitstream"] == "bitstream/ulx3s-85f.bit"
    assert 0 < result["lut4_used"] <= result["luts_used"]
    # the ECP5-calibrated estimate (compiler.costs.FAMILY_CELLS: -7%..+7% on our builds; this
    # design read +7%)
    estimate = estimate_design_luts(load_graph(folder), "ecp5")
    assert 0.85 * result["luts_used"] < estimate < 1.2 * result["luts_used"]


def test_icebreaker_bitstream_of_a_pooled_model(tmp_path):
    graph = pooled_mlp()
    save_graph(graph, tmp_path)
    result = build_board(tmp_path, "icebreaker", progress=False)
    check(result, "icebreaker", tmp_path)
    assert result["nextpnr_seed"] == 1
    assert 0.8 * result["luts_used"] < estimate_design_luts(graph) < 1.4 * result["luts_used"]
    # a retry re-runs only place and route and packing, with another seed, on the same netlist
    build_dir = tmp_path / "bitstream" / "icebreaker"
    netlist = (build_dir / "top.json").read_bytes()
    (build_dir / "top.bin").unlink()
    (build_dir / "report.json").unlink()
    proc = _rerun_pnr(build_dir, tool_environment(), 2)
    assert proc.returncode == 0
    assert (build_dir / "top.json").read_bytes() == netlist
    assert (build_dir / "top.bin").stat().st_size > 10_000
    assert json.loads((build_dir / "report.json").read_text())["fmax"]
    assert "--- nextpnr again with --seed 2" in (build_dir / "build.log").read_text()


def test_design_that_cannot_fit_is_refused_before_place_and_route(tmp_path):
    model = randomize_model(archs.build("lfc", MNIST, 10), 1)
    graph = bnnforge.lower(model, MNIST)
    for name in ("fc0", "fc1", "fc2", "scores"):
        op = graph.op(name)
        graph.attrs(name)["fold"] = {"pe": op.channels, "simd": op.k}
    start = time.perf_counter()
    with pytest.raises(BitstreamError, match=r"^the design needs about \d[\d,]+ LUTs but "
                       r"the iCE40UP5K on icebreaker has 5,280: even a serial folding "
                       r"(still needs about [\d,]+ logic cells|does not fit), mostly registers "
                       r"holding each layer's input vector: choose a smaller model or a bigger "
                       r"board \(e\.g\. [\w-]+\)$"):
        build_bitstream(graph, "icebreaker", tmp_path, progress=False)
    assert time.perf_counter() - start < 60
    assert not (tmp_path / "bitstream").exists()


def test_refusal_suggests_a_budget_that_fits(tmp_path):
    graph = tfc(luts=None)
    for name in ("fc0", "fc1", "fc2", "scores"):       # tfc fully parallel: too big for the HX8K
        op = graph.op(name)
        graph.attrs(name)["fold"] = {"pe": op.channels, "simd": op.k}
    with pytest.raises(BitstreamError, match=r"on ice40-hx8k has 7,680: recompile for this "
                       r"board with --luts \d+ \(about [\d,]+ frames/s at 12 MHz\) or --fps \d+$"):
        build_bitstream(graph, "ice40-hx8k", tmp_path, progress=False)


def test_build_board_records_the_refusal(tmp_path):
    model = randomize_model(archs.build("lfc", MNIST, 10), 1)
    graph = bnnforge.lower(model, MNIST)
    for name in ("fc0", "fc1", "fc2", "scores"):
        op = graph.op(name)
        graph.attrs(name)["fold"] = {"pe": op.channels, "simd": op.k}
    save_graph(graph, tmp_path)
    with pytest.raises(BitstreamError):
        build_board(tmp_path, "icebreaker", progress=False)
    build = json.loads((tmp_path / "report.json").read_text())["build"]
    assert build["board"] == "icebreaker" and "needs about" in build["error"]
    with pytest.raises(ValueError, match="unknown board 'icestick'; choose one of"):
        build_board(tmp_path, "icestick", progress=False)


def test_nextpnr_overuse_is_explained():
    log = ("Info: Device utilisation:\nInfo: \t         ICESTORM_LC:    6735/   5280   127%\n"
           "Info: \t        ICESTORM_RAM:      15/     30    50%\n"
           "ERROR: Unable to place cell 'x', no BELs remaining to implement cell type "
           "'ICESTORM_LC'\n")
    msg = _nextpnr_failure(log, get_board("icebreaker"), tfc(), 6627)
    assert msg.startswith("the design does not fit the iCE40UP5K on icebreaker: nextpnr needs "
                          "ICESTORM_LC 6,735 of 5,280 (the estimate was 6,627 LUTs); ")
    other = _nextpnr_failure("ERROR: something else\n", get_board("icebreaker"), tfc(), 1)
    assert other == "nextpnr failed for icebreaker: ERROR: something else"


def test_missed_clock_is_a_failure():
    result = {"board": "ulx3s-85f", "fmax_mhz": 19.5, "clock_mhz": 25.0}
    with pytest.raises(BitstreamError, match=r"reaches 19\.5 MHz on the LFE5U-85F, below the "
                       r"25 MHz clock of ulx3s-85f: the bitstream would not work\. Build at a "
                       r"lower clock \(clock_mhz=15\), or fold more \(a lower --fps or --luts"):
        check_timing(result, "ulx3s-85f")
    check_timing({"fmax_mhz": 75.1}, "ulx3s-85f")                    # the default clock
    check_timing({"fmax_mhz": 25.1, "clock_mhz": 25.0}, "ulx3s-85f")
    with pytest.raises(BitstreamError, match=r"reaches 25\.1 MHz .* Build at clock_mhz=25 \(the "
                       r"oscillator, without PLL\), or fold more"):
        check_timing({"fmax_mhz": 25.1}, "ulx3s-85f")
    assert np.isfinite(get_board("icebreaker").clock_mhz)


def test_a_near_miss_is_placed_again_with_other_seeds(tmp_path, monkeypatch):
    """Seed 1 places 5% under the clock, seed 2 fails to place, seed 3 meets it: the build keeps
    seed 3's bitstream. A design 20% under the clock is not retried."""
    from bnnforge.boards import toolchain as b

    def outcome(build_dir, fmax):
        if fmax is None:
            (build_dir / "top.tim").write_text("ERROR: Unable to find legal placement for all "
                                               "cells, design is probably at utilisation limit.\n")
            return type("P", (), {"returncode": 1})()
        (build_dir / "top.tim").write_text("Info: ok\n")
        (build_dir / "report.json").write_text(json.dumps(
            {"fmax": {"clk": {"achieved": fmax, "constraint": 30.0}},
             "utilization": {"ICESTORM_LC": {"used": 100, "available": 5280}}}))
        (build_dir / "top.bin").write_bytes(f"bitstream at {fmax}".encode())
        return type("P", (), {"returncode": 0})()

    def run(fmaxes):
        tried = []

        def first(build_dir, env, progress, board):
            tried.append(1)
            return outcome(build_dir, fmaxes[0])

        def again(build_dir, env, seed):
            tried.append(seed)
            return outcome(build_dir, fmaxes[seed - 1])

        monkeypatch.setattr(b, "_run_script", first)
        monkeypatch.setattr(b, "_rerun_pnr", again)
        return tried

    tried = run([28.5, None, 31.0])
    result = build_bitstream(pooled_mlp(), "icebreaker", tmp_path, progress=False)
    assert tried == [1, 2, 3]
    assert result["nextpnr_seed"] == 3 and result["fmax_mhz"] == 31.0
    assert (tmp_path / "bitstream" / "icebreaker.bin").read_bytes() == b"bitstream at 31.0"
    tried = run([24.0, 40.0, 40.0])
    with pytest.raises(BitstreamError, match=r"reaches 24\.0 MHz"):
        build_bitstream(pooled_mlp(), "icebreaker", tmp_path, progress=False)
    assert tried == [1]
    tried = run([None, None, None])
    with pytest.raises(BitstreamError, match=r"Unable to find legal placement"):
        build_bitstream(pooled_mlp(), "icebreaker", tmp_path, progress=False)
    assert tried == [1, 2, 3]
