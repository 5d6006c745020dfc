"""Second criteria: the bound as a floor (``--bound-floor``) and measured sensitivity
(``--objective sensitivity``).

Bound floor, objective ``bound``
    Every grid plan of the bound chain that meets the budgets is scored on the exact bound
    (suffixes shared, as in the exhaustive integer search); those within the floor of the best
    of them (``X`` bits, or ``X%`` of its log2 value) are kept, and among them the tie-break
    decides: the one nearest the prior under ``prior:*``, the most robust under ``robust*``,
    the highest bound under ``none``, the most kept mass under ``magnitude`` / ``lamp``. The
    left-over weights are then handed out as usual. Off the grid, the tie-break's own optimum
    (the prior itself; the most mass the budget allows, LAMP's top-k under ``lamp``) replaces
    that plan when it keeps the floor: nothing can beat it then. The uniform plan is no floor
    here: the user's tolerance is.

Objective ``sensitivity``
    Every prunable layer (in the bound or not) chooses among its measured keep-counts (and the
    uniform plan's, interpolated) the one that minimizes the summed loss increase
    sum_l [loss_l(keep_l) - dense loss] of a :class:`SensitivityTable`, under the weight budget
    and every further budget: a multiple-choice knapsack, solved exactly by CP-SAT (values
    scaled by 1e6 and rounded). With ``--bound-floor`` the chain's choices are restricted to
    the combinations whose exact bound is within the floor of the best combination that fits
    the budget (an allowed-assignments constraint), so both criteria hold at once. Left-over
    weights go, a segment at a time, where the interpolated loss falls most per weight.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace

from planner.allocation.request import Target
from planner.core.bound import LN2, input_dims, layer_log_r
from planner.errors import InfeasibleError, LimitError, ProblemError, SolverError

#: at most this many chain combinations are scored for a bound floor
FLOOR_MAX_COMBINATIONS = 250_000
#: sensitivity values are multiplied by this and rounded for CP-SAT
SENSITIVITY_SCALE = 1_000_000


class FloorTooLarge(LimitError):
    """A bound floor would score more chain combinations than FLOOR_MAX_COMBINATIONS."""

    def __init__(self, count: int):
        self.count = count
        super().__init__(f"a bound floor scores every combination of the chain's candidates within the weight "
                         f"budget: {count} here, above {FLOOR_MAX_COMBINATIONS}; give a coarser --grid")


@dataclass(frozen=True)
class BoundFloor:
    """Within ``value`` bits of the best bound, or within ``value`` (a fraction) of it."""

    value: float
    relative: bool = False

    @classmethod
    def parse(cls, text) -> "BoundFloor":
        """``"2"`` (bits), ``"5%"`` (of the best log2 bound), or a number (bits)."""
        if isinstance(text, BoundFloor):
            return text
        if isinstance(text, bool):
            raise ProblemError(f"bound floor must be bits (e.g. 2) or a percentage (e.g. 5%), got {text!r}")
        relative = isinstance(text, str) and text.strip().endswith("%")
        raw = text.strip()[:-1] if relative else text
        try:
            value = float(raw)
        except (TypeError, ValueError):
            raise ProblemError(f"bound floor must be bits (e.g. 2) or a percentage (e.g. 5%), got {text!r}") from None
        if not math.isfinite(value) or value < 0 or (relative and value > 100):
            raise ProblemError(f"bound floor must be a finite number of bits >= 0 or a percentage in [0, 100], "
                               f"got {text!r}")
        return cls(value / 100.0 if relative else value, relative)

    def floor(self, best_bits: float) -> float:
        return best_bits * (1.0 - self.value) if self.relative else best_bits - self.value

    def __str__(self) -> str:
        return f"{self.value * 100:g}%" if self.relative else f"{self.value:g} bits"


def within_budget(lists, decision, limit: int) -> int:
    """How many chain combinations keep at most ``limit`` weights in the decision layers (an
    upper bound on what :func:`chain_bounds` scores: further budgets only remove more). Counted
    by the sums the layers can reach, so it costs the distinct partial sums, not the product.
    Past FLOOR_MAX_COMBINATIONS distinct sums it stops and returns their number (each sum is at
    least one combination, so the count is over the limit too)."""
    dec = set(decision)
    # the least the layers after i must still spend: a partial sum kept has a completion
    rest = [sum(min(lists[j]) for j in range(i + 1, len(lists)) if j in dec) for i in range(len(lists))]
    sums = {0: 1}
    for i, ks in enumerate(lists):
        if i not in dec:
            sums = {t: c * len(ks) for t, c in sums.items()}
            continue
        nxt: dict[int, int] = {}
        for t, c in sums.items():
            for k in ks:
                if t + k + rest[i] <= limit:
                    nxt[t + k] = nxt.get(t + k, 0) + c
        sums = nxt
        if len(sums) > FLOOR_MAX_COMBINATIONS:
            return len(sums)
    return sum(sums.values())


def chain_bounds(widths, input_dim: int, lists, dist, decision, limit: int, extras=(), progress=None, caps=None):
    """{keeps tuple: log2 bound} of every chain combination (``lists[i]`` the keep-counts of
    layer ``i``, ``dist(i, j)`` the distribution of its ``j``-th) whose decision layers keep at
    most ``limit`` weights and meet every further budget (``extras``: (per-layer costs, limit)).
    Suffixes of the recurrence are shared, so each combination costs one layer step."""
    n = len(lists)
    count = within_budget(lists, decision, limit)
    if count > FLOOR_MAX_COMBINATIONS:
        raise FloorTooLarge(count)
    dims = input_dims(widths, input_dim, caps)
    dec = set(decision)
    # the least the layers before i can spend, to prune suffixes that already overspend
    least = [sum(min(lists[j]) for j in range(i) if j in dec) for i in range(n)]
    least_extra = [[sum(min(lists[j]) * costs[j] for j in range(i) if j in dec) for costs, _ in extras]
                   for i in range(n)]
    out: dict[tuple, float] = {}
    done = [0]

    def rec(i, log_r_next, used, used_extra, suffix):
        for j, k in enumerate(lists[i]):
            u = used + (k if i in dec else 0)
            ue = [a + (k * costs[i] if i in dec else 0) for a, (costs, _) in zip(used_extra, extras)]
            if u + least[i] > limit or any(a + b > lim for a, b, (_, lim) in zip(ue, least_extra[i], extras)):
                continue
            vec = layer_log_r(widths[i], dist(i, j), dims[i], log_r_next, i)
            keeps = (k,) + suffix
            if i == 0:
                out[keeps] = float(vec[input_dim]) / LN2
                done[0] += 1
                if progress is not None and done[0] % 512 == 0:
                    progress("bound floor", done[0], count)
            else:
                rec(i - 1, vec, u, ue, keeps)

    rec(n - 1, None, 0, [0] * len(extras), ())
    return out


# ------------------------------------------------------------------------ objective bound


def allocate_floor(target: Target, built, floor: BoundFloor, kscorer=None, *, cache=None, workers=None,
                   progress=None):
    """The chain's keep-counts under a bound floor on the grid, objective ``bound``: the grid
    plan :func:`choose_floor` picks, with the left-over weights handed out. ``kscorer`` is the
    target's :class:`KeepScorer` (made here when not given). Returns ``(keeps, best_bits,
    floor_bits)``: the best grid plan's bound and the floor it set."""
    from planner.allocation.integer import integer_space
    from planner.allocation.pipeline import keep_scorer
    from planner.allocation.search import fill

    chain, problem = target.chain, built.problem
    kscorer = kscorer or keep_scorer(target, cache)
    chosen, best, floor_bits = choose_floor(target, built, floor, kscorer, cache=cache, workers=workers,
                                            progress=progress)
    extras = [(costs, left) for costs, left in zip(target.extra_costs(), target.extra_left())]
    # the left-over weights: in proportion (as without a floor), else all to one layer, the
    # first way that keeps the floor (a sampled bound need not rise with every added weight)
    ways = [fill(problem, list(chosen), chain, extras, target.max_keep)]
    for i, w in enumerate(chain):
        if not w.frozen:
            only_i = {v.name: target.max_keep[v.name] if j == i else chosen[j]
                      for j, v in enumerate(chain) if not v.frozen}
            ways.append(fill(problem, list(chosen), chain, extras, only_i))
    keeps = next((k for k in ways if kscorer.exact(tuple(k)) >= floor_bits - 1e-9), list(chosen))
    # the tie-break's own optimum off the grid (the prior, LAMP's top-k) when it keeps the floor:
    # then it is the best integer plan under the floor, not only the best grid plan
    space = integer_space(target)
    free = tie_break_optimum(target, space)
    if free is not None and space.feasible(free) and \
            kscorer.exact(tuple(free)) >= floor_bits - 1e-9 and kscorer.better_within_floor(tuple(free), tuple(keeps)):
        keeps = [int(k) for k in free]
    return keeps, best, floor_bits


#: the steps of floor_line_search from the tie-break's plan (t = 0) to the bound's (t = 1)
LINE_SEARCH_STEPS = 16


def blend(a, b, t: float, space) -> list[int]:
    """The integer plan ``(1 - t) a + t b`` of the decision layers (largest remainders rounded
    up, ties to the earlier layer, so it spends the blended total), frozen layers at their size."""
    out = list(a)
    real = {i: (1.0 - t) * a[i] + t * b[i] for i in space.decision}
    for i, v in real.items():
        out[i] = int(math.floor(v + 1e-9))
    total = int(round(sum(real.values())))
    short = total - sum(out[i] for i in space.decision)
    order = sorted(space.decision, key=lambda i: (-(real[i] - out[i]), i))
    for i in order[:max(0, short)]:
        if out[i] < space.hi[i]:
            out[i] += 1
    return out


def floor_line_search(target: Target, bound_keeps, floor: BoundFloor, kscorer):
    """A bound floor where the grid has too many plans to score: the tie-break's own plan
    (:func:`tie_break_optimum`) when its exact bound is within ``floor`` of the best known plan
    (``bound_keeps``, the bound's plan, or the tie-break's plan when that is higher), else the
    first of the blends ``(1 - t) own + t bound_keeps``, t = 1/16, 2/16, ..., that meets the
    budgets and the floor (t = 1 is ``bound_keeps`` itself). A search along one line, not over
    the grid: the plan file says so. Returns ``(keeps, best_bits, floor_bits, t)``."""
    from planner.allocation.integer import integer_space

    space = integer_space(target)
    bound_keeps = [int(k) for k in bound_keeps]
    best = kscorer.exact(tuple(bound_keeps))
    own = tie_break_optimum(target, space)
    if own is None or not space.feasible(own):
        return bound_keeps, best, floor.floor(best), 1.0
    own = [int(k) for k in own]
    best = max(best, kscorer.exact(tuple(own)))
    floor_bits = floor.floor(best)
    for step in range(LINE_SEARCH_STEPS + 1):
        t = step / LINE_SEARCH_STEPS
        keeps = blend(own, bound_keeps, t, space)  # own at t = 0, bound_keeps at t = 1
        if space.feasible(keeps) and kscorer.exact(tuple(keeps)) >= floor_bits - 1e-9:
            return keeps, best, floor_bits, t
    return bound_keeps, best, floor_bits, 1.0


def tie_break_optimum(target: Target, space=None) -> list[int] | None:
    """The integer plan the tie-break alone prefers, the bound aside (chain order, a frozen layer
    at its size), or None when there is none: the prior itself under ``prior:*`` (distance 0),
    and under ``magnitude`` / ``lamp`` the most kept mass the weight budget allows within the
    layers' limits (``space``: the target's :class:`~planner.allocation.integer.IntegerSpace`,
    made here when not given). Each layer's mass is concave in its keep-count (it adds the
    layer's entries largest first), so taking the largest increments across layers greedily is
    optimal: under ``lamp`` this is LAMP's own global top-k on the chain. Under ``robust*`` and
    ``none`` the levels are bounds themselves and there is nothing to add."""
    import numpy as np

    from planner.allocation.baselines import _top_k_global
    from planner.allocation.integer import integer_space
    from planner.allocation.pipeline import kept_masses, prior_keeps
    from planner.allocation.scoring import WEIGHT_TIE_BREAKS

    r = target.request
    if r.tie_break.startswith("prior:"):
        return prior_keeps(target)
    if r.tie_break not in WEIGHT_TIE_BREAKS:
        return None
    space = space or integer_space(target)
    masses = kept_masses(target)
    keeps = list(space.lo)
    left = space.budget - sum(space.lo[i] for i in space.decision)
    if left < 0:
        return None
    # each layer's increments above its lowest keep-count, largest overall first (ties: the
    # earlier layer, then its earlier entry)
    gains = {i: np.diff(masses[i][space.lo[i]:space.hi[i] + 1]) for i in space.decision}
    if gains:
        for i, n in _top_k_global(gains, left).items():
            keeps[i] += n
    return keeps


def choose_floor(target: Target, built, floor: BoundFloor, kscorer=None, *, cache=None, workers=None,
                 progress=None):
    """Among the grid plans meeting the budgets whose exact bound (at keep / size) is within
    ``floor`` of the best, the tie-break's choice (then the higher bound, then the
    lexicographically smallest). Returns ``(keeps, best_bits, floor_bits)``."""
    from planner.allocation.integer import _prefetch_pairs
    from planner.allocation.pipeline import keep_scorer, tie_inputs
    from planner.allocation.scoring import Scorer

    r, chain, problem = target.request, target.chain, built.problem
    # the floor is on the plan file's bound (every layer at keep / size: ``KeepScorer``); the
    # robust levels come from the grid (``Scorer``: halved plans are grid plans)
    kscorer = kscorer or keep_scorer(target, cache)
    scorer = Scorer(problem, built.cands, built.grid, r.rank_model, r.seed, cache, r.tie_break, **tie_inputs(target))
    decision = [i for i, w in enumerate(chain) if not w.frozen]
    lists = [list(layer.keeps) for layer in problem.layers]
    index = [{k: j for j, k in enumerate(ks)} for ks in lists]
    extras = [(costs, left) for costs, left in zip(target.extra_costs(), target.extra_left())]
    _prefetch_pairs(kscorer, [(i, k) for i, ks in enumerate(lists) for k in ks], workers, progress)
    scores = chain_bounds(kscorer.widths, kscorer.input_dim, lists, lambda i, j: kscorer.dist(i, lists[i][j]),
                          decision, target.chain_budget, extras, progress, kscorer.caps)
    if not scores:
        raise InfeasibleError("no grid plan of the bound chain meets the budgets")
    best = max(scores.values())
    floor_bits = floor.floor(best)
    admitted = sorted(keeps for keeps, bits in scores.items() if bits >= floor_bits - 1e-9)
    choices = {keeps: tuple(index[i][k] for i, k in enumerate(keeps)) for keeps in admitted}
    for keeps in admitted:
        scorer.remember(choices[keeps], scores[keeps])
    chosen = admitted[0]
    for keeps in admitted[1:]:
        if scorer.better_within_floor(choices[keeps], choices[chosen]):
            chosen = keeps
    return list(chosen), best, floor_bits


# -------------------------------------------------------------------- objective sensitivity


@dataclass
class SensitivityAllocation:
    keeps: dict  # every prunable layer's keep-count
    predicted: float  # summed loss increase at ``keeps`` (interpolated)
    uniform_predicted: float | None
    best_bits: float | None  # with a floor: the best chain bound that fits, and the floor
    floor_bits: float | None
    status: str
    message: str = ""

    def objective_entries(self, table) -> dict:
        """What the plan file's objective records of this allocation."""
        out = {"predicted_loss_increase": round(self.predicted, 7),
               "uniform_predicted_loss_increase": None if self.uniform_predicted is None
               else round(self.uniform_predicted, 7),
               "sensitivity_criterion": table.criterion, "sensitivity_table": table.key}
        if self.floor_bits is not None:
            out.update(best_log2_bound=round(self.best_bits, 6), floor_log2_bound=round(self.floor_bits, 6))
        return out


def sensitivity_candidates(target: Target, table) -> dict[str, list[int]]:
    """Per prunable layer: its measured keep-counts within its limits, and the uniform plan's."""
    out = {}
    for w in target.prunable:
        measured = table.layer(w.name).keeps
        lo, hi = target.min_keep[w.name], min(target.max_keep[w.name], w.size)
        ks = {k for k in measured if lo <= k <= hi}
        u = target.uniform[w.name]
        if lo <= u <= hi and measured[0] <= u <= measured[-1]:
            ks.add(u)
        if not ks:
            raise InfeasibleError(f"layer {w.name}: no measured keep-count lies within its limits [{lo}, {hi}]; "
                                  f"the table covers [{measured[0]}, {measured[-1]}]")
        out[w.name] = sorted(ks)
    return out


def allocate_sensitivity(target: Target, table, floor: BoundFloor | None = None, scorer=None, *, cache=None,
                         workers=None, progress=None) -> SensitivityAllocation:
    """Minimize the summed measured loss increase under every budget (and the bound floor, whose
    bounds ``scorer``, the target's :class:`KeepScorer`, computes; made here when not given)."""
    from planner.allocation.pipeline import keep_scorer
    from planner.allocation.integer import _prefetch_pairs

    table.check_layers(target.prunable)
    prunable = target.prunable
    cands = sensitivity_candidates(target, table)
    values = {w.name: [table.increase(w.name, k) for k in cands[w.name]] for w in prunable}
    allowed = None
    best_bits = floor_bits = None
    chain_pos = [i for i, w in enumerate(prunable) if w.in_bound]
    if floor is not None:
        chain = target.chain
        scorer = scorer or keep_scorer(target, cache)
        lists = [[w.size] if w.frozen else cands[w.name] for w in chain]
        _prefetch_pairs(scorer, [(i, k) for i, ks in enumerate(lists) for k in ks], workers, progress)
        outside = [w for w in prunable if not w.in_bound]
        left = target.budget - sum(cands[w.name][0] for w in outside)
        decision = [i for i, w in enumerate(chain) if not w.frozen]
        extras = [([0 if w.frozen else int(e.cost.get(w.name, 0)) for w in chain],
                   e.limit - sum(cands[w.name][0] * e.cost.get(w.name, 0) for w in outside)) for e in target.extras]
        scores = chain_bounds(scorer.widths, scorer.input_dim, lists, lambda i, j: scorer.dist(i, lists[i][j]),
                              decision, left, extras, progress, scorer.caps)
        if not scores:
            raise InfeasibleError("no combination of the chain's measured keep-counts meets the budgets")
        best_bits = max(scores.values())
        floor_bits = floor.floor(best_bits)
        allowed = sorted(tuple(cands[chain[i].name].index(keeps[i]) for i in decision)
                         for keeps, bits in scores.items() if bits >= floor_bits - 1e-9)
    choice, status, message = _solve_mckp(target, cands, values, chain_pos, allowed)
    keeps = {w.name: cands[w.name][c] for w, c in zip(prunable, choice)}
    keeps = _fill(target, table, keeps, frozen_names=set() if floor is None else
                  {w.name for w in prunable if w.in_bound})
    predicted = sum(table.increase(n, k) for n, k in keeps.items())
    uniform_predicted = None
    if target.uniform_fits() and all(table.layer(w.name).keeps[0] <= target.uniform[w.name]
                                     <= table.layer(w.name).keeps[-1] for w in prunable):
        uniform_predicted = sum(table.increase(w.name, target.uniform[w.name]) for w in prunable)
    return SensitivityAllocation(keeps, predicted, uniform_predicted, best_bits, floor_bits, status, message)


def _solve_mckp(target: Target, cands, values, chain_pos, allowed):
    """One candidate per prunable layer minimizing the scaled summed value under the budgets;
    ``allowed``: the permitted index tuples of the chain's decision layers (or None)."""
    from ortools.sat.python import cp_model

    from solvers.base import run_interruptible

    r, prunable = target.request, target.prunable
    model = cp_model.CpModel()
    xs = []
    for w in prunable:
        x = [model.new_bool_var(f"x[{w.name},{c}]") for c in range(len(cands[w.name]))]
        model.add_exactly_one(x)
        xs.append(x)
    model.add(sum(k * xc for w, x in zip(prunable, xs) for k, xc in zip(cands[w.name], x)) <= target.budget)
    for e in target.extras:
        model.add(sum(int(e.cost.get(w.name, 0)) * k * xc for w, x in zip(prunable, xs)
                      for k, xc in zip(cands[w.name], x)) <= int(e.limit))
    if allowed is not None:
        idx = []
        for p in chain_pos:
            w, x = prunable[p], xs[p]
            v = model.new_int_var(0, len(x) - 1, f"c[{w.name}]")
            model.add(v == sum(c * xc for c, xc in enumerate(x)))
            idx.append(v)
        model.add_allowed_assignments(idx, allowed)
    model.minimize(sum(int(round(v * SENSITIVITY_SCALE)) * xc for w, x in zip(prunable, xs)
                       for v, xc in zip(values[w.name], x)))
    solver = cp_model.CpSolver()
    solver.parameters.num_workers = 1
    solver.parameters.random_seed = int(r.seed)
    solver.parameters.catch_sigint_signal = False
    if r.time_limit is not None:
        solver.parameters.max_time_in_seconds = float(r.time_limit)
    started = time.monotonic()
    status = run_interruptible(lambda: solver.solve(model), solver.stop_search)
    if status == cp_model.INFEASIBLE:
        raise InfeasibleError("no choice of measured keep-counts meets the budgets" +
                              (" and the bound floor" if allowed is not None else ""))
    if status not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        raise SolverError(f"cpsat found no plan for the sensitivity objective ({solver.status_name(status)})")
    choice = [next(c for c, xc in enumerate(x) if solver.boolean_value(xc)) for x in xs]
    message = ""
    if status == cp_model.FEASIBLE:
        message = f"time limit of {r.time_limit:g} s reached after {time.monotonic() - started:.0f} s"
    return choice, ("OPTIMAL" if status == cp_model.OPTIMAL else "FEASIBLE"), message


def _fill(target: Target, table, keeps: dict, frozen_names=frozenset()) -> dict:
    """Hand out the weights the measured keep-counts left over: each round adds, to the layer
    where the interpolated loss falls most per weight, up to its next measured keep-count (or
    what is left), within its maximum and every further budget. Layers in ``frozen_names`` (the
    chain under a bound floor) are left as chosen."""
    keeps = dict(keeps)
    left = target.budget - sum(keeps.values())
    extra_left = [e.limit - sum(keeps[w.name] * e.cost.get(w.name, 0) for w in target.prunable) for e in target.extras]
    while left > 0:
        best = None
        for w in target.prunable:
            if w.name in frozen_names:
                continue
            k = keeps[w.name]
            measured = table.layer(w.name).keeps
            cap = min(target.max_keep[w.name], w.size, measured[-1])
            nxt = next((m for m in measured if m > k), cap)
            add = min(left, nxt - k, cap - k)
            for e, room in zip(target.extras, extra_left):
                cost = int(e.cost.get(w.name, 0))
                if cost > 0:
                    add = min(add, room // cost)
            if add <= 0:
                continue
            gain = (table.increase(w.name, k) - table.increase(w.name, k + add)) / add
            if best is None or gain > best[0] + 1e-15:
                best = (gain, w, add)
        if best is None:
            break
        _, w, add = best
        keeps[w.name] += add
        left -= add
        extra_left = [room - add * int(e.cost.get(w.name, 0)) for e, room in zip(target.extras, extra_left)]
    return keeps


def with_fixed(target: Target, keeps: dict) -> Target:
    """The target with the layers outside the bound at ``keeps`` (for :func:`assemble`)."""
    return replace(target, fixed={n: keeps[n] for n in target.fixed})
