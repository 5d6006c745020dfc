"""Convolutions in the bound: the geometry of a Conv2d layer and the rank distribution of its
masked operator (docs/theory.md section 6 derives what follows).

A Conv2d with ``c_in`` x ``h_in`` x ``w_in`` inputs and ``c_out`` x ``h_out`` x ``w_out`` outputs is
a linear map from M = c_in h_in w_in inputs to N = c_out h_out w_out units whose matrix shares each
kernel entry across positions. A pruning mask keeps each kernel entry with probability p, one mask
for all positions. Theorem 1's recurrence needs only the number of units and the rank of that
operator, so a conv layer enters it with n = N and the rank distribution of the masked operator.

The bound's estimator (rank model ``sampled``) is a *certified upper bound* on that rank, mask by
mask. Call the channel graph the bipartite graph with an edge (o, i) when any *effective* tap of
kernel (o, i) survives (a tap is effective when it reads some input position from some output
position; on a 1x1 input with padding only the centre tap is). For any vertex cover (A, B) of the
channel graph, the rows of the output channels in A number a|A| (a = h_out w_out) and every other row
reads only the columns of the input channels in B, b|B| of them (b = h_in w_in), so

    rank <= min over vertex covers (A, B) of a|A| + b|B|,

a minimum weighted vertex cover, which is a minimum cut (maximum flow) of the channel graph. The
bound holds for every stride, padding, dilation and group count and every kernel value. When
a = b (stride 1, "same" padding) it is a times the structural rank of the channel graph, which
is the exact generic rank for circular padding (the operator is block-diagonal in the Fourier
basis with h w blocks c_out x c_in, each of the channel graph's generic rank); zero padding takes
a little off it, measured in docs/theory.md.

Rank models for convolutions:

``sampled`` (default)
    The weighted-cover bound over random masks: when a = b, a times the ``sampled`` rank
    distribution of the c_out x c_in channel matrix at edge probability q = 1 - (1-p)^t (t
    effective taps; a maximum matching, no sampling of its own); otherwise a minimum cut per
    sampled channel graph.
``svd``
    The oracle: Gaussian kernel values, a Bernoulli(p) mask, the numerical rank of the unrolled
    operator; only for small layers.
``analytic``
    Closed form, looser: the non-empty channels of the cheaper side times its weight,
    Binomial(c, 1 - (1-p)^(t c')) x (a or b).
``exact``
    Not available for convolutions (it enumerates masks of a dense matrix).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property
from typing import Callable

import numpy as np

from planner.errors import RankModelError

#: the svd oracle unrolls the operator: refused above this many matrix entries
SVD_MAX_ENTRIES = 4_000_000
#: ... and draws at most this many masks (each a dense SVD); the ranks spread over many values
SVD_MAX_SAMPLES = 1_000


def _pair(v) -> tuple[int, int]:
    if isinstance(v, (tuple, list)):
        return int(v[0]), int(v[1])
    return int(v), int(v)


@dataclass(frozen=True)
class MaxPool:
    """A max pooling after the layer's ReLU: ``window`` positions per pooled unit, ``units``
    pooled outputs. ReLU then max over a window is one maxout unit of window + 1 pieces (the
    window's pre-activations and 0); its regions are cut by the C(window + 1, 2) hyperplanes of
    the pairs, whose normals lie in the layer's row space."""

    window: int
    units: int


@dataclass(frozen=True)
class ConvShape:
    """A Conv2d layer of the bound: channels, kernel, input and output sizes, stride, padding,
    dilation and groups, and an optional max pooling after its ReLU."""

    c_in: int
    c_out: int
    kernel: tuple[int, int]
    in_hw: tuple[int, int]
    out_hw: tuple[int, int]
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    dilation: tuple[int, int] = (1, 1)
    groups: int = 1
    pool: MaxPool | None = None

    def __post_init__(self) -> None:
        for name in ("kernel", "in_hw", "out_hw", "stride", "padding", "dilation"):
            object.__setattr__(self, name, _pair(getattr(self, name)))
        if min(self.c_in, self.c_out, self.groups, *self.kernel, *self.in_hw, *self.out_hw, *self.stride,
               *self.dilation) < 1 or min(self.padding) < 0:
            raise RankModelError(f"invalid convolution geometry {self}")
        if self.c_in % self.groups or self.c_out % self.groups:
            raise RankModelError(f"groups {self.groups} must divide channels {self.c_in} -> {self.c_out}")

    @classmethod
    def of(cls, conv, in_hw, out_hw, pool: MaxPool | None = None) -> "ConvShape":
        """From an ``nn.Conv2d`` and its input and output spatial sizes."""
        padding = conv.padding
        if isinstance(padding, str):  # "same" / "valid": recover the numbers from the sizes
            padding = (0, 0) if padding == "valid" else tuple(
                (d * (k - 1)) // 2 for d, k in zip(_pair(conv.dilation), _pair(conv.kernel_size)))
        return cls(conv.in_channels, conv.out_channels, _pair(conv.kernel_size), tuple(in_hw), tuple(out_hw),
                   _pair(conv.stride), _pair(padding), _pair(conv.dilation), int(conv.groups), pool)

    # ---------------------------------------------------------------------------- sizes
    @property
    def rows(self) -> int:
        """Rows of the weight viewed as a matrix: output channels."""
        return self.c_out

    @property
    def cols(self) -> int:
        """Columns of the weight viewed as a matrix: (c_in / groups) x kh x kw."""
        return self.c_in // self.groups * self.kernel[0] * self.kernel[1]

    @property
    def size(self) -> int:
        return self.rows * self.cols

    @property
    def out_positions(self) -> int:
        return self.out_hw[0] * self.out_hw[1]

    @property
    def in_positions(self) -> int:
        return self.in_hw[0] * self.in_hw[1]

    @property
    def units(self) -> int:
        """N: the ReLU units of the layer."""
        return self.c_out * self.out_positions

    @property
    def inputs(self) -> int:
        return self.c_in * self.in_positions

    @property
    def hyperplanes(self) -> int:
        """The width the recurrence counts hyperplanes of: N, plus C(window, 2) per pooled unit
        under max pooling (the pairs of a window; the C(window + 1, 2) pieces' pairs less the
        window's own z = 0 planes, which N already counts)."""
        if self.pool is None:
            return self.units
        w = self.pool.window
        return self.units + self.pool.units * (w * (w - 1) // 2)

    @property
    def cap(self) -> int | None:
        """The dimension the layer can pass on at most beyond min(n - j, d, k): the pooled units."""
        return None if self.pool is None else self.pool.units

    @cached_property
    def _tap_mask(self) -> np.ndarray:
        mask = self._compute_tap_mask()
        mask.setflags(write=False)
        return mask

    def effective_tap_mask(self) -> np.ndarray:
        return self._tap_mask

    def _compute_tap_mask(self) -> np.ndarray:
        """kh x kw booleans: the taps that read at least one input position from some output
        position (the others multiply padding only)."""
        axes = []
        for axis in (0, 1):
            k, n_in, n_out = self.kernel[axis], self.in_hw[axis], self.out_hw[axis]
            s, pad, dil = self.stride[axis], self.padding[axis], self.dilation[axis]
            pos = np.arange(n_out)[None, :] * s - pad + np.arange(k)[:, None] * dil
            axes.append(((pos >= 0) & (pos < n_in)).any(axis=1))
        return axes[0][:, None] & axes[1][None, :]

    def effective_taps(self) -> int:
        return int(self.effective_tap_mask().sum())

    def key(self) -> str:
        return self._key

    @cached_property
    def _key(self) -> str:
        pool = "" if self.pool is None else f"|pool{self.pool.window}x{self.pool.units}"
        return (f"conv|{self.c_in}>{self.c_out}|k{self.kernel}|in{self.in_hw}|out{self.out_hw}|s{self.stride}"
                f"|p{self.padding}|d{self.dilation}|g{self.groups}{pool}")

    def describe(self) -> str:
        return (f"{self.c_in}x{self.in_hw[0]}x{self.in_hw[1]} -> {self.c_out}x{self.out_hw[0]}x{self.out_hw[1]} "
                f"(kernel {self.kernel[0]}x{self.kernel[1]})")


# ------------------------------------------------------------------------------ unrolling


def _unroll_index(shape: ConvShape) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(rows, cols, taps): every nonzero position of the unrolled operator and the flat index of
    the kernel entry it holds (zero padding: taps that fall outside the input are dropped)."""
    kh, kw = shape.kernel
    (h, w), (ho, wo) = shape.in_hw, shape.out_hw
    (sh, sw), (ph, pw), (dh, dw) = shape.stride, shape.padding, shape.dilation
    cin_g, cout_g = shape.c_in // shape.groups, shape.c_out // shape.groups
    o, ci, u, v, y, x = np.meshgrid(np.arange(shape.c_out), np.arange(cin_g), np.arange(kh), np.arange(kw),
                                    np.arange(ho), np.arange(wo), indexing="ij")
    iy, ix = y * sh - ph + u * dh, x * sw - pw + v * dw
    ok = (iy >= 0) & (iy < h) & (ix >= 0) & (ix < w)
    i = (o // cout_g) * cin_g + ci
    rows = ((o * ho + y) * wo + x)[ok]
    cols = ((i * h + iy) * w + ix)[ok]
    taps = (((o * cin_g + ci) * kh + u) * kw + v)[ok]
    return rows, cols, taps


def unrolled(shape: ConvShape, kernel: np.ndarray, index=None) -> np.ndarray:
    """The N x M matrix of the convolution with ``kernel`` (c_out, c_in / groups, kh, kw),
    zero padding, rows ordered (channel, y, x) like the outputs and columns like the inputs."""
    rows, cols, taps = _unroll_index(shape) if index is None else index
    mat = np.zeros((shape.units, shape.inputs))
    mat[rows, cols] = np.asarray(kernel, dtype=np.float64).ravel()[taps]
    return mat


# ------------------------------------------------------------------------------ covers


def min_weighted_cover(edges: np.ndarray, a: int, b: int) -> int:
    """min over vertex covers (A, B) of a|A| + b|B| of the bipartite graph with adjacency
    ``edges`` (outputs x inputs, boolean): a minimum s-t cut, by scipy's maximum flow."""
    from scipy.sparse import csr_matrix
    from scipy.sparse.csgraph import maximum_flow

    n_out, n_in = edges.shape
    o, i = np.nonzero(edges)
    if len(o) == 0:
        return 0
    if a == b:  # equal weights: a times the maximum matching (Koenig)
        from scipy.sparse.csgraph import maximum_bipartite_matching

        m = maximum_bipartite_matching(csr_matrix(edges.astype(np.int8)), perm_type="column")
        return a * int(np.count_nonzero(m >= 0))
    big = a * n_out + b * n_in + 1
    src, sink = 0, 1 + n_out + n_in
    heads = np.concatenate([np.zeros(n_out, int), 1 + o, 1 + n_out + np.arange(n_in)])
    tails = np.concatenate([1 + np.arange(n_out), 1 + n_out + i, np.full(n_in, sink)])
    caps = np.concatenate([np.full(n_out, a), np.full(len(o), big), np.full(n_in, b)]).astype(np.int32)
    graph = csr_matrix((caps, (heads, tails)), shape=(sink + 1, sink + 1))
    return int(maximum_flow(graph, src, sink).flow_value)


#: below this many channels on a side (per group), covers are found by enumerating that side's subsets
ENUMERATE_MAX_SIDE = 10


def covers_by_enumeration(edges: np.ndarray, a: int, b: int) -> np.ndarray:
    """Minimum weighted vertex covers of a batch of bipartite graphs (``edges``: batch x outputs
    x inputs, boolean) by enumerating every subset B of the inputs: the outputs with a neighbour
    outside B must be in A, so the cover costs b|B| + a #{o : N(o) not in B}. Exact; for small
    input sides (transpose the graphs and swap a, b for small output sides)."""
    batch, n_out, n_in = edges.shape
    bits = (edges.astype(np.int64) << np.arange(n_in, dtype=np.int64)).sum(axis=2)  # batch x outputs
    subsets = np.arange(1 << n_in, dtype=np.int64)
    outside = ~subsets & ((1 << n_in) - 1)
    size_b = np.array([bin(x).count("1") for x in range(1 << n_in)], dtype=np.int64)
    need_a = ((bits[:, :, None] & outside[None, None, :]) != 0).sum(axis=1)  # batch x subsets
    return (b * size_b[None, :] + a * need_a).min(axis=1)


def mask_cover(shape: ConvShape, mask: np.ndarray) -> int:
    """The weighted-cover rank bound of one kernel mask (c_out, c_in / groups, kh, kw)."""
    cin_g, cout_g = shape.c_in // shape.groups, shape.c_out // shape.groups
    live = (np.asarray(mask, dtype=bool) & shape.effective_tap_mask()[None, None]).any(axis=(2, 3))
    edges = np.zeros((shape.c_out, shape.c_in), dtype=bool)
    for g in range(shape.groups):
        edges[g * cout_g:(g + 1) * cout_g, g * cin_g:(g + 1) * cin_g] = live[g * cout_g:(g + 1) * cout_g]
    return min_weighted_cover(edges, shape.out_positions, shape.in_positions)


def _group_covers(shape: ConvShape, q: float, rng: np.random.Generator, count: int) -> np.ndarray:
    """Weighted covers of ``count`` random channel graphs (independent groups add up)."""
    a, b = shape.out_positions, shape.in_positions
    cin_g, cout_g = shape.c_in // shape.groups, shape.c_out // shape.groups
    edges = rng.random((count, shape.groups, cout_g, cin_g)) < q
    if min(cin_g, cout_g) <= ENUMERATE_MAX_SIDE:
        flat = edges.reshape(count * shape.groups, cout_g, cin_g)
        if cin_g <= cout_g:
            covers = covers_by_enumeration(flat, a, b)
        else:
            covers = covers_by_enumeration(flat.transpose(0, 2, 1), b, a)
        return covers.reshape(count, shape.groups).sum(axis=1)
    return np.array([sum(min_weighted_cover(edges[s, g], a, b) for g in range(shape.groups))
                     for s in range(count)], dtype=np.int64)


def edge_probability(shape: ConvShape, p: float) -> float:
    """q = 1 - (1 - p)^t: a channel pair keeps an edge when any of its t effective taps survives."""
    t = shape.effective_taps()
    return -math.expm1(t * math.log1p(-p)) if p < 1.0 else 1.0


# ------------------------------------------------------------------------------ distributions


def _from_ranks(shape: ConvShape, p: float, method: str, ranks: np.ndarray):
    from planner.core.rank import RankDistribution

    kmin = int(ranks.min())
    counts = np.bincount(ranks - kmin)
    return RankDistribution(shape.units, shape.inputs, p, method, kmin, counts / counts.sum(),
                            samples=int(counts.sum()))


def _scaled(dist, shape: ConvShape, p: float, method: str, factor: int):
    """A distribution of k scaled to factor * k (the support spread out, zeros between)."""
    from planner.core.rank import RankDistribution

    probs = np.zeros((len(dist.probs) - 1) * factor + 1)
    probs[::factor] = dist.probs
    return RankDistribution(shape.units, shape.inputs, p, method, dist.kmin * factor, probs, samples=dist.samples)


def _adaptive(draw: Callable[[np.random.Generator], int], seed_key: list[int], unit: int,
              max_samples: int | None = None, draw_batch=None) -> np.ndarray:
    """The paper's adaptive sample size (50 samples, then until n >= 50 x the spread of the
    values in steps of ``unit``, at most ``max_samples``); batch b always draws from the same
    stream. ``draw_batch(rng, count)`` draws a whole batch at once when given."""
    from planner.core.rank import BATCH, MAX_SAMPLES, SAMPLES_PER_RANK

    cap = MAX_SAMPLES if max_samples is None else max_samples
    values: list[int] = []
    batch, target = 0, SAMPLES_PER_RANK
    while len(values) < target and len(values) < cap:
        rng = np.random.default_rng([*seed_key, batch])
        if draw_batch is not None:
            values.extend(int(v) for v in draw_batch(rng, BATCH))
        else:
            values.extend(draw(rng) for _ in range(BATCH))
        batch += 1
        spread = (max(values) - min(values)) // unit + 1
        target = max(target, SAMPLES_PER_RANK * spread)
    return np.asarray(values, dtype=np.int64)


def _seed_key(shape: ConvShape, p: float, method: str, seed: int) -> list[int]:
    import hashlib

    from planner.core.rank import _density_bits

    digest = int.from_bytes(hashlib.sha256(shape.key().encode()).digest()[:8], "little")
    return [int(seed), 101 + ("sampled", "svd", "analytic").index(method), digest, _density_bits(p)]


def _group_sum(dist, groups: int):
    """The distribution of the sum of ``groups`` independent copies (block-diagonal channels)."""
    probs = dist.probs
    out = probs
    for _ in range(groups - 1):
        out = np.convolve(out, probs)
    return dist.kmin * groups, out


def conv_rank_distribution(shape: ConvShape, p: float, method: str = "sampled", *, seed: int = 0, cache=None):
    """P(rank bound = k) of the conv operator pruned to density ``p`` under the named model
    (``sampled``: the weighted-cover upper bound; ``svd``: the unrolled operator's numerical
    rank; ``analytic``: the closed-form, looser cover)."""
    from planner.core.rank import (RankCache, RankDistribution, check_density, default_cache,
                                   rank_distribution)

    p = check_density(p)
    a, b = shape.out_positions, shape.in_positions
    if p == 1.0:
        # dense: the cover of a complete channel graph (per group) is the cheaper whole side
        cin_g, cout_g = shape.c_in // shape.groups, shape.c_out // shape.groups
        top = shape.groups * min(a * cout_g, b * cin_g)
        return RankDistribution(shape.units, shape.inputs, p, method, top, np.ones(1), samples=0)
    if method == "exact":
        raise RankModelError("the exact rank model enumerates the masks of a dense matrix and has no "
                             "convolution form: use sampled (the default), svd or analytic")
    if method not in ("sampled", "svd", "analytic"):
        raise RankModelError(f"unknown rank model {method!r}")
    cache = default_cache() if cache is None else cache
    key = RankCache.key(0, 0, p, method, int(seed)) + "|" + shape.key()
    hit = cache.memory.get(key)
    if hit is not None:
        return hit
    cin_g, cout_g = shape.c_in // shape.groups, shape.c_out // shape.groups
    q = edge_probability(shape, p)
    if method == "analytic":
        t = shape.effective_taps()
        # cover the non-empty channels of the side whose full cover is cheaper
        if a * cout_g <= b * cin_g:
            n, weight, deg = cout_g, a, t * cin_g
        else:
            n, weight, deg = cin_g, b, t * cout_g
        # a channel with deg kernel entries is non-empty with probability 1 - (1-p)^deg
        from scipy.stats import binom

        qn = -math.expm1(deg * math.log1p(-p))
        pmf = binom.pmf(np.arange(n + 1), n, qn)
        kmin, probs = _group_sum(RankDistribution(n, n, p, "analytic", 0, pmf / pmf.sum()), shape.groups)
        dist = _scaled(RankDistribution(n, n, p, "analytic", kmin, probs), shape, p, method, weight)
    elif method == "sampled" and a == b:
        block = rank_distribution(cout_g, cin_g, q, "sampled", seed=seed, cache=cache) if q < 1.0 else \
            RankDistribution.point_mass(cout_g, cin_g, min(cout_g, cin_g))
        kmin, probs = _group_sum(block, shape.groups)
        dist = _scaled(RankDistribution(cout_g, cin_g, q, "sampled", kmin, probs, samples=block.samples),
                       shape, p, method, a)
    elif method == "sampled":
        payload = cache.disk.get(key) if cache.disk is not None else None
        if payload is not None:
            try:
                ranks = np.repeat(np.arange(len(payload["counts"])) + int(payload["kmin"]),
                                  np.asarray(payload["counts"], dtype=np.int64))
                dist = _from_ranks(shape, p, method, ranks)
            except (KeyError, TypeError, ValueError):
                payload = None
        if payload is None:
            ranks = _adaptive(None, _seed_key(shape, p, method, seed), math.gcd(a, b),
                              draw_batch=lambda rng, count: _group_covers(shape, q, rng, count))
            dist = _from_ranks(shape, p, method, ranks)
            if cache.disk is not None:
                cache.disk.put(key, {"kmin": int(ranks.min()),
                                     "counts": np.bincount(ranks - ranks.min()).tolist()})
    else:  # svd: the oracle
        if shape.units * shape.inputs > SVD_MAX_ENTRIES:
            raise RankModelError(
                f"the svd rank model unrolls the convolution: {shape.units}x{shape.inputs} is above "
                f"{SVD_MAX_ENTRIES} entries; use sampled")

        index = _unroll_index(shape)

        def draw(rng):
            kernel = rng.standard_normal((shape.c_out, cin_g, *shape.kernel))
            kernel *= rng.random(kernel.shape) < p
            return int(np.linalg.matrix_rank(unrolled(shape, kernel, index)))

        dist = _from_ranks(shape, p, method, _adaptive(draw, _seed_key(shape, p, method, seed), 1, SVD_MAX_SAMPLES))
    cache.memory[key] = dist
    return dist


# ------------------------------------------------------------------------------ any layer


@dataclass(frozen=True)
class MatrixShape:
    """A fully connected layer of the bound: ``rows`` units reading ``cols`` inputs."""

    rows: int
    cols: int

    @property
    def size(self) -> int:
        return self.rows * self.cols

    @property
    def units(self) -> int:
        return self.rows

    @property
    def hyperplanes(self) -> int:
        return self.rows

    @property
    def cap(self) -> None:
        return None


def as_geometry(shape) -> "MatrixShape | ConvShape":
    """A layer's geometry from a (rows, cols) pair, a MatrixShape or a ConvShape."""
    if isinstance(shape, (MatrixShape, ConvShape)):
        return shape
    rows, cols = shape
    return MatrixShape(int(rows), int(cols))


def layer_distribution(shape, p: float, method: str = "sampled", *, seed: int = 0, cache=None):
    """The rank distribution the bound uses for a layer of either kind at density ``p``
    (0 gives rank 0)."""
    from planner.core.rank import RankDistribution, rank_distribution

    g = as_geometry(shape)
    if p <= 0.0:
        return RankDistribution.point_mass(g.hyperplanes, g.cols, 0, density=0.0)
    if isinstance(g, ConvShape):
        return conv_rank_distribution(g, min(p, 1.0), method, seed=seed, cache=cache)
    return rank_distribution(g.rows, g.cols, min(p, 1.0), method, seed=seed, cache=cache)
