"""How plans compare: the exact bound, then the robustness tie-break.

Under ``robust`` (the former default) two plans compare by their exact log2 bound and, when those
round to the same 0.01 bits, by the bound with every density halved, quartered, ... seven
times. ``robust-analytic`` scores the halved levels with the analytic rank model;
``prior:uniform`` and ``prior:erk`` prefer, among plans of equal bound, the one closest to that
allocation (:meth:`TieBreak.prior_distance`); ``magnitude`` and ``lamp`` prefer the one that keeps
the most of the trained weights (:func:`kept_mass`: the layers' retained shares of squared
magnitude, or their LAMP score mass); ``none`` compares the exact bound alone, at full
precision. Grid choices are scored by :class:`Scorer`, integer plans by :class:`KeepScorer`; a
new tie-break is a level of :class:`TieBreak` and a name in
:data:`planner.allocation.TIE_BREAKS`.
"""

from __future__ import annotations

import math

from collections import OrderedDict

import numpy as np

from planner.core.bound import LN2, input_dims, layer_log_r, log_bound
from planner.core.conv import as_geometry, layer_distribution
from planner.core.rank import RankDistribution

#: Under ``robust``, the halved levels of a layer whose short side exceeds this use the analytic
#: rank model: sampling them costs minutes on AlexNet-sized layers (thousands of matchings per
#: density at low densities), and the tie-break only orders plans of equal bound.
ROBUST_SAMPLED_MAX_SIDE = 1024
ROBUST_LEVELS = 8  # B(p), B(p/2), ..., B(p/2^7)
TIE_RESOLUTION_BITS = 0.01
#: suffix vectors of the halved levels kept for reuse (each at most d0 + 1 floats)
SUFFIX_MEMO = 4096
#: tie-breaks that rank a plan by the trained weights it keeps (they need the model's weights)
WEIGHT_TIE_BREAKS = ("magnitude", "lamp")


def kept_mass(weights, criterion: str) -> np.ndarray:
    """What a layer keeps of its trained weights when magnitude pruning leaves its ``k`` largest
    entries: element ``k`` of the returned array (length size + 1, 0 at k = 0).

    ``magnitude``: the retained share of the layer's squared magnitude, sum of the ``k``
    largest w^2 over sum of all w^2 (1 when dense; a layer of zeros counts as kept whole).
    ``lamp``: the sum of the ``k`` largest LAMP scores (Lee et al. 2021), where with the
    entries sorted by ascending w^2 the score of entry i is w_i^2 / sum_{j >= i} w_j^2. LAMP
    scores are ordered as the magnitudes are, so both masses belong to the same mask.
    Either is at most 1 per layer for ``magnitude`` and grows like ln k for ``lamp``."""
    sq = np.sort(np.square(np.asarray(weights, dtype=np.float64).ravel()))  # ascending
    if criterion == "magnitude":
        total = sq.sum()
        desc = sq[::-1] / total if total > 0 else np.full(sq.size, 1.0 / max(sq.size, 1))
    elif criterion == "lamp":
        from planner.allocation.baselines import lamp_scores

        desc = np.sort(lamp_scores(np.asarray(weights, dtype=np.float64).ravel()))[::-1]
    else:
        raise ValueError(f"unknown weight criterion {criterion!r}; choose one of {', '.join(WEIGHT_TIE_BREAKS)}")
    return np.concatenate([[0.0], np.cumsum(desc)])


class TieBreak:
    """The ordering shared by every scorer: the exact bound (level 0) in 0.01-bit steps (``none``
    compares the exact bound itself), then under ``robust*`` the bound with every density
    halved ``i`` times (levels 1..7), under ``prior:*`` the distance to the prior (level 1), or
    under ``magnitude`` / ``lamp`` the kept mass of the trained weights (level 1, ``mass``: one
    :func:`kept_mass` array per chain layer).
    Subclasses say what a plan is (:meth:`_exact`, :meth:`_keeps`) and which distributions its
    halved levels use (:meth:`_halved`)."""

    def __init__(self, rank_model="sampled", seed=0, cache=None, tie_break="none", prior=None, mass=None):
        self.rank_model, self.seed, self.cache, self.tie_break = rank_model, seed, cache, tie_break
        self._levels: dict[tuple, list[float]] = {}
        self.prior = None if prior is None else [int(k) for k in prior]
        self.mass = None if mass is None else [np.asarray(m, dtype=np.float64) for m in mass]
        self.by_prior = tie_break.startswith("prior:")
        self.by_mass = tie_break in WEIGHT_TIE_BREAKS
        if self.by_prior and self.prior is None:
            raise ValueError(f"tie-break {tie_break} needs the prior allocation")
        if self.by_mass and self.mass is None:
            raise ValueError(f"tie-break {tie_break} needs the kept mass of every chain layer")

    @property
    def one_level(self) -> bool:
        """Is the tie-break a single, free level (a prior's distance or the kept mass) rather
        than the halved bounds?"""
        return self.by_prior or self.by_mass

    def kept(self, key: tuple) -> float:
        """The kept mass of a plan: sum over chain layers of ``mass_l[keep_l]``."""
        return float(sum(m[int(k)] for m, k in zip(self.mass, self._keeps(key))))

    def _keeps(self, key: tuple) -> list[int]:
        """The keep-counts of a plan (chain order)."""
        raise NotImplementedError

    def prior_distance(self, key: tuple) -> float:
        """How far a plan is from the prior allocation: sum over layers of
        (prior_l / sum prior) * |ln(keep_l / prior_l)|, 0 at the prior itself."""
        total = sum(self.prior)
        out = 0.0
        for k, q in zip(self._keeps(key), self.prior):
            if q > 0:
                out += (q / total) * (abs(math.log(k / q)) if k > 0 else math.inf)
        return out

    def _exact(self, key: tuple) -> float:
        raise NotImplementedError

    def _halved(self, key: tuple, level: int) -> float:
        raise NotImplementedError

    def _uses_levels(self) -> bool:
        return self.tie_break != "none"

    def _level_dist(self, shape, p: float) -> RankDistribution:
        """A halved level's distribution: ``robust-analytic`` and layers with a short side above
        :data:`ROBUST_SAMPLED_MAX_SIDE` use the analytic model."""
        g = as_geometry(shape)
        model = self.rank_model
        if self.tie_break == "robust-analytic" or min(g.rows, g.cols) > ROBUST_SAMPLED_MAX_SIDE:
            model = "analytic"
        return layer_distribution(g, p, model, seed=self.seed, cache=self.cache)

    def level(self, key: tuple, i: int) -> float:
        if i >= 1 and self.by_prior:
            return -self.prior_distance(key)
        if i >= 1 and self.by_mass:
            return self.kept(key)
        levels = self._levels.setdefault(key, [])
        while len(levels) <= i:
            levels.append(self._exact(key) if not levels else self._halved(key, len(levels)))
        return levels[i]

    def exact(self, key: tuple) -> float:
        return self.level(key, 0)

    def remember(self, key: tuple, exact_bits: float) -> None:
        """Record a plan's exact bound computed elsewhere (by the same arithmetic)."""
        self._levels.setdefault(key, [exact_bits])

    def better(self, a: tuple, b: tuple, levels: int | None = None) -> bool:
        """Is plan ``a`` strictly better than ``b`` under the tie-break (or on its first
        ``levels`` levels)?"""
        if a == b:
            return False
        if levels is None:
            if self.one_level:
                levels = 2
            else:
                levels = ROBUST_LEVELS if self._uses_levels() else 1
        for i in range(levels):
            ra, rb = self._step_level(a, i), self._step_level(b, i)
            if ra != rb:
                return ra > rb
        return False

    def better_within_floor(self, a: tuple, b: tuple) -> bool:
        """Under a bound floor the bound is a constraint: is ``a`` better than ``b`` on the
        tie-break's own levels (distance to the prior, kept mass, or the halved bounds), then on
        the bound? Under ``none``, on the bound alone."""
        if self.tie_break == "none":
            return self.level(a, 0) > self.level(b, 0)
        for i in [*range(1, 2 if self.one_level else ROBUST_LEVELS), 0]:
            ra, rb = self._step_level(a, i), self._step_level(b, i)
            if ra != rb:
                return ra > rb
        return False

    def step(self, bits: float):
        """What two plans compare on: under a tie-break, the bound in 0.01-bit steps (so that
        the next level decides between near-equal plans); under ``none``, the bound itself."""
        return bits if self.tie_break == "none" else round(bits / TIE_RESOLUTION_BITS)

    def _step_level(self, key: tuple, i: int):
        value = self.level(key, i)
        if i >= 1 and self.one_level:
            return round(value, 9)  # distances (masses) equal up to float noise tie
        return self.step(value)


class Scorer(TieBreak):
    """Scores of grid choices: the exact bound at the candidates' densities, and the robustness
    tie-break levels B(p / 2^i), computed lazily and shared between plans."""

    def __init__(self, problem, cands=None, grid=None, rank_model="sampled", seed=0, cache=None,
                 tie_break="none", prior=None, mass=None):
        super().__init__(rank_model, seed, cache, tie_break, prior, mass)
        self.problem, self.cands, self.grid = problem, cands, grid

    def _keeps(self, choice):
        return self.problem.keeps(choice)

    def _uses_levels(self) -> bool:
        return self.tie_break != "none" and self.cands is not None

    def _dist(self, layer_index: int, cand, level: int):
        """The rank distribution of a candidate with its density halved ``level`` (>= 1) times;
        level 0 is the problem's own table."""
        layer = self.problem.layers[layer_index]
        if cand.index is not None:
            p = self.grid.density(cand.index - level * self.grid.steps)
        else:
            p = cand.density / 2.0**level
        return self._level_dist(layer.geometry, p)

    def _exact(self, choice):
        return self.problem.log_bound(choice) / LN2

    def _halved(self, choice, level):
        """The recurrence from the last layer back, its suffixes shared between plans: the polish
        compares neighbours that differ in one or two layers (the same arithmetic as
        :func:`log_bound`, so the values are identical)."""
        widths, caps, d0 = self.problem.widths, self.problem.caps, self.problem.input_dim
        dims = self._dims if hasattr(self, "_dims") else None
        if dims is None:
            dims = self._dims = input_dims(widths, d0, caps)
            self._suffixes: OrderedDict = OrderedDict()
        vec = None
        for i in range(len(choice) - 1, -1, -1):
            key = (level, tuple(choice[i:]))
            hit = self._suffixes.get(key)
            if hit is None:
                hit = layer_log_r(widths[i], self._dist(i, self.cands[i][choice[i]], level), dims[i], vec, i)
                self._suffixes[key] = hit
                if len(self._suffixes) > SUFFIX_MEMO:
                    self._suffixes.popitem(last=False)
            else:
                self._suffixes.move_to_end(key)
            vec = hit
        return float(vec[int(d0)]) / LN2


class KeepScorer(TieBreak):
    """Scores of integer plans: a tuple of keep-counts of the bound chain, each layer scored at
    density keep / size (the plan file's own densities), halved levels at (keep / size) / 2^i.
    ``shapes`` are (rows, cols) pairs or layer geometries (planner.core.conv)."""

    def __init__(self, shapes, input_dim, rank_model="sampled", seed=0, cache=None, tie_break="none",
                 prior=None, mass=None):
        super().__init__(rank_model, seed, cache, tie_break, prior, mass)
        self.geometries = [as_geometry(s) for s in shapes]
        self.shapes, self.input_dim = [(g.rows, g.cols) for g in self.geometries], int(input_dim)
        self.widths = [g.hyperplanes for g in self.geometries]
        self.caps = [g.cap for g in self.geometries]

    def _keeps(self, keeps):
        return list(keeps)

    def dist(self, layer_index: int, keep: int) -> RankDistribution:
        g = self.geometries[layer_index]
        return layer_distribution(g, keep / g.size, self.rank_model, seed=self.seed, cache=self.cache)

    def _exact(self, keeps):
        return log_bound(self.widths, [self.dist(i, k) for i, k in enumerate(keeps)], self.input_dim,
                         self.caps) / LN2

    def _halved(self, keeps, level):
        dists = [self._level_dist(g, k / g.size / 2.0**level) for g, k in zip(self.geometries, keeps)]
        return log_bound(self.widths, dists, self.input_dim, self.caps) / LN2

    def dense_bits(self) -> float:
        """The bound with every chain layer dense."""
        return self._exact([g.size for g in self.geometries])
