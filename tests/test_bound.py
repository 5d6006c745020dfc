"""The expected bound (docs/theory.md section 1) against independent oracles: the recurrence written out
literally in exact rational arithmetic, the dense bound of Serra et al. (2018) as an exact
integer sum over its index set, and closed forms."""

import itertools
import math
import random
from collections import Counter
from fractions import Fraction

import numpy as np
import pytest

import planner
from planner.core.arch import PRESETS, Architecture
from planner.core.bound import dense_log2_bound, expected_bound, log2_bound, log_bound
from planner.errors import ArchitectureError, DensityError, InputDimError, PlannerError, RankModelError
from planner.core.rank import RankCache, RankDistribution, rank_distribution


def exact_log2(x) -> float:
    x = Fraction(x)
    return math.log2(x.numerator) - math.log2(x.denominator)


# ------------------------------------------------------------------------------ oracles


def recurrence(hidden, pmfs, d0) -> Fraction:
    """R(1, d0) of docs/theory.md section 1, literally: pmfs[l] maps rank k to P_l(k) (Fractions)."""
    L = len(hidden)

    def R(l, d):
        n = hidden[l]
        total = Fraction(0)
        for k, pk in pmfs[l].items():
            inner = 0
            for j in range(min(k, d) + 1):
                inner += math.comb(n, j) * (1 if l == L - 1 else R(l + 1, min(n - j, d, k)))
            total += pk * inner
        return total

    return R(0, d0)


def serra_dense(sizes, d0=None) -> int:
    """Theorem 1 of Serra, Tjandraatmadja, Ramalingam (2018) for a dense net n0-n1-...-nL:
    sum over (j_1..j_L) with 0 <= j_l <= min(d0, n_1 - j_1, ..., n_{l-1} - j_{l-1}, n_l) of
    prod_l C(n_l, j_l); d0 = n0 unless an input subspace is given."""
    n0, hidden = sizes[0], list(sizes[1:])
    d0 = n0 if d0 is None else d0
    total = 0
    for js in itertools.product(*(range(n + 1) for n in hidden)):
        ok = all(
            js[l] <= min([d0, hidden[l]] + [hidden[i] - js[i] for i in range(l)]) for l in range(len(hidden))
        )
        if ok:
            total += math.prod(math.comb(n, j) for n, j in zip(hidden, js))
    return total


def to_dist(rows, cols, pmf: dict, method="test") -> RankDistribution:
    kmin, kmax = min(pmf), max(pmf)
    probs = np.array([float(pmf.get(k, 0)) for k in range(kmin, kmax + 1)])
    return RankDistribution(rows, cols, 0.5, method, kmin, probs)


def structural_rank(mask, rows, cols) -> int:
    """Maximum matching of a 0/1 pattern by augmenting paths (Kuhn)."""
    match_col = [-1] * cols

    def augment(r, seen):
        for c in range(cols):
            if mask[r * cols + c] and not seen[c]:
                seen[c] = True
                if match_col[c] < 0 or augment(match_col[c], seen):
                    match_col[c] = r
                    return True
        return False

    return sum(augment(r, [False] * cols) for r in range(rows))


_MASK_TABLES: dict = {}


def exact_pmf(rows, cols, p) -> dict[int, Fraction]:
    """P(rank = k) by enumerating every mask, in rationals."""
    n = rows * cols
    if (rows, cols) not in _MASK_TABLES:
        table = Counter()
        for mask in itertools.product((0, 1), repeat=n):
            table[sum(mask), structural_rank(mask, rows, cols)] += 1
        _MASK_TABLES[rows, cols] = table
    pf = Fraction(p)
    pmf: dict[int, Fraction] = {}
    for (e, k), count in _MASK_TABLES[rows, cols].items():
        pmf[k] = pmf.get(k, Fraction(0)) + count * pf**e * (1 - pf) ** (n - e)
    return pmf


# ------------------------------------------------------------------------------ dense closed forms


@pytest.mark.parametrize(
    "sizes, d0",
    [
        ((784, 100, 100), None), ((784, 20, 20), None), ((784, 20, 20), 2), ((784, 20, 20), 4),
        ((784, 100, 100), 1), ((784, 50, 50, 50), None), ((784, 300, 100), 2),
        ((3, 5, 4), None), ((5, 3, 6, 2), None), ((2, 7, 7, 7), None), ((6, 6, 6), None),
        ((5, 5, 5), None), ((4, 9, 2, 9), 3), ((1, 4, 4), None), ((10, 4), None), ((4, 10), None),
        ((8, 3, 1, 5), None), ((7, 6, 5, 4, 3), 5),
    ],
)
def test_dense_equals_serra_exact_integer(sizes, d0):
    want = exact_log2(serra_dense(sizes, d0))
    assert dense_log2_bound(sizes, d0) == pytest.approx(want, abs=1e-9)


def test_dense_known_values():
    # dense values of the paper's 784-100-100 and 784-20-20, from the exact integer sum
    assert exact_log2(serra_dense((784, 100, 100))) == pytest.approx(199.0791, abs=5e-5)
    assert exact_log2(serra_dense((784, 20, 20))) == pytest.approx(39.1704, abs=5e-5)


@pytest.mark.parametrize("sizes", [(784, 20, 20, 20), (5, 3, 7), (784, 100, 100), (9, 2, 2, 2, 2)])
def test_dense_on_a_line_is_a_product(sizes):
    # d0 = 1 and every width >= 2: each layer cuts the line at most n_l times, R = prod (n_l + 1)
    assert dense_log2_bound(sizes, 1) == pytest.approx(sum(math.log2(n + 1) for n in sizes[1:]), abs=1e-9)


@pytest.mark.parametrize("n0, n1", [(784, 100), (100, 100), (5, 9), (9, 5), (1, 1), (1, 50)])
def test_single_hidden_layer_is_a_hyperplane_arrangement(n0, n1):
    # Zaslavsky: n1 hyperplanes in general position in R^n0 make sum_{j <= n0} C(n1, j) regions
    want = exact_log2(sum(math.comb(n1, j) for j in range(min(n0, n1) + 1)))
    assert dense_log2_bound((n0, n1)) == pytest.approx(want, abs=1e-9)
    if n0 >= n1:
        assert dense_log2_bound((n0, n1)) == pytest.approx(n1, abs=1e-12)


def test_dense_alexnet_fc_exact():
    # 1024-4096-4096: n1 - j1 >= 1024 always, so R = S^2 with S = sum_{j <= 1024} C(4096, j)
    s = sum(math.comb(4096, j) for j in range(1025))
    want = exact_log2(s * s)
    assert dense_log2_bound(PRESETS["alexnet-fc"][:-1]) == pytest.approx(want, rel=1e-12)
    assert 6600 < want < 6700  # the paper: about 2^6635


@pytest.mark.parametrize("rank_model", ["sampled", "svd", "analytic", "exact"])
def test_density_one_is_the_dense_bound(rank_model):
    sizes = (4, 5, 3, 2) if rank_model == "exact" else (784, 100, 100, 10)
    for d0 in (None, 1, 3):
        report = expected_bound(sizes_str(sizes), 1.0, rank_model=rank_model, input_dim=d0)
        want = exact_log2(serra_dense(sizes[:-1], d0))
        assert report.log2_bound == pytest.approx(want, abs=1e-9)
        assert report.dense_log2_bound == pytest.approx(want, abs=1e-9)


def sizes_str(sizes):
    return ",".join(map(str, sizes))


# ------------------------------------------------------------------------------ literal recurrence


def random_case(seed):
    rng = random.Random(seed)
    L = rng.randint(1, 3)
    sizes = [rng.randint(1, 6)] + [rng.randint(1, 6) for _ in range(L)]
    d0 = rng.randint(1, sizes[0])
    pmfs = []
    for l in range(L):
        top = min(sizes[l], sizes[l + 1])
        lo = rng.randint(0, top)
        hi = rng.randint(lo, top)
        weights = [rng.choice([0, 1, 2, 3, 7]) for _ in range(lo, hi + 1)]
        weights[rng.randrange(len(weights))] += 1
        total = sum(weights)
        pmfs.append({lo + i: Fraction(w, total) for i, w in enumerate(weights)})
    return sizes, d0, pmfs


@pytest.mark.parametrize("seed", range(150))
def test_random_tiny_networks_match_the_literal_recurrence(seed):
    sizes, d0, pmfs = random_case(seed)
    hidden = sizes[1:]
    dists = [to_dist(sizes[l + 1], sizes[l], pmf) for l, pmf in enumerate(pmfs)]
    want = exact_log2(recurrence(hidden, pmfs, d0))
    assert log2_bound(hidden, dists, d0) == pytest.approx(want, abs=1e-9)
    assert log_bound(hidden, dists, d0) == pytest.approx(want * math.log(2), abs=1e-9)


def test_random_cases_cover_the_edges():
    # the random cases above exercise the branches they are meant to
    cases = [random_case(s) for s in range(150)]
    assert any(len(c[0]) == 4 for c in cases) and any(len(c[0]) == 2 for c in cases)
    assert any(c[1] == 1 for c in cases)
    assert any(0 in pmf for c in cases for pmf in c[2])
    assert any(any(v == 0 for v in pmf.values()) for c in cases for pmf in c[2])
    # the window branch: m = min(k, d) with 2m > n, for odd and even widths n
    windows = set()
    for sizes, d0, pmfs in cases:
        d = d0
        for n, pmf in zip(sizes[1:], pmfs):
            if any(2 * min(k, d) > n for k in pmf):
                windows.add(n % 2)
            d = min(d, n)
    assert windows == {0, 1}


EDGE_CASES = [
    # (sizes, d0, pmfs): hand-made distributions
    ((3, 4, 4), 3, [{0: Fraction(1)}, {3: Fraction(1)}]),  # first layer always rank 0
    ((3, 4, 4), 3, [{3: Fraction(1)}, {0: Fraction(1)}]),  # last layer always rank 0
    ((5, 5, 5, 5), 5, [{5: Fraction(1)}, {0: Fraction(1, 3), 5: Fraction(2, 3)}, {5: Fraction(1)}]),
    ((6, 6, 6), 6, [{6: Fraction(1)}, {6: Fraction(1)}]),  # window, n even, 2m = 2n
    ((5, 5, 5), 5, [{5: Fraction(1)}, {5: Fraction(1)}]),  # window, n odd
    ((6, 5, 6, 3), 6, [{3: Fraction(1, 2), 4: Fraction(1, 4), 5: Fraction(1, 4)}, {5: Fraction(1)}, {3: Fraction(1)}]),
    ((6, 6, 6), 6, [{4: Fraction(1)}, {4: Fraction(1)}]),  # 2m = 8 > 6, even
    ((6, 3, 3), 6, [{2: Fraction(1)}, {2: Fraction(1)}]),  # 2m = 4 > 3, odd
    ((4, 4, 4), 4, [{2: Fraction(1)}, {2: Fraction(1)}]),  # 2m == n: no window
    ((6, 6, 6), 1, [{0: Fraction(1, 5), 6: Fraction(4, 5)}, {1: Fraction(1, 2), 6: Fraction(1, 2)}]),  # d0 = 1
    ((2, 1, 1, 1), 2, [{0: Fraction(1, 2), 1: Fraction(1, 2)}] * 3),  # width 1
    ((6, 6, 6), 6, [{1: Fraction(0), 2: Fraction(1), 3: Fraction(0)}, {0: Fraction(0), 6: Fraction(1)}]),  # zero mass at ends
    ((60, 40, 30), 50, [{k: Fraction(1, 11) for k in range(25, 36)}, {k: Fraction(1, 6) for k in range(25, 31)}]),
]


@pytest.mark.parametrize("sizes, d0, pmfs", EDGE_CASES)
def test_edge_cases_match_the_literal_recurrence(sizes, d0, pmfs):
    hidden = sizes[1:]
    dists = [to_dist(sizes[l + 1], sizes[l], pmf) for l, pmf in enumerate(pmfs)]
    want = exact_log2(recurrence(hidden, pmfs, d0))
    assert log2_bound(hidden, dists, d0) == pytest.approx(want, abs=1e-9)


def test_rank_zero_layer_collapses_the_bound():
    # a layer whose rank is always 0 maps everything to one point: one region per earlier cell
    dists = [RankDistribution.point_mass(4, 3, 0), RankDistribution.point_mass(4, 4, 4)]
    assert log2_bound([4, 4], dists, 3) == 0.0
    assert log2_bound([4, 4], dists, 0) == 0.0


@pytest.mark.parametrize(
    "sizes, p, d0",
    [((3, 4, 2, 3), 0.3, None), ((2, 3, 3, 3), 0.6, 1), ((4, 4, 4), 0.45, 2), ((3, 3, 3, 2, 2), 0.2, None),
     ((2, 2, 4, 3), 0.8, None), ((4, 3, 4), 0.5, 4)],
)
def test_exact_model_network_matches_the_literal_recurrence(sizes, p, d0):
    """expected_bound with the exact rank model against the recurrence fed with rational
    probabilities from a mask enumeration written here."""
    arch = Architecture.from_sizes(list(sizes) + [1])
    report = expected_bound(arch, p, rank_model="exact", input_dim=d0)
    pmfs = [exact_pmf(rows, cols, p) for rows, cols in arch.weight_shapes[:-1]]
    want = exact_log2(recurrence(arch.hidden, pmfs, sizes[0] if d0 is None else d0))
    assert report.log2_bound == pytest.approx(want, abs=1e-9)
    for layer, pmf in zip(report.layers, pmfs):
        assert layer.expected_rank == pytest.approx(float(sum(k * v for k, v in pmf.items())), abs=1e-12)


def test_per_layer_densities_match_the_literal_recurrence():
    arch = Architecture.parse("3,4,3,2")
    densities = [0.25, 0.7]
    report = expected_bound(arch, densities, rank_model="exact", input_dim=2)
    pmfs = [exact_pmf(4, 3, 0.25), exact_pmf(3, 4, 0.7)]
    assert [layer.density for layer in report.layers] == densities
    assert report.log2_bound == pytest.approx(exact_log2(recurrence((4, 3), pmfs, 2)), abs=1e-9)


def test_analytic_model_matches_the_literal_recurrence():
    arch = Architecture.parse("5,6,4,1")
    p = 0.15
    report = expected_bound(arch, p, rank_model="analytic")
    pmfs = []
    for rows, cols in ((6, 5), (4, 6)):
        m, n = min(rows, cols), max(rows, cols)
        q = 1 - (1 - Fraction(p)) ** n
        pmfs.append({k: math.comb(m, k) * q**k * (1 - q) ** (m - k) for k in range(m + 1)})
    assert report.log2_bound == pytest.approx(exact_log2(recurrence((6, 4), pmfs, 5)), abs=1e-9)


# ------------------------------------------------------------------------------ monotonicity


GRID = [0.02, 0.05, 0.1, 0.2, 0.35, 0.5, 0.7, 0.85, 1.0]


@pytest.mark.parametrize(
    "arch, rank_model",
    [("4,4,4,3,2", "exact"), ("2,5,4,3", "exact"), ("784,100,100,10", "analytic"), ("100,300,50,20,10", "analytic")],
)
def test_monotone_in_every_layer_density(arch, rank_model):
    """Each model's distribution is stochastically increasing in p (provable for exact and
    analytic), and R is increasing in each layer's distribution: so is the bound."""
    net = Architecture.parse(arch)
    rng = random.Random(arch)
    dense = dense_log2_bound(net.sizes[:-1])
    for layer in range(len(net.hidden)):
        for _ in range(2):
            base = [rng.choice(GRID) for _ in net.hidden]
            values = []
            for p in GRID:
                dens = list(base)
                dens[layer] = p
                values.append(expected_bound(net, dens, rank_model=rank_model).log2_bound)
            assert all(b >= a - 1e-9 for a, b in zip(values, values[1:])), (layer, base, values)
            assert max(values) <= dense + 1e-9
    # and strictly somewhere: pruning hard does cost regions
    low = expected_bound(net, 0.001, rank_model=rank_model).log2_bound
    assert low < dense - 1e-3


@pytest.mark.parametrize("rank_model, arch", [("sampled", "784,100,100,10"), ("sampled", "64,30,30,30,10"),
                                              ("svd", "8,10,6,3"), ("analytic", "400,120,84,10"),
                                              ("exact", "3,4,4,2")])
def test_never_above_dense(rank_model, arch):
    net = Architecture.parse(arch)
    dense = dense_log2_bound(net.sizes[:-1])
    rng = random.Random(1)
    for _ in range(4):
        dens = [rng.uniform(0.005, 1.0) for _ in net.hidden]
        for d0 in (None, 1):
            report = expected_bound(net, dens, rank_model=rank_model, input_dim=d0)
            assert report.log2_bound <= report.dense_log2_bound + 1e-9
            assert report.log2_bound >= 0.0
            if d0 is None:
                assert report.dense_log2_bound == dense


@pytest.mark.parametrize("arch", ["4,4,4,2", "3,5,4,2", "2,4,4,4,1"])
@pytest.mark.parametrize("p", [0.1, 0.4, 0.8])
def test_analytic_bound_dominates_exact_bound(arch, p):
    # the analytic rank stochastically dominates the true one, and R is monotone in it
    a = expected_bound(arch, p, rank_model="analytic").log2_bound
    e = expected_bound(arch, p, rank_model="exact").log2_bound
    assert a >= e - 1e-9


# ------------------------------------------------------------------------------ the report


def test_report_is_consistent_with_its_parts():
    net = Architecture.parse("mnist-2x100")
    report = expected_bound(net, [0.03, 0.2], rank_model="sampled", seed=4, input_dim=4)
    assert report.arch == net and report.input_dim == 4 and report.rank_model == "sampled" and report.seed == 4
    assert [(l.rows, l.cols) for l in report.layers] == [(100, 784), (100, 100)]
    assert [l.name for l in report.layers] == ["fc1", "fc2"]
    for layer, p in zip(report.layers, [0.03, 0.2]):
        d = rank_distribution(layer.rows, layer.cols, p, "sampled", seed=4, cache=RankCache(disk=False))
        assert np.array_equal(layer.distribution.probs, d.probs) and layer.distribution.kmin == d.kmin
        assert layer.expected_rank == d.expected_rank
        assert layer.density == p
    recomputed = log2_bound(net.hidden, [l.distribution for l in report.layers], 4)
    assert report.log2_bound == recomputed
    assert report.dense_log2_bound == pytest.approx(exact_log2(serra_dense((784, 100, 100), 4)), abs=1e-9)
    d = report.to_dict()
    assert d["architecture"] == [784, 100, 100, 10] and d["input_dim"] == 4
    assert d["layers"][0]["rank_support"] == [report.layers[0].distribution.kmin, report.layers[0].distribution.kmax]


def test_default_input_dim_is_the_input_size():
    a = expected_bound("20,30,30,5", 0.1, rank_model="analytic")
    b = expected_bound("20,30,30,5", 0.1, rank_model="analytic", input_dim=20)
    assert a.input_dim == 20 and a.log2_bound == b.log2_bound


def test_vanishing_density_bound_is_zero():
    # all ranks are 0 with probability >= 1 - 1e-15: one region
    report = expected_bound("784,100,100,10", 1e-20)
    assert report.log2_bound == 0.0


def test_public_names():
    assert planner.log2_bound is log2_bound and planner.dense_log2_bound is dense_log2_bound
    assert planner.expected_bound is expected_bound


# ------------------------------------------------------------------------------ bad input


@pytest.mark.parametrize(
    "text",
    ["784,a,10", "784,1.5,10", "784,0,10", "784,-3,10", "784,10", "784", "", "  ", "784,,10", ",784,100,10",
     "784;100;10", "lenet-301-100", "784,100,10,"],
)
def test_architecture_parse_errors(text):
    with pytest.raises(ArchitectureError):
        Architecture.parse(text)
    with pytest.raises(ArchitectureError):
        expected_bound(text, 0.5, rank_model="analytic")


@pytest.mark.parametrize(
    "args",
    [(784, (), 10), (784, (0,), 10), (0, (5,), 10), (784, (5,), -1), (784, (1.5,), 10), (True, (5,), 10),
     (784, ("5",), 10), (784, (5, None), 10)],
)
def test_architecture_constructor_errors(args):
    with pytest.raises(ArchitectureError):
        Architecture(*args)


@pytest.mark.parametrize("sizes", [[], [784], [784, 10]])
def test_architecture_from_sizes_errors(sizes):
    with pytest.raises(ArchitectureError):
        Architecture.from_sizes(sizes)


def test_architecture_parse_accepts_the_documented_forms():
    assert Architecture.parse("784,300,100,10").sizes == (784, 300, 100, 10)
    assert Architecture.parse(" 784x300x100x10 ").sizes == (784, 300, 100, 10)
    assert Architecture.parse("784, 300, 10").hidden == (300,)
    for name, sizes in PRESETS.items():
        assert Architecture.parse(name.upper()).sizes == sizes
    assert Architecture.parse("5,4,3").weight_shapes == [(4, 5), (3, 4)]


@pytest.mark.parametrize(
    "density",
    [0, -0.5, 1.5, float("nan"), float("inf"), "abc", None, [0.5], [0.5, 0.5, 0.5], [0.5, 0], [0.5, 2.0], (), np.array([0.1])],
)
def test_density_errors(density):
    with pytest.raises(DensityError):
        expected_bound("20,30,30,5", density, rank_model="analytic")


@pytest.mark.parametrize("rank_model", ["foo", "", "Analytic", None])
def test_rank_model_errors(rank_model):
    with pytest.raises(RankModelError):
        expected_bound("20,30,30,5", 0.5, rank_model=rank_model)


def test_exact_refuses_big_layers_in_a_network():
    with pytest.raises(RankModelError, match="sampled"):
        expected_bound("784,100,100,10", 0.5, rank_model="exact")


@pytest.mark.parametrize("d0", [0, -1, 21, 1000, 1.5, True, "3", 2.0])
def test_input_dim_errors(d0):
    with pytest.raises(InputDimError):
        expected_bound("20,30,30,5", 0.5, rank_model="analytic", input_dim=d0)


def test_low_level_errors():
    dists = [RankDistribution.point_mass(3, 3, 3)]
    with pytest.raises(InputDimError):
        log2_bound([3], dists, -1)
    with pytest.raises(PlannerError):
        log2_bound([3, 3], dists, 3)  # one distribution for two layers
    with pytest.raises(PlannerError):
        log2_bound([2], [RankDistribution.point_mass(2, 3, 3)], 3)  # rank above the width
    with pytest.raises(PlannerError):
        log2_bound([], [], 3)
