"""How plans compare: the exact bound, then the robustness tie-break.

Under ``robust`` (the default) two plans compare by their exact log2 bound and, when those
round to the same 0.01 bits, by the bound with every density halved, quartered, ... seven
times. ``robust-analytic`` scores the halved levels with the analytic rank model; ``none``
compares the exact bound alone. A new tie-break is a branch of :meth:`Scorer.better` and a
name in :data:`planner.allocation.request.TIE_BREAKS`.
"""

from __future__ import annotations

from planner.core.bound import LN2, log_bound
from planner.core.rank import RankDistribution, rank_distribution

#: Under ``robust``, the halved levels of a layer whose short side exceeds this use the analytic
#: rank model: sampling them costs minutes on AlexNet-sized layers (thousands of matchings per
#: density at low densities), and the tie-break only orders plans of equal bound.
ROBUST_SAMPLED_MAX_SIDE = 1024
ROBUST_LEVELS = 8  # B(p), B(p/2), ..., B(p/2^7)
TIE_RESOLUTION_BITS = 0.01


class Scorer:
    """Scores of grid choices: the exact bound at the candidates' densities, and the robustness
    tie-break levels B(p / 2^i), computed lazily and shared between plans."""

    def __init__(self, problem, cands=None, grid=None, rank_model="sampled", seed=0, cache=None,
                 tie_break="none"):
        self.problem, self.cands, self.grid = problem, cands, grid
        self.rank_model, self.seed, self.cache, self.tie_break = rank_model, seed, cache, tie_break
        self._levels: dict[tuple, list[float]] = {}

    def _dist(self, layer_index: int, cand, level: int):
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
