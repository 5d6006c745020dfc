"""Beyond accuracy: recall distortion (alpha_t), the gradient and undecayed criteria, SVCCA."""

import json
from fractions import Fraction

import numpy as np
import pytest

from planner.experiments.distortion import (DistortionError, canonical_correlations, intensification_ratios,
                                            intensification_slope, normalized_balance, recall_from_confusion, svcca)

# ------------------------------------------------------------------------------ recall distortion

DENSE = [[9, 1, 0], [1, 7, 2], [0, 1, 9]]  # rows: true class; columns: predicted
PRUNED = [[8, 2, 0], [1, 4, 5], [0, 0, 10]]


def _fraction_oracle(dense, pruned):
    """alpha and the per-class ratios in exact rational arithmetic, straight from the counts."""
    def balances(C):
        total = sum(map(sum, C))
        acc = Fraction(sum(C[i][i] for i in range(len(C))), total)
        return [(Fraction(C[i][i], sum(C[i])) - acc) / acc for i in range(len(C))]

    x, y = balances(dense), balances(pruned)
    return sum(a * b for a, b in zip(x, y)) / sum(a * a for a in x), [b / a for a, b in zip(x, y)]


def test_alpha_on_a_hand_made_confusion_matrix():
    acc0, r0 = recall_from_confusion(DENSE)
    acc, r = recall_from_confusion(PRUNED)
    assert acc0 == pytest.approx(25 / 30) and r0 == pytest.approx([0.9, 0.7, 0.9])
    assert acc == pytest.approx(22 / 30) and r == pytest.approx([0.8, 0.4, 1.0])
    # by hand: b0 = (0.08, -0.16, 0.08), b = (5/55, -25/55, 20/55); alpha = (0.4 + 4 + 1.6) / 55 / 0.0384
    assert normalized_balance(r0, acc0) == pytest.approx([0.08, -0.16, 0.08])
    assert normalized_balance(r, acc) == pytest.approx([5 / 55, -25 / 55, 20 / 55])
    alpha, ratios = _fraction_oracle(DENSE, PRUNED)
    assert float(alpha) == pytest.approx((0.4 + 4 + 1.6) / 55 / 0.0384)
    assert intensification_slope(r0, acc0, r, acc) == pytest.approx(float(alpha), rel=1e-12)
    assert intensification_slope(r0, acc0, r, acc) > 1  # the class below the accuracy fell further below it
    assert intensification_ratios(r0, acc0, r, acc) == pytest.approx([float(q) for q in ratios], rel=1e-12)


def test_alpha_is_one_for_the_dense_model_and_k_for_scaled_balances():
    acc0, r0 = recall_from_confusion(DENSE)
    assert intensification_slope(r0, acc0, r0, acc0) == 1.0
    assert intensification_ratios(r0, acc0, r0, acc0) == [1.0, 1.0, 1.0]
    # balances scaled by k about another accuracy: the slope is k, whatever the accuracy
    b0 = np.array(normalized_balance(r0, acc0))
    for k, acc in ((0.5, 0.7), (2.0, 0.6)):
        recall = acc * (1 + k * b0)
        assert intensification_slope(r0, acc0, recall, acc) == pytest.approx(k, rel=1e-12)


def test_alpha_undefined_cases():
    assert intensification_slope([0.5, 0.5], 0.5, [0.2, 0.8], 0.5) is None  # no dense balance to scale
    assert intensification_slope([0.4, 0.6], 0.5, [0.0, 0.0], 0.0) is None  # pruned accuracy 0
    assert intensification_ratios([0.5, 0.7], 0.5, [0.4, 0.8], 0.6)[0] is None  # dense balance 0 there
    # a class with no test example (NaN recall) is left out of the fit
    assert intensification_slope([0.4, 0.6, float("nan")], 0.5, [0.3, 0.7, 0.9], 0.5) == pytest.approx(2.0)
    with pytest.raises(DistortionError, match="square"):
        recall_from_confusion([[1, 2, 3]])
    with pytest.raises(DistortionError, match="no example"):
        recall_from_confusion([[0, 0], [0, 0]])


# ------------------------------------------------------------------------------ SVCCA


def test_svcca_is_one_under_an_orthogonal_map():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 12)) @ np.diag(np.linspace(1, 3, 12))
    Q, _ = np.linalg.qr(rng.normal(size=(12, 12)))
    assert svcca(X, X @ Q + 5.0) == pytest.approx(1.0, abs=1e-9)  # a shift is centred away


def test_svcca_is_one_under_an_invertible_map_of_a_low_rank_layer():
    # rank-4 activations in 20 units with comparable directions: the 99% subspace is the whole
    # column space, which an invertible map of the units does not change
    rng = np.random.default_rng(1)
    X = rng.normal(size=(400, 4)) @ rng.normal(size=(4, 20))
    M = rng.normal(size=(20, 20)) + 4 * np.eye(20)
    assert abs(np.linalg.det(M)) > 1
    rho = canonical_correlations(X, X @ M)
    assert len(rho) == 4 and rho == pytest.approx(np.ones(4), abs=1e-8)
    assert svcca(X @ M, X) == pytest.approx(1.0, abs=1e-8)


def test_svcca_near_zero_for_independent_noise_and_half_for_half_shared():
    rng = np.random.default_rng(2)
    A, B, C = (rng.normal(size=(4000, 5)) for _ in range(3))
    noise = svcca(A, B)
    assert 0 <= noise < 0.08  # about sqrt(5 / 4000) per correlation
    half = canonical_correlations(np.hstack([A, B]), np.hstack([A, C]))
    assert half[:5] == pytest.approx(np.ones(5), abs=1e-9) and (half[5:] < 0.1).all()
    assert svcca(np.hstack([A, B]), np.hstack([A, C])) == pytest.approx(0.5, abs=0.05)


def test_svcca_edge_cases():
    rng = np.random.default_rng(3)
    X = rng.normal(size=(50, 6))
    assert svcca(X, np.zeros((50, 4))) == 0.0  # a dead layer: nothing to correlate
    with pytest.raises(DistortionError, match="same inputs"):
        svcca(X, X[:40])
    with pytest.raises(DistortionError, match="nan"):
        svcca(X, np.full((50, 2), np.nan))


# ------------------------------------------------------------------------------ criteria

torch = pytest.importorskip("torch")


def test_undecayed_ranks_by_magnitude_without_gradient_and_by_gradient_without_decay():
    from planner.pruning.masks import top_k_mask
    from planner.pruning.saliency import gradient_score, undecayed_score

    g = torch.Generator().manual_seed(0)
    w, grad = torch.randn(30, 40, generator=g), torch.randn(30, 40, generator=g)
    for keep in (1, 100, 600, 1199):
        magnitude = top_k_mask(w, keep, absolute=True)
        assert torch.equal(top_k_mask(undecayed_score(w, torch.zeros_like(w), 5e-4), keep), magnitude)
        assert torch.equal(top_k_mask(undecayed_score(w, grad, 0.0), keep), top_k_mask(gradient_score(w, grad), keep))
    # both terms: neither ordering in general
    mixed = top_k_mask(undecayed_score(w, grad, 1.0), 600)
    assert not torch.equal(mixed, top_k_mask(w, 600, absolute=True))
    assert not torch.equal(mixed, top_k_mask(gradient_score(w, grad), 600))


def _tiny():
    from examples import models

    import planner

    model = models.mlp((6, 5, 3), seed=4)
    layers = __import__("planner.pruning.model", fromlist=["model_layers"]).model_layers(model)
    plan = planner.plan(layers=layers.layers, density=0.5, rank_model="analytic",
                        architecture_info={"input_size": layers.input_size}, cache=planner.RankCache(disk=False))
    rng = np.random.default_rng(5)
    X, y = rng.normal(size=(64, 6)).astype(np.float32), rng.integers(0, 3, size=64)
    return model, plan, X, y


def _closed_form_grad(model, X, y):
    """dL/dW1 of mean cross-entropy by hand-written backpropagation in float64."""
    W1, b1 = model.fc1.weight.detach().double().numpy(), model.fc1.bias.detach().double().numpy()
    W2, b2 = model.fc2.weight.detach().double().numpy(), model.fc2.bias.detach().double().numpy()
    z = X.astype(np.float64) @ W1.T + b1
    logits = np.maximum(z, 0) @ W2.T + b2
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    p[np.arange(len(y)), y] -= 1
    delta = (p @ W2) * (z > 0)
    return delta.T @ X.astype(np.float64) / len(y)


def test_gradient_and_undecayed_masks_match_closed_form_scores():
    from planner.pruning.masks import apply_plan, compute_masks, top_k_mask
    from planner.pruning.saliency import saliency_scores

    model, plan, X, y = _tiny()
    W1 = model.fc1.weight.detach().double().numpy()
    G = _closed_form_grad(model, X, y)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    scores = saliency_scores("gradient", {"fc1": model.fc1.weight}, X, y, model)
    assert scores["fc1"].numpy() == pytest.approx(np.abs(W1 * G), abs=1e-6)
    eps = 0.3
    scores = saliency_scores("undecayed", {"fc1": model.fc1.weight}, X, y, model, eps)
    assert scores["fc1"].numpy() == pytest.approx(np.abs(-W1 * G + eps * W1 ** 2), abs=1e-6)
    assert model.fc1.weight.grad is None  # nothing of the model was touched
    keep = next(layer.keep for layer in plan.layers if layer.name == "fc1")
    masks = compute_masks(model, plan, "undecayed", calibration=torch.as_tensor(X), labels=torch.as_tensor(y),
                          weight_decay=eps)
    assert torch.equal(masks["fc1"], top_k_mask(np.abs(-W1 * G + eps * W1 ** 2), keep))
    report = apply_plan(model, plan, "gradient", calibration=torch.as_tensor(X), labels=torch.as_tensor(y))
    assert torch.equal(model.fc1.weight_mask.bool(), top_k_mask(np.abs(W1 * G), keep))
    assert [a.criterion for a in report.layers] == ["gradient"]
    assert torch.equal(model.fc1.weight_orig, before["fc1.weight"])


def test_data_criteria_need_calibration_and_labels():
    from planner.errors import PlannerError
    from planner.pruning.masks import compute_masks

    model, plan, X, y = _tiny()
    with pytest.raises(PlannerError, match="calibration batch and its labels"):
        compute_masks(model, plan, "gradient", calibration=torch.as_tensor(X))
    with pytest.raises(PlannerError, match="labels must lie"):
        compute_masks(model, plan, "undecayed", calibration=torch.as_tensor(X), labels=torch.as_tensor(y + 5))
    with pytest.raises(PlannerError, match="weight decay"):
        compute_masks(model, plan, "undecayed", calibration=torch.as_tensor(X), labels=torch.as_tensor(y),
                      weight_decay=-1.0)


def test_apply_cli_gradient_criteria(tmp_path, capsys):
    from planner.cli import main

    from examples import models

    weights, plan_path, out = tmp_path / "w.pt", tmp_path / "plan.json", tmp_path / "pruned.pt"
    torch.save(models.digits_mlp(seed=1).state_dict(), weights)
    assert main(["plan", "--model", "examples.models:digits_mlp", "--density", "0.1", "--rank-model", "analytic",
                 "-o", str(plan_path)]) == 0
    capsys.readouterr()
    base = ["apply", "--model", "examples.models:digits_mlp", "--weights", str(weights), "--plan", str(plan_path),
            "-o", str(out)]
    for extra, message in ((["--criterion", "gradient"], "--calibration X.npy --labels y.npy, or --dataset"),
                           (["--criterion", "magnitude", "--weight-decay", "1e-4"], "--weight-decay is the eps"),
                           (["--criterion", "gradient", "--weight-decay", "1e-4"], "--weight-decay is the eps"),
                           (["--criterion", "magnitude", "--dataset", "digits"], "--dataset goes with")):
        assert main(base + extra) == 2, extra
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1 and not out.exists()
    assert main(base + ["--criterion", "undecayed", "--dataset", "digits", "--samples", "256",
                        "--weight-decay", "5e-4", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert {a["criterion"] for a in report["layers"]} == {"undecayed"}
    assert [a["kept"] for a in report["layers"]] == [a["planned_keep"] for a in report["layers"]]
    X, y = tmp_path / "X.npy", tmp_path / "y.npy"
    from planner.experiments.data import load_dataset

    Xd, yd, _, _ = load_dataset("digits")
    np.save(X, Xd[:100]), np.save(y, yd[:100])
    assert main(base + ["--criterion", "gradient", "--calibration", str(X), "--labels", str(y)]) == 0
    assert "pruned state dict written" in capsys.readouterr().out


def test_compare_rows_at_density_one_equal_the_dense_model(monkeypatch, tmp_path):
    """No pruning and no fine-tuning: the 'pruned' model is the dense one, whatever the criterion,
    so alpha_t is 1 and every layer's SVCCA is 1."""
    from planner.experiments.compare import compare
    from planner.experiments.report import distortion_table, summarize

    monkeypatch.setenv("SPARSITY_PLANNER_CACHE_DIR", str(tmp_path))
    result = compare("digits", "64,16,16,10", [1.0], ["uniform"], 2, epochs=2, finetune_epochs=0, lr=0.1,
                     progress=False, criteria="magnitude,gradient,undecayed,random", weight_decay=1e-3)
    assert [(r["seed"], r["criterion"]) for r in result.rows] == [
        (s, c) for s in (0, 1) for c in ("magnitude", "gradient", "undecayed", "random")]
    dense = {d["seed"]: d for d in result.dense}
    for r in result.rows:
        assert r["accuracy"] == dense[r["seed"]]["accuracy"] and r["pruning_ratio"] == 1.0
        assert r["intensification_slope"] == 1.0 and r["intensification_slope_pruned"] == 1.0
        assert r["svcca"] == pytest.approx([1.0, 1.0], abs=1e-6)
    assert dense[0]["reference_seed"] == 1 and dense[1]["reference_seed"] == 0
    assert all(0 <= v <= 1 for d in result.dense for v in d["svcca_reference"])
    assert result.config["weight_decay"] == 1e-3 and result.config["criteria"][1] == "gradient"
    assert {s["label"] for s in summarize(result.rows)} == {"uniform [magnitude]", "uniform [gradient]",
                                                            "uniform [undecayed]", "uniform [random]"}
    table = distortion_table(result.rows, result.dense)
    assert "| uniform [undecayed] | 1.00 ± 0.00 |" in table and "(1 pairs)" in table


@pytest.mark.parametrize("args,message", [
    (["--criteria", "magnitude,taylor"], "unknown criterion 'taylor'"),
    (["--criteria", ","], "unknown criterion ''"),
    (["--weight-decay", "-1"], "--weight-decay"),
    (["--weight-decay", "nan"], "not a finite number"),
])
def test_compare_criteria_errors_are_one_line(capsys, args, message):
    from planner.cli import main

    assert main(["compare", "--no-progress", "--epochs", "1", "--finetune-epochs", "0", *args]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err
