"""bnnforge.host: the wire format, and classify() against the board top's RTL (Amaranth sim)."""

import json

import numpy as np
import pytest

import bnnforge
from bnnforge.compiler.folding import ChooseFolding
from bnnforge.host import (
    HostError,
    SimulatedSerial,
    classify,
    decode_answer,
    encode_frames,
    read_layout,
)
from conftest import random_frames, randomize_model, small_mlp

pytestmark = pytest.mark.filterwarnings("ignore::amaranth.hdl.UnusedElaboratable")

TOP = {"top": "bnnforge_top", "pixel_width": 16, "pixels_per_frame": 6, "classes": 3,
       "score_width": 33, "class_width": 2}


@pytest.fixture(scope="module")
def mlp():
    graph = bnnforge.lower(randomize_model(small_mlp(hidden=16), 4), (1, 8, 8))
    return ChooseFolding().apply(graph)


def test_layout_and_encoding(tmp_path):
    layout = read_layout(TOP)
    assert layout == {"channels": 2, "pixels_per_frame": 6, "frame_bytes": 12, "classes": 3,
                      "score_width": 33, "class_bytes": 1, "score_bytes": 5, "answer_bytes": 16}
    (tmp_path / "rtl").mkdir()
    (tmp_path / "rtl" / "top.json").write_text(json.dumps(TOP))
    assert read_layout(tmp_path) == layout
    images = np.arange(2 * 2 * 2 * 3, dtype=np.uint8).reshape(2, 2, 2, 3)   # (N, C, H, W)
    frames = encode_frames(images, layout)
    # raster order, the two channels of a pixel side by side
    assert frames[0] == bytes([0, 6, 1, 7, 2, 8, 3, 9, 4, 10, 5, 11])
    answer = bytes([2]) + (5).to_bytes(5, "little") + (-7).to_bytes(5, "little", signed=True) \
        + (2**32).to_bytes(5, "little")
    cls, scores = decode_answer(answer, layout)
    assert cls == 2 and scores.tolist() == [5, -7, 2**32]


def test_bad_inputs_are_explained(tmp_path):
    layout = read_layout(TOP)
    with pytest.raises(HostError, match=r"images of shape \(1, 1, 2, 3\) do not fit the "
                                        r"board's model: it takes 2 channel\(s\) and 6 pixels"):
        encode_frames(np.zeros((1, 1, 2, 3), np.uint8), layout)
    with pytest.raises(HostError, match="images must be a uint8 numpy array, got float64"):
        encode_frames(np.zeros((1, 2, 2, 3)), layout)
    with pytest.raises(HostError, match="rtl/top.json is missing; give the build folder"):
        read_layout(tmp_path)
    with pytest.raises(HostError, match="give layout="):
        classify(object(), np.zeros((1, 2, 2, 3), np.uint8))
    with pytest.raises(HostError, match="cannot open serial port /nonexistent/ttyUSB9"):
        classify("/nonexistent/ttyUSB9", np.zeros((1, 2, 2, 3), np.uint8), layout=TOP)


def test_classify_pipelined_frames_on_the_simulated_board(mlp):
    frames = random_frames((1, 8, 8), 3, seed=9)
    expected = bnnforge.reference(mlp, frames)
    with SimulatedSerial(mlp, divisor=4) as ser:
        got = classify(ser, frames, window=3)
    assert [c for c, _ in got] == expected.argmax(axis=1).tolist()
    np.testing.assert_array_equal(np.stack([s for _, s in got]), expected)


def test_classify_times_out_when_the_board_does_not_answer(mlp):
    ser = SimulatedSerial(mlp, divisor=4, timeout=0.002)
    layout = dict(ser.top_info(), pixels_per_frame=32)     # half a frame: no answer comes
    with pytest.raises(TimeoutError, match=r"the board sent 0 of 41 answer bytes for image 0 "
                                           r"within 0.002 s: check the port, the baud rate"):
        classify(ser, np.zeros((1, 1, 4, 8), np.uint8), layout=layout)
