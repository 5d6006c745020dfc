"""Count the linear regions of a ReLU MLP on an input subspace (SPEC section 7).

The domain is the convex hull of S+1 points p_0..p_S,

    h0 = p0 + sum_i alpha_i (p_i - p0),   alpha_i >= 0,   sum_i alpha_i <= 1,

and a *region* is an activation pattern of the hidden ReLU layers (every Linear layer of the
model's trailing Linear chain but the last) whose set of inputs meets the hull in a set of full
dimension S. A unit is active when its pre-activation g is > 0; a unit whose pre-activation is
identically zero on a region counts as inactive (its output is 0 either way).

Everything is computed in alpha space: the first layer composed with the hull's affine map is
an S-column layer, so the input size (784 for MNIST) costs nothing beyond one matrix product.

Two methods:

``walk`` (S = 1 only; exact): walk the segment from alpha = 0 to 1. Within a region every
    pre-activation is affine in alpha, so the next breakpoint is the nearest root of the
    current affine functions; step past it, read the new pattern off the signs and slopes.
    Regions are convex, so a segment meets each region in one piece: the number of pieces of
    positive length is the number of distinct patterns.

``milp`` (any S): the mixed-integer program of SPEC section 7. Variables alpha (continuous),
    per unstable hidden unit a binary z and h >= 0 with the exact big-M ReLU links
    (z = 1 -> h = g; z = 0 -> h = 0, g <= 0), and a margin f with z = 1 -> f <= g / s and
    z = 0 -> f <= -g / s, where s is the unit's largest |g| over the hull (so f is a
    *relative* margin in [0, 1]); f >= eps (default 1e-6) is required. Distinct patterns are
    enumerated by repeated solves, each adding a no-good cut on the binaries, until the model is
    infeasible (then the count is complete) or the time limit stops it (then it is a lower
    bound). Big-M values: exact bounds of every first-layer pre-activation (an affine function
    over a simplex attains its extremes at the vertices, i.e. at the points), then interval
    arithmetic layer by layer, tightened for layers 2.. by LPs over the triangle relaxation of
    the layers before. Units whose bounds have one sign are fixed (no binary). A bias-free unit
    of layer 2.. whose inputs can all be off gets a binary "dead" (all inputs off): it is then
    identically zero, inactive, and exempt from the margin.

    Every pattern a solve returns is verified before it is counted: for that fixed pattern all
    pre-activations are affine in alpha, and ``scipy.optimize.linprog`` (HiGHS) maximizes the
    same margin f over the simplex; the pattern counts only if f >= eps / 2 (solver tolerances
    can return a pattern whose region is thinner than eps, or lower-dimensional). Rejected
    patterns stay cut off and are reported as ``rejected``.

    Seeding (changes the time, never the count): before the first solve, ``samples`` uniform
    random points of the simplex are evaluated, and random chords of the simplex are walked
    exactly (the S = 1 walk; a line meets thin regions that points miss). Every pattern seen at
    a point whose own margin is >= eps is certified by that point (an interior witness, as good
    as the LP's) and cut off; after each region the solver finds, points around its LP centre
    are tried too. The solver then only has to find what seeding missed and prove that nothing
    else exists. On a 784-20-20-10 MLP with S = 4 this cuts the median time from ~22 s to ~8 s.

Backends (``solver``): ``"mip"`` is SCIP through OR-Tools' ``pywraplp`` (the default: the model
has continuous variables, which SCIP handles natively; its feasibility tolerance is tightened to
1e-9 so that eps = 1e-6 is well above it), ``"cbc"`` is COIN-OR CBC through the same wrapper
(2-3x slower here). CP-SAT is not offered: it has no continuous variables, and OR-Tools' own
scaling of this model to integers (pywraplp's CP_SAT backend) declared instances with dozens of
regions infeasible in our tests - a silent undercount, the worst failure a counter can have.

Regions thinner than the margin eps (relative to each unit's range over the hull) are not
counted by the MILP; the walk counts every piece longer than 1e-12 of the segment.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from .errors import ModelError, PlannerError

METHODS = ("auto", "walk", "milp")
SOLVERS = ("mip", "cbc")
_ENGINE = {"mip": "SCIP", "scip": "SCIP", "cbc": "CBC"}

DEFAULT_EPS = 1e-6
#: pieces of a segment shorter than this (as a fraction of the segment) are breakpoints
WALK_MIN_LENGTH = 1e-12
#: chord seeding stops after this many chords in a row found no new region
CHORD_PATIENCE = 300


class RegionsError(PlannerError, ValueError):
    """Bad input to region counting: points, model, method or solver."""


# ------------------------------------------------------------------------------------ networks


def _preactivations(weights, biases, x) -> list[np.ndarray]:
    """Pre-activations of every ReLU layer for a batch ``x`` (float64)."""
    out, h = [], np.asarray(x, dtype=np.float64)
    for w, b in zip(weights, biases):
        g = h @ w.T + b
        out.append(g)
        h = np.maximum(g, 0.0)
    return out


@dataclass(frozen=True)
class ReluNet:
    """The hidden ReLU layers of an MLP, in float64: g_l = W_l h_{l-1} + b_l, h_l = relu(g_l)."""

    weights: tuple[np.ndarray, ...]
    biases: tuple[np.ndarray, ...]
    names: tuple[str, ...]

    @property
    def input_size(self) -> int:
        return int(self.weights[0].shape[1])

    @property
    def widths(self) -> tuple[int, ...]:
        return tuple(int(w.shape[0]) for w in self.weights)

    @property
    def units(self) -> int:
        return int(sum(self.widths))

    @classmethod
    def from_arrays(cls, layers: Sequence[tuple], names: Sequence[str] | None = None) -> "ReluNet":
        """From ``[(W1, b1), (W2, b2), ...]``: the hidden layers only (no output layer)."""
        if not layers:
            raise RegionsError("the network has no hidden ReLU layer")
        ws, bs = [], []
        for i, pair in enumerate(layers):
            if len(pair) != 2:
                raise RegionsError(f"hidden layer {i + 1}: give (weight, bias)")
            w = np.array(pair[0], dtype=np.float64)
            b = np.zeros(w.shape[0]) if pair[1] is None else np.array(pair[1], dtype=np.float64).reshape(-1)
            if w.ndim != 2 or b.shape != (w.shape[0],):
                raise RegionsError(f"hidden layer {i + 1}: weight must be 2-D and bias match its rows")
            if ws and w.shape[1] != ws[-1].shape[0]:
                raise RegionsError(f"hidden layer {i + 1} takes {w.shape[1]} inputs, "
                                   f"but layer {i} has {ws[-1].shape[0]} units")
            if not (np.isfinite(w).all() and np.isfinite(b).all()):
                raise RegionsError(f"hidden layer {i + 1} has non-finite weights or biases")
            ws.append(w)
            bs.append(b)
        names = tuple(names) if names is not None else tuple(f"layer{i + 1}" for i in range(len(ws)))
        return cls(tuple(ws), tuple(bs), names)

    def preactivations(self, x: np.ndarray) -> list[np.ndarray]:
        """[g_1, ..., g_L] for a batch ``x`` of shape (N, n0)."""
        return _preactivations(self.weights, self.biases, x)

    def patterns(self, x: np.ndarray) -> np.ndarray:
        """Activation patterns (N, units) as booleans: unit active iff its pre-activation > 0."""
        return np.concatenate([g > 0 for g in self.preactivations(x)], axis=1)


def _hidden_linear_layers(model):
    """(names, modules) of the hidden Linear layers of a torch MLP, checked to be a plain chain
    of Linear layers with ReLUs between them."""
    import torch.nn as nn

    from .torch_model import model_layers

    if not isinstance(model, nn.Module):
        raise RegionsError(f"expected a torch nn.Module or a ReluNet, got {type(model).__name__}")
    linears = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    convs = [n for n, m in model.named_modules() if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d))]
    if convs:
        raise RegionsError(f"counting regions needs an MLP of Linear and ReLU layers; "
                           f"the model has a convolution ({convs[0]})")
    if len(linears) < 2:
        raise RegionsError(f"the model has no hidden ReLU layer: it has {len(linears)} Linear layer(s); "
                           "counting regions needs an MLP of at least two Linear layers with a ReLU between")
    try:
        found = model_layers(model)
    except ModelError as exc:
        raise RegionsError(f"cannot read the model's layers: {exc}") from None
    hidden = [w.name for w in found.layers if w.in_bound]
    output = [w.name for w in found.layers if not w.in_bound]
    chain = hidden + output[-1:]
    if len(found.layers) != len(chain):
        extra = [w.name for w in found.layers if w.name not in chain]
        raise RegionsError(f"counting regions needs an MLP of Linear and ReLU layers; layer {extra[0]} is "
                           "not part of the final Linear chain")
    return chain, [model.get_submodule(n) for n in chain]


def relu_net(model, check_points: np.ndarray | None = None, *, seed: int = 0) -> ReluNet:
    """The hidden ReLU layers of a torch MLP as a :class:`ReluNet`.

    Uses :func:`planner.torch_model.model_layers` to find the trailing Linear chain, then runs the
    model on a batch (``check_points`` plus random inputs) with hooks to check that it really is
    Linear -> ReLU -> Linear ...: the model's input reaches the first Linear unchanged (up to
    flattening), and every hidden Linear's output reaches the next one through a ReLU.
    """
    if isinstance(model, ReluNet):
        return model
    names, modules = _hidden_linear_layers(model)
    return _checked_net(model, names, modules, check_points, seed)


def _checked_net(model, names, modules, check_points, seed) -> ReluNet:
    import torch

    n0 = modules[0].in_features
    param = next(iter(modules[0].parameters()))
    rng = np.random.default_rng(seed)
    batches = [rng.standard_normal((16, n0)) * scale for scale in (1.0, 10.0, 100.0)]
    if check_points is not None:
        batches.insert(0, np.asarray(check_points, dtype=np.float64).reshape(-1, n0))
    x = torch.as_tensor(np.concatenate(batches), dtype=param.dtype, device=param.device)
    seen: dict[str, list] = {n: [] for n in names}
    hooks = []
    for name, module in zip(names, modules):
        def hook(mod, inputs, output, name=name):
            seen[name].append((inputs[0].detach().reshape(len(x), -1).double().cpu(),
                               output.detach().reshape(len(x), -1).double().cpu()))
        hooks.append(module.register_forward_hook(hook))
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(x)
    except Exception as exc:
        raise RegionsError(f"running the model on inputs of shape {tuple(x.shape)} failed: "
                           f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from None
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    for name in names:
        if len(seen[name]) != 1:
            raise RegionsError(f"layer {name} ran {len(seen[name])} times in one forward pass; "
                               "counting regions needs a plain MLP")
    xin = x.double().cpu()

    def close(a, b):
        if a.shape != b.shape:
            return False
        scale = max(1.0, float(a.abs().max()), float(b.abs().max()))
        return bool(((a - b).abs() <= 1e-4 * scale).all())

    if not close(seen[names[0]][0][0], xin):
        raise RegionsError(f"the model transforms its input before {names[0]}; counting regions needs a "
                           "plain MLP of Linear and ReLU layers")
    for a, b in zip(names, names[1:]):
        out_a, in_b = seen[a][0][1], seen[b][0][0]
        if not close(torch.relu(out_a), in_b):
            if close(out_a, in_b):
                raise RegionsError(f"the model has no hidden ReLU layer between layers {a!r} and {b!r}: "
                                   "counting regions needs Linear layers with ReLUs between them")
            raise RegionsError(f"the output of layer {a!r} does not reach layer {b!r} through a plain ReLU; "
                               "counting regions needs an MLP of Linear and ReLU layers")
    layers = []
    for m in modules[:-1]:
        w = m.weight.detach().double().cpu().numpy()
        b = None if m.bias is None else m.bias.detach().double().cpu().numpy()
        layers.append((w, b))
    return ReluNet.from_arrays(layers, names[:-1])


def activation_patterns(model, x) -> np.ndarray:
    """Activation patterns (N, hidden units) of a torch MLP or :class:`ReluNet` at inputs ``x``."""
    net = model if isinstance(model, ReluNet) else relu_net(model)
    x = _as_array(x, "x").reshape(len(x), -1)
    return net.patterns(x)


# ------------------------------------------------------------------------- the subspace network


def _as_array(points, what: str = "points") -> np.ndarray:
    if hasattr(points, "detach"):  # a torch tensor
        points = points.detach().cpu().numpy()
    try:
        arr = np.asarray(points)
    except Exception as exc:
        raise RegionsError(f"{what} is not an array: {exc}") from None
    if arr.dtype.kind not in "fiub":
        raise RegionsError(f"{what} must hold numbers, got dtype {arr.dtype}")
    return arr.astype(np.float64)


def check_points(points, input_size: int) -> np.ndarray:
    """The (S+1, n0) float64 points, or a one-line :class:`RegionsError` saying what is wrong."""
    arr = _as_array(points)
    if arr.ndim == 0:
        raise RegionsError("points must be an array of shape (S+1, n0), got a scalar")
    if arr.ndim == 1:
        raise RegionsError(f"points must be an array of shape (S+1, {input_size}) (one point per row), "
                           f"got shape {arr.shape}")
    arr = arr.reshape(arr.shape[0], -1)
    if arr.shape[1] != input_size:
        raise RegionsError(f"points have width {arr.shape[1]} but the model takes {input_size} inputs")
    if arr.shape[0] < 2:
        raise RegionsError(f"need at least two points (S+1 >= 2) to span a subspace, got {arr.shape[0]}")
    if not np.isfinite(arr).all():
        raise RegionsError("points contain non-finite values (nan or inf)")
    s = arr.shape[0] - 1
    d = (arr[1:] - arr[0]).T
    sv = np.linalg.svd(d, compute_uv=False)
    scale = max(1.0, float(np.abs(arr).max()))
    rank = int((sv > 1e-10 * scale * max(d.shape)).sum())
    if rank < s:
        raise RegionsError(f"the {s + 1} points are affinely dependent (they span {rank} dimension(s), "
                           f"not {s}): give affinely independent points")
    return arr


@dataclass(frozen=True)
class _SubNet:
    """The hidden layers pulled back to alpha space: layer 1 is (A1, c1) with S columns."""

    weights: tuple[np.ndarray, ...]
    biases: tuple[np.ndarray, ...]
    lower: tuple[np.ndarray, ...]
    upper: tuple[np.ndarray, ...]

    @property
    def dim(self) -> int:
        return int(self.weights[0].shape[1])

    @property
    def widths(self) -> tuple[int, ...]:
        return tuple(int(w.shape[0]) for w in self.weights)

    def scales(self) -> list[np.ndarray]:
        return [np.maximum(np.abs(lo), np.abs(hi)) for lo, hi in zip(self.lower, self.upper)]

    def preactivations(self, alpha: np.ndarray) -> list[np.ndarray]:
        return _preactivations(self.weights, self.biases, alpha)


def _subspace(net: ReluNet, points: np.ndarray) -> _SubNet:
    p0 = points[0]
    d = (points[1:] - p0).T  # n0 x S
    w1, b1 = net.weights[0], net.biases[0]
    a1 = w1 @ d
    c1 = w1 @ p0 + b1
    weights = (a1,) + net.weights[1:]
    biases = (c1,) + net.biases[1:]
    # exact bounds of layer 1 over the simplex: its vertices are alpha = 0 and alpha = e_k
    vertex_values = np.concatenate([c1[:, None], c1[:, None] + a1], axis=1)
    lower, upper = [vertex_values.min(axis=1)], [vertex_values.max(axis=1)]
    for w, b in zip(net.weights[1:], net.biases[1:]):
        hl, hu = np.maximum(lower[-1], 0.0), np.maximum(upper[-1], 0.0)
        wp, wn = np.maximum(w, 0.0), np.minimum(w, 0.0)
        lower.append(wp @ hl + wn @ hu + b)
        upper.append(wp @ hu + wn @ hl + b)
    return _SubNet(weights, biases, tuple(lower), tuple(upper))


def _tighten(sub: _SubNet) -> _SubNet:
    """Bounds of layers 2.. by linear programming over the LP relaxation of the layers before
    (the 'triangle' relaxation of each unstable ReLU), intersected with the interval bounds.
    Tighter bounds give smaller big-M values and a stronger MILP relaxation."""
    from scipy.optimize import linprog

    dim = sub.dim
    lower, upper = [sub.lower[0]], [sub.upper[0]]
    # variables: alpha (dim), then h of every layer before the current one
    eq_rows, eq_rhs, ub_rows, ub_rhs = [], [], [[1.0] * dim], [1.0]
    var_bounds = [(0.0, 1.0)] * dim
    offsets = [0]  # first variable of each layer's inputs
    for layer in range(1, len(sub.weights)):
        w_prev, b_prev = sub.weights[layer - 1], sub.biases[layer - 1]
        lo, hi = lower[-1], upper[-1]
        start = len(var_bounds)
        n = w_prev.shape[0]
        for i in range(n):
            var_bounds.append((0.0, max(float(hi[i]), 0.0)))
        total = len(var_bounds)

        def pad(row):
            return list(row) + [0.0] * (total - len(row))

        eq_rows[:] = [pad(r) for r in eq_rows]
        ub_rows[:] = [pad(r) for r in ub_rows]
        src = offsets[-1]
        for i in range(n):
            g = np.zeros(total)
            g[src:src + w_prev.shape[1]] = w_prev[i]
            e = np.zeros(total)
            e[start + i] = 1.0
            if lo[i] >= 0:  # h = g
                eq_rows.append(list(e - g))
                eq_rhs.append(float(b_prev[i]))
            elif hi[i] <= 0:
                var_bounds[start + i] = (0.0, 0.0)
            else:  # h >= g ; h <= U (g - L) / (U - L)
                ub_rows.append(list(g - e))
                ub_rhs.append(-float(b_prev[i]))
                k = hi[i] / (hi[i] - lo[i])
                ub_rows.append(list(e - k * g))
                ub_rhs.append(float(k * (b_prev[i] - lo[i])))
        offsets.append(start)
        w, b = sub.weights[layer], sub.biases[layer]
        a_ub, b_ub = np.array(ub_rows), np.array(ub_rhs)
        a_eq = np.array(eq_rows) if eq_rows else None
        b_eq = np.array(eq_rhs) if eq_rows else None
        # interval bounds from the tightened bounds of the layer before, then the LP bounds
        wp, wn = np.maximum(w, 0.0), np.minimum(w, 0.0)
        hl, hu = np.maximum(lo, 0.0), np.maximum(hi, 0.0)
        new_lo = np.maximum(sub.lower[layer], wp @ hl + wn @ hu + b)
        new_hi = np.minimum(sub.upper[layer], wp @ hu + wn @ hl + b)
        for i in range(w.shape[0]):
            cost = np.zeros(total)
            cost[start:start + n] = w[i]
            if not cost.any():
                continue
            for sign in (1.0, -1.0):
                res = linprog(sign * cost, A_ub=a_ub, b_ub=b_ub, A_eq=a_eq, b_eq=b_eq, bounds=var_bounds,
                              method="highs")
                if res.status != 0:
                    continue
                value = sign * res.fun + b[i]
                # widen by a hair: the LP's own tolerance must not cut off real values
                slack = 1e-6 * max(1.0, abs(value))
                if sign > 0:
                    new_lo[i] = max(new_lo[i], value - slack)
                else:
                    new_hi[i] = min(new_hi[i], value + slack)
        new_lo = np.minimum(new_lo, new_hi)
        lower.append(new_lo)
        upper.append(new_hi)
    return _SubNet(sub.weights, sub.biases, tuple(lower), tuple(upper))


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


# ----------------------------------------------------------------------------------------- MILP


class _Milp:
    """The region MILP in a pywraplp solver, with no-good cuts added one pattern at a time."""

    def __init__(self, sub: _SubNet, engine: str, eps: float):
        from ortools.linear_solver import pywraplp

        solver = pywraplp.Solver.CreateSolver(engine)
        if solver is None:
            raise RegionsError(f"OR-Tools has no {engine} backend in this installation")
        self.solver, self.engine, self.eps = solver, engine, eps
        inf = solver.infinity()
        dim = sub.dim
        alpha = [solver.NumVar(0.0, 1.0, f"alpha{k}") for k in range(dim)]
        ct = solver.Constraint(-inf, 1.0)
        for v in alpha:
            ct.SetCoefficient(v, 1.0)
        f = solver.NumVar(eps, 1.0, "f")
        self.alpha, self.f = alpha, f
        self.fixed = []  # per unit: True/False (fixed activity) or the binary variable
        self.z_vars = []  # (unit index, var) of the free units
        scales = sub.scales()
        prev_vars, prev_z = alpha, []  # previous layer's outputs (None: identically 0) and activities
        unit = 0
        for layer, (w, b) in enumerate(zip(sub.weights, sub.biases)):
            lo, hi, sc = sub.lower[layer], sub.upper[layer], scales[layer]
            layer_vars, layer_z = [], []
            for i in range(w.shape[0]):
                terms = [(prev_vars[j], float(w[i, j])) for j in range(w.shape[1])
                         if prev_vars[j] is not None and w[i, j] != 0.0]
                const = float(b[i])
                s, li, ui = float(sc[i]), float(lo[i]), float(hi[i])
                if s == 0.0 or (not terms and const == 0.0):
                    # identically zero over the hull: inactive, no margin
                    self.fixed.append(False)
                    layer_vars.append(None)
                    layer_z.append(False)
                    unit += 1
                    continue
                dead = None
                if layer > 0 and const == 0.0:
                    dead = self._dead_indicator(w[i], prev_z, prev_vars)
                if li > 0.0:  # stably active
                    h = solver.NumVar(li, ui, f"h{unit}")
                    self._row([(h, 1.0)] + [(v, -a) for v, a in terms], const, const)
                    self._row([(f, 1.0)] + [(v, -a / s) for v, a in terms], -inf, const / s)
                    self.fixed.append(True)
                    layer_vars.append(h)
                    layer_z.append(True)
                elif ui < 0.0:  # stably inactive
                    self._row([(f, 1.0)] + [(v, a / s) for v, a in terms], -inf, -const / s)
                    self.fixed.append(False)
                    layer_vars.append(None)
                    layer_z.append(False)
                else:
                    z = solver.IntVar(0.0, 1.0, f"z{unit}")
                    h = solver.NumVar(0.0, max(ui, 0.0), f"h{unit}")
                    # h >= g ; h <= g - L (1 - z) ; h <= U z
                    self._row([(h, 1.0)] + [(v, -a) for v, a in terms], const, inf)
                    self._row([(h, 1.0), (z, -li)] + [(v, -a) for v, a in terms], -inf, const - li)
                    self._row([(h, 1.0), (z, -ui)], -inf, 0.0)
                    m1, m2 = 1.0 - li / s, 1.0 + ui / s
                    extra = [] if dead is None else [(dead, -1.0)]
                    # z = 1 -> f <= g / s ;  z = 0 -> f <= -g / s   (both relaxed when dead)
                    self._row([(f, 1.0), (z, m1)] + extra + [(v, -a / s) for v, a in terms], -inf, const / s + m1)
                    self._row([(f, 1.0), (z, -m2)] + extra + [(v, a / s) for v, a in terms], -inf, -const / s)
                    if dead is not None:  # a dead unit (all its inputs off, no bias) is inactive
                        self._row([(z, 1.0), (dead, 1.0)], -inf, 1.0)
                    self.fixed.append(z)
                    self.z_vars.append((unit, z))
                    layer_vars.append(h)
                    layer_z.append(z)
                unit += 1
            prev_vars, prev_z = layer_vars, layer_z
        self.units = unit
        solver.Objective().SetMinimization()  # feasibility: any pattern with margin >= eps
        if engine == "SCIP":
            # tight tolerances (eps = 1e-6 must be far above them); no cutting planes and no
            # restarts: each solve only needs one feasible pattern, and root separation
            # dominated the time of these small models (2-4x slower with it)
            solver.SetSolverSpecificParametersAsString(
                "numerics/feastol = 1e-9\nnumerics/epsilon = 1e-12\nnumerics/sumepsilon = 1e-10\n"
                "separating/maxroundsroot = 0\nseparating/maxrounds = 0\npresolving/maxrestarts = 0\n"
                "randomization/randomseedshift = 0\n")
        self.cuts = 0

    def _row(self, terms, lo, hi):
        ct = self.solver.Constraint(lo, hi)
        for v, a in terms:
            ct.SetCoefficient(v, ct.GetCoefficient(v) + a)
        return ct

    def _dead_indicator(self, row, prev_z, prev_vars):
        """A binary equal to 1 iff every input of this bias-free unit is off (then g = 0 on the
        whole region), or None when that cannot happen or is fixed."""
        support = [j for j in range(len(row)) if row[j] != 0.0]
        zs = [prev_z[j] for j in support]
        if any(z is True for z in zs):
            return None  # a stably active input: never dead
        free = [z for z in zs if z is not False]
        if not free:
            return None  # always dead: already identically zero (handled by the caller's bounds)
        d = self.solver.IntVar(0.0, 1.0, "")
        for z in free:
            self._row([(d, 1.0), (z, 1.0)], -self.solver.infinity(), 1.0)
        self._row([(d, 1.0)] + [(z, 1.0) for z in free], 1.0, self.solver.infinity())
        return d

    def full_pattern(self, free_values: dict[int, bool]) -> np.ndarray:
        out = np.zeros(self.units, dtype=bool)
        for u, v in enumerate(self.fixed):
            out[u] = free_values[u] if not isinstance(v, bool) else v
        return out

    def cut(self, pattern: np.ndarray) -> None:
        """Exclude ``pattern`` (a full pattern) from the free binaries."""
        if not self.z_vars:
            self.exhausted = True
            return
        ones = [var for u, var in self.z_vars if pattern[u]]
        zeros = [var for u, var in self.z_vars if not pattern[u]]
        # sum_{ones} (1 - z) + sum_{zeros} z >= 1
        self._row([(v, -1.0) for v in ones] + [(v, 1.0) for v in zeros], 1.0 - len(ones), self.solver.infinity())
        self.cuts += 1

    exhausted = False

    def consistent(self, pattern: np.ndarray) -> bool:
        """Whether ``pattern`` agrees with the units fixed by the bounds."""
        return all(isinstance(v, bool) is False or pattern[u] == v for u, v in enumerate(self.fixed))

    def solve(self, seconds: float | None):
        """(status, pattern or None, alpha or None); status one of found/infeasible/timeout."""
        from ortools.linear_solver import pywraplp

        if self.exhausted:
            return "infeasible", None, None
        if seconds is not None:
            self.solver.SetTimeLimit(max(1, int(seconds * 1000)))
        status = self.solver.Solve()
        if status in (pywraplp.Solver.OPTIMAL, pywraplp.Solver.FEASIBLE):
            values = {u: var.solution_value() > 0.5 for u, var in self.z_vars}
            alpha = np.array([v.solution_value() for v in self.alpha])
            return "found", self.full_pattern(values), alpha
        if status == pywraplp.Solver.INFEASIBLE:
            return "infeasible", None, None
        if status == pywraplp.Solver.NOT_SOLVED:
            return "timeout", None, None
        raise RegionsError(f"the {self.engine} solver failed on the region MILP (status {status})")


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
        names, modules = _hidden_linear_layers(model)
        pts = check_points(points, modules[0].in_features)
        net = _checked_net(model, names, modules, pts, seed)
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
