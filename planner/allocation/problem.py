"""The allocation problem: the frozen standard form that every solver backend consumes.

A backend never sees a network or torch: it sees, per decision layer (a hidden ReLU layer of
the bound chain, in order), the candidate keep-counts with their rank distributions, and the
linear budgets over those candidates (docs/theory.md section 3). Everything that is fixed (frozen layers,
layers outside the bound) has already been taken out of the budgets.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from planner.core.bound import LN2, log_binomial_prefix, log_binomials, log_bound
from planner.errors import ProblemError
from planner.core.rank import RankDistribution


@dataclass(frozen=True)
class LayerOption:
    """One decision layer: width ``rows`` (it enters the bound), ``cols`` inputs, and its
    candidate keep-counts (ascending) each with the rank distribution of that density."""

    name: str
    rows: int
    cols: int
    keeps: tuple[int, ...]
    dists: tuple[RankDistribution, ...]
    geometry: object = None  # a planner.core.conv.ConvShape for a convolution; else rows x cols

    def __post_init__(self) -> None:
        from planner.core.conv import MatrixShape

        if self.geometry is None:
            object.__setattr__(self, "geometry", MatrixShape(self.rows, self.cols))
        if not self.keeps:
            raise ProblemError(f"layer {self.name}: no candidate keep-count")
        if len(self.keeps) != len(self.dists):
            raise ProblemError(f"layer {self.name}: {len(self.keeps)} keep-counts but {len(self.dists)} distributions")
        if list(self.keeps) != sorted(set(self.keeps)):
            raise ProblemError(f"layer {self.name}: keep-counts must be strictly increasing")
        if self.keeps[0] < 0 or self.keeps[-1] > self.size:
            raise ProblemError(f"layer {self.name}: keep-counts must lie in [0, {self.size}]")

    @property
    def size(self) -> int:
        return self.rows * self.cols

    @property
    def width(self) -> int:
        """The units (hyperplanes) the layer adds to the bound: rows, or a convolution's units."""
        return self.geometry.hyperplanes

    @property
    def cap(self) -> int | None:
        return self.geometry.cap


@dataclass(frozen=True)
class LinearBudget:
    """sum over layers of ``costs[l][c]`` for the chosen candidates <= ``limit`` (integers, so
    that CP-SAT sees the budget exactly: weights, multiply-accumulates, bytes...)."""

    name: str
    costs: tuple[tuple[int, ...], ...]
    limit: int


@dataclass(frozen=True)
class AllocationProblem:
    """Choose one candidate per layer, within every budget, maximizing the exact bound."""

    layers: tuple[LayerOption, ...]
    input_dim: int
    budgets: tuple[LinearBudget, ...]
    _exact_memo: dict = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        if not self.layers:
            raise ProblemError("an allocation problem needs at least one decision layer")
        if self.input_dim < 1:
            raise ProblemError(f"input dimension must be >= 1, got {self.input_dim}")
        for b in self.budgets:
            if len(b.costs) != len(self.layers) or any(
                len(cost) != len(layer.keeps) for cost, layer in zip(b.costs, self.layers)
            ):
                raise ProblemError(f"budget {b.name!r}: one cost per candidate of every layer is needed")

    @property
    def widths(self) -> list[int]:
        return [layer.width for layer in self.layers]

    @property
    def caps(self) -> list[int | None]:
        return [layer.cap for layer in self.layers]

    @property
    def n_combinations(self) -> int:
        return math.prod(len(layer.keeps) for layer in self.layers)

    def feasible(self, choice: Sequence[int]) -> bool:
        return all(
            sum(b.costs[i][c] for i, c in enumerate(choice)) <= b.limit for b in self.budgets
        )

    def keeps(self, choice: Sequence[int]) -> list[int]:
        return [layer.keeps[c] for layer, c in zip(self.layers, choice)]

    def log_bound(self, choice: Sequence[int]) -> float:
        """The exact objective, ln R(1, d0), of a choice (memoized)."""
        key = tuple(int(c) for c in choice)
        hit = self._exact_memo.get(key)
        if hit is None:
            hit = log_bound(self.widths, [layer.dists[c] for layer, c in zip(self.layers, key)], self.input_dim,
                            self.caps)
            self._exact_memo[key] = hit
        return hit

    def log2_bound(self, choice: Sequence[int]) -> float:
        return self.log_bound(choice) / LN2

    def all_choices(self):
        return itertools.product(*(range(len(layer.keeps)) for layer in self.layers))


# --------------------------------------------------------------------------- max-plus tables


@dataclass(frozen=True)
class MaxPlusLayer:
    """Tables of one layer for the max-plus model: per candidate, the ranks ``k`` a path may
    take and ln P of each, and the concave table of the j-term: ln C(n, j) (or, at the last
    layer, ln sum_{i<=j} C(n, i)).

    Ranks are first merged into at most ``max_buckets`` runs (each carried by its top rank and
    its total probability), then thinned to the Pareto frontier: a rank below another rank of
    higher probability can never be on a best path (the recurrence is non-decreasing in k), so
    only ranks from the mode upwards stay. ``n_terms`` keeps the merged support size, which the
    certificate needs."""

    width: int
    max_dim: int  # largest d that reaches this layer
    ranks: tuple[tuple[int, ...], ...]
    log_probs: tuple[tuple[float, ...], ...]
    j_table: tuple[float, ...]  # index j = 0..min(width, max_dim)
    n_terms: tuple[int, ...] = ()
    next_dim: int = 0  # the largest dimension passed on: min(width, max_dim, cap)


def _buckets(dist: RankDistribution, max_buckets: int) -> tuple[tuple[int, ...], tuple[float, ...]]:
    """Merge the support into at most ``max_buckets`` runs of consecutive ranks, each carried by
    its top rank and its total probability. Merging only raises the max-plus value (the
    recurrence is non-decreasing in k), so the certificate stays an upper bound."""
    support = dist.support[dist.probs > 0]
    probs = dist.probs[dist.probs > 0]
    if len(support) <= max_buckets:
        return tuple(int(k) for k in support), tuple(float(math.log(p)) for p in probs)
    edges = np.linspace(0, len(support), max_buckets + 1).round().astype(int)
    ranks, logs = [], []
    for lo, hi in zip(edges[:-1], edges[1:]):
        if hi > lo:
            ranks.append(int(support[hi - 1]))
            logs.append(float(math.log(probs[lo:hi].sum())))
    return tuple(ranks), tuple(logs)


def _frontier(ranks: tuple[int, ...], logs: tuple[float, ...]) -> tuple[tuple[int, ...], tuple[float, ...]]:
    """Ranks whose probability beats that of every higher rank, ascending."""
    kept, best = [], -math.inf
    for k, w in sorted(zip(ranks, logs), reverse=True):
        if w > best:
            kept.append((k, w))
            best = w
    kept.reverse()
    return tuple(k for k, _ in kept), tuple(w for _, w in kept)


def maxplus_tables(problem: AllocationProblem, max_buckets: int = 48) -> list[MaxPlusLayer]:
    out = []
    dim = problem.input_dim
    last = len(problem.layers) - 1
    for i, layer in enumerate(problem.layers):
        n = layer.width
        top = min(n, dim)
        table = log_binomial_prefix(n) if i == last else log_binomials(n)
        merged = [_buckets(d, max_buckets) for d in layer.dists]
        thinned = [_frontier(r, w) for r, w in merged]
        nxt = top if layer.cap is None else min(top, layer.cap)
        out.append(MaxPlusLayer(
            n, dim, tuple(r for r, _ in thinned), tuple(w for _, w in thinned),
            tuple(float(v) for v in table[: top + 1]), tuple(len(r) for r, _ in merged), nxt,
        ))
        dim = nxt
    return out


def maxplus_log_value(tables: Sequence[MaxPlusLayer], choice: Sequence[int], input_dim: int) -> float:
    """The max-plus objective of a fixed choice: the best single path (k_l, j_l, d_l) of the
    recurrence, by dynamic programming over d (an oracle for the integer programs)."""
    best_next = None  # best_next[d] = best value of layers l+1.. entered with dimension d
    for i in range(len(tables) - 1, -1, -1):
        t, c = tables[i], choice[i]
        n, dmax = t.width, t.max_dim
        jt = np.asarray(t.j_table)
        cur = np.full(dmax + 1, -np.inf)
        for k, w in zip(t.ranks[c], t.log_probs[c]):
            for d in range(dmax + 1):
                m = min(k, d)
                if best_next is None:
                    val = w + jt[m]
                else:
                    j = np.arange(m + 1)
                    nxt = np.minimum(np.minimum(np.minimum(n - j, d), k), t.next_dim)
                    val = w + float(np.max(jt[j] + best_next[nxt]))
                if val > cur[d]:
                    cur[d] = val
        best_next = cur
    return float(best_next[input_dim])


def log_terms(tables: Sequence[MaxPlusLayer]) -> float:
    """ln of the most terms any choice's recurrence has: the exact value is at most this many
    times its largest term, so (max-plus optimum) + log_terms bounds every exact value."""
    total = 0.0
    for t in tables:
        total += math.log(max(t.n_terms)) + math.log(len(t.j_table))
    return total
