"""One shared suite for every solver backend (the integer program of docs/theory.md section 3),
parametrized over :func:`solvers.available_solvers` through the ``backend`` fixture.

Oracles, all independent of the backends under test:
  * max-plus optimum: brute force over every feasible combination with ``maxplus_log_value``
    (``ExactSolver(objective="maxplus")``, the reference the IP backends must meet);
  * exact optimum: a brute force written here (itertools.product, ``problem.log_bound``) that
    the ``exact`` backend must meet and that every IP certificate must cover.
Problems are built directly from ``planner.problem`` with exact / analytic rank distributions,
so everything is fast and deterministic.
"""

from __future__ import annotations

import itertools
import os
import random
import subprocess
import sys
from dataclasses import dataclass
from functools import lru_cache

import pytest

from planner.errors import SolverError
from planner.allocation.problem import (
    AllocationProblem,
    LayerOption,
    LinearBudget,
    log_terms,
    maxplus_log_value,
    maxplus_tables,
)
from planner.core.rank import RankCache, rank_distribution
from solvers import REGISTRY, SolveStatus, available_solvers, get_solver
from solvers.exact import ExactSolver

#: The IP backends meet the brute-force max-plus optimum to this (cpsat rounds each term to 1e-4).
TOL = 1e-3
#: Floating-point slack for comparisons between two evaluations of the same exact quantity.
EPS = 1e-9

BACKENDS = available_solvers()
RANKS = RankCache(disk=False)


@pytest.fixture(params=BACKENDS)
def backend(request):
    return get_solver(request.param)


def is_ip(solver) -> bool:
    return solver.objective == "maxplus"


# ----------------------------------------------------------------------------- instances


def make_layer(name, rows, cols, keeps, method=None):
    size = rows * cols
    if method is None:
        method = "exact" if size <= 12 else "analytic"
    dists = tuple(rank_distribution(rows, cols, k / size, method, cache=RANKS) for k in keeps)
    return LayerOption(name, rows, cols, tuple(keeps), dists)


def spread(size, count):
    """``count`` keep-counts spread over 1..size, always including the dense one."""
    count = min(count, size)
    return sorted({max(1, round(size * (i + 1) / count)) for i in range(count)})


def build(input_size, widths, d0, keeps, budgets, method=None):
    """``budgets``: list of (name, cost function of (layer index, keep), fraction f); the limit
    is min_total + f * (max_total - min_total), f < 0 going below the cheapest combination."""
    layers, prev = [], input_size
    for i, (w, ks) in enumerate(zip(widths, keeps)):
        layers.append(make_layer(f"fc{i + 1}", w, prev, ks, method))
        prev = w
    out = []
    for name, cost, frac in budgets:
        costs = tuple(tuple(int(cost(i, k)) for k in layer.keeps) for i, layer in enumerate(layers))
        lo = sum(min(c) for c in costs)
        hi = sum(max(c) for c in costs)
        limit = lo - 1 if frac < 0 else lo + int(frac * (hi - lo))
        out.append(LinearBudget(name, costs, limit))
    return AllocationProblem(tuple(layers), d0, tuple(out))


def weights(i, k):
    return k


NAMED = {
    # the running example: 5 -> 4 -> 3 -> 2, exact rank distributions, one weight budget
    "4-3-2-on-5": lambda: build(5, [4, 3, 2], 5, [spread(20, 15), range(1, 13), range(1, 7)],
                                [("weights", weights, 0.4)], method="exact"),
    "one-hidden-layer": lambda: build(6, [3], 6, [range(1, 16)], [("weights", weights, 0.5)], method="exact"),
    "three-hidden-layers": lambda: build(12, [10, 8, 6], 12, [spread(120, 10), spread(80, 10), spread(48, 10)],
                                         [("weights", weights, 0.3), ("flops", lambda i, k: k * (3 - i), 0.5)]),
    "d0-is-1": lambda: build(4, [3, 3], 1, [range(1, 13), range(1, 10)], [("weights", weights, 0.35)], method="exact"),
    "bottleneck": lambda: build(6, [5, 2, 5], 6, [spread(30, 12), range(1, 11), range(1, 11)],
                                [("weights", weights, 0.45)]),
    # an even width whose j-table peaks inside it (ln C(6, j), top = d0 = 4) before a narrow
    # layer: the chords near the top of the table matter
    "even-then-narrow": lambda: build(6, [6, 2], 4, [spread(36, 15), range(1, 13)], [("weights", weights, 0.6)]),
    "no-budget": lambda: build(4, [3, 2], 4, [range(1, 13), range(1, 7)], []),
}

N_RANDOM = 32


def random_instance(seed):
    rng = random.Random(1000 + seed)
    n_layers = rng.randint(1, 3)
    input_size = rng.randint(1, 9)
    d0 = rng.randint(1, input_size)
    widths = [rng.randint(1, 9) for _ in range(n_layers)]
    keeps, prev, combos = [], input_size, 1
    for w in widths:
        size = w * prev
        count = rng.randint(1, min(15, size, max(1, 1500 // combos)))
        ks = sorted(rng.sample(range(1, size + 1), count))
        keeps.append(ks)
        combos *= count
        prev = w
    budgets = [("weights", weights, rng.random())]
    if rng.random() < 0.5:
        scale = [rng.randint(1, 4) for _ in widths]
        budgets.append(("flops", lambda i, k, s=scale: k * s[i], rng.random()))
    return build(input_size, widths, d0, keeps, budgets)


INSTANCES = list(NAMED) + [f"random-{i}" for i in range(N_RANDOM)]


@lru_cache(maxsize=None)
def instance(name) -> AllocationProblem:
    if name in NAMED:
        return NAMED[name]()
    return random_instance(int(name.split("-")[1]))


def budgets_hold(problem, choice) -> bool:
    """Feasibility, written out again rather than trusting ``problem.feasible``."""
    for b in problem.budgets:
        if sum(b.costs[layer][c] for layer, c in enumerate(choice)) > b.limit:
            return False
    return all(0 <= c < len(layer.keeps) for c, layer in zip(choice, problem.layers))


@dataclass(frozen=True)
class Reference:
    feasible: tuple[tuple[int, ...], ...]
    maxplus: float  # brute-force max-plus optimum
    exact: float  # brute-force best exact ln bound


@lru_cache(maxsize=None)
def reference(name) -> Reference:
    problem = instance(name)
    feasible = tuple(
        c for c in itertools.product(*(range(len(layer.keeps)) for layer in problem.layers))
        if budgets_hold(problem, c)
    )
    assert feasible, f"{name}: the generator must make feasible instances"
    exact = max(problem.log_bound(c) for c in feasible)
    mp = ExactSolver(objective="maxplus").solve(problem)
    assert mp.status is SolveStatus.OPTIMAL
    return Reference(feasible, mp.objective, exact)


@lru_cache(maxsize=None)
def _solved(solver_name, objective, name):
    solver = ExactSolver(objective) if solver_name == "exact" else get_solver(solver_name)
    return solver.solve(instance(name), time_limit=60)


def solved(solver, name):
    return _solved(solver.name, solver.objective, name)


# ----------------------------------------------------------------------------- the suite


@pytest.mark.parametrize("name", INSTANCES)
def test_optimum_matches_brute_force(backend, name):
    problem, ref = instance(name), reference(name)
    res = solved(backend, name)
    assert res.status is SolveStatus.OPTIMAL, res.message
    assert res.choice is not None and budgets_hold(problem, res.choice)
    assert len(res.choice) == len(problem.layers)
    if is_ip(backend):
        assert res.objective == pytest.approx(ref.maxplus, abs=TOL)
        own = maxplus_log_value(maxplus_tables(problem), res.choice, problem.input_dim)
        assert own == pytest.approx(res.objective, abs=TOL)
    else:
        assert problem.log_bound(res.choice) == pytest.approx(ref.exact, abs=EPS)
        assert res.objective == pytest.approx(ref.exact, abs=EPS)


@pytest.mark.parametrize("name", INSTANCES)
def test_certificate(backend, name):
    """best_bound + ln(number of terms) bounds the best exact value of every feasible choice."""
    problem, ref = instance(name), reference(name)
    res = solved(backend, name)
    assert res.best_bound is not None
    if is_ip(backend):
        assert res.best_bound >= ref.maxplus - TOL
        assert res.best_bound + log_terms(maxplus_tables(problem)) >= ref.exact - EPS
        assert res.best_bound >= res.objective - EPS
    else:
        assert res.best_bound == pytest.approx(ref.exact, abs=EPS)


@pytest.mark.parametrize("name", INSTANCES)
def test_backends_agree(name):
    problem, ref = instance(name), reference(name)
    solvers = {n: get_solver(n) for n in BACKENDS}
    results = {n: solved(s, name) for n, s in solvers.items()}
    ip = {n: r for n, r in results.items() if is_ip(solvers[n])}
    values = [r.objective for r in ip.values()]
    assert max(values) - min(values) <= TOL, {n: r.objective for n, r in ip.items()}
    if "exact" in results:
        best = results["exact"].objective
        assert best == pytest.approx(ref.exact, abs=EPS)
        # every IP plan is feasible, so none beats the exact optimum
        for n, r in ip.items():
            assert problem.log_bound(r.choice) <= best + EPS, n


def infeasible_instances():
    below = build(5, [4, 3], 5, [spread(20, 8), range(1, 9)], [("weights", weights, -1)], method="exact")
    # each budget alone can be met, but not both: one wants few weights, the other many
    conflict = build(4, [3, 2], 4, [range(1, 13), range(1, 7)],
                     [("weights", weights, 0.2), ("density", lambda i, k: -k, 0.2)], method="exact")
    single = build(3, [2], 3, [range(1, 7)], [("weights", weights, -1)], method="exact")
    return {"below-cheapest": below, "conflicting-budgets": conflict, "one-layer": single}


INFEASIBLE = infeasible_instances()


@pytest.mark.parametrize("name", list(INFEASIBLE))
def test_infeasible_stays_infeasible(backend, name):
    problem = INFEASIBLE[name]
    assert not any(budgets_hold(problem, c) for c in problem.all_choices())
    for kwargs in ({}, {"pool_size": 3, "hint": (0,) * len(problem.layers), "time_limit": 30}):
        res = backend.solve(problem, **kwargs)
        assert res.status is SolveStatus.INFEASIBLE, res.message
        assert res.choice is None and not res.has_solution
        assert res.objective is None and res.pool == []


@pytest.mark.parametrize("name", ["4-3-2-on-5", "three-hidden-layers", "random-3"])
def test_options_and_pool(backend, name, tmp_path, monkeypatch):
    problem, ref = instance(name), reference(name)
    monkeypatch.chdir(tmp_path)
    tables = maxplus_tables(problem)
    value = (lambda c: maxplus_log_value(tables, c, problem.input_dim)) if is_ip(backend) else problem.log_bound
    best = ref.maxplus if is_ip(backend) else ref.exact
    tol = TOL if is_ip(backend) else EPS

    res = backend.solve(problem, time_limit=20, threads=2, seed=12345, pool_size=3, hint=ref.feasible[0])
    assert res.status is SolveStatus.OPTIMAL, res.message
    assert res.objective == pytest.approx(best, abs=tol)
    pool = res.pool
    assert len(pool) >= min(3, len(ref.feasible))
    assert len(set(pool)) == len(pool)
    assert all(budgets_hold(problem, c) for c in pool)
    assert pool[0] == res.choice
    assert value(pool[0]) >= max(value(c) for c in pool) - tol
    # the no-good cuts make the first three the three best, in order (the exact backend sorts)
    if backend.name in ("ortools-mip", "pulp", "exact"):
        top = sorted((value(c) for c in ref.feasible), reverse=True)[:3]
        assert [value(c) for c in pool[:3]] == pytest.approx(top, abs=tol)
    # same seed, same answer; nothing written to the working directory
    again = backend.solve(problem, time_limit=20, threads=2, seed=12345, pool_size=3, hint=ref.feasible[0])
    assert again.choice == res.choice
    assert os.listdir(tmp_path) == []


def test_a_bad_hint_is_only_a_hint(backend):
    problem, ref = instance("d0-is-1"), reference("d0-is-1")
    infeasible_hint = tuple(len(layer.keeps) - 1 for layer in problem.layers)
    for hint in (infeasible_hint, (0,), (99,) * len(problem.layers)):
        res = backend.solve(problem, hint=hint)
        assert res.status is SolveStatus.OPTIMAL
        assert res.objective == pytest.approx(ref.maxplus if is_ip(backend) else ref.exact, abs=TOL)


def test_unknown_solver_lists_the_valid_names():
    with pytest.raises(SolverError) as info:
        get_solver("nope")
    for name in REGISTRY:
        assert name in str(info.value)


def test_registry_lists_the_new_backends():
    assert "exact" in BACKENDS and "cpsat" in BACKENDS
    for name in ("ortools-mip", "pulp"):
        assert name in REGISTRY


def test_backends_import_lazily():
    code = ("import sys, planner, solvers, solvers.cpsat, solvers.exact, solvers.ortools_mip, solvers.pulp_cbc; "
            "print([m for m in ('torch', 'ortools', 'pulp') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# ------------------------------------------------------------------ status mapping and model


def test_pulp_status_mapping_never_calls_a_timeout_optimal():
    pulp = pytest.importorskip("pulp")
    from solvers.pulp_cbc import map_status

    # CBC "Stopped on time - objective value ...": PuLP says status Optimal, solution Integer Feasible
    assert map_status(pulp.LpStatusOptimal, pulp.LpSolutionIntegerFeasible) is SolveStatus.FEASIBLE
    assert map_status(pulp.LpStatusOptimal, pulp.LpSolutionOptimal) is SolveStatus.OPTIMAL
    assert map_status(pulp.LpStatusInfeasible, pulp.LpSolutionInfeasible) is SolveStatus.INFEASIBLE
    # stopped without an integer solution
    assert map_status(pulp.LpStatusNotSolved, pulp.LpSolutionNoSolutionFound) is SolveStatus.UNKNOWN
    assert map_status(pulp.LpStatusUndefined, pulp.LpSolutionNoSolutionFound) is SolveStatus.UNKNOWN
    assert map_status(pulp.LpStatusUnbounded, pulp.LpSolutionUnbounded) is SolveStatus.UNKNOWN


def test_ortools_status_mapping():
    pywraplp = pytest.importorskip("ortools.linear_solver.pywraplp")
    from solvers.ortools_mip import status_map

    m = status_map()
    assert m[pywraplp.Solver.OPTIMAL] is SolveStatus.OPTIMAL
    assert m[pywraplp.Solver.FEASIBLE] is SolveStatus.FEASIBLE
    assert m[pywraplp.Solver.INFEASIBLE] is SolveStatus.INFEASIBLE
    for other in (pywraplp.Solver.NOT_SOLVED, pywraplp.Solver.ABNORMAL, pywraplp.Solver.UNBOUNDED,
                  pywraplp.Solver.MODEL_INVALID):
        assert m.get(other, SolveStatus.UNKNOWN) is SolveStatus.UNKNOWN


@pytest.mark.parametrize("name", ["4-3-2-on-5", "bottleneck", "d0-is-1", "random-0", "random-7"])
def test_mip_model_reaches_the_max_plus_value_of_every_choice(name):
    """The shared MIP model admits, for each feasible choice, a solution worth exactly its
    max-plus value (the hint completion), so its optimum is at least the max-plus optimum."""
    from solvers._maxplus_mip import MaxPlusMip

    problem, ref = instance(name), reference(name)
    model = MaxPlusMip.build(problem)
    tables = model.tables
    for choice in random.Random(0).sample(ref.feasible, min(40, len(ref.feasible))):
        values = model.hint(choice)
        assert model.check(values) is None
        assert model.choice_from(values) == choice
        assert model.value(values) == pytest.approx(maxplus_log_value(tables, choice, problem.input_dim), abs=1e-9)


@pytest.mark.parametrize("name", ["4-3-2-on-5", "bottleneck", "random-29"])
def test_ortools_mip_cbc_engine(name):
    """ortools-mip falls back to CBC when OR-Tools has no SCIP: that engine must hold too."""
    pytest.importorskip("ortools.linear_solver.pywraplp")
    from solvers.ortools_mip import _create

    if _create("CBC")[1] is None:
        pytest.skip("this OR-Tools build has no CBC")
    problem, ref = instance(name), reference(name)
    res = get_solver("ortools-mip", engine="CBC").solve(problem, pool_size=2, threads=2, seed=3,
                                                         hint=ref.feasible[0], time_limit=20)
    assert res.status is SolveStatus.OPTIMAL, res.message
    assert res.objective == pytest.approx(ref.maxplus, abs=TOL)
    assert budgets_hold(problem, res.choice) and res.pool[0] == res.choice
    assert res.best_bound + log_terms(maxplus_tables(problem)) >= ref.exact - EPS
    res = get_solver("ortools-mip", engine="CBC").solve(INFEASIBLE["conflicting-budgets"])
    assert res.status is SolveStatus.INFEASIBLE and res.choice is None
