"""Where each ROM goes (block RAM or logic, by cost, per FPGA family), and that the plan, the
estimates, the generated Verilog and the energy model all follow the one choice."""

from __future__ import annotations

import numpy as np
import pytest
from amaranth.back import verilog

import bnnforge
from bnnforge.boards import estimate_design_brams, get_board
from bnnforge.boards.fit import fit_board
from bnnforge.compiler.costs import FAMILY_CELLS, estimate_brams, estimate_luts, matrix_roms
from bnnforge.compiler.folding import ChooseFolding
from bnnforge.compiler.memory import LOGIC_ROM_DEPTH, bram_price, ram_blocks, rom_cost, rom_style
from bnnforge.compiler.plan import KINDS, build_plan
from bnnforge.hw.activity import parse_verilog
from bnnforge.hw.checks import silence
from bnnforge.hw.generate import FACTORIES
from bnnforge.hw.matrix import MVTU
from bnnforge.nn import archs
from bnnforge.sim.energy import activity_energy
from conftest import randomize_model

MNIST = (1, 28, 28)


def test_block_shapes_per_family():
    # iCE40: 16 x 256 .. 2 x 2048 (4 kbit); ECP5 DP16KD: 36 x 512 .. 1 x 16384 (18 kbit)
    assert ram_blocks(1568, 128) == 98 and ram_blocks(1568, 128, "ecp5") == 44
    assert ram_blocks(16, 256) == 1 and ram_blocks(16, 257) == 2 and ram_blocks(8, 512) == 1
    assert ram_blocks(1, 16384, "ecp5") == 1 and ram_blocks(1, 16384, "ice40up") == 8
    assert ram_blocks(36, 512, "ecp5") == 1 and ram_blocks(37, 512, "ecp5") == 2


@pytest.mark.parametrize("width,depth,family,want", [
    (16, 1, None, "const"),
    (16, 127, None, "logic"),           # 127 cells < one block at 128
    (16, 128, None, "bram"),            # a tie goes to block RAM
    (1, 512, None, "logic"),            # a narrow deep ROM: 32 cells, not a whole block
    (1, 1024, None, "bram"),            # deeper than LOGIC_ROM_DEPTH: its mux tree is slow
    (512, 98, "ecp5", "logic"),         # the ULX3S tfc's fc0 at 1M frames/s: 3,136 < 15 x 256
    (1568, 128, "ecp5", "bram"),        # the ULX3S sfc's fc0 at 128 cycles: 44 x 256 < 12,544
    (128, 392, "ice40up", "bram"),      # the iCEBreaker tfc's fc0: 16 x 128 < 3,136
    (3136, 64, "ecp5", "logic"),        # wide and shallow: 88 blocks
])
def test_rom_style_takes_the_cheaper(width, depth, family, want):
    assert rom_style(width, depth, family) == want
    if want != "const":
        logic = rom_cost(width, depth, "logic")[0]
        blocks = rom_cost(width, depth, "bram", family)[1]
        price = bram_price(family)
        assert (want == "bram") == (price * blocks <= logic or depth > LOGIC_ROM_DEPTH)


def test_a_price_moves_the_choice():
    assert rom_style(16, 200, bram_cells=1000) == "logic"
    assert rom_style(16, 20, bram_cells=10) == "bram"
    with pytest.raises(ValueError, match="ROM style must be one of const, logic, bram"):
        rom_cost(16, 20, "lutram")


@pytest.fixture(scope="module")
def tfc():
    return bnnforge.lower(randomize_model(archs.build("tfc", MNIST, 10), 1), MNIST, name="tfc")


def _matrix_blocks(graph):
    return [b for b in build_plan(graph).blocks if b["kind"] in ("mvtu", "score")]


@pytest.mark.parametrize("board", ["icebreaker", "ulx3s-85f"])
def test_the_plan_carries_the_choice_the_estimates_price(tfc, board):
    graph, profile, _ = fit_board(tfc, board, fps=1_000_000 if board == "ulx3s-85f" else None)
    family = get_board(board).family
    blocks = _matrix_blocks(graph)
    assert blocks and all(b["family"] == family for b in blocks)
    for b in blocks:
        roms = matrix_roms(b["op"], b["pe"], b["simd"], family)
        assert b["roms"] == {k: v[2] for k, v in roms.items()}
        # the block's styles are what the estimates price: forcing the other style moves them
        for key, (w, d, style) in roms.items():
            if style == "const":
                continue
            other = {key: "logic" if style == "bram" else "bram"}
            luts = estimate_luts(b["op"], b["pe"], b["simd"], b["count"], b["pipeline"],
                                 family, roms=other)
            brams = estimate_brams(b["op"], b["pe"], b["simd"], b["count"], family, roms=other)
            base = (estimate_luts(b["op"], b["pe"], b["simd"], b["count"], b["pipeline"],
                                  family),
                    estimate_brams(b["op"], b["pe"], b["simd"], b["count"], family))
            cells, nblocks = rom_cost(w, d, "logic")[0], rom_cost(w, d, "bram", family)[1]
            sign = 1 if style == "bram" else -1
            # in the family's count (ECP5: LUTs x the packer's factor; a block-RAM ROM's fabric
            # data register is a flip-flop beside a LUT there)
            assert abs(luts - base[0] - sign * FAMILY_CELLS[family][0] * cells) <= 1
            assert base[1] - brams == sign * nblocks
    # the board's block RAMs are counted in its own blocks (DP16KD on the ULX3S)
    assert estimate_design_brams(graph) <= profile.bram_blocks


def test_the_ulx3s_tfc_at_a_million_frames_reads_its_weights_from_block_ram(tfc):
    # fc0 at PE 1 x SIMD 392 (128 cycles at the model's 130 MHz): a 392-bit x 512-word ROM,
    # 11 DP16KD at 256 cells against 12,544 LUT4 in logic
    graph, _, _ = fit_board(tfc, "ulx3s-85f", fps=1_000_000)
    fc0 = next(b for b in _matrix_blocks(graph) if b["node"] == "fc0")
    width, depth = fc0["pe"] * fc0["simd"], fc0["channels"] // fc0["pe"] * fc0["k"] // fc0["simd"]
    assert fc0["roms"]["weights"] == rom_style(width, depth, "ecp5") == "bram"


@pytest.mark.parametrize("style,attr", [("bram", "block"), ("logic", "logic")])
def test_the_verilog_marks_each_rom_as_chosen(style, attr):
    w = np.random.default_rng(0).integers(0, 2, (8, 64)).astype(bool)
    text = verilog.convert(MVTU(64, 8, 1, 16, w, list(range(28, 36)), roms={"weights": style}),
                           name="top")
    mods = parse_verilog(text)
    mems = mods["top"]["memories"]
    # a block-RAM ROM with a data register is a BlockROM (its own module: the output register
    # is the block's on ECP5), a logic ROM a memory of the unit itself
    weights = mods["top.weights"]["memories"]["mem"] if style == "bram" else mems["weights"]
    assert weights == (16, 32, style)
    assert mems["thresholds"][2] == rom_style(7, 8)             # not named: by cost
    assert f'rom_style = "{attr}"' in text


def test_a_bad_rom_style_is_refused():
    w = np.zeros((8, 64), dtype=bool)
    with pytest.raises(ValueError, match="roms must map 'weights' / 'thresholds' to one of"):
        MVTU(64, 8, 1, 16, w, [0] * 8, roms={"weights": "lutram"})


def test_the_generator_follows_the_plan(tfc):
    blocks = _matrix_blocks(ChooseFolding().apply(tfc))
    styles = {v for b in blocks for v in b["roms"].values()}
    assert {"bram", "logic"} <= styles                 # both homes occur in this plan
    for b in blocks:
        unit = FACTORIES[b["kind"]](b)
        silence(unit)
        assert unit.roms == b["roms"]
    # the score layer compares no thresholds: it has no threshold ROM to place
    assert set(blocks[-1]["roms"]) == {"weights"}


def test_energy_reads_block_ram_where_the_verilog_put_it():
    def energy(style):
        block = {"node": "fc0", "net_toggles": 0, "ff_toggles": 0, "ff_bits": 0,
                 "memories": [("weights", 64, 16, style)]}
        act = {"frames": 1, "cycles_per_frame": 10.0, "blocks": {"s0_fc0_mvtu": block}}
        return activity_energy(act, family="ice40up", clock_mhz=24.0)["breakdown"]["bram"]
    assert energy("logic") == 0 and energy("bram") > 0
    assert energy(None) == 0                          # unmarked 16 words: logic by the rule


def test_op_model_counts_rom_bits_where_they_are_read(tfc):
    g = ChooseFolding().apply(tfc)
    for b in _matrix_blocks(g):
        ops = KINDS[b["kind"]].ops(b)
        weights = b["k"] * b["channels"] * b["tokens"] // b["count"]
        in_bram = b["roms"]["weights"] == "bram"
        assert ops["weight_rom_bits"] == (weights if in_bram else 0)
        # the threshold ROM's bits move between the two counts with its style
        ram = KINDS[b["kind"]].ops({**b, "roms": {**b["roms"], "thresholds": "bram"}})
        logic = KINDS[b["kind"]].ops({**b, "roms": {**b["roms"], "thresholds": "logic"}})
        assert ram["logic_rom_bits"] == (0 if in_bram else weights)
        assert logic["logic_rom_bits"] - ram["logic_rom_bits"] == ram["threshold_rom_bits"]
        assert logic["threshold_rom_bits"] == 0
        if b["kind"] == "mvtu" and b["channels"] > b["pe"]:
            assert ram["threshold_rom_bits"] > 0
