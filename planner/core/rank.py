"""Rank distributions P(k | rows, cols, p) of randomly pruned weight matrices (docs/theory.md section 2).

Every entry of a rows x cols matrix is kept independently with probability p and has a generic
(e.g. Gaussian) value. Four estimators sit behind :func:`rank_distribution`:

``sampled`` (default)
    Structural rank (maximum bipartite matching of the nonzero pattern), which equals the rank
    with probability 1 for generic values, over random patterns built sparse, with the paper's
    adaptive sample size.
``svd``
    The paper's procedure: Gaussian matrix, Bernoulli(p) mask, numerical rank. Slow; for
    validation.
``analytic``
    The paper's fast over-estimate: Binomial(m, 1 - (1-p)^n) with m, n the short and long side,
    i.e. the number of non-empty lines of the short side.
``exact``
    Enumeration of every mask of a tiny matrix, weighted by p^|mask| (1-p)^(N-|mask|).
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Callable

import numpy as np

from planner.errors import DensityError, LimitError, RankModelError
from planner.limits import MAX_WIDTH

from planner.core import RANK_MODELS
DEFAULT_RANK_MODEL = "sampled"

#: The adaptive sample size of the paper: 50 samples, then until n >= 50 * (spread of ranks).
SAMPLES_PER_RANK = 50
#: Samples are drawn in batches of this size; batch b always uses the same random stream, so the
#: result does not depend on how batches are scheduled.
BATCH = 50
#: A safety cap on the adaptive loop.
MAX_SAMPLES = 200_000
#: ``exact`` enumerates 2^(rows*cols) masks; above this many entries it refuses.
EXACT_MAX_ENTRIES = 20


@dataclass(frozen=True, eq=False)
class RankDistribution:
    """P(rank = k) for k = kmin .. kmin + len(probs) - 1 of a randomly pruned matrix."""

    rows: int
    cols: int
    density: float
    method: str
    kmin: int
    probs: np.ndarray
    samples: int | None = None
    log_probs: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        probs = np.asarray(self.probs, dtype=np.float64)
        probs.setflags(write=False)
        object.__setattr__(self, "probs", probs)
        with np.errstate(divide="ignore"):
            lp = np.log(probs)
        lp.setflags(write=False)
        object.__setattr__(self, "log_probs", lp)

    @property
    def kmax(self) -> int:
        return self.kmin + len(self.probs) - 1

    @property
    def support(self) -> np.ndarray:
        return np.arange(self.kmin, self.kmax + 1)

    @property
    def expected_rank(self) -> float:
        return float(np.dot(self.support, self.probs))

    def pmf(self, k: int) -> float:
        i = k - self.kmin
        return float(self.probs[i]) if 0 <= i < len(self.probs) else 0.0

    @classmethod
    def point_mass(cls, rows: int, cols: int, k: int, *, density: float = 1.0, method: str = "dense"):
        return cls(rows, cols, density, method, k, np.ones(1))

    def __repr__(self) -> str:
        return (
            f"RankDistribution({self.rows}x{self.cols}, p={self.density:g}, {self.method}, "
            f"E[k]={self.expected_rank:.3f}, support={self.kmin}..{self.kmax})"
        )


def _density_bits(p: float) -> int:
    """The exact bits of a float density, so seeds and cache keys never depend on formatting."""
    return struct.unpack("<Q", struct.pack("<d", p))[0]


def check_density(p: float, what: str = "density") -> float:
    try:
        p = float(p)
    except (TypeError, ValueError):
        raise DensityError(f"{what} must be a number in (0, 1], got {p!r}") from None
    if not (0.0 < p <= 1.0) or math.isnan(p):
        raise DensityError(f"{what} must be in (0, 1], got {p!r}")
    return p


def check_shape(rows: int, cols: int) -> None:
    for s in (rows, cols):
        if isinstance(s, bool) or not isinstance(s, (int, np.integer)) or s <= 0:
            raise RankModelError(f"matrix sides must be positive integers, got {rows!r} x {cols!r}")
        if s > MAX_WIDTH:
            raise LimitError(f"matrix sides above {MAX_WIDTH} are not supported, got {rows} x {cols}")


# ---------------------------------------------------------------------------------- samplers


def _bernoulli_positions(n_entries: int, p: float, rng: np.random.Generator) -> np.ndarray:
    """Sorted flat positions of an iid Bernoulli(p) mask over ``n_entries``, in O(p * n_entries):
    gaps between kept entries are Geometric(p)."""
    expected = n_entries * p
    chunk = int(expected + 6.0 * math.sqrt(expected) + 16)
    # For tiny p the draws saturate at 2^63 - 1 and their sum would overflow; a gap beyond
    # n_entries ends the pattern anyway, so clip it there (the same draws, the same masks).
    cap = n_entries + 1
    pos = np.cumsum(np.minimum(rng.geometric(p, size=chunk), cap)) - 1
    while pos[-1] < n_entries:
        more = pos[-1] + np.cumsum(np.minimum(rng.geometric(p, size=chunk), cap))
        pos = np.concatenate([pos, more])
    return pos[: np.searchsorted(pos, n_entries)]


#: Dense patterns are drawn in two rounds: first a thinned pattern whose short-side lines have
#: this many entries on average; if it already has full structural rank, so has every superset.
THIN_DEGREE = 16.0


def _block_ranks(short: int, long: int, count: int, pos: np.ndarray) -> np.ndarray:
    """Structural ranks of ``count`` patterns given as sorted positions over count*short*long.

    The patterns are the diagonal blocks of one sparse matrix; a maximum matching of a disjoint
    union is a maximum matching of every block, so the matched rows of each block give its rank.
    """
    from scipy.sparse import csr_matrix
    from scipy.sparse.csgraph import maximum_bipartite_matching

    if len(pos) == 0:
        return np.zeros(count, dtype=np.int64)
    entries = short * long
    block, local = np.divmod(pos, entries)
    row, col = np.divmod(local, long)
    row += block * short
    col += block * long
    indptr = np.searchsorted(row, np.arange(count * short + 1)).astype(np.int32)
    pattern = csr_matrix(
        (np.ones(len(pos), dtype=np.int8), col.astype(np.int32), indptr), shape=(count * short, count * long)
    )
    matched_rows = maximum_bipartite_matching(pattern, perm_type="column") >= 0
    return np.count_nonzero(matched_rows.reshape(count, short), axis=1)


def _structural_rank_batch(short: int, long: int, p: float, rng: np.random.Generator, count: int) -> list[int]:
    """Structural ranks of ``count`` independent Bernoulli(p) patterns of a short x long matrix.

    Several patterns share one matching call (the per-call overhead dominated small layers).
    Dense patterns are drawn as the union of a thinned Bernoulli(t) pattern and an independent
    Bernoulli(q) one with 1 - (1-t)(1-q) = p, which is exactly Bernoulli(p); the second part is
    drawn only for the patterns whose thinned part is not already of full rank. At p = 0.1 on
    4096 x 4096 that replaces 1.6M entries per sample by about 66k.
    """
    entries = short * long
    thin = min(p, THIN_DEGREE / long)
    pos = _bernoulli_positions(count * entries, thin, rng)
    ranks = _block_ranks(short, long, count, pos)
    if thin < p:
        q = (p - thin) / (1.0 - thin)
        starts = np.searchsorted(pos, np.arange(count + 1) * entries)
        for b in np.nonzero(ranks < short)[0]:
            mine = pos[starts[b] : starts[b + 1]] - b * entries
            union = np.union1d(mine, _bernoulli_positions(entries, q, rng))
            ranks[b] = _block_ranks(short, long, 1, union)[0]
    return ranks.tolist()


def _numerical_rank_sample(short: int, long: int, p: float, rng: np.random.Generator) -> int:
    values = rng.standard_normal((short, long))
    values *= rng.random((short, long)) < p
    return int(np.linalg.matrix_rank(values))


def _batch_rng(seed: int, method: str, short: int, long: int, p: float, batch: int):
    tag = RANK_MODELS.index(method)
    # the whole seed goes into the entropy (SeedSequence takes integers of any size)
    return np.random.default_rng([int(seed), tag, short, long, _density_bits(p), batch])


def _adaptive_ranks(
    method: str,
    short: int,
    long: int,
    p: float,
    seed: int,
    progress: Callable[[int, int], None] | None = None,
) -> np.ndarray:
    ranks: list[int] = []
    batch = 0
    target = SAMPLES_PER_RANK
    while len(ranks) < target and len(ranks) < MAX_SAMPLES:
        rng = _batch_rng(seed, method, short, long, p, batch)
        if method == "sampled":
            # several patterns per matching call pay off for small layers; for large ones the
            # union's longer augmenting phases cost more than the call overhead saved
            per_call = max(1, min(BATCH, 3000 // short))
            for start in range(0, BATCH, per_call):
                ranks.extend(_structural_rank_batch(short, long, p, rng, min(per_call, BATCH - start)))
        else:
            ranks.extend(_numerical_rank_sample(short, long, p, rng) for _ in range(BATCH))
        batch += 1
        spread = max(ranks) - min(ranks) + 1
        target = max(target, SAMPLES_PER_RANK * spread)
        if progress is not None:
            progress(len(ranks), min(target, MAX_SAMPLES))
    return np.asarray(ranks, dtype=np.int64)


# ---------------------------------------------------------------------------------- analytic


def _analytic(rows: int, cols: int, p: float) -> RankDistribution:
    from scipy.special import gammaln

    m, n = min(rows, cols), max(rows, cols)
    # q = 1 - (1-p)^n, the chance that a line of the short side is non-empty, without
    # cancellation for tiny p
    log_1mq = n * math.log1p(-p)
    q = -math.expm1(log_1mq)
    k = np.arange(m + 1, dtype=np.float64)
    log_pmf = gammaln(m + 1.0) - gammaln(k + 1.0) - gammaln(m - k + 1.0)
    log_pmf += k * math.log(q) + (m - k) * log_1mq
    probs = np.exp(log_pmf - log_pmf.max())
    nz = np.nonzero(probs > 0)[0]
    lo, hi = int(nz[0]), int(nz[-1])
    probs = probs[lo : hi + 1]
    return RankDistribution(rows, cols, p, "analytic", lo, probs / probs.sum())


# ---------------------------------------------------------------------------------- exact


@lru_cache(maxsize=64)
def _exact_rank_table(short: int, long: int) -> np.ndarray:
    """table[e, k] = number of masks with e kept entries whose structural rank is k.

    Structural rank by the deficiency form of Hall's theorem: rank = short - max over row
    subsets S of (|S| - |N(S)|), with N(S) the columns S touches.
    """
    n_entries = short * long
    masks = np.arange(1 << n_entries, dtype=np.uint32)
    line = np.uint32((1 << long) - 1)
    row_bits = [(masks >> np.uint32(i * long)) & line for i in range(short)]
    deficiency = np.zeros(len(masks), dtype=np.int64)
    for subset in range(1, 1 << short):
        members = [i for i in range(short) if subset >> i & 1]
        neighbours = np.zeros(len(masks), dtype=np.uint32)
        for i in members:
            neighbours |= row_bits[i]
        np.maximum(deficiency, len(members) - np.bitwise_count(neighbours).astype(np.int64), out=deficiency)
    rank = short - deficiency
    edges = np.bitwise_count(masks).astype(np.int64)
    table = np.zeros((n_entries + 1, short + 1), dtype=np.int64)
    np.add.at(table, (edges, rank), 1)
    return table


def _exact(rows: int, cols: int, p: float) -> RankDistribution:
    if rows * cols > EXACT_MAX_ENTRIES:
        raise RankModelError(
            f"the exact rank model enumerates 2^(rows*cols) masks and is limited to "
            f"{EXACT_MAX_ENTRIES} entries; {rows}x{cols} has {rows * cols}: use 'sampled' instead"
        )
    short, long = min(rows, cols), max(rows, cols)
    table = _exact_rank_table(short, long)
    n_entries = short * long
    e = np.arange(n_entries + 1)
    weight = p**e * (1.0 - p) ** (n_entries - e)
    probs = weight @ table
    nz = np.nonzero(probs > 0)[0]
    lo, hi = int(nz[0]), int(nz[-1])
    probs = probs[lo : hi + 1]
    return RankDistribution(rows, cols, p, "exact", lo, probs / probs.sum())


# ---------------------------------------------------------------------------------- front door


class RankCache:
    """Memory cache in front of an optional :class:`~planner.cache.DiskCache`.

    Only the sampled estimators (``sampled``, ``svd``) go to disk; the others are cheap.
    """

    def __init__(self, directory=None, *, disk: bool = True):
        from planner.core.cache import DiskCache, default_cache_dir

        self.memory: dict[tuple, RankDistribution] = {}
        if disk:
            directory = default_cache_dir() if directory is None else directory
        self.disk = DiskCache(directory) if disk and directory is not None else None

    @staticmethod
    def key(short: int, long: int, p: float, method: str, seed: int | None) -> str:
        return f"{method}|{short}x{long}|p={float(p).hex()}|seed={seed}"


_default_cache: RankCache | None = None


def default_cache() -> RankCache:
    global _default_cache
    if _default_cache is None:
        _default_cache = RankCache()
    return _default_cache


def rank_distribution(
    rows: int,
    cols: int,
    density: float,
    method: str = DEFAULT_RANK_MODEL,
    *,
    seed: int = 0,
    cache: RankCache | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> RankDistribution:
    """P(k | rows, cols, density) under the named rank model.

    Deterministic in (rows, cols, density, method, seed). The rank of a matrix equals the rank
    of its transpose, so (rows, cols) and (cols, rows) share one estimate. ``progress`` is
    called as ``progress(samples_done, samples_planned)`` by the sampled models.
    """
    check_shape(rows, cols)
    p = check_density(density)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise RankModelError(f"seed must be a non-negative integer, got {seed!r}")
    if method not in RANK_MODELS:
        raise RankModelError(f"unknown rank model {method!r}; choose one of {', '.join(RANK_MODELS)}")
    short, long = min(rows, cols), max(rows, cols)
    if p == 1.0:  # a dense generic matrix has full rank with probability 1
        return RankDistribution(rows, cols, p, method, short, np.ones(1), samples=0)
    if method == "exact":  # checked before the cache so the refusal is the same every time
        return _exact(rows, cols, p)
    cache = default_cache() if cache is None else cache
    seeded = method in ("sampled", "svd")
    key = RankCache.key(short, long, p, method, int(seed) if seeded else None)
    hit = _cached(cache, key, short, long, p, method) if seeded else cache.memory.get(key)
    if hit is None:
        if method == "analytic":
            hit = cache.memory[key] = _analytic(short, long, p)
        else:
            kmin, counts = _sample_counts(method, short, long, p, int(seed), progress)
            hit = _remember(cache, key, short, long, p, method, kmin, counts)
    if (hit.rows, hit.cols) != (rows, cols):
        hit = RankDistribution(rows, cols, p, method, hit.kmin, hit.probs, samples=hit.samples)
    return hit


def _sample_counts(method: str, short: int, long: int, p: float, seed: int, progress=None) -> tuple[int, list[int]]:
    """The adaptive sample of one distribution as (kmin, counts); also the workers' entry point."""
    ranks = _adaptive_ranks(method, short, long, p, seed, progress)
    kmin = int(ranks.min())
    return kmin, np.bincount(ranks - kmin).tolist()


def _from_counts(short, long, p, method, kmin: int, counts) -> RankDistribution:
    counts = np.asarray(counts, dtype=np.int64)
    return RankDistribution(short, long, p, method, kmin, counts / counts.sum(), samples=int(counts.sum()))


def _remember(cache: RankCache, key, short, long, p, method, kmin: int, counts: list[int]) -> RankDistribution:
    """Keep a freshly sampled distribution in memory and on disk."""
    dist = cache.memory[key] = _from_counts(short, long, p, method, kmin, counts)
    if cache.disk is not None:
        cache.disk.put(key, {"kmin": kmin, "counts": counts})
    return dist


def _cached(cache: RankCache, key, short, long, p, method) -> RankDistribution | None:
    """A sampled distribution from memory, or from a disk entry that checks out (then kept in
    memory too); None when it has to be computed."""
    hit = cache.memory.get(key)
    if hit is not None or cache.disk is None:
        return hit
    payload = cache.disk.get(key)
    if payload is None:
        return None
    try:
        counts = np.asarray(payload["counts"], dtype=np.int64)
        if counts.ndim != 1 or len(counts) == 0 or (counts < 0).any() or counts.sum() <= 0:
            raise ValueError("bad counts")
        kmin = int(payload["kmin"])
        if kmin < 0 or kmin + len(counts) - 1 > short:
            raise ValueError("ranks outside 0..min(rows, cols)")
    except (KeyError, TypeError, ValueError):
        return None
    hit = cache.memory[key] = _from_counts(short, long, p, method, kmin, counts)
    return hit


def prefetch(
    shapes_and_densities,
    method: str = DEFAULT_RANK_MODEL,
    *,
    seed: int = 0,
    cache: RankCache | None = None,
    workers: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> None:
    """Compute the sampled distributions of many ``(rows, cols, density)`` into the cache, in
    ``workers`` processes (default: every core). Each distribution depends only on its own key
    and seed, so the results are the same as computing them one by one."""
    import os

    if method not in ("sampled", "svd"):
        return
    cache = default_cache() if cache is None else cache
    missing, seen = [], set()
    for rows, cols, p in shapes_and_densities:
        p = check_density(p)
        short, long = min(rows, cols), max(rows, cols)
        key = RankCache.key(short, long, p, method, int(seed))
        if p == 1.0 or key in seen:
            continue
        seen.add(key)
        if _cached(cache, key, short, long, p, method) is None:  # a disk hit is loaded once, here
            missing.append((key, short, long, p))
    if workers is None:
        workers = os.cpu_count() or 1
    if len(missing) < 4 or workers <= 1:
        return  # rank_distribution computes them on demand
    import multiprocessing

    done = 0
    # workers ignore Ctrl-C; the parent stops them (terminate) and re-raises, so an interrupt
    # ends the whole job at once instead of after the queue drains
    pool = multiprocessing.get_context("fork" if os.name == "posix" else "spawn").Pool(
        min(workers, len(missing)), initializer=_ignore_sigint)
    try:
        pending = [pool.apply_async(_sample_counts, (method, short, long, p, int(seed)))
                   for _, short, long, p in missing]
        for (key, short, long, p), result in zip(missing, pending):
            _remember(cache, key, short, long, p, method, *result.get())
            done += 1
            if progress is not None:
                progress(done, len(missing))
    except BaseException:
        pool.terminate()
        raise
    else:
        pool.close()
    finally:
        pool.join()


def _ignore_sigint() -> None:
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
