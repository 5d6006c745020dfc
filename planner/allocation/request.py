"""What a plan is asked for: the layers, the target, the limits, the budgets and the objective.

A :class:`PlanRequest` is a value: the command line and :func:`planner.plan` both build one and
hand it to the pipeline (:mod:`planner.allocation.pipeline`). :func:`validate` checks it and
resolves it into a :class:`Target` (whole keep-counts, per-layer limits, budgets, the uniform
plan), which is all the later steps read. A new budget or objective is a field here and a
constraint or score in :mod:`planner.allocation.problem`; the CLI only gains the option.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from planner.allocation import AUTO_WITH_WEIGHTS, AUTO_WITHOUT_WEIGHTS, INTEGER_SEARCHES, OBJECTIVES, TIE_BREAKS
from planner.core.arch import Architecture
from planner.core.bound import check_input_dim
from planner.core.rank import RANK_MODELS, check_density
from planner.errors import (DensityError, InfeasibleError, LimitError, PlannerError, ProblemError, RankModelError,
                            SolverError)
from planner.limits import (
    DEFAULT_TIME_LIMIT,
    MAX_GRID,
    MAX_SEED,
    MAX_THREADS,
    MAX_WIDTH,
    check_int,
    check_time_limit,
)

DEFAULT_GRID = 32
#: not an integer-programming backend: the paper's 1-D search (``paper.py``), for comparison
PAPER_SOLVER = "paper"


@dataclass(frozen=True)
class WeightLayer:
    """A prunable weight matrix as the planner sees it. ``in_bound`` marks a hidden ReLU layer
    of the fully connected chain (in order); ``frozen`` layers stay dense and outside the
    budget; ``flops_per_weight`` is the multiply-accumulates one kept weight costs per sample."""

    name: str
    rows: int
    cols: int
    in_bound: bool = False
    frozen: bool = False
    flops_per_weight: int = 1
    why: str = ""  # why the layer is outside the bound, when it is
    conv: object = None  # a planner.core.conv.ConvShape when a convolution is in the bound

    @property
    def size(self) -> int:
        return self.rows * self.cols

    @property
    def geometry(self):
        """What the bound sees of the layer: a MatrixShape, or the ConvShape of a convolution."""
        from planner.core.conv import MatrixShape

        return self.conv if self.conv is not None else MatrixShape(self.rows, self.cols)


@dataclass(frozen=True)
class ExtraBudget:
    """A further linear budget: sum over prunable layers of ``cost[name] * keep`` <= ``limit``.
    Costs are integers per kept weight (multiply-accumulates, bytes, ...); a layer missing from
    ``cost`` costs nothing. Frozen layers stay outside every budget."""

    name: str
    cost: dict
    limit: int


def layers_from_arch(arch: Architecture, *, prune_output: bool = False) -> list[WeightLayer]:
    shapes, names = arch.weight_shapes, arch.layer_names
    out = [WeightLayer(n, r, c, in_bound=True) for n, (r, c) in zip(names[:-1], shapes[:-1])]
    r, c = shapes[-1]
    out.append(WeightLayer(names[-1], r, c, in_bound=False, frozen=not prune_output))
    return out


def apportion(total: int, mass: Sequence[float], caps: Sequence[int] | None = None) -> list[int]:
    """Split ``total`` in proportion to ``mass`` into integers summing to it exactly (largest
    remainder; ties to the earlier entry), each at most its cap (default: its mass, for sizes)."""
    caps = mass if caps is None else caps
    whole = sum(mass)
    if whole <= 0:
        return [0] * len(mass)
    exact = [total * m / whole for m in mass]
    base = [min(int(math.floor(e)), c) for e, c in zip(exact, caps)]
    rest = total - sum(base)
    for i in sorted(range(len(mass)), key=lambda i: (-(exact[i] - math.floor(exact[i])), i)):
        if rest <= 0:
            break
        if base[i] < caps[i]:
            base[i] += 1
            rest -= 1
    return base


@dataclass(frozen=True)
class PlanRequest:
    """Everything that decides a plan (and nothing about how it is computed: the cache, the
    worker count and progress reporting are the pipeline's run-time arguments).

    - network: ``layers`` (hidden ReLU chain marked ``in_bound``), ``architecture_info`` for
      the plan file, ``input_dim`` (d0; default the input size);
    - target: exactly one of ``density`` (kept fraction of the prunable weights) or ``keep``;
    - limits: ``min_density`` / ``max_density`` of every prunable layer;
    - budgets: ``max_flops`` and any further :class:`ExtraBudget`;
    - objective: ``rank_model``, ``seed``, ``grid`` (candidates per layer), ``tie_break``
      (``magnitude`` and ``lamp`` rank the trained ``weights``: a mapping from layer name to
      its weight array, every chain layer included; ``auto``, the default, is resolved by
      :func:`resolve_auto`),
      ``integer`` (the search on integer keep-counts after the grid, one of INTEGER_SEARCHES);
    - second criteria: ``objective`` (``bound`` or ``sensitivity``: the summed loss increase of
      the :class:`~planner.allocation.sensitivity.SensitivityTable` ``sensitivity``) and
      ``bound_floor`` (keep the bound within this many bits, or ``"X%"``, of the best; then the
      tie-break or the sensitivity decides);
    - solver: ``solver``, ``time_limit``, ``threads``, ``pool_size``;
    - patterns (:mod:`planner.allocation.patterns`): ``patterns`` (a comma list or sequence of
      ``unstructured``, ``bcr:RxC``, ``N:M``), ``max_latency`` (ms, the summed layer latency)
      and ``latency_table`` (a :class:`~planner.allocation.latency.LatencyTable` or a path;
      None: the built-in table). With neither ``patterns`` nor ``max_latency`` the plan is
      unstructured, as before.
    """

    layers: tuple[WeightLayer, ...]
    density: float | None = None
    keep: int | None = None
    min_density: float | None = None
    max_density: float | None = None
    max_flops: int | None = None
    budgets: tuple[ExtraBudget, ...] = ()
    input_dim: int | None = None
    rank_model: str = "sampled"
    seed: int = 0
    grid: int = DEFAULT_GRID
    tie_break: str = "auto"
    integer: str = "auto"
    objective: str = "bound"
    bound_floor: float | str | None = None
    sensitivity: object = None  # a SensitivityTable, for objective "sensitivity"
    solver: str = "cpsat"
    time_limit: float | None = DEFAULT_TIME_LIMIT
    threads: int = 1
    pool_size: int = 1
    architecture_info: dict = field(default_factory=dict)
    input_size: int | None = None
    patterns: object = None
    max_latency: float | None = None
    latency_table: object = None
    weights: object = None  # {layer name: array}, for the magnitude / lamp tie-breaks
    resolved_from: str | None = None  # "auto" once resolve_auto made the tie-break concrete

    @property
    def pattern_aware(self) -> bool:
        return self.patterns is not None or self.max_latency is not None

    @classmethod
    def build(cls, arch: Architecture | str | None = None, *, layers: Sequence[WeightLayer] | None = None,
              prune_output: bool = False, architecture_info: dict | None = None, **fields) -> "PlanRequest":
        """A request from an architecture (``"784,300,100,10"`` or :class:`Architecture`) or a
        layer list, plus any of the fields above."""
        if arch is not None:
            if isinstance(arch, str):
                arch = Architecture.parse(arch)
            layers = layers_from_arch(arch, prune_output=prune_output)
            input_size = arch.input_size
            architecture_info = architecture_info or {"sizes": list(arch.sizes)}
        elif layers is not None:
            layers = list(layers)
            architecture_info = architecture_info or {}
            input_size = architecture_info.get("input_size")
        else:
            raise ProblemError("give an architecture or a list of layers")
        fields["budgets"] = tuple(fields.get("budgets") or ())
        return cls(layers=tuple(layers), architecture_info=architecture_info, input_size=input_size, **fields)

    def extra_budgets(self) -> list[ExtraBudget]:
        """The further budgets, ``max_flops`` included."""
        extras = list(self.budgets)
        if self.max_flops is not None:
            extras.append(ExtraBudget("flops", {w.name: w.flops_per_weight for w in self.layers}, int(self.max_flops)))
        return extras


@dataclass(frozen=True)
class Target:
    """A validated request in whole weights: what every later step of the pipeline reads."""

    request: PlanRequest
    chain: list[WeightLayer]  # the hidden ReLU layers, in order
    prunable: list[WeightLayer]
    total: int  # prunable weights
    budget: int  # weights to keep
    input_dim: int
    uniform: dict[str, int]  # the same density everywhere, apportioned to whole weights
    min_keep: dict[str, int]
    max_keep: dict[str, int]
    extras: list[ExtraBudget]
    fixed: dict[str, int]  # prunable layers outside the bound: they keep the uniform density

    @property
    def decision(self) -> list[WeightLayer]:
        return [w for w in self.chain if not w.frozen]

    @property
    def chain_budget(self) -> int:
        return self.budget - sum(self.fixed.values())

    def extra_left(self) -> list[int]:
        """What each further budget leaves for the chain once the fixed layers are paid for."""
        return [e.limit - sum(self.fixed[n] * e.cost.get(n, 0) for n in self.fixed) for e in self.extras]

    def extra_costs(self) -> list[list[int]]:
        """Per-weight cost of every chain layer under each further budget."""
        return [[0 if w.frozen else int(e.cost.get(w.name, 0)) for w in self.chain] for e in self.extras]

    def uniform_fits(self) -> bool:
        return all(self.min_keep[w.name] <= self.uniform[w.name] <= self.max_keep[w.name] for w in self.prunable) and all(
            sum(self.uniform[w.name] * e.cost.get(w.name, 0) for w in self.prunable) <= e.limit for e in self.extras)


def _check_tie_weights(r: PlanRequest) -> None:
    """The magnitude / lamp tie-breaks rank trained weights: every prunable layer's array, of
    its size."""
    if r.weights is None:
        raise ProblemError(f"tie-break {r.tie_break} ranks trained weights: give the model's weights "
                           "(plan --model M:F [--weights W])")
    import numpy as np

    for w in r.layers:
        if w.frozen:
            continue
        if w.name not in r.weights:
            raise ProblemError(f"tie-break {r.tie_break}: no weights given for layer {w.name}")
        size = np.asarray(r.weights[w.name]).size
        if size != w.size:
            raise ProblemError(f"tie-break {r.tie_break}: layer {w.name} has {w.size} weights, "
                               f"the array given has {size}")


def auto_applies_floor(r: PlanRequest) -> bool:
    """Whether the default's bound floor applies to this request: objective ``bound`` on a ReLU
    chain, not the paper's procedure, not a pattern-aware plan."""
    return (r.objective == "bound" and r.solver != PAPER_SOLVER and not r.pattern_aware
            and any(w.in_bound for w in r.layers))


def resolve_auto(request: PlanRequest) -> PlanRequest:
    """The request with tie-break ``auto`` (the default) made concrete, as chosen by the evidence
    of docs/experiments.md: with the model's trained ``weights``, LAMP's allocation of them kept
    while the bound stays within 2 bits of the best plan's (``lamp`` with floor ``2``); without
    weights, the plan closest to ERK within 2 bits of the best (``prior:erk`` with floor ``2``).
    A ``bound_floor`` given replaces the default's. Where no floor applies (no ReLU chain,
    objective ``sensitivity``, the paper's procedure, pattern-aware plans) ``auto`` orders exact
    ties as ``robust`` does. Any other tie-break is returned unchanged."""
    from dataclasses import replace

    r = request
    if r.tie_break != "auto":
        return r
    if not auto_applies_floor(r):
        return replace(r, tie_break="robust", resolved_from="auto")
    tie, floor = AUTO_WITH_WEIGHTS if r.weights is not None else AUTO_WITHOUT_WEIGHTS
    return replace(r, tie_break=tie, bound_floor=floor if r.bound_floor is None else r.bound_floor,
                   resolved_from="auto")


def validate(request: PlanRequest) -> Target:
    """Step 1: check the request and resolve it into whole keep-counts and limits.

    Raises :class:`DensityError`, :class:`ProblemError`, :class:`RankModelError` on bad input and
    :class:`InfeasibleError` when the limits alone cannot meet the budgets.
    """
    r = request = resolve_auto(request)
    if r.rank_model not in RANK_MODELS:
        raise RankModelError(f"unknown rank model {r.rank_model!r}; choose one of {', '.join(RANK_MODELS)}")
    if r.tie_break not in TIE_BREAKS:
        raise PlannerError(f"unknown tie-break {r.tie_break!r}; choose one of {', '.join(TIE_BREAKS)}")
    if r.tie_break in ("magnitude", "lamp"):
        _check_tie_weights(r)
    from solvers import REGISTRY

    if r.solver not in REGISTRY and r.solver != PAPER_SOLVER:
        raise SolverError(f"unknown solver {r.solver!r}; choose one of {', '.join(REGISTRY)}, {PAPER_SOLVER}")
    if r.integer not in INTEGER_SEARCHES:
        raise PlannerError(f"unknown integer search {r.integer!r}; choose one of {', '.join(INTEGER_SEARCHES)}")
    if r.objective not in OBJECTIVES:
        raise ProblemError(f"unknown objective {r.objective!r}; choose one of {', '.join(OBJECTIVES)}")
    if r.bound_floor is not None:
        from planner.allocation.secondary import BoundFloor

        BoundFloor.parse(r.bound_floor)
    if r.pattern_aware:
        from planner.allocation.patterns import check_request

        check_request(r)
    elif r.latency_table is not None:
        raise ProblemError("a latency table is read by pattern-aware plans only (give patterns or max_latency)")
    if r.objective == "sensitivity":
        from planner.allocation.sensitivity import SensitivityTable

        if not isinstance(r.sensitivity, SensitivityTable):
            raise ProblemError("objective sensitivity needs a sensitivity table (sparsity-planner sensitivity, "
                               "or --calibration / --dataset with --model)")
    elif r.sensitivity is not None:
        raise ProblemError("a sensitivity table is used by objective sensitivity only")
    if r.solver == PAPER_SOLVER and (r.objective != "bound" or r.bound_floor is not None):
        raise ProblemError("the paper's procedure maximizes the bound alone: no --objective sensitivity "
                           "or --bound-floor with --solver paper")
    if isinstance(r.grid, bool) or not isinstance(r.grid, int) or r.grid < 1:
        raise ProblemError(f"grid size must be a positive integer, got {r.grid!r}")
    check_int(r.grid, "grid size", 1, MAX_GRID)
    check_int(r.seed, "seed", 0, MAX_SEED)
    check_int(r.threads, "threads", 1, MAX_THREADS)
    check_int(r.pool_size, "pool size", 1, 1_000)
    check_time_limit(r.time_limit)
    layers = list(r.layers)
    for w in layers:
        if max(w.rows, w.cols) > MAX_WIDTH:
            raise LimitError(f"layer {w.name} is {w.rows}x{w.cols}: sides above {MAX_WIDTH} are not supported")
    chain = [w for w in layers if w.in_bound]
    if chain:
        n0 = r.input_size if r.input_size is not None else chain[0].cols
        d0 = n0 if r.input_dim is None else r.input_dim
        if any(w.conv is not None for w in chain):  # conv units may exceed an MLP's widths
            from planner.errors import InputDimError

            if isinstance(d0, bool) or not isinstance(d0, (int, np.integer)) or not 1 <= d0 <= n0:
                raise InputDimError(f"input dimension d0 must be an integer between 1 and the input size {n0}, "
                                    f"got {d0!r}")
            d0 = int(d0)
        else:
            d0 = check_input_dim(Architecture(n0, tuple(w.rows for w in chain), 1), d0)
    else:  # no ReLU chain (a ResNet, a ViT): the bound guides nothing, see pipeline.run
        d0 = 0
        if r.bound_floor is not None:
            raise ProblemError("--bound-floor needs a ReLU chain in the bound, and this network has none")

    prunable = [w for w in layers if not w.frozen]
    total = sum(w.size for w in prunable)
    if total == 0:
        raise ProblemError("every layer is frozen: nothing to prune")
    if (r.density is None) == (r.keep is None):
        raise ProblemError("give exactly one of density and keep")
    if r.density is not None:
        density = check_density(r.density, "global density")
        budget = int(round(density * total))
        if budget < 1:
            raise DensityError(f"density {density:g} keeps no weight of the {total} prunable ones: "
                               "give a larger density or --keep")
    else:
        keep = r.keep
        if isinstance(keep, bool) or not isinstance(keep, (int, np.integer)) or not 1 <= keep <= total:
            raise DensityError(f"keep must be an integer in [1, {total}] (the prunable weights), got {keep!r}")
        budget = int(keep)
    if r.min_density is not None and not 0.0 <= r.min_density <= 1.0:
        raise DensityError(f"minimum density must be in [0, 1], got {r.min_density!r}")
    lo_d = float(r.min_density or 0.0)
    hi_d = 1.0 if r.max_density is None else check_density(r.max_density, "maximum density")
    if lo_d > hi_d:
        raise ProblemError(f"minimum density {lo_d} is above maximum density {hi_d}")

    uniform = dict(zip((w.name for w in prunable), apportion(budget, [w.size for w in prunable])))
    min_keep = {w.name: int(math.ceil(lo_d * w.size - 1e-9)) for w in prunable}
    max_keep = {w.name: int(math.floor(hi_d * w.size + 1e-9)) for w in prunable}
    need = sum(min_keep.values())
    if need > budget:
        raise InfeasibleError(
            f"the minimum density {lo_d:g} needs {need} weights but the budget keeps {budget}"
        )
    # a limit at or above the cost of keeping every weight cannot bind: cap it there, which also
    # keeps every coefficient the solvers see inside 64 bits whatever limit was asked for
    extras = [ExtraBudget(e.name, e.cost, min(int(e.limit), sum(w.size * int(e.cost.get(w.name, 0)) for w in prunable)))
              if isinstance(e.limit, (int, np.integer)) and not isinstance(e.limit, bool) else e
              for e in r.extra_budgets()]
    for e in extras:
        if isinstance(e.limit, bool) or not isinstance(e.limit, (int, np.integer)):
            raise ProblemError(f"budget {e.name!r}: the limit must be an integer, got {e.limit!r}")
        if any(isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0 for v in e.cost.values()):
            raise ProblemError(f"budget {e.name!r}: costs must be non-negative integers per kept weight")
        floor_cost = sum(min_keep[w.name] * e.cost.get(w.name, 0) for w in prunable)
        if floor_cost > e.limit:
            raise InfeasibleError(f"the minimum densities need {floor_cost} of budget {e.name!r}, above its "
                                  f"limit {e.limit}")
    # layers outside the bound: the bound cannot guide them, so they keep the uniform density
    fixed = {w.name: min(max(uniform[w.name], min_keep[w.name]), max_keep[w.name])
             for w in prunable if not w.in_bound}
    return Target(r, chain, prunable, total, budget, d0, uniform, min_keep, max_keep, extras, fixed)
