"""Step 5b of the pipeline: the best plan on integers, not just on the grid.

The integer program chooses among about ``--grid`` keep-counts per layer; at small budgets one
weight moved between layers is worth a tenth of a bit, so the grid's best plan is not the best
integer plan. This step searches keep-counts themselves, every layer scored at density
keep / size (the plan file's own densities), in one of two ways:

exhaustive
    When the weight budget is the only budget that can bind and the allocations that keep
    exactly the budget (every decision layer at least one weight) are at most
    :data:`EXHAUSTIVE_MAX_ALLOCATIONS`,
    needing at most :data:`EXHAUSTIVE_MAX_DISTRIBUTIONS` rank distributions, every one is scored
    (the recurrence's suffixes are shared, so three hidden layers cost one layer step per
    allocation). The best under the tie-break, then the lexicographically smallest, is the plan:
    no integer plan that keeps the budget has a higher bound. The integer program is not run.
local
    Otherwise, from the polished grid plan: moves of 1, 2, 4, ... weights (up to an eighth of
    the giving layer, about one grid step) from any decision layer to any other, and into any
    layer while budget is left; best improvement per round, until no move gains a 0.01-bit
    step (under ``none``: any gain) or :data:`LOCAL_MAX_EVALUATIONS` plans have been scored.

The ``svd`` rank model is skipped (minutes per distribution). ``integer="off"`` keeps the grid
plan, as before this step existed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from planner.allocation.scoring import KeepScorer
from planner.allocation.search import NOT_WORSE_EPS_BITS
from planner.core.bound import LN2, input_dims, layer_log_r
from planner.core.rank import prefetch

#: at most this many allocations are enumerated by the exhaustive search
EXHAUSTIVE_MAX_ALLOCATIONS = 20_000
#: ... needing at most this many rank distributions (per rank model: sampling costs ~0.1 s each)
EXHAUSTIVE_MAX_DISTRIBUTIONS = {"analytic": 50_000, "exact": 50_000, "sampled": 256}
#: the local search stops after scoring this many plans
LOCAL_MAX_EVALUATIONS = 400
#: moves give at most this fraction of the giving layer's weights (about one grid step)
LOCAL_MAX_MOVE_FRACTION = 1 / 8


@dataclass(frozen=True)
class IntegerSpace:
    """The integer plans of a target's bound chain: per chain layer the keep-counts it may take
    (a frozen layer: its size), the weights the decision layers share, and the further budgets
    as (per-weight costs of the chain layers, limit left)."""

    shapes: tuple[tuple[int, int], ...]
    lo: tuple[int, ...]
    hi: tuple[int, ...]
    decision: tuple[int, ...]  # indices of the decision layers in the chain
    budget: int
    extras: tuple[tuple[tuple[int, ...], int], ...]

    def feasible(self, keeps) -> bool:
        if any(not lo <= k <= hi for k, lo, hi in zip(keeps, self.lo, self.hi)):
            return False
        if sum(keeps[i] for i in self.decision) > self.budget:
            return False
        return all(sum(keeps[i] * costs[i] for i in self.decision) <= left for costs, left in self.extras)

    def ranges(self) -> dict[int, tuple[int, int]]:
        """Per decision layer, the keep-counts an allocation spending exactly the budget can
        give it (empty when lo > hi)."""
        out = {}
        for i in self.decision:
            others_lo = sum(self.lo[j] for j in self.decision if j != i)
            others_hi = sum(self.hi[j] for j in self.decision if j != i)
            out[i] = (max(self.lo[i], self.budget - others_hi), min(self.hi[i], self.budget - others_lo))
        return out


def integer_space(target) -> IntegerSpace:
    chain, decision = target.chain, [i for i, w in enumerate(target.chain) if not w.frozen]
    budget = target.chain_budget
    floor = 1 if budget >= len(decision) else 0
    lo = tuple(w.size if w.frozen else max(target.min_keep[w.name], floor) for w in chain)
    hi = tuple(w.size if w.frozen else min(target.max_keep[w.name], w.size) for w in chain)
    # a further budget that every allocation meets cannot change the search: leave it out
    extras = tuple((tuple(costs), int(left)) for costs, left in zip(target.extra_costs(), target.extra_left())
                   if _most_spent(costs, hi, decision, budget) > left)
    return IntegerSpace(tuple((w.rows, w.cols) for w in chain), lo, hi, tuple(decision), int(budget), extras)


def _most_spent(costs, hi, decision, budget) -> int:
    """The most of a further budget an allocation of ``budget`` weights within ``hi`` can
    spend: the dearest layers filled first."""
    spent, left = 0, budget
    for i in sorted(decision, key=lambda i: -costs[i]):
        take = min(hi[i], left)
        spent += take * costs[i]
        left -= take
    return spent


def exhaustive_size(space: IntegerSpace) -> tuple[int, int]:
    """(an upper bound on the allocations keeping exactly the budget, the distributions they
    need): the product of all decision ranges but the widest, and the sum of the ranges."""
    widths = sorted(max(0, hi - lo + 1) for lo, hi in space.ranges().values())
    if not widths or widths[0] == 0:
        return 0, 0
    return math.prod(widths[:-1]), sum(widths)


def exhaustive_applies(space: IntegerSpace, rank_model: str) -> bool:
    if space.extras or not space.decision or rank_model not in EXHAUSTIVE_MAX_DISTRIBUTIONS:
        return False
    allocations, distributions = exhaustive_size(space)
    return 0 < allocations <= EXHAUSTIVE_MAX_ALLOCATIONS and distributions <= EXHAUSTIVE_MAX_DISTRIBUTIONS[rank_model]


def exhaustive(space: IntegerSpace, scorer: KeepScorer, *, floor_bits: float | None = None, workers=None,
               progress=None):
    """Every allocation keeping exactly the budget, scored on the exact bound. Returns ``(keeps,
    log2_bound)`` of the best under the scorer's tie-break, then the lexicographically smallest,
    among those not below ``floor_bits`` (the uniform plan's bound) by more than float noise;
    ``(None, None)`` when there is none."""
    ranges = space.ranges()
    n = len(space.shapes)
    choices = {i: range(lo, hi + 1) for i, (lo, hi) in ranges.items()}
    _prefetch_pairs(scorer, [(i, k) for i in ranges for k in choices[i]], workers, progress)
    dims = input_dims(scorer.widths, scorer.input_dim, scorer.caps)
    # what the decision layers before layer i can take together, to prune the enumeration
    before = {i: (sum(space.lo[j] for j in space.decision if j < i), sum(space.hi[j] for j in space.decision if j < i))
              for i in ranges}
    scored: list[tuple[float, tuple[int, ...]]] = []

    def rec(i: int, log_r_next, used: int, suffix: tuple[int, ...]):
        """Layers i+1.. are fixed (``suffix``, spending ``used``); choose layer i's keep-count."""
        if i not in ranges:
            ks = [space.lo[i]]
        elif i == space.decision[0]:  # the first decision layer takes what is left
            left = space.budget - used
            ks = [left] if left in choices[i] else []
        else:
            left = space.budget - used
            ks = [k for k in choices[i] if before[i][0] <= left - k <= before[i][1]]
        for k in ks:
            vec = layer_log_r(scorer.widths[i], scorer.dist(i, k), dims[i], log_r_next, i)
            keeps = (k,) + suffix
            if i == 0:
                value = float(vec[scorer.input_dim]) / LN2
                scored.append((value, keeps))
                scorer.remember(keeps, value)
            else:
                rec(i - 1, vec, used + (k if i in ranges else 0), keeps)

    rec(n - 1, None, 0, ())
    if floor_bits is not None:
        scored = [(v, keeps) for v, keeps in scored if v >= floor_bits - NOT_WORSE_EPS_BITS]
    if not scored:
        return None, None
    top = max(scorer.step(v) for v, _ in scored)
    tied = sorted(keeps for v, keeps in scored if scorer.step(v) == top)
    best = tied[0]
    for keeps in tied[1:]:
        if scorer.better(keeps, best):
            best = keeps
    return list(best), scorer.exact(best)


def _prefetch_pairs(scorer: KeepScorer, items, workers, progress):
    shapes = scorer.shapes
    # convolutions' distributions are not matrix ones: computed on demand
    todo = [(shapes[i][0], shapes[i][1], k / (shapes[i][0] * shapes[i][1])) for i, k in items
            if k > 0 and scorer.caps[i] is None and scorer.widths[i] == shapes[i][0]]
    prefetch(todo, scorer.rank_model, seed=scorer.seed, cache=scorer.cache, workers=workers,
             progress=None if progress is None else (lambda d, t: progress("integer search", d, t)))


def _moves(space: IntegerSpace, keeps: list[int]):
    """Plans one move away: ``delta`` weights from decision layer a to b (delta a power of two up
    to an eighth of a's keep-count), or into b while budget is left."""
    left = space.budget - sum(keeps[i] for i in space.decision)
    for a in space.decision:
        cap = max(1, int(keeps[a] * LOCAL_MAX_MOVE_FRACTION))
        deltas = [1 << e for e in range(cap.bit_length())]  # 1, 2, 4, ... <= cap
        for b in space.decision:
            if b == a:
                continue
            for delta in reversed(deltas):
                c = list(keeps)
                c[a] -= delta
                c[b] += delta
                yield tuple(c)
    if left > 0:
        for b in space.decision:
            for e in range(left.bit_length()):  # 1, 2, 4, ... <= left
                c = list(keeps)
                c[b] += 1 << e
                yield tuple(c)


def local_search(space: IntegerSpace, scorer: KeepScorer, keeps, *, workers=None, progress=None,
                 max_evaluations: int = LOCAL_MAX_EVALUATIONS):
    """Best-improvement search over :func:`_moves` on the exact bound (0.01-bit steps). Returns
    ``(keeps, log2_bound, stopped_early)``."""
    current = tuple(int(k) for k in keeps)
    evaluations = 0
    # at the dense bound (every layer at full rank) nothing can gain: skip the sampling
    dense = scorer.dense_bits()
    if scorer.exact(current) >= dense - 1e-9:
        return list(current), scorer.exact(current), False
    # robust levels cost fresh distributions: compare the exact bound only; a prior's distance
    # (or the kept mass) is free, so its moves may also trade nothing for a plan nearer the prior
    levels = None if scorer.one_level else 1
    while True:
        neighbours = [c for c in dict.fromkeys(_moves(space, list(current))) if space.feasible(c)]
        if evaluations + len(neighbours) > max_evaluations:
            neighbours = neighbours[: max(0, max_evaluations - evaluations)]
        if not neighbours:
            break
        _prefetch_pairs(scorer, {(i, k) for c in neighbours for i, k in enumerate(c)}, workers, None)
        if progress is not None:
            progress("integer search", evaluations, max_evaluations)
        best = current
        for c in neighbours:
            if scorer.better(c, best, levels=levels):
                best = c
        evaluations += len(neighbours)
        if best == current:
            break
        current = best
    if progress is not None:
        progress("integer search", max_evaluations, max_evaluations)
    return list(current), scorer.exact(current), evaluations >= max_evaluations
