"""A faster forward pass for the engine: a private copy of the model with each eval-mode
BatchNorm folded into the convolution that feeds it.

``y = bn(conv(x))`` with BatchNorm's running statistics is an affine map of the convolution's
output per channel, so it equals one convolution with weight ``w * s`` and bias
``(b - mean) * s + beta``, where ``s = gamma / sqrt(var + eps)`` (computed in float64, rounded
once to the weight's dtype). The folded model computes the same function up to float rounding
and saves a pass over every BatchNorm's activations.

Where the fold is made: ``torch.fx.symbolic_trace`` of a deep copy of the model. A BatchNorm
is folded only where the traced graph shows it applied, as the only use, to the output of a
convolution of the same dimension (exact classes ``nn.Conv{1,2,3}d`` / ``nn.BatchNorm{1,2,3}d``,
so a subclass with its own forward is left alone), both in eval mode and the BatchNorm using
running statistics. The user's model is never modified: it is only read (deep-copied).

Nothing is folded, and the model runs as it is, when: the model is not an ``nn.Module``
(functions, TorchScript), it or any submodule has forward hooks (tracing does not follow hooks
on non-leaf modules), ``torch.nn.utils.parametrize`` is in use, the copy or the trace fails
(data-dependent control flow, ...), or the graph holds no foldable pair. ``count_votes``
also compares the folded copy's logits with the model's own on its probe rows before using it
(``agrees_on``): a trace that silently changed the function (a forward that reads mutable
Python state, for example) falls back to the model as it is.
"""
import copy
import os
import weakref
from typing import Optional

import torch
from torch import nn

#: set DUALRS_FAST_FOLD_BN=0 to run the model exactly as given (no folded copy)
FOLD_ENV = "DUALRS_FAST_FOLD_BN"

_PAIRS = ((nn.Conv1d, nn.BatchNorm1d), (nn.Conv2d, nn.BatchNorm2d), (nn.Conv3d, nn.BatchNorm3d))
_BATCHNORMS = tuple(bn for _, bn in _PAIRS)


def fold_wanted(fold_bn: Optional[bool]) -> bool:
    """The default (None) is on unless DUALRS_FAST_FOLD_BN=0."""
    if fold_bn is None:
        return os.environ.get(FOLD_ENV, "1") != "0"
    return bool(fold_bn)


def _eligible(model) -> bool:
    """A Python nn.Module without forward hooks or parametrizations (tracing would not see
    them run as they do)."""
    if not isinstance(model, nn.Module) or isinstance(model, torch.jit.ScriptModule):
        return False
    from torch.nn.modules import module as m
    if m._global_forward_hooks or m._global_forward_pre_hooks:
        return False
    return not any(mod._forward_hooks or mod._forward_pre_hooks
                   or getattr(mod, "parametrizations", None) is not None
                   for mod in model.modules())


def _foldable(conv, bn) -> bool:
    return (any(type(conv) is c and type(bn) is b for c, b in _PAIRS)
            and not conv.training and not bn.training and bn.track_running_stats
            and bn.running_mean is not None and bn.running_var is not None
            and conv.weight.shape[0] == bn.num_features)


def _folded_conv(conv, bn):
    """A copy of ``conv`` that computes bn(conv(x)); the affine terms in float64."""
    folded = copy.deepcopy(conv)
    dtype = conv.weight.dtype
    scale = torch.rsqrt(bn.running_var.double() + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight.detach().double()
    bias = -bn.running_mean.double() * scale
    if conv.bias is not None:
        bias = bias + conv.bias.detach().double() * scale
    if bn.bias is not None:
        bias = bias + bn.bias.detach().double()
    weight = conv.weight.detach().double() * scale.view((-1,) + (1,) * (conv.weight.dim() - 1))
    folded.weight = nn.Parameter(weight.to(dtype), requires_grad=False)
    folded.bias = nn.Parameter(bias.to(dtype), requires_grad=False)
    return folded


def _set_submodule(root: nn.Module, target: str, module: nn.Module) -> None:
    parent, _, name = target.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, name, module)


#: model -> (its state key, its folded copy or None): one fold per model and state
_FOLDED: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def folded_copy(model) -> Optional[nn.Module]:
    """``fold_batchnorm(model)``, kept while the model's state is unchanged: the copy is
    rebuilt whenever anything ``loading.fingerprint`` covers (every parameter and buffer, plain
    and tensor attributes, training flags, submodules) differs from when it was made."""
    if not _eligible(model) or not any(type(m) in _BATCHNORMS for m in model.modules()):
        return None
    from .loading import fingerprint
    key = fingerprint(model, tensor_attributes=True)
    hit = _FOLDED.get(model)
    if hit is None or hit[0] != key:
        hit = (key, fold_batchnorm(model))
        _FOLDED[model] = hit
    return hit[1]


def fold_batchnorm(model) -> Optional[nn.Module]:
    """A copy of ``model`` with its eval-mode BatchNorms folded into the preceding
    convolutions, or None where nothing is folded (see the module's doc): the caller then
    runs ``model`` as it is. ``model`` is left unchanged."""
    if not _eligible(model):
        return None
    try:
        folded, count = _fold_tree(copy.deepcopy(model))
    except Exception:  # an attribute that cannot be copied, an odd layer: run it as given
        return None
    return folded if count else None


def _fold_tree(module: nn.Module):
    """(module or its traced, folded replacement, BatchNorms folded). A module whose forward
    does not trace (e.g. a shape check on the input) keeps its forward, and its children are
    tried one by one."""
    if not any(True for _ in module.children()):
        return module, 0
    try:
        graph_module = torch.fx.symbolic_trace(module)
    except Exception:  # data-dependent control flow, unsupported Python, ...
        graph_module = None
    if graph_module is not None:
        count = _fold_graph(graph_module)
        return (graph_module, count) if count else (module, 0)
    total = 0
    for name, child in list(module.named_children()):
        new_child, count = _fold_tree(child)
        if count:
            setattr(module, name, new_child)
            total += count
    return module, total


def _fold_graph(graph_module: torch.fx.GraphModule) -> int:
    """Fold, in place, every conv -> BatchNorm pair of the traced graph whose convolution
    output feeds only the BatchNorm. -> pairs folded."""
    modules = dict(graph_module.named_modules())
    graph, folded = graph_module.graph, 0
    for node in list(graph.nodes):
        if node.op != "call_module" or len(node.args) != 1 or node.kwargs:
            continue
        src = node.args[0]
        if not isinstance(src, torch.fx.Node) or src.op != "call_module" or len(src.users) != 1:
            continue
        conv, bn = modules.get(src.target), modules.get(node.target)
        if conv is None or bn is None or not _foldable(conv, bn):
            continue
        # a convolution called again, or whose weights the forward reads, keeps its weights
        if any(n is not src and (n.target == src.target or (n.op == "get_attr" and str(
                n.target).startswith(src.target + "."))) for n in graph.nodes
               if n.op in ("call_module", "get_attr")):
            continue
        _set_submodule(graph_module, src.target, _folded_conv(conv, bn))
        modules[src.target] = graph_module.get_submodule(src.target)
        node.replace_all_uses_with(src)
        graph.erase_node(node)
        folded += 1
    if folded:
        graph.lint()
        graph_module.recompile()
    return folded


def agrees_on(reference: torch.Tensor, logits: torch.Tensor, rtol: float) -> bool:
    """The folded copy's logits match the model's on the same rows: same shape and dtype,
    finite where the model's are, each row within ``rtol`` times its largest |logit|."""
    if (not isinstance(logits, torch.Tensor) or logits.shape != reference.shape
            or logits.dtype != reference.dtype):
        return False
    a, b = reference.double(), logits.double()
    if not torch.equal(torch.isfinite(a), torch.isfinite(b)):
        return False
    a, b = a.nan_to_num(0.0, 0.0, 0.0), b.nan_to_num(0.0, 0.0, 0.0)
    scale = torch.maximum(a.abs().amax(1), b.abs().amax(1))
    return bool(((a - b).abs().amax(1) <= rtol * scale).all())
