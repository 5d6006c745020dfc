"""The count: the result type, seeding by chords and random points, and :func:`count_regions`."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from planner.experiments.regions import (
    _ENGINE,
    CHORD_PATIENCE,
    DEFAULT_EPS,
    METHODS,
    SOLVERS,
    RegionsError,
)
from planner.experiments.regions.milp import _Milp
from planner.experiments.regions.net import (
    ReluNet,
    _checked_net,
    _hidden_linear_layers,
    _SubNet,
    _subspace,
    _tighten,
    check_points,
)
from planner.experiments.regions.walk import _point_margins, region_margin, walk_segment


# ------------------------------------------------------------------------------------- results


@dataclass
class RegionCount:
    """The result of :func:`count_regions`.

    ``regions`` distinct activation patterns whose region meets the hull in full dimension;
    ``complete`` is False when a time limit stopped the enumeration (``regions`` is then a lower
    bound). ``patterns`` is a (regions, units) boolean array, columns in layer order
    (``widths``). ``stats`` has method-specific counters (solves, rejected, sampled, pieces).
    """

    regions: int
    complete: bool
    dimension: int
    method: str
    patterns: np.ndarray
    widths: tuple[int, ...]
    layer_names: tuple[str, ...]
    solver: str | None = None
    eps: float | None = None
    seconds: float = 0.0
    stats: dict = field(default_factory=dict)

    def pattern_strings(self) -> list[str]:
        """Each pattern as '0'/'1' per unit, layers separated by '|'."""
        out = []
        cuts = np.cumsum((0,) + self.widths)
        for row in self.patterns:
            out.append("|".join("".join("1" if v else "0" for v in row[a:b]) for a, b in zip(cuts, cuts[1:])))
        return out

    def to_dict(self, patterns: bool = False) -> dict:
        d = {
            "regions": int(self.regions),
            "complete": bool(self.complete),
            "dimension": int(self.dimension),
            "method": self.method,
            "solver": self.solver,
            "eps": self.eps,
            "widths": list(self.widths),
            "layers": list(self.layer_names),
            "seconds": round(self.seconds, 4),
            "stats": dict(self.stats),
        }
        if patterns:
            d["patterns"] = self.pattern_strings()
        return d


# ----------------------------------------------------------------------------------- the count


def _sample_simplex(rng, n: int, dim: int) -> np.ndarray:
    """``n`` uniform points of the standard simplex {alpha >= 0, sum alpha <= 1} (dim coords)."""
    e = rng.exponential(size=(n, dim + 1))
    return (e / e.sum(axis=1, keepdims=True))[:, :dim]


def _chord(rng, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """The two ends of a random chord of the simplex: the line through a uniform point in a
    uniform random direction."""
    while True:
        x = _sample_simplex(rng, 1, dim)[0]
        d = rng.standard_normal(dim)
        lo, hi = -np.inf, np.inf
        for k in range(dim):  # alpha_k = x_k + t d_k >= 0
            if d[k] > 0:
                lo = max(lo, -x[k] / d[k])
            elif d[k] < 0:
                hi = min(hi, -x[k] / d[k])
        sd, room = d.sum(), 1.0 - x.sum()  # sum alpha <= 1
        if sd > 0:
            hi = min(hi, room / sd)
        elif sd < 0:
            lo = max(lo, room / sd)
        if np.isfinite(lo) and np.isfinite(hi) and hi > lo:
            return x + lo * d, x + hi * d


def _on_chord(sub: _SubNet, a: np.ndarray, b: np.ndarray) -> _SubNet:
    """``sub`` restricted to the segment alpha = a + t (b - a), t in [0, 1]."""
    w1 = sub.weights[0]
    return _SubNet((w1 @ (b - a)[:, None],) + sub.weights[1:], (w1 @ a + sub.biases[0],) + sub.biases[1:],
                   sub.lower, sub.upper)


def _seed_by_chords(sub, rng, eps, accept, consistent, max_chords: int, deadline) -> tuple[int, int]:
    """Walk random chords of the simplex exactly (the S = 1 walk) and accept every pattern whose
    piece midpoint certifies it (margin >= eps). A line meets regions in proportion to their
    extent, not their volume, so it finds thin regions that point samples miss. Stops after
    ``max_chords``, at ``deadline``, or when CHORD_PATIENCE chords in a row found nothing new.
    Returns (chords walked, new patterns)."""
    done = new = since = 0
    while done < max_chords and since < CHORD_PATIENCE:
        if deadline is not None and done % 32 == 0 and time.perf_counter() > deadline:
            break
        a, b = _chord(rng, sub.dim)
        done += 1
        since += 1
        try:
            pieces = walk_segment(_on_chord(sub, a, b))
        except RegionsError:  # numerical trouble on this chord: the MILP covers it anyway
            continue
        mids = np.array([a + 0.5 * (t0 + t1) * (b - a) for t0, t1, _ in pieces])
        pats, margins = _point_margins(sub, mids)
        for pattern, margin in zip(pats, margins):
            if margin >= eps and consistent(pattern) and accept(pattern):
                new += 1
                since = 0
    return done, new


def _sample_around(sub, center, n, rng, eps, milp, accept) -> int:
    """Sample ``n`` points of the simplex near ``center`` at several radii; accept every new
    pattern certified by its point. Returns how many were new."""
    dim = sub.dim
    new = 0
    per = max(1, n // 4)
    for radius in (0.3, 0.1, 0.03, 0.01):
        pts = center + radius * rng.standard_normal((per, dim))
        pts = pts[(pts >= 0).all(axis=1) & (pts.sum(axis=1) <= 1)]
        if not len(pts):
            continue
        pats, margins = _point_margins(sub, pts)
        good = margins >= eps
        for pattern in np.unique(pats[good], axis=0) if good.any() else ():
            if milp.consistent(pattern) and accept(pattern):
                new += 1
    return new


def count_regions(
    model,
    points,
    *,
    method: str = "auto",
    solver: str = "mip",
    time_limit: float | None = None,
    eps: float = DEFAULT_EPS,
    samples: int | None = None,
    chords: int | None = None,
    seed: int = 0,
) -> RegionCount:
    """Count the activation regions of ``model`` (a torch MLP of Linear + ReLU, or a
    :class:`ReluNet`) that meet the convex hull of ``points`` (shape (S+1, n0)) in full
    dimension S.

    ``method``: ``"walk"`` (S = 1, exact), ``"milp"`` (any S), ``"auto"`` (walk when S = 1).
    ``solver``: ``"mip"`` (SCIP, default), ``"cpsat"`` or ``"cbc"`` (OR-Tools pywraplp).
    ``time_limit`` (seconds) stops the MILP enumeration; the result then has ``complete=False``
    and ``regions`` is a lower bound. ``eps`` is the relative margin a region must admit.
    ``samples`` random points of the hull seed the enumeration (default 5000 * S; 0 disables
    this, the chords and the local sampling around each region the solver finds); ``chords``
    caps the random chords walked exactly to seed it (default 5000; seeding stops earlier when
    300 chords in a row find nothing new, or at half the time limit). Seeding changes the time, never the count: every seeded
    pattern is certified by an interior point, and the MILP must still prove that no other
    pattern exists.
    """
    start = time.perf_counter()
    if method not in METHODS:
        raise RegionsError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    if solver == "cpsat":
        raise RegionsError("solver cpsat is not offered for region counting: the MILP has continuous "
                           "variables, and CP-SAT (which must scale them to integers) reported "
                           "instances with regions as infeasible in our tests; use mip (SCIP) or cbc")
    if solver not in _ENGINE:
        raise RegionsError(f"unknown solver {solver!r}; choose one of {', '.join(SOLVERS)}")
    if time_limit is not None and not (time_limit > 0):
        raise RegionsError(f"time limit must be positive, got {time_limit}")
    if not (0 < eps < 1):
        raise RegionsError(f"eps must be in (0, 1), got {eps}")
    if isinstance(model, ReluNet):
        net = model
        pts = check_points(points, net.input_size)
    else:
        import torch.nn as nn

        if not isinstance(model, nn.Module):
            raise RegionsError(f"expected a torch nn.Module or a ReluNet, got {type(model).__name__}")
        raw = np.asarray(points)
        input_shape = tuple(raw.shape[1:]) if raw.ndim > 2 else None
        if input_shape is None and any(isinstance(m, nn.Conv2d) for m in model.modules()) and raw.ndim == 2:
            input_shape = (raw.shape[1],)  # a CNN that reshapes its flat input itself
        names, modules = _hidden_linear_layers(model, input_shape)
        n0 = modules[0].in_features if isinstance(modules[0], nn.Linear) else int(np.prod(input_shape))
        pts = check_points(points, n0)
        net = _checked_net(model, names, modules, pts, seed,
                           input_shape if isinstance(modules[0], nn.Conv2d) or raw.ndim > 2 else None)
    sub = _subspace(net, pts)
    dim = sub.dim
    if method == "auto":
        method = "walk" if dim == 1 else "milp"
    if method == "walk":
        if dim != 1:
            raise RegionsError(f"--method walk needs a segment (2 points), got {dim + 1} points (S = {dim}); "
                               "use --method milp")
        pieces = walk_segment(sub)
        pats = np.array([p for _, _, p in pieces], dtype=bool).reshape(len(pieces), net.units)
        distinct = np.unique(pats, axis=0).shape[0]
        return RegionCount(distinct, True, dim, "walk", pats, net.widths, net.names, None, None,
                           time.perf_counter() - start,
                           {"pieces": len(pieces)})
    return _count_milp(net, sub, solver, time_limit, eps, samples, chords, seed, start)


def _count_milp(net, sub, solver, time_limit, eps, samples, chords, seed, start) -> RegionCount:
    dim = sub.dim
    deadline = None if time_limit is None else start + time_limit
    if len(sub.weights) > 1:
        sub = _tighten(sub)
    milp = _Milp(sub, _ENGINE[solver], eps)
    found: dict[bytes, np.ndarray] = {}
    order: list[bytes] = []
    stats = {"solves": 0, "sampled": 0, "milp_found": 0, "rejected": 0, "free_units": len(milp.z_vars),
             "fixed_units": net.units - len(milp.z_vars)}

    def accept(pattern):
        key = np.packbits(pattern).tobytes()
        if key in found:
            return False
        found[key] = pattern
        order.append(key)
        milp.cut(pattern)
        return True

    n_samples = 5000 * dim if samples is None else int(samples)
    local = 0 if samples == 0 else 64 * dim
    max_chords = (0 if samples == 0 else 5000) if chords is None else int(chords)
    rng = np.random.default_rng(seed)
    if n_samples > 0:
        alphas = _sample_simplex(rng, n_samples, dim)
        pats, margins = _point_margins(sub, alphas)
        good = margins >= eps
        if good.any():
            uniq = np.unique(pats[good], axis=0)
            for pattern in uniq:
                if milp.consistent(pattern) and accept(pattern):
                    stats["sampled"] += 1
    if max_chords > 0:
        budget = None if deadline is None else start + 0.5 * time_limit
        walked, new = _seed_by_chords(sub, rng, eps, accept, milp.consistent, max_chords, budget)
        stats["chords"], stats["chord_found"] = walked, new
    complete = True
    while True:
        remaining = None
        if deadline is not None:
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                complete = False
                break
        status, pattern, alpha = milp.solve(remaining)
        stats["solves"] += 1
        if status == "infeasible":
            break
        if status == "timeout":
            complete = False
            break
        key = np.packbits(pattern).tobytes()
        if key in found:  # cannot happen with exact cuts; guard against solver tolerance
            raise RegionsError("the MILP returned a pattern twice; numerical trouble")
        f, center = region_margin(sub, pattern)
        if f >= 0.5 * eps:
            accept(pattern)
            stats["milp_found"] += 1
            if local > 0 and center is not None:
                # regions the samples missed are small and tend to sit together: look around
                stats["sampled"] += _sample_around(sub, center, local, rng, eps, milp, accept)
        else:
            milp.cut(pattern)
            stats["rejected"] += 1
            # the point the solver found may still lie inside a (new) full-dimensional region
            if alpha is not None:
                p2, m2 = _point_margins(sub, np.clip(alpha, 0, 1)[None, :])
                if m2[0] >= eps and np.all(np.clip(alpha, 0, 1).sum() <= 1 + 1e-12) and accept(p2[0]):
                    stats["milp_found"] += 1
    pats = np.array([found[k] for k in order], dtype=bool).reshape(len(order), net.units)
    return RegionCount(len(order), complete, dim, "milp", pats, net.widths, net.names, solver, eps,
                       time.perf_counter() - start, stats)
