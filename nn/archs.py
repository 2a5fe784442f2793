"""Reference BNN architectures (FINN-style MLPs and a small CNV-style convnet).

All of them are ``torch.nn.Sequential`` models built only from ``InputQuant``, ``Flatten``,
``BinaryLinear``, ``BinaryConv2d``, ``BatchNorm1d/2d``, ``BinaryActivation`` and ``MaxPool2d``,
which is what the compiler lowers. Hidden layers are binary layer -> BatchNorm -> sign; the last
layer is a ``BinaryLinear`` without BatchNorm, so the model outputs integer scores (times the
layer's channel scale).

``tfc`` / ``sfc`` / ``lfc``: InputQuant, Flatten, three hidden layers of 64 / 256 / 1024, last
layer to ``num_classes``.

``cnv`` (3x3 binary convolutions, binary max-pool after the sign):

- inputs of at least 16x16 (e.g. 1x28x28), valid convolutions:
  28 -conv16-> 26 -conv16-> 24 -pool-> 12 -conv32-> 10 -conv32-> 8 -pool-> 4,
  Flatten (32*4*4 = 512) -> fc 64 -> fc num_classes;
- smaller inputs (e.g. 1x8x8), padding 1 (with -1), a single pool:
  8 -conv16-> 8 -conv16-> 8 -pool-> 4 -conv32-> 4 -conv32-> 4,
  Flatten (32*4*4 = 512) -> fc 64 -> fc num_classes.
"""

from __future__ import annotations

from torch import nn

from .layers import BinaryActivation, BinaryConv2d, BinaryLinear, InputQuant
from .quantizers import QUANTIZERS

__all__ = ["ARCHS", "build"]

ARCHS = ("tfc", "sfc", "lfc", "cnv")

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


def build(
    arch: str, input_shape, num_classes: int, quantizer: str = "ste", input_bits: int = 1
) -> nn.Sequential:
    """Build reference architecture ``arch`` for inputs of ``input_shape`` (C, H, W).

    Parameters
    ----------
    arch : str
        One of ``ARCHS``: "tfc", "sfc", "lfc" (MLPs) or "cnv" (convnet).
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
        raise ValueError(f"unknown architecture {arch!r}; choose one of tfc, sfc, lfc, cnv")
    if quantizer not in QUANTIZERS:
        raise ValueError(
            f"unknown quantizer {quantizer!r}; choose one of ste, approx_sign, reste, biper"
        )
    if int(num_classes) < 2:
        raise ValueError(f"num_classes must be at least 2, not {num_classes!r}")
    shape = _check_shape(input_shape)
    if arch == "cnv":
        return _cnv(shape, int(num_classes), quantizer, input_bits)
    return _mlp(_MLP_WIDTH[arch], shape, int(num_classes), quantizer, input_bits)
