"""Trace a torch model into the chain of layers that bnnforge understands.

Any module built from :mod:`bnnforge.nn` layers and torch's BatchNorm, MaxPool2d and Flatten
that ``torch.fx`` can trace is accepted, not only ``nn.Sequential``: user containers are traced
through, bnnforge's layers and torch's standard layers are kept whole. The result is a list of
:class:`Step` in data order, each with its torch module and its input and output shapes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.fx
from torch import nn

from .layers import BinaryActivation, BinaryConv2d, BinaryLinear, InputQuant

__all__ = ["Step", "UnsupportedModelError", "trace_chain", "SUPPORTED_LAYERS"]

SUPPORTED_LAYERS = ("InputQuant, BinaryLinear, BinaryConv2d, BinaryActivation, BatchNorm1d, "
                    "BatchNorm2d, MaxPool2d, Flatten, Dropout, Identity")

_BNN_LEAVES = (InputQuant, BinaryLinear, BinaryConv2d, BinaryActivation)


class UnsupportedModelError(ValueError):
    """The model uses a layer or a structure that bnnforge cannot compile."""


@dataclass
class Step:
    """One layer of the chain: ``kind`` is one of ``input``, ``linear``, ``conv``, ``batchnorm``,
    ``activation``, ``maxpool``, ``flatten``; shapes exclude the batch dimension."""

    name: str
    kind: str
    module: nn.Module | None
    in_shape: tuple
    out_shape: tuple


class _ShapeError(Exception):
    def __init__(self, node: torch.fx.Node, exc: Exception):
        super().__init__(str(exc))
        self.node, self.exc = node, exc


class _Shapes(torch.fx.Interpreter):
    """Run the traced graph once, recording every tensor's shape in ``node.meta["shape"]``."""

    def run_node(self, n: torch.fx.Node):
        try:
            result = super().run_node(n)
        except Exception as exc:  # noqa: BLE001 - any failure here is a shape mismatch
            raise _ShapeError(n, exc) from None
        if isinstance(result, torch.Tensor):
            n.meta["shape"] = tuple(result.shape)
        return result


class _Tracer(torch.fx.Tracer):
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if isinstance(m, _BNN_LEAVES):
            return True
        return super().is_leaf_module(m, qualname)


def _describe(module: nn.Module) -> str:
    return type(module).__name__


def _classify_module(name: str, module: nn.Module) -> str:
    if isinstance(module, InputQuant):
        return "input"
    if isinstance(module, BinaryLinear):
        return "linear"
    if isinstance(module, BinaryConv2d):
        return "conv"
    if isinstance(module, BinaryActivation):
        return "activation"
    if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
        if not module.track_running_stats or module.running_mean is None:
            raise UnsupportedModelError(
                f"{_describe(module)} {name!r} has no running statistics; create it with "
                "track_running_stats=True so it can be folded into thresholds")
        return "batchnorm"
    if isinstance(module, nn.MaxPool2d):
        return "maxpool"
    if isinstance(module, nn.Flatten):
        return "flatten"
    if isinstance(module, (nn.Dropout, nn.Identity)):
        return "identity"
    if isinstance(module, nn.Linear):
        raise UnsupportedModelError(
            f"layer {name!r} is a float torch.nn.Linear; bnnforge compiles binary layers only: "
            "use bnnforge.nn.BinaryLinear")
    if isinstance(module, nn.Conv2d):
        raise UnsupportedModelError(
            f"layer {name!r} is a float torch.nn.Conv2d; bnnforge compiles binary layers only: "
            "use bnnforge.nn.BinaryConv2d")
    raise UnsupportedModelError(
        f"unsupported layer {name!r} ({_describe(module)}); supported: {SUPPORTED_LAYERS}")


def _classify_call(node: torch.fx.Node, in_shape: tuple, out_shape: tuple) -> str:
    target = node.target
    is_flatten = (len(out_shape) == 1 and out_shape[0] == math.prod(in_shape))
    if node.op == "call_function" and target in (torch.flatten,) and is_flatten:
        return "flatten"
    if node.op == "call_method" and target in ("view", "reshape", "flatten") and is_flatten:
        return "flatten"
    if node.op == "call_method" and target in ("contiguous", "clone", "detach"):
        return "identity"
    what = getattr(target, "__name__", str(target))
    raise UnsupportedModelError(
        f"unsupported operation {node.name!r} ({what}) in the model's forward; bnnforge "
        f"compiles chains of layers ({SUPPORTED_LAYERS}) and flattening reshapes")


def trace_chain(model: nn.Module, input_shape: tuple) -> list[Step]:
    """Trace ``model`` for one frame of ``input_shape`` (no batch dimension) into steps.

    Raises
    ------
    UnsupportedModelError
        For a layer or operation outside the supported set, a model that branches, or a model
        that torch.fx cannot trace, with the layer's name and what to use instead.
    ValueError
        When ``input_shape`` does not fit the model.
    """
    if not isinstance(model, nn.Module):
        raise UnsupportedModelError(f"expected a torch.nn.Module, got {type(model).__name__}")
    input_shape = tuple(int(d) for d in input_shape)
    if not input_shape or any(d <= 0 for d in input_shape):
        raise ValueError(f"input shape {input_shape} is not a valid frame shape; give it "
                         "without the batch dimension, e.g. (1, 28, 28)")
    try:
        graph = _Tracer().trace(model)
    except Exception as exc:  # noqa: BLE001 - fx raises many kinds; all mean "cannot trace"
        raise UnsupportedModelError(
            f"torch.fx cannot trace the model ({type(exc).__name__}: {exc}); bnnforge needs a "
            "forward without data-dependent control flow") from None
    gm = torch.fx.GraphModule(model, graph)
    was_training = model.training
    gm.eval()
    try:
        with torch.no_grad():
            _Shapes(gm).run(torch.full((1, *input_shape), 0.5))
    except _ShapeError as err:
        text = str(err.exc).strip()
        first = text.splitlines()[0] if text else type(err.exc).__name__
        where = err.node.target if err.node.op == "call_module" else err.node.name
        raise ValueError(f"input shape {input_shape} does not fit the model: layer {where!r} "
                         f"fails with: {first}") from None
    finally:
        model.train(was_training)

    modules = dict(model.named_modules())
    steps: list[Step] = []
    data_nodes: set = set()
    previous = None
    for node in gm.graph.nodes:
        if node.op == "placeholder":
            data_nodes.add(node)
            previous = node
            continue
        if node.op == "output":
            result = node.args[0]
            if result is not previous:
                raise UnsupportedModelError(
                    "the model's output is not the result of its last layer; bnnforge compiles "
                    "chains of layers whose last layer gives the class scores")
            break
        if "shape" not in node.meta:  # sizes and other non-tensor helpers
            continue
        inputs = [a for a in node.all_input_nodes if a in data_nodes]
        if not inputs:
            continue
        if len(inputs) != 1 or (node.args and node.args[0] is not previous) \
                or inputs[0] is not previous:
            raise UnsupportedModelError(
                f"the model branches at {node.name!r} (residual or concatenation); bnnforge "
                "compiles chains of layers")
        in_shape = previous.meta["shape"][1:] if previous.op != "placeholder" else input_shape
        out_shape = node.meta["shape"][1:]
        if node.op == "call_module":
            module = modules[node.target]
            kind = _classify_module(node.target, module)
            name = node.target
        elif node.op in ("call_function", "call_method"):
            module = None
            kind = _classify_call(node, in_shape, out_shape)
            name = node.name
        else:
            raise UnsupportedModelError(
                f"unsupported operation {node.name!r} ({node.op}) in the model's forward")
        data_nodes.add(node)
        previous = node
        if kind != "identity":
            steps.append(Step(name, kind, module, in_shape, out_shape))
    if not steps:
        raise UnsupportedModelError("the model has no layers")
    return steps
