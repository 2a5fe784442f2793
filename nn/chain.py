"""Trace a torch model into the layers that bnnforge understands.

Any module built from :mod:`bnnforge.nn` layers and torch's BatchNorm, MaxPool2d and Flatten
that ``torch.fx`` can trace is accepted, not only ``nn.Sequential``: user containers are traced
through, bnnforge's layers and torch's standard layers are kept whole. The result is a list of
:class:`Step` in data order, each with its torch module and its input and output shapes.

:func:`trace_chain` accepts chains only; :func:`trace_graph` also accepts graphs that branch:
tensor sums (``+``, ``torch.add``, ``operator.add``, ``Tensor.add``) and channel
concatenations (``torch.cat(..., dim=1)``), each :class:`Step` naming its inputs.
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass, field

import torch
import torch.fx
from torch import nn

from .layers import BinaryActivation, BinaryConv2d, BinaryLinear, InputQuant

__all__ = ["Step", "UnsupportedModelError", "trace_chain", "trace_graph", "SUPPORTED_LAYERS"]

SUPPORTED_LAYERS = ("InputQuant, BinaryLinear, BinaryConv2d, BinaryActivation, BatchNorm1d, "
                    "BatchNorm2d, MaxPool2d, Flatten, Dropout, Identity")

_BNN_LEAVES = (InputQuant, BinaryLinear, BinaryConv2d, BinaryActivation)


class UnsupportedModelError(ValueError):
    """The model uses a layer or a structure that bnnforge cannot compile."""


@dataclass
class Step:
    """One layer of the chain: ``kind`` is one of ``input``, ``linear``, ``conv``, ``batchnorm``,
    ``activation``, ``maxpool``, ``flatten`` (and from :func:`trace_graph` ``add``, ``concat``);
    shapes exclude the batch dimension.

    ``name`` is the module's qualified name (the fx node's name for a function); a module
    called at several places gives several steps of one name. :func:`trace_graph` also sets
    ``node`` (the fx node's unique name) and ``inputs`` (the ``node`` of each input tensor in
    argument order; the model's input is the placeholder's name).
    """

    name: str
    kind: str
    module: nn.Module | None
    in_shape: tuple
    out_shape: tuple
    node: str = ""
    inputs: tuple = field(default=())


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


def _layer(node: torch.fx.Node, modules: dict, in_shape: tuple,
           out_shape: tuple) -> tuple[str, str, nn.Module | None]:
    """Return the ``(name, kind, module)`` of a one-tensor layer node (``module`` is None for a
    function or method call); refuse any other operation."""
    if node.op == "call_module":
        module = modules[node.target]
        return node.target, _classify_module(node.target, module), module
    if node.op in ("call_function", "call_method"):
        return node.name, _classify_call(node, in_shape, out_shape), None
    raise UnsupportedModelError(
        f"unsupported operation {node.name!r} ({node.op}) in the model's forward")


def _trace(model: nn.Module, input_shape: tuple) -> tuple[torch.fx.GraphModule, tuple]:
    """Trace ``model`` with fx and record every tensor's shape for one frame."""
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
    return gm, input_shape


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
    gm, input_shape = _trace(model, input_shape)
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
        name, kind, module = _layer(node, modules, in_shape, out_shape)
        data_nodes.add(node)
        previous = node
        if kind != "identity":
            steps.append(Step(name, kind, module, in_shape, out_shape))
    if not steps:
        raise UnsupportedModelError("the model has no layers")
    return steps


_ADDS = (operator.add, operator.iadd, torch.add)
_CATS = (torch.cat, torch.concat, torch.concatenate)


def _where(node: torch.fx.Node) -> str:
    return f"{node.name!r} ({getattr(node.target, '__name__', node.target)})"


def _operands(node: torch.fx.Node, data: set) -> tuple[str, list]:
    """Return the kind of a branching call (``add``, ``concat``, or "" for others) and its
    tensor operands in argument order."""
    target = node.target
    if (node.op == "call_function" and target in _ADDS) or \
            (node.op == "call_method" and target in ("add", "__add__", "add_")):
        alpha = node.kwargs.get("alpha", 1)
        if alpha != 1 or len(node.args) != 2 or set(node.kwargs) - {"alpha"}:
            what = f"scales a term (alpha={alpha!r})" if alpha != 1 else \
                "takes other arguments than two tensors"
            raise UnsupportedModelError(
                f"the sum {_where(node)} {what}; bnnforge folds plain sums of two tensors "
                "(x + y)")
        if not all(isinstance(a, torch.fx.Node) and a in data for a in node.args):
            raise UnsupportedModelError(
                f"the sum {_where(node)} adds a constant to a tensor; fold constants into a "
                "BatchNorm (its bias) instead")
        return "add", list(node.args)
    if node.op == "call_function" and target in _CATS:
        tensors = node.args[0] if node.args else node.kwargs.get("tensors")
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
        rank = len(node.meta["shape"])
        if not isinstance(tensors, (list, tuple)) or not all(
                isinstance(a, torch.fx.Node) and a in data for a in tensors):
            raise UnsupportedModelError(
                f"the concatenation {_where(node)} joins something other than tensors of the "
                "model; concatenate layer outputs only")
        if not isinstance(dim, int) or dim % rank != 1:
            raise UnsupportedModelError(
                f"the concatenation {_where(node)} joins along dim={dim!r}; bnnforge "
                "concatenates channels only (torch.cat([a, b], dim=1))")
        return "concat", list(tensors)
    return "", []


def trace_graph(model: nn.Module, input_shape: tuple) -> list[Step]:
    """Trace ``model`` for one frame of ``input_shape`` into steps that may branch.

    Like :func:`trace_chain`, but a tensor may feed several layers, and two tensors may be
    summed (``+``, ``torch.add``, ``operator.add``: a step of kind ``add``) or concatenated
    along channels (``torch.cat([...], dim=1)``: kind ``concat``). Steps come in a topological
    (fx) order; each names its inputs (``Step.inputs``). Identity layers (Dropout, Identity,
    ``contiguous``) and layers whose result is never used are left out. Whether the values that
    meet at a sum can be folded is for the lowering to decide.

    Raises
    ------
    UnsupportedModelError
        For a layer or operation outside the supported set, or a model that torch.fx cannot
        trace, with the layer's name and what to use instead.
    ValueError
        When ``input_shape`` does not fit the model.
    """
    gm, input_shape = _trace(model, input_shape)
    modules = dict(model.named_modules())
    steps: list[Step] = []
    data: set = set()
    alias: dict = {}                 # fx node -> the step node whose value it carries
    shapes: dict = {}                # step node -> tensor shape (no batch)
    output = None
    for node in gm.graph.nodes:
        if node.op == "placeholder":
            if data:
                raise UnsupportedModelError(
                    f"the model takes several inputs ({node.name!r} is the second); bnnforge "
                    "compiles models of one input frame")
            data.add(node)
            alias[node] = node.name
            shapes[node.name] = input_shape
            continue
        if node.op == "output":
            result = node.args[0]
            if not isinstance(result, torch.fx.Node) or result not in data:
                raise UnsupportedModelError(
                    "the model's output is not the result of its last layer; bnnforge compiles "
                    "models whose last layer gives the class scores")
            output = alias[result]
            break
        if "shape" not in node.meta:  # sizes and other non-tensor helpers
            continue
        if not [a for a in node.all_input_nodes if a in data]:
            continue
        out_shape = node.meta["shape"][1:]
        kind, operands = _operands(node, data)
        if kind:
            name, module = node.name, None
        else:
            operands = [a for a in node.all_input_nodes if a in data]
            if len(operands) != 1 or not node.args or node.args[0] is not operands[0]:
                raise UnsupportedModelError(
                    f"operation {_where(node)} combines several tensors; bnnforge combines "
                    "tensors only by sums (x + y) and channel concatenation (torch.cat)")
            name, kind, module = _layer(node, modules, shapes[alias[operands[0]]], out_shape)
        data.add(node)
        if kind == "identity":
            alias[node] = alias[operands[0]]
            continue
        alias[node] = node.name
        shapes[node.name] = out_shape
        inputs = tuple(alias[a] for a in operands)
        steps.append(Step(name, kind, module, shapes[inputs[0]], out_shape, node=node.name,
                          inputs=inputs))
    live = {output}
    for step in reversed(steps):         # drop layers whose result is never used
        if step.node in live:
            live.update(step.inputs)
    steps = [s for s in steps if s.node in live]
    if not steps:
        raise UnsupportedModelError("the model has no layers")
    return steps
