"""A differentiable MST-distance regularizer: train BNNs whose output channels compress well.

MST compression (Vo et al., ICCV 2023; ``bnnforge.compiler.mst``) computes each output channel
of a binary layer from a parent channel at the cost of their Hamming distance, so a layer costs
about the weight of the minimum spanning tree over its weight rows. This module lowers that
weight during training.

For every binary layer the current tree is computed without gradient on the binarized weights
(complement edges included: a child may copy the inverse of its parent at distance ``K - d``),
and the loss is a *soft* Hamming distance along the tree edges::

    loss_layer = sum over edges (p, c), positions i of relu(-s_pc * u_p,i * u_c,i)
                 / (channels * K)

with ``u = tanh(beta * z / mean|z|)`` a soft binarization of the pre-sign weight ``z`` (the
latent weight, or ``sin(omega0 w)`` for BiPer) and ``s_pc = -1`` on a complement edge, else +1.
Only the positions where the two binary rows differ contribute (``|u_p u_c|`` each), so rows
that are equal as bits cost exactly zero; the gradient pushes each differing pair towards
agreement, the less confident weight (smaller ``|z|``) the harder. At ``beta -> inf`` the layer
term is the tree weight over ``channels * K``, about the reciprocal of the layer's XNOR
reduction; the normalisation keeps the coefficient scale-free across layers. Trees are
recomputed every ``every`` calls and cached per layer in between.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable

import numpy as np
import torch
from torch import nn

from .layers import _BinaryWeightLayer

__all__ = ["MSTLoss", "mst_loss", "tree_edges", "layer_mst_weight"]


def _distances(bits: torch.Tensor) -> torch.Tensor:
    """Hamming distances between the rows of a +-1 matrix (C, K), as int64."""
    k = bits.shape[1]
    b = bits.to(torch.float32 if k < 1 << 24 else torch.float64)   # exact integer products
    return torch.round((k - b @ b.T) / 2).to(torch.int64)


def tree_edges(bits: torch.Tensor, complement: bool = True, graph: str = "tree"
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Return the edges (parent, child, sign) of the channel graph of a +-1 matrix ``(C, K)``.

    ``graph="tree"``: a minimum spanning tree over the channels (dense Prim's algorithm, with a
    virtual root at cost K so that no edge costs more than computing a channel in full).
    ``graph="nearest"``: every channel's nearest other channel (a nearest-neighbour graph, the
    simpler surrogate). Costs are ``min(d, K - d)`` with ``complement`` (``sign = -1`` where
    ``K - d < d``), else ``d``. Ties go to the smaller channel index.
    """
    if graph not in ("tree", "nearest"):
        raise ValueError(f"graph must be 'tree' or 'nearest', not {graph!r}")
    with torch.no_grad():
        bits = bits.reshape(bits.shape[0], -1)
        c, k = bits.shape
        d = _distances(bits)
        if complement:
            flip = (k - d) < d
            cost = torch.where(flip, k - d, d)
        else:
            flip = torch.zeros_like(d, dtype=torch.bool)
            cost = d
        if graph == "nearest":
            big = torch.iinfo(torch.int64).max
            masked = cost.clone()
            masked.fill_diagonal_(big)
            parent = torch.argmin(masked, dim=1)
            child = torch.arange(c)
            keep = masked[child, parent] < k
            parent, child = parent[keep], child[keep]
        else:
            parent, child = _prim(cost, k)
        sign = torch.where(flip[parent, child], -1.0, 1.0)
        device = bits.device
        parent, child, sign = parent.to(device), child.to(device), sign.to(device)
    return parent, child, sign


def _prim(cost: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Dense Prim's algorithm (numpy) from channel 0 with a virtual root at cost ``k``."""
    cost = cost.cpu().numpy()
    c = cost.shape[0]
    big = np.iinfo(np.int64).max
    key = np.full(c, k, dtype=np.int64)
    par = np.full(c, -1, dtype=np.int64)
    done = np.zeros(c, dtype=bool)
    u = 0
    for _ in range(c):
        done[u] = True
        row = cost[u]
        better = ~done & (row < key)
        key[better] = row[better]
        par[better] = u
        u = int(np.argmin(np.where(done, big, key)))
        if done[u]:
            break
    child = np.flatnonzero(par >= 0)
    return torch.from_numpy(par[child]), torch.from_numpy(child)


def _presign(layer: _BinaryWeightLayer) -> torch.Tensor:
    """The real value whose sign is the layer's binary weight, shape (C, K)."""
    w = layer.weight.reshape(layer.weight.shape[0], -1)
    omega = getattr(layer.quantizer, "omega0", None)
    if omega is not None:
        return torch.sin(omega * w)
    return w


def layer_mst_weight(layer: _BinaryWeightLayer, complement: bool = True) -> int:
    """Return the MST weight of a layer's binarized weights (tree edges only, roots excluded)."""
    bits = layer.binary_weight().reshape(layer.weight.shape[0], -1)
    k = bits.shape[1]
    parent, child, sign = tree_edges(bits, complement)
    d = _distances(bits)[parent, child]
    return int(torch.where(sign < 0, k - d, d).sum())


class MSTLoss:
    """The MST-distance regularizer over a model's binary layers, with a per-layer tree cache.

    Parameters
    ----------
    beta
        Sharpness of the soft binarization ``tanh(beta * z / mean|z|)`` (dimensionless).
    every
        Recompute a layer's tree every ``every`` calls (1: every call).
    complement
        Allow complement edges, as the compiler does.
    graph
        ``"tree"`` (the MST) or ``"nearest"`` (nearest-neighbour edges, for comparison).
    layers
        The layers to regularize; default every ``BinaryLinear``/``BinaryConv2d`` of the model.

    Calling it with a model returns the sum over layers of the normalised soft tree distance
    (a scalar tensor with gradient to the latent weights).
    """

    def __init__(self, beta: float = 2.0, every: int = 1, complement: bool = True,
                 graph: str = "tree", layers: Iterable[nn.Module] | None = None):
        if not beta > 0:
            raise ValueError(f"beta must be positive, not {beta!r}")
        if int(every) != every or every < 1:
            raise ValueError(f"every must be a positive integer, not {every!r}")
        if graph not in ("tree", "nearest"):
            raise ValueError(f"graph must be 'tree' or 'nearest', not {graph!r}")
        self.beta = float(beta)
        self.every = int(every)
        self.complement = bool(complement)
        self.graph = graph
        self.layers = None if layers is None else list(layers)
        self._cache: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def _edges(self, layer: _BinaryWeightLayer):
        entry = self._cache.get(layer)
        if entry is None or entry[0] >= self.every:
            edges = tree_edges(layer.binary_weight(), self.complement, self.graph)
            entry = [0, edges]
            self._cache[layer] = entry
        entry[0] += 1
        return entry[1]

    def layer_loss(self, layer: _BinaryWeightLayer) -> torch.Tensor:
        """Return one layer's normalised soft tree distance."""
        z = _presign(layer)
        c, k = z.shape
        parent, child, sign = self._edges(layer)
        scale = z.detach().abs().mean().clamp(min=1e-12)
        u = torch.tanh(self.beta * z / scale)
        sign = sign.to(dtype=z.dtype, device=z.device)
        disagree = torch.relu(-sign[:, None] * u[parent] * u[child])     # (E, K)
        return disagree.sum() / (c * k)

    def __call__(self, model: nn.Module) -> torch.Tensor:
        layers = self.layers
        if layers is None:
            layers = [m for m in model.modules() if isinstance(m, _BinaryWeightLayer)]
        if not layers:
            raise ValueError("the model has no BinaryLinear or BinaryConv2d layer to regularize")
        return sum((self.layer_loss(m) for m in layers[1:]), self.layer_loss(layers[0]))


_DEFAULT: dict = {}


def mst_loss(model: nn.Module, *, beta: float = 2.0, every: int = 1,
             complement: bool = True) -> torch.Tensor:
    """Return the MST-distance regularizer of ``model`` (see :class:`MSTLoss`).

    Sums over every ``BinaryLinear``/``BinaryConv2d``; each layer's term is its soft tree
    distance over ``channels * K``. Trees are cached between calls with the same settings
    (recomputed every ``every`` calls); use an :class:`MSTLoss` for a private cache.
    """
    key = (float(beta), int(every), bool(complement))
    if key not in _DEFAULT:
        _DEFAULT[key] = MSTLoss(beta=beta, every=every, complement=complement)
    return _DEFAULT[key](model)
