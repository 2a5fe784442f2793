"""Model files: architecture + weights, no pickled code, clear errors on damage."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest
import torch
from torch import nn

import bnnforge
from bnnforge import ModelFileError
from bnnforge.nn import BinaryActivation, BinaryConv2d, BinaryLinear, InputQuant, predict_scores
from conftest import random_frames, randomize_model, small_cnn


def test_roundtrip_gives_the_same_function(tmp_path):
    model = randomize_model(small_cnn(8, "biper", last_bn=True), 4)
    bnnforge.save(model, tmp_path / "m.bnn", (1, 8, 8), {"dataset": "digits"})
    back = bnnforge.load(tmp_path / "m.bnn")
    frames = random_frames((1, 8, 8), 500)
    np.testing.assert_array_equal(predict_scores(model, frames), predict_scores(back, frames))
    assert back.input_shape == (1, 8, 8) and back.bnnforge_meta == {"dataset": "digits"}
    with zipfile.ZipFile(tmp_path / "m.bnn") as zf:     # no pickles anywhere
        assert sorted(zf.namelist()) == ["manifest.json", "weights.npz"]
        assert b"\x80\x04" not in zf.read("manifest.json")


def test_saving_is_byte_identical(tmp_path):
    model = randomize_model(small_cnn(), 5)
    bnnforge.save(model, tmp_path / "a.bnn", (1, 8, 8))
    bnnforge.save(model, tmp_path / "b.bnn", (1, 8, 8))
    assert (tmp_path / "a.bnn").read_bytes() == (tmp_path / "b.bnn").read_bytes()


def test_custom_module_is_saved_as_its_chain(tmp_path):
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.q, self.conv = InputQuant(1), BinaryConv2d(1, 3, 3)
            self.bn, self.act = nn.BatchNorm2d(3), BinaryActivation()
            self.fc = BinaryLinear(3 * 6 * 6, 4)

        def forward(self, x):
            return self.fc(torch.flatten(self.act(self.bn(self.conv(self.q(x)))), 1))

    model = randomize_model(Net(), 6)
    bnnforge.save(model, tmp_path / "n.bnn", (1, 8, 8))
    back = bnnforge.load(tmp_path / "n.bnn")
    frames = random_frames((1, 8, 8), 200)
    np.testing.assert_array_equal(predict_scores(model, frames), predict_scores(back, frames))


def test_missing_file(tmp_path):
    with pytest.raises(ModelFileError, match=r"model file .*nope.bnn not found; train one"):
        bnnforge.load(tmp_path / "nope.bnn")


def test_truncated_and_corrupt_files(tmp_path):
    bnnforge.save(randomize_model(small_cnn(), 1), tmp_path / "m.bnn", (1, 8, 8))
    data = (tmp_path / "m.bnn").read_bytes()
    (tmp_path / "t.bnn").write_bytes(data[: len(data) - 200])
    with pytest.raises(ModelFileError, match=r"t.bnn is corrupt or truncated"):
        bnnforge.load(tmp_path / "t.bnn")
    (tmp_path / "g.bnn").write_bytes(b"garbage" * 100)
    with pytest.raises(ModelFileError, match=r"g.bnn is corrupt or truncated"):
        bnnforge.load(tmp_path / "g.bnn")


def test_tampered_weights_and_manifest(tmp_path):
    bnnforge.save(randomize_model(small_cnn(), 1), tmp_path / "m.bnn", (1, 8, 8))
    with zipfile.ZipFile(tmp_path / "m.bnn") as zf:
        manifest = json.loads(zf.read("manifest.json"))
        weights = zf.read("weights.npz")
    with zipfile.ZipFile(tmp_path / "w.bnn", "w") as zf:
        zf.writestr("manifest.json", json.dumps(manifest))
        zf.writestr("weights.npz", weights[:-10] + b"0123456789")
    with pytest.raises(ModelFileError, match=r"w.bnn is corrupt \(weights checksum mismatch\)"):
        bnnforge.load(tmp_path / "w.bnn")
    manifest["layers"][1]["type"] = "ReLU"
    with zipfile.ZipFile(tmp_path / "r.bnn", "w") as zf:
        zf.writestr("manifest.json", json.dumps(manifest))
        zf.writestr("weights.npz", weights)
    with pytest.raises(ModelFileError, match=r"r.bnn does not describe a valid model"):
        bnnforge.load(tmp_path / "r.bnn")
    with zipfile.ZipFile(tmp_path / "o.bnn", "w") as zf:
        zf.writestr("manifest.json", json.dumps({"format": "other"}))
    with pytest.raises(ModelFileError, match=r"o.bnn is not a bnnforge model file"):
        bnnforge.load(tmp_path / "o.bnn")


# -- models that branch: version 2 files, rebuilt as a torch.fx.GraphModule -------------------

class _Branching(nn.Module):
    """Identity and projection sums, a concat, a flatten call and one shared activation."""

    def __init__(self):
        super().__init__()
        self.q, self.act = InputQuant(1), BinaryActivation("reste")
        self.stem, self.stem_bn = BinaryConv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.conv, self.bn = BinaryConv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.down, self.down_bn = BinaryConv2d(4, 6, 3, stride=2, padding=1), nn.BatchNorm2d(6)
        self.short, self.short_bn = BinaryConv2d(4, 6, 1, stride=2), nn.BatchNorm2d(6)
        self.pool = nn.MaxPool2d(2)
        self.fc = BinaryLinear(10 * 16, 5)

    def forward(self, x):
        x = self.act(self.stem_bn(self.stem(self.q(x))))
        x = self.act(self.bn(self.conv(x)) + x)
        y = self.act(self.down_bn(self.down(x)) + self.short_bn(self.short(x)))
        return self.fc(torch.flatten(torch.cat([self.pool(x), y], dim=1), 1))


def test_branching_model_roundtrip(tmp_path):
    model = randomize_model(_Branching(), 7)
    bnnforge.save(model, tmp_path / "b.bnn", (1, 8, 8), {"dataset": "digits"})
    back = bnnforge.load(tmp_path / "b.bnn")
    assert isinstance(back, torch.fx.GraphModule) and not back.training
    assert back.input_shape == (1, 8, 8) and back.bnnforge_meta == {"dataset": "digits"}
    frames = random_frames((1, 8, 8), 500)
    np.testing.assert_array_equal(predict_scores(model, frames), predict_scores(back, frames))
    # the compiler sees the same graph, layer names (sources) included
    assert bnnforge.lower(back, (1, 8, 8), name="m").same_as(
        bnnforge.lower(model, (1, 8, 8), name="m"))
    with zipfile.ZipFile(tmp_path / "b.bnn") as zf:
        manifest = json.loads(zf.read("manifest.json"))
    assert manifest["version"] == 2 and manifest["output"] == "fc"
    assert [layer["name"] for layer in manifest["layers"]].count("act") == 1   # shared, once
    ops = [node["op"] for node in manifest["nodes"]]
    assert ops.count("add") == 2 and ops.count("concat") == 1
    # saving again, and saving the loaded model, give the same bytes
    bnnforge.save(model, tmp_path / "c.bnn", (1, 8, 8), {"dataset": "digits"})
    bnnforge.save(back, tmp_path / "d.bnn", (1, 8, 8), {"dataset": "digits"})
    data = (tmp_path / "b.bnn").read_bytes()
    assert (tmp_path / "c.bnn").read_bytes() == data == (tmp_path / "d.bnn").read_bytes()


def test_reference_resnet_roundtrip(tmp_path):
    from bnnforge.nn import build
    model = randomize_model(build("resnet", (1, 8, 8), 10, "biper", input_bits=8), 8)
    bnnforge.save(model, tmp_path / "r.bnn", (1, 8, 8))
    back = bnnforge.load(tmp_path / "r.bnn")
    frames = random_frames((1, 8, 8), 300)
    np.testing.assert_array_equal(predict_scores(model, frames), predict_scores(back, frames))


def test_chain_stays_version_1(tmp_path):
    bnnforge.save(randomize_model(small_cnn(), 1), tmp_path / "m.bnn", (1, 8, 8))
    with zipfile.ZipFile(tmp_path / "m.bnn") as zf:
        manifest = json.loads(zf.read("manifest.json"))
    assert manifest["version"] == 1 and "nodes" not in manifest
    assert isinstance(bnnforge.load(tmp_path / "m.bnn"), nn.Sequential)


def _rewrite(src, dst, edit):
    with zipfile.ZipFile(src) as zf:
        manifest = json.loads(zf.read("manifest.json"))
        weights = zf.read("weights.npz")
    edit(manifest)
    with zipfile.ZipFile(dst, "w") as zf:
        zf.writestr("manifest.json", json.dumps(manifest))
        zf.writestr("weights.npz", weights)


@pytest.mark.parametrize("edit", [
    lambda m: m["nodes"][3].update(op="mul"),
    lambda m: m["nodes"][3].update(inputs=["nowhere"]),
    lambda m: [n.update(inputs=n["inputs"][:1]) for n in m["nodes"] if n["op"] == "concat"],
    lambda m: m["nodes"][0].update(layer=99),
    lambda m: m.update(output="nothing"),
    lambda m: m.update(input=5),
    lambda m: m.update(input="nobody"),
    lambda m: m["layers"][1].update(name=7),
    lambda m: m["layers"][-1]["config"].update(in_features=11),
])
def test_damaged_graph_manifest(tmp_path, edit):
    bnnforge.save(randomize_model(_Branching(), 1), tmp_path / "b.bnn", (1, 8, 8))
    _rewrite(tmp_path / "b.bnn", tmp_path / "x.bnn", edit)
    with pytest.raises(ModelFileError, match=r"x.bnn does not describe a valid model \(.+\); "
                                             r"retrain or re-save it"):
        bnnforge.load(tmp_path / "x.bnn")


def test_unknown_version(tmp_path):
    bnnforge.save(randomize_model(small_cnn(), 1), tmp_path / "m.bnn", (1, 8, 8))
    _rewrite(tmp_path / "m.bnn", tmp_path / "v.bnn", lambda m: m.update(version=3))
    with pytest.raises(ModelFileError, match=r"v.bnn has format version 3; this bnnforge reads "
                                             r"versions 1 and 2"):
        bnnforge.load(tmp_path / "v.bnn")
