"""``--solver paper``: the paper's 1-D density search for two hidden layers, checked step by
step against the bound evaluated directly (planner.expected_bound) at the densities it tries."""

from __future__ import annotations

import numpy as np
import pytest

import planner
from planner import RankCache, plan
from planner.allocation.paper import GRID_POINTS, paper_search
from planner.allocation.request import PlanRequest, validate
from planner.core.bound import log2_bound
from planner.core.rank import RankDistribution, rank_distribution

CACHE = RankCache(disk=False)


def search(arch, density, rank_model="analytic"):
    target = validate(PlanRequest.build(arch, density=density, rank_model=rank_model, solver="paper"))
    return target, paper_search(target, cache=CACHE)


def bits(arch, p1, p2, rank_model="analytic"):
    if min(p1, p2) > 1e-15:
        return planner.expected_bound(arch, [p1, p2], rank_model=rank_model, cache=CACHE).log2_bound
    # a layer without weights has rank 0 (the other layer's hyperplanes still count)
    net = planner.Architecture.parse(arch)
    dists = [RankDistribution.point_mass(r, c, 0, density=0.0) if p <= 1e-15 else
             rank_distribution(r, c, p, rank_model, cache=CACHE) for (r, c), p in zip(net.weight_shapes, (p1, p2))]
    return log2_bound(net.hidden, dists, net.input_size)


def three_points(target):
    w1, w2 = target.chain
    k = target.chain_budget
    low = max(k - w2.size, 0) / w1.size
    high = min(k, w1.size) / w1.size
    return w1.size, w2.size, k, [low, k / (w1.size + w2.size), high]


@pytest.mark.parametrize("arch, density", [("784,100,100,10", 0.0005), ("784,100,100,10", 0.001),
                                           ("400,120,84,10", 0.0005), ("3072,100,100,10", 0.00025)])
def test_quadratic_step_is_the_vertex_through_three_points(arch, density):
    target, (keeps, p1, note) = search(arch, density)
    m1, m2, k, xs = three_points(target)
    ys = [bits(arch, x, (k - x * m1) / m2) for x in xs]
    # the vertex of the Lagrange parabola, in closed form
    (x0, x1, x2), (y0, y1, y2) = xs, ys
    num = (x1 - x0) ** 2 * (y1 - y2) - (x1 - x2) ** 2 * (y1 - y0)
    den = (x1 - x0) * (y1 - y2) - (x1 - x2) * (y1 - y0)
    vertex = x1 - 0.5 * num / den
    assert "quadratic" in note
    assert p1 == pytest.approx(vertex, rel=1e-6)
    assert bits(arch, p1, (k - p1 * m1) / m2) > y1
    assert sum(keeps) == k and keeps[0] == round(p1 * m1)


def test_grid_fallback_takes_the_best_grid_point_or_uniform():
    # at a density where the bound is flat near uniform the quadratic is rejected
    arch, density = "784,100,100,10", 0.05
    target, (keeps, p1, note) = search(arch, density)
    m1, m2, k, xs = three_points(target)
    assert "quadratic" not in note
    grid = [x for x in np.linspace(xs[0], xs[1], GRID_POINTS) if (k - x * m1) > 0]
    scores = {x: bits(arch, x, (k - x * m1) / m2) for x in grid}
    uniform = bits(arch, xs[1], xs[1])
    assert max(max(scores.values()), uniform) == pytest.approx(bits(arch, p1, (k - p1 * m1) / m2), abs=1e-9)
    assert sum(keeps) == k


def test_the_planner_is_never_below_the_paper_at_the_same_budget():
    for arch, density in [("784,100,100,10", 0.0005), ("784,100,100,10", 0.001), ("400,120,84,10", 0.0005),
                          ("784,200,200,10", 0.0004)]:
        ours = plan(arch, density=density, rank_model="analytic", tie_break="robust", cache=CACHE)
        theirs = plan(arch, density=density, rank_model="analytic", solver="paper", cache=CACHE)
        assert ours.kept == theirs.kept
        assert ours.objective["log2_bound"] >= theirs.objective["log2_bound"] - 1e-9
        assert theirs.objective["certificate_log2_upper"] is None and theirs.solver["name"] == "paper"


def test_paper_refuses_other_depths_and_budgets(tmp_path):
    with pytest.raises(planner.ProblemError, match="exactly two hidden layers"):
        plan("784,100,100,100,10", density=0.01, solver="paper", rank_model="analytic")
    with pytest.raises(planner.ProblemError, match="exactly two hidden layers"):
        plan("784,100,10", density=0.01, solver="paper", rank_model="analytic")
    with pytest.raises(planner.ProblemError, match="weight budget only"):
        plan("784,100,100,10", density=0.01, solver="paper", rank_model="analytic", max_flops=500)


def test_paper_cli_one_line_error_exit_2(tmp_path):
    import subprocess
    import sys

    out = tmp_path / "p.json"
    run = subprocess.run([sys.executable, "-m", "planner", "plan", "--arch", "784,100,100,100,10", "--density",
                          "0.01", "--solver", "paper", "--no-cache", "-o", str(out)], capture_output=True, text=True)
    assert run.returncode == 2 and "two hidden layers" in run.stderr
    assert len(run.stderr.strip().splitlines()) == 1 and not out.exists()
