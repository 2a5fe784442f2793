"""Whole accelerators from trained reference models, run as RTL under cocotb.

Every reference architecture (the MLPs and the CNV-style net) with 1- and 8-bit inputs, at
three foldings each — near-serial, middle and fast (fully parallel for tfc) — 100 frames each
on Verilator and 40 on Icarus (whose run time grows with the frames; Verilator's is its build),
zero value mismatches and zero cycle mismatches against the timing model (so no frame is dropped
or duplicated, and every handshake lands on its predicted cycle). Models are trained briefly on
the 8x8 digits so the RTL simulations fit CI.

Each (architecture, input bits, folding) runs on one simulator, chosen so that every
architecture meets both simulators, each simulator meets every folding of every architecture
(across the two input widths), and half the runs use random input gaps and output
back-pressure. Two exceptions keep CI in budget: lfc (1024-wide layers) runs its three
foldings with 1-bit inputs on Verilator only (on Icarus one lfc run takes minutes), and the
fully parallel tfc runs both input widths on Icarus (its Verilator build took 4–5 minutes,
Icarus 40 frames in ~35 s).
``BNNFORGE_FULL_MATRIX=1`` runs every case, lfc included, on both simulators.
"""

from __future__ import annotations

import os

import pytest

from bnnforge.buildfolder import read_report
from bnnforge.flow import compile_model, train_model
from bnnforge.verify import verify_build

pytestmark = [pytest.mark.rtl,
              pytest.mark.filterwarnings("ignore::amaranth.hdl.UnusedElaboratable")]

# Cycles per frame of the slowest stage for each folding (digits frames: 64 pixels).
TARGETS = {
    "tfc": {"serial": 512, "middle": 128, "fast": None},      # fast = fully parallel
    "sfc": {"serial": 2048, "middle": 512, "fast": 128},
    "lfc": {"serial": 8192, "middle": 4096, "fast": 2048},
    "cnv": {"serial": 2304, "middle": 1152, "fast": 576},     # 576: the window generator
}
FULLY_PARALLEL_TFC = ["fc0=64,64", "fc1=64,64", "fc2=64,64", "scores=10,64"]


def _cases():
    full = os.environ.get("BNNFORGE_FULL_MATRIX") == "1"
    cases = []
    for arch in TARGETS:
        for bits in (1, 8):
            if arch == "lfc" and bits == 8 and not full:
                continue
            for i, folding in enumerate(("serial", "middle", "fast")):
                first = "icarus" if (i + bits) % 2 else "verilator"
                if arch == "lfc":
                    first = "verilator"
                if arch == "tfc" and folding == "fast":
                    first = "icarus"
                for sim in (("icarus", "verilator") if full else (first,)):
                    cases.append((arch, bits, folding, sim))
    return cases


@pytest.fixture(scope="session")
def models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("models")
    return folder


def _model(models, arch: str, bits: int):
    path = models / f"{arch}-{bits}.bnn"
    if not path.exists():
        train_model(arch, "digits", "ste", path, epochs=1, input_bits=bits, progress=False)
    return path


CASES = _cases()


@pytest.mark.parametrize("arch, bits, folding, sim", CASES,
                         ids=[f"{a}-{b}bit-{f}-{s}" for a, b, f, s in CASES])
def test_accelerator_matches_reference(models, tmp_path, arch, bits, folding, sim):
    model = _model(models, arch, bits)
    target = TARGETS[arch][folding]
    if target is None:
        report = compile_model(model, tmp_path / "build", fold=FULLY_PARALLEL_TFC)
        assert all(row["pe"] == row["channels"] and row["simd"] == row["k"]
                   for row in report["compile"]["layers"] if row["pe"])
    else:
        report = compile_model(model, tmp_path / "build", fps=100e6 / target)
        assert report["compile"]["cycles_per_frame"] <= target
    stressed = (("serial", "middle", "fast").index(folding) % 2 == 0) != (arch in ("sfc", "cnv"))
    frames = 100 if sim == "verilator" else 40
    section = verify_build(tmp_path / "build", simulator=sim, frames=frames, progress=False,
                           input_gap=0.3 if stressed else 0.0,
                           output_stall=0.4 if stressed else 0.0, seed=len(arch) + bits)
    assert section["frames"] == frames and section["source"] == "dataset:digits"
    assert section["value_mismatches"] == 0
    assert section["cycle_mismatches"] == 0
    assert read_report(tmp_path / "build")["verify"] == section
