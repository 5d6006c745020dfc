"""Measure layer sensitivity: prune one layer alone to each measured keep-count, evaluate.

For every prunable layer (every ``nn.Linear`` and ``nn.Conv2d`` the planner sees) and every
keep-count of :func:`planner.allocation.sensitivity.measured_keeps`, the layer's weight is
masked (magnitude: the largest |w|; random: a seeded draw) and the calibration set's mean
cross-entropy and accuracy are measured; the weight is then restored exactly. Density 1 is
measured like every other point (its mask keeps every weight), so its increase is exactly zero.

Results are cached on disk, keyed by a hash of the model's class and state dict, the data, the
criterion and the settings: a table is measured once per (model, weights, data).
"""

from __future__ import annotations

import hashlib
from typing import Callable, Sequence

from planner.allocation.sensitivity import (
    DEFAULT_MIN_DENSITY,
    DEFAULT_STEPS,
    LayerSensitivity,
    SensitivityError,
    SensitivityTable,
    measured_keeps,
    rounded,
)
from planner.errors import ModelError

SENSITIVITY_CRITERIA = ("magnitude", "random")
CACHE_PREFIX = "sensitivity/1"
BATCH = 2048

Progress = Callable[[str, int, int], None]


def _hash_model_and_data(model, X, y) -> str:
    import numpy as np
    import torch

    h = hashlib.sha256()
    h.update(f"{type(model).__module__}.{type(model).__qualname__}".encode())
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        t = tensor.detach().cpu().contiguous()
        h.update(str(tuple(t.shape)).encode() + str(t.dtype).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    Xa, ya = np.ascontiguousarray(X, dtype=np.float32), np.ascontiguousarray(y, dtype=np.int64)
    h.update(str(Xa.shape).encode() + Xa.tobytes())
    h.update(str(ya.shape).encode() + ya.tobytes())
    return h.hexdigest()


def check_calibration(X, y, input_shape: Sequence[int] | None = None):
    """(X as float32 of shape (N, *input_shape), y as int64 (N,)) or a :class:`SensitivityError`."""
    import numpy as np

    X, y = np.asarray(X), np.asarray(y)
    if X.dtype.kind not in "fiu":
        raise SensitivityError(f"calibration inputs must be numbers, got dtype {X.dtype}")
    if y.dtype.kind not in "iu":
        if y.dtype.kind == "f" and np.all(np.isfinite(y)) and np.all(y == np.round(y)):
            y = y.astype(np.int64)
        else:
            raise SensitivityError(f"labels must be integers, got dtype {y.dtype}")
    if X.ndim < 1 or len(X) == 0:
        raise SensitivityError("the calibration set is empty")
    if y.ndim != 1 or len(y) != len(X):
        raise SensitivityError(f"labels must be one integer per calibration input: {len(X)} inputs, "
                               f"labels of shape {y.shape}")
    if (y < 0).any():
        raise SensitivityError("labels must be non-negative class indices")
    X = X.astype(np.float32, copy=False)
    if not np.all(np.isfinite(X)):
        raise SensitivityError("calibration inputs contain nan or inf")
    if input_shape is not None:
        shape = tuple(int(v) for v in input_shape)
        per = int(np.prod(X.shape[1:])) if X.ndim > 1 else 1
        if per != int(np.prod(shape)):
            raise SensitivityError(f"calibration inputs have {per} values each but --input-shape "
                                   f"{','.join(map(str, shape))} needs {int(np.prod(shape))}")
        X = X.reshape((len(X), *shape))
    return X, y.astype(np.int64)


def _evaluate(model, X, y) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) over the whole set, in fixed batches (sums in float64)."""
    import torch.nn.functional as F

    loss_sum, correct = 0.0, 0
    for start in range(0, len(X), BATCH):
        xb, yb = X[start:start + BATCH], y[start:start + BATCH]
        logits = model(xb)
        if logits.ndim != 2:
            raise ModelError(f"the model's output has shape {tuple(logits.shape)}; sensitivity needs "
                             "(batch, classes) logits")
        if int(yb.max()) >= logits.shape[1]:
            raise SensitivityError(f"label {int(yb.max())} is not a class of the model's "
                                   f"{logits.shape[1]} outputs")
        loss_sum += float(F.cross_entropy(logits, yb, reduction="sum").double())
        correct += int((logits.argmax(1) == yb).sum())
    return loss_sum / len(X), correct / len(X)


def measure_sensitivity(model, X, y, *, criterion: str = "magnitude", steps: int = DEFAULT_STEPS,
                        min_density: float = DEFAULT_MIN_DENSITY, layers=None, seed: int = 0,
                        input_shape: Sequence[int] | None = None, cache=None, source: dict | None = None,
                        progress: Progress | None = None) -> SensitivityTable:
    """The sensitivity table of ``model`` on calibration inputs ``X`` and labels ``y``.

    ``layers`` are :class:`planner.allocation.request.WeightLayer` (default: every Linear and
    Conv2d, from :func:`planner.pruning.model.model_layers`). ``cache`` is a
    :class:`planner.core.cache.DiskCache` or None. The model is left exactly as it was.
    """
    import torch

    from planner.pruning.masks import top_k_mask
    from planner.pruning.model import model_layers, resolve_weight

    if criterion not in SENSITIVITY_CRITERIA:
        raise SensitivityError(f"unknown criterion {criterion!r}; choose one of {', '.join(SENSITIVITY_CRITERIA)}")
    X, y = check_calibration(X, y, input_shape)
    if layers is None:
        layers = [w for w in model_layers(model, X.shape[1:], prune_output=True).layers]
    layers = list(layers)
    settings = {"criterion": criterion, "steps": int(steps), "min_density": float(min_density), "seed": int(seed),
                "layers": [w.name for w in layers]}
    key = hashlib.sha256(f"{CACHE_PREFIX}|{_hash_model_and_data(model, X, y)}|{settings}".encode()).hexdigest()
    if cache is not None:
        hit = cache.get(key)
        if hit is not None:
            try:
                table = SensitivityTable.from_dict(hit)
                table.source = dict(source or table.source)
                return table
            except SensitivityError:
                pass  # a stale entry: measure again
    plan = [(w, measured_keeps(w.size, steps, min_density)) for w in layers]
    total = sum(len(ks) for _, ks in plan)
    Xt, yt = torch.from_numpy(X), torch.from_numpy(y)
    was_training = model.training
    model.eval()
    out, done = [], 0
    try:
        with torch.no_grad():
            dense_loss, dense_acc = _evaluate(model, Xt, yt)
            for w, keeps in plan:
                module, param = resolve_weight(model, w.name)
                weight = getattr(module, param)
                original = weight.detach().clone()
                if criterion == "random":
                    g = torch.Generator().manual_seed(int(seed) + len(out))
                    scores = torch.rand(original.shape, generator=g)
                losses, accs = [], []
                try:
                    for k in keeps:
                        mask = top_k_mask(scores, k) if criterion == "random" else top_k_mask(original, k, absolute=True)
                        weight.copy_(original * mask.to(original.dtype))
                        loss, acc = _evaluate(model, Xt, yt)
                        losses.append(rounded(loss))
                        accs.append(rounded(acc))
                        done += 1
                        if progress is not None:
                            progress("sensitivity", done, total)
                finally:
                    weight.copy_(original)
                out.append(LayerSensitivity(w.name, w.rows, w.cols, list(keeps), losses, accs))
    finally:
        model.train(was_training)
    table = SensitivityTable(out, rounded(dense_loss), rounded(dense_acc), criterion, int(len(X)),
                             dict(source or {}), key)
    if cache is not None:
        payload = table.to_dict()
        payload["source"] = {}
        cache.put(key, payload)
    return table
