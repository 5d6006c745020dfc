"""The exports run through the real libraries: NNI 3.0's LevelPruner and SparseML 1.8's recipe
manager must leave every layer with exactly the plan's keep-count.

Each library is optional. NNI 3.0 installs next to torch 2.13 (`pip install nni==3.0`); SparseML
1.8 needs numpy < 2, so it runs in its own environment, which ``.ci/external`` (called by ``.ci/run``) builds from
``.ci/sparseml-lock.txt``. Where a library is missing, its tests
are skipped and say so. The plans are the ones the issue found SparseML rejecting (a dense
layer from lr-bound at 0.5, uniform-plus, ERK at 0.3, a 3-weight budget that empties layers)
plus a hand-made plan with convolutions, a dense, an empty and a frozen layer."""

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from planner.allocation.planfile import Plan, PlanLayer  # noqa: E402
from planner.pruning.export import export_plan  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
from examples import models  # noqa: E402

CLI_PLANS = {  # --prune-output, so the output layer is planned too and can end dense or empty
    "lr-bound-0.05": ["--density", "0.05"],
    "lr-bound-0.5": ["--density", "0.5", "--prune-output"],
    "uniform-plus-0.1": ["--strategy", "uniform-plus", "--density", "0.1", "--prune-output"],
    "erk-0.3": ["--strategy", "erk", "--density", "0.3", "--prune-output"],  # fc3 dense
    "keep-3": ["--keep", "3", "--prune-output"],                             # fc3 empty
}


def lenet5_plan() -> Plan:
    """Named like examples.models.lenet5(): a dense conv, a conv pruned whole, a layer whose
    sparsity needs more than 4 decimals, and a frozen output layer."""
    return Plan({"model": "examples.models:lenet5"}, "hand-made", {}, [
        PlanLayer("features.0", 6, 25, 150),
        PlanLayer("features.3", 16, 150, 0),
        PlanLayer("classifier.1", 120, 400, 2401, in_bound=True),
        PlanLayer("classifier.3", 84, 120, 4032, in_bound=True),
        PlanLayer("classifier.5", 10, 84, 840, frozen=True),
    ], input_dim=400)


@pytest.fixture(scope="module", params=sorted(CLI_PLANS) + ["lenet5-hand"])
def case(request, tmp_path_factory):
    """(plan, model factory), a LeNet-300-100 plan made by the CLI as a user would."""
    if request.param == "lenet5-hand":
        return lenet5_plan(), models.lenet5
    out = tmp_path_factory.mktemp("plans") / f"{request.param}.json"
    subprocess.run([sys.executable, "-m", "planner", "plan", "--arch", "784,300,100,10", "--rank-model", "analytic",
                    "--no-cache", "-o", str(out), *CLI_PLANS[request.param]], check=True, capture_output=True)
    return Plan.load(out), models.lenet_300_100


def need(module: str, reason: str):
    """Import ``module`` or skip; a hard failure instead where ``SPARSITY_PLANNER_REQUIRE`` names it
    (``.ci/external`` sets it, so a stage that installed the library cannot pass by skipping)."""
    if module.split(".")[0] in os.environ.get("SPARSITY_PLANNER_REQUIRE", "").split(","):
        return importlib.import_module(module)
    return pytest.importorskip(module, reason=reason)


def kept(module) -> int:
    return int((module.weight != 0).sum())


def check_counts(plan: Plan, model, masked: dict) -> None:
    """``masked``: {layer name: kept count} from the library; every layer the plan prunes is in it
    with exactly its keep, and the layers the export leaves out are untouched (dense)."""
    for layer in plan.layers:
        size = model.get_submodule(layer.name).weight.numel()
        assert size == layer.size
        if layer.name in masked:
            assert masked[layer.name] == layer.keep, (layer.name, masked[layer.name], layer.keep)
        else:
            assert layer.frozen or layer.keep == layer.size, layer.name
            assert kept(model.get_submodule(layer.name)) == size


def test_nni_level_pruner_keeps_the_planned_counts(case):
    need("nni", "NNI is not installed (pip install nni==3.0)")
    from nni.compression.pruning import LevelPruner

    plan, factory = case
    model = factory()
    _, masks = LevelPruner(model, json.loads(export_plan(plan, "nni"))).compress()
    assert all(set(m) == {"weight"} for m in masks.values())  # the bias is never masked
    masked = {name: int(m["weight"].sum()) for name, m in masks.items()}
    # NNI lists every configured layer, dense ones too; frozen layers are not configured
    assert set(masked) == {layer.name for layer in plan.layers if not layer.frozen}
    check_counts(plan, model, masked)


def test_sparseml_recipe_keeps_the_planned_counts(case, tmp_path, monkeypatch):
    need("sparseml.pytorch.optim", "SparseML is not installed (it needs numpy < 2; .ci/external builds a venv for it)")
    from sparseml.pytorch.optim import ScheduledModifierManager

    monkeypatch.chdir(tmp_path)  # SparseML writes ./sparse_logs
    plan, factory = case
    model = factory()
    for module in model.modules():  # no weight is 0 before pruning, so != 0 counts SparseML's mask
        if hasattr(module, "weight") and module.weight is not None:
            with torch.no_grad():
                module.weight.add_((module.weight == 0).float() * 1e-3)
    text = export_plan(plan, "sparseml")
    ScheduledModifierManager.from_yaml(text).apply(model)  # one shot, at the end of the schedule
    listed = {line.split('"')[i] for line in text.splitlines() if line.startswith("      ") and '"' in line
              for i in range(1, line.count('"'), 2)}
    masked = {name[: -len(".weight")]: kept(model.get_submodule(name[: -len(".weight")])) for name in listed}
    assert set(masked) == {layer.name for layer in plan.layers if not layer.frozen and layer.keep < layer.size}
    check_counts(plan, model, masked)
