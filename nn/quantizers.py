"""Binarizers for training binary neural networks.

Every binarizer has the same forward in eval mode: ``sign(x)`` with ``sign(0) = +1`` (bit 1
means +1, bit 0 means -1; see docs/design.md §2). They differ in the gradient they let
through (the straight-through estimator, STE) and in what they do during training:

``"ste"``
    BinaryConnect / BNN STE: backward ``g * 1{|x| <= 1}``.
``"approx_sign"``
    Bi-Real Net ApproxSign: backward ``g * (2 - 2|x|)`` on ``|x| < 1``, else 0.
``"reste"``
    ReSTE (Wu et al., ICCV 2023): forward sign; backward ``(1/o) |z|^((1-o)/o)`` for
    ``m < |z| <= t``, the constant ``m^(1/o) / m`` for ``|z| <= m``, 0 for ``|z| > t``, with
    ``t = 1.5``, ``m = 0.1`` and ``o`` following ``o(frac) = 1 + (o_end - 1)(1 - cos(pi frac/2))``,
    ``o_end = 3``, where ``frac`` in [0, 1] is the training progress.
``"biper"``
    BiPer (Vargas et al., CVPR 2024): weights ``sign(sin(w0 w))`` with backward
    ``w0 cos(w0 w) g`` (``w0 = 20``). Stage 1 (training progress below ``stage2_at = 0.5``):
    in training mode the weight forward is the continuous ``sin(w0 w)``; stage 2 is binary.
    Eval mode is always binary. Activations use plain sign with the ApproxSign backward.
    Regularizer ``tau * mean(sin^2(w0 w))`` on the weights, ``tau = 1e-4`` by default (we could
    not check the value of the published runs; 1e-4 keeps it a gentle push towards
    ``|sin| = 1``, i.e. away from the sign boundary, next to a cross-entropy of order 1).
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = [
    "QUANTIZERS",
    "ApproxSignFunction",
    "ApproxSignQuantizer",
    "BiPerActivationQuantizer",
    "BiPerWeightFunction",
    "BiPerWeightQuantizer",
    "Quantizer",
    "ReSTEFunction",
    "ReSTEQuantizer",
    "STEFunction",
    "STEQuantizer",
    "make_quantizer",
    "reste_o",
    "sign",
]

QUANTIZERS = ("ste", "approx_sign", "reste", "biper")

_ROLES = ("weight", "activation")


def sign(x: torch.Tensor) -> torch.Tensor:
    """Return +1.0 where ``x >= 0`` and -1.0 elsewhere, in the dtype of ``x``.

    Unlike ``torch.sign``, ``sign(0) = +1``.
    """
    one = torch.ones((), dtype=x.dtype, device=x.device)
    return torch.where(x >= 0, one, -one)


def _check_progress(frac: float) -> float:
    frac = float(frac)
    if not 0.0 <= frac <= 1.0 or math.isnan(frac):
        raise ValueError(f"training progress must lie in [0, 1], not {frac!r}")
    return frac


def reste_o(frac: float, o_end: float = 3.0) -> float:
    """Return ReSTE's power ``o`` at training progress ``frac``.

    ``o(frac) = 1 + (o_end - 1) * (1 - cos(pi * frac / 2))``: 1 at the start, ``o_end`` at the end.
    """
    frac = _check_progress(frac)
    return 1.0 + (o_end - 1.0) * (1.0 - math.cos(math.pi * frac / 2.0))


# --------------------------------------------------------------------------- autograd functions


class STEFunction(torch.autograd.Function):
    """Sign forward; backward ``g * 1{|x| <= 1}``."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return sign(x)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * (x.abs() <= 1).to(g.dtype)


class ApproxSignFunction(torch.autograd.Function):
    """Sign forward; backward ``g * (2 - 2|x|)`` on ``|x| < 1``, else 0 (Bi-Real Net)."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return sign(x)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        a = x.abs()
        return g * torch.where(a < 1, 2.0 - 2.0 * a, torch.zeros_like(a))


class ReSTEFunction(torch.autograd.Function):
    """Sign forward; ReSTE backward with power ``o``, threshold ``t`` and interval ``m``."""

    @staticmethod
    def forward(ctx, x, o: float, t: float, m: float):
        ctx.save_for_backward(x)
        ctx.o, ctx.t, ctx.m = float(o), float(t), float(m)
        return sign(x)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        o, t, m = ctx.o, ctx.t, ctx.m
        a = x.abs()
        # Clamp below at m so the power never sees 0 (that branch is replaced anyway).
        power = (1.0 / o) * a.clamp(min=m).pow((1.0 - o) / o)
        inner = torch.full_like(a, m ** (1.0 / o) / m)
        grad = torch.where(a <= m, inner, torch.where(a <= t, power, torch.zeros_like(a)))
        return g * grad, None, None, None


class BiPerWeightFunction(torch.autograd.Function):
    """Forward ``sign(sin(w0 w))``; backward ``w0 cos(w0 w) g``."""

    @staticmethod
    def forward(ctx, w, omega0: float):
        ctx.save_for_backward(w)
        ctx.omega0 = float(omega0)
        return sign(torch.sin(ctx.omega0 * w))

    @staticmethod
    def backward(ctx, g):
        (w,) = ctx.saved_tensors
        return ctx.omega0 * torch.cos(ctx.omega0 * w) * g, None


# --------------------------------------------------------------------------- modules


class Quantizer(nn.Module):
    """Base class of the binarizer modules.

    Subclasses set ``name`` and implement ``forward``; ``hard`` gives the eval-mode value
    (exactly +-1), ``set_progress`` receives the training progress in [0, 1] and
    ``regularization`` a scalar loss term for a latent weight tensor.
    """

    name = ""

    def __init__(self, role: str = "weight"):
        super().__init__()
        if role not in _ROLES:
            raise ValueError(f"quantizer role must be 'weight' or 'activation', not {role!r}")
        self.role = role
        self.progress = 0.0

    def hard(self, x: torch.Tensor) -> torch.Tensor:
        """Return the eval-mode binarization of ``x``: exactly +1.0 or -1.0."""
        return sign(x)

    def set_progress(self, frac: float) -> None:
        """Record the training progress ``frac`` in [0, 1] (epoch / epochs)."""
        self.progress = _check_progress(frac)

    def regularization(self, w: torch.Tensor) -> torch.Tensor:
        """Return the regularization loss for latent weights ``w`` (zero by default)."""
        return w.new_zeros(())

    def extra_repr(self) -> str:
        return f"role={self.role!r}"


class STEQuantizer(Quantizer):
    """Sign with the straight-through estimator ``g * 1{|x| <= 1}``."""

    name = "ste"

    def forward(self, x):
        return STEFunction.apply(x)


class ApproxSignQuantizer(Quantizer):
    """Sign with Bi-Real Net's ApproxSign backward."""

    name = "approx_sign"

    def forward(self, x):
        return ApproxSignFunction.apply(x)


class ReSTEQuantizer(Quantizer):
    """Sign with the ReSTE backward; ``o`` follows the cosine schedule over training."""

    name = "reste"

    def __init__(self, role: str = "weight", t: float = 1.5, m: float = 0.1, o_end: float = 3.0):
        super().__init__(role)
        if not 0 < m < t:
            raise ValueError(f"ReSTE needs 0 < m < t, not m={m!r}, t={t!r}")
        self.t, self.m, self.o_end = float(t), float(m), float(o_end)
        self.o = reste_o(0.0, self.o_end)

    def set_progress(self, frac: float) -> None:
        super().set_progress(frac)
        self.o = reste_o(self.progress, self.o_end)

    def forward(self, x):
        return ReSTEFunction.apply(x, self.o, self.t, self.m)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, o={self.o:.4g}, t={self.t}, m={self.m}"


class BiPerWeightQuantizer(Quantizer):
    """BiPer weight binarizer ``sign(sin(w0 w))`` with a continuous first training stage."""

    name = "biper"

    def __init__(self, omega0: float = 20.0, tau: float = 1e-4, stage2_at: float = 0.5):
        super().__init__("weight")
        self.omega0, self.tau, self.stage2_at = float(omega0), float(tau), float(stage2_at)
        self.stage = 1 if self.stage2_at > 0 else 2

    def set_progress(self, frac: float) -> None:
        super().set_progress(frac)
        self.stage = 2 if self.progress >= self.stage2_at else 1

    def hard(self, x):
        return sign(torch.sin(self.omega0 * x))

    def forward(self, x):
        if self.training and self.stage == 1:
            return torch.sin(self.omega0 * x)
        return BiPerWeightFunction.apply(x, self.omega0)

    def regularization(self, w):
        return self.tau * torch.sin(self.omega0 * w).pow(2).mean()

    def extra_repr(self) -> str:
        return f"omega0={self.omega0}, tau={self.tau}, stage={self.stage}"


class BiPerActivationQuantizer(ApproxSignQuantizer):
    """BiPer's activation binarizer: plain sign with the ApproxSign backward."""

    name = "biper"

    def __init__(self, role: str = "activation"):
        super().__init__(role)


def make_quantizer(name: str, role: str = "weight") -> Quantizer:
    """Build the binarizer module ``name`` for ``role`` ("weight" or "activation")."""
    if name not in QUANTIZERS:
        raise ValueError(
            f"unknown quantizer {name!r}; choose one of ste, approx_sign, reste, biper"
        )
    if role not in _ROLES:
        raise ValueError(f"quantizer role must be 'weight' or 'activation', not {role!r}")
    if name == "ste":
        return STEQuantizer(role)
    if name == "approx_sign":
        return ApproxSignQuantizer(role)
    if name == "reste":
        return ReSTEQuantizer(role)
    return BiPerWeightQuantizer() if role == "weight" else BiPerActivationQuantizer()
