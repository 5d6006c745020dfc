"""Turn a plan into masks on a torch model, through torch.nn.utils.prune so standard tooling
sees them (``weight_orig``, ``weight_mask``, the forward pre-hook; ``finalize`` makes them
permanent). Computing the masks is separate from attaching them: every mask is computed, and
the plan checked against the model, before any module is touched.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from planner.errors import ModelError, PlanMismatchError, PlannerError
from planner.allocation.planfile import Plan
from planner.pruning.names import split_weight_name

CRITERIA = ("magnitude", "random", "elimination-compensation", "gradient", "undecayed")

#: criteria scored from the loss gradient on a calibration batch and its labels (planner.pruning.saliency)
DATA_CRITERIA = ("gradient", "undecayed")

#: structured criteria (each a mask pattern with its own options): name -> "module:function"
#: taking ((plan layer, module) pairs, options) and returning ({name: mask}, report notes)
STRUCTURED = {
    "bcr": "planner.pruning.bcr:compute_bcr_masks",
    "nm": "planner.pruning.nm:compute_nm_masks",
}

CRITERIA = CRITERIA + tuple(STRUCTURED)


@dataclass
class AppliedLayer:
    name: str
    size: int
    planned_keep: int
    kept: int
    criterion: str

    @property
    def density(self) -> float:
        return self.kept / self.size


@dataclass
class ApplyReport:
    layers: list[AppliedLayer] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "layers": [
                {"name": a.name, "size": a.size, "planned_keep": a.planned_keep, "kept": a.kept,
                 "density": a.density, "criterion": a.criterion}
                for a in self.layers
            ],
            "notes": self.notes,
        }


def _prunable_modules(model, plan: Plan):
    """(plan layer, module) for every non-frozen plan layer, after checking names and shapes.
    The weight is ``module.weight``, or the parameter a layer's name ends with
    (``attn.in_proj_weight``: :func:`weight_of`)."""
    import torch.nn as nn

    from planner.pruning.model import resolve_weight

    pairs = []
    for layer in plan.layers:
        try:
            module, param = resolve_weight(model, layer.name)
        except AttributeError:
            raise PlanMismatchError(f"plan layer {layer.name!r} is not a module of the model") from None
        if param == "weight" and not isinstance(module, (nn.Linear, nn.Conv2d)):
            raise PlanMismatchError(f"plan layer {layer.name!r} is a {type(module).__name__}, not Linear or Conv2d")
        if hasattr(module, param + "_orig"):
            raise PlanMismatchError(f"layer {layer.name!r} is already pruned; finalize it before applying a plan")
        weight = getattr(module, param)
        rows, cols = weight.shape[0], weight[0].numel()
        if (rows, cols) != (layer.rows, layer.cols):
            raise PlanMismatchError(
                f"plan layer {layer.name!r} is {layer.rows}x{layer.cols} but the model's weight is "
                f"{rows}x{cols} (shape {tuple(weight.shape)})"
            )
        if not layer.frozen:
            pairs.append((layer, module))
    return pairs


def weight_of(module, layer_name: str):
    """The weight tensor of a plan layer on its module (``weight`` or ``in_proj_weight``...)."""
    from planner.pruning.names import split_weight_name

    return getattr(module, split_weight_name(layer_name)[1])


def top_k_mask(scores, keep: int, *, absolute: bool = False):
    """Boolean mask keeping exactly ``keep`` entries with the largest ``scores`` (or ``|scores|``
    when ``absolute``); ties at the threshold go to the lowest flat indices.

    The threshold comes from an in-place partition of one copy (O(n), about one extra copy of
    the layer; torch.topk needed about four), and the mask from comparisons that allocate only
    booleans.
    """
    import numpy as np
    import torch

    values = scores.detach().cpu().numpy() if isinstance(scores, torch.Tensor) else np.asarray(scores)
    shape, flat = values.shape, values.reshape(-1)
    n = flat.size
    if keep >= n:
        return torch.ones(shape, dtype=torch.bool)
    if keep <= 0:
        return torch.zeros(shape, dtype=torch.bool)
    work = np.abs(flat) if absolute else flat.copy()
    kth = n - keep
    work.partition(kth)
    threshold = work[kth]
    del work
    mask = (flat > threshold) | (flat < -threshold) if absolute else flat > threshold
    need = keep - int(np.count_nonzero(mask))
    if need > 0:
        ties = (flat == threshold) | (flat == -threshold) if absolute else flat == threshold
        mask[np.flatnonzero(ties)[:need]] = True
    return torch.from_numpy(mask.reshape(shape))


def _statistics(model, pairs, criterion, calibration, labels=None, weight_decay=0.0):
    if criterion in DATA_CRITERIA:
        from planner.pruning.saliency import saliency_scores

        if calibration is None or labels is None:
            raise PlannerError(f"criterion {criterion} needs a calibration batch and its labels "
                               "(--calibration X.npy --labels y.npy, or --dataset NAME)")
        scores = saliency_scores(criterion, {layer.name: weight_of(module, layer.name) for layer, module in pairs},
                                 calibration, labels, model, weight_decay)
        return {name: {"importance": score} for name, score in scores.items()}
    if criterion != "elimination-compensation":
        return {}
    if calibration is None:
        raise PlannerError("elimination-compensation needs a calibration batch (--calibration X.npy)")
    from planner.pruning.compensation import compensation_statistics

    return compensation_statistics(model, [layer.name for layer, _ in pairs], calibration)


def _structured_masks(pairs, criterion, options, notes=None):
    import pkgutil

    masks, found = pkgutil.resolve_name(STRUCTURED[criterion])(pairs, dict(options or {}))
    if notes is not None:
        notes.extend(found)
    return masks


#: plan-layer patterns magnitude pruning realizes as it is
UNSTRUCTURED_PATTERNS = (None, "unstructured", "dense")


def plan_patterns(plan: Plan) -> list[str]:
    """The structured patterns a pattern-aware plan gives its prunable layers (empty: none)."""
    return sorted({layer.pattern for layer in plan.layers if not layer.frozen
                   and layer.pattern not in UNSTRUCTURED_PATTERNS})


def _check_pattern_plan(plan: Plan, criterion: str) -> bool:
    """Is ``plan`` pattern-aware (a structured pattern on some layer)? Such a plan is applied
    with the default criterion, which realizes each layer's pattern."""
    found = plan_patterns(plan)
    if found and criterion != "magnitude":
        raise PlannerError(f"this plan gives layers the patterns {', '.join(found)}: apply it with the default "
                           f"--criterion magnitude, which realizes each layer's pattern, not {criterion}")
    return bool(found)


def _pattern_masks(pairs, notes=None):
    """Masks of a pattern-aware plan: each layer under its own pattern (unstructured layers by
    magnitude)."""
    from planner.allocation.patterns import parse_pattern

    groups: dict[str, list] = {}
    for layer, module in pairs:
        groups.setdefault(layer.pattern if layer.pattern not in UNSTRUCTURED_PATTERNS else "unstructured",
                          []).append((layer, module))
    masks = {}
    for name, group in sorted(groups.items()):
        if name == "unstructured":
            for layer, module in group:
                masks[layer.name] = top_k_mask(weight_of(module, layer.name), layer.keep, absolute=True)
            continue
        criterion, options = parse_pattern(name).mask_settings()
        # the nm notes say the plan did not choose the counts: here it did
        masks.update(_structured_masks(group, criterion, options, notes if criterion == "bcr" else None))
    return masks


def _layer_criterion(layer) -> str:
    if layer.pattern in UNSTRUCTURED_PATTERNS:
        return "magnitude"
    from planner.allocation.patterns import parse_pattern

    criterion, options = parse_pattern(layer.pattern).mask_settings()
    return _describe_structured(criterion, options)


def compute_masks(model, plan: Plan, criterion: str = "magnitude", *, calibration=None, generator=None,
                  _stats=None, options=None, labels=None, weight_decay: float = 0.0):
    """{layer name: bool mask} for every non-frozen layer of ``plan``; touches nothing.
    ``options`` holds a structured criterion's settings (:data:`STRUCTURED`); ``gradient`` and
    ``undecayed`` need ``calibration`` inputs and their ``labels`` (``weight_decay``: the eps
    of ``undecayed``)."""
    import torch

    if criterion not in CRITERIA:
        raise PlannerError(f"unknown criterion {criterion!r}; choose one of {', '.join(CRITERIA)}")
    pairs = _prunable_modules(model, plan)
    if _check_pattern_plan(plan, criterion):
        return _pattern_masks(pairs)
    if criterion in STRUCTURED:
        return _structured_masks(pairs, criterion, options)
    stats = _statistics(model, pairs, criterion, calibration, labels, weight_decay) if _stats is None else _stats
    masks = {}
    with torch.no_grad():
        for layer, module in pairs:
            w = weight_of(module, layer.name)
            if criterion == "random":
                masks[layer.name] = top_k_mask(torch.rand(w.shape, generator=generator), layer.keep)
            elif layer.name in stats:
                masks[layer.name] = top_k_mask(stats[layer.name]["importance"].reshape(w.shape), layer.keep)
            else:  # magnitude; also convolutions under elimination-compensation
                masks[layer.name] = top_k_mask(w, layer.keep, absolute=True)
    return masks


def apply_plan(model, plan: Plan, criterion: str = "magnitude", calibration=None, rescale: bool = False,
               generator=None, options=None, labels=None, weight_decay: float = 0.0) -> ApplyReport:
    """Prune ``model`` in place to ``plan`` with ``torch.nn.utils.prune.custom_from_mask``.

    ``criterion`` picks the kept weights within a layer: ``magnitude`` (largest |w|, default),
    ``random`` (``generator`` seeds it) or ``elimination-compensation`` (seed 001: importance
    with the optimal bias shift, which is then added to the bias; needs ``calibration``, a
    batch of model inputs; layers other than Linear fall back to magnitude), ``gradient``
    (largest ``|w * dL/dw|``) or ``undecayed`` (largest ``|-w * dL/dw + weight_decay * w^2|``,
    Good et al. 2022), both with ``L`` the cross-entropy on ``calibration`` and ``labels``
    (:mod:`planner.pruning.saliency`). ``rescale``
    multiplies the surviving weights by 1/sqrt(density) (seed 002, for random pruning at
    initialization). Structured criteria (:data:`STRUCTURED`: ``bcr`` with
    ``options={"block": "16x16", "keep_rows": f, "keep_cols": f}``, ``nm`` with
    ``options={"pattern": "2:4"}``) keep what their pattern allows; the report gives the
    realized count of every layer and notes where it differs from the plan's. A pattern-aware
    plan (layers with a ``pattern``: ``plan --patterns``) is applied with ``magnitude``, each
    layer under its own pattern (bcr / nm masks, magnitude for unstructured ones). Returns the
    realized density per layer.
    """
    import torch
    from torch.nn.utils import prune

    if criterion not in CRITERIA:
        raise PlannerError(f"unknown criterion {criterion!r}; choose one of {', '.join(CRITERIA)}")
    if rescale and criterion == "elimination-compensation":
        raise PlannerError("--rescale scales the surviving weights after pruning, which undoes the bias "
                           "compensation; use it with magnitude or random pruning")
    pairs = _prunable_modules(model, plan)
    patterned = _check_pattern_plan(plan, criterion)
    for layer, module in pairs:
        if not bool(torch.isfinite(weight_of(module, layer.name)).all()):
            bad = int((~torch.isfinite(weight_of(module, layer.name))).sum())
            raise ModelError(f"layer {layer.name} has {bad} non-finite weight(s) (nan or inf): refusing to prune it")
    report = ApplyReport()
    if patterned:
        stats, masks = {}, _pattern_masks(pairs, report.notes)
    elif criterion in STRUCTURED:
        stats, masks = {}, _structured_masks(pairs, criterion, options, report.notes)
    else:
        stats = _statistics(model, pairs, criterion, calibration, labels, weight_decay)
        masks = compute_masks(model, plan, criterion, generator=generator, _stats=stats)
    shifts = {}
    if criterion == "elimination-compensation":
        from planner.pruning.compensation import sequential_bias_correction

        skipped = [layer.name for layer, _ in pairs if layer.name not in stats]
        if skipped:
            report.notes.append(f"magnitude used for {', '.join(skipped)}: compensation is defined for Linear layers")
        shifts, steps = sequential_bias_correction(model, {n: masks[n] for n in stats}, calibration,
                                                   alive={n: stats[n]["alive"] for n in stats})
        if steps:
            report.notes.append("bias shift scale per layer (1: the full measured shift, 0: none): "
                                + ", ".join(f"{n} {s:g}" for n, s in steps.items()))
    for layer, module in pairs:
        mask = masks[layer.name]
        crit = criterion
        with torch.no_grad():
            if layer.name in shifts:
                module.bias.add_(shifts[layer.name].to(module.bias.dtype))
            elif criterion == "elimination-compensation" and layer.name not in stats:
                crit = "magnitude"
            weight = weight_of(module, layer.name)
            kept = int(mask.sum())  # a structured pattern may keep another count than planned
            if rescale and 0 < kept < layer.size:
                weight.mul_(1.0 / math.sqrt(kept / layer.size))
        # masks of the random criterion are drawn on the CPU: move them to the weight's device
        prune.custom_from_mask(module, split_weight_name(layer.name)[1],
                               mask.to(device=weight.device, dtype=weight.dtype))
        if criterion in STRUCTURED:
            crit = _describe_structured(criterion, options)
        elif patterned:
            crit = _layer_criterion(layer)
        report.layers.append(AppliedLayer(layer.name, layer.size, layer.keep, kept, crit))
    return report


def _describe_structured(criterion, options) -> str:
    options = options or {}
    if criterion == "bcr":
        text = f"bcr {options.get('block')}"
        for key in ("keep_rows", "keep_cols"):
            if options.get(key) is not None:
                text += f" {key.replace('_', '-')} {options[key]:g}"
        return text
    return f"{criterion} {options.get('pattern')}" if options.get("pattern") else criterion


def finalize(model) -> list[str]:
    """Make every torch pruning mask permanent (``prune.remove``); returns the layers done."""
    from torch.nn.utils import prune

    done = []
    for name, module in model.named_modules():
        if prune.is_pruned(module):
            masked = [b[: -len("_mask")] for b, _ in module.named_buffers(recurse=False) if b.endswith("_mask")]
            for param in masked:
                if hasattr(module, param + "_orig"):
                    prune.remove(module, param)
            if masked:
                done.append(name)
    return done
