"""Baseline allocations (docs/theory.md section 5), producing the same plan format as the planner.

``uniform``       the same density in every prunable layer;
``uniform-plus``  Gale et al. 2019: the first convolution dense, the last layer at least 20%;
``erk``           Evci et al. 2020: density proportional to (sum of dims) / (product of dims);
``global``        one magnitude threshold across all prunable layers (needs weights);
``lamp``          Lee et al. 2021: layer-adaptive magnitude scores, global top-k (needs weights).

Frozen layers stay frozen (dense, outside the budget) under every strategy.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np

from planner.allocation.request import WeightLayer, apportion, layers_from_arch
from planner.core.arch import Architecture
from planner.core.bound import LN2, log_bound
from planner.errors import DensityError, InfeasibleError, PlannerError, ProblemError
from planner.allocation.planfile import Plan, PlanLayer
from planner.core.rank import check_density

from planner.allocation import BASELINES, NEEDS_WEIGHTS, STRATEGIES

UNIFORM_PLUS_LAST_MIN = 0.2


def _capped_fill(budget: int, sizes: Sequence[int], weights: Sequence[float]) -> list[int]:
    """Integers summing to ``budget`` with density_i proportional to weights_i, capped at 1:
    layers whose density would exceed 1 are made dense and the scale is solved again."""
    keeps = [0] * len(sizes)
    free = [i for i in range(len(sizes)) if weights[i] > 0]
    left = budget
    while free:
        mass = sum(weights[i] * sizes[i] for i in free)
        scale = left / mass
        over = [i for i in free if scale * weights[i] >= 1.0]
        if not over:
            shares = apportion(left, [weights[i] * sizes[i] for i in free], [sizes[i] for i in free])
            for i, share in zip(free, shares):
                keeps[i] = share
            break
        for i in over:
            keeps[i] = sizes[i]
            left -= sizes[i]
        free = [i for i in free if i not in over]
    return keeps


def _erk_weight(layer: WeightLayer, kernel_shape: Sequence[int] | None) -> float:
    dims = list(kernel_shape) if kernel_shape is not None else [layer.rows, layer.cols]
    return sum(dims) / math.prod(dims)


def _top_k_global(scores: Mapping[str, np.ndarray], budget: int) -> dict[str, int]:
    """How many of each layer's entries are among the ``budget`` largest scores overall (ties
    broken by layer order, then position, so the count is exact)."""
    names = list(scores)
    flat = np.concatenate([np.asarray(scores[n], dtype=np.float64).ravel() for n in names])
    if budget >= flat.size:
        return {n: int(np.asarray(scores[n]).size) for n in names}
    order = np.argsort(-flat, kind="stable")[:budget]
    owner = np.repeat(np.arange(len(names)), [np.asarray(scores[n]).size for n in names])
    counts = np.bincount(owner[order], minlength=len(names))
    return {n: int(c) for n, c in zip(names, counts)}


def lamp_scores(weight: np.ndarray) -> np.ndarray:
    """LAMP score of every entry: with |w| sorted ascending, w_u^2 / sum_{v >= u} w_v^2."""
    w2 = np.asarray(weight, dtype=np.float64).ravel() ** 2
    order = np.argsort(w2, kind="stable")
    sorted_w2 = w2[order]
    tail = np.cumsum(sorted_w2[::-1])[::-1]
    scores = np.empty_like(w2)
    with np.errstate(invalid="ignore", divide="ignore"):
        scores[order] = np.where(tail > 0, sorted_w2 / tail, 0.0)
    return scores.reshape(np.shape(weight))


def baseline_keeps(
    strategy: str,
    layers: Sequence[WeightLayer],
    budget: int,
    *,
    weights: Mapping[str, np.ndarray] | None = None,
    kernel_shapes: Mapping[str, Sequence[int]] | None = None,
) -> dict[str, int]:
    """Keep-count of every prunable layer under a baseline strategy, summing to ``budget``."""
    if strategy not in BASELINES:
        raise PlannerError(f"unknown strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")
    prunable = [w for w in layers if not w.frozen]
    sizes = [w.size for w in prunable]
    if strategy in NEEDS_WEIGHTS:
        if weights is None:
            raise PlannerError(f"strategy {strategy!r} ranks weights by magnitude: give --model (and --weights)")
        missing = [w.name for w in prunable if w.name not in weights]
        if missing:
            raise PlannerError(f"strategy {strategy!r}: no weights for layer {missing[0]!r}")
    if strategy == "uniform":
        return dict(zip((w.name for w in prunable), apportion(budget, sizes)))
    if strategy == "uniform-plus":
        fixed: dict[str, int] = {}
        convs = [w for w in prunable if kernel_shapes and len(kernel_shapes.get(w.name, ())) == 4]
        if convs:
            fixed[convs[0].name] = convs[0].size
        # the network's last layer; when it is frozen it is dense already
        last = layers[-1]
        rest = [w for w in prunable if w.name not in fixed]
        keeps = dict(fixed)
        left = budget - sum(fixed.values())
        if left < 0:
            raise InfeasibleError(f"uniform-plus keeps the first convolution dense ({fixed}), above the budget {budget}")
        shares = dict(zip((w.name for w in rest), apportion(left, [w.size for w in rest])))
        floor = int(math.ceil(UNIFORM_PLUS_LAST_MIN * last.size))
        if not last.frozen and last.name not in fixed and shares[last.name] < floor:
            others = [w for w in rest if w is not last]
            if floor > left or not others and floor != left:
                raise InfeasibleError(f"uniform-plus keeps at least 20% of {last.name}, above the budget {budget}")
            shares[last.name] = floor
            shares.update(zip((w.name for w in others), apportion(left - floor, [w.size for w in others])))
        keeps.update(shares)
        return keeps
    if strategy == "erk":
        ws = [_erk_weight(w, (kernel_shapes or {}).get(w.name)) for w in prunable]
        return dict(zip((w.name for w in prunable), _capped_fill(budget, sizes, ws)))
    if strategy == "global":
        scores = {w.name: np.abs(np.asarray(weights[w.name], dtype=np.float64)) for w in prunable}
        return _top_k_global(scores, budget)
    scores = {w.name: lamp_scores(np.asarray(weights[w.name])) for w in prunable}
    return _top_k_global(scores, budget)


def baseline_plan(
    strategy: str,
    arch: Architecture | str | None = None,
    *,
    layers: Sequence[WeightLayer] | None = None,
    density: float | None = None,
    keep: int | None = None,
    weights: Mapping[str, np.ndarray] | None = None,
    kernel_shapes: Mapping[str, Sequence[int]] | None = None,
    prune_output: bool = False,
    rank_model: str = "sampled",
    input_dim: int | None = None,
    seed: int = 0,
    cache=None,
    architecture_info: dict | None = None,
) -> Plan:
    """A plan file for a baseline strategy, with its expected log2 bound for comparison."""
    if arch is not None:
        if isinstance(arch, str):
            arch = Architecture.parse(arch)
        layers = layers_from_arch(arch, prune_output=prune_output)
        architecture_info = architecture_info or {"sizes": list(arch.sizes)}
    elif layers is None:
        raise ProblemError("give an architecture or a list of layers")
    layers = list(layers)
    architecture_info = architecture_info or {}
    total = sum(w.size for w in layers if not w.frozen)
    if (density is None) == (keep is None):
        raise ProblemError("give exactly one of density and keep")
    budget = int(round(check_density(density, "global density") * total)) if density is not None else int(keep)
    if not 0 < budget <= total:
        raise DensityError(f"the plan must keep between 1 and {total} weights, got {budget}: "
                           "give a larger density or --keep")
    keeps = baseline_keeps(strategy, layers, budget, weights=weights, kernel_shapes=kernel_shapes)
    chain = [w for w in layers if w.in_bound]
    d0 = input_dim or architecture_info.get("input_size") or (arch.input_size if arch is not None else
                                                              (chain[0].cols if chain else None))
    from planner.core.conv import layer_distribution

    dists = [layer_distribution(w.geometry, (w.size if w.frozen else keeps[w.name]) / w.size, rank_model,
                                seed=seed, cache=cache) for w in chain]
    geoms = [w.geometry for w in chain]
    bits = log_bound([g.hyperplanes for g in geoms], dists, d0, [g.cap for g in geoms]) / LN2 if chain else None
    rank_of = {w.name: d.expected_rank for w, d in zip(chain, dists)}
    plan_layers = [PlanLayer(w.name, w.rows, w.cols, w.size if w.frozen else int(keeps[w.name]), w.frozen,
                             w.in_bound, rank_of.get(w.name), "frozen" if w.frozen else strategy,
                             None if w.in_bound else (w.why or None)) for w in layers]
    objective = {"log2_bound": None if bits is None else round(bits, 6), "rank_model": rank_model}
    target = {"density": density, "keep": budget, "prunable": total}
    return Plan(architecture_info, strategy, target, plan_layers, d0, objective, {}, seed)
