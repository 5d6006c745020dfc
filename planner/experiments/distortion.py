"""What pruning does besides lowering accuracy: recall distortion and representation similarity.

Recall distortion (Good et al., "Recall distortion in neural network pruning and the undecayed
pruning algorithm", NeurIPS 2022). For a model with accuracy ``A`` and recall ``R_c`` of class
``c``:

* recall balance ``B_c = R_c - A``, normalized balance ``b_c = B_c / A``;
* intensification ratio of class ``c`` against the dense model: ``b_c(pruned) / b_c(dense)``
  (above 1: the class's distance from the accuracy grew relatively);
* the model-level slope ``alpha_t``: the least-squares line through the origin of the pruned
  model's normalized balances on the dense model's, ``alpha = sum(b_dense * b_pruned) /
  sum(b_dense^2)``. ``alpha > 1`` is intensification (classes below the accuracy fall further
  below it, relatively), ``alpha < 1`` attenuation; a pruned model equal to the dense one has
  ``alpha = 1``. ``t`` is the pruning ratio: prunable weights of the dense model / kept ones.

SVCCA (Raghu et al., "SVCCA: Singular Vector Canonical Correlation Analysis for Deep Learning
Dynamics and Interpretability", NeurIPS 2017) between two layers' activations on the same
inputs: centre each, keep the top singular directions carrying 99% of its variance, then CCA
between the two reduced sets; the similarity is the mean canonical correlation, in [0, 1]. The
reduced activations ``U_k S_k`` span the left singular vectors ``U_k``, which are orthonormal,
so the canonical correlations are the singular values of ``U_x^T U_y`` (Bjorck and Golub's
principal angles between the two subspaces of sample space).

Everything here is numpy / scipy; nothing imports torch at module level.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from planner.errors import PlannerError

#: the variance SVCCA's SVD step keeps (Raghu et al. 2017)
SVCCA_VARIANCE = 0.99


class DistortionError(PlannerError, ValueError):
    """Recall or activations that the measures cannot use (shapes, empty sets, bad values)."""


# ------------------------------------------------------------------------------ recall distortion


def recall_from_confusion(confusion) -> tuple[float, list[float]]:
    """(accuracy, recall of every class) of a confusion matrix, rows the true class, columns the
    predicted one; the recall of a class without examples is NaN."""
    C = np.asarray(confusion, dtype=np.float64)
    if C.ndim != 2 or C.shape[0] != C.shape[1] or C.shape[0] == 0:
        raise DistortionError(f"a confusion matrix is square and non-empty, got shape {C.shape}")
    if (C < 0).any() or not np.isfinite(C).all():
        raise DistortionError("a confusion matrix holds non-negative counts")
    total = C.sum()
    if total == 0:
        raise DistortionError("the confusion matrix counts no example")
    rows = C.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = np.where(rows > 0, np.diag(C) / rows, np.nan)
    return float(np.trace(C) / total), [float(r) for r in recall]


def normalized_balance(recall: Sequence[float], accuracy: float) -> list[float]:
    """``(R_c - A) / A`` for every class (NaN where the recall is NaN)."""
    if not (isinstance(accuracy, (int, float)) and accuracy > 0):
        raise DistortionError(f"normalized balances need an accuracy > 0, got {accuracy!r}")
    return [float((r - accuracy) / accuracy) for r in np.asarray(recall, dtype=np.float64)]


def intensification_ratios(dense_recall, dense_accuracy, recall, accuracy) -> list[float | None]:
    """``b_c(pruned) / b_c(dense)`` per class; ``None`` where the dense balance is 0 or a recall
    is undefined."""
    b0 = normalized_balance(dense_recall, dense_accuracy)
    b = normalized_balance(recall, accuracy)
    if len(b0) != len(b):
        raise DistortionError(f"{len(b0)} dense recalls but {len(b)} pruned ones")
    return [None if not (math.isfinite(x) and math.isfinite(y)) or x == 0 else y / x for x, y in zip(b0, b)]


def intensification_slope(dense_recall, dense_accuracy, recall, accuracy) -> float | None:
    """``alpha``: least squares through the origin of the pruned normalized balances on the dense
    ones, over the classes where both are defined; ``None`` when every dense balance is 0 (all
    classes at the accuracy: nothing to intensify) or the pruned accuracy is 0."""
    if not accuracy > 0:
        return None
    x = np.asarray(normalized_balance(dense_recall, dense_accuracy))
    y = np.asarray(normalized_balance(recall, accuracy))
    if x.shape != y.shape:
        raise DistortionError(f"{x.size} dense recalls but {y.size} pruned ones")
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    denominator = float(np.dot(x, x))
    if denominator == 0:
        return None
    return float(np.dot(x, y) / denominator)


# ------------------------------------------------------------------------------ SVCCA


def _top_directions(A: np.ndarray, variance: float) -> np.ndarray:
    """Orthonormal basis (n x k) of the centred ``A``'s top singular directions in sample space
    that carry ``variance`` of its variance; (n x 0) for constant activations."""
    from scipy.linalg import svd

    A = A - A.mean(axis=0, keepdims=True)
    U, s, _ = svd(A, full_matrices=False, lapack_driver="gesvd")
    energy = s * s
    total = float(energy.sum())
    # singular values at round-off level are no signal: below this the layer is constant
    if total <= 0 or s[0] <= np.finfo(np.float64).eps * max(A.shape) * 10 * max(1.0, float(np.abs(A).max())):
        return U[:, :0]
    k = int(np.searchsorted(np.cumsum(energy) / total, variance - 1e-12) + 1)
    return U[:, :min(k, len(s))]


def canonical_correlations(X, Y, variance: float = SVCCA_VARIANCE) -> np.ndarray:
    """The canonical correlations of SVCCA between activations ``X`` (n x p) and ``Y`` (n x q) of
    the same n inputs, largest first, each in [0, 1]; empty when either side is constant."""
    from scipy.linalg import svdvals

    X, Y = np.asarray(X, dtype=np.float64), np.asarray(Y, dtype=np.float64)
    if X.ndim != 2 or Y.ndim != 2:
        raise DistortionError(f"activations are (inputs, units) matrices, got shapes {X.shape} and {Y.shape}")
    if len(X) != len(Y):
        raise DistortionError(f"activations of {len(X)} and {len(Y)} inputs: SVCCA compares the same inputs")
    if len(X) < 2:
        raise DistortionError("SVCCA needs at least two inputs")
    if not (np.isfinite(X).all() and np.isfinite(Y).all()):
        raise DistortionError("activations hold nan or inf")
    if not 0 < variance <= 1:
        raise DistortionError(f"the kept variance must be in (0, 1], got {variance!r}")
    Ux, Uy = _top_directions(X, variance), _top_directions(Y, variance)
    if Ux.shape[1] == 0 or Uy.shape[1] == 0:
        return np.zeros(0)
    return np.clip(svdvals(Ux.T @ Uy), 0.0, 1.0)


def svcca(X, Y, variance: float = SVCCA_VARIANCE) -> float:
    """Mean SVCCA canonical correlation of two layers' activations, in [0, 1]; 0 when either
    layer is constant on the inputs (it carries nothing to correlate)."""
    rho = canonical_correlations(X, Y, variance)
    return float(rho.mean()) if rho.size else 0.0


def hidden_activations(model, X) -> list[np.ndarray]:
    """The post-ReLU activations of every hidden layer of a :func:`planner.experiments.training.make_mlp`
    model on inputs ``X`` (float64 arrays, one per hidden layer)."""
    import torch

    n = len(model.sizes) - 1
    out = []
    model.eval()
    with torch.no_grad():
        x = torch.as_tensor(X, dtype=torch.float32).flatten(1)
        for i in range(1, n):
            x = model.relu(getattr(model, f"fc{i}")(x))
            out.append(x.numpy().astype(np.float64))
    return out


def layer_svcca(model_a, model_b, X, variance: float = SVCCA_VARIANCE) -> list[float]:
    """SVCCA of every hidden layer of two MLPs of the same sizes on inputs ``X``."""
    return [svcca(a, b, variance) for a, b in zip(hidden_activations(model_a, X), hidden_activations(model_b, X))]
