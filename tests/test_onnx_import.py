"""QONNX import: real Brevitas exports of FINN's BNN-PYNQ FC models, and every refusal."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import helper, numpy_helper
from qonnx_helpers import STYLES, export, frames
from qonnx_helpers import edited as _edited
from qonnx_helpers import qonnx_scores as _qonnx_scores
from qonnx_helpers import refuses as _refuses

import bnnforge
from bnnforge.cli import main
from bnnforge.flow import compile_model
from bnnforge.onnx_import import check_against_qonnx, import_onnx, import_onnx_file
from conftest import randomize_bn

FRAMES = 1000
# every arch on both exporters
CASES = [(a, s) for a in ("tfc_1w1a", "sfc_1w1a", "lfc_1w1a") for s in STYLES]


def _export(model, path, style: str) -> str:
    return export(model, path, style, (1, 1, 28, 28))


def _frames(n: int = FRAMES, seed: int = 1) -> np.ndarray:
    return frames(n, (1, 28, 28), seed)


def _brevitas_model(name: str, seed: int, *, tail_weight: float | None = None):
    """A BNN-PYNQ model with random weights, BatchNorms and TensorNorm, in eval mode."""
    from brevitas_examples.bnn_pynq.models import model_with_cfg

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model, _ = model_with_cfg(name, pretrained=False)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm1d):
            randomize_bn(m, rng)
        if type(m).__name__ == "TensorNorm":
            with torch.no_grad():
                w = rng.uniform(0.1, 2.0) if tail_weight is None else tail_weight
                m.weight.fill_(w)
                m.bias.fill_(float(rng.normal(0, 3)))
                m.running_mean.fill_(float(rng.normal(0, 5)))
                m.running_var.fill_(float(rng.uniform(0.5, 30)))
    return model.eval()


@pytest.fixture(scope="module", params=CASES, ids=lambda c: f"{c[0]}-{c[1]}")
def imported(request, tmp_path_factory):
    name, style = request.param
    folder = tmp_path_factory.mktemp(f"{name}-{style}")
    model = _brevitas_model(name, seed=len(name) + len(style))
    onnx_path = _export(model, folder / f"{name}.onnx", style)
    out = folder / f"{name}.bnn"
    import_onnx_file(onnx_path, out)
    return {"name": name, "style": style, "brevitas": model, "onnx": onnx_path, "bnn": out,
            "folder": folder}


@pytest.fixture(scope="module")
def tfc_ts(tmp_path_factory):
    """A torchscript tfc export, for graphs edited by the refusal tests."""
    folder = tmp_path_factory.mktemp("tfc-edit")
    return _export(_brevitas_model("tfc_1w1a", 5), folder / "tfc.onnx", "torchscript")


@pytest.fixture(scope="module")
def tfc_dynamo(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tfc-dyn")
    return _export(_brevitas_model("tfc_1w1a", 6), folder / "tfc.onnx", "dynamo")


def test_reference_matches_qonnx(imported):
    x = _frames()
    model = bnnforge.load(imported["bnn"])
    ours = bnnforge.reference(bnnforge.lower(model, model.input_shape), x)
    theirs = _qonnx_scores(imported["onnx"], x)
    assert ours.shape == theirs.shape == (FRAMES, 10)
    agree = np.argmax(ours, axis=1) == np.argmax(theirs, axis=1)
    assert agree.all(), f"{(~agree).sum()} of {FRAMES} frames differ"
    # the scores are not all one class: the check can fail
    assert len(np.unique(np.argmax(theirs, axis=1))) > 3


def test_torch_model_matches_brevitas(imported):
    x = _frames()
    model = bnnforge.load(imported["bnn"])
    assert model.input_shape == (1, 28, 28)
    assert model.bnnforge_meta == {"name": imported["name"],
                                   "source": f"{imported['name']}.onnx",
                                   "imported_from": "qonnx"}
    xf = torch.from_numpy(x).float() / 255.0
    with torch.no_grad():
        ours = model(xf).numpy()
        theirs = imported["brevitas"](xf)
        theirs = getattr(theirs, "value", theirs).numpy()
    np.testing.assert_array_equal(np.argmax(ours, axis=1), np.argmax(theirs, axis=1))
    # the final BatchNorm is TensorNorm: the same scores up to float32 rounding
    np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-3)


def test_compiles(imported):
    build = imported["folder"] / "build"
    report = compile_model(imported["bnn"], build, rtl=False)
    layers = [row["op"] for row in report["compile"]["layers"]]
    hidden = {"tfc_1w1a": 3, "sfc_1w1a": 3, "lfc_1w1a": 3}[imported["name"]]
    assert layers == ["InputLayer"] + ["BinaryDense"] * hidden + ["ScoreLayer"]
    saved = json.loads((build / "report.json").read_text())
    assert saved["model"]["name"] == imported["name"]
    assert saved["model"]["disagreements"] is None      # no dataset: nothing to compare


def test_shapes_and_scales(imported):
    model = bnnforge.load(imported["bnn"])
    widths = {"tfc_1w1a": 64, "sfc_1w1a": 256, "lfc_1w1a": 1024}[imported["name"]]
    linears = [m for m in model if type(m).__name__ == "BinaryLinear"]
    assert [m.out_features for m in linears] == [widths] * 3 + [10]
    assert all(m.scale == "none" for m in linears)
    bns = [m for m in model if isinstance(m, torch.nn.BatchNorm1d)]
    assert [m.eps for m in bns[:3]] == [float(np.float32(1e-5))] * 3
    assert bns[-1].eps == 0.0 and torch.all(bns[-1].running_var == 1)


def test_per_channel_and_activation_scales(tfc_ts, tmp_path):
    """A per-output-channel weight scale and a scalar activation scale before the scores."""
    proto = onnx.load(tfc_ts)
    bq = [n for n in proto.graph.node if n.op_type == "BipolarQuant"]
    rng = np.random.default_rng(3)
    w_scale = rng.uniform(0.2, 3.0, (64, 1)).astype(np.float32)
    proto.graph.initializer.append(numpy_helper.from_array(w_scale, "w_scale"))
    proto.graph.initializer.append(numpy_helper.from_array(np.float32([0.25]), "a_scale"))
    bq[1].input[1] = "w_scale"          # the first layer's weights
    bq[-2].input[1] = "a_scale"         # the activation feeding the scores
    path = tmp_path / "scaled.onnx"
    onnx.save(proto, path)
    out = tmp_path / "scaled.bnn"
    res = import_onnx_file(path, out, check=FRAMES)
    assert res["agree"] == FRAMES
    linears = [m for m in bnnforge.load(out) if type(m).__name__ == "BinaryLinear"]
    assert [m.scale for m in linears] == ["channel", "none", "none", "channel"]
    np.testing.assert_array_equal(linears[0].alpha.detach().numpy(), w_scale[:, 0])
    np.testing.assert_array_equal(linears[3].alpha.detach().numpy(), np.full(10, 0.25))


@pytest.mark.rtl
@pytest.mark.parametrize("simulator, fps", [("icarus", None), ("verilator", 1e6)])
def test_rtl_matches(tfc_dynamo, tmp_path, simulator, fps):
    """The QONNX file compiled straight from .onnx; values and every handshake cycle exact."""
    from bnnforge.verify import verify_build

    build = tmp_path / "build"
    compile_model(tfc_dynamo, build, fps=fps)
    section = verify_build(build, simulator=simulator, frames=20, input_gap=0.2,
                           output_stall=0.2, progress=False)
    assert section["value_mismatches"] == 0
    assert section["cycle_mismatches"] == 0
    assert section["frames"] == 20


@pytest.mark.rtl
def test_sfc_torchscript_rtl(tmp_path):
    """SFC from the TorchScript exporter, compiled from .onnx: Verilator, gaps and stalls."""
    from bnnforge.verify import verify_build

    path = _export(_brevitas_model("sfc_1w1a", 9), tmp_path / "sfc.onnx", "torchscript")
    build = tmp_path / "build"
    compile_model(path, build)
    section = verify_build(build, simulator="verilator", frames=5, input_gap=0.2,
                           output_stall=0.2, progress=False)
    assert section["value_mismatches"] == 0 and section["cycle_mismatches"] == 0


# ------------------------------------------------------------------------------------ the CLI

def test_cli_import_with_check(tfc_dynamo, tmp_path, capsys):
    out = tmp_path / "m.bnn"
    assert main(["import", tfc_dynamo, "-o", str(out), "--check", "300"]) == 0
    text = capsys.readouterr().out
    assert "300 frames: qonnx and bnnforge agree on 300 of 300 (argmax)" in text
    assert bnnforge.read_info(out)["meta"]["imported_from"] == "qonnx"


def test_cli_compile_accepts_onnx(tfc_ts, tmp_path, capsys):
    build = tmp_path / "build"
    assert main(["compile", tfc_ts, "-o", str(build), "--no-rtl"]) == 0
    assert (build / "graph.json").is_file()
    report = json.loads((build / "report.json").read_text())
    assert report["model"]["name"] == "tfc"
    assert json.loads((build / "graph.json").read_text())["meta"]["source"] == Path(tfc_ts).name
    assert f"compiled {tfc_ts}" in capsys.readouterr().out


def test_cli_refusal_is_one_line(tfc_ts, tmp_path, capsys):
    proto = onnx.load(tfc_ts)
    proto.graph.node.append(helper.make_node("MultiThreshold", ["63", "t"], ["mt"],
                                             domain="qonnx.custom_op.general", name="mt0"))
    bad = tmp_path / "finn.onnx"
    onnx.save(proto, bad)
    out = tmp_path / "m.bnn"
    assert main(["import", str(bad), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("bnnforge import: error: node 'mt0' (MultiThreshold) comes from "
                          "FINN's transformations")
    assert not out.exists()
    assert main(["compile", str(bad), "-o", str(tmp_path / "build")]) == 2
    assert "bnnforge compile: error: node 'mt0'" in capsys.readouterr().err
    assert not (tmp_path / "build").exists()


def test_check_against_qonnx_counts_agreement(tfc_ts):
    model, shape, _ = import_onnx(tfc_ts)
    assert check_against_qonnx(tfc_ts, model, shape, 50) == 50


def test_check_needs_qonnx(tfc_ts, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "qonnx.core.modelwrapper", None)   # as if not installed
    out = tmp_path / "m.bnn"
    assert main(["import", tfc_ts, "-o", str(out), "--check", "10"]) == 2
    assert capsys.readouterr().err == ("bnnforge import: error: --check needs qonnx "
                                       "(pip install qonnx)\n")
    assert not out.exists()


# ------------------------------------------------------------------------------- the refusals

def _init(graph, name: str):
    return next(t for t in graph.initializer if t.name == name)


def _set_init(graph, name: str, value: np.ndarray) -> None:
    _init(graph, name).CopyFrom(numpy_helper.from_array(value, name))


def test_refuses_multibit(tmp_path):
    path = _export(_brevitas_model("tfc_1w2a", 1), tmp_path / "w1a2.onnx", "torchscript")
    _refuses(path, r"\(Quant, 2-bit\): bnnforge supports binary weights and activations; "
                   "export a w1a1 model", tmp_path)


def test_refuses_fpgadataflow(tfc_ts, tmp_path):
    def edit(g):
        g.node.append(helper.make_node("MVAU_hls", ["63"], ["y"], name="mvau0",
                                       domain="finn.custom_op.fpgadataflow.hls"))
    _refuses(_edited(tfc_ts, tmp_path, edit),
             r"node 'mvau0' \(MVAU_hls\) comes from FINN's transformations; export QONNX "
             "straight from Brevitas, before FINN's transformations", tmp_path)


def test_refuses_unsupported_conv_ops(tfc_ts, tmp_path):
    """Convolutional graphs import (tests/test_onnx_import_cnv.py); other pooling does not."""
    def edit(g):
        node = next(n for n in g.node if n.op_type == "MatMul")
        node.op_type = "GlobalAveragePool"
    _refuses(_edited(tfc_ts, tmp_path, edit), r"\(GlobalAveragePool\) is not supported; "
             "bnnforge imports Conv \\(binary weights\\) and 2x2 MaxPool after a binary "
             "activation", tmp_path)


def test_refuses_unsupported_op(tfc_ts, tmp_path):
    def edit(g):
        g.node.append(helper.make_node("Softmax", ["63"], ["prob"], name="softmax0"))
        g.output[0].name = "prob"
    _refuses(_edited(tfc_ts, tmp_path, edit), r"node 'softmax0' \(Softmax\) is not supported",
             tmp_path)


def test_refuses_two_outputs(tfc_ts, tmp_path):
    def edit(g):
        g.output.append(helper.make_tensor_value_info("/features.2/MatMul_output_0",
                                                      onnx.TensorProto.FLOAT, None))
    _refuses(_edited(tfc_ts, tmp_path, edit), "has 1 inputs and 2 outputs; bnnforge imports "
             "models with one image input", tmp_path)


def test_refuses_non_finite(tfc_ts, tmp_path):
    def edit(g):
        value = numpy_helper.to_array(_init(g, "features.7.weight")).copy()
        value[3] = np.nan
        _set_init(g, "features.7.weight", value)
    _refuses(_edited(tfc_ts, tmp_path, edit),
             r"\(BatchNormalization\) holds NaN or infinite parameters", tmp_path)


def test_other_input_threshold_agrees_with_qonnx(tfc_ts, tmp_path):
    """2x - 0.5 >= 0: bit = x >= 0.25, i.e. byte >= 64: InputQuant(bits=1, threshold=64)."""
    def edit(g):
        _set_init(g, "/Constant_2_output_0", np.float32([0.5]))
    path = _edited(tfc_ts, tmp_path, edit)
    model, shape, _ = import_onnx(path)
    assert model[0].threshold == 64
    x = _frames(1000, seed=3)
    assert check_against_qonnx(path, model, shape, 1000, seed=3) == 1000
    ours = bnnforge.reference(bnnforge.lower(model, shape), x)
    assert (np.argmax(ours, axis=1) == np.argmax(_qonnx_scores(path, x), axis=1)).all()


def test_refuses_a_constant_input(tfc_ts, tmp_path):
    def edit(g):       # 2x + 5 >= 0 for every byte
        _set_init(g, "/Constant_2_output_0", np.float32([-5.0]))
    _refuses(_edited(tfc_ts, tmp_path, edit), r"the first-layer 1-bit input is constant; "
             "bnnforge binarizes bytes as byte >= T with T in 1..255", tmp_path)


def test_refuses_negative_score_scale(tmp_path):
    path = _export(_brevitas_model("tfc_1w1a", 3, tail_weight=-0.5), tmp_path / "neg.onnx",
                   "torchscript")
    _refuses(path, r"\(Add\): scores scaled by a non-positive factor change the argmax",
             tmp_path)


def test_refuses_non_positive_quant_scale(tfc_ts, tmp_path):
    def edit(g):
        _set_init(g, "qonnx.custom_op.general::BipolarQuant_34", np.float32([-1.0]))
    _refuses(_edited(tfc_ts, tmp_path, edit), r"\(BipolarQuant\) has a non-positive or "
             "non-finite scale", tmp_path)


def test_refuses_non_constant_scale(tfc_ts, tmp_path):
    def edit(g):     # the last hidden activation scaled by the data itself
        bq = [n for n in g.node if n.op_type == "BipolarQuant"]
        bq[-2].input[1] = bq[-2].input[0]
    _refuses(_edited(tfc_ts, tmp_path, edit), r"\(BipolarQuant\) input 1 .* is not a constant",
             tmp_path)


def test_gemm_bias_folds_into_the_affine(tfc_dynamo, tmp_path):
    """A Gemm bias (scaled by beta) is added before the BatchNorm: qonnx agrees on every frame."""
    rng = np.random.default_rng(4)

    def edit(g):
        for i, gemm in enumerate(n for n in g.node if n.op_type == "Gemm"):
            width = 10 if i == 3 else 64
            name = f"bias{i}"
            g.initializer.append(numpy_helper.from_array(
                rng.normal(0, 6, width).astype(np.float32), name))
            gemm.input.append(name)
            kept = [a for a in gemm.attribute if a.name != "beta"]
            del gemm.attribute[:]
            gemm.attribute.extend(kept + [helper.make_attribute("beta", 0.5)])
    path = _edited(tfc_dynamo, tmp_path, edit)
    model, shape, _ = import_onnx(path)
    x = _frames(FRAMES, seed=5)
    ours = bnnforge.reference(bnnforge.lower(model, shape), x)
    assert (np.argmax(ours, axis=1) == np.argmax(_qonnx_scores(path, x), axis=1)).all()


def test_refuses_float_weights(tfc_ts, tmp_path):
    def edit(g):     # feed the raw float weight to the Transpose, skipping its BipolarQuant
        t = next(n for n in g.node if n.op_type == "Transpose")
        t.input[0] = "features.2.weight"
    _refuses(_edited(tfc_ts, tmp_path, edit), r"\(MatMul\) has weights that are not binary",
             tmp_path)


def test_refuses_truncated_and_non_onnx(tfc_ts, tmp_path):
    data = open(tfc_ts, "rb").read()
    cut = tmp_path / "cut.onnx"
    cut.write_bytes(data[: len(data) // 2])
    _refuses(cut, "cut.onnx is not a readable ONNX file", tmp_path)
    text = tmp_path / "text.onnx"
    text.write_text("hello, I am not a model\n")
    _refuses(text, "text.onnx is not a readable ONNX file", tmp_path)
    _refuses(tmp_path / "absent.onnx", "not found", tmp_path)


def test_external_data(tfc_dynamo, tmp_path):
    """Brevitas 0.13 re-saves the dynamo export inline (its .onnx.data is left over, unused);
    a model saved with external data is read with it, and refused without it."""
    proto = onnx.load(tfc_dynamo)
    path = tmp_path / "ext.onnx"
    onnx.save_model(proto, path, save_as_external_data=True, location="ext.onnx.data",
                    size_threshold=0)
    assert (tmp_path / "ext.onnx.data").stat().st_size > 64 * 784 // 8
    model, _, _ = import_onnx(path)
    inline, _, _ = import_onnx(tfc_dynamo)
    for a, b in zip(model.state_dict().values(), inline.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    (tmp_path / "ext.onnx.data").unlink()
    _refuses(path, r"ext.onnx keeps its weights in ext.onnx.data, which is missing; put "
             "ext.onnx.data next to ext.onnx", tmp_path)


def test_refuses_a_bias_of_the_wrong_length(tfc_dynamo, tmp_path):
    def edit(g):
        gemm = next(n for n in g.node if n.op_type == "Gemm")
        g.initializer.append(numpy_helper.from_array(np.ones(3, np.float32), "bias3"))
        gemm.input.append("bias3")
    _refuses(_edited(tfc_dynamo, tmp_path, edit), r"has 3 values for 64 channels; give one "
             "per channel", tmp_path)
