"""Data-driven scores of single weights: gradient magnitude and undecayed pruning.

``gradient``   ``|theta * dL/dtheta|``: the first-order change of the loss when the weight is
               set to zero (a Taylor / SNIP-style saliency).
``undecayed``  ``|-theta * dL/dtheta + eps * theta^2|`` (Good et al., "Recall distortion in neural
               network pruning and the undecayed pruning algorithm", NeurIPS 2022): the same
               first-order change, with the weight-decay term ``eps/2 * ||theta||^2`` of the
               training objective taken out of the trade-off, ``eps`` the training weight decay.
               With a zero gradient it ranks by ``theta^2`` (magnitude), with ``eps = 0`` by the
               gradient score.

``L`` is the mean cross-entropy of the model on one calibration batch (inputs and integer
labels), evaluated with the model in eval mode; the model's parameters and ``.grad`` are left
as they were.
"""

from __future__ import annotations

import math

from planner.errors import PlannerError

SALIENCY = ("gradient", "undecayed")


def gradient_score(weight, grad):
    """``|theta * dL/dtheta|``, elementwise."""
    return (weight * grad).abs()


def undecayed_score(weight, grad, eps: float):
    """``|-theta * dL/dtheta + eps * theta^2|``, elementwise."""
    return (-weight * grad + float(eps) * weight * weight).abs()


def check_weight_decay(eps) -> float:
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not math.isfinite(eps) or eps < 0:
        raise PlannerError(f"the weight decay must be a finite number >= 0, got {eps!r}")
    return float(eps)


def loss_gradients(model, weights: dict, inputs, labels) -> dict:
    """{name: dL/dw} for the tensors ``weights`` ({name: parameter}) of ``model``, ``L`` the mean
    cross-entropy of ``model(inputs)`` against ``labels``; nothing of the model is changed."""
    import torch

    X = torch.as_tensor(inputs, dtype=torch.float32)
    y = torch.as_tensor(labels)
    if y.dtype.is_floating_point or y.dtype == torch.bool:
        if y.dtype.is_floating_point and not bool((y == y.round()).all()):
            raise PlannerError("the labels must be integer classes")
        y = y.to(torch.int64)
    y = y.to(torch.int64).reshape(-1)
    if len(y) != len(X):
        raise PlannerError(f"{len(X)} calibration inputs but {len(y)} labels")
    if len(y) == 0:
        raise PlannerError("the calibration batch is empty")
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            try:
                out = model(X)
            except RuntimeError as exc:
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise PlannerError(f"the calibration batch (shape {tuple(X.shape)}) does not fit the model: "
                                   f"{first}") from None
            if out.dim() != 2:
                raise PlannerError(f"the model's output must be (batch, classes) logits, got shape {tuple(out.shape)}")
            if int(y.min()) < 0 or int(y.max()) >= out.shape[1]:
                raise PlannerError(f"labels must lie in 0..{out.shape[1] - 1} (the model has {out.shape[1]} outputs)")
            loss = torch.nn.functional.cross_entropy(out, y)
            names = list(weights)
            grads = torch.autograd.grad(loss, [weights[n] for n in names], allow_unused=True)
    finally:
        model.train(was_training)
    return {n: (torch.zeros_like(weights[n]) if g is None else g.detach()) for n, g in zip(names, grads)}


def saliency_scores(criterion: str, weights: dict, inputs, labels, model, eps: float = 0.0) -> dict:
    """{name: score tensor} of ``criterion`` (``gradient`` or ``undecayed``) for ``weights``."""
    import torch

    if criterion not in SALIENCY:
        raise PlannerError(f"unknown saliency criterion {criterion!r}; choose one of {', '.join(SALIENCY)}")
    if inputs is None or labels is None:
        raise PlannerError(f"criterion {criterion} needs a calibration batch and its labels "
                           "(--calibration X.npy --labels y.npy, or --dataset NAME)")
    eps = check_weight_decay(eps)
    grads = loss_gradients(model, weights, inputs, labels)
    with torch.no_grad():
        if criterion == "gradient":
            return {n: gradient_score(weights[n].detach(), grads[n]) for n in weights}
        return {n: undecayed_score(weights[n].detach(), grads[n], eps) for n in weights}
