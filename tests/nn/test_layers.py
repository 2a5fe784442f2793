import json

import pytest
import torch
import torch.nn.functional as F

from bnnforge.nn import (
    ARCHS,
    DATASETS,
    QUANTIZERS,
    BinaryActivation,
    BinaryConv2d,
    BinaryLinear,
    build,
    load_dataset,
    sign,
)


@pytest.mark.parametrize("q", QUANTIZERS)
def test_binary_linear_forward_matches_f_linear(q):
    torch.manual_seed(0)
    layer = BinaryLinear(20, 7, weight_quantizer=q).eval()
    bw = layer.binary_weight()
    assert bw.shape == (7, 20)
    assert set(bw.unique().tolist()) <= {-1.0, 1.0}
    s = layer.channel_scale()
    assert s.shape == (7,) and s.dtype == torch.float32
    x = sign(torch.randn(5, 20))
    torch.testing.assert_close(layer(x), F.linear(x, bw * s[:, None]))
    assert not any("bias" in n for n, _ in layer.named_parameters())


@pytest.mark.parametrize("q", QUANTIZERS)
def test_binary_conv_pads_with_minus_one(q):
    torch.manual_seed(1)
    layer = BinaryConv2d(3, 4, 3, stride=1, padding=1, weight_quantizer=q).eval()
    bw = layer.binary_weight()
    assert bw.shape == (4, 3, 3, 3)
    assert set(bw.unique().tolist()) <= {-1.0, 1.0}
    s = layer.channel_scale()
    assert s.shape == (4,)
    x = sign(torch.randn(2, 3, 6, 5))
    xp = F.pad(x, (1, 1, 1, 1), value=-1.0)
    expected = F.conv2d(xp, bw * s[:, None, None, None])
    out = layer(x)
    assert out.shape == (2, 4, 6, 5)
    torch.testing.assert_close(out, expected)
    # zero padding would give a different answer: the test can tell them apart
    assert not torch.allclose(out, F.conv2d(x, bw * s[:, None, None, None], padding=1))


def test_binary_conv_rectangular_geometry():
    layer = BinaryConv2d(2, 3, (3, 2), stride=(2, 1), padding=(1, 0)).eval()
    assert layer.kernel_size == (3, 2) and layer.stride == (2, 1) and layer.padding == (1, 0)
    assert layer.pad_value == -1.0
    x = sign(torch.randn(1, 2, 7, 5))
    expected = F.conv2d(F.pad(x, (0, 0, 1, 1), value=-1.0), layer.binary_weight(), stride=(2, 1))
    torch.testing.assert_close(layer(x), expected)


def test_scale_modes():
    lin = BinaryLinear(8, 3, "reste")
    assert lin.scale == "mean"
    torch.testing.assert_close(lin.channel_scale(), lin.weight.abs().mean().repeat(3))
    assert BinaryLinear(8, 3, "ste").scale == "none"
    assert torch.equal(BinaryLinear(8, 3, "approx_sign").channel_scale(), torch.ones(3))
    bp = BinaryLinear(8, 3, "biper")
    assert bp.scale == "channel"
    assert torch.equal(bp.channel_scale(), torch.ones(3))
    with torch.no_grad():
        bp.alpha.copy_(torch.tensor([0.5, -2.0, 1.0]))
    assert bp.channel_scale().tolist() == [0.5, -2.0, 1.0]
    assert BinaryLinear(8, 3, "ste", scale="channel").alpha.requires_grad
    with pytest.raises(
        ValueError,
        match=r"scale must be one of none, mean, channel or None, "
        r"not 'max'",
    ):
        BinaryLinear(8, 3, scale="max")


def test_biper_binary_weight_is_sign_of_sine():
    layer = BinaryLinear(4, 2, "biper")
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[0.0, 0.1, 0.2, -0.1], [0.16, -0.16, 0.3, 1.0]]))
    expected = torch.where(torch.sin(20 * layer.weight) >= 0, 1.0, -1.0)
    assert torch.equal(layer.binary_weight(), expected)


@pytest.mark.parametrize("q", QUANTIZERS)
def test_config_round_trips(q):
    layers = [
        BinaryLinear(6, 5, weight_quantizer=q),
        BinaryLinear(6, 5, weight_quantizer=q, scale="none"),
        BinaryConv2d(2, 3, 3, stride=2, padding=1, weight_quantizer=q),
        BinaryActivation(q),
    ]
    for layer in layers:
        cfg = json.loads(json.dumps(layer.config()))
        clone = type(layer)(**cfg)
        assert clone.config() == layer.config()
        if hasattr(layer, "weight"):
            clone.load_state_dict(layer.state_dict())
            layer.eval(), clone.eval()
            assert torch.equal(clone.binary_weight(), layer.binary_weight())
            assert clone.weight_quantizer == q
    assert BinaryActivation(q).quantizer_name == q


def test_training_forward_uses_quantizer_gradient():
    layer = BinaryLinear(3, 1, "ste").train()
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[0.5, -2.0, 0.0]]))
    x = torch.ones(1, 3)
    out = layer(x)
    assert out.item() == 1.0  # (+1) + (-1) + (+1): sign(0) = +1
    out.sum().backward()
    assert layer.weight.grad.tolist() == [[1.0, 0.0, 1.0]]  # STE cancels |w| > 1


def test_binary_activation_sign0_and_backward():
    act = BinaryActivation("approx_sign").train()
    x = torch.tensor([-0.5, 0.0, 0.25, 2.0], requires_grad=True)
    out = act(x)
    assert out.tolist() == [-1.0, 1.0, 1.0, 1.0]
    out.sum().backward()
    assert x.grad.tolist() == [1.0, 2.0, 1.5, 0.0]
    assert act.eval()(torch.zeros(2)).tolist() == [1.0, 1.0]


def test_layer_regularization():
    assert BinaryLinear(4, 2, "ste").regularization().item() == 0.0
    bp = BinaryConv2d(1, 2, 3, weight_quantizer="biper")
    expected = bp.quantizer.tau * torch.sin(20 * bp.weight).pow(2).mean()
    torch.testing.assert_close(bp.regularization(), expected)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("name", DATASETS)
@pytest.mark.parametrize("input_bits", [1, 8])
def test_every_arch_builds_and_runs(arch, name, input_bits):
    ds = load_dataset(name)
    model = build(arch, ds.input_shape, ds.num_classes, "ste", input_bits=input_bits).eval()
    x = torch.as_tensor(ds.x_test[:4]).float() / 255.0
    out = model(x)
    assert out.shape == (4, ds.num_classes)
    k = model[-1].in_features
    # last layer: integer scores of the parity of K within +-K
    assert torch.equal(out, out.round())
    assert out.abs().max() <= k
    assert torch.all((out - k) % 2 == 0)
    assert not isinstance(model[-1], torch.nn.BatchNorm1d)


def test_mlp_widths_and_layout():
    for arch, width in (("tfc", 64), ("sfc", 256), ("lfc", 1024)):
        m = build(arch, (1, 28, 28), 10)
        lin = [x for x in m if isinstance(x, BinaryLinear)]
        assert [x.out_features for x in lin] == [width, width, width, 10]
        assert lin[0].in_features == 784
        assert sum(isinstance(x, torch.nn.BatchNorm1d) for x in m) == 3


def test_cnv_pool_after_activation():
    for shape in ((1, 28, 28), (1, 8, 8)):
        m = build("cnv", shape, 10)
        mods = list(m)
        for i, mod in enumerate(mods):
            if isinstance(mod, torch.nn.MaxPool2d):
                assert isinstance(mods[i - 1], BinaryActivation)
        fc = [x for x in m if isinstance(x, BinaryLinear)]
        assert fc[0].in_features == 512 and fc[0].out_features == 64


def test_build_errors():
    with pytest.raises(
        ValueError,
        match=r"unknown architecture 'vgg'; choose one of tfc, sfc, "
        r"lfc, cnv",
    ):
        build("vgg", (1, 8, 8), 10)
    with pytest.raises(ValueError, match=r"unknown quantizer 'sgn'"):
        build("tfc", (1, 8, 8), 10, quantizer="sgn")
    with pytest.raises(ValueError, match=r"InputQuant supports bits=1 or bits=8, not 2"):
        build("tfc", (1, 8, 8), 10, input_bits=2)
    with pytest.raises(ValueError, match=r"too small for cnv"):
        build("cnv", (1, 1, 1), 10)


def test_datasets():
    for name, hw, n in (("digits", 8, 1797), ("mnist5k", 28, 5000)):
        ds = load_dataset(name)
        assert ds.name == name and ds.input_shape == (1, hw, hw) and ds.num_classes == 10
        assert ds.x_train.dtype.name == "uint8" and ds.y_train.dtype.name == "int64"
        assert ds.x_train.shape[1:] == (1, hw, hw)
        assert len(ds.x_train) + len(ds.x_test) == n
        assert abs(len(ds.x_test) - 0.2 * n) <= 1
        assert ds.x_train.max() == 255
        again = load_dataset(name)
        assert (again.x_test == ds.x_test).all() and (again.y_train == ds.y_train).all()
    with pytest.raises(
        ValueError,
        match=r"unknown dataset 'cifar'; choose one of digits, "
        r"mnist5k",
    ):
        load_dataset("cifar")
