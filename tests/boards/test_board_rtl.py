"""The emitted board top's Verilog under Icarus (cocotb): frames in on rx, bit by bit, answers out
on tx, compared with the reference executor."""

import contextlib
import os
import sys
from pathlib import Path
from xml.etree import ElementTree

import numpy as np
import pytest
from amaranth.back import verilog

import bnnforge
from bnnforge.compiler.folding import ChooseFolding
from bnnforge.host import decode_answer, encode_frames, read_layout
from bnnforge.hw.uart import BoardTop
from conftest import random_frames, randomize_model, small_cnn, small_mlp

pytestmark = [pytest.mark.rtl,
              pytest.mark.filterwarnings("ignore::amaranth.hdl.UnusedElaboratable")]

HERE = Path(__file__).parent


def failure(xml: Path):
    if not xml.is_file():
        return "no results file"
    cases = ElementTree.parse(xml).getroot().findall(".//testcase")
    if not cases:
        return "no test ran"
    for case in cases:
        for tag in ("failure", "error"):
            node = case.find(tag)
            if node is not None:
                return node.get("message") or tag
    return None


def run_board(tmp_path, graph, frames, divisor, gap_bits=0):
    from cocotb_tools.runner import get_runner

    top = BoardTop(graph, divisor)
    layout = read_layout(top.top_info())
    (tmp_path / "board_top.v").write_text(verilog.convert(top, name="board_top",
                                                          emit_src=False))
    data = b"".join(encode_frames(frames, layout))
    cfg, out, xml = tmp_path / "in.npz", tmp_path / "out.npz", tmp_path / "results.xml"
    answer = layout["answer_bytes"] * len(frames)
    np.savez(cfg, data=np.frombuffer(data, dtype=np.uint8), divisor=np.int64(divisor),
             answer_bytes=np.int64(answer), gap_bits=np.int64(gap_bits),
             timeout_cycles=np.int64(100 * divisor * answer + 200_000))
    runner = get_runner("icarus")
    runner.build(sources=[tmp_path / "board_top.v"], hdl_toplevel="board_top",
                 build_dir=tmp_path / "build", timescale=("1ns", "1ps"),
                 log_file=tmp_path / "build.log")
    with contextlib.suppress(SystemExit, RuntimeError):
        runner.test(test_module="cocotb_board_uart", hdl_toplevel="board_top",
                    build_dir=tmp_path / "build", test_dir=HERE, results_xml=str(xml),
                    extra_env={"BOARD_UART_IN": str(cfg), "BOARD_UART_OUT": str(out),
                               "PYTHONPATH": os.pathsep.join([str(HERE), *sys.path])},
                    log_file=tmp_path / "sim.log", timescale=("1ns", "1ps"))
    assert failure(xml) is None, failure(xml)
    res = np.load(out)
    got = res["received"].tobytes()
    n = layout["answer_bytes"]
    return [decode_answer(got[i * n:(i + 1) * n], layout) for i in range(len(frames))], \
        int(res["error"])


@pytest.mark.parametrize("model, shape, divisor, gaps", [
    ("mlp", (1, 8, 8), 8, 0),
    ("cnn", (1, 8, 8), 5, 3),
])
def test_board_top_rtl_matches_reference(tmp_path, model, shape, divisor, gaps):
    net = small_mlp() if model == "mlp" else small_cnn()
    graph = ChooseFolding().apply(bnnforge.lower(randomize_model(net, 11), shape))
    frames = random_frames(shape, 4, seed=2)
    expected = bnnforge.reference(graph, frames)
    answers, error = run_board(tmp_path, graph, frames, divisor, gaps)
    assert error == 0
    for (cls, scores), exp in zip(answers, expected, strict=True):
        np.testing.assert_array_equal(scores, exp)
        assert cls == int(np.argmax(exp))
