"""The default tie-break ``auto`` (planner/allocation/request.py ``resolve_auto``) and the bound
floor's line search where the grid is too large to score (planner/allocation/secondary.py).

Oracles: the baselines' own plans (planner.allocation.baselines: LAMP's global top-k, ERK),
computed without the floor code; the exact bound of every blend on the line, scored one by one
with planner.expected_bound (the plain recurrence); the explicit variant the default stands for.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import planner
from planner import RankCache, plan
from planner.allocation import AUTO_WITH_WEIGHTS, AUTO_WITHOUT_WEIGHTS
from planner.allocation.baselines import baseline_plan
from planner.allocation.request import PlanRequest, resolve_auto

CACHE = RankCache(disk=False)


def keeps(p):
    return [layer.keep for layer in p.layers]


def trained_like(seed=5):
    nrng = np.random.default_rng(seed)
    return {"fc1": nrng.normal(size=(20, 64)) * 0.1, "fc2": nrng.normal(size=(20, 20)) * 2.0,
            "fc3": nrng.normal(size=(10, 20))}


# ------------------------------------------------------------------------ what auto becomes


def test_auto_is_the_default_of_the_library_and_the_cli():
    assert PlanRequest.build("8,4,2").tie_break == "auto"
    import inspect

    assert inspect.signature(plan).parameters["tie_break"].default == "auto"
    from planner.cli.plan import plan_command

    assert next(p for p in plan_command.params if p.name == "tie_break").default == "auto"
    from planner.experiments.compare import LR_BOUND_DEFAULT, lr_bound_options

    assert LR_BOUND_DEFAULT == "auto" and lr_bound_options("lr-bound") == {"tie_break": "auto"}


@pytest.mark.parametrize("weights, floor, expected", [
    (None, None, ("prior:erk", "2")),
    ({"fc1": np.ones((4, 8)), "fc2": np.ones((2, 4))}, None, ("lamp", "2")),
    (None, "7", ("prior:erk", "7")),
    ({"fc1": np.ones((4, 8)), "fc2": np.ones((2, 4))}, "1%", ("lamp", "1%")),
])
def test_resolve_auto_by_what_the_request_holds(weights, floor, expected):
    r = resolve_auto(PlanRequest.build("8,4,2", density=0.5, weights=weights, bound_floor=floor))
    assert (r.tie_break, r.bound_floor) == expected and r.resolved_from == "auto"
    assert (AUTO_WITHOUT_WEIGHTS if weights is None else AUTO_WITH_WEIGHTS)[0] == expected[0]


@pytest.mark.parametrize("fields", [dict(objective="sensitivity"), dict(solver="paper"), dict(max_latency=1.0)])
def test_where_no_floor_applies_auto_orders_ties_as_robust(fields):
    r = resolve_auto(PlanRequest.build("8,4,2", density=0.5, **fields))
    assert (r.tie_break, r.bound_floor, r.resolved_from) == ("robust", None, "auto")


def test_without_a_relu_chain_auto_is_robust_without_a_floor():
    from planner import WeightLayer

    layers = [WeightLayer("a", 4, 8, in_bound=False), WeightLayer("b", 2, 4, in_bound=False)]
    r = resolve_auto(PlanRequest.build(layers=layers, density=0.5))
    assert (r.tie_break, r.bound_floor) == ("robust", None)
    assert plan(layers=layers, density=0.5).objective["tie_break"] == "robust"


def test_an_explicit_tie_break_is_left_alone():
    for tb in ("robust", "prior:uniform", "none"):
        r = resolve_auto(PlanRequest.build("8,4,2", density=0.5, tie_break=tb))
        assert (r.tie_break, r.bound_floor, r.resolved_from) == (tb, None, None)


# --------------------------------------------------------------- the default's plans, by oracle


def test_the_default_without_weights_is_erk_where_erk_keeps_the_floor():
    """784-300-100-10 at 5%: ERK's own plan (the baseline, not the floor code) reaches the dense
    bound, so the default is ERK's plan, weight for weight, and says which rule made it."""
    p = plan("784,300,100,10", density=0.05, cache=CACHE)
    erk = baseline_plan("erk", "784,300,100,10", density=0.05, cache=CACHE)
    assert keeps(p) == keeps(erk)
    assert p.objective["tie_break"] == "prior:erk" and p.objective["tie_break_requested"] == "auto"
    assert p.objective["bound_floor"] == "2 bits"
    assert p.objective["log2_bound"] >= p.objective["floor_log2_bound"] - 1e-6


@pytest.mark.parametrize("arch, density", [("64,20,20,10", 0.07), ("64,30,12,10", 0.05), ("16,12,12,12,4", 0.1)])
def test_the_default_is_the_explicit_variant_byte_for_byte(arch, density):
    weights = None
    if arch == "64,20,20,10":
        weights = trained_like()
    default = plan(arch, density=density, weights=weights, rank_model="analytic", grid=12, cache=CACHE)
    tie, floor = AUTO_WITH_WEIGHTS if weights is not None else AUTO_WITHOUT_WEIGHTS
    explicit = plan(arch, density=density, weights=weights, rank_model="analytic", grid=12, cache=CACHE,
                    tie_break=tie, bound_floor=floor)
    a, b = default.to_dict(), explicit.to_dict()
    assert a["objective"].pop("tie_break_requested") == "auto"
    assert json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def test_the_default_with_a_models_weights_is_lamps_plan_where_it_keeps_the_floor():
    """A torch model given to plan(): its weights are taken as trained, and LAMP's own global
    top-k (the baseline) is the plan when its bound is within 2 bits of the best."""
    import torch

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 20), torch.nn.ReLU(), torch.nn.Linear(20, 20), torch.nn.ReLU(),
                                torch.nn.Linear(20, 10))
    with torch.no_grad():
        model[0].weight.mul_(0.1)
        model[2].weight.mul_(3.0)
    p = plan(model, density=0.07, rank_model="analytic", grid=12, cache=CACHE)
    weights = {name: m.weight.detach().numpy() for name, m in (("0", model[0]), ("2", model[2]), ("4", model[4]))}
    layers = [planner.WeightLayer(n, *w.shape, frozen=n == "4") for n, w in weights.items()]
    base = baseline_plan("lamp", layers=layers,
                         density=0.07, weights=weights, rank_model="analytic", cache=CACHE)
    assert p.objective["tie_break"] == "lamp" and p.objective["bound_floor"] == "2 bits"
    assert p.objective["log2_bound"] >= p.objective["floor_log2_bound"] - 1e-6
    assert keeps(p)[:2] == keeps(base)[:2]


# ------------------------------------------------------------ the line search of a large floor


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_blend_spends_the_blended_total_within_the_limits(data):
    from planner.allocation.integer import IntegerSpace
    from planner.allocation.secondary import blend

    n = data.draw(st.integers(1, 5))
    lo = [data.draw(st.integers(0, 5)) for _ in range(n)]
    hi = [a + data.draw(st.integers(0, 40)) for a in lo]
    a = [data.draw(st.integers(x, y)) for x, y in zip(lo, hi)]
    b = [data.draw(st.integers(x, y)) for x, y in zip(lo, hi)]
    t = data.draw(st.sampled_from([0.0, 1 / 16, 0.25, 0.5, 0.75, 15 / 16, 1.0]))
    space = IntegerSpace(tuple((1, h) for h in hi), tuple(lo), tuple(hi), tuple(range(n)), 10 ** 6, ())
    out = blend(a, b, t, space)
    assert all(x <= k <= y for k, x, y in zip(out, lo, hi))
    assert sum(out) == round((1 - t) * sum(a) + t * sum(b))
    assert all(abs(k - ((1 - t) * p + t * q)) < 1 for k, p, q in zip(out, a, b))
    if t == 0.0:
        assert out == a
    if t == 1.0:
        assert out == b


def bits(arch, sizes, ks):
    return planner.expected_bound(arch, [k / s for k, s in zip(ks, sizes)], rank_model="analytic",
                                  cache=CACHE).log2_bound


@pytest.mark.parametrize("floor", ["0", "0.5", "3", "20%"])
def test_a_floor_too_large_to_score_searches_the_line_from_the_prior(monkeypatch, floor):
    """With the grid's plans over the scoring limit the floor is kept by the first blend of ERK's
    plan and the bound's plan (16 steps) whose exact bound, recomputed here with the plain
    recurrence, is within the floor; the blend one step earlier is below it."""
    import planner.allocation.secondary as secondary
    from planner.allocation.request import validate
    from planner.allocation.integer import integer_space

    arch, density = "64,40,40,10", 0.01
    monkeypatch.setattr(secondary, "FLOOR_MAX_COMBINATIONS", 3)
    p = plan(arch, density=density, tie_break="prior:erk", bound_floor=floor, rank_model="analytic", grid=12,
             cache=CACHE)
    assert p.objective["floor_search"] == "line" and p.solver["status"] == "FEASIBLE"
    assert "too many to score" in p.solver["message"]
    sizes = [40 * 64, 40 * 40]
    got = keeps(p)[:2]
    assert sum(got) <= round(density * sum(sizes))
    assert bits(arch, sizes, got) == pytest.approx(p.objective["log2_bound"], abs=1e-6)
    assert p.objective["log2_bound"] >= p.objective["floor_log2_bound"] - 1e-6
    erk = keeps(baseline_plan("erk", arch, density=density, rank_model="analytic", cache=CACHE))[:2]
    t = p.objective["floor_line_t"]
    if t == 0:
        assert got == erk
        return
    # every earlier blend of ERK and the bound's plan (ties by the prior, no floor) misses it
    target = validate(PlanRequest.build(arch, density=density, tie_break="prior:erk", rank_model="analytic"))
    space = integer_space(target)
    bound_plan = keeps(plan(arch, density=density, tie_break="prior:erk", rank_model="analytic", grid=12,
                            cache=CACHE))[:2]
    for step in range(round(t * secondary.LINE_SEARCH_STEPS)):
        earlier = secondary.blend(erk, bound_plan, step / secondary.LINE_SEARCH_STEPS, space)
        assert bits(arch, sizes, earlier) < p.objective["floor_log2_bound"] - 1e-9


def test_the_line_search_keeps_a_floor_erk_misses(monkeypatch):
    """A 0-bit floor at a density where ERK's plan is below the best: the line search moves off
    ERK (t > 0) and the plan's bound equals the best known, checked by the plain recurrence."""
    import planner.allocation.secondary as secondary

    arch, density, sizes = "64,200,50,10", 0.005, [200 * 64, 50 * 200]
    erk = keeps(baseline_plan("erk", arch, density=density, rank_model="analytic", cache=CACHE))[:2]
    best = plan(arch, density=density, tie_break="robust", rank_model="analytic", grid=12, cache=CACHE)
    assert bits(arch, sizes, erk) < best.objective["log2_bound"] - 5  # ERK misses the best by 8 bits here
    monkeypatch.setattr(secondary, "FLOOR_MAX_COMBINATIONS", 3)
    p = plan(arch, density=density, tie_break="prior:erk", bound_floor="0", rank_model="analytic", grid=12,
             cache=CACHE)
    t = p.objective["floor_line_t"]
    assert t > 0 and keeps(p)[:2] != erk
    assert bits(arch, sizes, keeps(p)[:2]) >= p.objective["best_log2_bound"] - 1e-6


# ---------------------------------------------------------------------------------- the CLI




def test_cli_plan_names_the_default_and_its_rule(cli, tmp_path):
    out = tmp_path / "p.json"
    code, text, _ = cli("plan", "--arch", "64,20,20,10", "--density", "0.07", "--rank-model", "analytic",
                        "-o", str(out), "--no-cache")
    assert code == 0, text
    assert "tie-break           prior:erk (the default auto)" in text
    data = json.loads(out.read_text())
    assert data["objective"]["tie_break"] == "prior:erk" and data["objective"]["tie_break_requested"] == "auto"


def test_cli_plan_ranks_weights_only_when_they_are_given(cli, tmp_path):
    """--model without --weights: a factory's weights are untrained, so auto plans by ERK;
    with --weights, by LAMP's allocation of them."""
    import torch

    from examples.models import digits_mlp  # noqa: F401  (the factory the CLI loads)

    model = digits_mlp()
    w = tmp_path / "w.pt"
    torch.save(model.state_dict(), w)
    base = ["plan", "--model", "examples.models:digits_mlp", "--density", "0.05", "--rank-model", "analytic", "--json",
            "--no-cache"]
    code, plain, _ = cli(*base)
    assert code == 0, plain
    code, weighted, _ = cli(*base, "--weights", str(w))
    assert code == 0, weighted
    assert json.loads(plain)["objective"]["tie_break"] == "prior:erk"
    assert json.loads(weighted)["objective"]["tie_break"] == "lamp"


def test_cli_refuses_an_unknown_tie_break_in_one_line(cli):
    code, out, err = cli("plan", "--arch", "64,20,20,10", "--density", "0.07", "--tie-break", "automatic")
    assert code == 2 and "automatic" in err and len(err.strip().splitlines()) <= 3


def test_compare_keys_the_default_by_what_it_stands_for():
    """A job store filled when plain lr-bound meant robust is not read back as the new default:
    the auto strategies' job keys carry what auto stands for, the others are unchanged."""
    from planner.experiments.compare import _auto_key

    assert _auto_key("lr-bound") == {"auto": "lamp@2"} == _auto_key("lr-bound:auto@3")
    assert _auto_key("lr-bound:robust") == {} == _auto_key("erk") == _auto_key("lr-bound:lamp@5%")
