"""Rank distributions P(k | rows, cols, p) (docs/theory.md section 2), checked against independent oracles:
brute-force enumeration with numpy's numerical rank, closed forms, the binomial formula, and
goodness-of-fit tests of the samplers against the exact enumeration."""

import itertools
import math
from collections import Counter
from fractions import Fraction

import numpy as np
import pytest
from scipy import stats

from planner.core import rank
from planner.errors import DensityError, PlannerError, RankModelError
from planner.core.rank import EXACT_MAX_ENTRIES, RANK_MODELS, RankCache, RankDistribution, rank_distribution

#: Significance level of every statistical test here. The samplers are seeded, so each test is
#: deterministic; the strict level just keeps a correct estimator far from the rejection region.
ALPHA = 1e-6
Z_CRIT = stats.norm.isf(ALPHA / 2)  # about 4.9


def fresh_cache():
    return RankCache(disk=False)


def dist(rows, cols, p, method, seed=0):
    return rank_distribution(rows, cols, p, method, seed=seed, cache=fresh_cache())


def as_pmf(d: RankDistribution, size: int) -> np.ndarray:
    """P(k) for k = 0..size-1 as a dense vector."""
    out = np.zeros(size)
    out[d.kmin : d.kmax + 1] = d.probs
    return out


# --------------------------------------------------------------------- independent oracles


def brute_force_rank_table(rows, cols, draws=3, seed=12345):
    """Counter {(kept entries, rank): number of masks}, over all 2^(rows*cols) masks, with the
    rank computed numerically (numpy SVD) on Gaussian values. The generic rank is the largest
    rank seen over a few independent value draws (a draw can only lose rank by accident)."""
    masks = np.array(list(itertools.product((0.0, 1.0), repeat=rows * cols))).reshape(-1, rows, cols)
    rng = np.random.default_rng(seed)
    ranks = np.zeros(len(masks), dtype=np.int64)
    for _ in range(draws):
        values = rng.standard_normal((rows, cols))
        ranks = np.maximum(ranks, np.linalg.matrix_rank(masks * values))
    edges = masks.sum(axis=(1, 2)).astype(np.int64)
    return Counter(zip(edges.tolist(), ranks.tolist()))


def pmf_from_table(table, n_entries, p) -> dict[int, Fraction]:
    """Exact P(rank = k) from a mask table, in rational arithmetic (p's exact binary value)."""
    p = Fraction(p)
    out: dict[int, Fraction] = {}
    for (e, k), count in table.items():
        out[k] = out.get(k, Fraction(0)) + count * p**e * (1 - p) ** (n_entries - e)
    return out


def chi_square_pvalue(observed: np.ndarray, probs: np.ndarray) -> float:
    """Pearson chi-square goodness of fit of ``observed`` counts to ``probs`` (same indexing).
    Cells with expected count below 5 are pooled (into their neighbour with the smallest
    expected count while the pool is still below 5). An observation in a cell of probability 0
    is an outright rejection."""
    observed = np.asarray(observed, dtype=float)
    probs = np.asarray(probs, dtype=float)
    n = observed.sum()
    if (observed[probs <= 0] > 0).any():
        return 0.0
    expected = probs * n
    big = expected >= 5
    obs = list(observed[big])
    exp = list(expected[big])
    pool_o, pool_e = observed[~big].sum(), expected[~big].sum()
    if pool_e > 0:
        if pool_e >= 5 or not exp:
            obs.append(pool_o)
            exp.append(pool_e)
        else:
            i = int(np.argmin(exp))
            obs[i] += pool_o
            exp[i] += pool_e
    if len(obs) < 2:
        return 1.0
    return float(stats.chisquare(obs, exp).pvalue)


# --------------------------------------------------------------------- exact model vs brute force

BRUTE_SHAPES = [(1, 1), (1, 4), (4, 1), (2, 2), (2, 3), (3, 2), (3, 3), (2, 5), (3, 4), (4, 4)]


@pytest.fixture(scope="module")
def brute_tables():
    return {shape: brute_force_rank_table(*shape) for shape in BRUTE_SHAPES}


@pytest.mark.parametrize("shape", BRUTE_SHAPES)
@pytest.mark.parametrize("p", [0.1, 0.37, 0.5, 0.9])
def test_exact_matches_brute_force_numerical_rank(brute_tables, shape, p):
    rows, cols = shape
    oracle = pmf_from_table(brute_tables[shape], rows * cols, p)
    d = dist(rows, cols, p, "exact")
    assert (d.rows, d.cols, d.method) == (rows, cols, "exact")
    assert d.kmin >= 0 and d.kmax <= min(rows, cols)
    for k in range(min(rows, cols) + 1):
        assert d.pmf(k) == pytest.approx(float(oracle.get(k, 0)), abs=1e-13), k
    assert d.probs.sum() == pytest.approx(1.0, abs=1e-12)


def test_brute_force_table_is_sane(brute_tables):
    # the oracle itself: counts add up to 2^N, rank <= kept entries, the full mask has full rank
    for (rows, cols), table in brute_tables.items():
        assert sum(table.values()) == 2 ** (rows * cols)
        assert all(k <= e for e, k in table)
        assert table[(rows * cols, min(rows, cols))] == 1
        # an identity-like pattern (min(rows, cols) kept entries on the diagonal) has full rank,
        # so there are masks with that few entries and full rank
        assert table[(min(rows, cols), min(rows, cols))] >= 1


@pytest.mark.parametrize("n", [1, 2, 3, 7, 20])
@pytest.mark.parametrize("p", [0.05, 0.5, 0.93])
def test_exact_single_line_closed_form(n, p):
    # a 1 x n (or n x 1) matrix has rank 1 iff some entry is kept
    want = 1 - (1 - p) ** n
    for shape in ((1, n), (n, 1)):
        d = dist(*shape, p, "exact")
        assert d.pmf(1) == pytest.approx(want, abs=1e-14)
        assert d.pmf(0) == pytest.approx(1 - want, abs=1e-14)


@pytest.mark.parametrize("p", [0.1, 0.3, 0.5, 0.77])
def test_exact_2x2_closed_form(p):
    # rank 2 iff the diagonal or the anti-diagonal is fully kept: 2 p^2 - p^4
    d = dist(2, 2, p, "exact")
    assert d.pmf(2) == pytest.approx(p**2 * (2 - p**2), abs=1e-14)
    assert d.pmf(0) == pytest.approx((1 - p) ** 4, abs=1e-14)


@pytest.mark.parametrize("n", [2, 3, 5, 10])
@pytest.mark.parametrize("p", [0.15, 0.5, 0.85])
def test_exact_2xn_closed_form(n, p):
    # rank 2 iff both rows are non-empty and their union is not a single column:
    # 1 - 2 (1-p)^n + (1-p)^(2n) - n p^2 (1-p)^(2(n-1));  rank 0 iff the mask is empty
    q = 1 - p
    want2 = 1 - 2 * q**n + q ** (2 * n) - n * p**2 * q ** (2 * (n - 1))
    d = dist(2, n, p, "exact")
    assert d.pmf(2) == pytest.approx(want2, abs=1e-13)
    assert d.pmf(0) == pytest.approx(q ** (2 * n), abs=1e-14)
    assert d.pmf(1) == pytest.approx(1 - want2 - q ** (2 * n), abs=1e-13)


def test_exact_limit_and_refusal():
    # the largest allowed shape works, one more entry is refused with advice to use 'sampled'
    fits = [(r, EXACT_MAX_ENTRIES // r) for r in (1, 2, 4) if EXACT_MAX_ENTRIES // r >= 1]
    for rows, cols in fits:
        d = dist(rows, cols, 0.4, "exact")
        assert d.probs.sum() == pytest.approx(1.0)
    for rows, cols in [(1, EXACT_MAX_ENTRIES + 1), (EXACT_MAX_ENTRIES + 1, 1), (5, 5), (3, 7), (100, 100)]:
        assert rows * cols > EXACT_MAX_ENTRIES
        for _ in range(2):  # refused every time, not only before something got cached
            with pytest.raises(RankModelError, match="sampled"):
                rank_distribution(rows, cols, 0.4, "exact")


# --------------------------------------------------------------------- samplers vs exact

SAMPLER_SHAPES = [(2, 3), (3, 4), (4, 4), (3, 5), (5, 3)]
SAMPLER_PS = [0.2, 0.5, 0.8]


@pytest.mark.parametrize("method", ["sampled", "svd"])
@pytest.mark.parametrize("shape", SAMPLER_SHAPES)
@pytest.mark.parametrize("p", SAMPLER_PS)
def test_sampler_fits_exact_chi_square(monkeypatch, method, shape, p):
    """The whole public pipeline with 10x the paper's sample size: the empirical distribution
    must pass a chi-square goodness-of-fit test against the exact one."""
    monkeypatch.setattr(rank, "SAMPLES_PER_RANK", 500)
    rows, cols = shape
    m = min(shape)
    d = dist(rows, cols, p, method, seed=7)
    assert (d.rows, d.cols, d.method) == (rows, cols, method)
    counts = np.rint(as_pmf(d, m + 1) * d.samples)
    assert counts.sum() == d.samples and d.samples >= 500
    exact = as_pmf(dist(rows, cols, p, "exact"), m + 1)
    assert chi_square_pvalue(counts, exact) > ALPHA


def _wrong_estimators(shape, p):
    rows, cols = shape
    m, n = min(shape), max(shape)
    yield "density p^2", as_pmf(dist(rows, cols, p * p, "exact"), m + 1)
    if n > m:
        yield "square shape", as_pmf(dist(m, m, p, "exact"), m + 1)
    yield "long side one longer", as_pmf(dist(m, n + 1, p, "exact"), m + 1)


@pytest.mark.parametrize("shape", [(3, 4), (3, 5), (4, 4)])
def test_chi_square_check_has_power(monkeypatch, shape):
    """The goodness-of-fit check above rejects plausible wrong estimators on the same samples."""
    monkeypatch.setattr(rank, "SAMPLES_PER_RANK", 500)
    p = 0.5
    m = min(shape)
    d = dist(*shape, p, "sampled", seed=7)
    counts = np.rint(as_pmf(d, m + 1) * d.samples)
    for name, wrong in _wrong_estimators(shape, p):
        assert chi_square_pvalue(counts, wrong) < ALPHA, name


@pytest.mark.parametrize("method", ["sampled", "svd"])
@pytest.mark.parametrize("shape", SAMPLER_SHAPES)
@pytest.mark.parametrize("p", SAMPLER_PS)
@pytest.mark.parametrize("seed", [0, 1])
def test_adaptive_sampler_mean_z_test(method, shape, p, seed):
    """With the paper's adaptive sample size the sample mean of the rank is within Z_CRIT
    standard errors of the exact expected rank."""
    rows, cols = shape
    d = dist(rows, cols, p, method, seed=seed)
    ex = dist(rows, cols, p, "exact")
    mu = ex.expected_rank
    sd = math.sqrt(float(np.dot(ex.support**2, ex.probs)) - mu**2)
    assert abs(d.expected_rank - mu) <= Z_CRIT * sd / math.sqrt(d.samples)


@pytest.mark.parametrize(
    "method, shape, p",
    [("sampled", (4, 4), 0.5), ("sampled", (30, 40), 0.04), ("sampled", (100, 300), 0.005),
     ("sampled", (20, 20), 0.9), ("svd", (4, 4), 0.5), ("svd", (12, 17), 0.1)],
)
def test_adaptive_sample_size_rule(method, shape, p):
    # the paper: 50 samples, then keep sampling until there are >= 50 * (max rank - min rank + 1);
    # the sampler works in batches of rank.BATCH
    d = dist(*shape, p, method)
    spread = d.kmax - d.kmin + 1
    need = max(50, 50 * spread)
    assert need <= d.samples < need + rank.BATCH
    assert d.probs[0] > 0 and d.probs[-1] > 0  # the support is the observed range
    assert np.allclose(d.probs * d.samples, np.rint(d.probs * d.samples), atol=1e-9)


def test_structural_equals_numerical_rank_on_random_patterns():
    # the premise of the sampled model: for generic values, rank == structural rank
    from scipy.sparse import csr_matrix
    from scipy.sparse.csgraph import structural_rank

    rng = np.random.default_rng(3)
    for _ in range(200):
        rows, cols = rng.integers(1, 9, size=2)
        mask = rng.random((rows, cols)) < rng.uniform(0.05, 0.6)
        values = rng.standard_normal((rows, cols)) * mask
        assert np.linalg.matrix_rank(values) == structural_rank(csr_matrix(mask.astype(np.int8)))


# --------------------------------------------------------------------- analytic


def binomial_pmf(m, n, p, k) -> float:
    q = 1 - (1 - Fraction(p)) ** n
    return float(math.comb(m, k) * q**k * (1 - q) ** (m - k))


@pytest.mark.parametrize("shape", [(1, 1), (3, 7), (7, 3), (4, 4), (10, 25), (25, 10)])
@pytest.mark.parametrize("p", [0.01, 0.2, 0.5, 0.95])
def test_analytic_is_the_binomial_formula(shape, p):
    m, n = min(shape), max(shape)
    d = dist(*shape, p, "analytic")
    assert (d.rows, d.cols) == shape
    for k in range(m + 1):
        assert d.pmf(k) == pytest.approx(binomial_pmf(m, n, p, k), abs=1e-13, rel=1e-9), k


@pytest.mark.parametrize("rows, cols, p", [(100, 300, 0.005), (1000, 1000, 1e-12), (50, 4096, 1e-9)])
def test_analytic_mean_without_cancellation(rows, cols, p):
    # E = m * (1 - (1-p)^n), evaluated exactly in rationals
    m, n = min(rows, cols), max(rows, cols)
    q = 1 - (1 - Fraction(p)) ** n
    d = dist(rows, cols, p, "analytic")
    assert d.expected_rank == pytest.approx(float(m * q), rel=1e-9)


@pytest.mark.parametrize("shape", [(1, 3), (2, 2), (2, 3), (3, 3), (3, 4), (4, 4), (4, 5), (2, 9)])
@pytest.mark.parametrize("p", [0.05, 0.2, 0.5, 0.8])
def test_analytic_dominates_exact(shape, p):
    # rank <= number of non-empty lines of the short side, so the analytic distribution
    # stochastically dominates the exact one: P_a(K >= t) >= P_e(K >= t) for every t
    m = min(shape)
    a = as_pmf(dist(*shape, p, "analytic"), m + 1)
    e = as_pmf(dist(*shape, p, "exact"), m + 1)
    tail_a = np.cumsum(a[::-1])[::-1]
    tail_e = np.cumsum(e[::-1])[::-1]
    assert (tail_a >= tail_e - 1e-12).all()
    assert np.dot(np.arange(m + 1), a) >= np.dot(np.arange(m + 1), e) - 1e-12
    if m >= 2 and p <= 0.5:  # strictly: two rows often share their single column
        assert np.dot(np.arange(m + 1), a) > np.dot(np.arange(m + 1), e) + 1e-6


def test_analytic_overestimates_sampled_on_a_large_sparse_layer():
    d = dist(100, 300, 0.005, "sampled")
    a = dist(100, 300, 0.005, "analytic")
    sd = math.sqrt(float(np.dot(d.support**2, d.probs)) - d.expected_rank**2)
    # the sampled mean is far below the analytic one, well beyond its standard error
    assert d.expected_rank + Z_CRIT * sd / math.sqrt(d.samples) < a.expected_rank
    assert a.expected_rank == pytest.approx(100 * (1 - 0.995**300), rel=1e-12)


# --------------------------------------------------------------------- monotonicity in density


@pytest.mark.parametrize("shape", [(2, 3), (3, 3), (4, 5), (20, 30)])
def test_stochastically_increasing_in_density(shape):
    ps = [0.01, 0.05, 0.1, 0.3, 0.5, 0.7, 0.9, 0.99, 1.0]
    m = min(shape)
    methods = ["analytic"] + (["exact"] if shape[0] * shape[1] <= EXACT_MAX_ENTRIES else [])
    for method in methods:
        tails = [np.cumsum(as_pmf(dist(*shape, p, method), m + 1)[::-1])[::-1] for p in ps]
        for lo, hi in zip(tails, tails[1:]):
            assert (hi >= lo - 1e-12).all(), method


# --------------------------------------------------------------------- dense, tiny densities


@pytest.mark.parametrize("method", RANK_MODELS)
@pytest.mark.parametrize("shape", [(1, 1), (3, 5), (5, 3), (300, 100)])
def test_dense_layer_has_full_rank(method, shape):
    d = dist(*shape, 1.0, method)
    assert (d.kmin, d.kmax) == (min(shape), min(shape))
    assert d.expected_rank == min(shape)


@pytest.mark.parametrize("method", ["sampled", "svd", "analytic"])
@pytest.mark.parametrize("p", [1e-12, 1e-20, 1e-300, 5e-324])
def test_vanishing_density_gives_rank_zero(method, p):
    # P(rank > 0) <= rows * cols * p, which is below 1e-6 here
    rows, cols = (20, 30) if method == "svd" else (100, 300)
    d = dist(rows, cols, p, method)
    assert d.pmf(0) == pytest.approx(1.0, abs=rows * cols * p + 1e-15)
    assert d.expected_rank <= rows * cols * p * min(rows, cols) + 1e-15


# --------------------------------------------------------------------- determinism


@pytest.mark.parametrize("method", ["sampled", "svd"])
def test_same_inputs_give_identical_distributions(method):
    shape, p = ((12, 17), 0.1) if method == "svd" else ((60, 90), 0.02)
    a = dist(*shape, p, method, seed=5)
    b = dist(*shape, p, method, seed=5)
    assert a is not b
    assert (a.kmin, a.samples) == (b.kmin, b.samples)
    assert np.array_equal(a.probs, b.probs)
    # through the same cache too
    cache = fresh_cache()
    c1 = rank_distribution(*shape, p, method, seed=5, cache=cache)
    c2 = rank_distribution(*shape, p, method, seed=5, cache=cache)
    assert np.array_equal(c1.probs, a.probs) and np.array_equal(c2.probs, a.probs)


@pytest.mark.parametrize("method", ["sampled", "svd"])
def test_different_seeds_differ_on_a_noisy_case(method):
    shape, p = ((12, 17), 0.1) if method == "svd" else ((60, 90), 0.02)
    runs = [dist(*shape, p, method, seed=s) for s in (0, 1, 2)]
    keys = {(r.kmin, tuple(r.probs)) for r in runs}
    assert len(keys) == 3
    assert all(r.kmax - r.kmin >= 3 for r in runs)  # really a noisy case


def test_density_enters_the_stream():
    # two different densities are two different samples, not one stream thinned differently
    a = dist(60, 90, 0.02, "sampled", seed=0)
    b = dist(60, 90, np.nextafter(0.02, 1), "sampled", seed=0)
    assert a.density != b.density
    assert (a.kmin, tuple(a.probs)) != (b.kmin, tuple(b.probs))


@pytest.mark.parametrize("method", RANK_MODELS)
def test_transposed_shape_shares_the_estimate(method):
    rows, cols, p = (4, 5, 0.3) if method == "exact" else (9, 23, 0.1)
    a = dist(rows, cols, p, method, seed=3)
    b = dist(cols, rows, p, method, seed=3)  # separate caches: computed twice
    assert (a.rows, a.cols, b.rows, b.cols) == (rows, cols, cols, rows)
    assert (a.kmin, a.samples) == (b.kmin, b.samples)
    assert np.array_equal(a.probs, b.probs)
    # and through one cache the second call is a hit that still reports the requested shape
    cache = fresh_cache()
    c = rank_distribution(rows, cols, p, method, seed=3, cache=cache)
    t = rank_distribution(cols, rows, p, method, seed=3, cache=cache)
    assert (c.rows, c.cols, t.rows, t.cols) == (rows, cols, cols, rows)
    assert np.array_equal(c.probs, t.probs)


# --------------------------------------------------------------------- bad input


@pytest.mark.parametrize("method", ["Sampled", "exactly", "", "binomial", None])
def test_unknown_rank_model(method):
    with pytest.raises(RankModelError):
        rank_distribution(3, 4, 0.5, method)


@pytest.mark.parametrize("rows, cols", [(0, 4), (4, 0), (-1, 3), (2.5, 3), (True, 3), ("3", 4), (None, 2)])
def test_bad_shape(rows, cols):
    with pytest.raises(RankModelError):
        rank_distribution(rows, cols, 0.5, "analytic")


@pytest.mark.parametrize("p", [0, 0.0, -0.1, 1.0000001, 2, float("nan"), float("inf"), -float("inf"), "abc", None, [0.5]])
@pytest.mark.parametrize("method", RANK_MODELS)
def test_bad_density(p, method):
    with pytest.raises(DensityError):
        rank_distribution(3, 4, p, method)


def test_errors_share_the_base_class():
    for exc in (DensityError, RankModelError):
        assert issubclass(exc, PlannerError) and issubclass(exc, ValueError)
