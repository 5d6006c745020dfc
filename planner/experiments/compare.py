"""The accuracy experiment: does bound-guided allocation beat the baselines?

For every seed: train the dense MLP once (SGD, cross-entropy, optional weight decay); then for
every density, strategy and criterion: plan the per-layer keep-counts, prune a copy of the dense
model within each layer by the criterion (``apply_plan``: magnitude, gradient, undecayed or
random), fine-tune it with the masks held fixed (the torch prune hook keeps ``weight =
weight_orig * weight_mask``), finalize, and measure test accuracy, per-class recall, the recall
distortion against the dense model and the SVCCA of every hidden layer against it
(:mod:`planner.experiments.distortion`). The output layer stays dense under every strategy, as
in the paper.

Strategies: ``lr-bound`` (the planner with plan's default tie-break, ``auto``), ``lr-bound:<tie-break>``
(``robust``, ``robust-analytic``, ``prior:uniform``, ``prior:erk``, ``none``), any of those with
``@<floor>`` (the bound within that many bits, or percent, of the best; e.g.
``lr-bound:prior:erk@2``), ``lr-bound:sensitivity[@<floor>]`` (objective sensitivity, measured on
the dense model and the training set) and the baselines of :mod:`planner.allocation.baselines`
(``uniform``, ``uniform-plus``, ``erk``, ``global``, ``lamp``; ``global`` and ``lamp`` rank the
trained weights).

Determinism: the same arguments give the same rows. The model's initial weights come from
``torch.manual_seed(seed)``; every pass over the data draws its order from its own generator:
the dense training from one seeded by ``seed``, every fine-tuning run from one seeded by
``seed`` alone, so all strategies and densities of a seed see the same batches (a paired
comparison) and a row does not depend on which other strategies, densities or criteria were
run; the random criterion's scores come from a third generator seeded by ``seed``.
"""

from __future__ import annotations

import json
import math
import numbers
import time
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np

from planner.errors import PlannerError

from planner.experiments import DEFAULT_DENSITIES, DEFAULT_STRATEGIES
from planner.experiments.distortion import SVCCA_VARIANCE

REFERENCE = "lr-bound"
RESULT_FIELDS = ("strategy", "density", "seed", "criterion", "accuracy", "accuracy_pruned", "dense_accuracy",
                 "log2_bound", "kept", "pruning_ratio", "densities", "plan_densities", "per_class_recall",
                 "normalized_balance", "intensification_ratio", "intensification_slope",
                 "intensification_slope_pruned", "svcca")

#: the within-layer criteria of compare (planner.pruning.masks); gradient and undecayed are scored
#: on the training set, undecayed with eps = the run's weight decay
COMPARE_CRITERIA = ("magnitude", "gradient", "undecayed", "random")
DEFAULT_CRITERIA = ("magnitude",)


class ExperimentError(PlannerError, ValueError):
    """The experiment's settings are inconsistent (strategy, densities, architecture, seeds)."""


# ------------------------------------------------------------------------------ strategies


#: what plain ``lr-bound`` means: ``plan``'s default bound-guided strategy
LR_BOUND_DEFAULT = "auto"


def lr_bound_options(name: str) -> dict:
    """The plan options of an ``lr-bound`` variant: ``lr-bound`` (plan's default),
    ``lr-bound:<tie-break>``, ``lr-bound:<tie-break>@<floor>`` (the bound within ``floor`` bits,
    or ``floor%``, of the best grid plan, the tie-break choosing among those plans),
    ``lr-bound:sensitivity`` and ``lr-bound:sensitivity@<floor>`` (objective sensitivity,
    measured on the dense model and the training set)."""
    text = str(name).strip()
    kind, _, rest = text.partition(":")
    if kind != "lr-bound":
        raise ExperimentError(f"{text!r} is not an lr-bound strategy")
    variant, at, floor = (rest or LR_BOUND_DEFAULT).partition("@")
    options: dict = {}
    if at:
        from planner.allocation.secondary import BoundFloor
        from planner.errors import ProblemError

        try:
            BoundFloor.parse(floor)
        except ProblemError as exc:
            raise ExperimentError(f"strategy {text!r}: {exc}") from None
        options["bound_floor"] = floor
    if variant == "sensitivity":
        return {"objective": "sensitivity", **options}
    return {"tie_break": variant, **options}


def parse_strategy(name: str) -> tuple[str, str | None]:
    """``(kind, variant)``: ``("lr-bound", "robust")`` for ``lr-bound``, ``("lr-bound",
    "<variant>")`` for ``lr-bound:<variant>`` (a tie-break or ``sensitivity``, optionally
    ``@<floor>``), ``(baseline, None)`` for a baseline."""
    from planner.allocation.request import TIE_BREAKS
    from planner.allocation.baselines import BASELINES

    text = str(name).strip()
    kind, _, tie = text.partition(":")
    if kind == "lr-bound":
        tie = tie or LR_BOUND_DEFAULT
        variant = tie.partition("@")[0]
        if variant not in TIE_BREAKS and variant != "sensitivity":
            raise ExperimentError(f"unknown tie-break in strategy {text!r}; use lr-bound:"
                                  f"{'|'.join((*TIE_BREAKS, 'sensitivity'))}[@floor]")
        lr_bound_options(text)
        return kind, tie
    if kind in BASELINES and not tie:
        return kind, None
    choices = ["lr-bound", *(f"lr-bound:{t}" for t in TIE_BREAKS), "lr-bound:sensitivity", *BASELINES]
    raise ExperimentError(f"unknown strategy {text!r}; choose from {', '.join(choices)} "
                          "(lr-bound variants also take @<bound floor>, e.g. lr-bound:prior:erk@2)")


def _auto_key(strategy: str) -> dict:
    """What tie-break ``auto`` stands for, in the job keys of the strategies that use it: a job
    store filled when ``lr-bound`` meant something else is not read back as this default."""
    kind, variant = parse_strategy(strategy)
    if kind == "lr-bound" and variant.partition("@")[0] == "auto":
        from planner.allocation import AUTO_WITH_WEIGHTS

        return {"auto": "@".join(AUTO_WITH_WEIGHTS)}
    return {}


def parse_strategies(strategies: str | Iterable[str]) -> list[str]:
    items = strategies.split(",") if isinstance(strategies, str) else list(strategies)
    out = []
    for s in items:
        s = str(s).strip()
        if not s:
            raise ExperimentError("empty strategy name in the list")
        parse_strategy(s)
        if s not in out:
            out.append(s)
    if not out:
        raise ExperimentError("give at least one strategy")
    return out


def parse_criteria(criteria: str | Iterable[str]) -> list[str]:
    """The within-layer criteria of a comparison, in the given order, duplicates dropped."""
    items = criteria.split(",") if isinstance(criteria, str) else list(criteria)
    out = []
    for c in items:
        c = str(c).strip()
        if c not in COMPARE_CRITERIA:
            raise ExperimentError(f"unknown criterion {c!r}; choose from {', '.join(COMPARE_CRITERIA)}")
        if c not in out:
            out.append(c)
    if not out:
        raise ExperimentError("give at least one criterion")
    return out


def _check_densities(densities) -> list[float]:
    from planner.core.rank import check_density

    if isinstance(densities, (int, float)):
        densities = [densities]
    out = []
    for d in densities:
        d = check_density(d, "density")
        if d not in out:
            out.append(d)
    if not out:
        raise ExperimentError("give at least one density")
    return out


def _check_seeds(seeds) -> list[int]:
    if isinstance(seeds, numbers.Integral) and not isinstance(seeds, bool):
        if seeds < 1:
            raise ExperimentError(f"the number of seeds must be at least 1, got {seeds}")
        return list(range(int(seeds)))
    out = []
    for s in seeds:
        if isinstance(s, bool) or not isinstance(s, numbers.Integral) or s < 0:
            raise ExperimentError(f"seeds must be non-negative integers, got {s!r}")
        if int(s) not in out:
            out.append(int(s))
    if not out:
        raise ExperimentError("give at least one seed")
    return out


# ------------------------------------------------------------------------------ plans


def strategy_plan(strategy: str, arch, density: float, *, seed: int, rank_model: str = "sampled",
                  weights=None, cache=None, workers: int | None = None, model=None, calibration=None):
    """The plan of one strategy at one global density (output layer frozen dense).
    ``lr-bound:sensitivity`` measures the dense ``model`` on ``calibration`` (inputs, labels);
    ``lr-bound:magnitude`` / ``lr-bound:lamp`` rank the dense ``weights``."""
    from planner.allocation.pipeline import plan as make_plan
    from planner.allocation.baselines import baseline_plan

    kind, _ = parse_strategy(strategy)
    if kind == "lr-bound":
        options = lr_bound_options(strategy)
        if options.get("objective") == "sensitivity":
            if model is None or calibration is None:
                raise ExperimentError(f"{strategy} needs the dense model and a calibration set")
            options["sensitivity"] = _sensitivity_table(model, calibration, density, arch, cache)
        if options.get("tie_break") == "auto" and weights is not None:
            options["weights"] = weights  # the dense model is trained: auto ranks its weights
        if options.get("tie_break") in ("magnitude", "lamp"):
            if weights is None:
                raise ExperimentError(f"{strategy} ranks the dense model's trained weights: none were given")
            options["weights"] = weights
        return make_plan(arch, density=density, rank_model=rank_model, seed=seed, cache=cache, workers=workers,
                         **options)
    return baseline_plan(kind, arch, density=density, weights=weights, rank_model=rank_model, seed=seed,
                         cache=cache)


def _sensitivity_table(model, calibration, density, arch, cache=None):
    """The dense model's sensitivity table on ``calibration`` (inputs, labels), down to
    density / 32 (the grid's reach); measured once per model, data and lowest density and kept
    in the rank cache's directory, so the jobs of one seed and density share it."""
    from planner.allocation.request import layers_from_arch
    from planner.allocation.sensitivity import DEFAULT_MIN_DENSITY
    from planner.core.rank import default_cache
    from planner.pruning.sensitivity import measure_sensitivity

    X, y = (a.numpy() if hasattr(a, "numpy") else a for a in calibration)
    return measure_sensitivity(model, X, y, min_density=min(DEFAULT_MIN_DENSITY, density / 32),
                               layers=layers_from_arch(arch, prune_output=True), cache=(cache or default_cache()).disk)


# ------------------------------------------------------------------------------ progress


class _Progress:
    """A bar over the jobs with the time left on a terminal, a line every 10 s otherwise
    (:mod:`planner.progress`), or nothing. Jobs read back from ``--out`` are not counted: the
    bar and its estimate are over the jobs this run does."""

    def __init__(self, enabled: bool, total: int, reused: int):
        from planner.progress import reporter

        self._context = reporter(enabled, prefix="compare", eta=True)
        self._rep = None
        self.total, self.done, self.reused = total, 0, reused

    def __enter__(self):
        self._rep = self._context.__enter__()
        self._show()
        return self

    def __exit__(self, *exc):
        return self._context.__exit__(*exc)

    def result(self, index, job, result, from_store: bool) -> None:
        if not from_store:
            self.done += 1
            self._show()

    def _show(self) -> None:
        if self._rep is not None:
            name = "jobs" + (f" ({self.reused} done before)" if self.reused else "")
            self._rep.update("jobs", self.done, self.total, description=name)


# ------------------------------------------------------------------------------ the experiment


@dataclass
class Comparison:
    """Rows (one per strategy, density, seed), the dense model's accuracy per seed, the config."""

    rows: list[dict]
    dense: list[dict]
    config: dict
    elapsed_seconds: float = field(default=0.0, compare=False)

    def to_dict(self) -> dict:
        return {"results": self.rows, "dense": self.dense, "config": self.config}

    @classmethod
    def load(cls, path) -> "Comparison":
        """Read back a ``results.json`` (e.g. to redraw its plots with :func:`write_outputs`)."""
        try:
            with open(path, encoding="utf-8") as fh:
                data = json.load(fh)
        except (OSError, ValueError) as exc:
            raise ExperimentError(f"cannot read results {path}: {exc}") from None
        if not isinstance(data, dict) or not isinstance(data.get("results"), list):
            raise ExperimentError(f"{path} is not a results.json of sparsity-planner compare")
        return cls(data["results"], data.get("dense", []), data.get("config", {}))


def compare(
    dataset: str = "digits",
    arch: str = "64,100,100,10",
    densities: Sequence[float] = DEFAULT_DENSITIES,
    strategies: str | Sequence[str] = DEFAULT_STRATEGIES,
    seeds: int | Sequence[int] = 1,
    *,
    epochs: int = 15,
    finetune_epochs: int = 15,
    lr: float = 0.01,
    batch_size: int = 128,
    momentum: float = 0.0,
    data_dir=None,
    rank_model: str = "sampled",
    progress: bool = True,
    cache=None,
    workers: int | None = None,
    threads: int | None = 1,
    data: tuple | None = None,
    executor: str = "local",
    n_jobs: int | None = None,
    address: str | None = None,
    resume_dir=None,
    criteria: str | Sequence[str] = DEFAULT_CRITERIA,
    weight_decay: float = 0.0,
    model: str | None = None,
    model_kwargs: dict | None = None,
    input_shape: Sequence[int] | None = None,
) -> Comparison:
    """Train, prune by every strategy at every density and criterion, fine-tune, measure: one row
    per (seed, density, strategy, criterion) with ``accuracy``, ``log2_bound``, realized per-layer
    ``densities``, ``per_class_recall``, ``kept``, the recall distortion against the same seed's
    dense model (``normalized_balance``, ``intensification_ratio`` per class,
    ``intensification_slope`` alpha_t; :mod:`planner.experiments.distortion`), and ``svcca``
    (per hidden layer, dense vs pruned on the test set). ``criteria``: which weights a layer
    keeps (:data:`COMPARE_CRITERIA`; ``gradient`` and ``undecayed`` scored on the training set);
    ``weight_decay``: SGD weight decay of the dense training and the fine-tuning, and the eps of
    ``undecayed``. ``seeds`` is a count N (seeds 0..N-1) or a
    list; :func:`planner.experiments.report.write_outputs` writes the files of ``--out``.
    ``data`` (X_train, y_train, X_test, y_test) replaces loading ``dataset``. ``threads`` is torch's intra-op thread count during the run
    (restored afterwards; ``None`` leaves it): the layers are so small that one thread is
    fastest, and on a busy machine two threads were measured 15x slower than one.

    The runs are jobs of :func:`planner.experiments.executor.run_jobs`: one dense training per
    seed, then one job per (seed, density, strategy). ``executor`` (``local`` or ``ray``),
    ``n_jobs`` and ``address`` say where they run (``local`` with one job: in this process, the
    default); the rows are the same, in the same order, for every executor and ``n_jobs``.
    ``resume_dir`` keeps every finished job (``--out``'s ``jobs/``): a rerun skips them; it
    refuses a directory holding jobs of other settings (:class:`~planner.experiments.executor.
    StoreMismatchError`). ``cache`` and ``workers`` apply to jobs run in this process; worker
    processes use their default rank cache and plan in one process each.

    ``model`` (``package.module:factory``, with ``model_kwargs`` and ``input_shape``) replaces
    ``arch``: the factory's model (a CNN, say) is trained and planned through the planner's model
    route (:mod:`planner.experiments.models`)."""
    import torch

    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise ExperimentError(f"threads must be a positive integer, got {threads!r}")
    saved_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        return _compare(dataset, arch, densities, strategies, seeds, epochs=epochs,
                        finetune_epochs=finetune_epochs, lr=lr, batch_size=batch_size, momentum=momentum,
                        data_dir=data_dir, rank_model=rank_model, progress=progress, cache=cache,
                        workers=workers, data=data, threads=threads, executor=executor, n_jobs=n_jobs,
                        address=address, resume_dir=resume_dir, criteria=criteria, weight_decay=weight_decay,
                        model=model, model_kwargs=model_kwargs, input_shape=input_shape)
    finally:
        torch.set_num_threads(saved_threads)


def _compare(dataset, arch, densities, strategies, seeds, *, epochs, finetune_epochs, lr, batch_size, momentum,
             data_dir, rank_model, progress, cache, workers, data, threads, executor, n_jobs, address,
             resume_dir, criteria=DEFAULT_CRITERIA, weight_decay=0.0, model=None, model_kwargs=None,
             input_shape=None) -> Comparison:
    import torch

    from planner.core.arch import Architecture
    from planner.experiments.data import CLASSES, FEATURES, load_dataset
    from planner.experiments.executor import EXECUTORS, Executor, Job, ResultStore
    from planner.core.rank import RANK_MODELS

    net = None if model is not None else Architecture.parse(arch) if isinstance(arch, str) else arch
    strategies = parse_strategies(strategies)
    criteria = parse_criteria(criteria)
    densities = _check_densities(densities)
    seeds = _check_seeds(seeds)
    key = str(dataset).strip().lower()
    if data is None:
        if key not in FEATURES:
            load_dataset(key)  # raises the unknown-dataset error
        if net is not None and net.input_size != FEATURES[key]:
            raise ExperimentError(f"--arch {net}: input size {net.input_size} does not match dataset {key}, "
                                  f"which has {FEATURES[key]} features (e.g. --arch {FEATURES[key]},100,100,"
                                  f"{CLASSES[key]})")
        if net is not None and net.output_size != CLASSES[key]:
            raise ExperimentError(f"--arch {net}: output size {net.output_size} does not match dataset {key}, "
                                  f"which has {CLASSES[key]} classes")
    if rank_model not in RANK_MODELS:
        raise ExperimentError(f"unknown rank model {rank_model!r}; choose one of {', '.join(RANK_MODELS)}")
    for what, value, low in (("epochs", epochs, 1), ("fine-tune epochs", finetune_epochs, 0),
                             ("batch size", batch_size, 1)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
            raise ExperimentError(f"{what} must be an integer >= {low}, got {value!r}")
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise ExperimentError(f"the learning rate must be a positive number, got {lr!r}")
    if not (isinstance(momentum, (int, float)) and 0 <= momentum < 1):
        raise ExperimentError(f"momentum must be in [0, 1), got {momentum!r}")
    if isinstance(weight_decay, bool) or not (isinstance(weight_decay, (int, float)) and math.isfinite(weight_decay)
                                              and weight_decay >= 0):
        raise ExperimentError(f"the weight decay must be a finite number >= 0, got {weight_decay!r}")
    if executor not in EXECUTORS:
        raise ExperimentError(f"unknown executor {executor!r}; choose one of {', '.join(EXECUTORS)}")

    X_tr, y_tr, X_te, y_te = load_dataset(key, data_dir) if data is None else data
    if net is not None and X_tr.shape[1] != net.input_size:
        raise ExperimentError(f"--arch {net}: input size {net.input_size} does not match the data's "
                              f"{X_tr.shape[1]} features")
    arrays = tuple(np.ascontiguousarray(a) for a in (X_tr, y_tr, X_te, y_te))
    in_process = executor == "local" and (n_jobs or 1) == 1
    shared = {"fingerprint": _fingerprint(arrays), "data": arrays, "cache": cache if in_process else None,
              "workers": workers if in_process else (workers or 1)}

    if model is not None:
        from planner.experiments.models import check_model, model_settings

        if list(criteria) != ["magnitude"] or weight_decay:
            raise ExperimentError("--criteria and --weight-decay work with --arch; with --model the layers are "
                                  "pruned by magnitude, without weight decay")

        classes = CLASSES[key] if data is None else int(max(np.max(y_tr), np.max(y_te))) + 1
        checked = check_model(model, model_kwargs, key, int(np.prod(X_tr.shape[1:])), classes, input_shape)
        shared["cwd"] = __import__("os").getcwd()
    layer_names = net.layer_names if net is not None else checked["layers"]
    config = {
        "dataset": key, "arch": list(net.sizes) if net is not None else None, "layers": layer_names, "densities": densities,
        "strategies": strategies, "seeds": seeds, "epochs": int(epochs), "finetune_epochs": int(finetune_epochs),
        "lr": float(lr), "batch_size": int(batch_size), "momentum": float(momentum), "optimizer": "SGD",
        "criterion": ",".join(criteria), "criteria": criteria, "weight_decay": float(weight_decay),
        "svcca_variance": SVCCA_VARIANCE, "output_layer": "dense", "rank_model": rank_model,
        "train_size": int(len(X_tr)), "test_size": int(len(X_te)), "torch": torch.__version__,
    }
    # what every job's result depends on besides its own seed, strategy and density: a store
    # holding jobs of other settings is refused (meta), and each job is keyed by all of it
    fixed = {"command": "compare", "data": shared["fingerprint"], "dataset": key,
             "arch": list(net.sizes) if net is not None else None,
             "epochs": int(epochs), "finetune_epochs": int(finetune_epochs), "lr": float(lr),
             "batch_size": int(batch_size), "momentum": float(momentum), "weight_decay": float(weight_decay),
             "rank_model": rank_model, "threads": threads, "torch": torch.__version__}
    dense_fn, pruned_fn = _dense_job, _pruned_job
    if model is not None:  # the factory's model instead of the MLP: its own jobs, the same sweep
        from planner.experiments.models import model_dense_job, model_pruned_job

        dense_fn, pruned_fn = model_dense_job, model_pruned_job
        for d in (config, fixed):
            d.pop("arch")
        config.update(model_settings(model, model_kwargs, checked), prunable=checked["prunable"])
        config["output_layer"] = "dense (" + ", ".join(checked["frozen"]) + ")"
        fixed.update(model_settings(model, model_kwargs, checked), classes=classes)
    store = ResultStore(resume_dir, fixed) if resume_dir is not None else None
    dense_jobs = [Job(dense_fn, (dict(fixed, seed=seed),), spec=dict(fixed, job="dense", seed=seed),
                      label=f"seed {seed}: dense training") for seed in seeds]
    pruned_specs = [dict(fixed, job="pruned", seed=seed, density=density, strategy=strategy, criterion=criterion,
                         **_auto_key(strategy))
                    for seed in seeds for density in densities for strategy in strategies for criterion in criteria]

    def pruned_job(spec, trained=None) -> Job:
        return Job(pruned_fn, (spec, trained), spec=spec,
                   label=f"seed {spec['seed']}: {spec['strategy']} at {spec['density']:g}"
                         + ("" if spec["criterion"] == "magnitude" else f" ({spec['criterion']})"))

    every = dense_jobs + [pruned_job(spec) for spec in pruned_specs]  # the keys do not depend on `trained`
    reused = sum(store.load(job)[0] for job in every) if store is not None else 0
    started = time.perf_counter()
    with _Progress(progress, len(every) - reused, reused) as bar, \
            Executor(executor, n_jobs, address, shared) as runner:
        dense = runner.run(dense_jobs, store=store, on_result=bar.result)
        trained = {d["seed"]: d for d in dense}
        reference = _dense_reference(dense, spec=fixed, X_test=arrays[2])
        rows = runner.run([pruned_job(spec, trained[spec["seed"]]) for spec in pruned_specs], store=store,
                          on_result=bar.result)
    dense_rows = [{"seed": d["seed"], "accuracy": d["accuracy"], "per_class_recall": d["per_class_recall"],
                   **reference[d["seed"]]} for d in dense]
    return Comparison(rows, dense_rows, config, time.perf_counter() - started)


# ------------------------------------------------------------------------------ the jobs


def _fingerprint(arrays) -> str:
    """SHA-256 of the data (shapes, dtypes, bytes): jobs of other data are never reused."""
    import hashlib

    h = hashlib.sha256()
    for a in arrays:
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


_TENSORS: dict = {}


def _tensors(shared):
    """The shared data as tensors, converted once per process."""
    import torch

    fp = shared["fingerprint"]
    if fp not in _TENSORS:
        _TENSORS.clear()
        X_tr, y_tr, X_te, y_te = (np.array(a) for a in shared["data"])  # a copy: Ray's arrays are read-only
        _TENSORS[fp] = (torch.as_tensor(X_tr, dtype=torch.float32), torch.as_tensor(y_tr, dtype=torch.int64),
                        torch.as_tensor(X_te, dtype=torch.float32), torch.as_tensor(y_te, dtype=torch.int64))
    return _TENSORS[fp]


class _Threads:
    """torch's intra-op thread count for the duration of a job (``None``: leave it), and the
    BLAS's of numpy / scipy (SVCCA's SVDs) through threadpoolctl where it is installed (it comes
    with scikit-learn): on a busy two-core machine a 450x100 SVD took 0.2 s with OpenBLAS's two
    threads and 9 ms with one."""

    def __init__(self, threads):
        self.threads, self.saved, self.blas = threads, None, None

    def __enter__(self):
        import torch

        self.saved = torch.get_num_threads()
        if self.threads is not None:
            torch.set_num_threads(self.threads)
            try:
                from threadpoolctl import threadpool_limits
            except ImportError:
                pass
            else:
                self.blas = threadpool_limits(limits=self.threads, user_api="blas")

    def __exit__(self, *exc):
        import torch

        torch.set_num_threads(self.saved)
        if self.blas is not None:
            self.blas.restore_original_limits()
            self.blas = None


def _check_torch(spec) -> None:
    import torch

    if torch.__version__ != spec["torch"]:
        raise ExperimentError(f"this worker runs torch {torch.__version__}, the sweep torch {spec['torch']}: "
                              "results would differ; install the same torch on every node")


def _encode_state(model) -> dict:
    import base64

    return {name: {"dtype": str(t.numpy().dtype), "shape": list(t.shape),
                   "data": base64.b64encode(np.ascontiguousarray(t.detach().numpy()).tobytes()).decode("ascii")}
            for name, t in model.state_dict().items()}


def _decode_state(state: dict) -> dict:
    import base64

    import torch

    return {name: torch.from_numpy(np.frombuffer(base64.b64decode(v["data"]), dtype=np.dtype(v["dtype"]))
                                   .reshape(v["shape"]).copy()) for name, v in state.items()}


def _dense_job(shared, spec) -> dict:
    """Train the dense model of one seed: its test accuracy, recall and weights."""
    import torch

    from planner.experiments.training import evaluate, make_mlp, train

    _check_torch(spec)
    X_tr, y_tr, X_te, y_te = _tensors(shared)
    seed = spec["seed"]
    with _Threads(spec["threads"]):
        model = make_mlp(spec["arch"], seed)
        train(model, X_tr, y_tr, epochs=spec["epochs"], lr=spec["lr"], batch_size=spec["batch_size"],
              momentum=spec["momentum"], weight_decay=spec["weight_decay"],
              generator=torch.Generator().manual_seed(_stream(seed, 0)))
        acc, recall = evaluate(model, X_te, y_te, spec["arch"][-1])
    return {"seed": seed, "accuracy": acc, "per_class_recall": recall, "state": _encode_state(model)}


def _dense_model(spec, dense):
    """The trained dense model of a :func:`_dense_job` result."""
    from planner.experiments.training import make_mlp

    model = make_mlp(spec["arch"], dense["seed"])
    model.load_state_dict(_decode_state(dense["state"]))
    return model


def _dense_reference(dense, *, spec, X_test) -> dict:
    """{seed: {"reference_seed", "svcca_reference"}}: SVCCA of every hidden layer between the dense
    model of a seed and that of the next seed of the run (the last with the first), the level
    two equally good, independently trained networks reach; None with a single seed."""
    import torch

    if len(dense) < 2:
        return {d["seed"]: {"reference_seed": None, "svcca_reference": None} for d in dense}
    from planner.experiments.distortion import layer_svcca, svcca

    X = torch.as_tensor(np.array(X_test), dtype=torch.float32)
    with _Threads(spec["threads"]):
        if spec.get("model") is not None:  # a factory's model: its chain layers through hooks
            from planner.experiments.models import chain_activations, dense_model_and_layers

            X = X.reshape(len(X), *spec["input_shape"])
            pairs = [dense_model_and_layers(spec, d) for d in dense]
            acts = [chain_activations(m, X, names) for m, names in pairs]

            def similarity(i, j):
                return [svcca(a, b) for a, b in zip(acts[i], acts[j])]
        else:
            models = [_dense_model(spec, d) for d in dense]

            def similarity(i, j):
                return layer_svcca(models[i], models[j], X)
        out = {}
        for i, d in enumerate(dense):
            j = (i + 1) % len(dense)
            out[d["seed"]] = {"reference_seed": dense[j]["seed"], "svcca_reference": similarity(i, j)}
    return out


def _pruned_job(shared, spec, dense) -> dict:
    """Plan one strategy at one density, prune the seed's dense model by one criterion,
    fine-tune, measure: a row."""
    import torch

    from planner.experiments.distortion import (hidden_activations, intensification_ratios,
                                                intensification_slope, normalized_balance, svcca)
    from planner.allocation.request import layers_from_arch
    from planner.core.arch import Architecture
    from planner.experiments.training import evaluate, make_mlp, train
    from planner.pruning.masks import apply_plan, finalize
    from planner.pruning.model import model_weights

    _check_torch(spec)
    X_tr, y_tr, X_te, y_te = _tensors(shared)
    seed, density, strategy, n_classes = spec["seed"], spec["density"], spec["strategy"], spec["arch"][-1]
    criterion, eps = spec["criterion"], spec["weight_decay"]
    net = Architecture.parse(",".join(map(str, spec["arch"])))
    with _Threads(spec["threads"]):
        model = make_mlp(spec["arch"], seed)
        model.load_state_dict(_decode_state(dense["state"]))
        weights, _ = model_weights(model, layers_from_arch(net))
        p = strategy_plan(strategy, net, density, seed=seed, rank_model=spec["rank_model"], weights=weights,
                          cache=shared["cache"], workers=shared["workers"], model=model,
                          calibration=(X_tr, y_tr))
        dense_acts = hidden_activations(model, X_te)
        apply_plan(model, p, criterion=criterion, calibration=X_tr, labels=y_tr, weight_decay=eps,
                   generator=torch.Generator().manual_seed(_stream(seed, 2)))
        pruned_acc, pruned_recall = evaluate(model, X_te, y_te, n_classes)
        train(model, X_tr, y_tr, epochs=spec["finetune_epochs"], lr=spec["lr"], batch_size=spec["batch_size"],
              momentum=spec["momentum"], weight_decay=eps,
              generator=torch.Generator().manual_seed(_stream(seed, 1)))
        realized, kept = _realized(model, p)
        finalize(model)
        acc, recall = evaluate(model, X_te, y_te, n_classes)
        similarity = [svcca(a, b) for a, b in zip(dense_acts, hidden_activations(model, X_te))]
    prunable = sum(layer.size for layer in p.layers if not layer.frozen)
    dense_recall, dense_acc = dense["per_class_recall"], dense["accuracy"]
    return {
        "strategy": strategy, "density": density, "seed": seed, "criterion": criterion, "accuracy": acc,
        "accuracy_pruned": pruned_acc, "dense_accuracy": dense_acc,
        "log2_bound": p.log2_bound, "kept": kept, "pruning_ratio": prunable / kept if kept else None,
        "densities": realized, "plan_densities": [layer.density for layer in p.layers], "per_class_recall": recall,
        "normalized_balance": normalized_balance(recall, acc) if acc > 0 else None,
        "intensification_ratio": intensification_ratios(dense_recall, dense_acc, recall, acc) if acc > 0 else None,
        "intensification_slope": intensification_slope(dense_recall, dense_acc, recall, acc),
        "intensification_slope_pruned": intensification_slope(dense_recall, dense_acc, pruned_recall, pruned_acc),
        "svcca": similarity,
    }


def _stream(seed: int, stream: int) -> int:
    """Seed of one random stream of a seed (0: dense training's data order, 1: fine-tuning's,
    2: the random criterion's scores)."""
    return (int(seed) << 4) | stream


def _realized(model, plan) -> tuple[list[float], int]:
    """Per-layer kept fraction read from the attached masks (1.0 for an unpruned layer), and the
    kept count of the plan's prunable layers."""
    densities, kept = [], 0
    for layer in plan.layers:
        module = model.get_submodule(layer.name)
        mask = getattr(module, "weight_mask", None)
        count = int(mask.sum()) if mask is not None else int(module.weight.numel())
        densities.append(count / layer.size)
        if not layer.frozen:
            kept += count
    return densities, kept
