"""Reference BNN architectures (FINN-style MLPs, a small CNV-style convnet, a binary ResNet).

All of them are ``torch.nn.Sequential`` models built only from ``InputQuant``, ``Flatten``,
``BinaryLinear``, ``BinaryConv2d``, ``BatchNorm1d/2d``, ``BinaryActivation`` and ``MaxPool2d``
(``resnet`` groups some into residual blocks), which is what the compiler lowers. Hidden layers
are binary layer -> BatchNorm -> sign; the last layer is a ``BinaryLinear`` without BatchNorm, so
the model outputs integer scores (times the layer's channel scale).

``tfc`` / ``sfc`` / ``lfc``: InputQuant, Flatten, three hidden layers of 64 / 256 / 1024, last
layer to ``num_classes``.

``cnv`` (3x3 binary convolutions, binary max-pool after the sign):

- inputs of at least 16x16 (e.g. 1x28x28), valid convolutions:
  28 -conv16-> 26 -conv16-> 24 -pool-> 12 -conv32-> 10 -conv32-> 8 -pool-> 4,
  Flatten (32*4*4 = 512) -> fc 64 -> fc num_classes;
- smaller inputs (e.g. 1x8x8), padding 1 (with -1), a single pool:
  8 -conv16-> 8 -conv16-> 8 -pool-> 4 -conv32-> 4 -conv32-> 4,
  Flatten (32*4*4 = 512) -> fc 64 -> fc num_classes.

``resnet``: a small Bi-Real-style binary ResNet (:class:`ResNet`). Every binary convolution
is 3x3 with padding 1 (-1; the 8-bit stem pads with 0, black), except the 1x1 shortcut:

- stem: InputQuant, conv 16, BatchNorm, sign, and for inputs of at least 16x16 a max-pool 2;
- block 1 (identity): ``sign(bn(conv 16 (x)) + x)``;
- block 2 (projection): ``sign(bn(conv 32 stride 2 (x)) + bn_s(conv_s 1x1 stride 2 (x)))``;
- block 3 (identity): ``sign(bn(conv 32 (x)) + x)``;
- head: Flatten, fc 64, BatchNorm, sign, fc num_classes (no BatchNorm: integer scores).

For 1x28x28: 28 -stem-> 28 -pool-> 14 -b1-> 14 -b2-> 7 -b3-> 7, fc 1568 -> 64 -> 10 (every
window but the stem's is on a map of at most 14x14); for 1x8x8: 8 -stem-> 8 -b1-> 8 -b2-> 4
-b3-> 4, fc 512 -> 64 -> 10. A binary max-pool before the head (OR of bits) cost 2-5 points of
accuracy on mnist5k, the hidden layer about 2 more: both measured, hence this head.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from .layers import BinaryActivation, BinaryConv2d, BinaryLinear, InputQuant
from .quantizers import QUANTIZERS

__all__ = ["ARCHS", "BasicBlock", "ResNet", "build"]

ARCHS = ("tfc", "sfc", "lfc", "cnv", "resnet")

_MLP_WIDTH = {"tfc": 64, "sfc": 256, "lfc": 1024}


def _check_shape(input_shape) -> tuple[int, int, int]:
    shape = tuple(int(d) for d in input_shape)
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"input_shape must be (channels, height, width), not {input_shape!r}")
    return shape


def _mlp(width: int, shape, num_classes: int, q: str, input_bits: int) -> nn.Sequential:
    c, h, w = shape
    layers: list[nn.Module] = [InputQuant(input_bits), nn.Flatten()]
    n_in = c * h * w
    for _ in range(3):
        layers += [BinaryLinear(n_in, width, q), nn.BatchNorm1d(width), BinaryActivation(q)]
        n_in = width
    layers.append(BinaryLinear(n_in, num_classes, q))
    return nn.Sequential(*layers)


def _cnv(shape, num_classes: int, q: str, input_bits: int) -> nn.Sequential:
    c, h, w = shape
    small = min(h, w) < 16
    pad = 1 if small else 0
    plan = [16, 16, "pool", 32, 32] + ([] if small else ["pool"])
    layers: list[nn.Module] = [InputQuant(input_bits)]
    ch = c
    for item in plan:
        if item == "pool":
            layers.append(nn.MaxPool2d(2))
            h, w = h // 2, w // 2
        else:
            # an 8-bit first layer pads with black pixels (0), binary layers with -1
            pad_value = 0.0 if (input_bits == 8 and ch == c and len(layers) == 1) else -1.0
            layers += [
                BinaryConv2d(ch, item, 3, padding=pad, weight_quantizer=q, pad_value=pad_value),
                nn.BatchNorm2d(item),
                BinaryActivation(q),
            ]
            ch = item
            h, w = h + 2 * pad - 2, w + 2 * pad - 2
        if h < 1 or w < 1:
            raise ValueError(f"input_shape {tuple(shape)!r} is too small for cnv")
    n_in = ch * h * w
    layers += [
        nn.Flatten(),
        BinaryLinear(n_in, 64, q),
        nn.BatchNorm1d(64),
        BinaryActivation(q),
        BinaryLinear(64, num_classes, q),
    ]
    return nn.Sequential(*layers)


class BasicBlock(nn.Module):
    """A binary residual block: ``sign(bn(conv(x)) + shortcut(x))``.

    ``conv`` is 3x3, padding 1 (with -1), ``stride``; the shortcut is ``x`` itself when the
    shapes agree (identity), else ``bn_s(conv_s(x))`` with a 1x1 convolution of ``stride``
    (projection). Each path has its own BatchNorm; the sign follows the sum.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1,
                 quantizer: str = "ste"):
        super().__init__()
        self.conv = BinaryConv2d(in_channels, out_channels, 3, stride=stride, padding=1,
                                 weight_quantizer=quantizer)
        self.bn = nn.BatchNorm2d(out_channels)
        self.projection = stride != 1 or in_channels != out_channels
        if self.projection:
            self.conv_s = BinaryConv2d(in_channels, out_channels, 1, stride=stride,
                                       weight_quantizer=quantizer)
            self.bn_s = nn.BatchNorm2d(out_channels)
        self.act = BinaryActivation(quantizer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        main = self.bn(self.conv(x))
        return self.act(main + (self.bn_s(self.conv_s(x)) if self.projection else x))


class ResNet(nn.Sequential):
    """The ``resnet`` reference architecture (see the module docstring).

    An ``nn.Sequential`` whose items are layers and :class:`BasicBlock` s: ``quant``, ``conv``,
    ``bn``, ``act``, (``pool``), ``block1`` … ``block3``, ``flatten``, ``fc0``, ``bn0``,
    ``act0``, ``fc``; ``widths`` are the channels before and after the projection block,
    ``hidden`` the width of the hidden dense layer.
    """

    def __init__(self, shape, num_classes: int, quantizer: str = "ste", input_bits: int = 1,
                 widths: tuple = (16, 32), hidden: int = 64):
        c, h, w = shape
        pool = min(h, w) >= 16
        first, second = (int(v) for v in widths)
        layers = [
            ("quant", InputQuant(input_bits)),
            ("conv", BinaryConv2d(c, first, 3, padding=1, weight_quantizer=quantizer,
                                  pad_value=0.0 if input_bits == 8 else -1.0)),
            ("bn", nn.BatchNorm2d(first)),
            ("act", BinaryActivation(quantizer)),
        ]
        if pool:
            layers.append(("pool", nn.MaxPool2d(2)))
            h, w = h // 2, w // 2
        if h < 2 or w < 2:
            raise ValueError(f"input_shape {tuple(shape)!r} is too small for resnet")
        layers += [("block1", BasicBlock(first, first, 1, quantizer)),
                   ("block2", BasicBlock(first, second, 2, quantizer)),
                   ("block3", BasicBlock(second, second, 1, quantizer))]
        h, w = (h + 1) // 2, (w + 1) // 2
        layers += [("flatten", nn.Flatten()),
                   ("fc0", BinaryLinear(second * h * w, hidden, quantizer)),
                   ("bn0", nn.BatchNorm1d(hidden)),
                   ("act0", BinaryActivation(quantizer)),
                   ("fc", BinaryLinear(hidden, num_classes, quantizer))]
        super().__init__(OrderedDict(layers))


def build(
    arch: str, input_shape, num_classes: int, quantizer: str = "ste", input_bits: int = 1
) -> nn.Sequential:
    """Build reference architecture ``arch`` for inputs of ``input_shape`` (C, H, W).

    Parameters
    ----------
    arch : str
        One of ``ARCHS``: "tfc", "sfc", "lfc" (MLPs), "cnv" (convnet) or "resnet" (residual
        convnet, a :class:`ResNet`).
    input_shape : tuple of int
        (channels, height, width) of one input image.
    num_classes : int
        Number of output scores.
    quantizer : str
        Binarizer for weights and activations, one of ``QUANTIZERS``.
    input_bits : int
        1 (binarized pixels) or 8 (8-bit pixels into the first layer).
    """
    if arch not in ARCHS:
        raise ValueError(f"unknown architecture {arch!r}; choose one of {', '.join(ARCHS)}")
    if quantizer not in QUANTIZERS:
        raise ValueError(
            f"unknown quantizer {quantizer!r}; choose one of ste, approx_sign, reste, biper"
        )
    if int(num_classes) < 2:
        raise ValueError(f"num_classes must be at least 2, not {num_classes!r}")
    shape = _check_shape(input_shape)
    if arch == "cnv":
        return _cnv(shape, int(num_classes), quantizer, input_bits)
    if arch == "resnet":
        return ResNet(shape, int(num_classes), quantizer, input_bits)
    return _mlp(_MLP_WIDTH[arch], shape, int(num_classes), quantizer, input_bits)
