"""Neuron pruning to a neuron plan (``apply --criterion dpp|greedy-forward|activation-norm|random``)
and the really smaller model it gives.

Layer by layer in forward order, on the network already pruned before it, each hidden layer l
keeps ``keep_neurons`` of its neurons, chosen from their activations on a calibration batch
(A: samples x neurons, the input of layer l+1):

``dpp``
    Mariet & Sra, *Diversity Networks* (ICLR 2016): the kernel L_ij = exp(-beta ||a_i - a_j||^2)
    + eps [i = j] over the neurons' activation vectors (beta: 1 / the median squared distance
    between distinct neurons unless given), then exactly k neurons drawn from the k-DPP with
    kernel L (dppy's exact sampler, seeded), or its greedy MAP (``dpp_mode="map"``,
    deterministic). Followed by reweighting (below).
``greedy-forward``
    Ye et al. 2020 (greedy forward selection): from the empty set, add the neuron that most lowers
    the calibration loss, to k. The loss is the squared error of layer l+1's input after
    reweighting (below), which can only fall as neurons are added (nested least squares); with
    ``labels`` it is the cross-entropy of the network's output on the batch, each candidate
    with its own reweighting. ``candidates`` evaluates that many neurons per step, drawn by the
    seeded generator, instead of all.
``activation-norm``
    the k neurons with the largest ||a_i||_2 on the batch (ties: lowest index).
``random``
    k neurons uniformly at random (seeded).

Reweighting (Mariet & Sra's "fusing"): the removed neurons' outgoing weights are folded into the
kept ones by least squares on the activations: with T = A W_{l+1}^T the next layer's input, find
X, c minimizing ||T - A_S X - 1 c^T||^2 and set W_{l+1}[:, S] = X^T, b_{l+1} += c. (The
intercept c is an addition to the paper's fit; it can only lower the error.) When every removed
neuron's activation is an affine combination of kept ones, T is reproduced exactly.

The result is first the *masked* model (removed neurons' rows, biases and outgoing columns set
to zero), then, by slicing, the *shrunk* model whose Linear layers have the kept widths; their
outputs are equal. :func:`resize_to_state_dict` rebuilds a model of the shrunk shapes from the
original factory, so the state dict loads with ``load_state_dict``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from planner.errors import ModelError, PlanMismatchError, PlannerError

NODE_CRITERIA = ("dpp", "greedy-forward", "activation-norm", "random")
DPP_MODES = ("sample", "map")
#: criteria whose method includes reweighting; the others fold nothing unless asked
REWEIGHT_DEFAULT = {"dpp": True, "greedy-forward": True, "activation-norm": False, "random": False}


# ------------------------------------------------------------------------- DPP machinery
def rbf_kernel(A, beta: float | None = None, eps: float = 1e-6):
    """L_ij = exp(-beta ||a_i - a_j||^2) + eps [i = j] for the columns a_i of ``A`` (N x n)."""
    import numpy as np

    A = np.asarray(A, dtype=np.float64)
    sq = np.sum(A * A, axis=0)
    d2 = np.maximum(sq[:, None] + sq[None, :] - 2.0 * (A.T @ A), 0.0)
    np.fill_diagonal(d2, 0.0)
    if beta is None:
        off = d2[~np.eye(len(d2), dtype=bool)]
        off = off[off > 0]
        beta = 1.0 / float(np.median(off)) if off.size else 1.0
    if not beta > 0:
        raise PlannerError(f"the DPP kernel's beta must be positive, got {beta!r}")
    return np.exp(-beta * d2) + eps * np.eye(len(d2))


def sample_k_dpp(L, k: int, seed: int = 0) -> list[int]:
    """Exactly ``k`` indices drawn from the k-DPP with kernel ``L`` (dppy's exact sampler:
    eigendecomposition, eigenvectors chosen by elementary symmetric polynomials, then the
    projection DPP), sorted. Deterministic in ``seed``."""
    import numpy as np

    try:
        from dppy.finite_dpps import FiniteDPP
    except ImportError:  # pragma: no cover - dppy is in the test extra
        raise PlannerError("--criterion dpp samples with dppy: pip install 'sparsity-planner[nodes]', "
                           "or use the deterministic --dpp-mode map") from None
    n = len(L)
    _check_k(k, n)
    if k == n:
        return list(range(n))
    dpp = FiniteDPP("likelihood", L=np.asarray(L, dtype=np.float64))
    sample = dpp.sample_exact_k_dpp(size=k, random_state=np.random.RandomState(seed))
    return sorted(int(i) for i in sample)


def greedy_map(L, k: int) -> list[int]:
    """The greedy MAP of the k-DPP: k times add the index that maximizes det(L_S) (incremental
    Cholesky, Chen et al. 2018; ties to the lowest index). Returns them in selection order."""
    import numpy as np

    L = np.asarray(L, dtype=np.float64)
    n = len(L)
    _check_k(k, n)
    c = np.zeros((k, n))
    d2 = np.diag(L).copy()
    chosen: list[int] = []
    for t in range(k):
        gains = d2.copy()
        gains[chosen] = -np.inf
        j = int(np.argmax(gains))
        chosen.append(j)
        if t == k - 1:
            break
        e = (L[j] - c[:t, j] @ c[:t]) / np.sqrt(max(d2[j], 1e-300))
        c[t] = e
        d2 = d2 - e * e
    return chosen


def _check_k(k: int, n: int) -> None:
    if not 1 <= k <= n:
        raise PlannerError(f"cannot keep {k} of {n} neurons (need 1 <= k <= {n})")


# ------------------------------------------------------------------------- least squares
def reweight(A, W_next, keep):
    """(X, c) minimizing ||A W_next^T - A_S X - 1 c^T||^2: the kept neurons' new outgoing
    weights are X^T (out x |S|) and c is added to the next layer's bias."""
    import numpy as np

    A = np.asarray(A, dtype=np.float64)
    T = A @ np.asarray(W_next, dtype=np.float64).T
    design = np.hstack([A[:, list(keep)], np.ones((len(A), 1))])
    sol, *_ = np.linalg.lstsq(design, T, rcond=None)
    return sol[:-1].T, sol[-1]


def greedy_forward_select(A, W_next, k: int, *, candidates: int | None = None, rng=None, labels_loss=None):
    """Forward selection of ``k`` neurons (columns of ``A``); returns (selected in order, loss
    after each addition). The default loss is min_{X,c} ||T - A_S X - 1 c^T||^2 with
    T = A W_next^T (orthogonal least-squares updates, O(N n m) a step); ``labels_loss(T_hat)``,
    when given, maps a stack (C, N, m) of reweighted next-layer inputs to C losses and replaces
    it. ``candidates`` draws that many of the remaining neurons per step from ``rng``."""
    import numpy as np

    A = np.asarray(A, dtype=np.float64)
    N, n = A.shape
    _check_k(k, n)
    T = A @ np.asarray(W_next, dtype=np.float64).T
    q0 = np.full((N, 1), 1.0 / np.sqrt(N))
    R = T - q0 @ (q0.T @ T)
    P = A - q0 @ (q0.T @ A)
    scale = max(float(np.sum(A * A)), 1e-300)
    remaining = list(range(n))
    selected, losses = [], []
    for _ in range(k):
        pool = remaining
        if candidates is not None and candidates < len(remaining):
            pool = sorted(rng.choice(remaining, size=candidates, replace=False).tolist())
        Pp = P[:, pool]
        norms2 = np.sum(Pp * Pp, axis=0)
        live = norms2 > 1e-12 * scale
        if labels_loss is None:
            G = Pp.T @ R
            gain = np.where(live, np.sum(G * G, axis=1) / np.where(live, norms2, 1.0), 0.0)
            pick = pool[int(np.argmax(gain))]
        else:
            Qn = np.where(live, Pp / np.sqrt(np.where(live, norms2, 1.0)), 0.0)  # N x C
            proj = Qn.T @ R  # C x m
            fitted = (T - R)[None] + Qn.T[:, :, None] * proj[:, None, :]
            pick = pool[int(np.argmin(labels_loss(fitted)))]
        p = P[:, pick]
        norm2 = float(p @ p)
        if norm2 > 1e-12 * scale:
            q = p / np.sqrt(norm2)
            R = R - np.outer(q, q @ R)
            P = P - np.outer(q, q @ P)
        selected.append(pick)
        remaining.remove(pick)
        if labels_loss is None:
            losses.append(float(np.sum(R * R)))
        else:
            losses.append(float(labels_loss((T - R)[None])[0]))
    return selected, losses


# ------------------------------------------------------------------------- the model side
@dataclass
class NodeLayer:
    name: str
    rows: int
    cols: int
    kept_rows: int
    kept_cols: int
    criterion: str
    reweighted: bool = False
    kept: list = field(default_factory=list)

    @property
    def weights(self) -> int:
        return self.kept_rows * self.kept_cols


@dataclass
class NodeReport:
    layers: list[NodeLayer] = field(default_factory=list)
    planned: int = 0
    notes: list[str] = field(default_factory=list)
    losses: dict = field(default_factory=dict)

    @property
    def realized(self) -> int:
        return sum(layer.weights for layer in self.layers)

    def keep_sets(self) -> dict:
        return {layer.name: layer.kept for layer in self.layers}

    def to_dict(self) -> dict:
        return {
            "granularity": "neurons",
            "layers": [{"name": a.name, "shape": [a.rows, a.cols], "kept_shape": [a.kept_rows, a.kept_cols],
                        "kept_weights": a.weights, "criterion": a.criterion, "reweighted": a.reweighted,
                        "kept_neurons": a.kept} for a in self.layers],
            "planned_weights": self.planned,
            "realized_weights": self.realized,
            "notes": self.notes,
        }


def check_neuron_plan(model, plan):
    """The plan's Linear modules, checked: the plan is a neuron plan that fits the model, and the
    model has no parameters outside those layers (a BatchNorm between them would need shrinking)."""
    import torch.nn as nn

    if not plan.is_neurons:
        raise PlanMismatchError("node criteria need a neuron plan (plan --granularity neurons); this plan is "
                                "per weight: use --criterion magnitude, random or elimination-compensation")
    modules = []
    for layer in plan.layers:
        try:
            module = model.get_submodule(layer.name)
        except AttributeError:
            raise PlanMismatchError(f"plan layer {layer.name!r} is not a module of the model") from None
        if not isinstance(module, nn.Linear):
            raise PlanMismatchError(f"plan layer {layer.name!r} is a {type(module).__name__}; neuron plans "
                                    "prune Linear layers")
        if hasattr(module, "weight_orig"):
            raise PlanMismatchError(f"layer {layer.name!r} is already pruned; finalize it first")
        if tuple(module.weight.shape) != (layer.rows, layer.cols):
            raise PlanMismatchError(f"plan layer {layer.name!r} is {layer.rows}x{layer.cols} but the model's "
                                    f"weight is {tuple(module.weight.shape)[0]}x{tuple(module.weight.shape)[1]}")
        if not bool(__import__("torch").isfinite(module.weight).all()):
            raise ModelError(f"layer {layer.name} has non-finite weights: refusing to prune it")
        modules.append(module)
    names = {layer.name for layer in plan.layers}
    for name, module in model.named_modules():
        if name not in names and any(True for _ in module.parameters(recurse=False)):
            raise PlanMismatchError(f"module {name or '(root)'} ({type(module).__name__}) has parameters outside "
                                    "the plan's Linear layers; neuron pruning needs an MLP of Linear layers")
    return modules


def _next_inputs(model, module, X):
    """The input of ``module`` when the model runs on ``X`` (float64 numpy, samples x features)."""
    import torch

    seen = {}

    def hook(mod, args):
        seen["x"] = args[0].detach()

    handle = module.register_forward_pre_hook(hook)
    try:
        with torch.no_grad():
            model(X)
    finally:
        handle.remove()
    return seen["x"].reshape(len(X), -1).double().cpu().numpy()


def _ce_loss_fn(model, next_module, X, labels, chunk: int = 16):
    """losses(fitted (C, N, m) next-layer inputs without bias) -> C cross-entropies on (X, labels),
    by replacing the next layer's output through a forward hook."""
    import numpy as np
    import torch

    y = torch.as_tensor(labels, dtype=torch.long)

    def losses(fitted):
        out = []
        bias = next_module.bias.detach().double().cpu().numpy() if next_module.bias is not None else 0.0
        for start in range(0, len(fitted), chunk):
            block = fitted[start:start + chunk]
            C = len(block)
            z = torch.as_tensor((block + bias).reshape(C * len(X), -1), dtype=next_module.weight.dtype)
            handle = next_module.register_forward_hook(lambda mod, args, output: z)
            try:
                with torch.no_grad():
                    logits = model(X.repeat(C, *([1] * (X.dim() - 1))))
            finally:
                handle.remove()
            ce = torch.nn.functional.cross_entropy(logits, y.repeat(C), reduction="none").reshape(C, -1)
            out.append(ce.mean(dim=1).double().numpy())
        return np.concatenate(out)

    return losses


def prune_nodes(model, plan, criterion: str, *, calibration=None, labels=None, seed: int = 0,
                reweight_weights: bool | None = None, dpp_mode: str = "sample", beta: float | None = None,
                eps: float = 1e-6, candidates: int | None = None) -> NodeReport:
    """Prune ``model`` in place to the neuron plan ``plan``: removed neurons' rows, biases and
    outgoing columns become zero (the *masked* model; :func:`shrink` then slices it). Returns the
    kept neurons of every layer. ``calibration`` (a float tensor of model inputs) is needed by
    every criterion but ``random`` without reweighting; ``labels`` switch greedy-forward to the
    cross-entropy loss."""
    import numpy as np
    import torch

    if criterion not in NODE_CRITERIA:
        raise PlannerError(f"unknown node criterion {criterion!r}; choose one of {', '.join(NODE_CRITERIA)}")
    if dpp_mode not in DPP_MODES:
        raise PlannerError(f"unknown DPP mode {dpp_mode!r}; choose one of {', '.join(DPP_MODES)}")
    if candidates is not None and candidates < 1:
        raise PlannerError(f"candidates must be at least 1, got {candidates}")
    modules = check_neuron_plan(model, plan)
    do_reweight = REWEIGHT_DEFAULT[criterion] if reweight_weights is None else bool(reweight_weights)
    needs_data = criterion != "random" or do_reweight
    if needs_data and calibration is None:
        raise PlannerError(f"--criterion {criterion} needs a calibration batch (--calibration X.npy)")
    if labels is not None:
        if criterion != "greedy-forward":
            raise PlannerError("--labels is used by --criterion greedy-forward only")
        if calibration is None or len(labels) != len(calibration):
            raise PlannerError(f"--labels has {len(labels)} entries but the calibration batch has "
                               f"{0 if calibration is None else len(calibration)} samples")
    if calibration is not None and len(calibration) < 2:
        raise PlannerError("the calibration batch needs at least 2 samples")
    generator = np.random.default_rng(seed)
    report = NodeReport(planned=plan.kept)
    was_training = model.training
    model.eval()
    kept_prev = list(range(plan.layers[0].cols))
    for i, (layer, module) in enumerate(zip(plan.layers, modules)):
        if i == len(modules) - 1:  # the output layer keeps its rows; its columns follow the last hidden layer
            report.layers.append(NodeLayer(layer.name, layer.rows, layer.cols, layer.rows, len(kept_prev), "-",
                                           kept=list(range(layer.rows))))
            break
        nxt = modules[i + 1]
        k = layer.keep_neurons
        _check_k(k, layer.rows)
        A = _next_inputs(model, nxt, calibration) if needs_data else None
        W_next = nxt.weight.detach().double().cpu().numpy()
        if criterion == "random":
            keep = sorted(generator.permutation(layer.rows)[:k].tolist())
        elif criterion == "activation-norm":
            norms = np.linalg.norm(A, axis=0)
            keep = sorted(np.argsort(-norms, kind="stable")[:k].tolist())
        elif criterion == "dpp":
            L = rbf_kernel(A, beta, eps)
            keep = sorted(greedy_map(L, k)) if dpp_mode == "map" else sample_k_dpp(L, k, seed + i)
        else:
            loss_fn = None if labels is None else _ce_loss_fn(model, nxt, calibration, labels)
            order, losses = greedy_forward_select(A, W_next, k, candidates=candidates, rng=generator,
                                                  labels_loss=loss_fn)
            keep = sorted(order)
            report.losses[layer.name] = losses
        removed = sorted(set(range(layer.rows)) - set(keep))
        with torch.no_grad():
            if do_reweight and removed:
                X, c = reweight(A, W_next, keep)
                new = torch.zeros_like(nxt.weight)
                new[:, keep] = torch.as_tensor(X, dtype=new.dtype, device=new.device)
                nxt.weight.copy_(new)
                if nxt.bias is not None:
                    nxt.bias.add_(torch.as_tensor(c, dtype=nxt.bias.dtype, device=nxt.bias.device))
                else:
                    report.notes.append(f"{plan.layers[i + 1].name} has no bias: the reweighting's intercept "
                                        "is dropped")
            module.weight[removed] = 0
            if module.bias is not None:
                module.bias[removed] = 0
            nxt.weight[:, removed] = 0
        report.layers.append(NodeLayer(layer.name, layer.rows, layer.cols, k, len(kept_prev), criterion,
                                       do_reweight and bool(removed), kept=keep))
        kept_prev = keep
    model.train(was_training)
    return report


def shrink(model, keep_sets: dict) -> None:
    """Replace, in place, every Linear layer named in ``keep_sets`` (plan order, a chain) by one
    holding only the kept rows (its kept neurons) and the columns of the previous layer's kept
    neurons: the really smaller model."""
    import torch
    import torch.nn as nn

    prev = None
    for name, rows in keep_sets.items():
        module = model.get_submodule(name)
        cols = list(range(module.in_features)) if prev is None else prev
        with torch.no_grad():
            new = nn.Linear(len(cols), len(rows), bias=module.bias is not None, device=module.weight.device,
                            dtype=module.weight.dtype)
            new.weight.copy_(module.weight[rows][:, cols])
            if module.bias is not None:
                new.bias.copy_(module.bias[rows])
        _set_module(model, name, new)
        prev = list(rows)


def resize_to_state_dict(model, state_dict):
    """Rebuild a model of the shrunk shapes: every ``nn.Linear`` whose ``<name>.weight`` in
    ``state_dict`` has another shape is replaced by an ``nn.Linear`` of that shape, then the
    state dict is loaded (strict). Returns the model.

    >>> model = resize_to_state_dict(digits_mlp(), torch.load("small.pt", weights_only=True))
    """
    import torch.nn as nn

    for name, module in list(model.named_modules()):
        key = f"{name}.weight" if name else "weight"
        if isinstance(module, nn.Linear) and key in state_dict:
            out_f, in_f = state_dict[key].shape
            if (out_f, in_f) != (module.out_features, module.in_features):
                new = nn.Linear(in_f, out_f, bias=module.bias is not None, device=module.weight.device,
                                dtype=module.weight.dtype)
                _set_module(model, name, new)
    model.load_state_dict(state_dict)
    return model


def _set_module(model, name: str, new) -> None:
    if not name:
        raise ModelError("the model itself is a Linear layer; wrap it in a module to shrink it")
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)
