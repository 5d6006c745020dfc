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
from planner.errors import ModelError, PlannerError

SENSITIVITY_CRITERIA = ("magnitude", "random")
CACHE_PREFIX = "sensitivity/1"
BATCH = 2048
#: keep-counts measured per job by default (see benchmarks/sensitivity_jobs.py)
DEFAULT_CHUNK = 8

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
                        progress: Progress | None = None, executor: str = "local", n_jobs: int | None = None,
                        address: str | None = None, work_dir=None, chunk: int = DEFAULT_CHUNK,
                        threads: int | None = 1, factory: tuple[str, dict | None] | None = None) -> SensitivityTable:
    """The sensitivity table of ``model`` on calibration inputs ``X`` and labels ``y``.

    ``layers`` are :class:`planner.allocation.request.WeightLayer` (default: every Linear and
    Conv2d, from :func:`planner.pruning.model.model_layers`). ``cache`` is a
    :class:`planner.core.cache.DiskCache` or None. The model is left exactly as it was.

    The measurements are jobs of :mod:`planner.experiments.executor`: the dense evaluation, then
    one job per layer and run of ``chunk`` consecutive keep-counts (``chunk=1``: one job per
    layer and keep-count). ``executor`` (``local`` or ``ray``), ``n_jobs`` and ``address`` say
    where they run (``local`` with one job: in this process, the default); worker processes get
    the model and the calibration set once each (a pool's initializer, Ray's object store) and
    rebuild the model from ``factory`` (``(spec, kwargs)`` of
    :func:`planner.pruning.model.load_factory`) and the state dict, or, without ``factory``,
    unpickle it (its class must then be importable there). ``work_dir`` keeps every finished job
    (a rerun with the same model, data and settings skips them; another model or settings is
    refused). ``threads`` is torch's intra-op thread count during every job (``None``: leave it;
    restored afterwards). The table is the same, byte for byte, whatever the executor, ``n_jobs``
    and ``chunk``.
    """
    import torch

    from planner.experiments.executor import Executor, Job, JobError, ResultStore
    from planner.pruning.model import model_layers

    if criterion not in SENSITIVITY_CRITERIA:
        raise SensitivityError(f"unknown criterion {criterion!r}; choose one of {', '.join(SENSITIVITY_CRITERIA)}")
    if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
        raise SensitivityError(f"chunk (keep-counts per job) must be a positive integer, got {chunk!r}")
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise SensitivityError(f"threads must be a positive integer, got {threads!r}")
    X, y = check_calibration(X, y, input_shape)
    if layers is None:
        layers = [w for w in model_layers(model, X.shape[1:], prune_output=True).layers]
    layers = list(layers)
    settings = {"criterion": criterion, "steps": int(steps), "min_density": float(min_density), "seed": int(seed),
                "layers": [w.name for w in layers]}
    fingerprint = _hash_model_and_data(model, X, y)
    key = hashlib.sha256(f"{CACHE_PREFIX}|{fingerprint}|{settings}".encode()).hexdigest()
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
    common = {"key": key, "criterion": criterion, "seed": int(seed), "threads": threads}
    jobs = [Job(_points_job, (dict(common, layer=None, index=-1, keeps=[]),),
                spec={"key": key, "job": "dense"}, label="dense model")]
    for index, (w, keeps) in enumerate(plan):
        for start in range(0, len(keeps), chunk):
            part = keeps[start:start + chunk]
            jobs.append(Job(_points_job, (dict(common, layer=w.name, index=index, keeps=part),),
                            spec={"key": key, "layer": w.name, "keeps": part},
                            label=f"layer {w.name} at keeps {part[0]}..{part[-1]}"))
    in_process = executor == "local" and (n_jobs or 1) == 1
    shared = {"fingerprint": fingerprint, "X": X, "y": y,
              "model": model if in_process else _model_payload(model, factory)}
    store = None
    if work_dir is not None:
        store = ResultStore(work_dir, {"command": "sensitivity", "key": key, "settings": settings,
                                       "torch": torch.__version__})
    reused = sum(store.load(job)[0] for job in jobs) if store is not None else 0
    counter = {"done": 0}

    def on_result(i, job, result, from_store):
        if progress is not None and not from_store:
            counter["done"] += 1
            progress("sensitivity jobs" + (f" ({reused} done before)" if reused else ""), counter["done"],
                     len(jobs) - reused)

    was_training = model.training
    model.eval()
    try:
        with Executor(executor, n_jobs, address, shared) as runner:
            results = runner.run(jobs, store=store, on_result=on_result)
    except JobError as exc:
        if isinstance(exc.cause, PlannerError):  # bad data or model (e.g. a label the model has no class for)
            raise exc.cause from None
        raise
    finally:
        model.train(was_training)
    dense, parts = results[0], iter(results[1:])
    out = []
    for w, keeps in plan:
        losses, accs = [], []
        for _ in range(0, len(keeps), chunk):
            part = next(parts)
            losses += part["loss"]
            accs += part["accuracy"]
        out.append(LayerSensitivity(w.name, w.rows, w.cols, list(keeps), losses, accs))
    table = SensitivityTable(out, dense["loss"][0], dense["accuracy"][0], criterion, int(len(X)),
                             dict(source or {}), key)
    if cache is not None:
        payload = table.to_dict()
        payload["source"] = {}
        cache.put(key, payload)
    return table


def _model_payload(model, factory) -> dict:
    """What a worker rebuilds the model from: the factory and the state dict (as numpy arrays),
    or the pickled model; and this process's working directory, importable there as here."""
    import io
    import os

    import torch

    if factory is not None:
        spec, kwargs = factory
        state = {name: t.detach().cpu().numpy().copy() for name, t in model.state_dict().items()}
        return {"factory": spec, "kwargs": kwargs, "state": state, "cwd": os.getcwd()}
    buffer = io.BytesIO()
    torch.save(model, buffer)
    return {"pickled": buffer.getvalue(), "cwd": os.getcwd()}


_WORKER_INPUTS: dict = {}


def _job_inputs(shared):
    """(model, X tensor, y tensor) of the shared object: the model itself in this process, else
    rebuilt from its payload once per worker process."""
    import numpy as np
    import torch

    fp = shared["fingerprint"]
    if not isinstance(shared["model"], dict):
        return shared["model"], torch.from_numpy(shared["X"]), torch.from_numpy(shared["y"])
    if fp not in _WORKER_INPUTS:
        import io
        import os
        import sys

        from planner.pruning.model import load_factory

        _WORKER_INPUTS.clear()
        payload = shared["model"]
        if os.path.isdir(payload["cwd"]) and payload["cwd"] not in sys.path:
            sys.path.insert(0, payload["cwd"])
        if "factory" in payload:
            model = load_factory(payload["factory"], payload["kwargs"])
            model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in payload["state"].items()})
        else:
            model = torch.load(io.BytesIO(payload["pickled"]), weights_only=False)
        if _hash_model_and_data(model, shared["X"], shared["y"]) != fp:
            raise SensitivityError("the model rebuilt in a worker differs from the one measured (its factory "
                                   "does not give the same module structure)")
        model.eval()
        _WORKER_INPUTS[fp] = (model, torch.from_numpy(np.array(shared["X"])), torch.from_numpy(np.array(shared["y"])))
    return _WORKER_INPUTS[fp]


def _points_job(shared, spec) -> dict:
    """Loss and accuracy with only layer ``spec["layer"]`` pruned to each of ``spec["keeps"]``
    (``layer`` None: the dense model, one point); the weight is restored exactly afterwards."""
    import torch

    from planner.pruning.masks import top_k_mask
    from planner.pruning.model import resolve_weight

    model, Xt, yt = _job_inputs(shared)
    saved = torch.get_num_threads()
    if spec["threads"] is not None:
        torch.set_num_threads(spec["threads"])
    losses, accs = [], []
    try:
        with torch.no_grad():
            if spec["layer"] is None:
                loss, acc = _evaluate(model, Xt, yt)
                return {"loss": [rounded(loss)], "accuracy": [rounded(acc)]}
            module, param = resolve_weight(model, spec["layer"])
            weight = getattr(module, param)
            original = weight.detach().clone()
            if spec["criterion"] == "random":  # the layer's own stream: the same scores in every job
                g = torch.Generator().manual_seed(int(spec["seed"]) + int(spec["index"]))
                scores = torch.rand(original.shape, generator=g)
            try:
                for k in spec["keeps"]:
                    mask = top_k_mask(scores, k) if spec["criterion"] == "random" else \
                        top_k_mask(original, k, absolute=True)
                    weight.copy_(original * mask.to(original.dtype))
                    loss, acc = _evaluate(model, Xt, yt)
                    losses.append(rounded(loss))
                    accs.append(rounded(acc))
            finally:
                weight.copy_(original)
    finally:
        torch.set_num_threads(saved)
    return {"loss": losses, "accuracy": accs}
