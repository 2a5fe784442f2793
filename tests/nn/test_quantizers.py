import math

import pytest
import torch

from bnnforge.nn import QUANTIZERS, InputQuant, make_quantizer, reste_o, sign
from bnnforge.nn.quantizers import BiPerWeightQuantizer, ReSTEQuantizer


def test_sign_zero_is_plus_one_and_keeps_dtype():
    for dtype in (torch.float32, torch.float64):
        x = torch.tensor([-2.0, -0.0, 0.0, 1e-9, -1e-9, 3.0], dtype=dtype)
        out = sign(x)
        assert out.dtype == dtype
        assert out.tolist() == [-1.0, 1.0, 1.0, 1.0, -1.0, 1.0]


@pytest.mark.parametrize("name", QUANTIZERS)
@pytest.mark.parametrize("role", ["weight", "activation"])
def test_every_quantizer_forward_is_sign_with_sign0_plus1(name, role):
    q = make_quantizer(name, role)
    x = torch.tensor([-1.5, -0.3, 0.0, 0.2, 2.0])
    q.eval()
    out = q(x)
    if name == "biper" and role == "weight":
        expected = sign(torch.sin(20.0 * x))
    else:
        expected = torch.tensor([-1.0, -1.0, 1.0, 1.0, 1.0])
    assert torch.equal(out, expected)
    assert torch.equal(q.hard(x), expected)
    assert q.hard(torch.zeros(3)).tolist() == [1.0, 1.0, 1.0]


def test_input_quant_thresholds_and_sign0():
    x = torch.tensor([0.0, 0.4999, 0.5, 1.0])
    assert InputQuant(1)(x).tolist() == [-1.0, -1.0, 1.0, 1.0]
    x8 = torch.tensor([0.0, 1 / 255, 0.5, 1.0])
    assert InputQuant(8)(x8).tolist() == [0.0, 1.0, 128.0, 255.0]
    assert InputQuant(8).bits == 8


def test_input_quant_rejects_other_bits():
    with pytest.raises(ValueError, match=r"bits=1 or bits=8, not 4"):
        InputQuant(4)


def _grad(q, points):
    x = torch.tensor(points, dtype=torch.float64, requires_grad=True)
    q(x).sum().backward()
    return x.grad


POINTS = [-2.0, -1.0, -0.99, -0.5, -0.05, 0.0, 0.05, 0.3, 0.999, 1.0, 1.2, 1.5, 1.6]


def test_ste_gradient():
    g = _grad(make_quantizer("ste"), POINTS)
    expected = [1.0 if abs(p) <= 1 else 0.0 for p in POINTS]
    assert g.tolist() == expected


@pytest.mark.parametrize("quant", ["approx_sign", ("biper", "activation")])
def test_approx_sign_gradient(quant):
    q = make_quantizer(*quant) if isinstance(quant, tuple) else make_quantizer(quant)
    g = _grad(q, POINTS)
    expected = torch.tensor(
        [2 - 2 * abs(p) if abs(p) < 1 else 0.0 for p in POINTS], dtype=torch.float64
    )
    torch.testing.assert_close(g, expected)


def _reste_expected(p, o, t=1.5, m=0.1):
    a = abs(p)
    if a <= m:
        return m ** (1 / o) / m
    if a <= t:
        return (1 / o) * a ** ((1 - o) / o)
    return 0.0


@pytest.mark.parametrize("frac", [0.0, 0.4, 1.0])
def test_reste_gradient_follows_formula(frac):
    q = make_quantizer("reste")
    q.set_progress(frac)
    o = reste_o(frac)
    g = _grad(q, POINTS)
    expected = torch.tensor([_reste_expected(p, o) for p in POINTS], dtype=torch.float64)
    torch.testing.assert_close(g, expected)
    if frac == 1.0:
        # o = 3: at |z| = 0.05 the constant m^(1/3)/m, at 0.3 (1/3) 0.3^(-2/3), beyond t zero.
        assert g[POINTS.index(0.05)].item() == pytest.approx(0.1 ** (1 / 3) / 0.1)
        assert g[POINTS.index(0.3)].item() == pytest.approx(0.3 ** (-2 / 3) / 3)
        assert g[POINTS.index(1.6)].item() == 0.0


def test_reste_o_schedule():
    assert reste_o(0.0) == 1.0
    assert reste_o(1.0) == pytest.approx(3.0)
    assert reste_o(0.5) == pytest.approx(1 + 2 * (1 - math.cos(math.pi / 4)))
    q = ReSTEQuantizer()
    assert q.o == 1.0
    q.set_progress(0.5)
    assert q.o == pytest.approx(reste_o(0.5))
    with pytest.raises(ValueError, match=r"training progress must lie in \[0, 1\], not 1.5"):
        q.set_progress(1.5)


def test_biper_weight_gradient_and_stages():
    q = make_quantizer("biper", "weight")
    assert isinstance(q, BiPerWeightQuantizer)
    w = torch.tensor([-0.2, -0.01, 0.0, 0.03, 0.1, 0.2], dtype=torch.float64)
    # stage 1, training: continuous sine forward
    q.train()
    assert q.stage == 1
    torch.testing.assert_close(q(w), torch.sin(20 * w))
    q.set_progress(0.49)
    assert q.stage == 1
    q.set_progress(0.5)
    assert q.stage == 2
    out = q(w)
    assert torch.equal(out, sign(torch.sin(20 * w)))
    wg = w.clone().requires_grad_(True)
    q(wg).sum().backward()
    torch.testing.assert_close(wg.grad, 20 * torch.cos(20 * w))
    # eval is binary whatever the stage
    q.set_progress(0.0)
    q.eval()
    assert torch.equal(q(w), sign(torch.sin(20 * w)))


def test_regularization():
    w = torch.tensor([0.01, -0.3, 0.7])
    for name in ("ste", "approx_sign", "reste"):
        assert make_quantizer(name).regularization(w).item() == 0.0
    q = make_quantizer("biper")
    expected = q.tau * torch.sin(20 * w).pow(2).mean()
    torch.testing.assert_close(q.regularization(w), expected)
    assert q.tau > 0
    assert make_quantizer("biper", "activation").regularization(w).item() == 0.0


def test_set_progress_is_accepted_everywhere():
    for name in QUANTIZERS:
        for role in ("weight", "activation"):
            make_quantizer(name, role).set_progress(0.3)


def test_unknown_quantizer_and_role():
    with pytest.raises(
        ValueError,
        match=r"unknown quantizer 'xnor'; choose one of ste, approx_sign, reste, biper",
    ):
        make_quantizer("xnor")
    with pytest.raises(ValueError, match=r"role must be 'weight' or 'activation', not 'bias'"):
        make_quantizer("ste", "bias")
