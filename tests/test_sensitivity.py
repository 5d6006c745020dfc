"""Second criteria (planner/allocation/secondary.py, sensitivity.py; planner/pruning/sensitivity.py)
against independent oracles: brute force over every combination of candidates scored one by one
with planner.expected_bound (no shared suffixes), closed forms of the measured keep-counts and
the interpolation, and torch evaluations of hand-pruned models."""

from __future__ import annotations

import itertools
import json
import math
import random

import numpy as np
import pytest

import planner
from planner import RankCache
from planner.allocation.pipeline import build_problem, candidates, run
from planner.allocation.request import PlanRequest, WeightLayer, apportion, validate
from planner.allocation.secondary import (
    BoundFloor,
    _solve_mckp,
    choose_floor,
    sensitivity_candidates,
)
from planner.allocation.sensitivity import (
    LayerSensitivity,
    SensitivityError,
    SensitivityTable,
    measured_keeps,
)
from planner.cli import main
from planner.errors import ProblemError

CACHE = RankCache(disk=False)


# ------------------------------------------------------------------ measured keeps, interpolation


@pytest.mark.parametrize("size,steps,lo", [(72, 4, 2.0 ** -10), (6400, 2, 0.01), (10, 1, 0.5), (1, 4, 0.001)])
def test_measured_keeps_closed_form(size, steps, lo):
    expected = sorted({max(1, round(size * 2.0 ** (-i / steps)))
                       for i in range(0, 10_000) if 2.0 ** (-i / steps) >= lo * (1 - 1e-12)})
    assert measured_keeps(size, steps, lo) == expected
    assert measured_keeps(size, steps, lo)[-1] == size


def synthetic_table(layers, seed=0, monotone=True, steps=2, lo=0.01):
    rng = random.Random(seed)
    out = []
    for w in layers:
        keeps = measured_keeps(w.size, steps, lo)
        values = sorted((rng.random() * 3 for _ in keeps), reverse=True) if monotone else \
            [rng.random() * 3 for _ in keeps]
        values[-1] = 0.0  # the whole layer: the dense loss
        out.append(LayerSensitivity(w.name, w.rows, w.cols, keeps, [0.5 + v for v in values],
                                    [1.0 - v / 4 for v in values]))
    return SensitivityTable(out, 0.5, 1.0, "magnitude", 100, {}, f"synthetic-{seed}")


def test_interpolation_is_linear_in_log_keep_and_exact_at_measured_points():
    t = SensitivityTable([LayerSensitivity("a", 10, 10, [4, 16, 100], [2.5, 1.5, 0.5], [0.1, 0.5, 1.0])],
                         0.5, 1.0)
    assert t.increase("a", 4) == 2.0 and t.increase("a", 16) == 1.0 and t.increase("a", 100) == 0.0
    assert t.increase("a", 8) == pytest.approx(1.5)  # ln 8 is halfway between ln 4 and ln 16
    assert t.increase("a", 40) == pytest.approx(1.0 * (1 - math.log(40 / 16) / math.log(100 / 16)))
    with pytest.raises(SensitivityError, match="outside the measured range"):
        t.increase("a", 3)
    with pytest.raises(SensitivityError, match="no layer 'b'"):
        t.increase("b", 5)


def test_table_round_trips_and_refuses_malformed_files(tmp_path):
    t = synthetic_table([WeightLayer("fc1", 6, 5), WeightLayer("fc2", 4, 6)], seed=3)
    path = tmp_path / "t.json"
    t.save(path)
    back = SensitivityTable.load(path)
    assert back.to_json() == t.to_json()
    assert len(t.to_csv().splitlines()) == 1 + sum(len(layer.keeps) for layer in t.layers)
    bad = json.loads(t.to_json())
    bad["layers"][0]["keeps"] = bad["layers"][0]["keeps"][::-1]
    with pytest.raises(SensitivityError, match="increase strictly"):
        SensitivityTable.from_dict(bad)
    with pytest.raises(SensitivityError, match="format"):
        SensitivityTable.from_dict({"format": "sparsity-plan/1"})
    (tmp_path / "junk.json").write_text("{")
    with pytest.raises(SensitivityError, match="invalid JSON"):
        SensitivityTable.load(tmp_path / "junk.json")


@pytest.mark.parametrize("text,bits", [("2", 98.0), (2, 98.0), ("5%", 95.0), ("0", 100.0), ("100%", 0.0)])
def test_bound_floor_parse(text, bits):
    assert BoundFloor.parse(text).floor(100.0) == pytest.approx(bits)


@pytest.mark.parametrize("text", ["abc", "-1", "nan", "inf", "101%", "%", True])
def test_bound_floor_refuses(text):
    with pytest.raises(ProblemError):
        BoundFloor.parse(text)


# ------------------------------------------------------------------ the sensitivity objective


def mixed_layers():
    """Two hidden ReLU layers in the bound, a layer outside it (a conv, say), a frozen output."""
    return [WeightLayer("conv", 4, 9, in_bound=False, flops_per_weight=3), WeightLayer("fc1", 6, 12, in_bound=True),
            WeightLayer("fc2", 5, 6, in_bound=True), WeightLayer("out", 3, 5, frozen=True)]


def brute_sensitivity(target, table, allowed_chain=None):
    cands = sensitivity_candidates(target, table)
    names = [w.name for w in target.prunable]
    best = None
    for combo in itertools.product(*(cands[n] for n in names)):
        keeps = dict(zip(names, combo))
        if sum(combo) > target.budget:
            continue
        if any(sum(keeps[n] * e.cost.get(n, 0) for n in names) > e.limit for e in target.extras):
            continue
        if allowed_chain is not None and not allowed_chain(keeps):
            continue
        value = sum(table.increase(n, k) for n, k in keeps.items())
        if best is None or value < best:
            best = value
    return best


@pytest.mark.parametrize("seed", range(12))
def test_sensitivity_ip_matches_brute_force(seed):
    rng = random.Random(seed)
    layers = mixed_layers()
    table = synthetic_table(layers[:3], seed=seed, monotone=seed % 2 == 0)
    extra = {}
    if seed % 3 == 0:
        extra["max_flops"] = rng.randint(40, 120)
    request = PlanRequest.build(layers=layers, density=rng.choice([0.1, 0.2, 0.35]), objective="sensitivity",
                                sensitivity=table, rank_model="analytic", **extra)
    target = validate(request)
    cands = sensitivity_candidates(target, table)
    values = {w.name: [table.increase(w.name, k) for k in cands[w.name]] for w in target.prunable}
    choice, status, _ = _solve_mckp(target, cands, values, [1, 2], None)
    got = sum(values[w.name][c] for w, c in zip(target.prunable, choice))
    assert status == "OPTIMAL"
    assert got == pytest.approx(brute_sensitivity(target, table), abs=len(layers) * 1e-6)
    plan = run(request, cache=CACHE)
    kept = {layer.name: layer.keep for layer in plan.layers}
    assert sum(kept[w.name] for w in target.prunable) <= target.budget
    assert all(layer.rule == ("frozen" if layer.frozen else "sensitivity") for layer in plan.layers)
    if seed % 2 == 0:  # monotone tables: handing out the left-over weights never raises the loss
        assert plan.objective["predicted_loss_increase"] <= got + 1e-6


@pytest.mark.parametrize("seed,floor", [(0, "0"), (1, "1"), (2, "3"), (3, "10%"), (4, "0.5")])
def test_sensitivity_with_bound_floor_matches_brute_force(seed, floor):
    layers = mixed_layers()
    table = synthetic_table(layers[:3], seed=seed, monotone=False)
    request = PlanRequest.build(layers=layers, density=0.2, objective="sensitivity", sensitivity=table,
                                bound_floor=floor, rank_model="analytic")
    target = validate(request)
    cands = sensitivity_candidates(target, table)

    def bits(k1, k2):  # the oracle's bound: the plain recurrence at keep / size
        return planner.expected_bound("12,6,5,3", [k1 / 72, k2 / 30], rank_model="analytic",
                                      cache=CACHE).log2_bound

    room = target.budget - cands["conv"][0]
    best = max(bits(a, b) for a in cands["fc1"] for b in cands["fc2"] if a + b <= room)
    level = BoundFloor.parse(floor).floor(best)
    expected = brute_sensitivity(target, table, lambda k: bits(k["fc1"], k["fc2"]) >= level - 1e-9)
    plan = run(request, cache=CACHE)
    kept = {layer.name: layer.keep for layer in plan.layers}
    assert plan.objective["best_log2_bound"] == pytest.approx(best, abs=1e-6)
    assert bits(kept["fc1"], kept["fc2"]) >= level - 1e-6
    # the chain is not refilled under a floor; the other layers' refill never raises a monotone
    # loss, but these tables are not monotone: compare the optimum before the refill
    values = {w.name: [table.increase(w.name, k) for k in cands[w.name]] for w in target.prunable}
    allowed = sorted((cands["fc1"].index(a), cands["fc2"].index(b)) for a in cands["fc1"] for b in cands["fc2"]
                     if a + b <= room and bits(a, b) >= level - 1e-9)
    choice, _, _ = _solve_mckp(target, cands, values, [1, 2], allowed)
    got = sum(values[w.name][c] for w, c in zip(target.prunable, choice))
    assert got == pytest.approx(expected, abs=1e-5)


def test_sensitivity_refuses_a_table_of_another_model():
    layers = mixed_layers()
    table = synthetic_table([WeightLayer("conv", 4, 9), WeightLayer("fc1", 6, 11), WeightLayer("fc2", 5, 6)])
    with pytest.raises(SensitivityError, match="fc1 is 6x12"):
        run(PlanRequest.build(layers=layers, density=0.2, objective="sensitivity", sensitivity=table,
                              rank_model="analytic"), cache=CACHE)
    with pytest.raises(ProblemError, match="needs a sensitivity table"):
        run(PlanRequest.build(layers=layers, density=0.2, objective="sensitivity"), cache=CACHE)


# ------------------------------------------------------------------ the bound floor, objective bound


def oracle_floor(target, floor, tie_break):
    dgrid, cands = candidates(target)
    lists = [[c.keep for c in cs] for cs in cands]
    widths = [w.rows for w in target.chain]
    arch = [target.chain[0].cols, *widths, 10]

    def bits(keeps):
        return planner.expected_bound(",".join(map(str, arch)), [k / w.size for k, w in zip(keeps, target.chain)], rank_model="analytic",
                                      cache=CACHE).log2_bound

    combos = [c for c in itertools.product(*lists) if sum(c) <= target.chain_budget]
    scores = {c: bits(c) for c in combos}
    best = max(scores.values())
    level = floor.floor(best)
    admitted = sorted(c for c in combos if scores[c] >= level - 1e-9)
    if tie_break == "prior:uniform":
        prior = [target.uniform[w.name] for w in target.chain]
    else:
        sizes = [w.size for w in target.chain]
        from planner.allocation.baselines import _capped_fill

        prior = _capped_fill(target.chain_budget, sizes, [(w.rows + w.cols) / w.size for w in target.chain])

    def key(c):
        dist = sum(q / sum(prior) * abs(math.log(k / q)) for k, q in zip(c, prior))
        return (-round(dist, 9), round(scores[c] / 0.01))

    chosen = admitted[0]
    for c in admitted[1:]:
        if key(c) > key(chosen):
            chosen = c
    return list(chosen), best


@pytest.mark.parametrize("arch,density,floor,tie_break", [
    ("64,20,20,10", 0.05, "0", "prior:uniform"),
    ("64,20,20,10", 0.05, "2", "prior:erk"),
    ("64,20,20,10", 0.02, "1", "prior:uniform"),
    ("64,30,10,10", 0.03, "5%", "prior:erk"),
    ("100,16,16,10", 0.04, "3", "prior:erk"),
])
def test_bound_floor_choice_matches_brute_force(arch, density, floor, tie_break):
    request = PlanRequest.build(arch, density=density, bound_floor=floor, tie_break=tie_break, rank_model="analytic",
                                grid=12)
    target = validate(request)
    dgrid, cands = candidates(target)
    built = build_problem(target, dgrid, cands, cache=CACHE)
    got, best, _ = choose_floor(target, built, BoundFloor.parse(floor), cache=CACHE)
    expected, expected_best = oracle_floor(target, BoundFloor.parse(floor), tie_break)
    assert best == pytest.approx(expected_best, abs=1e-6)
    assert got == expected
    plan = run(request, cache=CACHE)
    assert plan.objective["log2_bound"] >= plan.objective["floor_log2_bound"] - 1e-6
    assert plan.objective["certificate_log2_upper"] == pytest.approx(expected_best, abs=1e-5)
    assert plan.kept == target.budget


def test_a_wider_floor_moves_the_plan_towards_the_prior():
    dists = []
    for floor in ("0", "2", "8", "30"):
        plan = planner.plan("784,100,100,10", density=0.002, tie_break="prior:uniform", bound_floor=floor,
                            rank_model="analytic", cache=CACHE)
        keeps = [layer.keep for layer in plan.layers[:2]]
        uniform = apportion(plan.kept, [78400, 10000])
        dists.append(sum(q / sum(uniform) * abs(math.log(k / q)) for k, q in zip(keeps, uniform)))
    assert dists == sorted(dists, reverse=True) and dists[-1] < dists[0]


# ------------------------------------------------------------------ measuring with torch


torch = pytest.importorskip("torch")


def _digits_like(n=200, features=64, seed=0):
    rng = np.random.default_rng(seed)
    return rng.random((n, features), dtype=np.float32), rng.integers(0, 10, n)


def test_measured_points_equal_a_hand_pruned_model_and_density_one_is_zero():
    import torch.nn.functional as F

    import examples.models as models
    from planner.pruning.masks import top_k_mask
    from planner.pruning.sensitivity import measure_sensitivity

    model = models.digits_mlp()
    X, y = _digits_like()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    table = measure_sensitivity(model, X, y, steps=2, min_density=0.05)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # left as it was
    assert [layer.name for layer in table.layers] == ["fc1", "fc2", "fc3"]
    for layer in table.layers:
        assert layer.keeps[-1] == layer.size and table.increase(layer.name, layer.size) == 0.0
        for k in (layer.keeps[0], layer.keeps[len(layer.keeps) // 2]):
            twin = models.digits_mlp()
            module = twin.get_submodule(layer.name)
            with torch.no_grad():
                module.weight.mul_(top_k_mask(module.weight, k, absolute=True))
                logits = twin(torch.from_numpy(X))
            loss = float(F.cross_entropy(logits, torch.from_numpy(y)))
            acc = float((logits.argmax(1) == torch.from_numpy(y)).float().mean())
            i = layer.keeps.index(k)
            assert layer.loss[i] == pytest.approx(loss, abs=2e-6)
            assert layer.accuracy[i] == pytest.approx(acc, abs=1e-6)


def test_lenet5_convolutions_are_measured_and_planned(tmp_path):
    import examples.models as models
    from planner.pruning.sensitivity import measure_sensitivity

    model = models.lenet5()
    rng = np.random.default_rng(1)
    X, y = rng.random((64, 1, 32, 32), dtype=np.float32), rng.integers(0, 10, 64)
    table = measure_sensitivity(model, X, y, steps=1, min_density=0.01)
    names = [layer.name for layer in table.layers]
    assert names[:2] == ["features.0", "features.3"] and len(names) == 5
    assert all(table.increase(n, table.layer(n).size) == 0.0 for n in names)
    plan = planner.plan(model, input_shape=(1, 32, 32), density=0.1, objective="sensitivity", sensitivity=table,
                        rank_model="analytic", cache=CACHE)
    rules = {layer.name: layer.rule for layer in plan.layers}
    assert rules["features.0"] == rules["features.3"] == "sensitivity" and rules["classifier.5"] == "frozen"
    assert plan.kept == round(0.1 * plan.prunable)


def test_the_cache_returns_the_same_table_without_measuring(tmp_path, monkeypatch):
    import examples.models as models
    import planner.pruning.sensitivity as sens
    from planner.core.cache import DiskCache

    X, y = _digits_like(n=50)
    cache = DiskCache(tmp_path)
    first = sens.measure_sensitivity(models.digits_mlp(), X, y, steps=1, min_density=0.1, cache=cache)
    monkeypatch.setattr(sens, "_evaluate", lambda *a: pytest.fail("measured again despite the cache"))
    again = sens.measure_sensitivity(models.digits_mlp(), X, y, steps=1, min_density=0.1, cache=cache)
    assert again.to_json() == first.to_json()
    with pytest.raises(pytest.fail.Exception):  # other weights: another key
        sens.measure_sensitivity(models.digits_mlp(seed=1), X, y, steps=1, min_density=0.1, cache=cache)


def test_planner_plan_reads_a_torch_model_like_plan_model():
    import examples.models as models

    # tie-break robust: the default ranks a model's own weights (auto: lamp), an arch has none
    from_model = planner.plan(models.mlp((64, 20, 20, 10)), density=0.05, rank_model="analytic", tie_break="robust",
                              cache=CACHE)
    from_arch = planner.plan("64,20,20,10", density=0.05, rank_model="analytic", tie_break="robust", cache=CACHE)
    assert [layer.keep for layer in from_model.layers] == [layer.keep for layer in from_arch.layers]


# ------------------------------------------------------------------ the command line


def test_cli_sensitivity_then_plan(tmp_path, capsys, monkeypatch):
    import examples.models as models

    monkeypatch.chdir(tmp_path.parent)
    X, y = _digits_like(n=80)
    np.save(tmp_path / "X.npy", X)
    np.save(tmp_path / "y.npy", y)
    out, csv_path = tmp_path / "table.json", tmp_path / "table.csv"
    rc = main(["sensitivity", "--model", "examples.models:digits_mlp", "--calibration", str(tmp_path / "X.npy"),
               "--labels", str(tmp_path / "y.npy"), "--steps", "1", "--min-density", "0.01", "-o", str(out),
               "--csv", str(csv_path), "--no-cache"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert "loss increase with only that layer pruned" in captured.out
    table = SensitivityTable.load(out)
    assert table.samples == 80 and [layer.name for layer in table.layers] == ["fc1", "fc2", "fc3"]
    assert models  # the factory the command imported
    rc = main(["plan", "--model", "examples.models:digits_mlp", "--density", "0.05", "--objective", "sensitivity",
               "--sensitivity", str(out), "--rank-model", "analytic", "--no-cache", "--json"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    data = json.loads(captured.out)
    assert data["objective"]["objective"] == "sensitivity" and data["kept"] == round(0.05 * 16400)
    assert [layer["rule"] for layer in data["layers"]] == ["sensitivity", "sensitivity", "frozen"]


@pytest.mark.parametrize("args,message", [
    (["plan", "--arch", "64,20,10", "--density", "0.1", "--bound-floor", "abc"], "bound floor"),
    (["plan", "--arch", "64,20,10", "--density", "0.1", "--bound-floor", "-2"], "bound floor"),
    (["plan", "--arch", "64,20,10", "--density", "0.1", "--objective", "sensitivity"], "--model"),
    (["plan", "--arch", "64,20,10", "--density", "0.1", "--objective", "costs"], "objective"),
    (["plan", "--arch", "64,20,10", "--density", "0.1", "--strategy", "erk", "--bound-floor", "1"], "lr-bound only"),
    (["plan", "--arch", "64,20,10", "--density", "0.1", "--dataset", "digits"], "--objective sensitivity"),
    (["plan", "--model", "examples.models:digits_mlp", "--density", "0.1", "--objective", "sensitivity"],
     "--sensitivity TABLE.json"),
    (["sensitivity", "--model", "examples.models:digits_mlp"], "--calibration"),
    (["sensitivity", "--model", "examples.models:digits_mlp", "--calibration", "missing.npy"], "--labels"),
    (["sensitivity", "--model", "examples.models:digits_mlp", "--dataset", "mnist"], "--data-dir"),
    (["sensitivity", "--dataset", "digits"], "--model"),
])
def test_cli_refuses_bad_values_in_one_line(args, message, capsys):
    rc = main(args)
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert message in err and len(err.splitlines()) == 1 and "Traceback" not in err


def test_compare_names_every_lr_bound_variant():
    from planner.experiments.compare import ExperimentError, lr_bound_options, parse_strategy, strategy_plan

    assert lr_bound_options("lr-bound") == {"tie_break": "auto"}
    # plain lr-bound is plan's default: with the dense model's weights, LAMP's allocation within 2 bits
    w = {"fc1": np.ones((20, 64)), "fc2": np.ones((20, 20)), "fc3": np.ones((10, 20))}
    plain = strategy_plan("lr-bound", planner.Architecture.parse("64,20,20,10"), 0.05, seed=0, rank_model="analytic",
                          weights=w, cache=CACHE)
    named = strategy_plan("lr-bound:lamp@2", planner.Architecture.parse("64,20,20,10"), 0.05, seed=0,
                          rank_model="analytic", weights=w, cache=CACHE)
    assert plain.objective["tie_break"] == "lamp" and plain.objective["tie_break_requested"] == "auto"
    assert [layer.keep for layer in plain.layers] == [layer.keep for layer in named.layers]
    assert lr_bound_options("lr-bound:prior:erk@2") == {"tie_break": "prior:erk", "bound_floor": "2"}
    assert lr_bound_options("lr-bound:sensitivity@5%") == {"objective": "sensitivity", "bound_floor": "5%"}
    assert parse_strategy("lr-bound:prior:uniform") == ("lr-bound", "prior:uniform")
    for bad in ("lr-bound:prior:nope", "lr-bound:robust@x", "erk@2", "lr-bound:@"):
        with pytest.raises(ExperimentError):
            parse_strategy(bad)
    a = strategy_plan("lr-bound:prior:uniform@2", planner.Architecture.parse("64,20,20,10"), 0.05, seed=0,
                      rank_model="analytic", cache=CACHE)
    b = planner.plan("64,20,20,10", density=0.05, tie_break="prior:uniform", bound_floor=2, rank_model="analytic",
                     cache=CACHE)
    assert a.to_json() == b.to_json()
