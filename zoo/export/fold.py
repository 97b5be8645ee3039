"""Fold every BatchNorm into a neighbouring Conv/Linear, and parametrisations into plain weights.

In eval mode a BatchNorm is an affine map per channel, y = x·s + t with
s = γ/√(σ²+ε) and t = β − μ·s (Ioffe & Szegedy 2015, section 3.1), so it can be
multiplied into the layer before it (w' = w·s per output channel, b' = b·s + t) or,
when nothing foldable precedes it, into the layer after it (w' = w·s per input
channel, b' = b + Σ w·t). The tensor functions are pure, as in torch's
`nn/utils/fusion.py`; `fold_model` is the module-level pass that finds the pairs by
tracing the data flow with torch.fx, so that a BatchNorm is folded only into the
layer whose output it actually normalises.

Neither the TorchScript exporter nor onnxruntime folds BatchNorm1d after Linear/Gemm
(measured with torch 2.13 and onnxruntime 1.32), which is why we fold before exporting
instead of relying on them.
"""

from __future__ import annotations

import copy
import logging

import torch
from torch import Tensor, nn
from torch.fx import GraphModule, Node
from torch.fx.passes.shape_prop import ShapeProp
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd, _ConvTransposeNd
from torch.nn.utils import parametrize

from zoo.errors import ExportError

log = logging.getLogger(__name__)

# BatchNorm class -> the conv it can fold with (the spatial rank must agree).
_CONV_FOR_BN: dict[type[_BatchNorm], type[nn.Module]] = {
    nn.BatchNorm1d: nn.Conv1d,
    nn.BatchNorm2d: nn.Conv2d,
    nn.BatchNorm3d: nn.Conv3d,
}


def bn_scale_shift(
    running_mean: Tensor,
    running_var: Tensor,
    eps: float,
    weight: Tensor | None,
    bias: Tensor | None,
) -> tuple[Tensor, Tensor]:
    """BatchNorm in eval mode as y = x·scale + shift per channel (float64, for exactness)."""
    mean, var = running_mean.double(), running_var.double()
    gamma = torch.ones_like(mean) if weight is None else weight.detach().double()
    beta = torch.zeros_like(mean) if bias is None else bias.detach().double()
    scale = gamma * torch.rsqrt(var + eps)
    return scale, beta - mean * scale


def fold_into_previous(
    weight: Tensor, bias: Tensor | None, scale: Tensor, shift: Tensor
) -> tuple[Tensor, Tensor]:
    """Layer then BN: w' = w·s per output channel (dim 0); b' = b·s + t (b = 0 when absent)."""
    w = weight.detach().double()
    b = torch.zeros(w.shape[0], dtype=torch.float64) if bias is None else bias.detach().double()
    w_folded = w * scale.reshape(-1, *([1] * (w.dim() - 1)))
    return w_folded.to(weight.dtype), (b * scale + shift).to(weight.dtype)


def fold_into_next(
    weight: Tensor, bias: Tensor | None, scale: Tensor, shift: Tensor, groups: int = 1
) -> tuple[Tensor, Tensor]:
    """BN then layer: layer(x·s + t) = (w·s per input channel) x + (b + Σ w·t).

    `weight` is [out, in/groups, *kernel] (a Linear is the case of no kernel dims). Exact
    for a conv only when its padding is not zeros, since a zero pad is not shifted by t.
    """
    w = weight.detach().double()
    out_channels, in_per_group = w.shape[0], w.shape[1]
    # [groups, out/groups, in/groups, kernel]: input channel of w[g, :, j] is g·in/groups + j
    grouped = w.reshape(groups, out_channels // groups, in_per_group, -1)
    s = scale.reshape(groups, 1, in_per_group, 1)
    t = shift.reshape(groups, 1, in_per_group, 1)
    w_folded = (grouped * s).reshape(w.shape)
    b = torch.zeros(out_channels, dtype=torch.float64) if bias is None else bias.detach().double()
    b_folded = b + (grouped * t).sum(dim=(2, 3)).reshape(out_channels)
    return w_folded.to(weight.dtype), b_folded.to(weight.dtype)


def remove_parametrizations(model: nn.Module) -> int:
    """Bake weight_norm/spectral_norm (any parametrisation) into plain weights, in place.

    Call on a model in eval mode: spectral_norm then uses its stored singular vectors
    without a power iteration, which is what eval inference computes. We undo the
    parametrisation by hand because `parametrize.remove_parametrizations` edits the
    dynamically made `Parametrized*` class, which a deepcopy shares with the original.
    """
    removed = 0
    for module in list(model.modules()):
        if parametrize.is_parametrized(module):
            with torch.no_grad():
                values = {name: getattr(module, name) for name in module.parametrizations}
            module.__class__ = module.__class__.__bases__[0]  # the class before parametrising
            del module.parametrizations
            for name, value in values.items():
                module.register_parameter(name, nn.Parameter(value, requires_grad=False))
            removed += len(values)
    return removed


def fold_model(model: nn.Module, example_input: Tensor) -> nn.Module:
    """A copy of `model` in eval mode without BatchNorm or parametrisations (original untouched).

    Raises ExportError naming the module when a BatchNorm cannot be folded exactly.
    """
    model = copy.deepcopy(model).eval()
    removed = remove_parametrizations(model)
    if removed:
        log.info("baked %d parametrisation(s) into plain weights", removed)
    if not any(isinstance(m, _BatchNorm) for m in model.modules()):
        return model  # nothing to fold: keep the module as written (no tracing needed)
    graph_module = _trace(model, example_input)
    for node in list(graph_module.graph.nodes):
        if _calls(graph_module, node, _BatchNorm):
            _fold_node(graph_module, node)
    _drop_unused_batchnorms(graph_module)
    graph_module.graph.lint()
    graph_module.recompile()
    return graph_module


class _BatchNormLeafTracer(torch.fx.Tracer):
    """torch.fx's tracer, keeping every BatchNorm one call_module node.

    fx treats only torch.nn's own modules as leaves; it would trace into a BatchNorm
    subclass defined elsewhere (Batch Renorm, which is a BatchNorm at inference) and leave
    nothing to fold.
    """

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return isinstance(m, _BatchNorm) or super().is_leaf_module(m, module_qualified_name)


def _trace(model: nn.Module, example_input: Tensor) -> GraphModule:
    try:
        graph = _BatchNormLeafTracer().trace(model)
        graph_module = GraphModule(model, graph, type(model).__name__)
    except Exception as error:  # fx raises many kinds (TraceError, TypeError, ...) on dynamic code
        first = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ExportError(
            f"cannot fold BatchNorm in {type(model).__name__}: torch.fx cannot trace it ({first})"
        ) from None
    # Record every node's output shape: folding a BN1d into a Linear is exact only on [N, C].
    with torch.no_grad():
        ShapeProp(graph_module).propagate(example_input)
    return graph_module


def _fold_node(graph_module: GraphModule, bn_node: Node) -> None:
    bn = graph_module.get_submodule(bn_node.target)
    if bn.running_mean is None or bn.running_var is None:
        raise ExportError(
            f"cannot fold BatchNorm {bn_node.target!r}: it has no running statistics "
            "(track_running_stats=False uses batch statistics at inference)"
        )
    scale, shift = bn_scale_shift(bn.running_mean, bn.running_var, bn.eps, bn.weight, bn.bias)
    previous, following = _previous_layer(graph_module, bn_node), _next_layer(graph_module, bn_node)
    if previous is not None:
        layer = graph_module.get_submodule(previous.target)
        _set_weights(layer, *fold_into_previous(layer.weight, layer.bias, scale, shift))
        log.debug("folded %s into the preceding %s", bn_node.target, previous.target)
    elif following is not None:
        layer = graph_module.get_submodule(following.target)
        groups = getattr(layer, "groups", 1)
        _set_weights(layer, *fold_into_next(layer.weight, layer.bias, scale, shift, groups))
        log.debug("folded %s into the following %s", bn_node.target, following.target)
    else:
        raise ExportError(
            f"cannot fold BatchNorm {bn_node.target!r} ({type(bn).__name__}): no Conv/Linear "
            "feeds only it, and none after it takes only its output with an exact fold"
        )
    bn_node.replace_all_uses_with(bn_node.args[0])
    graph_module.graph.erase_node(bn_node)


def _previous_layer(graph_module: GraphModule, bn_node: Node) -> Node | None:
    """The Conv/Linear node whose output only this BN consumes, if folding into it is exact."""
    source = bn_node.args[0]
    if not _is_private_layer_call(graph_module, source) or len(source.users) != 1:
        return None
    return source if _layer_matches(graph_module, bn_node, source, _shape_of(source)) else None


def _next_layer(graph_module: GraphModule, bn_node: Node) -> Node | None:
    """The Conv/Linear node that alone consumes this BN's output, if folding into it is exact."""
    if len(bn_node.users) != 1:
        return None
    (user,) = bn_node.users
    if not _is_private_layer_call(graph_module, user) or user.args[:1] != (bn_node,):
        return None
    layer = graph_module.get_submodule(user.target)
    # A zero pad stays zero while the BN would have shifted it by t: not exact.
    if (
        isinstance(layer, _ConvNd)
        and layer.padding_mode == "zeros"
        and any(p != 0 for p in _padding(layer))
    ):
        return None
    return user if _layer_matches(graph_module, bn_node, user, _shape_of(bn_node.args[0])) else None


def _layer_matches(
    graph_module: GraphModule,
    bn_node: Node,
    layer_node: Node,
    bn_input_shape: torch.Size | None,
) -> bool:
    """A BN{k}d pairs with a Conv{k}d; a BN1d pairs with a Linear only over [N, C]."""
    bn = graph_module.get_submodule(bn_node.target)
    layer = graph_module.get_submodule(layer_node.target)
    if isinstance(layer, nn.Linear):
        over_channels = bn_input_shape is not None and len(bn_input_shape) == 2
        return isinstance(bn, nn.BatchNorm1d) and over_channels
    conv = next((c for kind, c in _CONV_FOR_BN.items() if isinstance(bn, kind)), None)
    return type(layer) is conv  # a subclass of BatchNorm2d (Batch Renorm) pairs as BatchNorm2d


def _is_private_layer_call(graph_module: GraphModule, node: object) -> bool:
    """A call of a Conv/Linear that is called nowhere else (a shared one cannot change)."""
    if not isinstance(node, Node) or not _calls(graph_module, node, (nn.Linear, _ConvNd)):
        return False
    if _calls(graph_module, node, _ConvTransposeNd):
        return False  # its weight is [in, out/groups, ...]; the folds assume [out, in/groups, ...]
    calls = [
        n for n in graph_module.graph.nodes if n.op == "call_module" and n.target == node.target
    ]
    return len(calls) == 1


def _calls(graph_module: GraphModule, node: Node, kind: type | tuple[type, ...]) -> bool:
    """Whether `node` calls a submodule of the given kind."""
    return node.op == "call_module" and isinstance(graph_module.get_submodule(node.target), kind)


def _padding(layer: nn.Module) -> tuple[int, ...]:
    if isinstance(layer.padding, str):
        # "same" pads whenever the kernel is larger than 1; "valid" never pads
        return (0,) if layer.padding == "valid" else tuple(k - 1 for k in layer.kernel_size)
    return tuple(layer.padding)


def _shape_of(node: Node) -> torch.Size | None:
    meta = node.meta.get("tensor_meta")
    return getattr(meta, "shape", None)


def _set_weights(layer: nn.Module, weight: Tensor, bias: Tensor) -> None:
    layer.weight = nn.Parameter(weight, requires_grad=False)
    layer.bias = nn.Parameter(bias, requires_grad=False)


def _drop_unused_batchnorms(graph_module: GraphModule) -> None:
    """Delete the folded BN modules; any BN still called is a bug we refuse to export."""
    called = {n.target for n in graph_module.graph.nodes if n.op == "call_module"}
    for name, module in list(graph_module.named_modules()):
        if isinstance(module, _BatchNorm):
            if name in called:
                raise ExportError(f"BatchNorm {name!r} is still in the graph after folding")
            graph_module.delete_submodule(name)
