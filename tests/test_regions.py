"""Counting linear regions on input subspaces (docs/theory.md section 6): the MILP agrees with the exact
segment walk, with brute force over every pattern, and with dense sampling; counts never exceed
the dense Theorem 1 bound with d0 = S; the command line prints JSON and refuses bad input with
one line and exit code 2; the digits experiment runs in its quick mode."""

import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from examples.models import mlp
from planner.core.bound import dense_log2_bound
from planner.errors import PlannerError
from planner.experiments.regions import RegionsError
from planner.experiments.regions.count import count_regions
from planner.experiments.regions.net import ReluNet, _subspace, _tighten, check_points, relu_net
from planner.experiments.regions.walk import region_margin

ROOT = Path(__file__).resolve().parents[1]


def pruned(model, density, seed):
    """Zero a random (1 - density) share of every hidden weight matrix (biases kept)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, module in model.named_modules():
            if isinstance(module, nn.Linear):
                module.weight.mul_((torch.rand(module.weight.shape, generator=g) < density).float())
    return model


def pattern_set(result):
    return {tuple(row) for row in result.patterns}


def sizes_of(model, result):
    return [relu_net(model).input_size, *result.widths]


# ------------------------------------------------------------------------ MILP against the walk


@pytest.mark.parametrize("sizes", [(4, 6, 5, 3), (3, 8, 2)])
@pytest.mark.parametrize("density", [1.0, 0.4])
def test_milp_equals_walk_on_segments(sizes, density):
    rng = np.random.default_rng(sum(sizes) + int(10 * density))
    for seed in range(3):
        model = mlp(sizes, seed)
        if density < 1:
            pruned(model, density, seed)
        points = rng.normal(size=(2, sizes[0])) * 3
        walk = count_regions(model, points, method="walk")
        plain = count_regions(model, points, method="milp", samples=0)  # no seeding: the solver alone
        seeded = count_regions(model, points, method="milp")
        assert walk.complete and plain.complete and seeded.complete
        assert walk.method == "walk" and plain.method == "milp" and walk.dimension == 1
        assert walk.regions == walk.stats["pieces"]  # regions are convex: one piece each
        assert plain.regions == seeded.regions == walk.regions
        assert pattern_set(plain) == pattern_set(walk) == pattern_set(seeded)
        assert count_regions(model, points).method == "walk"  # auto picks the walk for S = 1


def test_milp_equals_walk_without_biases():
    # bias-free layers: a second-layer unit whose inputs are all off is identically zero on that
    # region; it counts as inactive (and the MILP must still find the region)
    rng = np.random.default_rng(5)
    for trial in range(4):
        layers = [(rng.normal(size=(6, 3)), rng.normal(size=6)),
                  (rng.normal(size=(5, 6)) * (rng.random((5, 6)) < 0.3), np.zeros(5))]
        net = ReluNet.from_arrays(layers)
        points = rng.normal(size=(2, 3)) * 2
        walk = count_regions(net, points, method="walk")
        milp = count_regions(net, points, method="milp", samples=0)
        assert pattern_set(walk) == pattern_set(milp)


def test_cbc_backend_agrees():
    model = mlp((4, 6, 5, 3), 1)
    points = np.random.default_rng(2).normal(size=(3, 4)) * 2
    assert pattern_set(count_regions(model, points, solver="cbc", samples=0)) == \
        pattern_set(count_regions(model, points, solver="mip", samples=0))


# ---------------------------------------------------------------------------------- triangles


def brute_force(model, points):
    """Every one of the 2^units patterns checked by the margin LP: the exact count for tiny nets."""
    net = relu_net(model)
    sub = _tighten(_subspace(net, check_points(points, net.input_size)))
    found = set()
    for bits in itertools.product((False, True), repeat=net.units):
        if region_margin(sub, np.array(bits))[0] >= 0.5e-6:
            found.add(bits)
    return found


def triangle_samples(model, points, n, rng):
    """Distinct patterns at n uniform barycentric samples of the triangle."""
    w = rng.dirichlet(np.ones(len(points)), size=n)
    x = torch.as_tensor(w @ points, dtype=torch.float32)
    net = relu_net(model)
    return {tuple(row) for row in net.patterns(x.double().numpy())}


@pytest.mark.parametrize("sizes, density", [((3, 8, 2), 1.0), ((4, 6, 5, 3), 0.5)])
def test_triangle_count_between_samples_and_bound(sizes, density):
    rng = np.random.default_rng(11)
    for seed in range(2):
        model = mlp(sizes, seed)
        if density < 1:
            pruned(model, density, seed)
        points = rng.normal(size=(3, sizes[0])) * 3
        result = count_regions(model, points)
        assert result.method == "milp" and result.complete and result.dimension == 2
        sampled = triangle_samples(model, points, 20_000, rng)
        assert sampled <= pattern_set(result)  # every sampled pattern is one of the regions found
        assert len(sampled) <= result.regions
        # one fixed (pruned) network: the deterministic dense bound holds, not the expectation
        assert result.regions <= 2 ** dense_log2_bound(sizes_of(model, result), 2) + 1e-9
        if seed == 0:
            assert pattern_set(result) == brute_force(model, points)


# ---------------------------------------------------------------------------- hand-checkable


def hyperplane_net(cuts, outside=(2.0, -3.0)):
    """One hidden layer on R^2: unit i is x - c_i (hyperplane x = c_i), plus units whose
    hyperplanes miss the segment [0, 1] x {0}."""
    cs = list(cuts) + list(outside)
    model = nn.Sequential(nn.Linear(2, len(cs)), nn.ReLU(), nn.Linear(len(cs), 1))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0, 0.3]] * len(cs)))
        model[0].bias.copy_(-torch.tensor(cs))
    return model


@pytest.mark.parametrize("k", [0, 1, 4, 7])
def test_segment_crossing_k_hyperplanes_has_k_plus_one_regions(k):
    cuts = np.linspace(0.05, 0.95, k) if k else []
    model = hyperplane_net(cuts)
    points = np.array([[0.0, 0.0], [1.0, 0.0]])
    walk = count_regions(model, points, method="walk")
    milp = count_regions(model, points, method="milp", samples=0)
    assert walk.regions == milp.regions == k + 1
    # left to right, one more unit switches on at each crossing
    ons = walk.patterns[:, :k].sum(axis=1) if k else np.zeros(1)
    assert list(ons) == list(range(k + 1))


def test_torch_points_and_a_triangle_of_hyperplanes():
    # 3 lines in general position cut a triangle containing all their crossings into 7 pieces
    model = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 2))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]))
        model[0].bias.copy_(torch.tensor([-0.2, -0.2, -0.9]))
    points = torch.tensor([[-1.0, -1.0], [3.0, -1.0], [-1.0, 3.0]])
    assert count_regions(model, points).regions == 7


# ------------------------------------------------------------------------------- time limit


def test_time_limit_gives_a_lower_bound():
    model = mlp((5, 8, 6, 3), 0)
    points = np.random.default_rng(0).normal(size=(4, 5)) * 3
    full = count_regions(model, points, time_limit=60)
    assert full.complete
    cut = count_regions(model, points, time_limit=1e-3)
    assert not cut.complete
    assert cut.regions <= full.regions
    assert pattern_set(cut) <= pattern_set(full)


# --------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("points, message", [
    (np.zeros((3, 5)), "width 5"),
    (np.zeros((1, 4)), "at least two points"),
    (np.array([[0.0, 1, 2, 3], [np.nan, 0, 0, 0]]), "non-finite"),
    (np.array([[0.0, 0, 0, 0], [1, 1, 1, 1], [2, 2, 2, 2]]), "affinely dependent"),
    (np.zeros(4), "shape"),
    (np.array([["a"] * 4] * 2), "numbers"),
])
def test_bad_points(points, message):
    with pytest.raises(RegionsError, match=message):
        count_regions(mlp((4, 6, 3), 0), points)


@pytest.mark.parametrize("model, message", [
    (nn.Linear(4, 3), "no hidden ReLU layer"),
    (nn.Sequential(nn.Linear(4, 5), nn.Linear(5, 3)), "no hidden ReLU layer"),
    (nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3)), "plain ReLU"),
])
def test_models_that_are_not_relu_mlps(model, message):
    with pytest.raises(RegionsError, match=message):
        count_regions(model, np.eye(2, 4))


def test_bad_options():
    model, points = mlp((4, 6, 3), 0), np.eye(3, 4)
    with pytest.raises(RegionsError, match="segment"):
        count_regions(model, points, method="walk")
    with pytest.raises(RegionsError, match="cpsat"):
        count_regions(model, points, solver="cpsat")
    with pytest.raises(RegionsError, match="unknown method"):
        count_regions(model, points, method="grid")
    assert issubclass(RegionsError, PlannerError)


# ------------------------------------------------------------------------------------- CLI


@pytest.fixture
def cli_main():
    from planner.cli import cli, main
    from planner.cli.count_regions import count_regions_command

    if "count-regions" not in cli.commands:
        cli.add_command(count_regions_command)
    return main


@pytest.fixture
def factory(tmp_path, monkeypatch):
    """A module ``regions_test_models`` with small factories, importable for --model."""
    (tmp_path / "regions_test_models.py").write_text(
        "from torch import nn\n"
        "from examples.models import mlp\n"
        "def small():\n    return mlp((4, 6, 5, 3), 0)\n"
        "def linear():\n    return nn.Sequential(nn.Linear(4, 5), nn.Linear(5, 3))\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def run_cli(main, capsys, *argv):
    code = main(["count-regions", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_json(cli_main, factory, capsys):
    model = mlp((4, 6, 5, 3), 0)
    points = np.random.default_rng(0).normal(size=(3, 4)) * 2
    np.save(factory / "tri.npy", points)
    code, out, err = run_cli(cli_main, capsys, "--model", "regions_test_models:small",
                             "--points", str(factory / "tri.npy"), "--json", "--patterns")
    assert code == 0, err
    data = json.loads(out)
    expected = count_regions(model, points)
    assert data["regions"] == expected.regions and data["complete"] is True
    assert data["dimension"] == 2 and data["method"] == "milp" and data["solver"] == "mip"
    assert len(data["patterns"]) == expected.regions
    assert data["dense_log2_bound"] == dense_log2_bound([4, 6, 5], 2)
    # with weights from a checkpoint, along a segment, human output
    other = mlp((4, 6, 5, 3), 7)
    torch.save(other.state_dict(), factory / "w.pt")
    np.save(factory / "seg.npy", points[:2])
    code, out, err = run_cli(cli_main, capsys, "--model", "regions_test_models:small", "--weights",
                             str(factory / "w.pt"), "--points", str(factory / "seg.npy"))
    assert code == 0, err
    want = count_regions(other, points[:2], method="walk").regions
    assert out.startswith(f"{want} linear regions on the 1-dimensional hull of 2 points (walk")
    assert len(out.strip().splitlines()) == 2


def test_cli_time_limit_says_lower_bound(cli_main, factory, capsys):
    np.save(factory / "p.npy", np.random.default_rng(1).normal(size=(5, 4)) * 3)
    code, out, err = run_cli(cli_main, capsys, "--model", "regions_test_models:small", "--points",
                             str(factory / "p.npy"), "--time-limit", "0.001")
    assert code == 0, err
    assert out.startswith("at least") and "lower bound" in out


@pytest.mark.parametrize("points, extra, message", [
    (np.zeros((3, 7)), [], "width 7"),
    (np.zeros((1, 4)), [], "at least two points"),
    (np.array([[np.inf, 0, 0, 0], [1.0, 0, 0, 0]]), [], "non-finite"),
    (np.eye(3, 4), ["--method", "walk"], "segment"),
    (np.eye(2, 4), ["--model", "regions_test_models:linear"], "no hidden ReLU layer"),
    (np.eye(2, 4), ["--solver", "cpsat"], "--solver"),
    (np.eye(2, 4), ["--time-limit", "0"], "--time-limit"),
    (None, [], "does not exist"),
    ("pickle", [], "cannot read"),
])
def test_cli_bad_input_exits_2(cli_main, factory, capsys, points, extra, message):
    path = factory / "bad.npy"
    if isinstance(points, np.ndarray):
        np.save(path, points)
    elif points == "pickle":
        np.save(path, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    argv = ["--model", "regions_test_models:small", "--points", str(path), *extra]
    if "--model" in extra:
        argv = argv[2:]
    code, out, err = run_cli(cli_main, capsys, *argv)
    assert code == 2
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sparsity-planner: error:"), err
    assert message in lines[0]
    assert "Traceback" not in err


# ------------------------------------------------------------------------------- experiment


def test_quick_experiment_writes_its_files(tmp_path):
    out = tmp_path / "regions"
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "examples/regions_experiment.py", "--quick", "--out", str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "test accuracy" in proc.stdout
    for name in ("results.json", "results.csv", "regions.png"):
        assert (out / name).stat().st_size > 0
    data = json.loads((out / "results.json").read_text())
    rows = data["rows"]
    assert {r["S"] for r in rows} == {1, 2}
    for r in rows:
        assert r["min_regions"] >= 1
        if r["incomplete"] == 0:
            assert r["max_regions"] <= 2 ** r["dense_log2_bound"] + 1e-9
