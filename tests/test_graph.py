"""Models read as graphs (planner/pruning/graph.py): the ReLU chain, the reasons, attention
projections, models without a chain, and plans for the reference CNN / ResNet / ViT examples
against hand-derived structure (layer lists and shapes written out from the definitions)."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
nn = torch.nn

import planner  # noqa: E402
from planner import RankCache  # noqa: E402
from planner.cli import main  # noqa: E402
from planner.pruning.masks import apply_plan, finalize  # noqa: E402
from planner.pruning.model import model_layers, model_weights  # noqa: E402

import examples.models as models  # noqa: E402

CACHE = RankCache(disk=False)
CIFAR = (3, 32, 32)


def by_name(found):
    return {w.name: w for w in found.layers}


def test_vgg_chain_runs_from_the_first_convolution():
    found = model_layers(models.vgg11(width=0.25), CIFAR)
    layers = by_name(found)
    convs = [n for n in layers if n.startswith("features.")]
    assert len(convs) == 8 and all(layers[n].in_bound and layers[n].conv is not None for n in convs)
    assert [n for n, w in layers.items() if w.in_bound] == [*convs, "classifier.1", "classifier.4"]
    assert layers["classifier.7"].frozen and layers["classifier.7"].why == "output layer"
    assert found.input_size == 3 * 32 * 32
    first, last = layers["features.0"].conv, layers["features.18"].conv
    # 3x32x32 -> 16x32x32 then a 2x2 max pool: 4096 pooled units, 6 pair planes per window
    assert (first.units, first.cap, first.hyperplanes) == (16 * 1024, 16 * 256, 16 * 1024 + 6 * 16 * 256)
    assert (last.in_hw, last.out_hw, last.pool.units) == ((2, 2), (2, 2), 128)
    # conv FLOPs per kept weight: the output's spatial size (32x32 for the first, 2x2 for the last)
    assert layers["features.0"].flops_per_weight == 1024 and layers["features.18"].flops_per_weight == 4


def test_resnet_has_no_chain_and_every_conv_is_prunable():
    found = model_layers(models.resnet18(width=8), CIFAR)
    layers = by_name(found)
    shortcuts = [n for n in layers if "shortcut" in n]
    assert len(layers) == 1 + 16 + 3 + 1 and len(shortcuts) == 3
    assert not any(w.in_bound for w in found.layers) and found.input_size is None
    assert layers["fc"].frozen and layers["fc"].why == "output layer"
    assert (layers["layers.2.conv2"].rows, layers["layers.2.conv2"].cols) == (16, 16 * 9)


def test_vit_attention_projections_and_gelu():
    found = model_layers(models.vit_small(dim=32, depth=2), CIFAR)
    layers = by_name(found)
    assert (layers["blocks.0.attn.in_proj_weight"].rows, layers["blocks.0.attn.in_proj_weight"].cols) == (96, 32)
    assert layers["blocks.1.attn.out_proj"].why == "attention out-projection"
    assert layers["blocks.0.mlp.0"].why == "followed by GELU"
    assert layers["blocks.0.mlp.2"].why == "followed by a residual addition"
    assert not any(w.in_bound for w in found.layers) and layers["head"].frozen
    assert len(layers) == 1 + 2 * 4 + 1


class Mixed(nn.Module):
    """fc1 -GELU- fc2 -relu(functional)- fc3 -ReLU- fc4: only fc2 and fc3 are in the chain."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2, self.fc3, self.fc4 = nn.Linear(8, 6), nn.Linear(6, 5), nn.Linear(5, 4), nn.Linear(4, 3)
        self.act = nn.ReLU()

    def forward(self, x):
        x = torch.nn.functional.gelu(self.fc1(x))
        x = torch.nn.functional.relu(self.fc2(x))
        return self.fc4(self.act(self.fc3(x)))


class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2, self.out = nn.Linear(6, 6), nn.Linear(6, 6), nn.Linear(6, 2)

    def forward(self, x):
        x = x + torch.relu(self.fc1(x))
        return self.out(torch.relu(self.fc2(x)))


class Branchy(nn.Module):
    """Data-dependent control flow: torch.fx cannot trace it."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(4, 4), nn.Linear(4, 2)

    def forward(self, x):
        if x.sum() >= 0:
            x = torch.relu(self.fc1(x))
        return self.fc2(x)


def test_only_relu_enters_the_bound():
    layers = by_name(model_layers(Mixed()))
    assert [n for n, w in layers.items() if w.in_bound] == ["fc2", "fc3"]
    assert layers["fc1"].why == "followed by gelu"
    assert layers["fc4"].frozen


def test_a_residual_ends_the_chain():
    layers = by_name(model_layers(Residual()))
    assert [n for n, w in layers.items() if w.in_bound] == ["fc2"]
    assert not layers["fc1"].in_bound and layers["fc1"].why


def test_untraceable_models_fall_back_to_hooks_and_say_so():
    found = model_layers(Branchy())
    assert found.notes and "forward hooks" in found.notes[0]
    assert [w.name for w in found.layers if w.in_bound] == ["fc1"]


@pytest.mark.parametrize("factory,kwargs", [("resnet18", {"width": 8}), ("vgg11", {"width": 0.125}),
                                            ("vit_small", {"dim": 32, "depth": 2})])
@pytest.mark.parametrize("strategy", ["lr-bound", "uniform", "uniform-plus", "erk", "global", "lamp"])
def test_every_strategy_plans_the_reference_models_with_a_rule_per_layer(factory, kwargs, strategy, tmp_path, capsys,
                                                                         monkeypatch):
    monkeypatch.chdir(tmp_path.parent)
    model = getattr(models, factory)(**kwargs)
    weights = tmp_path / "w.pt"
    torch.save(model.state_dict(), weights)
    args = ["plan", "--model", f"examples.models:{factory}", "--model-kwargs", json.dumps(kwargs),
            "--input-shape", "3,32,32", "--density", "0.2", "--strategy", strategy, "--rank-model", "analytic",
            "--no-cache", "--json"]
    if strategy in ("global", "lamp"):
        args += ["--weights", str(weights)]
    rc = main(args)
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    data = json.loads(captured.out)
    found = by_name(model_layers(model, CIFAR))
    assert [layer["name"] for layer in data["layers"]] == list(found)
    for layer in data["layers"]:
        assert layer["rule"] in ("bound", "global density", "frozen", strategy)
        if not layer["in_bound"]:
            assert layer["why"] == found[layer["name"]].why
    assert data["kept"] == round(0.2 * data["prunable"])


def test_applying_a_plan_to_the_vit_prunes_the_packed_projection_exactly():
    model = models.vit_small(dim=32, depth=2)
    plan = planner.plan(model, input_shape=CIFAR, density=0.15, rank_model="analytic", cache=CACHE)
    x = torch.rand(2, *CIFAR)
    report = apply_plan(model, plan, criterion="magnitude")
    assert {a.name: a.kept for a in report.layers} == {layer.name: layer.keep for layer in plan.layers
                                                       if not layer.frozen}
    finalize(model)
    w = model.blocks[0].attn.in_proj_weight
    assert int((w != 0).sum()) == plan.layer("blocks.0.attn.in_proj_weight").keep
    assert not any(n.endswith("_orig") for n, _ in model.named_parameters())
    assert model(x).shape == (2, 10)


def test_sensitivity_plans_a_resnet_without_a_chain():
    from planner.pruning.sensitivity import measure_sensitivity

    model = models.resnet18(width=4)
    rng = np.random.default_rng(0)
    X, y = rng.random((16, *CIFAR), dtype=np.float32), rng.integers(0, 10, 16)
    table = measure_sensitivity(model, X, y, steps=1, min_density=0.05)
    plan = planner.plan(model, input_shape=CIFAR, density=0.2, objective="sensitivity", sensitivity=table,
                        rank_model="analytic", cache=CACHE)
    assert plan.objective["log2_bound"] is None
    assert {layer.rule for layer in plan.layers} == {"sensitivity", "frozen"}
    assert plan.kept <= round(0.2 * plan.prunable)
    weights, _ = model_weights(model, [w for w in model_layers(model, CIFAR).layers])
    assert set(weights) == {layer.name for layer in plan.layers}
