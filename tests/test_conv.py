"""Convolutions in the bound (planner.core.conv), against independent oracles: torch's own
convolution applied to the identity basis (the unrolled operator), a dense SVD of it, brute-force
vertex covers, the matrix rank model (a 1x1 input), and exact region counts of tiny CNNs."""

import itertools
import json

import numpy as np
import pytest

from planner.core.bound import chain_bound, log2_bound
from planner.core.conv import (ConvShape, MaxPool, conv_rank_distribution, covers_by_enumeration, mask_cover,
                               min_weighted_cover, unrolled)
from planner.core.rank import RankCache, rank_distribution
from planner.errors import RankModelError

torch = pytest.importorskip("torch")
F = torch.nn.functional

CACHE = RankCache(disk=False)

# tiny geometries: (c_in, c_out, kernel, in_hw, stride, padding, dilation, groups)
GEOMETRIES = [
    (1, 2, (3, 3), (6, 6), (1, 1), (0, 0), (1, 1), 1),
    (1, 3, (3, 3), (6, 6), (1, 1), (1, 1), (1, 1), 1),
    (2, 3, (3, 3), (6, 6), (2, 2), (1, 1), (1, 1), 1),
    (2, 2, (2, 3), (5, 6), (1, 2), (0, 1), (2, 1), 1),
    (4, 4, (3, 3), (4, 4), (1, 1), (1, 1), (1, 1), 2),
    (3, 2, (5, 5), (6, 6), (1, 1), (2, 2), (1, 1), 1),
]


def shape_of(c_in, c_out, kernel, in_hw, stride, padding, dilation, groups):
    out = [(n + 2 * p - d * (k - 1) - 1) // s + 1 for n, k, s, p, d in zip(in_hw, kernel, stride, padding, dilation)]
    return ConvShape(c_in, c_out, kernel, in_hw, tuple(out), stride, padding, dilation, groups)


def torch_unrolled(shape, kernel):
    """The operator from torch: the convolution of every basis image."""
    eye = torch.eye(shape.inputs, dtype=torch.float64).reshape(shape.inputs, shape.c_in, *shape.in_hw)
    out = F.conv2d(eye, torch.as_tensor(kernel, dtype=torch.float64), stride=shape.stride, padding=shape.padding,
                   dilation=shape.dilation, groups=shape.groups)
    return out.reshape(shape.inputs, -1).T.numpy()


@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_unrolled_operator_is_torchs_convolution(geometry):
    shape = shape_of(*geometry)
    rng = np.random.default_rng(1)
    kernel = rng.standard_normal((shape.c_out, shape.c_in // shape.groups, *shape.kernel))
    np.testing.assert_allclose(unrolled(shape, kernel), torch_unrolled(shape, kernel), atol=1e-12)


@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_cover_never_under_estimates_the_rank_of_any_mask(geometry):
    """The weighted cover is an upper bound mask by mask (docs/theory.md section 7): checked on
    random masks at several densities against a dense SVD of torch's unrolled operator."""
    shape = shape_of(*geometry)
    rng = np.random.default_rng(2)
    gaps = []
    for p in (0.05, 0.15, 0.3, 0.6, 1.0):
        for _ in range(12):
            mask = rng.random((shape.c_out, shape.c_in // shape.groups, *shape.kernel)) < p
            kernel = rng.standard_normal(mask.shape) * mask
            rank = np.linalg.matrix_rank(torch_unrolled(shape, kernel))
            cover = mask_cover(shape, mask)
            assert rank <= cover, (p, rank, cover)
            gaps.append(cover - rank)
    assert min(gaps) == 0  # and it is attained: the bound is not vacuous


def standard_error(dist):
    return float(np.sqrt(np.dot(dist.probs, (dist.support - dist.expected_rank) ** 2) / dist.samples))


@pytest.mark.parametrize("geometry", GEOMETRIES[:4])
def test_sampled_expected_rank_is_at_least_the_oracles(geometry):
    shape = shape_of(*geometry)
    for p in (0.1, 0.3):
        fast = conv_rank_distribution(shape, p, "sampled", cache=CACHE)
        oracle = conv_rank_distribution(shape, p, "svd", cache=CACHE)
        # the samples differ, so allow their standard errors on top of the exact inequality
        noise = 3 * np.hypot(standard_error(fast), standard_error(oracle))
        assert fast.expected_rank >= oracle.expected_rank - noise - 1e-9
        analytic = conv_rank_distribution(shape, p, "analytic", cache=CACHE)  # exact expectation
        # (a sample that saw no rank-deficient mask has no spread: one sample's worth on top)
        slack = 3 * standard_error(fast) + analytic.kmax / fast.samples
        assert analytic.expected_rank >= fast.expected_rank - slack - 1e-9
        assert analytic.kmax <= min(shape.units, shape.inputs)


def brute_force_cover(edges, a, b):
    n_out, n_in = edges.shape
    best = None
    for A in itertools.product((0, 1), repeat=n_out):
        for B in itertools.product((0, 1), repeat=n_in):
            if all(A[o] or B[i] for o, i in zip(*np.nonzero(edges))):
                cost = a * sum(A) + b * sum(B)
                best = cost if best is None else min(best, cost)
    return best


def test_weighted_covers_match_brute_force():
    rng = np.random.default_rng(3)
    for _ in range(40):
        n_out, n_in = rng.integers(1, 5, size=2)
        a, b = (int(v) for v in rng.integers(1, 9, size=2))
        edges = rng.random((n_out, n_in)) < rng.uniform(0.1, 0.9)
        want = brute_force_cover(edges, a, b)
        assert min_weighted_cover(edges, a, b) == want
        assert covers_by_enumeration(edges[None], a, b)[0] == want
        assert covers_by_enumeration(edges.T[None], b, a)[0] == want


def test_conv_on_a_1x1_input_is_the_linear_layer():
    """Only the centre tap of a padded 3x3 kernel reads a 1x1 input: the distribution is the
    matrix model's, exactly, and so is the bound of a chain of such layers."""
    conv = ConvShape(7, 5, (3, 3), (1, 1), (1, 1), padding=(1, 1))
    assert conv.effective_taps() == 1
    for p in (0.05, 0.2, 0.5):
        c = conv_rank_distribution(conv, p, "sampled", cache=CACHE)
        m = rank_distribution(5, 7, p, "sampled", cache=CACHE)
        assert (c.kmin, list(c.probs)) == (m.kmin, list(m.probs))
    second = ConvShape(5, 4, (1, 1), (1, 1), (1, 1))
    bits, _, _ = chain_bound([conv, second], [0.3, 0.4], 7, cache=CACHE)
    want = log2_bound([5, 4], [rank_distribution(5, 7, 0.3, cache=CACHE), rank_distribution(4, 5, 0.4, cache=CACHE)], 7)
    assert bits == pytest.approx(want, abs=1e-12)


def test_dense_conv_rank_is_the_cheaper_side():
    shape = shape_of(2, 3, (3, 3), (6, 6), (2, 2), (1, 1), (1, 1), 1)  # 2x6x6 -> 3x3x3: 27 units, 72 inputs
    d = conv_rank_distribution(shape, 1.0, "sampled", cache=CACHE)
    assert (d.kmin, d.kmax) == (27, 27)
    kernel = np.random.default_rng(4).standard_normal((3, 2, 3, 3))
    assert np.linalg.matrix_rank(torch_unrolled(shape, kernel)) == 27


def test_exact_rank_model_is_refused_for_convolutions():
    with pytest.raises(RankModelError, match="no convolution form"):
        conv_rank_distribution(shape_of(*GEOMETRIES[0]), 0.5, "exact", cache=CACHE)


def test_max_pool_cap_and_hyperplanes():
    shape = ConvShape(1, 2, (3, 3), (6, 6), (4, 4), pool=MaxPool(4, 8))
    assert (shape.units, shape.hyperplanes, shape.cap) == (32, 32 + 8 * 6, 8)
    d = conv_rank_distribution(shape, 1.0, "sampled", cache=CACHE)
    # a cap no smaller than what reaches the next layer changes nothing
    nxt = rank_distribution(3, 8, 0.5, cache=CACHE)
    assert log2_bound([40, 3], [d, nxt], 36, [40, None]) == log2_bound([40, 3], [d, nxt], 36)
    # a cap of c passes min(., c) on: the same as a next layer entered with at most c dimensions
    capped = log2_bound([40, 3], [d, nxt], 36, [2, None])
    assert capped < log2_bound([40, 3], [d, nxt], 36)


def test_sampled_distributions_are_deterministic_and_seeded():
    shape = shape_of(1, 2, (3, 3), (6, 6), (1, 1), (0, 0), (1, 1), 1)  # a != b: sampled covers
    one = conv_rank_distribution(shape, 0.2, "sampled", seed=5, cache=RankCache(disk=False))
    two = conv_rank_distribution(shape, 0.2, "sampled", seed=5, cache=RankCache(disk=False))
    assert json.dumps(one.probs.tolist()) == json.dumps(two.probs.tolist()) and one.kmin == two.kmin


class TinyCNN(torch.nn.Module):
    def __init__(self, stride, padding, seed):
        super().__init__()
        torch.manual_seed(seed)
        self.c1 = torch.nn.Conv2d(1, 2, 3, stride=stride, padding=padding)
        self.c2 = torch.nn.Conv2d(2, 2, 3, padding=1)
        side = (6 + 2 * padding - 3) // stride + 1
        self.out = torch.nn.Linear(2 * side * side, 3)

    def forward(self, x):
        return self.out(torch.flatten(torch.relu(self.c2(torch.relu(self.c1(x)))), 1))


@pytest.mark.parametrize("stride,padding", [(1, 0), (1, 1), (2, 1)])
def test_region_counts_of_tiny_cnns_never_exceed_the_bound(stride, padding):
    """Exact counts (walk on segments, MILP on triangles) of randomly pruned tiny CNNs, against
    the bound with d0 = S and each layer's rank bounded by its mask's weighted cover."""
    from planner.core.rank import RankDistribution
    from planner.experiments.regions import count_regions
    from planner.pruning.model import model_layers

    rng = np.random.default_rng(stride * 10 + padding)
    for trial in range(2):
        model = TinyCNN(stride, padding, trial)
        found = model_layers(model, (1, 6, 6))
        chain = [w for w in found.layers if w.in_bound]
        assert [w.name for w in chain] == ["c1", "c2"]
        ranks = []
        with torch.no_grad():
            for w in chain:
                conv = getattr(model, w.name)
                mask = rng.random(conv.weight.shape) < 0.5
                conv.weight.mul_(torch.as_tensor(mask, dtype=conv.weight.dtype))
                ranks.append(mask_cover(w.conv, mask))
        widths = [w.conv.units for w in chain]
        # triangles on the smallest net only: the MILP enumeration grows fast with the units
        for s in ((1, 2) if stride == 2 else (1,)):
            points = rng.standard_normal((s + 1, 1, 6, 6)) * 3
            result = count_regions(model, points, time_limit=120)
            assert result.complete and result.widths == tuple(widths)
            dists = [RankDistribution.point_mass(n, 1, min(k, n)) for n, k in zip(widths, ranks)]
            bits = log2_bound(widths, dists, s)
            assert result.regions <= 2 ** bits + 1e-9, (s, result.regions, bits)
            assert result.regions >= 1


def run_cli(capsys, monkeypatch, *argv):
    from planner.cli import main

    monkeypatch.setenv("SPARSITY_PLANNER_CACHE_DIR", "off")
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_bound_cli_on_a_cnn_matches_the_library(capsys, monkeypatch):
    from planner.pruning.model import load_factory, model_layers

    code, out, _ = run_cli(capsys, monkeypatch, "bound", "--model", "examples.models:lenet5", "--input-shape",
                           "1,32,32", "--density", "0.3,0.001,0.1,0.1", "--input-dim", "40", "--json")
    assert code in (0, None)
    data = json.loads(out)
    assert [r["in_bound"] for r in data["layers"]] == [True, True, True, True, False]
    assert data["layers"][0]["kind"] == "conv" and data["layers"][-1]["why"] == "output layer"
    chain = [w for w in model_layers(load_factory("examples.models:lenet5"), (1, 32, 32)).layers if w.in_bound]
    bits, dense, _ = chain_bound([w.geometry for w in chain], [0.3, 0.001, 0.1, 0.1], 40,
                                 cache=RankCache(disk=False))
    assert data["log2_bound"] == pytest.approx(bits, abs=1e-9) and data["dense_log2_bound"] == pytest.approx(dense)
    assert bits < dense  # conv2 at 0.1% loses rank


def test_bound_cli_refuses_models_without_a_chain_and_bad_densities(capsys, monkeypatch):
    code, _, err = run_cli(capsys, monkeypatch, "bound", "--model", "examples.models:resnet18", "--input-shape",
                           "3,32,32", "--density", "0.1")
    assert code == 2 and "no ReLU chain" in err and "Traceback" not in err
    code, _, err = run_cli(capsys, monkeypatch, "bound", "--model", "examples.models:lenet5", "--input-shape",
                           "1,32,32", "--density", "0.1,0.2")
    assert code == 2 and "one per layer" in err


def test_plan_file_marks_convolutions_in_the_bound(capsys, monkeypatch, tmp_path):
    out = tmp_path / "plan.json"
    code, _, _ = run_cli(capsys, monkeypatch, "plan", "--model", "examples.models:digits_cnn", "--input-shape", "64",
                         "--density", "0.05", "-o", str(out))
    assert code in (0, None)
    layers = {layer["name"]: layer for layer in json.loads(out.read_text())["layers"]}
    assert layers["features.0"]["in_bound"] and layers["features.2"]["in_bound"]
    assert layers["features.0"]["rule"] == "bound"


def test_count_regions_cli_on_a_cnn(capsys, monkeypatch, tmp_path):
    torch.manual_seed(0)
    model = TinyCNN(2, 1, 0)
    torch.save(model.state_dict(), tmp_path / "w.pt")
    points = np.random.default_rng(0).standard_normal((2, 36)) * 3
    np.save(tmp_path / "p.npy", points)
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "tinycnn.py").write_text("from tests.test_conv import TinyCNN\n"
                                         "def make():\n    return TinyCNN(2, 1, 0)\n")
    code, out, err = run_cli(capsys, monkeypatch, "count-regions", "--model", "tinycnn:make", "--weights",
                             str(tmp_path / "w.pt"), "--points", str(tmp_path / "p.npy"), "--input-shape", "1,6,6",
                             "--json")
    assert code in (0, None), err
    data = json.loads(out)
    from planner.experiments.regions import count_regions

    assert data["regions"] == count_regions(model, points.reshape(2, 1, 6, 6)).regions
