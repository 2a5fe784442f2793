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
