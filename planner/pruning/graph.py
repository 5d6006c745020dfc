"""Read a torch model as a graph: its prunable weights, the ReLU chain the bound covers, and
why every other layer is outside it.

The model is traced with ``torch.fx`` (torch's own modules stay leaves) and its shapes
propagated with an example input; the graph is held in ``networkx``. Prunable weights: every
``nn.Linear`` and ``nn.Conv2d``, and the projections of every ``nn.MultiheadAttention``
(``in_proj_weight``, 3E x E, and ``out_proj``). The chain is found backwards from the model's
output: the output layer is the ``nn.Linear`` that produces it (through shape-only operations),
and each hidden layer of the chain is an ``nn.Linear`` whose output goes only to a ReLU whose
output goes only to the next layer of the chain. Only ReLU (``nn.ReLU``, ``F.relu``,
``torch.relu``, ``Tensor.relu``) enters the bound; a layer followed by GELU, ReLU6, a residual
addition or a branch is outside it, and the reason is recorded.
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass

from planner.allocation.request import WeightLayer
from planner.errors import ModelError

#: shape-only or per-unit operations that a chain may pass through
_PASS_METHODS = {"flatten", "view", "reshape", "contiguous", "squeeze", "unsqueeze"}


@dataclass(frozen=True)
class GraphLayers:
    layers: tuple[WeightLayer, ...]
    input_size: int | None  # the chain's input size (None without a chain)
    notes: tuple[str, ...] = ()


def _is_relu(node, modules) -> bool:
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    if node.op == "call_module":
        return type(modules[node.target]) is nn.ReLU
    if node.op == "call_function":
        return node.target in (torch.relu, F.relu, torch.relu_, F.relu_)
    if node.op == "call_method":
        return node.target in ("relu", "relu_")
    return False


def _is_pass(node, modules) -> bool:
    import torch
    import torch.nn as nn

    if node.op == "call_module":
        m = modules[node.target]
        return isinstance(m, (nn.Dropout, nn.Identity, nn.Flatten, nn.BatchNorm1d, nn.BatchNorm2d))
    if node.op == "call_method":
        return node.target in _PASS_METHODS
    if node.op == "call_function":
        return node.target in (torch.flatten, torch.reshape, torch.squeeze, torch.unsqueeze)
    return False


def _describe(node, modules) -> str:
    if node.op == "call_module":
        return type(modules[node.target]).__name__
    if node.op == "call_function":
        if node.target in (operator.add, operator.iadd):
            return "a residual addition"
        return getattr(node.target, "__name__", str(node.target))
    if node.op == "call_method":
        return f".{node.target}()"
    return node.op


def read_graph(model, example, *, prune_output: bool = False) -> GraphLayers:
    """The prunable layers of ``model`` traced on ``example`` (a batch of one), in execution
    order, with the ReLU chain marked ``in_bound`` and a reason on every other layer. Raises
    :class:`ModelError` when torch.fx cannot trace the model (the caller may fall back)."""
    import networkx as nx
    import torch
    import torch.fx as fx
    import torch.nn as nn
    from torch.fx.passes.shape_prop import ShapeProp

    try:
        gm = fx.symbolic_trace(model)
    except Exception as exc:  # data-dependent control flow and the like
        raise ModelError(f"torch.fx cannot trace the model: {type(exc).__name__}: "
                         f"{str(exc).splitlines()[0] if str(exc) else ''}") from None
    modules = dict(gm.named_modules())
    was_training = model.training
    gm.eval()
    try:
        with torch.no_grad():
            model(example)  # a plain run first: ShapeProp prints its own traceback on failure
            ShapeProp(gm).propagate(example)
    except Exception as exc:
        raise ModelError(f"could not run the model on an input of shape {tuple(example.shape)}: "
                         f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}; "
                         "give --input-shape") from None
    finally:
        model.train(was_training)
        gm.train(was_training)
    graph = nx.DiGraph()
    nodes = list(gm.graph.nodes)
    for node in nodes:
        graph.add_node(node.name, node=node)
        for user in node.users:
            graph.add_edge(node.name, user.name)

    def single_user(node):
        users = list(graph.successors(node.name))
        return graph.nodes[users[0]]["node"] if len(users) == 1 else None

    def forward(node):
        """The first node after ``node`` that is not shape-only (None at a branch)."""
        nxt = single_user(node)
        while nxt is not None and _is_pass(nxt, modules):
            nxt = single_user(nxt)
        return nxt

    def backward(node):
        """The node feeding ``node`` through shape-only operations (None if several inputs)."""
        preds = [graph.nodes[p]["node"] for p in graph.predecessors(node.name)]
        while len(preds) == 1 and _is_pass(preds[0], modules):
            node = preds[0]
            preds = [graph.nodes[p]["node"] for p in graph.predecessors(node.name)]
        return preds[0] if len(preds) == 1 else None

    def is_linear(node):
        return node is not None and node.op == "call_module" and isinstance(modules[node.target], nn.Linear)

    def is_layer(node):
        return node is not None and node.op == "call_module" and isinstance(modules[node.target], (nn.Linear, nn.Conv2d))

    def kind(node):
        """relu, max (a max pool the bound covers), avg (a linear pool) or None."""
        if _is_relu(node, modules):
            return "relu"
        if node.op == "call_module":
            m = modules[node.target]
            if type(m) is nn.MaxPool2d:
                return "max"
            if isinstance(m, (nn.AvgPool2d, nn.AdaptiveAvgPool2d)):
                return "avg"
        return None

    def link(layer):
        """The chain layer before ``layer`` and the max pool after its ReLU: going back from
        ``layer`` there must be linear pools, then one ReLU and at most one max pool (in either
        order: ReLU and max commute), then a Linear or Conv2d, each feeding only the next."""
        node, after, pool, relu = backward(layer), layer, None, False
        while node is not None and not is_layer(node):
            k = kind(node)
            if k is None or (k == "avg" and (relu or pool is not None)) or (k == "relu" and relu) \
                    or (k == "max" and pool is not None) or forward(node) is not after:
                return None, None
            relu, pool = relu or k == "relu", node if k == "max" else pool
            after, node = node, backward(node)
        if not relu or node is None or forward(node) is not after:
            return None, None
        return node, pool

    # the output layer and the chain behind it
    output = next(n for n in nodes if n.op == "output")
    out_layer = backward(output)
    chain: list = []
    pools: dict = {}
    notes = []
    if is_linear(out_layer):
        cur = out_layer
        while True:
            prev, pool = link(cur)
            if prev is None or (pool is not None and not isinstance(modules[prev.target], nn.Conv2d)):
                break
            m = modules[prev.target]
            if isinstance(m, nn.Conv2d) and m.padding_mode != "zeros":
                notes.append(f"{prev.target}: {m.padding_mode} padding is outside the bound; the chain starts after it")
                break
            chain.insert(0, prev)
            pools[prev.target] = pool
            cur = prev
    else:
        out_layer = None
        notes.append("no nn.Linear produces the model's output: no output layer is frozen")
    chain_names = {n.target for n in chain}

    def conv_shape(node):
        from planner.core.conv import ConvShape, MaxPool

        m = modules[node.target]
        src = node.args[0]
        in_shape, out_shape = src.meta["tensor_meta"].shape, node.meta["tensor_meta"].shape
        pool = pools.get(node.target)
        mp = None
        if pool is not None:
            pm = modules[pool.target]
            ks = pm.kernel_size if isinstance(pm.kernel_size, tuple) else (pm.kernel_size, pm.kernel_size)
            mp = MaxPool(int(ks[0] * ks[1]), int(math.prod(pool.meta["tensor_meta"].shape[1:])))
        return ConvShape.of(m, tuple(in_shape[-2:]), tuple(out_shape[-2:]), mp)

    layers = []
    seen = set()
    for node in nodes:
        if node.op != "call_module":
            continue
        m = modules[node.target]
        name = node.target
        if isinstance(m, nn.MultiheadAttention):
            for pname in ("in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight"):
                p = getattr(m, pname, None)
                if p is not None:
                    layers.append(WeightLayer(f"{name}.{pname}", p.shape[0], p[0].numel(),
                                              why="attention in-projection"))
            out = m.out_proj
            layers.append(WeightLayer(f"{name}.out_proj", out.weight.shape[0], out.weight[0].numel(),
                                      why="attention out-projection"))
            seen.add(f"{name}.out_proj")
            continue
        if not isinstance(m, (nn.Linear, nn.Conv2d)) or name in seen:
            continue
        seen.add(name)
        rows, cols = m.weight.shape[0], m.weight[0].numel()
        if isinstance(m, nn.Conv2d) and name in chain_names:
            meta = node.meta.get("tensor_meta")
            spatial = int(meta.shape[-1] * meta.shape[-2]) if meta is not None else 1
            layers.append(WeightLayer(name, rows, cols, in_bound=True, flops_per_weight=spatial,
                                      conv=conv_shape(node)))
        elif out_layer is not None and name == out_layer.target:
            layers.append(WeightLayer(name, rows, cols, frozen=not prune_output, why="output layer"))
        elif name in chain_names:
            layers.append(WeightLayer(name, rows, cols, in_bound=True))
        else:
            after = forward(node)
            if after is None:
                why = "output branches (residual)"
            elif _is_relu(after, modules):
                why = "not in the output's ReLU chain"
            else:
                why = f"followed by {_describe(after, modules)}"
            spatial = 1
            if isinstance(m, nn.Conv2d):
                meta = node.meta.get("tensor_meta")
                spatial = int(meta.shape[-1] * meta.shape[-2]) if meta is not None else 1
                why = f"convolution {why}" if why.startswith("followed") else f"convolution, {why}"
            layers.append(WeightLayer(name, rows, cols, flops_per_weight=spatial, why=why))
    # Linear / Conv2d modules the trace never called (unused ones; out_proj of an attention is seen)
    for name, m in model.named_modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)) and name not in seen:
            notes.append(f"{name} is never called in the traced forward pass: left out of the plan")
    if not layers:
        raise ModelError("the model has no nn.Linear, nn.Conv2d or attention projection to prune")
    input_size = None
    if chain:
        first = chain[0]
        input_size = (modules[first.target].in_features if is_linear(first)
                      else int(math.prod(first.args[0].meta["tensor_meta"].shape[1:])))
    return GraphLayers(tuple(layers), input_size, tuple(notes))
