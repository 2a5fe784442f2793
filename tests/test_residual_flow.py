"""A residual network written here (not a reference arch) through the whole flow.

Torch module → model file → compile (folding, FIFO sizing from the simulator, RTL) → sim →
verify on Verilator, value- and cycle-exact under input gaps and output stalls. The model mixes
every branching form the compiler takes: an identity shortcut with one activation module called
at several places, a channel concatenation, and a strided projection shortcut with its own
BatchNorm, behind an 8-bit input stem.
"""

import json

import numpy as np
import pytest
import torch
from torch import nn

import bnnforge
from bnnforge.flow import compile_model
from bnnforge.nn import BinaryActivation, BinaryConv2d, BinaryLinear, InputQuant
from bnnforge.simulate import simulate_build
from bnnforge.verify import verify_build
from conftest import randomize_model


class MixedResidual(nn.Module):
    def __init__(self):
        super().__init__()
        self.quant = InputQuant(8)
        self.stem = BinaryConv2d(1, 8, 3, padding=1, pad_value=0.0)
        self.bn0 = nn.BatchNorm2d(8)
        self.act = BinaryActivation()
        self.conv1 = BinaryConv2d(8, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.left = BinaryConv2d(8, 4, 3, padding=1)
        self.bn_left = nn.BatchNorm2d(4)
        self.right = BinaryConv2d(8, 6, 1)
        self.bn_right = nn.BatchNorm2d(6)
        self.down = BinaryConv2d(10, 16, 3, stride=2, padding=1)
        self.bn_down = nn.BatchNorm2d(16)
        self.short = BinaryConv2d(10, 16, 1, stride=2)
        self.bn_short = nn.BatchNorm2d(16)
        self.pool = nn.MaxPool2d(2)
        self.fc = BinaryLinear(16 * 2 * 2, 10)

    def forward(self, x):
        x = self.act(self.bn0(self.stem(self.quant(x))))
        x = self.act(self.bn1(self.conv1(x)) + x)
        x = torch.cat([self.act(self.bn_left(self.left(x))),
                       self.act(self.bn_right(self.right(x)))], dim=1)
        x = self.act(torch.add(self.bn_down(self.down(x)), self.bn_short(self.short(x))))
        return self.fc(torch.flatten(self.pool(x), 1))


@pytest.mark.rtl
def test_mixed_residual_model_compiles_simulates_and_verifies(tmp_path):
    model = randomize_model(MixedResidual(), 3)
    bnnforge.save(model, tmp_path / "mixed.bnn", (1, 8, 8), meta={"dataset": "digits"})
    report = compile_model(tmp_path / "mixed.bnn", tmp_path / "build")
    assert report["model"]["disagreements"] == 0 and report["model"]["frames"] > 100
    graph = bnnforge.load_graph(tmp_path / "build")
    kinds = {graph.op(n).kind for n in graph.order()}
    assert {"add", "concat"} <= kinds
    depths = report["compile"]["fifo_depths"]
    assert any(k.endswith("[1]") for k in depths)           # skip FIFOs sized per port
    info = json.loads((tmp_path / "build" / "rtl" / "top.json").read_text())
    assert info["classes"] == 10
    sim = simulate_build(tmp_path / "build", frames=20, progress=False)
    assert sim["cycles_per_frame"] > 0 and sim["energy_nj_per_frame"] > 0
    assert {row["name"] for row in sim["layers"]} == set(graph.order())
    res = verify_build(tmp_path / "build", "verilator", frames=12, input_gap=0.3,
                       output_stall=0.4, seed=2, progress=False)
    assert res["value_mismatches"] == 0 and res["cycle_mismatches"] == 0
    assert res["handshakes_checked"] == 12 * 64 + 12
    x = np.random.default_rng(0).integers(0, 256, (64, 1, 8, 8), dtype=np.uint8)
    with torch.no_grad():
        torch_scores = model(torch.from_numpy(x).float() / 255.0).numpy()
    assert (torch_scores.argmax(1) == np.asarray(bnnforge.reference(graph, x)).argmax(1)).all()


def _models():
    """The hand-written models of tests/compiler/test_residual.py (loaded by path: the folder
    name ``compiler`` is also bnnforge's)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).parent / "compiler" / "test_residual.py"
    spec = importlib.util.spec_from_file_location("residual_models", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return {"identity": mod.Identity, "projection": mod.Projection, "concat": mod.CatNet,
            "shared-activation": mod.Shared, "dense-residual": mod.DenseResidual}


@pytest.mark.rtl
@pytest.mark.parametrize("name", ["identity", "projection", "concat", "shared-activation",
                                  "dense-residual"])
def test_branching_models_verify_on_icarus(name, tmp_path):
    """Each branching form of the lowering tests, in hardware: values and every handshake."""
    model = randomize_model(_models()[name](), 5)
    vector = name == "dense-residual"            # a (64,) vector input, frames at random
    bnnforge.save(model, tmp_path / "m.bnn", (64,) if vector else (1, 8, 8),
                  meta={} if vector else {"dataset": "digits"})
    report = compile_model(tmp_path / "m.bnn", tmp_path / "build")
    assert report["model"]["disagreements"] in (0, None)     # None: no dataset to compare on
    res = verify_build(tmp_path / "build", "icarus", frames=4, input_gap=0.25,
                       output_stall=0.3, seed=1, progress=False)
    assert res["value_mismatches"] == 0 and res["cycle_mismatches"] == 0
