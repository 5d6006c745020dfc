"""The plan pipeline: a :class:`PlanRequest` through six named steps to a :class:`Plan`.

1. :func:`~planner.allocation.request.validate` -- check the request, resolve it to whole weights;
2. :func:`~planner.allocation.grid.candidates` -- the aligned grid of keep-counts per layer;
3. :func:`build_problem` -- rank distributions of every candidate, the budgets, the
   :class:`AllocationProblem`;
4. :func:`~planner.allocation.search.solve` -- a backend's integer program and its certificate;
5. :func:`~planner.allocation.search.polish` -- exact scores, the tie-break, local search, the
   left-over weights, then :mod:`~planner.allocation.integer` -- the search on integer
   keep-counts -- and the uniform plan as a floor;
6. :func:`assemble` -- the plan file.

When the integer plans keeping the budget are few, :func:`allocate_exhaustive` scores all of
them instead of steps 2 to 5 (the plan is then the best integer plan, not just the best grid
plan); ``solver="paper"`` runs the paper's 1-D search instead.

No plan worse than the uniform plan in exact bound is ever returned. :func:`plan` keeps the
keyword interface; :func:`run` takes a request.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from planner.allocation.grid import Candidate, DensityGrid, candidates
from planner.allocation.planfile import Plan, PlanLayer
from planner.allocation.problem import AllocationProblem, LayerOption, LinearBudget
from planner.allocation.request import (
    DEFAULT_GRID,
    PAPER_SOLVER,
    ExtraBudget,
    PlanRequest,
    Target,
    WeightLayer,
    validate,
)
from planner.allocation.integer import (
    LOCAL_MAX_EVALUATIONS,
    IntegerSpace,
    exhaustive,
    exhaustive_applies,
    exhaustive_size,
    integer_space,
    local_search,
)
from planner.allocation.scoring import WEIGHT_TIE_BREAKS, KeepScorer, Scorer, kept_mass
from planner.allocation.search import NOT_WORSE_EPS_BITS, fill, polish, report, solve
from planner.core.arch import Architecture
from planner.core.rank import RankCache, RankDistribution, prefetch
from planner.errors import InfeasibleError
from planner.limits import DEFAULT_TIME_LIMIT, check_time_limit

Progress = Callable[[str, int, int], None]


@dataclass
class Built:
    """Step 3's result: the problem, its grid and candidates, and the uniform choice on it."""

    problem: AllocationProblem
    grid: DensityGrid
    cands: list[list[Candidate]]
    uniform_choice: tuple[int, ...] | None


def _dist(w: WeightLayer, keep: int, density: float, rank_model: str, seed: int, cache):
    from planner.core.conv import layer_distribution

    return layer_distribution(w.geometry, density if keep else 0.0, rank_model, seed=seed, cache=cache)


def build_problem(target: Target, dgrid: DensityGrid, cands: list[list[Candidate]], *,
                  cache: RankCache | None = None, workers: int | None = None,
                  progress: Progress | None = None) -> Built:
    """Step 3: the rank distribution of every candidate (sampled in parallel, cached), the
    weight budget and every further budget as linear constraints, and the uniform choice."""
    r, chain = target.request, target.chain
    total_dists = sum(len(cs) for w, cs in zip(chain, cands) if not w.frozen)
    prefetch([(w.rows, w.cols, c.density) for w, cs in zip(chain, cands) if not w.frozen and w.conv is None
              for c in cs if c.keep],
             r.rank_model, seed=r.seed, cache=cache, workers=workers,
             progress=None if progress is None else (lambda d, t: progress("rank distributions", d, t)))
    done = 0
    options = []
    for w, cs in zip(chain, cands):
        dists = []
        for cand in cs:
            dists.append(_dist(w, cand.keep, cand.density, r.rank_model, r.seed, cache))
            if not w.frozen:
                done += 1
                report(progress, "rank distributions", done, total_dists)
        options.append(LayerOption(w.name, w.rows, w.cols, tuple(c.keep for c in cs), tuple(dists), w.geometry))
    linear = [LinearBudget("weights", tuple(tuple(0 if w.frozen else c.keep for c in cs)
                                            for w, cs in zip(chain, cands)), target.chain_budget)]
    for e, left, costs in zip(target.extras, target.extra_left(), target.extra_costs()):
        if left < 0:
            raise InfeasibleError(f"the layers outside the bound alone exceed budget {e.name!r}")
        linear.append(LinearBudget(e.name, tuple(tuple(c.keep * cost for c in cs)
                                                 for cost, cs in zip(costs, cands)), left))
    problem = AllocationProblem(tuple(options), target.input_dim, tuple(linear))

    # the uniform choice: index 0 of every decision layer (absent when the limits exclude it)
    uniform_choice = None
    if all(w.frozen or any(c.index == 0 for c in cs) for w, cs in zip(chain, cands)):
        uc = tuple(0 if w.frozen else next(i for i, c in enumerate(cs) if c.index == 0)
                   for w, cs in zip(chain, cands))
        if problem.feasible(uc):
            uniform_choice = uc
    return Built(problem, dgrid, cands, uniform_choice)


@dataclass
class Allocation:
    """Step 5's result: the chain's keep-counts, their bound and distributions, the uniform
    plan's bound, the certificate (and which plans it covers: ``grid`` or ``integers``) and
    the solver's status."""

    keeps: list[int]
    log2_bound: float
    dists: list[RankDistribution]
    uniform_log2_bound: float | None
    certificate: float | None
    status: str
    message: str = ""  # the backend's note, e.g. that its time limit was reached
    covers: str = "grid"
    solver: str | None = None  # what produced the plan, when not the requested backend


def prior_keeps(target: Target) -> list[int] | None:
    """The allocation a ``prior:*`` tie-break measures distance to (chain order), else None:
    the uniform plan, or ERK (Evci et al. 2020) of the chain's share of the budget."""
    r = target.request
    if not r.tie_break.startswith("prior:"):
        return None
    decision = target.decision
    if r.tie_break == "prior:uniform":
        keeps = {w.name: target.uniform[w.name] for w in decision}
    else:
        from planner.allocation.baselines import _capped_fill, _erk_weight

        fill_ = _capped_fill(target.chain_budget, [w.size for w in decision], [_erk_weight(w, None) for w in decision])
        keeps = dict(zip((w.name for w in decision), fill_))
    return [w.size if w.frozen else keeps[w.name] for w in target.chain]


def kept_masses(target: Target) -> list | None:
    """Under the ``magnitude`` / ``lamp`` tie-breaks, one :func:`~planner.allocation.scoring.kept_mass`
    array per chain layer (chain order; a frozen layer counts nothing, it never changes), else None."""
    r = target.request
    if r.tie_break not in WEIGHT_TIE_BREAKS:
        return None
    return [np.zeros(w.size + 1) if w.frozen else kept_mass(r.weights[w.name], r.tie_break) for w in target.chain]


def tie_inputs(target: Target) -> dict:
    """What the target's tie-break compares plans by, as scorer keyword arguments."""
    return {"prior": prior_keeps(target), "mass": kept_masses(target)}


def keep_scorer(target: Target, cache: RankCache | None = None) -> KeepScorer:
    r = target.request
    return KeepScorer([w.geometry for w in target.chain], target.input_dim, r.rank_model, r.seed, cache,
                      r.tie_break, **tie_inputs(target))


def _uniform_keeps(target: Target) -> list[int]:
    return [w.size if w.frozen else target.uniform[w.name] for w in target.chain]


def _uniform_bits(target: Target, scorer: KeepScorer) -> float | None:
    """The uniform plan's exact bound, when it meets every limit and budget."""
    return scorer.exact(tuple(_uniform_keeps(target))) if target.uniform_fits() else None


def _finish(target: Target, scorer: KeepScorer, keeps, floor: bool = True, **fields) -> Allocation:
    """The allocation of ``keeps``, or of the uniform plan if that is higher in exact bound
    (unless ``floor`` is false: the paper's procedure is reported as it is)."""
    keeps = [int(k) for k in keeps]
    plan_bits = scorer.exact(tuple(keeps))
    uniform_bits = _uniform_bits(target, scorer)
    if floor and uniform_bits is not None and plan_bits < uniform_bits - NOT_WORSE_EPS_BITS:
        keeps, plan_bits = _uniform_keeps(target), uniform_bits
    dists = [scorer.dist(i, k) for i, k in enumerate(keeps)]
    return Allocation(keeps, plan_bits, dists, uniform_bits, **fields)


def allocate_exhaustive(target: Target, space: IntegerSpace, *, cache: RankCache | None = None,
                        workers: int | None = None, progress: Progress | None = None) -> Allocation | None:
    """Step 5 when the integer plans are few: every allocation keeping the budget, scored
    (:func:`planner.allocation.integer.exhaustive`); None when none spends it exactly."""
    scorer = keep_scorer(target, cache)
    keeps, bits = exhaustive(space, scorer, floor_bits=_uniform_bits(target, scorer), workers=workers,
                             progress=progress)
    if keeps is None:
        return None
    allocations, _ = exhaustive_size(space)
    return _finish(target, scorer, keeps, certificate=bits, status="OPTIMAL", covers="integers",
                   solver="exhaustive",
                   message=f"every integer allocation keeping the budget scored (at most {allocations})")


def allocate(target: Target, built: Built, *, cache: RankCache | None = None, workers: int | None = None,
             progress: Progress | None = None) -> Allocation:
    """Steps 4 and 5: solve, polish, hand out the left-over weights, search the integer
    keep-counts around the result (unless ``integer="off"``), and fall back to the uniform plan
    if the result is below it in exact bound."""
    r, chain, problem = target.request, target.chain, built.problem
    scorer = Scorer(problem, built.cands, built.grid, r.rank_model, r.seed, cache, r.tie_break, **tie_inputs(target))
    result, certificate = solve(problem, solver=r.solver, uniform_choice=built.uniform_choice,
                                time_limit=check_time_limit(r.time_limit), threads=r.threads, seed=r.seed,
                                pool_size=r.pool_size, progress=progress)
    best = polish(problem, scorer, [result.choice, *result.pool], built.uniform_choice, progress)
    keeps = fill(problem, list(problem.keeps(best)), chain,
                 list(zip(target.extra_costs(), target.extra_left())), target.max_keep)
    kscorer = keep_scorer(target, cache)
    message = result.message if result.status.value == "FEASIBLE" else ""
    # with convolutions in the chain every new keep-count costs a fresh distribution of a large
    # operator (the VGG-11 plan spent 100 of its 120 s there): "auto" keeps the grid plan
    convs = any(w.conv is not None for w in chain)
    if r.rank_model != "svd" and (r.integer == "local" or (r.integer == "auto" and not convs)):
        keeps, _, stopped = local_search(integer_space(target), kscorer, keeps, workers=workers, progress=progress)
        if stopped:
            message = "; ".join(m for m in (message, f"integer search stopped after {LOCAL_MAX_EVALUATIONS} plans")
                                if m)
    return _finish(target, kscorer, keeps, certificate=certificate, status=str(result.status), message=message)


def _rule(w: WeightLayer, objective: str) -> str:
    if w.frozen:
        return "frozen"
    if objective == "sensitivity":
        return "sensitivity"
    return "bound" if w.in_bound else "global density"


def assemble(target: Target, alloc: Allocation, extra: dict | None = None) -> Plan:
    """Step 6: the plan file, every layer in the request's order (``extra``: further objective
    entries, e.g. the sensitivity objective's)."""
    r, chain = target.request, target.chain
    chain_keeps = {w.name: k for w, k in zip(chain, alloc.keeps)}
    rank_of = {w.name: d.expected_rank for w, d in zip(chain, alloc.dists)}
    plan_layers = []
    for w in r.layers:
        if w.frozen:
            k = w.size
        elif w.name in chain_keeps:
            k = chain_keeps[w.name]
        else:
            k = target.fixed[w.name]
        plan_layers.append(PlanLayer(w.name, w.rows, w.cols, int(k), w.frozen, w.in_bound,
                                     rank_of.get(w.name) if w.in_bound else None, _rule(w, r.objective),
                                     None if w.in_bound else (w.why or None)))
    cert = alloc.certificate
    objective = {
        "log2_bound": None if alloc.log2_bound is None else round(alloc.log2_bound, 6),
        "uniform_log2_bound": None if alloc.uniform_log2_bound is None else round(alloc.uniform_log2_bound, 6),
        "certificate_log2_upper": None if cert is None else round(cert, 6),
        "certificate_gap_bits": None if cert is None else round(max(0.0, cert - alloc.log2_bound), 6),
        "certificate_covers": None if cert is None else alloc.covers,
        "rank_model": r.rank_model,
        "tie_break": r.tie_break,
        **({"tie_break_requested": r.resolved_from} if r.resolved_from else {}),
        "grid": r.grid,
        "integer": r.integer,
        "objective": r.objective,
    }
    if r.bound_floor is not None:
        from planner.allocation.secondary import BoundFloor

        objective["bound_floor"] = str(BoundFloor.parse(r.bound_floor))
    objective.update(extra or {})
    plan_target = {"density": r.density, "keep": target.budget, "prunable": target.total,
                   "min_density": r.min_density, "max_density": r.max_density, "max_flops": r.max_flops}
    if r.budgets:
        plan_target["budgets"] = [{"name": e.name, "limit": int(e.limit)} for e in r.budgets]
    return Plan(r.architecture_info, "lr-bound", plan_target, plan_layers, target.input_dim if chain else None,
                objective,
                {"name": alloc.solver or r.solver, "status": alloc.status,
                 **({"message": alloc.message} if alloc.message else {})},
                r.seed)


def run(request: PlanRequest, *, cache: RankCache | None = None, workers: int | None = None,
        progress: Progress | None = None) -> Plan:
    """The pipeline on a request. ``cache``, ``workers`` and ``progress`` change how fast the
    plan comes, never which plan: same request, same plan, byte for byte."""
    target = validate(request)
    request = target.request  # tie-break auto resolved
    if request.pattern_aware:
        from planner.allocation.patterns import run_patterns

        return run_patterns(target, cache=cache, workers=workers, progress=progress)
    if not target.chain:
        return _run_without_chain(target, cache=cache, workers=workers, progress=progress)
    if request.objective == "sensitivity" or request.bound_floor is not None:
        return _run_secondary(target, cache=cache, workers=workers, progress=progress)
    if request.solver == PAPER_SOLVER:
        from planner.allocation.paper import paper_search

        keeps, _, note = paper_search(target, cache=cache, workers=workers, progress=progress)
        alloc = _finish(target, keep_scorer(target, cache), keeps, floor=False, certificate=None, status="FEASIBLE",
                        message=note)
        return assemble(target, alloc)
    return assemble(target, bound_allocation(target, cache=cache, workers=workers, progress=progress))


def bound_allocation(target: Target, built: Built | None = None, *, cache=None, workers=None,
                     progress=None) -> Allocation:
    """The plan that maximizes the bound (ties by the tie-break): every integer plan scored when
    there are few (``integer="auto"``), else the integer program on the grid (``built``, made
    here when not given), polished."""
    r = target.request
    if r.integer == "auto":
        space = integer_space(target)
        if exhaustive_applies(space, r.rank_model):
            alloc = allocate_exhaustive(target, space, cache=cache, workers=workers, progress=progress)
            if alloc is not None:
                return alloc
    if built is None:
        dgrid, cands = candidates(target)
        built = build_problem(target, dgrid, cands, cache=cache, workers=workers, progress=progress)
    return allocate(target, built, cache=cache, workers=workers, progress=progress)


def _run_without_chain(target: Target, *, cache=None, workers=None, progress=None) -> Plan:
    """A network without a ReLU chain: the sensitivity objective plans every layer, else every
    prunable layer keeps the global density (``rule: global density``, with the reason)."""
    from planner.allocation.secondary import allocate_sensitivity, with_fixed

    r = target.request
    extra: dict = {}
    status, message, name = "FEASIBLE", "no ReLU chain: the bound guides no layer", "none"
    keeps = dict(target.fixed)
    if r.objective == "sensitivity":
        sa = allocate_sensitivity(target, r.sensitivity, None, cache=cache, workers=workers, progress=progress)
        keeps, status, name = sa.keeps, sa.status, "cpsat"
        message = "; ".join(m for m in (message, sa.message) if m)
        extra = sa.objective_entries(r.sensitivity)
    alloc = Allocation([], None, [], None, None, status, message, solver=name)
    return assemble(with_fixed(target, keeps), alloc, extra)


def _run_secondary(target: Target, *, cache=None, workers=None, progress=None) -> Plan:
    """The bound as a floor and the sensitivity objective (:mod:`.secondary`)."""
    from planner.allocation.secondary import (FLOOR_MAX_COMBINATIONS, BoundFloor, FloorTooLarge, allocate_floor,
                                              allocate_sensitivity, floor_line_search, with_fixed)

    r = target.request
    floor = None if r.bound_floor is None else BoundFloor.parse(r.bound_floor)
    scorer = keep_scorer(target, cache)
    if r.objective == "sensitivity":
        sa = allocate_sensitivity(target, r.sensitivity, floor, scorer, workers=workers, progress=progress)
        keeps = [w.size if w.frozen else sa.keeps[w.name] for w in target.chain]
        alloc = _finish(target, scorer, keeps, floor=False, certificate=None, status=sa.status, message=sa.message,
                        solver="cpsat")
        return assemble(with_fixed(target, sa.keeps), alloc, sa.objective_entries(r.sensitivity))
    dgrid, cands = candidates(target)
    built = build_problem(target, dgrid, cands, cache=cache, workers=workers, progress=progress)
    try:
        keeps, best, floor_bits = allocate_floor(target, built, floor, scorer, cache=cache, workers=workers,
                                                 progress=progress)
    except FloorTooLarge as exc:
        # too many grid plans to score: the bound's own plan (integer program and polish), then
        # a line from the tie-break's plan toward it
        base = bound_allocation(target, built, cache=cache, workers=workers, progress=progress)
        keeps, best, floor_bits, t = floor_line_search(target, base.keeps, floor, scorer)
        moved = ("the tie-break's own plan keeps it (t = 0)" if t == 0 else
                 f"the tie-break's own plan moved t = {t:g} of the way toward the bound's plan to keep it")
        message = (f"{exc.count} grid plans within the weight budget, too many to score "
                   f"(limit {FLOOR_MAX_COMBINATIONS}), so the floor is {floor} below the bound's own plan and "
                   f"{moved}")
        alloc = _finish(target, scorer, keeps, floor=False, certificate=base.certificate, status="FEASIBLE",
                        solver="floor", message=message)
        return assemble(target, alloc, {"best_log2_bound": round(best, 6), "floor_log2_bound": round(floor_bits, 6),
                                        "floor_search": "line", "floor_line_t": t})
    alloc = _finish(target, scorer, keeps, floor=False, certificate=best, status="OPTIMAL", solver="floor",
                    message=f"every grid plan scored; the tie-break chose among those within {floor} of the best")
    return assemble(target, alloc, {"best_log2_bound": round(best, 6), "floor_log2_bound": round(floor_bits, 6)})


def plan(
    arch: Architecture | str | None = None,
    *,
    layers: Sequence[WeightLayer] | None = None,
    density: float | None = None,
    keep: int | None = None,
    solver: str = "cpsat",
    rank_model: str = "sampled",
    grid: int = DEFAULT_GRID,
    min_density: float | None = None,
    max_density: float | None = None,
    prune_output: bool = False,
    input_dim: int | None = None,
    max_flops: int | None = None,
    budgets: Sequence[ExtraBudget] = (),
    time_limit: float | None = DEFAULT_TIME_LIMIT,
    threads: int = 1,
    seed: int = 0,
    tie_break: str = "auto",
    integer: str = "auto",
    objective: str = "bound",
    bound_floor: float | str | None = None,
    sensitivity=None,
    pool_size: int = 1,
    workers: int | None = None,
    cache: RankCache | None = None,
    progress: Progress | None = None,
    architecture_info: dict | None = None,
    input_shape: Sequence[int] | None = None,
    patterns=None,
    max_latency: float | None = None,
    latency_table=None,
    weights=None,
) -> Plan:
    """A per-layer sparsity plan maximizing the expected linear-region bound.

    Give ``arch`` (``"784,300,100,10"``, an :class:`Architecture`, or a torch ``nn.Module``,
    read as ``plan --model`` reads it; ``input_shape`` for models starting with a conv) or ``layers`` (a list of
    :class:`WeightLayer`, hidden ReLU chain marked ``in_bound``), and exactly one of ``density``
    (global kept fraction of the prunable weights) or ``keep`` (kept weights). The other
    arguments are the fields of :class:`PlanRequest` (``patterns``, ``max_latency`` and
    ``latency_table``: a pattern-aware plan, :mod:`planner.allocation.patterns`; ``weights``:
    ``{layer name: array}`` for the ``magnitude`` / ``lamp`` tie-breaks, taken from the model
    when ``arch`` is one). The default tie-break ``auto`` keeps LAMP's allocation of the trained
    ``weights`` (a model's own, or ``weights=``) while the bound stays within 2 bits of the best
    plan's, and without weights takes the plan closest to ERK within 2 bits of the best
    (:func:`~planner.allocation.request.resolve_auto`). Raises :class:`InfeasibleError` when no plan meets the budgets.
    """
    if arch is not None and not isinstance(arch, (str, Architecture)) and hasattr(arch, "named_modules"):
        from planner.pruning.model import model_layers, model_weights

        found = model_layers(arch, input_shape, prune_output=prune_output)
        architecture_info = architecture_info or {"model": type(arch).__name__, "input_size": found.input_size}
        if weights is None and (tie_break in WEIGHT_TIE_BREAKS or tie_break == "auto"):
            weights = model_weights(arch, list(found.layers))[0]
        layers, arch = list(found.layers), None
    request = PlanRequest.build(
        arch, layers=layers, prune_output=prune_output, architecture_info=architecture_info,
        density=density, keep=keep, min_density=min_density, max_density=max_density, max_flops=max_flops,
        budgets=budgets, input_dim=input_dim, rank_model=rank_model, seed=seed, grid=grid, tie_break=tie_break,
        integer=integer, objective=objective, bound_floor=bound_floor, sensitivity=sensitivity,
        solver=solver, time_limit=time_limit, threads=threads, pool_size=pool_size,
        patterns=patterns, max_latency=max_latency, latency_table=latency_table, weights=weights,
    )
    return run(request, cache=cache, workers=workers, progress=progress)
