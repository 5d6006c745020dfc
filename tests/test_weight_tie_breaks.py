"""The weights-aware tie-breaks ``magnitude`` and ``lamp`` (planner/allocation/scoring.py).

Oracles: the kept mass against subsets enumerated by brute force and LAMP scores written out
from their definition; the chosen plan against every split of the budget scored one by one
with planner.expected_bound (the plain recurrence), best by bound in 0.01-bit steps, then by
kept mass; under a bound floor, against every grid plan."""

from __future__ import annotations

import itertools
import random

import numpy as np
import pytest

import planner
from planner import RankCache, plan
from planner.allocation.scoring import TIE_RESOLUTION_BITS, kept_mass
from planner.cli import main

CACHE = RankCache(disk=False)


def lamp_by_definition(w):
    """Score of entry u: w_u^2 over the sum of w_v^2 over entries at least as large (distinct
    magnitudes)."""
    sq = np.square(np.ravel(w))
    return np.array([s / sq[sq >= s].sum() for s in sq])


@pytest.mark.parametrize("seed", range(5))
def test_kept_mass_is_the_best_subset_of_each_size(seed):
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(2, 4)) * rng.uniform(0.1, 3.0)
    sq, lamp = np.square(w.ravel()), lamp_by_definition(w)
    mag, lam = kept_mass(w, "magnitude"), kept_mass(w, "lamp")
    assert mag.shape == (9,) and mag[0] == 0 and mag[-1] == pytest.approx(1.0)
    for k in range(9):
        subsets = list(itertools.combinations(range(8), k))
        assert mag[k] == pytest.approx(max(sq[list(s)].sum() for s in subsets) / sq.sum(), abs=1e-12)
        # the k largest magnitudes carry the k largest LAMP scores: the mass of magnitude pruning
        top = np.argsort(-np.abs(w.ravel()))[:k]
        assert lam[k] == pytest.approx(lamp[top].sum(), abs=1e-12)
        assert lam[k] == pytest.approx(max(lamp[list(s)].sum() for s in subsets), abs=1e-12)
    assert lam[1] == pytest.approx(1.0)  # the largest entry's LAMP score


def test_kept_mass_of_a_zero_layer_and_an_unknown_criterion():
    z = kept_mass(np.zeros(4), "magnitude")
    assert z[-1] == pytest.approx(1.0) and np.all(np.diff(z) >= 0)
    assert np.all(kept_mass(np.zeros(4), "lamp") == 0)
    with pytest.raises(ValueError, match="criterion"):
        kept_mass(np.ones(3), "energy")


def splits(total, sizes):
    for head in itertools.product(*(range(1, s + 1) for s in sizes[:-1])):
        last = total - sum(head)
        if 1 <= last <= sizes[-1]:
            yield head + (last,)


def random_instance(rng):
    depth = rng.choice([2, 3])
    arch = ",".join(str(rng.randint(3, 9)) for _ in range(depth + 1)) + ",2"
    net = planner.Architecture.parse(arch)
    shapes = net.weight_shapes
    nrng = np.random.default_rng(rng.randint(0, 10**6))
    # layers of very different scales, so magnitude and lamp disagree with each other
    weights = {f"fc{i + 1}": nrng.normal(size=(r, c)) * 10.0 ** nrng.uniform(-1, 1)
               for i, (r, c) in enumerate(shapes)}
    sizes = [r * c for r, c in shapes[:-1]]
    return arch, weights, sizes


def oracle(arch, weights, sizes, total, tie_break):
    masses = [kept_mass(weights[f"fc{i + 1}"], tie_break) for i in range(len(sizes))]

    def bits(keeps):
        return planner.expected_bound(arch, [k / s for k, s in zip(keeps, sizes)], rank_model="analytic",
                                      cache=CACHE).log2_bound

    floor = bits(planner.allocation.request.apportion(total, sizes))  # never below uniform
    cands = sorted(c for c in splits(total, sizes) if bits(c) >= floor - 1e-9)

    def key(c):
        return (round(bits(c) / TIE_RESOLUTION_BITS), round(sum(m[k] for m, k in zip(masses, c)), 9))

    best = cands[0]
    for c in cands[1:]:
        if key(c) > key(best):
            best = c
    return list(best)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("tie_break", ["magnitude", "lamp"])
def test_the_plan_keeps_the_most_mass_among_the_best_integer_splits(seed, tie_break):
    rng = random.Random(9100 + seed)
    arch, weights, sizes = random_instance(rng)
    total = rng.randint(len(sizes) + 1, min(70, sum(sizes) - 1))
    p = plan(arch, keep=total, rank_model="analytic", tie_break=tie_break, weights=weights, cache=CACHE)
    assert p.solver["name"] == "exhaustive"
    assert [layer.keep for layer in p.layers if layer.in_bound] == oracle(arch, weights, sizes, total, tie_break)


@pytest.mark.parametrize("floor", ["2", "10%"])
@pytest.mark.parametrize("tie_break", ["magnitude", "lamp"])
def test_under_a_floor_the_most_mass_among_the_admitted_grid_plans(floor, tie_break):
    from planner.allocation.grid import candidates
    from planner.allocation.pipeline import build_problem, run
    from planner.allocation.request import PlanRequest, validate
    from planner.allocation.secondary import BoundFloor, choose_floor

    nrng = np.random.default_rng(3)
    weights = {"fc1": nrng.normal(size=(20, 64)) * 0.1, "fc2": nrng.normal(size=(20, 20)) * 2.0,
               "fc3": nrng.normal(size=(10, 20))}
    request = PlanRequest.build("64,20,20,10", density=0.03, bound_floor=floor, tie_break=tie_break,
                                rank_model="analytic", grid=12, weights=weights)
    target = validate(request)
    dgrid, cands = candidates(target)
    built = build_problem(target, dgrid, cands, cache=CACHE)
    got, best, _ = choose_floor(target, built, BoundFloor.parse(floor), cache=CACHE)

    masses = [kept_mass(weights["fc1"], tie_break), kept_mass(weights["fc2"], tie_break)]

    def bits(keeps):
        return planner.expected_bound("64,20,20,10", [k / w.size for k, w in zip(keeps, target.chain)],
                                      rank_model="analytic", cache=CACHE).log2_bound

    combos = [c for c in itertools.product(*[[c.keep for c in cs] for cs in cands]) if sum(c) <= target.chain_budget]
    scores = {c: bits(c) for c in combos}
    level = BoundFloor.parse(floor).floor(max(scores.values()))
    admitted = sorted(c for c in combos if scores[c] >= level - 1e-9)
    want = admitted[0]
    for c in admitted[1:]:
        key = lambda x: (round(sum(m[k] for m, k in zip(masses, x)), 9), round(scores[x] / 0.01))  # noqa: E731
        if key(c) > key(want):
            want = c
    assert got == list(want)
    p = run(request, cache=CACHE)
    assert p.objective["log2_bound"] >= p.objective["floor_log2_bound"] - 1e-6


def test_magnitude_moves_weights_to_the_layer_whose_mass_is_spread():
    """Under a wide floor, a layer whose energy sits in few weights gives up weights to one whose
    energy is spread evenly (the plan keeps more of the total kept share)."""
    nrng = np.random.default_rng(0)
    spiky = np.zeros((20, 64))
    spiky.flat[:40] = 5.0 + nrng.random(40)  # 40 weights hold all of fc1's energy
    even = np.ones((20, 20)) + 0.01 * nrng.random((20, 20))
    weights = {"fc1": spiky, "fc2": even, "fc3": np.ones((10, 20))}
    common = dict(density=0.05, bound_floor="30%", rank_model="analytic", cache=CACHE)
    mag = plan("64,20,20,10", tie_break="magnitude", weights=weights, **common)
    uni = plan("64,20,20,10", tie_break="prior:uniform", **common)
    assert mag.layers[0].keep < uni.layers[0].keep
    assert mag.layers[1].keep > uni.layers[1].keep


def test_missing_or_misshapen_weights_are_refused():
    with pytest.raises(planner.ProblemError, match="ranks trained weights"):
        plan("64,20,10", density=0.1, tie_break="magnitude", rank_model="analytic")
    with pytest.raises(planner.ProblemError, match="no weights given for layer fc1"):
        plan("64,20,10", density=0.1, tie_break="lamp", weights={}, rank_model="analytic")
    with pytest.raises(planner.ProblemError, match="has 1280 weights, the array given has 3"):
        plan("64,20,10", density=0.1, tie_break="lamp", weights={"fc1": np.ones(3)}, rank_model="analytic")


def test_cli_refuses_the_tie_break_without_a_model(capsys):
    code = main(["plan", "--arch", "64,20,10", "--density", "0.1", "--tie-break", "magnitude"])
    err = capsys.readouterr().err
    assert code == 2 and "give --model" in err and "Traceback" not in err


def test_cli_plans_a_model_by_its_weights(tmp_path, capsys):
    torch = pytest.importorskip("torch")
    import json

    import examples.models as models

    torch.manual_seed(0)
    model = models.digits_mlp()
    with torch.no_grad():  # fc1's energy in its first 30 weights
        model.fc1.weight.mul_(0.01)
        model.fc1.weight.view(-1)[:30] = 3.0
    path = tmp_path / "w.pt"
    torch.save(model.state_dict(), path)
    out = {}
    for tb in ("magnitude", "prior:uniform"):
        code = main(["plan", "--model", "examples.models:digits_mlp", "--weights", str(path), "--density", "0.05",
                     "--tie-break", tb, "--bound-floor", "20%", "--rank-model", "analytic", "--no-cache", "--json"])
        text = capsys.readouterr().out
        assert code == 0, text
        out[tb] = json.loads(text)
    assert out["magnitude"]["objective"]["tie_break"] == "magnitude"
    fc1 = {tb: next(layer["keep"] for layer in o["layers"] if layer["name"] == "fc1") for tb, o in out.items()}
    assert fc1["magnitude"] < fc1["prior:uniform"]


def test_floor_guard_counts_the_combinations_within_the_budget():
    """The bound floor's size guard counts what it will score (combinations within the weight
    budget), checked against enumerating the product, so a deep chain at a low density is not
    refused for combinations the budget rules out."""
    import itertools
    import random

    from planner.allocation.secondary import FLOOR_MAX_COMBINATIONS, within_budget

    rng = random.Random(1)
    for _ in range(300):
        n = rng.randint(1, 4)
        lists = [sorted(rng.sample(range(1, 40), rng.randint(1, 6))) for _ in range(n)]
        decision = [i for i in range(n) if rng.random() < 0.8]
        limit = rng.randint(0, 100)
        brute = sum(1 for c in itertools.product(*lists) if sum(c[i] for i in decision) <= limit)
        assert within_budget(lists, decision, limit) == brute, (lists, decision, limit)
    wide = [list(range(1, 1001))] * 3  # 10^9 combinations, most of them far over the budget
    assert within_budget(wide, [0, 1, 2], 60) == sum(1 for a in range(1, 59) for b in range(1, 60 - a)
                                                     for c in range(1, 61 - a - b))
    assert within_budget(wide, [0, 1, 2], 10 ** 6) > FLOOR_MAX_COMBINATIONS


@pytest.mark.parametrize("seed", range(8))
def test_tie_break_optimum_is_the_most_mass_any_split_keeps(seed):
    """The greedy optimum of the kept mass (within every layer's limits) against every split of
    the budget enumerated, on tiny chains with min/max densities."""
    from planner.allocation.request import PlanRequest, validate
    from planner.allocation.secondary import tie_break_optimum

    rng = random.Random(7300 + seed)
    arch, weights, sizes = random_instance(rng)
    tie_break = rng.choice(["magnitude", "lamp"])
    total = rng.randint(len(sizes) + 1, min(60, sum(sizes) - 1))
    limits = dict(min_density=rng.choice([None, 0.05]), max_density=rng.choice([None, 0.6, 0.9]))
    request = PlanRequest.build(arch, keep=total, tie_break=tie_break, rank_model="analytic", weights=weights, **limits)
    target = validate(request)
    got = tie_break_optimum(target)
    masses = [kept_mass(weights[f"fc{i + 1}"], tie_break) for i in range(len(sizes))]
    lo = [target.min_keep[w.name] or 1 for w in target.chain]
    hi = [min(target.max_keep[w.name], w.size) for w in target.chain]
    feasible = [c for c in splits(total, sizes) if all(a <= k <= b for k, a, b in zip(c, lo, hi))]
    best = max(sum(m[k] for m, k in zip(masses, c)) for c in feasible)
    assert sum(got) == total and all(a <= k <= b for k, a, b in zip(got, lo, hi))
    assert sum(m[k] for m, k in zip(masses, got)) == pytest.approx(best, abs=1e-12)


@pytest.mark.parametrize("tie_break", ["lamp", "prior:erk", "prior:uniform"])
def test_a_wide_floor_returns_the_tie_breaks_own_plan(tie_break):
    """When the baseline a tie-break stands for (LAMP's global top-k, ERK, uniform: computed by
    planner.allocation.baselines, not the floor code) keeps the floor, the floor plan is that
    baseline, weight for weight, not the nearest grid plan."""
    from planner.allocation.baselines import baseline_plan

    nrng = np.random.default_rng(5)
    weights = {"fc1": nrng.normal(size=(20, 64)) * 0.1, "fc2": nrng.normal(size=(20, 20)) * 2.0,
               "fc3": nrng.normal(size=(10, 20))}
    p = plan("64,20,20,10", density=0.07, tie_break=tie_break, bound_floor="30%", rank_model="analytic", grid=12,
             weights=weights if tie_break == "lamp" else None, cache=CACHE)
    base = baseline_plan(tie_break.removeprefix("prior:"), "64,20,20,10", density=0.07, weights=weights,
                         rank_model="analytic", cache=CACHE)
    assert [layer.keep for layer in p.layers] == [layer.keep for layer in base.layers]
    assert p.objective["log2_bound"] >= p.objective["floor_log2_bound"] - 1e-6
    if tie_break == "prior:uniform":
        return  # the uniform plan is on the grid (its first candidate)
    # off the grid: the grid alone could not give the baseline
    from planner.allocation.grid import candidates
    from planner.allocation.request import PlanRequest, validate

    target = validate(PlanRequest.build("64,20,20,10", density=0.07, grid=12))
    _, cands = candidates(target)
    assert any(layer.keep not in {c.keep for c in cs} for layer, cs in zip(p.layers, cands) if not layer.frozen)


def test_a_tight_floor_keeps_the_floor_instead_of_the_baseline():
    """A layer whose energy sits in 4 weights: LAMP's plan keeps just those 4 and loses about 15
    bits; with a 0.5-bit floor the off-grid optimum is refused and the plan gives that layer
    more weights, keeping the floor."""
    from planner.allocation.baselines import baseline_plan

    nrng = np.random.default_rng(5)
    fc2 = nrng.normal(size=(40, 40)) * 1e-3
    fc2.flat[:4] = 3.0
    weights = {"fc1": nrng.normal(size=(40, 64)), "fc2": fc2, "fc3": nrng.normal(size=(10, 40))}
    base = baseline_plan("lamp", "64,40,40,10", weights=weights, density=0.02, rank_model="analytic", cache=CACHE)
    p = plan("64,40,40,10", tie_break="lamp", bound_floor="0.5", weights=weights, density=0.02,
             rank_model="analytic", grid=12, cache=CACHE)
    assert base.layers[1].keep == 4
    assert base.objective["log2_bound"] < p.objective["floor_log2_bound"] - 10
    assert p.objective["log2_bound"] >= p.objective["floor_log2_bound"] - 1e-6
    assert p.layers[1].keep > 4 * base.layers[1].keep
