import numpy as np
import pytest
import torch

from bnnforge.nn import build, evaluate, load_dataset, predict_scores, train
from bnnforge.nn.quantizers import BiPerWeightQuantizer, ReSTEQuantizer, reste_o


@pytest.mark.train
def test_sfc_ste_reaches_90_percent_on_mnist5k():
    ds = load_dataset("mnist5k")
    torch.manual_seed(0)
    model = build("sfc", ds.input_shape, ds.num_classes, "ste", input_bits=1)
    hist = train(model, ds, epochs=30, lr=1e-2, batch_size=128, seed=0, progress=False)
    assert len(hist["loss"]) == 30
    assert hist["loss"][-1] < hist["loss"][0]
    acc = evaluate(model, ds.x_test, ds.y_test)
    assert acc == hist["final_test_accuracy"]
    assert acc >= 0.90
    scores = predict_scores(model, ds.x_test)
    assert scores.dtype == np.float64 and scores.shape == (len(ds.x_test), 10)
    assert np.array_equal(scores, np.round(scores))  # integer scores out of the last layer


def _small_run(quantizer, seed=0, epochs=3):
    ds = load_dataset("digits")
    torch.manual_seed(seed)
    model = build("tfc", ds.input_shape, ds.num_classes, quantizer, input_bits=8)
    hist = train(model, ds, epochs=epochs, lr=1e-2, batch_size=128, seed=seed, progress=False)
    return model, hist


def test_training_is_deterministic():
    m1, h1 = _small_run("reste")
    m2, h2 = _small_run("reste")
    assert h1 == h2
    for (n, a), (_, b) in zip(m1.state_dict().items(), m2.state_dict().items(), strict=True):
        assert torch.equal(a, b), n


def test_train_sets_progress_on_every_quantizer():
    model, _ = _small_run("biper", epochs=4)
    weights = [m for m in model.modules() if isinstance(m, BiPerWeightQuantizer)]
    assert weights and all(q.progress == 0.75 and q.stage == 2 for q in weights)
    model, _ = _small_run("reste", epochs=4)
    rs = [m for m in model.modules() if isinstance(m, ReSTEQuantizer)]
    assert rs and all(q.o == pytest.approx(reste_o(0.75)) for q in rs)
    assert not model.training


def test_digits_learns_something_with_every_quantizer():
    for q in ("ste", "approx_sign", "reste", "biper"):
        _, hist = _small_run(q, epochs=4)
        assert hist["final_test_accuracy"] > 0.5, q


def test_train_argument_errors():
    ds = load_dataset("digits")
    model = build("tfc", ds.input_shape, ds.num_classes)
    with pytest.raises(ValueError, match=r"mst_reg must be zero or positive, not -0.1"):
        train(model, ds, epochs=1, mst_reg=-0.1, progress=False)
    with pytest.raises(ValueError, match=r"epochs must be at least 1, not 0"):
        train(model, ds, epochs=0, progress=False)
    with pytest.raises(ValueError, match=r"batch_size must be at least 1, not 0"):
        train(model, ds, batch_size=0, progress=False)
    with pytest.raises(ValueError, match=r"lr must be positive, not -1"):
        train(model, ds, lr=-1, progress=False)
    with pytest.raises(ValueError, match=r"no BinaryLinear or BinaryConv2d"):
        train(torch.nn.Sequential(torch.nn.Flatten()), ds, progress=False)


def test_mst_regularizer_lowers_the_tree_weight():
    """The same digits run with the MST regularizer gives hidden layers a lighter tree."""
    import bnnforge
    from bnnforge.compiler.mst import analyse_graph

    ds = load_dataset("digits")
    ratios = {}
    for lam in (0.0, 0.3):
        torch.manual_seed(0)
        model = build("tfc", ds.input_shape, ds.num_classes)
        hist = train(model, ds, epochs=4, mst_reg=lam, progress=False)
        assert hist["final_test_accuracy"] > 0.6
        layers = analyse_graph(bnnforge.lower(model, ds.input_shape))["layers"]
        hidden = [row for row in layers if row["name"] != "scores"]
        dense = sum(r["k"] * r["channels"] for r in hidden)
        ratios[lam] = dense / sum(r["k"] * r["roots"] + r["mst_weight"] for r in hidden)
    assert ratios[0.3] > 1.5 * ratios[0.0], ratios
