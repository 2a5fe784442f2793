"""graph.json + weights.npz: lossless and byte-identical."""

from __future__ import annotations

import numpy as np
import pytest

import bnnforge
from bnnforge.compiler import GraphFileError, load_graph, save_graph
from bnnforge.compiler.folding import ChooseFolding
from conftest import random_frames, randomize_model, small_cnn


@pytest.fixture
def graph():
    g = bnnforge.lower(randomize_model(small_cnn(8, "biper", last_bn=True), 3), (1, 8, 8),
                       name="cnn", meta={"dataset": "digits"})
    return ChooseFolding(target_cycles=700).apply(g)


def test_roundtrip_is_lossless(graph, tmp_path):
    save_graph(graph, tmp_path)
    back = load_graph(tmp_path)
    assert back.same_as(graph)
    frames = random_frames((1, 8, 8), 300)
    np.testing.assert_array_equal(bnnforge.reference(back, frames),
                                  bnnforge.reference(graph, frames))


def test_files_are_byte_identical(graph, tmp_path):
    save_graph(graph, tmp_path / "a")
    model = randomize_model(small_cnn(8, "biper", last_bn=True), 3)
    again = ChooseFolding(target_cycles=700).apply(
        bnnforge.lower(model, (1, 8, 8), name="cnn", meta={"dataset": "digits"}))
    save_graph(again, tmp_path / "b")
    for name in ("graph.json", "weights.npz"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_damaged_files_are_reported(graph, tmp_path):
    with pytest.raises(GraphFileError, match=r"graph.json is missing; run 'bnnforge compile"):
        load_graph(tmp_path)
    save_graph(graph, tmp_path)
    data = (tmp_path / "weights.npz").read_bytes()
    (tmp_path / "weights.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(GraphFileError, match=r"weights.npz is corrupt or truncated"):
        load_graph(tmp_path)
    save_graph(graph, tmp_path)
    (tmp_path / "graph.json").write_text("{not json")
    with pytest.raises(GraphFileError, match=r"graph.json is corrupt"):
        load_graph(tmp_path)
