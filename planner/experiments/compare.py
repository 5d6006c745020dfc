"""The accuracy experiment: does bound-guided allocation beat the baselines?

For every seed: train the dense MLP once (SGD, cross-entropy); then for every density and
strategy: plan the per-layer keep-counts, prune a copy of the dense model by magnitude within
each layer (``apply_plan``), fine-tune it with the masks held fixed (the torch prune hook keeps
``weight = weight_orig * weight_mask``), finalize, and measure test accuracy and per-class
recall. The output layer stays dense under every strategy, as in the paper.

Strategies: ``lr-bound`` (the planner, default tie-break ``robust``), ``lr-bound:<tie-break>``
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
comparison) and a row does not depend on which other strategies or densities were run.
"""

from __future__ import annotations

import copy
import json
import math
import numbers
import time
from dataclasses import dataclass, field
from typing import Iterable, Sequence

from planner.errors import PlannerError

from planner.experiments import DEFAULT_DENSITIES, DEFAULT_STRATEGIES

REFERENCE = "lr-bound"
RESULT_FIELDS = ("strategy", "density", "seed", "accuracy", "accuracy_pruned", "dense_accuracy", "log2_bound",
                 "kept", "densities", "plan_densities", "per_class_recall")


class ExperimentError(PlannerError, ValueError):
    """The experiment's settings are inconsistent (strategy, densities, architecture, seeds)."""


# ------------------------------------------------------------------------------ strategies


#: what plain ``lr-bound`` means: ``plan``'s default bound-guided strategy
LR_BOUND_DEFAULT = "robust"


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
    ``lr-bound:sensitivity`` measures the dense ``model`` on ``calibration`` (inputs, labels)."""
    from planner.allocation.pipeline import plan as make_plan
    from planner.allocation.baselines import baseline_plan

    kind, _ = parse_strategy(strategy)
    if kind == "lr-bound":
        options = lr_bound_options(strategy)
        if options.get("objective") == "sensitivity":
            if model is None or calibration is None:
                raise ExperimentError(f"{strategy} needs the dense model and a calibration set")
            options["sensitivity"] = _sensitivity_table(model, calibration, density, arch)
        return make_plan(arch, density=density, rank_model=rank_model, seed=seed, cache=cache, workers=workers,
                         **options)
    return baseline_plan(kind, arch, density=density, weights=weights, rank_model=rank_model, seed=seed,
                         cache=cache)


class Calibration:
    """A calibration set (inputs, labels) for one dense model, with the sensitivity tables
    measured on it (one per lowest density, reused by every strategy and density)."""

    def __init__(self, X, y):
        self.X = X.numpy() if hasattr(X, "numpy") else X
        self.y = y.numpy() if hasattr(y, "numpy") else y
        self.tables: dict = {}


def _sensitivity_table(model, calibration, density, arch):
    """The dense model's sensitivity table on the calibration set, down to density / 32 (the
    grid's reach)."""
    from planner.allocation.request import layers_from_arch
    from planner.allocation.sensitivity import DEFAULT_MIN_DENSITY
    from planner.pruning.sensitivity import measure_sensitivity

    if not isinstance(calibration, Calibration):
        calibration = Calibration(*calibration)
    lowest = min(DEFAULT_MIN_DENSITY, density / 32)
    if lowest not in calibration.tables:
        layers = layers_from_arch(arch, prune_output=True)
        calibration.tables[lowest] = measure_sensitivity(model, calibration.X, calibration.y, min_density=lowest,
                                                         layers=layers)
    return calibration.tables[lowest]


# ------------------------------------------------------------------------------ progress


class _Progress:
    """The experiment's progress: a bar of runs and one of the current run's epochs on a terminal,
    one line per seed otherwise (:mod:`planner.progress`), or nothing."""

    def __init__(self, enabled: bool, total_runs: int, n_seeds: int):
        from planner.progress import reporter

        self.total_runs, self.runs, self.epochs = total_runs, 0, 1
        self._context = reporter(enabled, prefix="compare", interval=float("inf"), quiet_for=float("inf"))
        self._rep = None

    def __enter__(self):
        self._rep = self._context.__enter__()
        if self._rep is not None:
            self._rep.update("runs", 0, self.total_runs)
        return self

    def __exit__(self, *exc):
        return self._context.__exit__(*exc)

    def start(self, label: str, epochs: int) -> None:
        self.epochs = max(epochs, 1)
        if self._rep is not None:
            self._rep.update("epochs", 0, self.epochs, description=label)

    def epoch(self, done: int) -> None:
        if self._rep is not None:
            self._rep.update("epochs", done, self.epochs)

    def run_done(self) -> None:
        self.runs += 1
        if self._rep is not None:
            self._rep.update("runs", self.runs, self.total_runs)

    def line(self, text: str) -> None:
        if self._rep is not None:
            self._rep.line(text)


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
) -> Comparison:
    """Train, prune by every strategy at every density, fine-tune, measure: one row per
    (strategy, density, seed) with ``accuracy``, ``log2_bound``, realized per-layer
    ``densities``, ``per_class_recall`` and ``kept``. ``seeds`` is a count N (seeds 0..N-1) or a
    list; :func:`planner.experiments.report.write_outputs` writes the files of ``--out``.
    ``data`` (X_train, y_train, X_test, y_test) replaces loading ``dataset``. ``threads`` is torch's intra-op thread count during the run
    (restored afterwards; ``None`` leaves it): the layers are so small that one thread is
    fastest, and on a busy machine two threads were measured 15x slower than one."""
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
                        workers=workers, data=data)
    finally:
        torch.set_num_threads(saved_threads)


def _compare(dataset, arch, densities, strategies, seeds, *, epochs, finetune_epochs, lr, batch_size, momentum,
             data_dir, rank_model, progress, cache, workers, data) -> Comparison:
    import torch

    from planner.pruning.masks import apply_plan, finalize
    from planner.core.arch import Architecture
    from planner.experiments.data import CLASSES, FEATURES, load_dataset
    from planner.experiments.training import evaluate, make_mlp, train
    from planner.core.rank import RANK_MODELS

    net = Architecture.parse(arch) if isinstance(arch, str) else arch
    strategies = parse_strategies(strategies)
    densities = _check_densities(densities)
    seeds = _check_seeds(seeds)
    key = str(dataset).strip().lower()
    if data is None:
        if key not in FEATURES:
            load_dataset(key)  # raises the unknown-dataset error
        if net.input_size != FEATURES[key]:
            raise ExperimentError(f"--arch {net}: input size {net.input_size} does not match dataset {key}, "
                                  f"which has {FEATURES[key]} features (e.g. --arch {FEATURES[key]},100,100,"
                                  f"{CLASSES[key]})")
        if net.output_size != CLASSES[key]:
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

    X_tr, y_tr, X_te, y_te = load_dataset(key, data_dir) if data is None else data
    if X_tr.shape[1] != net.input_size:
        raise ExperimentError(f"--arch {net}: input size {net.input_size} does not match the data's "
                              f"{X_tr.shape[1]} features")
    n_classes = net.output_size
    X_tr, X_te = torch.as_tensor(X_tr, dtype=torch.float32), torch.as_tensor(X_te, dtype=torch.float32)
    y_tr, y_te = torch.as_tensor(y_tr, dtype=torch.int64), torch.as_tensor(y_te, dtype=torch.int64)

    from planner.allocation.request import layers_from_arch
    from planner.pruning.model import model_weights

    layer_names = net.layer_names
    config = {
        "dataset": key, "arch": list(net.sizes), "layers": layer_names, "densities": densities,
        "strategies": strategies, "seeds": seeds, "epochs": int(epochs), "finetune_epochs": int(finetune_epochs),
        "lr": float(lr), "batch_size": int(batch_size), "momentum": float(momentum), "optimizer": "SGD",
        "criterion": "magnitude", "output_layer": "dense", "rank_model": rank_model,
        "train_size": int(len(X_tr)), "test_size": int(len(X_te)), "torch": torch.__version__,
    }
    rows: list[dict] = []
    dense_rows: list[dict] = []
    started = time.perf_counter()
    total_runs = len(seeds) * (1 + len(densities) * len(strategies))
    with _Progress(progress, total_runs, len(seeds)) as bar:
        for si, seed in enumerate(seeds):
            t0 = time.perf_counter()
            bar.start(f"seed {seed}: dense training", epochs)
            dense = make_mlp(net.sizes, seed)
            train(dense, X_tr, y_tr, epochs=epochs, lr=lr, batch_size=batch_size, momentum=momentum,
                  generator=torch.Generator().manual_seed(_stream(seed, 0)), on_epoch=bar.epoch)
            dense_acc, dense_recall = evaluate(dense, X_te, y_te, n_classes)
            dense_rows.append({"seed": seed, "accuracy": dense_acc, "per_class_recall": dense_recall})
            bar.run_done()
            weights, _ = model_weights(dense, layers_from_arch(net))
            calibration = Calibration(X_tr, y_tr)
            for density in densities:
                for strategy in strategies:
                    bar.start(f"seed {seed}: {strategy} at {density:g}", finetune_epochs)
                    p = strategy_plan(strategy, net, density, seed=seed, rank_model=rank_model,
                                      weights=weights, cache=cache, workers=workers, model=dense,
                                      calibration=calibration)
                    model = copy.deepcopy(dense)
                    apply_plan(model, p, criterion="magnitude")
                    pruned_acc, _ = evaluate(model, X_te, y_te, n_classes)
                    train(model, X_tr, y_tr, epochs=finetune_epochs, lr=lr, batch_size=batch_size,
                          momentum=momentum, generator=torch.Generator().manual_seed(_stream(seed, 1)),
                          on_epoch=bar.epoch)
                    realized, kept = _realized(model, p)
                    finalize(model)
                    acc, recall = evaluate(model, X_te, y_te, n_classes)
                    rows.append({
                        "strategy": strategy, "density": density, "seed": seed, "accuracy": acc,
                        "accuracy_pruned": pruned_acc, "dense_accuracy": dense_acc,
                        "log2_bound": p.log2_bound, "kept": kept, "densities": realized,
                        "plan_densities": [layer.density for layer in p.layers], "per_class_recall": recall,
                    })
                    bar.run_done()
            bar.line(f"seed {seed} ({si + 1}/{len(seeds)}): dense accuracy {dense_acc:.4f}, "
                     f"{len(densities) * len(strategies)} pruned runs, {time.perf_counter() - t0:.1f} s")
    return Comparison(rows, dense_rows, config, time.perf_counter() - started)


def _stream(seed: int, stream: int) -> int:
    """Seed of one data-order stream of a seed (0: dense training, 1: fine-tuning)."""
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
