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


def load_factory(spec: str):
    """Resolve ``package.module:attr`` (the entry-point convention, by :func:`pkgutil.resolve_name`)
    and return the ``nn.Module`` it is or that calling it returns.

    The working directory is importable, so ``examples.models:lenet5`` works from a checkout.
    Whatever the user's code raises on import or call (``SystemExit`` included) becomes one
    :class:`ModelError`.
    """
    import pkgutil

    import torch.nn as nn

    if not isinstance(spec, str) or not _SPEC.fullmatch(spec):
        raise ModelError(f"--model takes package.module:factory (dotted names, no paths), got {spec!r}")
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
    if isinstance(factory, nn.Module):
        return factory
    if not callable(factory):
        raise ModelError(f"{spec} is neither a callable nor an nn.Module")
    try:
        model = factory()
    except (Exception, SystemExit) as exc:  # the user's code: report it in one line
        raise _user_code_error(f"calling {spec}()", exc) from None
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
    input_size: int
    traced: bool


def _infer_example_input(model, input_shape: Sequence[int] | None):
    import torch
    import torch.nn as nn

    if input_shape is not None:
        return torch.zeros((1, *input_shape))
    for module in model.modules():
        if isinstance(module, nn.Linear):
            return torch.zeros((1, module.in_features))
        if isinstance(module, nn.Conv2d):
            return None  # spatial size unknown
    return None


def model_layers(model, input_shape: Sequence[int] | None = None, *, prune_output: bool = False) -> ModelLayers:
    """Prunable layers of ``model``: every ``nn.Linear`` and ``nn.Conv2d``, named as in
    ``named_modules()``, in execution order when the model can be traced with an example input
    (``input_shape`` without the batch dimension; needed when the model starts with a conv).

    The bound covers the trailing chain of Linear layers (the paper's LeNet and AlexNet): all of
    them but the last are hidden ReLU layers; the last is the output layer, frozen dense unless
    ``prune_output``. A Conv2d is budgeted as out x (in * kh * kw), its FLOPs per kept weight
    being its output's spatial size.
    """
    import torch
    import torch.nn as nn

    named = [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    if not named:
        raise ModelError("the model has no nn.Linear or nn.Conv2d layer to prune")
    for name, module in named:
        if hasattr(module, "weight_orig"):
            raise ModelError(f"layer {name} is already pruned (it has weight_orig); finalize it first")
    order, spatial = [n for n, _ in named], {}
    example = _infer_example_input(model, input_shape)
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
    elif any(isinstance(m, nn.Conv2d) for _, m in named):
        raise ModelError("the model starts with a convolution: give its input shape (e.g. --input-shape 1,32,32)")
    modules = dict(named)
    # the trailing run of Linear layers is the fully connected chain
    chain: list[str] = []
    for name in reversed(order):
        if isinstance(modules[name], nn.Linear):
            chain.insert(0, name)
        else:
            break
    for a, b in zip(chain, chain[1:]):
        if modules[a].out_features != modules[b].in_features:
            raise ModelError(f"layers {a} ({modules[a].out_features} outputs) and {b} "
                             f"({modules[b].in_features} inputs) do not form a chain")
    if len(chain) < 2:
        raise ModelError("the model needs at least two Linear layers at its end (a hidden ReLU layer and "
                         "the output layer) for the linear-region bound")
    out = []
    for name in order:
        m = modules[name]
        rows = m.weight.shape[0]
        cols = m.weight[0].numel()
        if isinstance(m, nn.Conv2d):
            out.append(WeightLayer(name, rows, cols, in_bound=False, flops_per_weight=spatial.get(name, 1)))
        elif name == chain[-1]:
            out.append(WeightLayer(name, rows, cols, in_bound=False, frozen=not prune_output))
        else:
            out.append(WeightLayer(name, rows, cols, in_bound=name in chain))
    return ModelLayers(tuple(out), modules[chain[0]].in_features, traced)


def model_weights(model, layers: Sequence[WeightLayer]) -> tuple[dict, dict]:
    """({name: weight as a numpy array}, {name: weight shape}) for the given layers."""
    import torch

    weights, shapes = {}, {}
    for w in layers:
        tensor = model.get_submodule(w.name).weight.detach().cpu()
        if not bool(torch.isfinite(tensor).all()):
            bad = int((~torch.isfinite(tensor)).sum())
            raise ModelError(f"layer {w.name} has {bad} non-finite weight(s) (nan or inf): "
                             "magnitudes cannot rank them")
        weights[w.name] = tensor.numpy()
        shapes[w.name] = tuple(tensor.shape)
    return weights, shapes
