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
