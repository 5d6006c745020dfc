"""The planning pipeline: optimality against brute force, the tie-break, budgets, the plan file."""

import itertools
import json
import math

import numpy as np
import pytest

import planner
from planner.allocation.pipeline import plan
from planner.allocation.scoring import Scorer
from planner.allocation.search import optimize
from planner.errors import InfeasibleError
from planner.errors import PlanFormatError, ProblemError
from planner.allocation.planfile import Plan
from planner.allocation.problem import AllocationProblem, LayerOption, LinearBudget
from planner.core.rank import RankCache, rank_distribution
from solvers import available_solvers

IP_BACKENDS = [s for s in available_solvers() if s != "exact"]


def random_problem(rng, cache):
    """L <= 3 hidden layers, <= 15 candidates each, analytic ranks, a random weight budget."""
    n_layers = int(rng.integers(1, 4))
    sizes = [int(rng.integers(2, 10)) for _ in range(n_layers + 1)]
    layers = []
    for i in range(n_layers):
        rows, cols = sizes[i + 1], sizes[i]
        keeps = sorted({int(v) for v in rng.integers(1, rows * cols + 1, int(rng.integers(2, 16)))})
        dists = [rank_distribution(rows, cols, k / (rows * cols), "analytic", cache=cache) for k in keeps]
        layers.append(LayerOption(f"fc{i + 1}", rows, cols, tuple(keeps), tuple(dists)))
    cheapest = sum(layer.keeps[0] for layer in layers)
    dearest = sum(layer.keeps[-1] for layer in layers)
    limit = int(rng.integers(cheapest, dearest + 1))
    budget = LinearBudget("weights", tuple(layer.keeps for layer in layers), limit)
    return AllocationProblem(tuple(layers), int(rng.integers(1, sizes[0] + 1)), (budget,))


def brute_force_best(problem):
    """max over every feasible combination of the exact bound, written independently."""
    best = -math.inf
    for choice in itertools.product(*(range(len(layer.keeps)) for layer in problem.layers)):
        if sum(layer.keeps[c] for layer, c in zip(problem.layers, choice)) <= problem.budgets[0].limit:
            best = max(best, problem.log_bound(choice))
    return best


@pytest.mark.parametrize("backend", IP_BACKENDS + ["exact"])
def test_pipeline_reaches_brute_force_optimum(backend):
    rng = np.random.default_rng(7)
    cache = RankCache(disk=False)
    for _ in range(25):
        problem = random_problem(rng, cache)
        choice, result, certificate = optimize(problem, solver=backend)
        assert problem.feasible(choice)
        best = brute_force_best(problem)
        # equal within the 0.01-bit tie resolution
        assert problem.log_bound(choice) / math.log(2) == pytest.approx(best / math.log(2), abs=0.01)
        assert certificate is not None and certificate >= best / math.log(2) - 1e-9


def test_infeasible_problem_is_reported_not_planned():
    cache = RankCache(disk=False)
    layer = LayerOption("fc1", 3, 4, (2, 5), tuple(rank_distribution(3, 4, k / 12, "exact", cache=cache) for k in (2, 5)))
    problem = AllocationProblem((layer,), 4, (LinearBudget("weights", ((2, 5),), 1),))
    for backend in available_solvers():
        with pytest.raises(InfeasibleError):
            optimize(problem, solver=backend)


def test_tie_break_prunes_long_rows_harder():
    """docs/theory.md section 3: at 784-100-100 and 5% the plan keeps a smaller fraction of layer 1."""
    p = plan("784,100,100,10", density=0.05, cache=RankCache(disk=False))
    fc1, fc2 = p.layer("fc1"), p.layer("fc2")
    assert fc1.density < 0.05 < fc2.density
    assert p.objective["log2_bound"] == pytest.approx(planner.dense_log2_bound([784, 100, 100]), abs=1e-6)


def test_plan_is_deterministic_to_the_byte():
    runs = [plan("784,100,100,10", density=0.02, cache=RankCache(disk=False)).to_json() for _ in range(2)]
    assert runs[0] == runs[1]


@pytest.mark.parametrize("arch, density", [("64,100,100,10", 0.03), ("784,300,100,10", 0.004), ("300,200,100,50,10", 0.01)])
def test_plan_keeps_the_budget_and_beats_uniform(arch, density):
    p = plan(arch, density=density, rank_model="analytic", cache=RankCache(disk=False))
    assert p.kept == p.target["keep"] == round(density * p.prunable)
    assert p.objective["log2_bound"] >= p.objective["uniform_log2_bound"] - 1e-9
    assert p.objective["certificate_gap_bits"] >= 0
    # the reported bound is the bound of the reported keep-counts
    report = planner.expected_bound(arch, [layer.density for layer in p.layers if layer.in_bound],
                                    rank_model="analytic")
    assert report.log2_bound == pytest.approx(p.objective["log2_bound"], abs=1e-6)
    output = p.layers[-1]
    assert output.frozen and output.keep == output.rows * output.cols


def test_prune_output_keeps_global_density_there():
    p = plan("64,50,10", density=0.2, rank_model="analytic", prune_output=True, cache=RankCache(disk=False))
    out = p.layer("fc2")
    assert not out.frozen and not out.in_bound
    assert out.keep == round(0.2 * out.rows * out.cols)
    assert p.kept == round(0.2 * (64 * 50 + 50 * 10))


def test_min_and_max_density_hold():
    p = plan("784,300,100,10", density=0.02, rank_model="analytic", min_density=0.01, max_density=0.05,
             cache=RankCache(disk=False))
    for layer in p.layers:
        if not layer.frozen:
            assert 0.01 - 1e-12 <= layer.density <= 0.05 + 1e-12
    with pytest.raises(InfeasibleError, match="minimum density"):
        plan("784,300,100,10", density=0.02, min_density=0.5, rank_model="analytic", cache=RankCache(disk=False))


def test_bad_requests_raise_specific_errors():
    with pytest.raises(planner.ArchitectureError):
        plan("784", density=0.1)
    with pytest.raises(planner.DensityError):
        plan("784,100,10", density=1.5)
    with pytest.raises(ProblemError):
        plan("784,100,10", density=0.1, keep=10)
    with pytest.raises(planner.SolverError, match="cpsat"):
        plan("784,100,10", density=0.1, solver="gurobi", rank_model="analytic")


def test_plan_json_round_trip_and_validation():
    p = plan("64,20,10", density=0.3, rank_model="analytic", cache=RankCache(disk=False))
    text = p.to_json()
    again = Plan.from_json(text)
    assert again.to_json() == text
    data = json.loads(text)
    newer = dict(data, format="sparsity-plan/99")
    with pytest.raises(PlanFormatError, match="newer"):
        Plan.from_json(json.dumps(newer))
    broken = json.loads(text)
    broken["layers"][0]["keep"] = broken["layers"][0]["rows"] * broken["layers"][0]["cols"] + 1
    with pytest.raises(PlanFormatError, match="keep"):
        Plan.from_json(json.dumps(broken))
    broken = json.loads(text)
    broken["layers"][0]["density"] = 0.5
    with pytest.raises(PlanFormatError, match="density"):
        Plan.from_json(json.dumps(broken))
    with pytest.raises(PlanFormatError, match="JSON"):
        Plan.from_json("{not json")
    with pytest.raises(PlanFormatError, match="format"):
        Plan.from_json(json.dumps({"layers": []}))


def test_parallel_sampling_gives_the_same_plan():
    one = plan("100,60,40,10", density=0.1, workers=1, cache=RankCache(disk=False)).to_json()
    two = plan("100,60,40,10", density=0.1, workers=2, cache=RankCache(disk=False)).to_json()
    assert one == two


def test_tiny_budgets():
    with pytest.raises(planner.DensityError, match="keeps no weight"):
        plan("784,300,100,10", density=1e-9)
    tiny = plan("784,300,100,10", keep=2, rank_model="analytic", cache=RankCache(disk=False))
    assert tiny.kept == 2 and all(layer.keep >= 0 for layer in tiny.layers)
    assert tiny.objective["log2_bound"] >= tiny.objective["uniform_log2_bound"] - 1e-9


def test_extra_linear_budgets_hold_and_bind():
    from planner.allocation.request import ExtraBudget

    cache = RankCache(disk=False)
    free = plan("784,100,100,10", density=0.02, rank_model="analytic", tie_break="none", cache=cache)
    # bytes: fc1 weights cost 4, fc2 weights 1; a limit the free plan breaks
    cost = {"fc1": 4, "fc2": 1}
    spent = sum(cost[layer.name] * layer.keep for layer in free.layers if layer.name in cost)
    budget = ExtraBudget("bytes", cost, int(spent * 0.8))
    tight = plan("784,100,100,10", density=0.02, rank_model="analytic", tie_break="none", budgets=[budget],
                 cache=cache)
    used = sum(cost[layer.name] * layer.keep for layer in tight.layers if layer.name in cost)
    assert used <= budget.limit
    # the free plan is the best integer plan keeping the budget (the bound grows with every
    # layer's keep-count), so a plan under a binding further budget cannot beat it
    assert tight.objective["log2_bound"] <= free.objective["log2_bound"] + 1e-9
    assert free.objective["certificate_covers"] == "integers"
    assert tight.kept <= tight.target["keep"]
    loose = plan("784,100,100,10", density=0.02, rank_model="analytic", tie_break="none",
                 budgets=[ExtraBudget("bytes", cost, 10 * spent)], cache=cache)
    assert [layer.keep for layer in loose.layers] == [layer.keep for layer in free.layers]
    with pytest.raises(InfeasibleError, match="bytes"):
        plan("784,100,100,10", density=0.02, min_density=0.01, rank_model="analytic",
             budgets=[ExtraBudget("bytes", cost, 10)], cache=cache)


def test_flops_budget_on_a_conv_model():
    torch = pytest.importorskip("torch")  # noqa: F841
    from examples.models import lenet5
    from planner.pruning.model import model_layers

    found = model_layers(lenet5(), (1, 32, 32))
    flops = {w.name: w.flops_per_weight for w in found.layers}
    kwargs = dict(layers=found.layers, density=0.1, rank_model="analytic", cache=RankCache(disk=False),
                  architecture_info={"input_size": found.input_size})
    free = plan(**kwargs)
    spent = sum(flops[layer.name] * layer.keep for layer in free.layers if not layer.frozen)
    limit = int(spent * 0.9)
    tight = plan(max_flops=limit, **kwargs)
    assert sum(flops[layer.name] * layer.keep for layer in tight.layers if not layer.frozen) <= limit


def test_uniform_that_breaks_a_budget_is_no_floor():
    from planner.allocation.request import ExtraBudget

    cost = {"fc1": 1, "fc2": 1}
    p = plan("64,40,30,10", density=0.2, rank_model="analytic", budgets=[ExtraBudget("macs", cost, 300)],
             cache=RankCache(disk=False))
    assert p.objective["uniform_log2_bound"] is None
    assert sum(layer.keep for layer in p.layers if layer.name in cost) <= 300
