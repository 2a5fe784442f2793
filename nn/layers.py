"""Binary layers for training BNNs that the bnnforge compiler can lower bit-exactly.

Model inputs are float tensors in [0, 1] (uint8 pixels / 255). The numeric contract is in
docs/design.md §2: bit 1 means +1, bit 0 means -1, ``sign(0) = +1``, binary convolutions pad
with -1, and no binary layer has a bias.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .quantizers import QUANTIZERS, Quantizer, make_quantizer, sign

__all__ = [
    "SCALE_MODES",
    "BinaryActivation",
    "BinaryConv2d",
    "BinaryLinear",
    "InputQuant",
    "default_scale",
]

SCALE_MODES = ("none", "mean", "channel")

_DEFAULT_SCALE = {"ste": "none", "approx_sign": "none", "reste": "mean", "biper": "channel"}


def default_scale(quantizer: str) -> str:
    """Return the scale mode a quantizer uses by default ("none", "mean" or "channel")."""
    if quantizer not in QUANTIZERS:
        raise ValueError(
            f"unknown quantizer {quantizer!r}; choose one of ste, approx_sign, reste, biper"
        )
    return _DEFAULT_SCALE[quantizer]


def _pair(v, what: str) -> tuple[int, int]:
    if isinstance(v, int):
        v = (v, v)
    v = tuple(v)
    if len(v) != 2 or not all(isinstance(i, int) for i in v):
        raise ValueError(f"{what} must be an int or a pair of ints, not {v!r}")
    return v


class InputQuant(nn.Module):
    """Quantize input pixels in [0, 1] for the first binary layer.

    ``bits=1``: +1.0 where the pixel byte ``round(255 x) >= threshold`` (1..255, default 128,
    i.e. ``x >= 0.5``), else -1.0; computed as ``sign(x - (threshold - 0.5) / 255)``.
    ``bits=8``: ``q = round(255 x)`` (0..255); with ``levels`` (256 integers whose
    ``max - min <= 255``) the first layer sees ``levels[q]`` instead of ``q``.
    """

    def __init__(self, bits: int = 1, threshold: int = 128, levels=None):
        super().__init__()
        if bits not in (1, 8):
            raise ValueError(f"InputQuant supports bits=1 or bits=8, not {bits!r}")
        if isinstance(threshold, bool) or not isinstance(threshold, (int, np.integer)) \
                or not 1 <= threshold <= 255:
            raise ValueError(f"InputQuant threshold must be an integer 1..255, not {threshold!r}")
        if bits == 8 and threshold != 128:
            raise ValueError(f"InputQuant threshold={threshold} needs bits=1; bits=8 passes the "
                             "byte on (use levels to map it)")
        self.bits = bits
        self.threshold = int(threshold)
        self.levels = None if levels is None else _check_levels(levels, bits)
        if self.levels is not None:
            self.register_buffer("level_table", torch.tensor(self.levels, dtype=torch.float32),
                                 persistent=False)

    def forward(self, x):
        if self.bits == 1:
            return sign(x - (self.threshold - 0.5) / 255.0)
        q = torch.round(255.0 * x)
        if self.levels is None:
            return q
        return self.level_table[q.clamp(0, 255).long()]

    def config(self) -> dict:
        """Return the constructor kwargs that recreate this layer."""
        cfg: dict = {"bits": self.bits}
        if self.threshold != 128:
            cfg["threshold"] = self.threshold
        if self.levels is not None:
            cfg["levels"] = list(self.levels)
        return cfg

    def extra_repr(self) -> str:
        extra = f", threshold={self.threshold}" if self.threshold != 128 else ""
        if self.levels is not None:
            extra += f", levels={min(self.levels)}..{max(self.levels)}"
        return f"bits={self.bits}{extra}"


def _check_levels(levels, bits: int) -> tuple:
    """Return ``levels`` as a tuple of 256 ints, or raise ValueError saying what is wrong."""
    if bits != 8:
        raise ValueError(f"InputQuant levels need bits=8, not bits={bits!r}")
    try:
        arr = np.asarray(levels)
    except Exception:                       # noqa: BLE001 - any unconvertible input
        arr = None
    if arr is None or arr.shape != (256,) or arr.dtype == bool \
            or arr.dtype.kind not in "iuf" \
            or (arr.dtype.kind == "f" and not np.all(np.isfinite(arr) & (arr == np.round(arr)))):
        shape = None if arr is None else arr.shape
        raise ValueError(f"InputQuant levels must be a sequence of 256 integers (one per byte), "
                         f"not {type(levels).__name__} of shape {shape}")
    out = tuple(int(v) for v in arr)
    lo, hi = min(out), max(out)
    if hi - lo > 255:
        raise ValueError(f"InputQuant levels span {lo}..{hi} ({hi - lo} > 255); the hardware "
                         "maps each byte to an unsigned byte level - min(levels)")
    return out


class _BinaryWeightLayer(nn.Module):
    """Shared machinery of BinaryLinear and BinaryConv2d (latent weight, quantizer, scale)."""

    weight: nn.Parameter
    quantizer: Quantizer

    def _init_quant(self, weight_quantizer: str, scale: str | None, out: int) -> None:
        self.weight_quantizer = weight_quantizer
        self.quantizer = make_quantizer(weight_quantizer, "weight")
        if scale is None:
            scale = _DEFAULT_SCALE[weight_quantizer]
        if scale not in SCALE_MODES:
            raise ValueError(f"scale must be one of none, mean, channel or None, not {scale!r}")
        self.scale = scale
        if scale == "channel":
            self.alpha = nn.Parameter(torch.ones(out))
        else:
            self.register_parameter("alpha", None)

    def _out(self) -> int:
        return self.weight.shape[0]

    def binary_weight(self) -> torch.Tensor:
        """Return the eval-mode binarized weight: exactly +1.0 / -1.0, the latent shape."""
        with torch.no_grad():
            return self.quantizer.hard(self.weight).detach().clone()

    def _scale_tensor(self) -> torch.Tensor:
        if self.scale == "none":
            return self.weight.new_ones(self._out())
        if self.scale == "mean":
            return self.weight.abs().mean().expand(self._out())
        return self.alpha

    def channel_scale(self) -> torch.Tensor:
        """Return the per-output-channel multiplier used in forward, shape ``(out,)``."""
        with torch.no_grad():
            return self._scale_tensor().detach().clone().float()

    def _scaled(self, y: torch.Tensor) -> torch.Tensor:
        """Apply the channel scale to a layer output ``y`` (channels on axis 1).

        The scale multiplies the integer dot products after the sum, not the weights before
        it: equal dot products then give equal floats, so torch breaks score ties exactly as the
        integer hardware does.
        """
        s = self._scale_tensor()
        if self.scale == "none":
            return y
        return y * s.view(1, -1, *([1] * (y.dim() - 2)))

    def regularization(self) -> torch.Tensor:
        """Return the quantizer's regularization loss on this layer's latent weight."""
        return self.quantizer.regularization(self.weight)


class BinaryLinear(_BinaryWeightLayer):
    """Fully connected layer with binary weights and no bias.

    ``forward(x) = F.linear(x, Q(W) * channel_scale[:, None])`` with ``Q`` the weight
    quantizer (its autograd in training mode, exact sign in eval mode).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        weight_quantizer: str = "ste",
        scale: str | None = None,
    ):
        super().__init__()
        if in_features < 1 or out_features < 1:
            raise ValueError(
                f"features must be positive, not in={in_features!r}, out={out_features!r}"
            )
        self.in_features, self.out_features = int(in_features), int(out_features)
        self.weight = nn.Parameter(torch.empty(self.out_features, self.in_features))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        self._init_quant(weight_quantizer, scale, self.out_features)

    def forward(self, x):
        return self._scaled(F.linear(x, self.quantizer(self.weight)))

    def config(self) -> dict:
        """Return the constructor kwargs that recreate this layer."""
        return {
            "in_features": self.in_features,
            "out_features": self.out_features,
            "weight_quantizer": self.weight_quantizer,
            "scale": self.scale,
        }

    def extra_repr(self) -> str:
        return (
            f"{self.in_features}, {self.out_features}, "
            f"weight_quantizer={self.weight_quantizer!r}, scale={self.scale!r}"
        )


class BinaryConv2d(_BinaryWeightLayer):
    """2-D convolution with binary weights, no bias, and padding with ``pad_value`` (-1).

    The input is padded explicitly with ``F.pad(x, (pw, pw, ph, ph), value=pad_value)`` and
    then convolved with ``padding=0``, so padded positions read bit 0 as in hardware.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size,
        stride=1,
        padding=0,
        weight_quantizer: str = "ste",
        scale: str | None = None,
        pad_value: float = -1.0,
    ):
        super().__init__()
        if in_channels < 1 or out_channels < 1:
            raise ValueError(
                f"channels must be positive, not in={in_channels!r}, out={out_channels!r}"
            )
        self.in_channels, self.out_channels = int(in_channels), int(out_channels)
        self.kernel_size = _pair(kernel_size, "kernel_size")
        self.stride = _pair(stride, "stride")
        self.padding = _pair(padding, "padding")
        if min(self.kernel_size) < 1 or min(self.stride) < 1 or min(self.padding) < 0:
            raise ValueError(
                f"bad convolution geometry: kernel_size={self.kernel_size!r}, "
                f"stride={self.stride!r}, padding={self.padding!r}"
            )
        self.pad_value = float(pad_value)
        self.weight = nn.Parameter(
            torch.empty(self.out_channels, self.in_channels, *self.kernel_size)
        )
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        self._init_quant(weight_quantizer, scale, self.out_channels)

    def forward(self, x):
        ph, pw = self.padding
        if ph or pw:
            x = F.pad(x, (pw, pw, ph, ph), value=self.pad_value)
        return self._scaled(F.conv2d(x, self.quantizer(self.weight), stride=self.stride))

    def config(self) -> dict:
        """Return the constructor kwargs that recreate this layer."""
        return {
            "in_channels": self.in_channels,
            "out_channels": self.out_channels,
            "kernel_size": list(self.kernel_size),
            "stride": list(self.stride),
            "padding": list(self.padding),
            "weight_quantizer": self.weight_quantizer,
            "scale": self.scale,
            "pad_value": self.pad_value,
        }

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, padding={self.padding}, pad_value={self.pad_value}, "
            f"weight_quantizer={self.weight_quantizer!r}, scale={self.scale!r}"
        )


class BinaryActivation(nn.Module):
    """Binarize activations: sign (``sign(0) = +1``) with the quantizer's backward."""

    def __init__(self, quantizer: str = "ste"):
        super().__init__()
        self.quantizer_name = quantizer
        self.quantizer = make_quantizer(quantizer, "activation")

    def forward(self, x):
        if not self.training:
            return sign(x)
        return self.quantizer(x)

    def config(self) -> dict:
        """Return the constructor kwargs that recreate this layer."""
        return {"quantizer": self.quantizer_name}

    def extra_repr(self) -> str:
        return f"quantizer={self.quantizer_name!r}"
