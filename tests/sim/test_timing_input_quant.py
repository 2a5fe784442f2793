"""The timing model stays cycle-exact with an input table (a wire, like the threshold)."""

from __future__ import annotations

import numpy as np
import pytest
from test_timing import MLP_FOLDS, check_exact, folded, with_ppt

from bnnforge.nn import InputQuant
from bnnforge.sim.timing import chain
from conftest import randomize_model, small_cnn, small_mlp

LEVELS = [int(v) for v in np.random.default_rng(2).integers(-100, 156, 256)]


def with_levels(model):
    model[0] = InputQuant(8, levels=LEVELS)
    return model


@pytest.mark.parametrize("fold,ppt", [("middle", 1), ("parallel", 4)])
def test_mlp_with_table_cycle_exact(fold, ppt):
    model = randomize_model(with_levels(small_mlp(8, hidden=16)), seed=3)
    graph = with_ppt(folded(model, (1, 8, 8), MLP_FOLDS[fold]), ppt)
    assert [b["kind"] for b in chain(graph)][:2] == ["fifo", "table"]
    check_exact(graph, 3, seed=ppt)
    model = check_exact(graph, 3, seed=ppt + 1, idle=0.3, stall=0.4, probe=True)
    assert "input:table" in model.boundaries


def test_cnn_with_table_and_no_fifo_cycle_exact():
    model = randomize_model(with_levels(small_cnn(8)), seed=5)
    graph = folded(model, (1, 8, 8), depths={"input": 0})
    assert [b["kind"] for b in chain(graph)][0] == "table"
    check_exact(graph, 2, seed=1, idle=0.2, stall=0.3, probe=True)
