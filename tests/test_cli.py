"""The command line: the train -> compile flow, and one-line errors with no half-written output."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

import bnnforge
from bnnforge.cli import main
from conftest import randomize_model, small_cnn


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "tfc.bnn"
    assert main(["train", "--arch", "tfc", "--dataset", "digits", "--epochs", "2",
                 "--no-progress", "-o", str(path)]) == 0
    return path


def test_train_then_compile(trained, tmp_path, capsys):
    out = tmp_path / "build"
    assert main(["compile", str(trained), "-o", str(out), "--fps", "500000"]) == 0
    for name in ("graph.json", "weights.npz", "report.json", "rtl/bnnforge_top.v"):
        assert (out / name).is_file(), name
    report = json.loads((out / "report.json").read_text())
    model = report["model"]
    assert model["dataset"] == "digits" and model["frames"] == 360
    assert model["disagreements"] == 0
    assert model["accuracy_torch"] == model["accuracy_reference"] > 0.5
    layers = report["compile"]["layers"]
    assert [row["name"] for row in layers] == ["input", "fc0", "fc1", "fc2", "scores"]
    assert all(row["cycles_per_frame"] <= 200 for row in layers)   # 100 MHz / 500k fps
    assert all(row["pe"] and row["simd"] for row in layers[1:])
    text = capsys.readouterr().out
    assert "held-out accuracy: torch" in text and "<- bottleneck" in text
    assert re.search(r"\n\d+ cycles/frame at [\d.]+ MHz", text)


def test_compile_is_deterministic(trained, tmp_path):
    for d in ("a", "b"):
        assert main(["compile", str(trained), "-o", str(tmp_path / d), "--no-rtl"]) == 0
    for name in ("graph.json", "weights.npz"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def _error(capsys, argv, match):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert pytest.importorskip("re").search(match, err), err


@pytest.mark.parametrize("argv, match", [
    (["train", "--arch", "tfc", "--dataset", "digits", "--quantizer", "sgn", "-o", "m.bnn"],
     r"bnnforge train: error: unknown quantizer 'sgn'; choose one of ste, approx_sign, reste, "
     r"biper"),
    (["train", "--arch", "tfc", "--dataset", "cifar", "-o", "m.bnn"],
     r"bnnforge train: error: unknown dataset 'cifar'; choose one of digits, mnist5k"),
    (["train", "--arch", "vgg", "--dataset", "digits", "-o", "m.bnn"],
     r"bnnforge train: error: unknown architecture 'vgg'; choose one of tfc, sfc, lfc, cnv, "
     r"resnet"),
    (["train", "--arch", "tfc", "--dataset", "digits", "--epochs", "0", "-o", "m.bnn"],
     r"bnnforge train: error: argument --epochs: expected a positive integer, not '0'"),
    (["compile", "missing.bnn", "-o", "out"],
     r"bnnforge compile: error: model file missing.bnn not found; train one"),
    (["train", "--arch", "tfc", "--dataset", "digits", "--shift", "-1", "-o", "m.bnn"],
     r"bnnforge train: error: argument --shift: expected a whole number >= 0, not '-1'"),
    (["demo", "--board", "icestick", "-o", "out", "--no-progress"],
     r"bnnforge demo: error: unknown board 'icestick'; choose one of icebreaker, "),
    (["frobnicate"], r"bnnforge: error: argument COMMAND: invalid choice: 'frobnicate'"),
    (["compile", "m.bnn", "-o", "out", "--mst-depth", "0"],
     r"bnnforge compile: error: argument --mst-depth: expected a positive integer, not '0'"),
    (["sweep", "missing.toml", "-o", "out"],
     r"bnnforge sweep: error: spec missing.toml does not exist"),
    (["import", "missing.onnx", "-o", "m.bnn"],
     r"bnnforge import: error: ONNX file missing.onnx not found"),
    (["energy", "out", "--no-progress"],
     r"bnnforge energy: error: .*out is not a bnnforge build folder"),
    (["energy", "out", "--frames", "0"],
     r"bnnforge energy: error: argument --frames: expected a positive integer, not '0'"),
    (["energy", "out", "--data", "ones"],
     r"bnnforge energy: error: argument --data: invalid choice: 'ones'"),
    (["energy", "out", "--family", "xc7"],
     r"bnnforge energy: error: argument --family: invalid choice: 'xc7'"),
])
def test_user_errors_are_one_line(capsys, tmp_path, monkeypatch, argv, match):
    monkeypatch.chdir(tmp_path)
    _error(capsys, argv, match)
    assert not (tmp_path / "m.bnn").exists() and not (tmp_path / "out").exists()


def test_energy_needs_the_rtl(capsys, tmp_path, trained):
    out = tmp_path / "build"
    assert main(["compile", str(trained), "-o", str(out), "--no-rtl"]) == 0
    capsys.readouterr()
    _error(capsys, ["energy", str(out), "--no-progress"],
           r"bnnforge energy: error: .*build has no RTL \(rtl/top.json\); compile it without "
           r"--no-rtl")
    _error(capsys, ["energy", str(out), "--clock-mhz", "0", "--no-progress"],
           r"bnnforge energy: error: clock_mhz must be positive, not 0.0")


def test_corrupt_and_truncated_model_files(capsys, tmp_path, trained):
    data = trained.read_bytes()
    (tmp_path / "t.bnn").write_bytes(data[: len(data) // 2])
    _error(capsys, ["compile", str(tmp_path / "t.bnn"), "-o", str(tmp_path / "o")],
           r"bnnforge compile: error: model file .*t.bnn is corrupt or truncated")
    (tmp_path / "c.bnn").write_text("hello")
    _error(capsys, ["compile", str(tmp_path / "c.bnn"), "-o", str(tmp_path / "o")],
           r"model file .*c.bnn is corrupt or truncated")
    assert not (tmp_path / "o").exists()


def test_failed_compile_leaves_no_folder(capsys, tmp_path, trained):
    out = tmp_path / "build"
    _error(capsys, ["compile", str(trained), "-o", str(out), "--fold", "fc0=3,7"],
           r"illegal folding fc0=3,7: PE must divide 64")
    _error(capsys, ["compile", str(trained), "-o", str(out), "--fps", "1e9"],
           r"faster than the streaming stages allow")
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_compile_refuses_a_foreign_output_folder(capsys, tmp_path, trained):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "notes.txt").write_text("mine")
    _error(capsys, ["compile", str(trained), "-o", str(tmp_path / "docs")],
           r"output folder .*docs is not empty and is not a bnnforge build")
    assert (tmp_path / "docs" / "notes.txt").read_text() == "mine"


def test_wrong_input_shape_in_model_file(capsys, tmp_path):
    model = randomize_model(small_cnn(), 1)
    bnnforge.save(model, tmp_path / "m.bnn", (1, 8, 8))
    import zipfile
    with zipfile.ZipFile(tmp_path / "m.bnn") as zf:
        manifest = json.loads(zf.read("manifest.json"))
        weights = zf.read("weights.npz")
    manifest["input_shape"] = [1, 12, 12]
    with zipfile.ZipFile(tmp_path / "s.bnn", "w") as zf:
        zf.writestr("manifest.json", json.dumps(manifest))
        zf.writestr("weights.npz", weights)
    _error(capsys, ["compile", str(tmp_path / "s.bnn"), "-o", str(tmp_path / "o")],
           r"input shape \(1, 12, 12\) does not fit the model")


def test_console_entry_point_has_no_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "bnnforge", "compile", "nope.bnn", "-o", "x"],
                          cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip() == ("bnnforge compile: error: model file nope.bnn not found; "
                                   "train one with 'bnnforge train'")


def test_sim_with_a_calibration_file(capsys, tmp_path, trained):
    """Measured coefficients replace the family's: the static term follows the file, the
    breakdown marks it measured, and a bad file is one line naming the problem."""
    out = tmp_path / "build"
    assert main(["compile", str(trained), "-o", str(out), "--no-rtl"]) == 0
    assert main(["sim", str(out), "--frames", "50", "--no-progress"]) == 0
    base = json.loads((out / "report.json").read_text())["sim"]
    calib = tmp_path / "calib.json"
    calib.write_text(json.dumps({"coefficients": {"static_mw": 100.0},
                                 "source": "bench supply, blank design"}))
    assert main(["sim", str(out), "--frames", "50", "--no-progress",
                 "--calibration", str(calib)]) == 0
    sim = json.loads((out / "report.json").read_text())["sim"]
    frame_s = sim["cycles_per_frame"] / (sim["clock_mhz"] * 1e6)
    assert sim["energy_breakdown"]["static"] == pytest.approx(100e-3 * frame_s * 1e9, rel=1e-4)
    assert sim["energy_breakdown"]["static"] > 100 * base["energy_breakdown"]["static"]
    assert sim["energy_basis"]["static"] == "measured"
    for key in set(base["energy_breakdown"]) - {"static"}:
        assert sim["energy_breakdown"][key] == base["energy_breakdown"][key], key
    capsys.readouterr()
    for text, match in (
            (None, r"calibration file .*nope.json does not exist"),
            ("{oops", r"calibration file .*nope.json is not valid JSON"),
            ('{"static_mw": 1}', r'calibration file .*nope.json has no "coefficients" object'),
            ('{"coefficients": {"leakage": 1}}', r"calibration file .*nope.json: unknown "
                                                 r"coefficient\(s\) leakage; known: static_mw"),
            ('{"coefficients": {"pll_mw": -1}}', r"calibration file .*nope.json: pll_mw must be "
                                                 r"a positive number, not -1")):
        path = tmp_path / "nope.json"
        path.unlink(missing_ok=True)
        if text is not None:
            path.write_text(text)
        _error(capsys, ["sim", str(out), "--no-progress", "--calibration", str(path)],
               r"bnnforge sim: error: " + match)
