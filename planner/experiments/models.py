"""The accuracy experiment on a model factory (``compare --model M:F``): CNNs and any torch model.

``compare --arch`` builds the ReLU MLP of :mod:`.training`; ``compare --model package.module:
factory`` builds the factory's model instead (``--model-kwargs`` are passed to it) and plans
through the model route of the planner: :func:`planner.allocation.pipeline.plan` on the torch
model (``plan --model``), whose layers are every ``nn.Linear`` and ``nn.Conv2d`` (and attention
projection) of :func:`planner.pruning.model.model_layers`. The output layer stays dense (frozen,
outside the budget) under every strategy, as with ``--arch``. A density is the kept fraction of
the *prunable* weights: the weight tensors of every Linear / Conv2d layer but the output layer
(a conv counts out x in x kh x kw); biases, batch-norm parameters and the output layer are
never pruned and do not count. Under ``lr-bound`` the layers outside the bound's ReLU chain
(convolutions, today) keep the global density; the baselines rank or share every prunable layer.

Everything else is ``compare``'s: the same jobs (one dense training per seed, one job per seed,
density and strategy) on the same executor, the same data-order streams, the same row fields.
A job carries the factory's spec string and kwargs, never the model: every worker builds it.
The model of seed ``s``: ``torch.manual_seed(s)``, then the factory, called with ``seed=s``
when it takes a ``seed`` parameter that ``--model-kwargs`` does not set. Inputs are reshaped to
``input_shape`` (default: the dataset's image shape, e.g. 1x8x8 for digits, when the model has
a convolution; the flat feature vector otherwise).
"""

from __future__ import annotations

import json
import math
from typing import Sequence

import numpy as np

from planner.experiments.compare import ExperimentError

#: image shape (channels, height, width) of every data set's flat feature vector
IMAGE_SHAPES = {"digits": (1, 8, 8), "mnist": (1, 28, 28), "fashion-mnist": (1, 28, 28), "cifar10": (3, 32, 32)}


def _factory_takes_seed(spec: str) -> bool:
    import inspect
    import pkgutil

    from planner.pruning.archfile import is_arch_file

    if is_arch_file(spec):
        return True
    try:
        factory = pkgutil.resolve_name(spec)
        return "seed" in inspect.signature(factory).parameters
    except (TypeError, ValueError, ImportError, AttributeError):
        return False


def build_model(spec: str, kwargs: dict | None, seed: int):
    """The factory's model for one seed (see the module docstring)."""
    import torch

    from planner.pruning.model import load_factory

    kwargs = dict(kwargs or {})
    if "seed" not in kwargs and _factory_takes_seed(spec):
        kwargs["seed"] = int(seed)
    torch.manual_seed(int(seed))
    return load_factory(spec, kwargs)


def model_plan_layers(model, input_shape, *, prune_output: bool = False):
    """The planner's layers of ``model`` (``plan --model``), output layer frozen by default."""
    from planner.pruning.model import model_layers

    return model_layers(model, input_shape, prune_output=prune_output)


def check_model(spec: str, kwargs: dict | None, dataset: str, features: int, classes: int,
                input_shape: Sequence[int] | None) -> dict:
    """Build seed 0's model once, before any training: its input shape (given, or the default),
    layer names and prunable size; a factory that fails, a shape that does not fit the data or
    an output that is not one logit per class raise one clear error."""
    import torch
    import torch.nn as nn

    from planner.errors import ModelError

    if kwargs is not None and not isinstance(kwargs, dict):
        raise ExperimentError(f"model kwargs must be a JSON object, got {type(kwargs).__name__}")
    model = build_model(spec, kwargs, 0)
    if input_shape is None and getattr(model, "input_shape", None) is not None:
        input_shape = model.input_shape  # an architecture file's
    if input_shape is None:
        has_conv = any(isinstance(m, nn.Conv2d) for m in model.modules())
        image = IMAGE_SHAPES.get(dataset)
        shape = tuple(image) if has_conv and image is not None and math.prod(image) == features else (features,)
    else:
        shape = tuple(int(v) for v in input_shape)
        if math.prod(shape) != features:
            raise ExperimentError(f"--input-shape {','.join(map(str, shape))} has {math.prod(shape)} values but "
                                  f"dataset {dataset} has {features} features")
    model.eval()
    try:
        with torch.no_grad():
            out = model(torch.zeros((2, *shape)))
    except Exception as exc:  # the user's model: one line
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ModelError(f"--model {spec} cannot run on inputs of shape {','.join(map(str, shape))}: "
                         f"{type(exc).__name__}: {first}") from None
    if out.ndim != 2 or out.shape[1] != classes:
        raise ExperimentError(f"--model {spec} gives outputs of shape {tuple(out.shape[1:])} on "
                              f"{dataset}, which has {classes} classes")
    found = model_plan_layers(model, shape)
    return {"input_shape": list(shape), "layers": [w.name for w in found.layers],
            "prunable": int(sum(w.size for w in found.layers if not w.frozen)),
            "frozen": [w.name for w in found.layers if w.frozen]}


def model_strategy_plan(strategy: str, model, input_shape, density: float, *, seed: int, rank_model: str = "sampled",
                        cache=None, workers: int | None = None, calibration=None, spec: str = ""):
    """The plan of one strategy at one global density on ``model`` (output layer frozen dense):
    ``lr-bound`` variants through :func:`planner.allocation.pipeline.plan` on the model, the
    baselines on its layers (``global``/``lamp`` ranking its trained weights)."""
    from planner.allocation.baselines import baseline_plan
    from planner.allocation.pipeline import plan as make_plan
    from planner.experiments.compare import lr_bound_options, parse_strategy
    from planner.pruning.model import model_weights

    kind, _ = parse_strategy(strategy)
    found = model_plan_layers(model, input_shape)
    info = {"model": spec or type(model).__name__, "input_size": found.input_size}
    if kind == "lr-bound":
        options = lr_bound_options(strategy)
        if options.get("objective") == "sensitivity":
            if calibration is None:
                raise ExperimentError(f"{strategy} needs a calibration set")
            options["sensitivity"] = _sensitivity_table(model, input_shape, calibration, density, cache)
        return make_plan(model, density=density, input_shape=input_shape, rank_model=rank_model, seed=seed,
                         cache=cache, workers=workers, architecture_info=info, **options)
    layers = list(found.layers)
    weights, shapes = model_weights(model, layers)
    return baseline_plan(kind, layers=layers, density=density, weights=weights, kernel_shapes=shapes,
                         rank_model=rank_model, seed=seed, cache=cache, architecture_info=info)


def _sensitivity_table(model, input_shape, calibration, density, cache=None):
    """The dense model's sensitivity table (every layer, down to density / 32), disk-cached."""
    from planner.allocation.sensitivity import DEFAULT_MIN_DENSITY
    from planner.core.rank import default_cache
    from planner.pruning.sensitivity import measure_sensitivity

    X, y = (a.numpy() if hasattr(a, "numpy") else a for a in calibration)
    layers = model_plan_layers(model, input_shape, prune_output=True).layers
    return measure_sensitivity(model, X, y, min_density=min(DEFAULT_MIN_DENSITY, density / 32), layers=layers,
                               cache=(cache or default_cache()).disk, threads=None)


# ------------------------------------------------------------------------------ the jobs


def _inputs(shared, shape):
    from planner.experiments.compare import _tensors

    X_tr, y_tr, X_te, y_te = _tensors(shared)
    return X_tr.reshape((len(X_tr), *shape)), y_tr, X_te.reshape((len(X_te), *shape)), y_te


def _importable(shared) -> None:
    """The caller's working directory importable here too (``examples.models`` from a checkout)."""
    import os
    import sys

    cwd = shared.get("cwd")
    if cwd and os.path.isdir(cwd) and cwd not in sys.path:
        sys.path.insert(0, cwd)


def model_dense_job(shared, spec) -> dict:
    """Train seed ``spec["seed"]``'s model dense: its test accuracy, recall and weights."""
    import torch

    from planner.experiments.compare import _Threads, _check_torch, _encode_state, _stream
    from planner.experiments.training import evaluate, train

    _check_torch(spec)
    _importable(shared)
    X_tr, y_tr, X_te, y_te = _inputs(shared, spec["input_shape"])
    seed = spec["seed"]
    with _Threads(spec["threads"]):
        model = build_model(spec["model"], spec["model_kwargs"], seed)
        train(model, X_tr, y_tr, epochs=spec["epochs"], lr=spec["lr"], batch_size=spec["batch_size"],
              momentum=spec["momentum"], generator=torch.Generator().manual_seed(_stream(seed, 0)))
        acc, recall = evaluate(model, X_te, y_te, spec["classes"])
    return {"seed": seed, "accuracy": acc, "per_class_recall": recall, "state": _encode_state(model)}


def model_pruned_job(shared, spec, dense) -> dict:
    """Plan one strategy at one density on the seed's dense model, prune it by magnitude within
    each layer, fine-tune with the masks fixed, measure: a row of ``compare``'s fields."""
    import torch

    from planner.experiments.compare import _Threads, _check_torch, _decode_state, _stream
    from planner.experiments.distortion import (intensification_ratios, intensification_slope, normalized_balance,
                                                svcca)
    from planner.experiments.training import evaluate, train
    from planner.pruning.masks import apply_plan, finalize

    _check_torch(spec)
    _importable(shared)
    X_tr, y_tr, X_te, y_te = _inputs(shared, spec["input_shape"])
    seed, density, strategy, n_classes = spec["seed"], spec["density"], spec["strategy"], spec["classes"]
    shape = tuple(spec["input_shape"])
    with _Threads(spec["threads"]):
        model = build_model(spec["model"], spec["model_kwargs"], seed)
        model.load_state_dict(_decode_state(dense["state"]))
        p = model_strategy_plan(strategy, model, shape, density, seed=seed, rank_model=spec["rank_model"],
                                cache=shared["cache"], workers=shared["workers"], calibration=(X_tr, y_tr),
                                spec=spec["model"])
        hidden = [layer.name for layer in p.layers if layer.in_bound]
        dense_acts = chain_activations(model, X_te, hidden)
        apply_plan(model, p, criterion="magnitude")
        pruned_acc, pruned_recall = evaluate(model, X_te, y_te, n_classes)
        train(model, X_tr, y_tr, epochs=spec["finetune_epochs"], lr=spec["lr"], batch_size=spec["batch_size"],
              momentum=spec["momentum"], generator=torch.Generator().manual_seed(_stream(seed, 1)))
        realized, kept = realized_model(model, p)
        finalize(model)
        acc, recall = evaluate(model, X_te, y_te, n_classes)
        similarity = [svcca(a, b) for a, b in zip(dense_acts, chain_activations(model, X_te, hidden))]
    prunable = sum(layer.size for layer in p.layers if not layer.frozen)
    dense_recall, dense_acc = dense["per_class_recall"], dense["accuracy"]
    return {
        "strategy": strategy, "density": density, "seed": seed, "criterion": "magnitude", "accuracy": acc,
        "accuracy_pruned": pruned_acc, "dense_accuracy": dense_acc,
        "log2_bound": p.log2_bound, "kept": kept, "pruning_ratio": prunable / kept if kept else None,
        "densities": realized, "plan_densities": [layer.density for layer in p.layers], "per_class_recall": recall,
        "normalized_balance": normalized_balance(recall, acc) if acc > 0 else None,
        "intensification_ratio": intensification_ratios(dense_recall, dense_acc, recall, acc) if acc > 0 else None,
        "intensification_slope": intensification_slope(dense_recall, dense_acc, recall, acc),
        "intensification_slope_pruned": intensification_slope(dense_recall, dense_acc, pruned_recall, pruned_acc),
        "svcca": similarity,
    }


def dense_model_and_layers(spec, dense):
    """The trained dense model of a :func:`model_dense_job` result and the names of its chain's
    hidden layers (what SVCCA compares)."""
    from planner.experiments.compare import _decode_state
    from planner.pruning.model import model_layers

    model = build_model(spec["model"], spec["model_kwargs"], dense["seed"])
    model.load_state_dict(_decode_state(dense["state"]))
    found = model_layers(model, tuple(spec["input_shape"]))
    return model, [w.name for w in found.layers if w.in_bound]


def chain_activations(model, X, names) -> list[np.ndarray]:
    """The post-ReLU activations (flattened per sample) of the named layers on inputs ``X``:
    the hidden layers of the bound's chain, for SVCCA."""
    import torch

    out: dict[str, np.ndarray] = {}
    hooks = [model.get_submodule(n).register_forward_hook(
        lambda mod, inputs, output, n=n: out.__setitem__(n, torch.relu(output).flatten(1).double().numpy()))
        for n in names]
    model.eval()
    try:
        with torch.no_grad():
            model(torch.as_tensor(X, dtype=torch.float32))
    finally:
        for h in hooks:
            h.remove()
    return [out[n] for n in names]


def realized_model(model, plan) -> tuple[list[float], int]:
    """Per-layer kept fraction read from the attached masks (1.0 for an unpruned layer), and the
    kept count of the plan's prunable layers."""
    from planner.pruning.model import resolve_weight

    densities, kept = [], 0
    for layer in plan.layers:
        module, param = resolve_weight(model, layer.name)
        mask = getattr(module, f"{param}_mask", None)
        count = int(mask.sum()) if mask is not None else int(getattr(module, param).numel())
        densities.append(count / layer.size)
        if not layer.frozen:
            kept += count
    return densities, kept


def model_settings(spec: str, kwargs: dict | None, checked: dict) -> dict:
    """The fields that replace ``arch`` in the config and the job specs of a ``--model`` sweep."""
    return {"model": spec, "model_kwargs": json.loads(json.dumps(kwargs or {}, sort_keys=True)),
            "input_shape": checked["input_shape"]}


def to_array(a) -> np.ndarray:
    return np.ascontiguousarray(a)
