"""QONNX import of FINN's BNN-PYNQ CNV-w1a1: the 8-bit Q1.7 input table, convolutions,
max-pools and flatten, on both exporters; a small CNV-topology model on RTL; the refusals."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from onnx import helper, numpy_helper
from qonnx_helpers import STYLES, export, frames
from qonnx_helpers import edited as _edited
from qonnx_helpers import qonnx_scores as _qonnx_scores
from qonnx_helpers import refuses as _refuses

import bnnforge
from bnnforge.flow import compile_model
from bnnforge.onnx_import import import_onnx_file
from conftest import randomize_bn

FRAMES = 1000
SMALL = {"CNV_OUT_CH_POOL": [(8, False), (8, True), (16, False), (16, True), (16, False),
                             (16, False)],
         "INTERMEDIATE_FC_FEATURES": [(16, 32), (32, 32)],
         "LAST_FC_IN_FEATURES": 32}


def _export(model, path, style: str) -> str:
    return export(model, path, style, (1, 3, 32, 32))


def _frames(n: int = FRAMES, seed: int = 1) -> np.ndarray:
    return frames(n, (3, 32, 32), seed)


def _cnv(seed: int, *, small: bool = False, name: str = "cnv_1w1a"):
    """A CNV with random weights, BatchNorms (negative and zero scales) and TensorNorm."""
    from brevitas_examples.bnn_pynq.models import CNV as cnv_module
    from brevitas_examples.bnn_pynq.models import model_with_cfg

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    with pytest.MonkeyPatch.context() as mp:
        if small:
            for key, value in SMALL.items():
                mp.setattr(cnv_module, key, value)
        model, _ = model_with_cfg(name, pretrained=False)
    for m in model.modules():
        if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
            randomize_bn(m, rng)
        if type(m).__name__ == "TensorNorm":
            with torch.no_grad():
                m.weight.fill_(rng.uniform(0.1, 2.0))
                m.bias.fill_(float(rng.normal(0, 3)))
                m.running_mean.fill_(float(rng.normal(0, 5)))
                m.running_var.fill_(float(rng.uniform(0.5, 30)))
    return model.eval()


def _expected_levels() -> np.ndarray:
    """qonnx's Quant (8-bit signed, scale 2^-7, ROUND = half to even) after 2x - 1, float32."""
    x = np.arange(256, dtype=np.float32) / np.float32(255)
    y = (x * np.float32(2) - np.float32(1)) / np.float32(2.0 ** -7)
    return np.round(np.clip(y, -128, 127)).astype(np.int64)


@pytest.fixture(scope="module")
def cnv(tmp_path_factory):
    """The same random CNV exported by both exporters, each imported into a model file."""
    folder = tmp_path_factory.mktemp("cnv")
    model = _cnv(seed=11)
    out = {"brevitas": model, "folder": folder}
    for style in STYLES:
        onnx_path = _export(model, folder / f"cnv_1w1a_{style}.onnx", style)
        bnn = folder / f"cnv_1w1a_{style}.bnn"
        import_onnx_file(onnx_path, bnn)
        out[style] = {"onnx": onnx_path, "bnn": bnn}
    return out


@pytest.fixture(scope="module")
def small_ts(tmp_path_factory):
    """A small CNV-topology torchscript export, for RTL and for graphs edited by refusals."""
    folder = tmp_path_factory.mktemp("cnv-small")
    return _export(_cnv(7, small=True), folder / "cnv_small.onnx", "torchscript")


@pytest.mark.parametrize("style", list(STYLES))
def test_reference_matches_qonnx(cnv, style):
    x = _frames()
    model = bnnforge.load(cnv[style]["bnn"])
    ours = bnnforge.reference(bnnforge.lower(model, model.input_shape), x)
    theirs = _qonnx_scores(cnv[style]["onnx"], x)
    assert ours.shape == theirs.shape == (FRAMES, 10)
    agree = np.argmax(ours, axis=1) == np.argmax(theirs, axis=1)
    assert agree.all(), f"{(~agree).sum()} of {FRAMES} frames differ"
    assert len(np.unique(np.argmax(theirs, axis=1))) > 3


def test_exporters_give_one_model(cnv):
    """Both exports import to the same layers and parameters, so the Brevitas comparison and
    the compile below run once."""
    a, b = bnnforge.load(cnv["dynamo"]["bnn"]), bnnforge.load(cnv["torchscript"]["bnn"])
    assert [str(m) for m in a] == [str(m) for m in b]
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_torch_model_matches_brevitas(cnv):
    x = _frames()
    model = bnnforge.load(cnv["dynamo"]["bnn"])
    assert model.input_shape == (3, 32, 32)
    assert model.bnnforge_meta["imported_from"] == "qonnx"
    xf = torch.from_numpy(x).float() / 255.0
    with torch.no_grad():
        ours = model(xf).numpy()
        theirs = cnv["brevitas"](xf)
        theirs = getattr(theirs, "value", theirs).numpy()
    np.testing.assert_array_equal(np.argmax(ours, axis=1), np.argmax(theirs, axis=1))
    np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-3)


def test_layers_levels_and_scales(cnv):
    model = bnnforge.load(cnv["torchscript"]["bnn"])
    kinds = [type(m).__name__ for m in model]
    conv = ["BinaryConv2d", "BatchNorm2d", "BinaryActivation"]
    fc = ["BinaryLinear", "BatchNorm1d", "BinaryActivation"]
    pool = ["MaxPool2d"]
    assert kinds == (["InputQuant"] + conv * 2 + pool + conv * 2 + pool + conv * 2
                     + ["Flatten"] + fc * 2 + ["BinaryLinear", "BatchNorm1d"])
    quant = model[0]
    assert quant.bits == 8
    levels = np.array(quant.levels)
    np.testing.assert_array_equal(levels, _expected_levels())
    # Q1.7 after 2x - 1: -128 at byte 0, never 0, 254 and 255 both clip to 127
    assert levels[0] == -128 and levels[254] == levels[255] == 127 and 0 not in levels
    convs = [m for m in model if type(m).__name__ == "BinaryConv2d"]
    assert [m.out_channels for m in convs] == [64, 64, 128, 128, 256, 256]
    assert all(m.padding == (0, 0) and m.stride == (1, 1) for m in convs)
    # the input scale 2^-7 moves after the first layer's sum; the others are 1
    assert convs[0].scale == "channel"
    np.testing.assert_array_equal(convs[0].alpha.detach().numpy(), np.full(64, 2.0 ** -7))
    assert all(m.scale == "none" for m in convs[1:])
    bns = [m for m in model if isinstance(m, torch.nn.BatchNorm2d)]
    assert [m.eps for m in bns] == [float(np.float32(1e-4))] * 6


def test_compiles(tmp_path):
    """The full CNV compiles straight from .onnx (about 30 s, mostly SizeFifos' timing runs;
    once: both exporters give one model). Without the ``cnv`` fixture, so that another worker
    can take it."""
    onnx_path = _export(_cnv(seed=11), tmp_path / "cnv_1w1a.onnx", "torchscript")
    report = compile_model(onnx_path, tmp_path / "build", rtl=False)
    layers = [row["op"] for row in report["compile"]["layers"]]
    assert layers == (["InputLayer"] + ["BinaryConv"] * 2 + ["MaxPool"] + ["BinaryConv"] * 2
                      + ["MaxPool"] + ["BinaryConv"] * 2 + ["BinaryDense"] * 2 + ["ScoreLayer"])


def test_small_cnv_matches_qonnx(small_ts, tmp_path):
    out = tmp_path / "small.bnn"
    res = import_onnx_file(small_ts, out, check=500)
    assert res["agree"] == 500
    convs = [m for m in bnnforge.load(out) if type(m).__name__ == "BinaryConv2d"]
    assert [m.out_channels for m in convs] == [8, 8, 16, 16, 16, 16]


@pytest.mark.rtl
def test_small_cnv_rtl_matches(small_ts, tmp_path):
    """A CNV-topology model compiled straight from .onnx: values and every cycle exact."""
    from bnnforge.verify import verify_build

    build = tmp_path / "build"
    compile_model(small_ts, build)
    section = verify_build(build, simulator="verilator", frames=3, input_gap=0.2,
                           output_stall=0.2, progress=False)
    assert section["value_mismatches"] == 0
    assert section["cycle_mismatches"] == 0
    assert section["frames"] == 3


# ------------------------------------------------------------------------------- the refusals

def _node(graph, op: str, index: int = 0):
    return [n for n in graph.node if n.op_type == op][index]


def _set_attr(node, name: str, value) -> None:
    for a in list(node.attribute):
        if a.name == name:
            node.attribute.remove(a)
    node.attribute.append(helper.make_attribute(name, value))


@pytest.mark.parametrize("attr, value, match", [
    ("group", 2, r"\(Conv\) is a grouped convolution \(group=2\); bnnforge supports group=1"),
    ("dilations", [2, 2], r"\(Conv\) is dilated \(\[2, 2\]\); bnnforge supports dilation 1"),
    ("pads", [1, 1, 0, 0], r"\(Conv\) pads asymmetrically \(1, 1, 0, 0\)"),
    ("auto_pad", "SAME_UPPER", r"\(Conv\) has auto_pad=SAME_UPPER; bnnforge takes explicit"),
])
def test_refuses_conv_geometry(small_ts, tmp_path, attr, value, match):
    def edit(g):
        _set_attr(_node(g, "Conv", 1), attr, value)
    _refuses(_edited(small_ts, tmp_path, edit), match, tmp_path)


def test_conv_bias_folds_into_the_affine(small_ts, tmp_path):
    def edit(g):
        bias = np.random.default_rng(3).normal(0, 4, 8).astype(np.float32)
        g.initializer.append(numpy_helper.from_array(bias, "cbias"))
        _node(g, "Conv", 1).input.append("cbias")
    path = _edited(small_ts, tmp_path, edit)
    out = tmp_path / "biased.bnn"
    import_onnx_file(path, out)
    model = bnnforge.load(out)
    x = _frames(500, seed=4)
    ours = bnnforge.reference(bnnforge.lower(model, model.input_shape), x)
    assert (np.argmax(ours, axis=1) == np.argmax(_qonnx_scores(path, x), axis=1)).all()


def test_refuses_maxpool_before_sign(small_ts, tmp_path):
    def edit(g):      # conv -> BN -> MaxPool -> sign instead of conv -> BN -> sign -> MaxPool
        made = {o: n for n in g.node for o in n.output}
        pool = _node(g, "MaxPool")
        sign = made[pool.input[0]]
        bn = made[sign.input[0]]
        after = [n for n in g.node if pool.output[0] in n.input][0]
        assert (sign.op_type, bn.op_type) == ("BipolarQuant", "BatchNormalization")
        pool.input[0], sign.input[0] = bn.output[0], pool.output[0]
        after.input[0] = sign.output[0]
    _refuses(_edited(small_ts, tmp_path, edit), r"\(MaxPool\) comes before the binary "
             "activation of .*; bnnforge max-pools binary activations only", tmp_path)


def test_refuses_other_maxpool(small_ts, tmp_path):
    def edit(g):
        _set_attr(_node(g, "MaxPool"), "kernel_shape", [3, 3])
    _refuses(_edited(small_ts, tmp_path, edit), r"\(MaxPool\) is not a 2x2 max-pool with "
             "stride 2", tmp_path)


def test_refuses_average_pool(small_ts, tmp_path):
    def edit(g):
        _node(g, "MaxPool").op_type = "AveragePool"
    _refuses(_edited(small_ts, tmp_path, edit), r"\(AveragePool\) is not supported; bnnforge "
             "imports Conv", tmp_path)


def test_refuses_bad_flatten(small_ts, tmp_path):
    def edit(g):
        reshape = _node(g, "Reshape")
        g.initializer.append(numpy_helper.from_array(np.int64([-1, 8, 2]), "shape3"))
        reshape.input[1] = "shape3"
    _refuses(_edited(small_ts, tmp_path, edit), r"\(Reshape\) does not flatten the "
             r"\(16, 1, 1\) feature map into 16 features", tmp_path)


def test_refuses_per_channel_preprocessing(small_ts, tmp_path):
    def edit(g):      # 2x - (1, 0.5, 0): the levels differ between channels
        sub = _node(g, "Sub")
        g.initializer.append(numpy_helper.from_array(
            np.float32([1.0, 0.5, 0.0]).reshape(1, 3, 1, 1), "pre_sub"))
        sub.input[1] = "pre_sub"
    _refuses(_edited(small_ts, tmp_path, edit), r"\(Quant\): the input preprocessing differs "
             "between channels or pixels", tmp_path)


def test_refuses_fractional_input_levels(small_ts, tmp_path):
    def edit(g):      # a zero point of 0.5: q - 0.5 is not an integer
        quant = _node(g, "Quant")
        g.initializer.append(numpy_helper.from_array(np.float32(0.5), "in_zp"))
        quant.input[2] = "in_zp"
    _refuses(_edited(small_ts, tmp_path, edit), r"\(Quant\): the input levels q − zero point "
             r"are not integers \(zero point 0.5\)", tmp_path)


def test_other_input_scale(small_ts, tmp_path):
    """Any positive input scale moves after the first layer's sum (here not a power of two)."""
    def edit(g):
        quant = _node(g, "Quant")
        g.initializer.append(numpy_helper.from_array(np.float32(0.3), "in_scale"))
        quant.input[1] = "in_scale"
    out = tmp_path / "scaled.bnn"
    res = import_onnx_file(_edited(small_ts, tmp_path, edit), out, check=200)
    assert res["agree"] == 200
    model = bnnforge.load(out)
    assert model[0].levels[0] == -3 and model[0].levels[255] == 3   # round((2x - 1) / 0.3)
    np.testing.assert_array_equal(model[1].alpha.detach().numpy(), np.full(8, np.float32(0.3)))


def test_refuses_multibit_activations(tmp_path):
    path = _export(_cnv(3, small=True, name="cnv_1w2a"), tmp_path / "w1a2.onnx", "torchscript")
    _refuses(path, r"\(Quant, 2-bit\): bnnforge supports binary weights and activations; "
                   "export a w1a1 model", tmp_path)


def test_refuses_scores_from_a_conv(small_ts, tmp_path):
    def edit(g):      # the graph's output is the last Conv's output
        conv = _node(g, "Conv", 5)
        g.output[0].name = conv.output[0]
        keep = list(g.node)[: list(g.node).index(conv) + 1]
        del g.node[:]
        g.node.extend(keep)
    _refuses(_edited(small_ts, tmp_path, edit), r"the graph ends after .*\(Conv\); bnnforge's "
             "scores come from a Gemm/MatMul after a Flatten", tmp_path)


class _PaddedNet(torch.nn.Module):
    """A Brevitas convnet of our own: 8-bit Q1.7 input, zero-padded binary convs (one strided),
    max-pool, dense layers and TensorNorm — padding is where FINN users lose accuracy."""

    def __init__(self):
        super().__init__()
        from brevitas.core.restrict_val import RestrictValueType
        from brevitas.nn import QuantConv2d, QuantIdentity, QuantLinear
        from brevitas_examples.bnn_pynq.models.common import CommonActQuant, CommonWeightQuant
        from brevitas_examples.bnn_pynq.models.tensor_norm import TensorNorm

        def conv(i, o, stride=1):
            return QuantConv2d(i, o, 3, stride=stride, padding=1, bias=False,
                               weight_quant=CommonWeightQuant, weight_bit_width=1)

        def act():
            return QuantIdentity(act_quant=CommonActQuant, bit_width=1)

        self.features = torch.nn.Sequential(
            QuantIdentity(act_quant=CommonActQuant, bit_width=8, min_val=-1.0,
                          max_val=1.0 - 2.0 ** -7, narrow_range=False,
                          restrict_scaling_type=RestrictValueType.POWER_OF_TWO),
            conv(3, 8), torch.nn.BatchNorm2d(8), act(), torch.nn.MaxPool2d(2),
            conv(8, 16, stride=2), torch.nn.BatchNorm2d(16), act())
        self.head = torch.nn.Sequential(
            QuantLinear(16 * 4 * 4, 32, bias=False, weight_quant=CommonWeightQuant,
                        weight_bit_width=1), torch.nn.BatchNorm1d(32), act(),
            QuantLinear(32, 10, bias=False, weight_quant=CommonWeightQuant, weight_bit_width=1),
            TensorNorm())

    def forward(self, x):
        x = self.features(2.0 * x - torch.tensor([1.0]))
        return self.head(x.view(x.shape[0], -1))


@pytest.fixture(scope="module")
def padded(tmp_path_factory):
    torch.manual_seed(5)
    rng = np.random.default_rng(5)
    model = _PaddedNet()
    for m in model.modules():
        if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
            randomize_bn(m, rng)
        if hasattr(m, "weight") and type(m).__name__ in ("QuantConv2d", "QuantLinear"):
            torch.nn.init.uniform_(m.weight.data, -1, 1)
    model.eval()
    path = tmp_path_factory.mktemp("padded") / "padded.onnx"
    from brevitas.export import export_qonnx

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        export_qonnx(model, torch.rand(1, 3, 16, 16), export_path=str(path))
    return model, str(path)


def test_zero_padded_brevitas_model_matches_qonnx_and_brevitas(padded, tmp_path):
    model, path = padded
    out = tmp_path / "padded.bnn"
    import_onnx_file(path, out)
    ours_model = bnnforge.load(out)
    convs = [m for m in ours_model if type(m).__name__ == "BinaryConv2d"]
    assert [c.padding for c in convs] == [(1, 1), (1, 1)]
    assert all(c.pad_value == 0.0 for c in convs)
    x = np.random.default_rng(2).integers(0, 256, (FRAMES, 3, 16, 16), dtype=np.uint8)
    graph = bnnforge.lower(ours_model, (3, 16, 16))
    # level 0 is byte 128 after the table's shift: the first conv pads in hardware, one class;
    # the binary conv's zero is no bit: per-border-class thresholds
    assert graph.op("conv0").classes == 1 and graph.op("conv0").pad_value == 128
    assert graph.op("conv1").classes > 1
    ours = np.argmax(bnnforge.reference(graph, x), axis=1)
    assert (ours == np.argmax(_qonnx_scores(path, x), axis=1)).all()
    with torch.no_grad():
        brevitas = model(torch.from_numpy(x).float() / 255.0).numpy()
    assert (ours == np.argmax(brevitas, axis=1)).all()


@pytest.mark.rtl
def test_zero_padded_brevitas_model_rtl(padded, tmp_path):
    from bnnforge.verify import verify_build

    build = tmp_path / "build"
    compile_model(padded[1], build)
    section = verify_build(build, simulator="icarus", frames=3, input_gap=0.2,
                           output_stall=0.2, progress=False)
    assert section["value_mismatches"] == 0 and section["cycle_mismatches"] == 0
