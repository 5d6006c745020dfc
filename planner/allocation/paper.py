"""The paper's own density search, for side-by-side comparison: ``--solver paper``.

Cai et al. (CPAIOR 2023, Section 4) choose the densities of a network with two hidden layers
by a 1-D search over the first layer's density p1, the second's following from the budget
(p2 = (K - p1 m1) / m2 for layer sizes m1, m2 and K kept weights):

1. three points: p1 at its lowest (the second layer as dense as the budget allows), the
   uniform p1 = p, and p1 at its highest (the first layer as dense as allowed);
2. the quadratic through the three (p1, bound) points: its stationary point is taken when it
   lies strictly between the lowest and highest p1, below the uniform p1, and its bound beats
   the uniform one;
3. otherwise a grid of :data:`GRID_POINTS` values of p1 from the lowest to the uniform one;
   the best of them, or the uniform plan if none beats it.

This follows the authors' published script (``bounding_accuracy/sampling.py``), whose grid
has 30 points where the paper's text has 12; ``points`` changes it. The continuous densities
are then rounded to whole weights that keep the budget (k1 = round(p1 m1), k2 = K - k1), and
the plan file reports that integer plan's bound. The search evaluates the bound at continuous
densities, each needing fresh rank distributions; with the paper's estimator (``--rank-model
svd``) that is minutes per evaluation on 2x400 networks.
"""

from __future__ import annotations

import math

import numpy as np

from planner.core.bound import LN2, log_bound
from planner.core.rank import RankDistribution, prefetch, rank_distribution
from planner.errors import ProblemError

#: the paper's text: a 12-point grid over p1 (the authors' script uses 30)
GRID_POINTS = 12


def check_paper_target(target) -> None:
    """The procedure is defined for two hidden layers under the weight budget alone."""
    decision = target.decision
    if len(target.chain) != 2 or len(decision) != 2:
        raise ProblemError(f"--solver paper is the paper's 1-D search for exactly two hidden layers; this network "
                           f"has {len(target.chain)} in the bound ({len(decision)} to decide): use --solver cpsat")
    if target.extras:
        raise ProblemError("--solver paper handles the weight budget only: drop --max-flops and further budgets")


def paper_search(target, *, points: int = GRID_POINTS, cache=None, workers=None, progress=None):
    """The paper's search on a validated two-hidden-layer target. Returns ``(keeps, p1, note)``:
    the integer keep-counts of the chain, the continuous p1 chosen and which step chose it."""
    check_paper_target(target)
    r = target.request
    (w1, w2) = target.chain
    m1, m2 = w1.size, w2.size
    budget = int(target.chain_budget)
    lo1, hi1 = target.min_keep[w1.name], min(target.max_keep[w1.name], m1)
    lo2, hi2 = target.min_keep[w2.name], min(target.max_keep[w2.name], m2)
    # the range of p1 that the budget and the layer limits allow
    k1_low, k1_high = max(lo1, budget - hi2), min(hi1, budget - lo2)
    p_low, p_high = k1_low / m1, k1_high / m1
    p_uniform = min(max(budget / (m1 + m2), p_low), p_high)

    def p2_of(p1):
        return (budget - p1 * m1) / m2

    def dist(w, p):
        if p <= 0.0:
            return RankDistribution.point_mass(w.rows, w.cols, 0, density=0.0)
        return rank_distribution(w.rows, w.cols, min(p, 1.0), r.rank_model, seed=r.seed, cache=cache)

    done = [0]

    def bits(p1):
        done[0] += 1
        if progress is not None:
            progress("paper search", done[0], 4 + points)
        dists = [dist(w1, p1), dist(w2, p2_of(p1))]
        return log_bound([w1.rows, w2.rows], dists, target.input_dim) / LN2

    def fetch(p1s):
        prefetch([(w.rows, w.cols, min(p, 1.0)) for p1 in p1s for w, p in ((w1, p1), (w2, p2_of(p1))) if p > 0],
                 r.rank_model, seed=r.seed, cache=cache, workers=workers)

    xs = [p_low, p_uniform, p_high]
    fetch(xs)
    ys = [bits(x) for x in xs]
    best_p, best_bits, note = p_uniform, ys[1], "uniform (nothing beat it)"
    accepted = False
    if len(set(xs)) == 3:
        a, b, _ = np.polyfit(xs, ys, 2)
        if a != 0.0 and math.isfinite(a):
            x_star = -b / (2.0 * a)
            if p_low < x_star < min(p_high, p_uniform):  # p_low >= 0, so x_star is never 0
                fetch([x_star])
                v = bits(x_star)
                if v > ys[1]:
                    best_p, best_bits, note, accepted = x_star, v, "the quadratic's stationary point", True
    if not accepted:
        grid = [float(x) for x in np.linspace(p_low, p_uniform, points)]
        grid = [x for x in grid if p2_of(x) > 0]
        fetch(grid)
        for x in grid:
            v = bits(x)
            if v > best_bits:
                best_p, best_bits, note = x, v, f"the best of {points} grid points"
    k1 = int(round(best_p * m1))
    k1 = min(max(k1, k1_low, 0), k1_high)
    k2 = budget - k1
    return [k1, k2], best_p, f"paper's 1-D search: {note}, p1 = {best_p:.6g}, {best_bits:.4f} bits at those densities"
