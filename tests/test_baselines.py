"""Baseline allocations (docs/theory.md section 5) against hand computations."""

import math

import numpy as np
import pytest

from planner.allocation.request import WeightLayer
from planner.core.arch import Architecture
from planner.allocation.baselines import BASELINES, baseline_keeps, baseline_plan, lamp_scores
from planner.errors import PlannerError

ARCH = "64,100,100,10"


def _random_weights(arch, seed=0, scales=None):
    rng = np.random.default_rng(seed)
    net = Architecture.parse(arch)
    scales = scales or {}
    return {name: rng.standard_normal((r, c)) * scales.get(name, 1.0)
            for name, (r, c) in zip(net.layer_names, net.weight_shapes)}


# ------------------------------------------------------------------------------ ERK


def test_erk_meets_the_budget_exactly_by_largest_remainder():
    # 64,100,100,10 at 5%: budget round(0.05 * 16400) = 820; ERK weights (n_in+n_out)/(n_in*n_out):
    # fc1 164/6400, fc2 200/10000, so the masses are 164 and 200 and the exact shares
    # 820*164/364 = 369.45 and 450.55 -> 369 and 451.
    p = baseline_plan("erk", ARCH, density=0.05, rank_model="analytic")
    assert [layer.keep for layer in p.layers] == [369, 451, 1000]
    assert p.kept == 820 == round(0.05 * 16400)
    for d in (0.3, 0.1, 0.02, 0.007, 0.001):
        assert baseline_plan("erk", ARCH, density=d, rank_model="analytic").kept == round(d * 16400)


def test_erk_caps_a_layer_at_dense_and_re_solves_the_rest():
    # 4,100,100,10 at 50%: budget 5200 of 400 + 10000. ERK weights: fc1 104/400 = 0.26,
    # fc2 200/10000 = 0.02; scale = 5200 / (0.26*400 + 0.02*10000) = 17.1 puts fc1 at 4.45 > 1,
    # so fc1 is dense (400) and fc2 gets the rest: scale 4800/200 = 24, density 0.48 -> 4800.
    p = baseline_plan("erk", "4,100,100,10", density=0.5, rank_model="analytic")
    assert [layer.keep for layer in p.layers[:2]] == [400, 4800]
    assert p.layer("fc2").density == pytest.approx(0.48)
    assert p.kept == 5200


def test_erk_caps_repeatedly():
    # three layers; a: 2x2 (weight 1.0), b: 2x50 (0.52), c: 100x100 (0.02). At budget 1000:
    # scale0 = 1000/(4*1 + 100*.52 + 10000*.02) = 1000/256 = 3.9 -> a and b capped (3.9, 2.03);
    # re-solve with 1000 - 104 = 896 on c: density 0.0896.
    layers = [WeightLayer("a", 2, 2), WeightLayer("b", 2, 50), WeightLayer("c", 100, 100)]
    keeps = baseline_keeps("erk", layers, 1000)
    assert keeps == {"a": 4, "b": 100, "c": 896}


def test_erk_uses_kernel_dimensions_for_convolutions():
    # a 6x1x5x5 conv: weight (6+1+5+5)/(6*1*5*5) = 17/150, mass 17; the fc layer's mass is 200.
    # Budget 1000: 1000*17/217 = 78.34 and 921.66 -> 78 and 922 (the remainder goes to fc).
    layers = [WeightLayer("conv", 6, 25), WeightLayer("fc", 100, 100)]
    assert baseline_keeps("erk", layers, 1000, kernel_shapes={"conv": (6, 1, 5, 5)}) == {"conv": 78, "fc": 922}
    # as a plain 6x25 matrix: mass 31, 1000*31/231 = 134.2 -> 134 and 866
    assert baseline_keeps("erk", layers, 1000) == {"conv": 134, "fc": 866}


# ------------------------------------------------------------------------------ LAMP


def test_lamp_scores_by_hand():
    w = np.array([[1.0, -3.0], [2.0, 0.5]])
    # squares 1, 9, 4, 0.25; ascending 0.25, 1, 4, 9 with tail sums 14.25, 14, 13, 9
    expected = np.array([[1 / 14, 9 / 9], [4 / 13, 0.25 / 14.25]])
    np.testing.assert_allclose(lamp_scores(w), expected, rtol=1e-12)


def test_lamp_keeps_the_global_top_k_of_the_scores():
    a = np.array([[1.0, -3.0], [2.0, 0.5]])  # scores 1/14, 1, 4/13, 0.25/14.25
    b = np.array([[4.0, 1.0, -2.0]])         # squares 16, 1, 4; tails 21, 20, 16: 1/21, 4/20, 16/16
    np.testing.assert_allclose(lamp_scores(b), [[1.0, 1 / 21, 4 / 20]], rtol=1e-12)
    layers = [WeightLayer("a", 2, 2, in_bound=True), WeightLayer("b", 1, 3, in_bound=True)]
    w = {"a": a, "b": b}
    # every score, descending: 1 (a), 1 (b), .3077 (a), .2 (b), .0714 (a), .0476 (b), .0175 (a)
    expected = {3: {"a": 2, "b": 1}, 4: {"a": 2, "b": 2}, 5: {"a": 3, "b": 2}, 6: {"a": 3, "b": 3},
                7: {"a": 4, "b": 3}}
    for budget, keeps in expected.items():
        assert baseline_keeps("lamp", layers, budget, weights=w) == keeps, budget


# ------------------------------------------------------------------------------ global magnitude


def test_global_magnitude_uses_one_threshold_across_layers():
    import torch

    from examples.models import mlp
    from planner.pruning.masks import compute_masks
    from planner.pruning.model import model_layers, model_weights

    model = mlp((64, 100, 100, 10), seed=3)
    with torch.no_grad():  # make the layers' scales differ so the threshold is not per layer
        model.fc1.weight.mul_(3.0)
        model.fc2.weight.mul_(0.5)
    layers = list(model_layers(model).layers)
    weights, _ = model_weights(model, layers)
    p = baseline_plan("global", layers=layers, density=0.05, weights=weights, rank_model="analytic",
                      architecture_info={"input_size": 64})
    assert p.kept == round(0.05 * 16400)
    assert p.layer("fc1").keep != p.layer("fc2").keep * 6400 // 10000  # not uniform
    masks = compute_masks(model, p, "magnitude")
    kept = np.concatenate([np.abs(weights[n])[masks[n].numpy()] for n in ("fc1", "fc2")])
    pruned = np.concatenate([np.abs(weights[n])[~masks[n].numpy()] for n in ("fc1", "fc2")])
    assert kept.size == p.kept
    assert kept.min() >= pruned.max()


@pytest.mark.parametrize("strategy", ["global", "lamp"])
def test_weight_ranking_strategies_need_weights(strategy):
    with pytest.raises(PlannerError, match="weights"):
        baseline_plan(strategy, ARCH, density=0.05)
    with pytest.raises(PlannerError, match="no weights for layer 'fc2'"):
        baseline_plan(strategy, ARCH, density=0.05, weights={"fc1": np.ones((100, 64))})


# ------------------------------------------------------------------------------ uniform-plus


def test_uniform_plus_floors_the_pruned_output_layer_at_20_percent():
    # 64,100,100,10 with the output pruned: 17400 prunable, 5% -> 870; fc3 (1000) keeps 200,
    # the rest 670 is split by size over 6400 and 10000: 261.46 / 408.54 -> 261 / 409.
    p = baseline_plan("uniform-plus", ARCH, density=0.05, prune_output=True, rank_model="analytic")
    assert [layer.keep for layer in p.layers] == [261, 409, 200]
    assert not p.layer("fc3").frozen and p.kept == 870
    # above 20% the output layer keeps its uniform share
    p = baseline_plan("uniform-plus", ARCH, density=0.5, prune_output=True, rank_model="analytic")
    assert p.layer("fc3").keep == 500 and p.kept == 8700


def test_uniform_plus_leaves_a_frozen_output_layer_dense():
    p = baseline_plan("uniform-plus", ARCH, density=0.05, rank_model="analytic")
    assert p.layer("fc3").frozen and p.layer("fc3").keep == 1000
    assert [layer.keep for layer in p.layers[:2]] == [320, 500]  # plain uniform


def _lenet5():
    from examples.models import lenet5
    from planner.pruning.model import model_layers, model_weights

    model = lenet5(seed=0)
    return model, model_layers, model_weights


@pytest.mark.parametrize("prune_output", [False, True])
def test_uniform_plus_on_lenet5_keeps_the_first_conv_dense(prune_output):
    model, model_layers, model_weights = _lenet5()
    layers = list(model_layers(model, (1, 32, 32), prune_output=prune_output).layers)
    _, shapes = model_weights(model, layers)
    p = baseline_plan("uniform-plus", layers=layers, density=0.1, kernel_shapes=shapes, rank_model="analytic",
                      architecture_info={"input_size": 400})
    first = p.layer("features.0")
    assert first.keep == first.size == 150
    total = sum(w.size for w in layers if not w.frozen)
    assert p.kept == round(0.1 * total)
    last = p.layer("classifier.5")
    if prune_output:
        assert last.keep == math.ceil(0.2 * 840)
    else:
        assert last.frozen and last.keep == 840


def test_every_strategy_keeps_the_same_number_of_weights():
    from planner.allocation.pipeline import plan

    weights = _random_weights(ARCH, seed=1, scales={"fc1": 2.0})
    for d in (0.05, 0.007):
        kept = {s: baseline_plan(s, ARCH, density=d, weights=weights, rank_model="analytic").kept for s in BASELINES}
        kept["lr-bound"] = plan(ARCH, density=d).kept  # sampled: a smaller integer program than analytic
        assert set(kept.values()) == {round(d * 16400)}, kept
    model, model_layers, model_weights = _lenet5()
    layers = list(model_layers(model, (1, 32, 32)).layers)
    w, shapes = model_weights(model, layers)
    total = sum(x.size for x in layers if not x.frozen)
    kept = {s: baseline_plan(s, layers=layers, density=0.05, weights=w, kernel_shapes=shapes,
                             rank_model="analytic", architecture_info={"input_size": 400}).kept for s in BASELINES}
    assert set(kept.values()) == {round(0.05 * total)}, kept
