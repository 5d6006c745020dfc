"""The expected upper bound on linear regions of a pruned ReLU MLP (Theorem 1 of Cai et al.,
CPAIOR 2023; docs/theory.md derives it).

With P_l the rank distribution of hidden layer l (width n_l),

    R(L, d) = sum_k P_L(k) sum_{j <= min(k, d)} C(n_L, j)
    R(l, d) = sum_k P_l(k) sum_{j <= min(k, d)} C(n_l, j) R(l+1, min(n_l - j, d, k))

and the network bound is R(1, d0). Everything is computed in natural-log space.

Cost. The inner sum depends on (k, d) only through m = min(k, d); call it F_l(m). For j <= n-m
the index min(n-j, d, k) is m, so that part is a prefix sum of binomials times R(l+1, m); for
j > n-m it is n-j, a window [n-m+1, m] that grows by its two ends as m grows, so one running
log-sum-exp gives every F_l(m). Then R(l, d) = Tail_l(d) F_l(d) + sum_{k<d} P_l(k) F_l(k), a
second running sum. One evaluation is O(sum_l (n_l + |supp P_l|)) array work.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Sequence

import numpy as np

from planner.errors import InputDimError, PlannerError
from planner.core.rank import RankDistribution

LN2 = math.log(2.0)
_NEG_INF = -np.inf


@lru_cache(maxsize=256)
def log_binomials(n: int) -> np.ndarray:
    """ln C(n, j) for j = 0..n (read-only; math.lgamma, so the bound needs no scipy)."""
    lg = np.array([math.lgamma(x) for x in range(1, n + 2)])  # ln j! for j = 0..n
    out = lg[n] - lg - lg[::-1]
    out.flags.writeable = False
    return out


@lru_cache(maxsize=256)
def log_binomial_prefix(n: int) -> np.ndarray:
    """ln sum_{i <= j} C(n, i) for j = 0..n (read-only)."""
    out = np.logaddexp.accumulate(log_binomials(n))
    out.flags.writeable = False
    return out


def _log_f(n: int, m_max: int, log_r_next: np.ndarray | None) -> np.ndarray:
    """ln F(m) = ln sum_{j <= m} C(n, j) R'(min(n - j, m)) for m = 0..m_max (R' = 1 at the
    last layer, where F is the prefix sum of binomials)."""
    prefix = log_binomial_prefix(n)
    if log_r_next is None:
        return prefix[: m_max + 1].copy()
    m = np.arange(m_max + 1)
    lc = log_binomials(n)
    f = prefix[np.minimum(m, n - m)] + log_r_next[m]
    # window part: j in [n-m+1, m], non-empty from m0 = ceil((n+1)/2)
    m0 = (n + 2) // 2
    if m0 <= m_max:
        mm = np.arange(m0, m_max + 1)
        top = lc[mm] + log_r_next[n - mm]  # j = m
        low_j = n - mm + 1  # j = n-m+1, same as top when n-m+1 == m
        bottom = np.where(low_j == mm, _NEG_INF, lc[low_j] + log_r_next[mm - 1])
        window = np.logaddexp.accumulate(np.logaddexp(top, bottom))
        f[m0:] = np.logaddexp(f[m0:], window)
    return f


def _log_r(dist: RankDistribution, log_f: np.ndarray, d_max: int) -> np.ndarray:
    """ln R(d) = ln sum_k P(k) F(min(k, d)) for d = 0..d_max."""
    kmin, kmax = dist.kmin, dist.kmax
    lp = dist.log_probs
    # only k <= d_max matter individually; larger k all act as min(k, d) = d
    m_top = min(kmax, d_max)
    log_p = np.full(m_top + 1, _NEG_INF)
    tail = np.full(m_top + 1, _NEG_INF)  # ln P(K >= d)
    if kmin <= m_top:
        log_p[kmin:] = lp[: m_top - kmin + 1]
    # ln P(K >= kmin + i), needed for kmin + i <= m_top only: the ranks above m_top enter as one
    # total (a convolution's support can lie far above the dimension that reaches it)
    n_head = min(len(lp), max(m_top - kmin + 1, 1))
    if n_head < len(lp):
        rest = np.logaddexp.reduce(lp[n_head:])
        rev_tail = np.logaddexp.accumulate(np.concatenate([[rest], lp[:n_head][::-1]]))[1:][::-1]
    else:
        rev_tail = np.logaddexp.accumulate(lp[::-1])[::-1]
    d = np.arange(m_top + 1)
    tail = rev_tail[np.clip(d - kmin, 0, len(rev_tail) - 1)]
    # for d below kmin, P(K >= d) = 1 exactly
    tail[d <= kmin] = 0.0
    pre = np.logaddexp.accumulate(log_p + log_f[: m_top + 1])  # ln sum_{k <= t} P(k) F(k)
    out = np.empty(d_max + 1)
    head = tail + log_f[: m_top + 1]
    out[0] = head[0]
    if m_top >= 1:
        out[1 : m_top + 1] = np.logaddexp(head[1:], pre[:-1])
    out[m_top + 1 :] = pre[-1]
    return out


def log_bound(hidden: Sequence[int], dists: Sequence[RankDistribution], input_dim: int,
              caps: Sequence[int | None] | None = None) -> float:
    """ln R(1, d0) for hidden widths n_1..n_L with rank distributions P_1..P_L. ``caps`` (one per
    layer, None for none) bound the dimension a layer passes on beyond min(n - j, d, k): a
    max-pooled conv layer passes on at most its pooled units (planner.core.conv)."""
    hidden = [int(n) for n in hidden]
    if len(hidden) != len(dists) or not hidden:
        raise PlannerError(f"need one rank distribution per hidden layer ({len(hidden)}), got {len(dists)}")
    if input_dim < 0:
        raise InputDimError(f"input dimension must be >= 0, got {input_dim}")
    dims = input_dims(hidden, input_dim, caps)
    log_r_next = None
    for layer in range(len(hidden) - 1, -1, -1):
        log_r_next = layer_log_r(hidden[layer], dists[layer], dims[layer], log_r_next, layer)
    return float(log_r_next[int(input_dim)])


def input_dims(hidden: Sequence[int], input_dim: int, caps: Sequence[int | None] | None = None) -> list[int]:
    """The largest dimension d that reaches each hidden layer: d0, min(d0, n1, cap1), ..."""
    dims = [int(input_dim)]
    caps = [None] * len(hidden) if caps is None else list(caps)
    for n, cap in zip(hidden[:-1], caps):
        dims.append(min(dims[-1], int(n), int(n) if cap is None else int(cap)))
    return dims


def layer_log_r(width: int, dist: RankDistribution, d_max: int, log_r_next: np.ndarray | None,
                layer: int = 0) -> np.ndarray:
    """One step of the recurrence: ln R(l, d) for d = 0..d_max from layer l's width and rank
    distribution and ln R(l+1, .) (None at the last layer). :func:`log_bound` is these steps
    from the last layer back; a search over allocations can share the suffixes.

    ``log_r_next`` covers d = 0..D, D the most that reaches the next layer; a larger argument
    is clamped to D. Without caps every argument min(n - j, d, k) is at most D already; with a
    cap c (D = min(d_max, n, c)) the clamp is the recurrence's min(n - j, d, k, c)."""
    if dist.kmax > width:
        raise PlannerError(f"layer {layer + 1}: rank {dist.kmax} exceeds width {width}")
    m_max = min(dist.kmax, d_max)
    if log_r_next is not None and len(log_r_next) < m_max + 1:
        log_r_next = np.concatenate([log_r_next, np.full(m_max + 1 - len(log_r_next), log_r_next[-1])])
    log_f = _log_f(int(width), m_max, log_r_next)
    return _log_r(dist, log_f, d_max)


def log2_bound(hidden: Sequence[int], dists: Sequence[RankDistribution], input_dim: int,
               caps: Sequence[int | None] | None = None) -> float:
    """log2 of the expected upper bound on the number of linear regions."""
    return log_bound(hidden, dists, input_dim, caps) / LN2


def dense_log2_bound(sizes: Sequence[int], input_dim: int | None = None) -> float:
    """The refined dense bound (Serra et al. 2018) for ``sizes = (n0, n1, ..., nL)``: every
    rank is min(n_l, n_{l-1})."""
    sizes = [int(s) for s in sizes]
    hidden = sizes[1:]
    dists = [
        RankDistribution.point_mass(sizes[i + 1], sizes[i], min(sizes[i + 1], sizes[i]))
        for i in range(len(hidden))
    ]
    return log2_bound(hidden, dists, sizes[0] if input_dim is None else input_dim)


# ------------------------------------------------------------------------------- network API


def check_input_dim(arch, input_dim: int | None) -> int:
    if input_dim is None:
        return arch.input_size
    if isinstance(input_dim, bool) or not isinstance(input_dim, (int, np.integer)):
        raise InputDimError(f"input dimension must be an integer, got {input_dim!r}")
    if not 1 <= input_dim <= arch.input_size:
        raise InputDimError(
            f"input dimension d0 must be between 1 and the input size {arch.input_size}, got {input_dim}"
        )
    return int(input_dim)


def expand_densities(arch, density) -> list[float]:
    """One density for every hidden layer, or a list with one per hidden layer."""
    from planner.errors import DensityError
    from planner.core.rank import check_density

    if isinstance(density, (list, tuple, np.ndarray)):
        values = list(density)
        if len(values) != len(arch.hidden):
            raise DensityError(
                f"got {len(values)} densities for {len(arch.hidden)} hidden layers "
                f"({','.join(map(str, arch.hidden))}): give one value or one per hidden layer"
            )
    else:
        values = [density] * len(arch.hidden)
    return [check_density(v) for v in values]


class LayerBound:
    """One hidden layer in a bound report."""

    __slots__ = ("name", "rows", "cols", "density", "expected_rank", "distribution")

    def __init__(self, name, rows, cols, density, expected_rank, distribution):
        self.name, self.rows, self.cols = name, rows, cols
        self.density, self.expected_rank, self.distribution = density, expected_rank, distribution

    def to_dict(self) -> dict:
        d = self.distribution
        return {
            "name": self.name,
            "rows": self.rows,
            "cols": self.cols,
            "density": self.density,
            "expected_rank": self.expected_rank,
            "rank_support": [d.kmin, d.kmax],
            "rank_samples": d.samples,
        }


class BoundReport:
    """The expected bound of one network at one set of densities."""

    def __init__(self, arch, layers, log2_bound, dense_log2_bound, input_dim, rank_model, seed):
        self.arch, self.layers = arch, layers
        self.log2_bound, self.dense_log2_bound = log2_bound, dense_log2_bound
        self.input_dim, self.rank_model, self.seed = input_dim, rank_model, seed

    def to_dict(self) -> dict:
        return {
            "architecture": list(self.arch.sizes),
            "input_dim": self.input_dim,
            "rank_model": self.rank_model,
            "seed": self.seed,
            "log2_bound": self.log2_bound,
            "dense_log2_bound": self.dense_log2_bound,
            "layers": [layer.to_dict() for layer in self.layers],
        }


def expected_bound(
    arch,
    density,
    *,
    rank_model: str = "sampled",
    input_dim: int | None = None,
    seed: int = 0,
    cache=None,
    progress=None,
) -> BoundReport:
    """The expected log2 bound of ``arch`` (an :class:`Architecture` or ``"784,300,100,10"``)
    with hidden layers pruned to ``density`` (one value, or one per hidden layer).

    ``progress(layer_index, samples_done, samples_planned)`` is called while sampling.
    """
    from planner.core.arch import Architecture
    from planner.core.rank import RANK_MODELS, rank_distribution
    from planner.errors import RankModelError

    if isinstance(arch, str):
        arch = Architecture.parse(arch)
    if rank_model not in RANK_MODELS:
        raise RankModelError(f"unknown rank model {rank_model!r}; choose one of {', '.join(RANK_MODELS)}")
    d0 = check_input_dim(arch, input_dim)
    densities = expand_densities(arch, density)
    layers = []
    for i, ((rows, cols), p, name) in enumerate(zip(arch.weight_shapes, densities, arch.layer_names)):
        cb = None if progress is None else (lambda done, total, i=i: progress(i, done, total))
        dist = rank_distribution(rows, cols, p, rank_model, seed=seed, cache=cache, progress=cb)
        layers.append(LayerBound(name, rows, cols, p, dist.expected_rank, dist))
    value = log2_bound(arch.hidden, [layer.distribution for layer in layers], d0)
    return BoundReport(arch, layers, value, dense_log2_bound(arch.sizes[:-1], d0), d0, rank_model, seed)


def chain_bound(geometries, densities, input_dim: int, *, rank_model: str = "sampled", seed: int = 0,
                cache=None, progress=None):
    """The expected log2 bound of a chain of layers given as geometries (planner.core.conv:
    MatrixShape for Linear, ConvShape for Conv2d) at one density per layer. Returns
    ``(log2_bound, dense_log2_bound, distributions)``. ``progress(i)`` is called as layer i
    starts."""
    from planner.core.conv import as_geometry, layer_distribution

    geoms = [as_geometry(g) for g in geometries]
    if len(densities) != len(geoms):
        raise PlannerError(f"need one density per layer of the chain ({len(geoms)}), got {len(densities)}")
    dists = []
    for i, (g, p) in enumerate(zip(geoms, densities)):
        if progress is not None:
            progress(i)
        dists.append(layer_distribution(g, p, rank_model, seed=seed, cache=cache))
    widths, caps = [g.hyperplanes for g in geoms], [g.cap for g in geoms]
    dense = [layer_distribution(g, 1.0, rank_model, seed=seed, cache=cache) for g in geoms]
    return (log2_bound(widths, dists, input_dim, caps), log2_bound(widths, dense, input_dim, caps), dists)
