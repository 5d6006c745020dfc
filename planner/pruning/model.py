"""Models as the planner sees them: load a factory and a checkpoint, read off the prunable layers.

Imports torch; nothing else in the package imports this module at import time.
"""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass
from typing import Sequence

from planner.allocation.request import WeightLayer
from planner.errors import CheckpointError, ModelError


#: ``package.module:attr.attr``: dotted identifiers on both sides, no relative or path-like names
_SPEC = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")


def _user_code_error(what: str, exc: BaseException) -> ModelError:
    if isinstance(exc, SystemExit):
        return ModelError(f"{what} called sys.exit({exc.code!r})")
    detail = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return ModelError(f"{what} raised {type(exc).__name__}" + (f": {detail}" if detail else ""))


def _from_arch_file(path: str, kwargs: dict | None):
    """An architecture file's model (see :mod:`planner.pruning.archfile`), its weights drawn
    under ``torch.manual_seed(seed)`` (``seed`` the only keyword it takes; default 0), as the
    example factories do."""
    import torch

    from planner.pruning import archfile

    kwargs = dict(kwargs or {})
    seed = kwargs.pop("seed", 0)
    if kwargs:
        raise ModelError(f"an architecture file takes no --model-kwargs but seed, got {sorted(kwargs)}")
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ModelError(f"seed must be a non-negative integer, got {seed!r}")
    data = archfile.read(path)
    torch.manual_seed(seed)
    return archfile.build(data, where=path)


def load_factory(spec: str, kwargs: dict | None = None):
    """Resolve ``package.module:attr`` (the entry-point convention, by :func:`pkgutil.resolve_name`)
    and return the ``nn.Module`` it is or that calling it returns.

    The working directory is importable, so ``examples.models:lenet5`` works from a checkout.
    Whatever the user's code raises on import or call (``SystemExit`` included) becomes one
    :class:`ModelError`. ``kwargs`` are passed to the factory (``--model-kwargs``).
    """
    import pkgutil

    import torch.nn as nn

    from planner.pruning import archfile

    if archfile.is_arch_file(spec):
        return _from_arch_file(spec, kwargs)
    if not isinstance(spec, str) or not _SPEC.fullmatch(spec):
        raise ModelError("--model takes package.module:factory (dotted names) or an architecture file "
                         f"(.yaml, .yml, .json), got {spec!r}")
    module_name = spec.split(":")[0]
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        factory = pkgutil.resolve_name(spec)
    except ModuleNotFoundError as exc:
        raise ModelError(f"cannot import {exc.name or module_name!r} for --model {spec}") from None
    except AttributeError as exc:
        raise ModelError(f"--model {spec}: {exc}") from None
    except (Exception, SystemExit) as exc:  # the user's module failed while importing
        raise _user_code_error(f"importing {module_name!r} for --model {spec}", exc) from None
    if kwargs is not None and not isinstance(kwargs, dict):
        raise ModelError(f"--model-kwargs must be a JSON object, got {type(kwargs).__name__}")
    if isinstance(factory, nn.Module):
        if kwargs:
            raise ModelError(f"{spec} is a model instance, not a factory: it takes no --model-kwargs")
        return factory
    if not callable(factory):
        raise ModelError(f"{spec} is neither a callable nor an nn.Module")
    try:
        model = factory(**(kwargs or {}))
    except (Exception, SystemExit) as exc:  # the user's code: report it in one line
        args = ", ".join(f"{k}={v!r}" for k, v in (kwargs or {}).items())
        raise _user_code_error(f"calling {spec}({args})", exc) from None
    if not isinstance(model, nn.Module):
        raise ModelError(f"{spec}() returned {type(model).__name__}, not an nn.Module")
    return model


def load_state_dict(path: str | os.PathLike) -> dict:
    """A state dict from ``path``, loaded with ``weights_only=True``: a checkpoint that needs
    arbitrary unpickling is refused, never executed."""
    import pickle

    import torch

    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {path} does not exist") from None
    except (pickle.UnpicklingError, RuntimeError, AttributeError, TypeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"refused checkpoint {path}: it cannot be loaded with weights_only=True ({first})"
        ) from None
    except EOFError:
        raise CheckpointError(f"cannot read checkpoint {path}: the file is empty or cut short") from None
    except (OSError, ValueError) as exc:
        reason = (exc.strerror if isinstance(exc, OSError) else None) or str(exc).strip() or type(exc).__name__
        raise CheckpointError(f"cannot read checkpoint {path}: {reason}") from None
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"checkpoint {path} is not a state dict of tensors")
    return obj


def load_weights(model, path: str | os.PathLike):
    state = load_state_dict(path)
    missing, unexpected = [], []
    try:
        result = model.load_state_dict(state, strict=False)
        missing, unexpected = list(result.missing_keys), list(result.unexpected_keys)
    except RuntimeError as exc:
        # torch's first line only says "Error(s) in loading state_dict"; the next names the key
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        detail = lines[1] if len(lines) > 1 else (lines[0] if lines else "shape mismatch")
        raise CheckpointError(f"checkpoint {path} does not fit the model: {detail}") from None
    if missing or unexpected:
        what = f"missing {missing[0]!r}" if missing else f"unexpected {unexpected[0]!r}"
        raise CheckpointError(f"checkpoint {path} does not fit the model: {what}"
                              f" ({len(missing)} missing, {len(unexpected)} unexpected keys)")
    return model


@dataclass(frozen=True)
class ModelLayers:
    """What the planner needs from a model: the prunable layers (module names, execution order)
    and the input size of the fully connected ReLU chain."""

    layers: tuple[WeightLayer, ...]
    input_size: int | None  # the bound chain's input size (None without a chain)
    traced: bool
    notes: tuple[str, ...] = ()


def _infer_example_input(model, input_shape: Sequence[int] | None):
    import torch
    import torch.nn as nn

    if input_shape is None:
        input_shape = getattr(model, "input_shape", None)  # an architecture file's model carries it
    if input_shape is not None:
        return torch.zeros((1, *input_shape))
    for module in model.modules():
        if isinstance(module, nn.Linear):
            return torch.zeros((1, module.in_features))
        if isinstance(module, nn.Conv2d):
            return None  # spatial size unknown
    return None


def model_layers(model, input_shape: Sequence[int] | None = None, *, prune_output: bool = False) -> ModelLayers:
    """Prunable layers of ``model``: every ``nn.Linear`` and ``nn.Conv2d`` (named as in
    ``named_modules()``) and the projections of every ``nn.MultiheadAttention``
    (``<name>.in_proj_weight``, ``<name>.out_proj``), in execution order. ``input_shape`` is
    the example input without the batch dimension (needed when the model starts with a conv).

    The model is read as a graph (:func:`planner.pruning.graph.read_graph`, torch.fx and
    networkx): the bound covers the chain of Linear layers with ReLU between them that ends at
    the output layer (frozen dense unless ``prune_output``); every other layer says why it is
    outside. A model torch.fx cannot trace is read by forward hooks instead, assuming ReLU
    between its trailing Linear layers (``notes`` says so). A Conv2d is budgeted as
    out x (in * kh * kw), its FLOPs per kept weight being its output's spatial size.
    """
    import torch.nn as nn

    from planner.pruning.graph import read_graph

    named = [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d, nn.MultiheadAttention))]
    if not named:
        raise ModelError("the model has no nn.Linear, nn.Conv2d or attention layer to prune")
    for name, module in model.named_modules():
        if any(n.endswith("_orig") for n, _ in module.named_parameters(recurse=False)):
            raise ModelError(f"layer {name} is already pruned (it has weight_orig); finalize it first")
    example = _infer_example_input(model, input_shape)
    if example is None and any(isinstance(m, nn.Conv2d) for _, m in named):
        raise ModelError("the model starts with a convolution: give its input shape (e.g. --input-shape 1,32,32)")
    if example is not None:
        try:
            found = read_graph(model, example, prune_output=prune_output)
            return ModelLayers(found.layers, found.input_size, True, found.notes)
        except ModelError as exc:
            if "could not run the model" in str(exc):
                raise
            reason = str(exc)
    else:
        reason = "no example input (give --input-shape)"
    return _hook_layers(model, example, prune_output, reason)


def _hook_layers(model, example, prune_output: bool, reason: str) -> ModelLayers:
    """The fallback when torch.fx cannot trace: execution order by forward hooks, the trailing
    run of Linear layers taken as the ReLU chain."""
    import torch
    import torch.nn as nn

    named = [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    if not named:
        raise ModelError(f"the model has no nn.Linear or nn.Conv2d layer the forward hooks can see ({reason})")
    order, spatial = [n for n, _ in named], {}
    traced = False
    if example is not None:
        seen: list[str] = []
        hooks = []
        for name, module in named:
            def hook(mod, inputs, output, name=name):
                if name not in seen:
                    seen.append(name)
                if isinstance(mod, nn.Conv2d):
                    spatial[name] = int(output.shape[-1] * output.shape[-2])
            hooks.append(module.register_forward_hook(hook))
        try:
            was_training = model.training
            model.eval()
            with torch.no_grad():
                model(example)
            model.train(was_training)
            traced = True
            order = seen + [n for n in order if n not in seen]
        except Exception as exc:  # a model that needs another input: say which
            raise ModelError(
                f"could not trace the model with an input of shape {tuple(example.shape)}: "
                f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}; give --input-shape"
            ) from None
        finally:
            for h in hooks:
                h.remove()
    modules = dict(named)
    # the trailing run of Linear layers is the fully connected chain
    chain: list[str] = []
    for name in reversed(order):
        if isinstance(modules[name], nn.Linear):
            chain.insert(0, name)
        else:
            break
    if any(modules[a].out_features != modules[b].in_features for a, b in zip(chain, chain[1:])):
        chain = chain[-1:]  # the trailing Linear layers do not form a chain: only the output layer
    note = (f"read by forward hooks ({reason}): the trailing Linear layers are taken as a chain with ReLU "
            "between them, which the hooks cannot check")
    out = []
    for name in order:
        m = modules[name]
        rows = m.weight.shape[0]
        cols = m.weight[0].numel()
        if isinstance(m, nn.Conv2d):
            out.append(WeightLayer(name, rows, cols, in_bound=False, flops_per_weight=spatial.get(name, 1),
                                   why="convolution"))
        elif chain and name == chain[-1]:
            out.append(WeightLayer(name, rows, cols, in_bound=False, frozen=not prune_output, why="output layer"))
        else:
            out.append(WeightLayer(name, rows, cols, in_bound=name in chain[:-1],
                                   why="" if name in chain[:-1] else "not in the trailing Linear chain"))
    input_size = modules[chain[0]].in_features if len(chain) >= 2 else None
    return ModelLayers(tuple(out), input_size, traced, (note,))


def model_weights(model, layers: Sequence[WeightLayer]) -> tuple[dict, dict]:
    """({name: weight as a numpy array}, {name: weight shape}) for the given layers."""
    import torch

    weights, shapes = {}, {}
    for w in layers:
        module, param = resolve_weight(model, w.name)
        tensor = getattr(module, param).detach().cpu()
        if not bool(torch.isfinite(tensor).all()):
            bad = int((~torch.isfinite(tensor)).sum())
            raise ModelError(f"layer {w.name} has {bad} non-finite weight(s) (nan or inf): "
                             "magnitudes cannot rank them")
        weights[w.name] = tensor.numpy()
        shapes[w.name] = tuple(tensor.shape)
    return weights, shapes


def resolve_weight(model, name: str):
    """(module, parameter name) holding a plan layer's weight (:mod:`planner.pruning.names`);
    AttributeError when the model has no such layer."""
    from planner.pruning.names import split_weight_name

    path, param = split_weight_name(name)
    module = model.get_submodule(path)
    if not hasattr(module, param) and not hasattr(module, param + "_orig"):
        raise AttributeError(f"{path or 'the model'} has no parameter {param!r}")
    return module, param
