"""Pattern checks (is an activation pattern a full-dimensional region of the hull?) and the
exact walk along a segment (two points)."""

from __future__ import annotations

import math

import numpy as np

from planner.experiments.regions import WALK_MIN_LENGTH, RegionsError
from planner.experiments.regions.net import _SubNet


# ------------------------------------------------------------------------------- pattern checks


def _affine_under_pattern(sub: _SubNet, pattern: np.ndarray):
    """Per layer (A, c): the pre-activations as affine functions of alpha on the region of
    ``pattern`` (valid wherever that pattern holds)."""
    out = []
    a, c = sub.weights[0], sub.biases[0]
    start = 0
    for layer, (w, b) in enumerate(zip(sub.weights, sub.biases)):
        if layer > 0:
            a, c = w @ a_h, w @ c_h + b
        out.append((a, c))
        n = w.shape[0]
        z = pattern[start:start + n].astype(np.float64)
        start += n
        a_h, c_h = a * z[:, None], c * z
    return out


def region_margin(sub: _SubNet, pattern: np.ndarray) -> tuple[float, np.ndarray | None]:
    """Largest relative margin f of ``pattern`` over the simplex (linprog, HiGHS), and a point
    alpha attaining it. f > 0 iff the region is full-dimensional in the hull (units identically
    zero on the region are inactive by convention and carry no margin; a pattern calling such a
    unit active gets -inf)."""
    from scipy.optimize import linprog

    pattern = np.asarray(pattern, dtype=bool)
    scales = np.concatenate(sub.scales())
    rows, rhs = [], []
    idx = 0
    for a, c in _affine_under_pattern(sub, pattern):
        for i in range(a.shape[0]):
            s = scales[idx]
            on = pattern[idx]
            idx += 1
            tiny = 1e-13 * max(s, 1e-300)
            if s == 0.0 or (np.abs(a[i]).max(initial=0.0) <= tiny and abs(c[i]) <= tiny):
                if on:
                    return -math.inf, None
                continue  # identically zero: inactive, no margin
            sigma = 1.0 if on else -1.0
            # f <= sigma (a alpha + c) / s   ->   -sigma a / s . alpha + f <= sigma c / s
            rows.append(np.concatenate([-sigma * a[i] / s, [1.0]]))
            rhs.append(sigma * c[i] / s)
    dim = sub.dim
    simplex = np.concatenate([np.ones(dim), [0.0]])
    a_ub = np.array(rows + [simplex]) if rows else simplex[None, :]
    b_ub = np.array(rhs + [1.0])
    cost = np.zeros(dim + 1)
    cost[-1] = -1.0
    bounds = [(0.0, 1.0)] * dim + [(None, 1.0)]
    res = linprog(cost, A_ub=a_ub, b_ub=b_ub, bounds=bounds, method="highs")
    if res.status != 0:
        return -math.inf, None
    return float(-res.fun), np.asarray(res.x[:dim])


def _point_margins(sub: _SubNet, alphas: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(patterns, relative margins) at points ``alphas`` (N, S); units identically zero over the
    hull are skipped (they are inactive everywhere)."""
    gs = sub.preactivations(alphas)
    g = np.concatenate(gs, axis=1)
    scales = np.concatenate(sub.scales())
    live = scales > 0
    pats = g > 0
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = np.abs(g[:, live]) / scales[live]
    margins = rel.min(axis=1) if live.any() else np.ones(len(alphas))
    return pats, margins


# ----------------------------------------------------------------------------------------- walk


def walk_segment(sub: _SubNet) -> list[tuple[float, float, np.ndarray]]:
    """Exact walk along a segment (S = 1): [(t0, t1, pattern)] for the pieces of the segment
    with constant activation pattern, in order, consecutive patterns distinct."""
    if sub.dim != 1:
        raise RegionsError(f"the walk needs a segment (2 points, S = 1), got S = {sub.dim}")
    scales = sub.scales()
    pieces: list[tuple[float, float, np.ndarray]] = []
    t = 0.0
    total = sum(sub.widths)
    for _ in range(10 * total + 1_000_000):
        if t >= 1.0:
            break
        z_layers, t_next = [], 1.0
        slope_h = value_h = None
        for layer, (w, b) in enumerate(zip(sub.weights, sub.biases)):
            if layer == 0:
                a, c = w[:, 0], b
            else:
                a, c = w @ slope_h, w @ value_h + b
            g = a * t + c  # value at t, slope a (right derivative within the region to come)
            s = scales[layer]
            tol = 1e-11 * s
            z = np.where(np.abs(g) > tol, g > 0, a > 1e-14 * s)
            z = np.where(s > 0, z, False)
            # next sign change of this layer's units inside the region on the right of t
            crossing = (z & (a < 0)) | (~z & (a > 0) & (s > 0))
            with np.errstate(divide="ignore", invalid="ignore"):
                roots = np.where(crossing, -c / np.where(a == 0, 1.0, a), np.inf)
            roots = roots[roots > t]
            if roots.size:
                t_next = min(t_next, float(roots.min()))
            z_layers.append(z)
            slope_h, value_h = a * z, c * z
        pattern = np.concatenate(z_layers)
        if t_next <= t:
            t_next = np.nextafter(t, 2.0)
        if t_next - t > WALK_MIN_LENGTH:
            if pieces and np.array_equal(pieces[-1][2], pattern) and pieces[-1][1] >= t - WALK_MIN_LENGTH:
                pieces[-1] = (pieces[-1][0], t_next, pattern)
            else:
                pieces.append((t, t_next, pattern))
        t = t_next
    else:  # pragma: no cover - the walk always ends: each step moves past one root
        raise RegionsError("the segment walk did not terminate")
    # self-check: the pattern at the middle of each piece, by a plain forward pass
    mids = np.array([[0.5 * (a + b)] for a, b, _ in pieces])
    g = np.concatenate(sub.preactivations(mids), axis=1)
    sc = np.concatenate(scales)
    for (a, b, pat), row in zip(pieces, g):
        firm = np.abs(row) > 1e-9 * np.maximum(sc, 1e-300)
        if not np.array_equal((row > 0)[firm], pat[firm]):
            raise RegionsError(f"numerical trouble in the segment walk on [{a:.6g}, {b:.6g}]")
    return pieces
