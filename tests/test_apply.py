"""The torch side: introspection, the mask applier (torch's own pruning habits), apply CLI."""

import copy
import io
import pickle

import pytest

import planner
import planner.errors

torch = pytest.importorskip("torch")

import planner  # noqa: E402
from examples import models  # noqa: E402
from planner.pruning.masks import apply_plan, compute_masks, finalize, top_k_mask  # noqa: E402
from planner.cli import main  # noqa: E402
from planner.errors import CheckpointError, ModelError, PlanMismatchError  # noqa: E402
from planner.allocation.planfile import Plan, PlanLayer  # noqa: E402
from planner.pruning.model import load_factory, load_state_dict, model_layers  # noqa: E402


def small_plan(model, density=0.3):
    found = model_layers(model)
    return planner.plan(layers=found.layers, density=density, rank_model="analytic",
                        architecture_info={"input_size": found.input_size}, cache=planner.RankCache(disk=False))


@pytest.fixture
def mlp():
    return models.mlp((20, 16, 12, 5), seed=3)


def test_introspection_of_example_factories():
    lenet = model_layers(models.lenet_300_100())
    assert [(w.name, w.rows, w.cols, w.in_bound, w.frozen) for w in lenet.layers] == [
        ("fc1", 300, 784, True, False), ("fc2", 100, 300, True, False), ("fc3", 10, 100, False, True)]
    assert lenet.input_size == 784
    l5 = model_layers(models.lenet5(), (1, 32, 32))
    assert [(w.name, w.rows, w.cols, w.in_bound, w.flops_per_weight) for w in l5.layers] == [
        ("features.0", 6, 25, True, 28 * 28), ("features.3", 16, 150, True, 10 * 10),
        ("classifier.1", 120, 400, True, 1), ("classifier.3", 84, 120, True, 1), ("classifier.5", 10, 84, False, 1)]
    assert l5.input_size == 1024  # the chain starts at the first convolution's 1x32x32 input
    head = model_layers(models.alexnet_head())
    assert [(w.rows, w.cols) for w in head.layers] == [(4096, 1024), (4096, 4096), (10, 4096)]
    with pytest.raises(ModelError, match="input-shape"):
        model_layers(models.lenet5())
    # one Linear layer is the output layer alone: frozen, nothing left to plan
    (only,) = model_layers(torch.nn.Sequential(torch.nn.Linear(4, 3))).layers
    assert only.frozen and only.why == "output layer"
    with pytest.raises(planner.errors.ProblemError, match="nothing to prune"):
        planner.plan(torch.nn.Sequential(torch.nn.Linear(4, 3)), density=0.5)


def test_apply_follows_torch_pruning_habits(mlp):
    plan = small_plan(mlp)
    params_before = {name: id(p) for name, p in mlp.named_parameters()}
    x = torch.randn(32, 20)
    report = apply_plan(mlp, plan)
    for layer in plan.layers:
        module = mlp.get_submodule(layer.name)
        if layer.frozen:
            assert not hasattr(module, "weight_mask")
            continue
        assert torch.equal(module.weight, module.weight_orig * module.weight_mask)
        assert int(module.weight_mask.sum()) == layer.keep
    assert [a.kept for a in report.layers] == [a.planned_keep for a in report.layers]
    assert id(mlp.fc1.weight_orig) == params_before["fc1.weight"]
    out_pruned = mlp(x)
    clone = pickle.loads(pickle.dumps(mlp))
    assert torch.equal(clone(x), out_pruned)
    finalize(mlp)
    assert {name: id(p) for name, p in mlp.named_parameters()} == params_before
    assert torch.equal(mlp(x), out_pruned)
    assert not any(k.endswith(("_orig", "_mask")) for k in mlp.state_dict())


def test_magnitude_keeps_the_largest_weights(mlp):
    plan = small_plan(mlp, 0.2)
    masks = compute_masks(mlp, plan)
    for layer in plan.layers:
        if layer.frozen:
            continue
        w = mlp.get_submodule(layer.name).weight.detach().abs().flatten()
        mask = masks[layer.name].flatten()
        assert int(mask.sum()) == layer.keep
        assert w[mask].min() >= w[~mask].max()


def test_random_is_reproducible_and_exact(mlp):
    plan = small_plan(mlp, 0.25)
    a = compute_masks(mlp, plan, "random", generator=torch.Generator().manual_seed(5))
    b = compute_masks(mlp, plan, "random", generator=torch.Generator().manual_seed(5))
    c = compute_masks(mlp, plan, "random", generator=torch.Generator().manual_seed(6))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)
    assert all(int(a[k].sum()) == plan.layer(k).keep for k in a)


def test_rescale_multiplies_survivors(mlp):
    plan = small_plan(mlp, 0.25)
    before = copy.deepcopy(mlp)
    apply_plan(mlp, plan, criterion="magnitude", rescale=True)
    for layer in plan.layers:
        if layer.frozen or layer.keep == layer.size:
            continue
        module, old = mlp.get_submodule(layer.name), before.get_submodule(layer.name)
        mask = module.weight_mask.bool()
        expected = old.weight[mask] / (layer.keep / layer.size) ** 0.5
        assert torch.allclose(module.weight[mask], expected)


def test_top_k_mask_exact_with_ties():
    scores = torch.tensor([1.0, 1.0, 1.0, 2.0, 0.5, 1.0])
    for k in range(7):
        assert int(top_k_mask(scores, k).sum()) == k


def test_plan_that_does_not_fit_is_refused_before_touching_anything(mlp):
    plan = small_plan(mlp)
    bad = Plan.from_json(plan.to_json())
    bad.layers[1] = PlanLayer("fc2", 99, 16, 10)
    state = copy.deepcopy(mlp.state_dict())
    with pytest.raises(PlanMismatchError, match="fc2"):
        apply_plan(mlp, bad)
    assert not hasattr(mlp.fc1, "weight_mask")
    assert all(torch.equal(state[k], v) for k, v in mlp.state_dict().items())
    missing = Plan.from_json(plan.to_json())
    missing.layers[0] = PlanLayer("encoder", 16, 20, 10)
    with pytest.raises(PlanMismatchError, match="encoder"):
        apply_plan(mlp, missing)


class Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_unsafe_checkpoint_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"fc1.weight": torch.zeros(1), "x": Evil()}, path)
    with pytest.raises(CheckpointError, match="weights_only"):
        load_state_dict(path)


def test_factory_errors():
    for spec in ["nocolon", "examples.models:nope", "no_such_module_xyz:f", "examples.models:MLP.__init__"]:
        with pytest.raises(ModelError):
            load_factory(spec)


def test_apply_cli_end_to_end(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path.parent)  # the factory is found through sys.path, not the cwd
    weights = tmp_path / "w.pt"
    torch.save(models.digits_mlp(seed=1).state_dict(), weights)
    plan_path, out = tmp_path / "plan.json", tmp_path / "pruned.pt"
    assert main(["plan", "--model", "examples.models:digits_mlp", "--weights", str(weights), "--density", "0.1",
                 "--rank-model", "analytic", "-o", str(plan_path)]) == 0
    capsys.readouterr()
    assert main(["apply", "--model", "examples.models:digits_mlp", "--weights", str(weights), "--plan",
                 str(plan_path), "-o", str(out), "--json"]) == 0
    report = __import__("json").loads(capsys.readouterr().out)
    state = torch.load(out, weights_only=True)
    assert not any(k.endswith(("_orig", "_mask")) for k in state)
    plan = Plan.load(plan_path)
    for layer in plan.layers:
        assert int((state[f"{layer.name}.weight"] != 0).sum()) == layer.keep
    assert [r["kept"] for r in report["layers"]] == [r["planned_keep"] for r in report["layers"]]


def test_apply_cli_refuses_unsafe_checkpoint_and_mismatch(tmp_path, capsys):
    evil = tmp_path / "evil.pt"
    torch.save({"fc1.weight": Evil()}, evil)
    plan_path, out = tmp_path / "plan.json", tmp_path / "pruned.pt"
    assert main(["plan", "--model", "examples.models:digits_mlp", "--density", "0.1", "--rank-model", "analytic",
                 "-o", str(plan_path)]) == 0
    capsys.readouterr()
    code = main(["apply", "--model", "examples.models:digits_mlp", "--weights", str(evil), "--plan", str(plan_path),
                 "-o", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and "weights_only" in err and err.count("\n") == 1 and not out.exists()
    code = main(["apply", "--model", "examples.models:lenet_300_100", "--plan", str(plan_path), "-o", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and "fc1" in err and err.count("\n") == 1 and not out.exists()
