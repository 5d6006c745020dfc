"""The network as the counter sees it: a torch MLP read into float64 matrices, checked on
points, and restricted to the affine hull of the input points (the subspace network)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from planner.errors import ModelError
from planner.experiments.regions import RegionsError


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


def _hidden_linear_layers(model, input_shape=None):
    """(names, modules) of the hidden layers of a torch MLP or CNN, checked to be a plain chain
    of Linear / Conv2d layers with ReLUs between them (a CNN needs its ``input_shape``)."""
    import torch.nn as nn

    from planner.pruning.model import model_layers

    if not isinstance(model, nn.Module):
        raise RegionsError(f"expected a torch nn.Module or a ReluNet, got {type(model).__name__}")
    linears = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    other = [n for n, m in model.named_modules() if isinstance(m, (nn.Conv1d, nn.Conv3d))]
    if other:
        raise RegionsError(f"counting regions handles Linear and Conv2d layers; the model has {other[0]}")
    convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    if convs:
        if input_shape is None:
            raise RegionsError("the model has convolutions: give points of the input's shape, (S+1, C, H, W), "
                               "or --input-shape")
        try:
            found = model_layers(model, tuple(input_shape))
        except ModelError as exc:
            raise RegionsError(f"cannot read the model's layers: {exc}") from None
        by_name = {w.name: w for w in found.layers}
        for n in convs:
            w = by_name.get(n)
            if w is None or not w.in_bound:
                raise RegionsError(f"counting regions needs Conv2d and Linear layers with ReLUs between; "
                                   f"convolution {n} is outside the ReLU chain ({w.why if w else 'unused'})")
            if w.conv.pool is not None:
                raise RegionsError(f"counting regions needs ReLU layers without pooling; {n} is followed by a max pool")
        hidden = [w.name for w in found.layers if w.in_bound]
        output = [w for w in found.layers if not w.in_bound]
        if len(output) != 1:
            raise RegionsError(f"counting regions needs a plain chain; layer {output[0].name} is outside it "
                               f"({output[0].why})")
        chain = hidden + [output[0].name]
        return chain, [model.get_submodule(n) for n in chain]
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
        extra = [w for w in found.layers if w.name not in chain]
        if extra[0].why.startswith("followed by") and extra[0].why != "followed by Linear":
            raise RegionsError(f"the output of layer {extra[0].name!r} does not reach the next layer through a "
                               f"plain ReLU ({extra[0].why}); counting regions needs an MLP of Linear and ReLU layers")
        if not hidden:
            raise RegionsError("the model has no hidden ReLU layer: counting regions needs an MLP of Linear "
                               "layers with a ReLU between")
        raise RegionsError(f"counting regions needs an MLP of Linear and ReLU layers; layer {extra[0].name} is "
                           f"not part of the final Linear chain ({extra[0].why})")
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


def _checked_net(model, names, modules, check_points, seed, input_shape=None) -> ReluNet:
    import torch
    import torch.nn as nn

    for name, module in zip(names, modules):
        for what, tensor in (("weight", module.weight), ("bias", module.bias)):
            if tensor is not None and not bool(torch.isfinite(tensor).all()):
                raise RegionsError(f"layer {name} has non-finite {what} values (nan or inf)")
    n0 = modules[0].in_features if input_shape is None else int(np.prod(input_shape))
    param = next(iter(modules[0].parameters()))
    rng = np.random.default_rng(seed)
    batches = [rng.standard_normal((16, n0)) * scale for scale in (1.0, 10.0, 100.0)]
    if check_points is not None:
        batches.insert(0, np.asarray(check_points, dtype=np.float64).reshape(-1, n0))
    x = torch.as_tensor(np.concatenate(batches), dtype=param.dtype, device=param.device)
    if input_shape is not None:
        x = x.reshape(len(x), *input_shape)
    seen: dict[str, list] = {n: [] for n in names}
    spatial: dict[str, tuple] = {}
    hooks = []
    for name, module in zip(names, modules):
        def hook(mod, inputs, output, name=name):
            spatial[name] = (tuple(inputs[0].shape[-2:]), tuple(output.shape[-2:]))
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
    xin = x.reshape(len(x), -1).double().cpu()

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
    for name, m in zip(names[:-1], modules[:-1]):
        w = m.weight.detach().double().cpu().numpy()
        b = None if m.bias is None else m.bias.detach().double().cpu().numpy()
        if isinstance(m, nn.Conv2d):  # unrolled: the operator's matrix, the bias at every position
            from planner.core.conv import ConvShape, unrolled

            shape = ConvShape.of(m, *spatial[name])
            w = unrolled(shape, w)
            b = None if b is None else np.repeat(b, shape.out_positions)
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
    if arr.shape[0] < 2:
        raise RegionsError(f"need at least two points (S+1 >= 2) to span a subspace, got {arr.shape[0]}")
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
