"""Bound-guided allocation: per-layer tables, the max-plus integer program, exact polish.

The three stages of SPEC section 4:

A. every decision layer gets a candidate grid of keep-counts (geometric, always holding the
   uniform choice) and the rank distribution of every candidate;
B. a backend from ``solvers/`` solves the max-plus integer program; its optimum plus ln(number
   of terms) is the certificate, an upper bound on the best exact bound over the grid;
C. the backend's best solutions and the uniform plan are scored by the exact bound, improved by
   a local search that moves keep-count between layers, and the weights left over by the grid
   are handed out so the plan keeps exactly the budget.

Scores compare lexicographically under the tie-break (default ``robust``: the exact bound, then
the bound with every density halved, quartered, ... seven times, each rounded to 0.01 bits).
No plan worse than the uniform plan in exact bound is ever returned.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

import numpy as np

from .arch import Architecture
from .bound import LN2, _check_input_dim, log_bound
from .errors import DensityError, InfeasibleError, PlannerError, ProblemError, RankModelError
from .plan import Plan, PlanLayer
from .problem import AllocationProblem, LayerOption, LinearBudget, log_terms, maxplus_tables
from .rank import RANK_MODELS, RankCache, RankDistribution, check_density, prefetch, rank_distribution

TIE_BREAKS = ("robust", "robust-analytic", "none")
#: Under ``robust``, the halved levels of a layer whose short side exceeds this use the analytic
#: rank model: sampling them costs minutes on AlexNet-sized layers (thousands of matchings per
#: density at low densities), and the tie-break only orders plans of equal bound.
ROBUST_SAMPLED_MAX_SIDE = 1024
ROBUST_LEVELS = 8  # B(p), B(p/2), ..., B(p/2^7)
TIE_RESOLUTION_BITS = 0.01
DEFAULT_GRID = 32
#: the grid reaches down to uniform/GRID_SPAN (unless --min-density says otherwise)
GRID_SPAN = 32
#: uniform is the floor: a plan may not be below it by more than float noise
NOT_WORSE_EPS_BITS = 1e-9


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

    @property
    def size(self) -> int:
        return self.rows * self.cols


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
class Candidate:
    """A candidate of one layer: ``keep`` weights, scored at ``density``. Grid candidates sit on
    the aligned grid ``p_u * 2^(index/steps)`` shared by all layers, so halving every density
    of a grid plan is the grid plan ``steps`` indices lower: the robustness tie-break then
    reuses grid distributions instead of sampling new ones."""

    keep: int
    density: float
    index: int | None = None


class DensityGrid:
    """The aligned geometric grid: density(index) = uniform * 2^(index / steps)."""

    def __init__(self, uniform: float, steps: int):
        self.uniform, self.steps = uniform, steps

    def density(self, index: int) -> float:
        return self.uniform * 2.0 ** (index / self.steps)

    def candidates(self, size: int, lo: int, hi: int, uniform_keep: int) -> list[Candidate]:
        """Grid candidates with keep in [lo, hi] (keep = round(density * size); index 0 is the
        uniform plan's apportioned keep), plus the dense layer when hi allows it."""


        if hi < lo:
            return []
        if hi < 1:
            return [Candidate(0, 0.0, None)]
        first = math.floor(math.log2(max(lo, 0.5) / (self.uniform * size)) * self.steps) - 1
        last = math.ceil(math.log2(hi / (self.uniform * size)) * self.steps) + 1
        out: dict[int, Candidate] = {}
        for index in range(first, last + 1):
            p = self.density(index)
            if p > 1.0:
                break
            keep = uniform_keep if index == 0 else int(round(p * size))
            if lo <= keep <= hi and keep > 0 and keep not in out:
                out[keep] = Candidate(keep, p, index)
        if hi == size and size not in out:
            out[size] = Candidate(size, 1.0, None)
        if not out and lo <= hi:  # a range too narrow for any grid point
            keep = max(lo, 1) if hi >= 1 else 0
            out[keep] = Candidate(keep, keep / size if keep else 0.0, None)
        return [out[k] for k in sorted(out)]


# ----------------------------------------------------------------------------- scoring


class Scorer:
    """Scores of grid choices: the exact bound at the candidates' densities, and the robustness
    tie-break levels B(p / 2^i), computed lazily and shared between plans."""

    def __init__(self, problem, cands=None, grid=None, rank_model="sampled", seed=0, cache=None,
                 tie_break="none"):
        self.problem, self.cands, self.grid = problem, cands, grid
        self.rank_model, self.seed, self.cache, self.tie_break = rank_model, seed, cache, tie_break
        self._levels: dict[tuple, list[float]] = {}

    def _dist(self, layer_index: int, cand: Candidate, level: int):
        """The rank distribution of a candidate with its density halved ``level`` (>= 1) times;
        level 0 is the problem's own table."""
        layer = self.problem.layers[layer_index]
        if cand.index is not None:
            p = self.grid.density(cand.index - level * self.grid.steps)
        else:
            p = cand.density / 2.0**level
        if p <= 0.0:
            return RankDistribution.point_mass(layer.rows, layer.cols, 0, density=0.0)
        model = self.rank_model
        if self.tie_break == "robust-analytic" or min(layer.rows, layer.cols) > ROBUST_SAMPLED_MAX_SIDE:
            model = "analytic"
        return rank_distribution(layer.rows, layer.cols, min(p, 1.0), model, seed=self.seed, cache=self.cache)

    def level(self, choice: tuple[int, ...], i: int) -> float:
        levels = self._levels.setdefault(choice, [])
        while len(levels) <= i:
            if not levels:
                levels.append(self.problem.log_bound(choice) / LN2)
            else:
                lv = len(levels)
                dists = [self._dist(l, self.cands[l][c], lv) for l, c in enumerate(choice)]
                levels.append(log_bound(self.problem.widths, dists, self.problem.input_dim) / LN2)
        return levels[i]

    def exact(self, choice: tuple[int, ...]) -> float:
        return self.level(choice, 0)

    def better(self, a: tuple[int, ...], b: tuple[int, ...]) -> bool:
        """Is choice ``a`` strictly better than ``b`` under the tie-break?"""
        if a == b:
            return False
        levels = ROBUST_LEVELS if self.tie_break != "none" and self.cands is not None else 1
        for i in range(levels):
            ra = round(self.level(a, i) / TIE_RESOLUTION_BITS)
            rb = round(self.level(b, i) / TIE_RESOLUTION_BITS)
            if ra != rb:
                return ra > rb
        return False


# ----------------------------------------------------------------------------- the planner


def _progress(cb, stage, done, total):
    if cb is not None:
        cb(stage, done, total)


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
    time_limit: float | None = None,
    threads: int = 1,
    seed: int = 0,
    tie_break: str = "robust",
    pool_size: int = 1,
    workers: int | None = None,
    cache: RankCache | None = None,
    progress: Callable[[str, int, int], None] | None = None,
    architecture_info: dict | None = None,
) -> Plan:
    """A per-layer sparsity plan maximizing the expected linear-region bound.

    Give ``arch`` (``"784,300,100,10"`` or an :class:`Architecture`) or ``layers`` (a list of
    :class:`WeightLayer`, hidden ReLU chain marked ``in_bound``), and exactly one of ``density``
    (global kept fraction of the prunable weights) or ``keep`` (kept weights). Raises
    :class:`InfeasibleError` when no plan meets the budgets.
    """
    if rank_model not in RANK_MODELS:
        raise RankModelError(f"unknown rank model {rank_model!r}; choose one of {', '.join(RANK_MODELS)}")
    if tie_break not in TIE_BREAKS:
        raise PlannerError(f"unknown tie-break {tie_break!r}; choose one of {', '.join(TIE_BREAKS)}")
    if isinstance(grid, bool) or not isinstance(grid, int) or grid < 1:
        raise ProblemError(f"grid size must be a positive integer, got {grid!r}")
    if arch is not None:
        if isinstance(arch, str):
            arch = Architecture.parse(arch)
        layers = layers_from_arch(arch, prune_output=prune_output)
        n0 = arch.input_size
        architecture_info = architecture_info or {"sizes": list(arch.sizes)}
    elif layers is not None:
        layers = list(layers)
        n0 = None
        architecture_info = architecture_info or {}
    else:
        raise ProblemError("give an architecture or a list of layers")
    chain = [w for w in layers if w.in_bound]
    if not chain:
        raise ProblemError("no layer enters the bound: the network needs at least one hidden ReLU layer")
    if n0 is None:
        n0 = architecture_info.get("input_size", chain[0].cols)
    d0 = n0 if input_dim is None else input_dim
    d0 = _check_input_dim(Architecture(n0, tuple(w.rows for w in chain), 1), d0)

    prunable = [w for w in layers if not w.frozen]
    total = sum(w.size for w in prunable)
    if total == 0:
        raise ProblemError("every layer is frozen: nothing to prune")
    if (density is None) == (keep is None):
        raise ProblemError("give exactly one of density and keep")
    if density is not None:
        density = check_density(density, "global density")
        budget = int(round(density * total))
        if budget < 1:
            raise DensityError(f"density {density:g} keeps no weight of the {total} prunable ones: "
                               "give a larger density or --keep")
    else:
        if isinstance(keep, bool) or not isinstance(keep, (int, np.integer)) or not 1 <= keep <= total:
            raise DensityError(f"keep must be an integer in [1, {total}] (the prunable weights), got {keep!r}")
        budget = int(keep)
    if min_density is not None and not 0.0 <= min_density <= 1.0:
        raise DensityError(f"minimum density must be in [0, 1], got {min_density!r}")
    lo_d = float(min_density or 0.0)
    hi_d = 1.0 if max_density is None else check_density(max_density, "maximum density")
    if lo_d > hi_d:
        raise ProblemError(f"minimum density {lo_d} is above maximum density {hi_d}")

    # uniform: the same density everywhere, apportioned to whole weights
    uniform = dict(zip((w.name for w in prunable), apportion(budget, [w.size for w in prunable])))
    min_keep = {w.name: int(math.ceil(lo_d * w.size - 1e-9)) for w in prunable}
    max_keep = {w.name: int(math.floor(hi_d * w.size + 1e-9)) for w in prunable}
    need = sum(min_keep.values())
    if need > budget:
        raise InfeasibleError(
            f"the minimum density {lo_d:g} needs {need} weights but the budget keeps {budget}"
        )
    extras = list(budgets)
    if max_flops is not None:
        extras.append(ExtraBudget("flops", {w.name: w.flops_per_weight for w in layers}, int(max_flops)))
    for e in extras:
        if any(isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0 for v in e.cost.values()):
            raise ProblemError(f"budget {e.name!r}: costs must be non-negative integers per kept weight")
        floor_cost = sum(min_keep[w.name] * e.cost.get(w.name, 0) for w in prunable)
        if floor_cost > e.limit:
            raise InfeasibleError(f"the minimum densities need {floor_cost} of budget {e.name!r}, above its "
                                  f"limit {e.limit}")

    # layers outside the bound: the bound cannot guide them, so they keep the uniform density
    fixed = {}
    for w in prunable:
        if not w.in_bound:
            fixed[w.name] = min(max(uniform[w.name], min_keep[w.name]), max_keep[w.name])
    decision = [w for w in chain if not w.frozen]
    chain_budget = budget - sum(fixed.values())
    # what each further budget leaves for the chain once the fixed layers are paid for
    extra_left = [e.limit - sum(fixed[n] * e.cost.get(n, 0) for n in fixed) for e in extras]
    extra_costs = [[0 if w.frozen else int(e.cost.get(w.name, 0)) for w in chain] for e in extras]

    # stage A: aligned grids and rank distributions
    floors = {w.name: max(min_keep[w.name], min(uniform[w.name], max(1, uniform[w.name] // GRID_SPAN)))
              for w in decision}
    ceilings = {}
    for w in decision:
        room = chain_budget - sum(floors[v.name] for v in decision if v is not w)
        ceilings[w.name] = min(max_keep[w.name], w.size, room)
        if ceilings[w.name] < floors[w.name]:
            raise InfeasibleError(f"layer {w.name}: no keep-count fits between {floors[w.name]} and "
                                  f"{ceilings[w.name]} within the budget")
    octaves = max(math.log2(max(ceilings[w.name], 1) / max(floors[w.name], 1)) for w in decision) if decision else 1.0
    steps = max(1, int(round((grid - 1) / max(octaves, 1e-9)))) if grid > 1 else 1
    dgrid = DensityGrid(budget / total if budget else 1.0 / total, steps)
    cands: list[list[Candidate]] = []
    for w in chain:
        if w.frozen:
            cands.append([Candidate(w.size, 1.0, None)])
        else:
            cs = dgrid.candidates(w.size, floors[w.name], ceilings[w.name], uniform[w.name])
            if grid == 1:  # the uniform choice alone, when it fits
                cs = [c for c in cs if c.index == 0] or cs[:1]
            cands.append(cs)
    total_dists = sum(len(cs) for w, cs in zip(chain, cands) if not w.frozen)
    prefetch([(w.rows, w.cols, c.density) for w, cs in zip(chain, cands) if not w.frozen for c in cs if c.keep],
             rank_model, seed=seed, cache=cache, workers=workers,
             progress=None if progress is None else (lambda d, t: progress("rank distributions", d, t)))
    done = 0
    options = []
    for w, cs in zip(chain, cands):
        dists = []
        for cand in cs:
            if cand.keep == 0:
                dists.append(RankDistribution.point_mass(w.rows, w.cols, 0, density=0.0))
            else:
                dists.append(rank_distribution(w.rows, w.cols, cand.density, rank_model, seed=seed, cache=cache))
            if not w.frozen:
                done += 1
                _progress(progress, "rank distributions", done, total_dists)
        options.append(LayerOption(w.name, w.rows, w.cols, tuple(c.keep for c in cs), tuple(dists)))
    linear = [LinearBudget("weights", tuple(tuple(0 if w.frozen else c.keep for c in cs)
                                            for w, cs in zip(chain, cands)), chain_budget)]
    for e, left, costs in zip(extras, extra_left, extra_costs):
        if left < 0:
            raise InfeasibleError(f"the layers outside the bound alone exceed budget {e.name!r}")
        linear.append(LinearBudget(e.name, tuple(tuple(c.keep * cost for c in cs)
                                                 for cost, cs in zip(costs, cands)), left))
    problem = AllocationProblem(tuple(options), d0, tuple(linear))

    # the uniform choice: index 0 of every decision layer (absent when the limits exclude it)
    uniform_choice = None
    if all(w.frozen or any(c.index == 0 for c in cs) for w, cs in zip(chain, cands)):
        uc = tuple(0 if w.frozen else next(i for i, c in enumerate(cs) if c.index == 0)
                   for w, cs in zip(chain, cands))
        if problem.feasible(uc):
            uniform_choice = uc

    # stages B and C
    scorer = Scorer(problem, cands, dgrid, rank_model, seed, cache, tie_break)
    best_choice, result, certificate = optimize(
        problem, scorer, solver=solver, uniform_choice=uniform_choice, time_limit=time_limit,
        threads=threads, seed=seed, pool_size=pool_size, progress=progress,
    )
    keeps = _fill(problem, list(problem.keeps(best_choice)), chain, list(zip(extra_costs, extra_left)), max_keep)

    def bits_at(keeps_):
        dists = [rank_distribution(w.rows, w.cols, k / w.size, rank_model, seed=seed, cache=cache) if k else
                 RankDistribution.point_mass(w.rows, w.cols, 0, density=0.0) for w, k in zip(chain, keeps_)]
        return log_bound([w.rows for w in chain], dists, d0) / LN2, dists

    plan_bits, plan_dists = bits_at(keeps)
    uniform_bits = None
    uniform_fits = all(min_keep[w.name] <= uniform[w.name] <= max_keep[w.name] for w in prunable) and all(
        sum(uniform[w.name] * e.cost.get(w.name, 0) for w in prunable) <= e.limit for e in extras)
    if uniform_fits:
        uniform_keeps = [w.size if w.frozen else uniform[w.name] for w in chain]
        uniform_bits, uniform_dists = bits_at(uniform_keeps)
        if plan_bits < uniform_bits - NOT_WORSE_EPS_BITS:  # never worse than uniform
            keeps, plan_bits, plan_dists = uniform_keeps, uniform_bits, uniform_dists

    # the plan
    chain_keeps = {w.name: k for w, k in zip(chain, keeps)}
    rank_of = {w.name: d.expected_rank for w, d in zip(chain, plan_dists)}
    plan_layers = []
    for w in layers:
        if w.frozen:
            k = w.size
        elif w.name in chain_keeps:
            k = chain_keeps[w.name]
        else:
            k = fixed[w.name]
        plan_layers.append(PlanLayer(w.name, w.rows, w.cols, int(k), w.frozen, w.in_bound,
                                     rank_of.get(w.name) if w.in_bound else None))
    objective = {
        "log2_bound": round(plan_bits, 6),
        "uniform_log2_bound": None if uniform_bits is None else round(uniform_bits, 6),
        "certificate_log2_upper": None if certificate is None else round(certificate, 6),
        "certificate_gap_bits": None if certificate is None else round(max(0.0, certificate - plan_bits), 6),
        "rank_model": rank_model,
        "tie_break": tie_break,
        "grid": grid,
    }
    target = {"density": density, "keep": budget, "prunable": total,
              "min_density": min_density, "max_density": max_density, "max_flops": max_flops}
    if budgets:
        target["budgets"] = [{"name": e.name, "limit": int(e.limit)} for e in budgets]
    return Plan(architecture_info, "lr-bound", target, plan_layers, d0, objective,
                {"name": solver, "status": str(result.status)}, seed)


def optimize(
    problem: AllocationProblem,
    scorer: "Scorer | None" = None,
    *,
    solver: str = "cpsat",
    uniform_choice: tuple[int, ...] | None = None,
    time_limit: float | None = None,
    threads: int = 1,
    seed: int = 0,
    pool_size: int = 1,
    progress=None,
):
    """Stages B and C on a built problem: the backend's integer program, then exact scores of
    its solutions (and of ``uniform_choice``) and a local search on the exact objective.

    Returns ``(choice, solve_result, certificate_log2_upper)``; raises :class:`InfeasibleError`
    when the backend proves infeasibility or finds nothing. No returned choice is below
    ``uniform_choice`` in exact bound.
    """
    from solvers import get_solver

    scorer = scorer or Scorer(problem)
    _progress(progress, "integer program", 0, 1)
    backend = get_solver(solver)
    result = backend.solve(problem, time_limit=time_limit, threads=threads, seed=seed,
                           pool_size=pool_size, hint=uniform_choice)
    _progress(progress, "integer program", 1, 1)
    if result.status.value == "INFEASIBLE":
        raise InfeasibleError(f"no allocation meets the budgets ({result.message or 'solver: infeasible'})")
    if not result.has_solution:
        raise InfeasibleError(f"solver {solver} found no solution ({result.status}; {result.message}); "
                              "raise --time-limit")
    certificate = None
    if result.best_bound is not None:
        upper = result.best_bound
        if backend.objective != "exact":
            upper += log_terms(maxplus_tables(problem))
        certificate = upper / LN2

    floor_bits = None if uniform_choice is None else scorer.exact(uniform_choice)

    def admissible(choice):
        return floor_bits is None or scorer.exact(choice) >= floor_bits - NOT_WORSE_EPS_BITS

    starts = list(dict.fromkeys([result.choice, *result.pool] + ([uniform_choice] if uniform_choice else [])))
    best = None
    for c in starts:
        if problem.feasible(c) and admissible(c) and (best is None or scorer.better(c, best)):
            best = c
    best = _local_search(problem, scorer, best, admissible, progress)
    return best, result, certificate


def _neighbours(problem: AllocationProblem, choice: tuple[int, ...], reach: int = 2):
    """Choices that move one layer, or two layers in opposite directions, by up to ``reach``
    grid steps: shifting keep-count between layers."""
    n = len(choice)
    sizes = [len(layer.keeps) for layer in problem.layers]
    for a in range(n):
        for s in range(-reach, reach + 1):
            if s == 0 or not 0 <= choice[a] + s < sizes[a]:
                continue
            c = list(choice)
            c[a] += s
            yield tuple(c)
            for b in range(n):
                if b == a:
                    continue
                for t in range(1, reach + 1):
                    tb = -t if s > 0 else t
                    if 0 <= choice[b] + tb < sizes[b]:
                        c2 = list(c)
                        c2[b] += tb
                        yield tuple(c2)


def _local_search(problem, scorer, choice, admissible, progress, max_rounds: int = 500):
    """Best-improvement search over :func:`_neighbours` until no neighbour is better."""
    for round_ in range(max_rounds):
        _progress(progress, "local search", round_, max_rounds)
        best = choice
        for nb in dict.fromkeys(_neighbours(problem, choice)):
            if problem.feasible(nb) and admissible(nb) and scorer.better(nb, best):
                best = nb
        if best == choice:
            break
        choice = best
    _progress(progress, "local search", max_rounds, max_rounds)
    return choice


def _fill(problem, keeps, chain, extras, max_keep):
    """Hand out the weights the grid left over, in proportion to the planned keep-counts and
    within every layer's room and every further budget (``extras``: per-weight costs of the
    chain layers and the limit left), so the plan keeps exactly the budget unless a layer
    maximum or another budget binds first."""
    decision = [i for i, w in enumerate(chain) if not w.frozen]
    room = {i: min(max_keep[chain[i].name], chain[i].size) - keeps[i] for i in decision}
    left = problem.budgets[0].limit - sum(keeps[i] for i in decision)
    extra_left = [limit - sum(keeps[i] * costs[i] for i in decision) for costs, limit in extras]
    while left > 0:
        open_ = [i for i in decision if room[i] > 0]
        if not open_:
            break
        shares = apportion(left, [max(keeps[i], 1) for i in open_])
        moved = 0
        for i, share in zip(open_, shares):
            add = min(share, room[i])
            for e, (costs, _) in enumerate(extras):
                if costs[i] > 0:
                    add = min(add, extra_left[e] // costs[i])
            for e, (costs, _) in enumerate(extras):
                extra_left[e] -= add * costs[i]
            keeps[i] += add
            room[i] -= add
            moved += add
        left -= moved
        if moved == 0:
            break
    return keeps
