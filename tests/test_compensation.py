"""Elimination-compensation (seed 001): the statistics against a per-sample Jacobian reference and
against the numerical optimum of the real output error, the documented corner cases, and the
applier end to end (compensated error below the same masks without the bias shift)."""

import copy

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from scipy.optimize import minimize_scalar  # noqa: E402
from torch import nn  # noqa: E402
from torch.func import jacrev, vmap  # noqa: E402
from torch.nn.utils import prune  # noqa: E402

from examples import models  # noqa: E402
from planner.pruning.masks import apply_plan, compute_masks  # noqa: E402
from planner.pruning.compensation import SHIFT_STEPS, compensation_statistics, sequential_bias_correction  # noqa: E402
from planner.errors import ModelError, PlannerError  # noqa: E402
from planner.allocation.planfile import Plan, PlanLayer  # noqa: E402

SIZES = (8, 6, 5, 3)
NAMES = ["fc1", "fc2", "fc3"]


def small_mlp():
    """Random (untrained) 8-6-5-3 ReLU MLP in float64, so the finite differences below are exact
    to ~1e-15 and only the first-order approximation itself is being measured."""
    return models.mlp(SIZES, seed=0).double()


def gaussian(n, dim, seed, dtype=torch.float64):
    # Mean 1, not 0: with centred inputs E[s_i a_j] is small in the first layer and there is
    # little to compensate.
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, dim, generator=g, dtype=dtype) + 1.0


def stages(model):
    """The network as a list of callables whose composition is ``model`` (for the reference)."""
    if isinstance(model, nn.Sequential):
        return list(model)
    out = [lambda x: x.flatten(1)]
    for i in range(len(model.sizes) - 1):
        if i:
            out.append(model.relu)
        out.append(getattr(model, f"fc{i + 1}"))
    return out


def reference_moments(model, x, layer):
    """E[s], E[s a], E[s a^2] from per-sample Jacobians (torch.func), independent of the hooks."""
    parts = stages(model)
    k = next(i for i, p in enumerate(parts) if p is layer)
    with torch.no_grad():
        a = x
        for p in parts[:k]:
            a = p(a)
        g = layer(a)

    def tail(gi):
        y = gi.unsqueeze(0)
        for p in parts[k + 1:]:
            y = p(y)
        return y.reshape(-1)

    jac = vmap(jacrev(tail))(g)                      # (N, n_out, rows)
    s = jac.square().sum(dim=1).double()             # (N, rows)
    a = a.double()
    n = x.shape[0]
    return s.mean(0), s.T @ a / n, s.T @ (a * a) / n


def output_error(model, x, ref):
    with torch.no_grad():
        return ((model(x) - ref) ** 2).sum(dim=1).mean().item()


def hand_plan(model, density, names=NAMES, frozen=()):
    layers = []
    for name in names:
        w = model.get_submodule(name).weight
        layers.append(PlanLayer(name, w.shape[0], w.shape[1], round(density * w.numel()), frozen=name in frozen))
    return Plan({"model": "test"}, "hand-made", {"density": density}, layers)


# ---------------------------------------------------------------------------- the formulas
def test_statistics_match_per_sample_jacobian_reference():
    model = small_mlp()
    x = gaussian(300, 8, seed=1)
    stats = compensation_statistics(model, NAMES, x, chunk_size=64)
    assert set(stats) == set(NAMES)
    for name in NAMES:
        layer = model.get_submodule(name)
        e_s, e_sa, e_sa2 = reference_moments(model, x, layer)
        w = layer.weight.detach()
        shift = w * e_sa / e_s[:, None]
        importance = w.square() * (e_sa2 - e_sa.square() / e_s[:, None])
        assert stats[name]["shift"].shape == w.shape and stats[name]["importance"].shape == w.shape
        assert torch.allclose(stats[name]["shift"], shift, rtol=1e-9, atol=1e-13)
        assert torch.allclose(stats[name]["importance"], importance, rtol=1e-9, atol=1e-13)
        assert (stats[name]["importance"] >= 0).all()
    # Chunking, and numpy input, change nothing but rounding.
    for other in (compensation_statistics(model, NAMES, x, chunk_size=7),
                  compensation_statistics(model, NAMES, x.numpy(), chunk_size=1000)):
        for name in NAMES:
            for key in ("shift", "importance"):
                assert torch.allclose(other[name][key], stats[name][key], rtol=1e-10, atol=1e-15)


def test_float32_model_and_float64_numpy_calibration():
    model = models.mlp(SIZES, seed=0)
    x = gaussian(100, 8, seed=2).numpy()
    stats = compensation_statistics(model, NAMES, x)
    ref = compensation_statistics(model.double(), NAMES, x)
    for name in NAMES:
        assert stats[name]["shift"].dtype == torch.float32
        assert torch.allclose(stats[name]["shift"].double(), ref[name]["shift"], rtol=1e-4, atol=1e-7)


PICKS = [(name, k) for name in NAMES for k in range(3)]


@pytest.mark.parametrize("name,k", PICKS)
def test_shift_and_importance_match_numerical_optimum(name, k):
    """The closed forms are first order in the removed term W_ij a_j. Scaling the one chosen
    weight by 1e-2 makes that term small, so the only departures from the linearization are
    samples whose ReLU pattern flips, a fraction O(1e-2) of the batch: the closed-form shift and
    the empirical 1-D optimum (and the error there) must then agree to ~1%; 5% is required."""
    model = small_mlp()
    x = gaussian(400, 8, seed=3)
    layer = model.get_submodule(name)
    rng = np.random.default_rng(100 * NAMES.index(name) + k)
    # A weight whose neuron is alive on the batch and whose input is not identically zero,
    # else there is nothing to compare.
    e_s, e_sa, e_sa2 = reference_moments(model, x, layer)
    while True:
        i, j = int(rng.integers(layer.out_features)), int(rng.integers(layer.in_features))
        if e_s[i] > 0 and e_sa2[i, j] > 0 and abs(e_sa[i, j]) > 0.1 * (e_s[i] * e_sa2[i, j]).sqrt():
            break
    with torch.no_grad():
        layer.weight[i, j] *= 1e-2
    stats = compensation_statistics(model, [name], x)[name]
    shift, importance = stats["shift"][i, j].item(), stats["importance"][i, j].item()
    ref = model(x).detach()
    w0, b0 = layer.weight[i, j].item(), layer.bias[i].item()

    def error(delta):
        with torch.no_grad():
            layer.weight[i, j], layer.bias[i] = 0.0, b0 + delta
            e = output_error(model, x, ref)
            layer.weight[i, j], layer.bias[i] = w0, b0
        return e

    scale = abs(w0) * x.abs().max().item()
    opt = minimize_scalar(error, bracket=(-scale, scale), tol=1e-12)
    assert opt.success
    assert shift == pytest.approx(opt.x, rel=0.05)
    assert importance == pytest.approx(opt.fun, rel=0.05)
    assert importance < error(0.0)
    e_s, e_sa, e_sa2 = reference_moments(model, x, layer)
    assert error(0.0) == pytest.approx(w0 ** 2 * e_sa2[i, j].item(), rel=0.05)


def test_output_layer_compensation_is_exact():
    """On the output layer f = W a + b, s_i = 1 and there is no linearization: the shift is the
    mean of the removed term r_i = sum_{j removed} W_ij a_j and the error left is sum_i Var(r_i)."""
    model = small_mlp()
    x = gaussian(256, 8, seed=4)
    ref = model(x).detach()
    plan = hand_plan(model, 0.5, frozen=("fc1", "fc2"))
    with torch.no_grad():
        a = model.relu(model.fc2(model.relu(model.fc1(x))))
    w = model.fc3.weight.detach().clone()
    mask = compute_masks(model, plan, "elimination-compensation", calibration=x)["fc3"]
    removed = a @ (w * ~mask).T
    apply_plan(model, plan, criterion="elimination-compensation", calibration=x)
    assert output_error(model, x, ref) == pytest.approx(removed.var(dim=0, unbiased=False).sum().item(), rel=1e-9)


# ---------------------------------------------------------------------------- end to end
def _compensated_and_plain(model, density, x):
    plan = hand_plan(model, density)
    plain = copy.deepcopy(model)
    masks = compute_masks(model, plan, "elimination-compensation", calibration=x)
    report = apply_plan(model, plan, criterion="elimination-compensation", calibration=x)
    for name in NAMES:
        assert torch.equal(model.get_submodule(name).weight_mask.bool(), masks[name])
        prune.custom_from_mask(plain.get_submodule(name), "weight", masks[name].float())
    return report, plain


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("density", [0.1, 0.3, 0.5, 0.7, 0.9])
def test_compensation_never_raises_the_calibration_error(seed, density):
    """The oracle is a copy pruned with the same masks and no bias change: on the calibration
    batch the compensated error is at most its error, whatever the seed or density (step 0 is
    always among the candidates), and only the biases differ between the two."""
    model = models.mlp((64, 48, 32, 10), seed=seed)
    x = gaussian(256, 64, seed=100 + seed, dtype=torch.float32)
    ref = model(x).detach()
    report, plain = _compensated_and_plain(model, density, x)
    assert [a.criterion for a in report.layers] == ["elimination-compensation"] * 3
    assert any("bias shift scale" in note for note in report.notes)
    compensated, uncompensated = output_error(model, x, ref), output_error(plain, x, ref)
    assert compensated <= uncompensated * (1 + 1e-6), (compensated, uncompensated)
    for name in NAMES:
        a, b = model.get_submodule(name), plain.get_submodule(name)
        assert torch.equal(a.weight, b.weight)


def test_compensation_helps_a_trained_network_at_low_density():
    """Digits-trained 64-48-32-10 MLP at 30% density: the measured shifts cut the output error
    on held-out images by more than a quarter (benchmarks/compensation.py: 0.260 vs 0.725, mean
    of 3 seeds); here one seed, with a margin."""
    from planner.experiments.data import load_dataset
    from planner.experiments.training import train

    X_tr, y_tr, X_te, _ = load_dataset("digits")
    model = models.mlp((64, 48, 32, 10), seed=0)
    train(model, torch.as_tensor(X_tr, dtype=torch.float32), torch.as_tensor(y_tr), epochs=30, lr=0.1,
          batch_size=128, generator=torch.Generator().manual_seed(0))
    pool = torch.as_tensor(X_te, dtype=torch.float32)
    calib, held = pool[:256], pool[256:]
    ref_calib, ref_held = model(calib).detach(), model(held).detach()
    _, plain = _compensated_and_plain(model, 0.3, calib)
    assert output_error(model, calib, ref_calib) <= output_error(plain, calib, ref_calib)
    assert output_error(model, held, ref_held) < 0.75 * output_error(plain, held, ref_held)


@pytest.mark.parametrize("seed", [3, 4])
def test_sequential_correction_leaves_the_model_alone_and_takes_the_best_step(seed):
    """Independent re-derivation for the last layer: with the earlier layers' returned shifts
    applied, its full shift is the mean change of its pre-activation against the dense network,
    and the step returned is the one of SHIFT_STEPS with the lowest output error (brute force)."""
    model = models.mlp((64, 48, 32, 10), seed=seed)
    x = gaussian(128, 64, seed=9, dtype=torch.float32)
    before = copy.deepcopy(model.state_dict())
    masks = compute_masks(model, hand_plan(model, 0.3), "magnitude")
    shifts, steps = sequential_bias_correction(model, masks, x)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert set(shifts) == set(steps) == set(NAMES) and all(s in SHIFT_STEPS for s in steps.values())
    with torch.no_grad():
        ref = model(x)
        trial = copy.deepcopy(model)
        for n in NAMES:
            trial.get_submodule(n).weight.mul_(masks[n])
        for n in NAMES[:-1]:
            trial.get_submodule(n).bias.add_(shifts[n])
        hidden = lambda net: net.fc2(torch.relu(net.fc1(x))).relu()  # the last layer's input
        full = (model.fc3(hidden(model)) - trial.fc3(hidden(trial))).double().mean(dim=0).float()
        errors = {}
        for step in SHIFT_STEPS:
            t = copy.deepcopy(trial)
            t.fc3.bias.add_(step * full)
            errors[step] = output_error(t, x, ref)
    assert errors[steps["fc3"]] == pytest.approx(min(errors.values()), rel=1e-6)
    assert torch.allclose(shifts["fc3"], steps["fc3"] * full, atol=1e-6)


def test_calibration_that_is_not_finite_or_the_wrong_width_is_refused():
    model = models.mlp((64, 48, 32, 10), seed=0)
    plan = hand_plan(model, 0.5)
    bad = torch.randn(16, 64)
    bad[3, 5] = float("nan")
    with pytest.raises(PlannerError, match="non-finite"):
        apply_plan(copy.deepcopy(model), plan, criterion="elimination-compensation", calibration=bad)
    with pytest.raises(ModelError, match="does not fit the model"):
        apply_plan(copy.deepcopy(model), plan, criterion="elimination-compensation", calibration=torch.randn(16, 63))
    broken = copy.deepcopy(model)
    with torch.no_grad():
        broken.fc2.weight[0, 0] = float("inf")
    with pytest.raises(ModelError, match="fc2 has 1 non-finite"):
        apply_plan(broken, plan, criterion="magnitude")


# ---------------------------------------------------------------------------- corner cases
def test_dead_neurons_get_no_shift_and_zero_importance():
    model = small_mlp()
    x = gaussian(200, 8, seed=7)
    with torch.no_grad():
        model.fc2.bias[1] = -100.0       # fc2 neuron 1 never fires: df/dg = 0 through its ReLU
        model.fc2.weight[:, 4] = 0.0     # fc1 neuron 4 fires but nothing downstream reads it
    stats = compensation_statistics(model, NAMES, x)
    for name, row in (("fc2", 1), ("fc1", 4)):
        assert torch.isfinite(stats[name]["shift"]).all() and torch.isfinite(stats[name]["importance"]).all()
        assert torch.equal(stats[name]["shift"][row], torch.zeros_like(stats[name]["shift"][row]))
        assert torch.equal(stats[name]["importance"][row], torch.zeros_like(stats[name]["importance"][row]))
        assert stats[name]["importance"].sum() > 0
    # ... so the applier prunes them first and leaves their biases alone.
    bias = model.fc2.bias.detach().clone()
    apply_plan(model, hand_plan(model, 0.5, frozen=("fc1", "fc3")), criterion="elimination-compensation",
               calibration=x)
    assert not model.fc2.weight_mask[1].any()
    assert model.fc2.bias[1].item() == bias[1].item()


def test_linear_without_bias_gets_uncompensated_importance_and_zero_shift():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 6, bias=False), nn.ReLU(), nn.Linear(6, 3)).double()
    x = gaussian(200, 8, seed=8)
    stats = compensation_statistics(model, ["0", "2"], x)
    w = model[0].weight.detach()
    _, _, e_sa2 = reference_moments(model, x, model[0])
    assert torch.equal(stats["0"]["shift"], torch.zeros_like(w))
    assert torch.allclose(stats["0"]["importance"], w.square() * e_sa2, rtol=1e-9, atol=1e-15)
    assert stats["2"]["shift"].abs().sum() > 0
    report = apply_plan(model, hand_plan(model, 0.5, names=["0", "2"]), criterion="elimination-compensation",
                        calibration=x)
    assert model[0].bias is None and [a.kept for a in report.layers] == [24, 9]


def test_model_parameters_grads_and_modes_are_left_alone():
    model = models.mlp(SIZES, seed=0)
    model.train()
    model.fc2.eval()                     # a mixed state must come back as it was
    model.fc3.bias.requires_grad_(False)
    model.fc1.weight.grad = torch.randn_like(model.fc1.weight)
    model.fc3.weight.grad = torch.zeros_like(model.fc3.weight)
    before = {n: (p, p.detach().clone(), None if p.grad is None else p.grad.clone(), p.requires_grad)
              for n, p in model.named_parameters()}
    modes = {n: m.training for n, m in model.named_modules()}
    compensation_statistics(model, NAMES, gaussian(50, 8, seed=9, dtype=torch.float32), chunk_size=16)
    after = dict(model.named_parameters())
    assert set(after) == set(before)
    for n, (p, value, grad, requires_grad) in before.items():
        assert after[n] is p and torch.equal(p, value) and p.requires_grad == requires_grad
        assert (p.grad is None) if grad is None else torch.equal(p.grad, grad)
    assert {n: m.training for n, m in model.named_modules()} == modes


def test_runs_in_eval_mode_with_inplace_relu_and_frozen_parameters():
    """Dropout in train mode would make the statistics random; ReLU(inplace=True) would overwrite
    the pre-activation if the hooks differentiated the tensor handed downstream; parameters that
    do not require grad must still leave a path from each layer's output to the model's."""
    torch.manual_seed(1)
    plain = nn.Sequential(nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3)).double()
    tricky = nn.Sequential(plain[0], nn.ReLU(inplace=True), nn.Dropout(0.5), plain[2], nn.ReLU(inplace=True),
                           plain[4])
    tricky.train()
    for p in tricky.parameters():
        p.requires_grad_(False)
    x = gaussian(100, 8, seed=10)
    got = compensation_statistics(tricky, ["0", "3", "5"], x)
    for got_name, name in (("0", "0"), ("3", "2"), ("5", "4")):
        layer = plain.get_submodule(name)
        e_s, e_sa, _ = reference_moments(plain, x, layer)
        expected = torch.nan_to_num(layer.weight * e_sa / e_s[:, None])  # 0/0 on a dead neuron: 0
        assert torch.allclose(got[got_name]["shift"], expected, rtol=1e-9, atol=1e-13)
    assert tricky.training and tricky[2].training


def test_only_linear_layers_are_in_the_result():
    model = models.lenet5()
    x = torch.randn(20, 1, 32, 32)
    names = ["features.0", "features.1", "features.3", "classifier.1", "classifier.2", "classifier.5"]
    stats = compensation_statistics(model, names, x)
    assert set(stats) == {"classifier.1", "classifier.5"}
    assert stats["classifier.1"]["importance"].shape == (120, 400)
    assert compensation_statistics(model, ["features.0"], x) == {}
    assert compensation_statistics(model, [], x) == {}


def test_misuse_is_refused():
    model = models.mlp(SIZES, seed=0)
    with pytest.raises(ModelError, match="not a module"):
        compensation_statistics(model, ["fc9"], torch.randn(4, 8))
    with pytest.raises(PlannerError, match="empty"):
        compensation_statistics(model, NAMES, torch.randn(0, 8))
    with pytest.raises(PlannerError, match="chunk_size"):
        compensation_statistics(model, NAMES, torch.randn(4, 8), chunk_size=0)
    seq = nn.Sequential(nn.Linear(8, 4), nn.ReLU(), nn.Flatten(), nn.Linear(20, 2))
    with pytest.raises(ModelError, match="batch, features"):
        compensation_statistics(seq, ["0"], torch.randn(3, 5, 8))
    twice = nn.Sequential(nn.Linear(4, 4), nn.ReLU())
    twice.forward = lambda x: twice[1](twice[0](twice[1](twice[0](x))))
    with pytest.raises(ModelError, match="more than once"):
        compensation_statistics(twice, ["0"], torch.randn(3, 4))
