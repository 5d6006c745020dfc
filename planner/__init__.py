"""sparsity-planner: per-layer sparsity plans that maximize the expected linear-region bound.

Where things live (and where an extension goes)::

    planner/
      core/          the mathematics: architectures (arch), rank distributions of pruned
                     matrices (rank), Theorem 1's bound (bound), the on-disk cache (cache).
                     A new rank model is a function in core/rank.py and a name in RANK_MODELS.
      allocation/    from a request to a plan: request (PlanRequest, validate), grid
                     (candidate keep-counts), problem (the integer program's data), scoring
                     (the tie-breaks), search (solve and polish), pipeline (the steps, plan()),
                     baselines (uniform, ERK, global, LAMP), planfile (Plan and its JSON).
                     A new strategy is a function in allocation/baselines.py and a name in
                     BASELINES; a new budget or objective is a field of PlanRequest and a
                     constraint or score in problem.py/scoring.py.
      pruning/       the torch side: reading a model's layers (model), masks and criteria
                     (masks; a new criterion is a branch there and a name in CRITERIA),
                     elimination-compensation (compensation), other pruners' formats
                     (export; a new format is a writer there and a name in FORMATS).
      experiments/   compare (train, prune, fine-tune, tables and plots), data (digits,
                     MNIST, Fashion-MNIST, CIFAR-10 from local files), regions (exact
                     linear-region counts).
      cli/           one module per command; cli/__init__.py holds the group and main().
    solvers/         integer-programming backends behind one registry; a new solver is a
                     module there with a Solver subclass and a line in REGISTRY.

Importing the package is cheap: the names below are loaded on first use, and scipy, OR-Tools,
PuLP and torch only where they are needed.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

#: public name -> module that defines it
_EXPORTS = {
    "plan": "planner.allocation.pipeline",
    "PlanRequest": "planner.allocation.request",
    "ExtraBudget": "planner.allocation.request",
    "WeightLayer": "planner.allocation.request",
    "optimize": "planner.allocation.search",
    "Plan": "planner.allocation.planfile",
    "PlanLayer": "planner.allocation.planfile",
    "AllocationProblem": "planner.allocation.problem",
    "LayerOption": "planner.allocation.problem",
    "LinearBudget": "planner.allocation.problem",
    "PRESETS": "planner.core.arch",
    "Architecture": "planner.core.arch",
    "BoundReport": "planner.core.bound",
    "dense_log2_bound": "planner.core.bound",
    "expected_bound": "planner.core.bound",
    "log2_bound": "planner.core.bound",
    "RANK_MODELS": "planner.core.rank",
    "RankCache": "planner.core.rank",
    "RankDistribution": "planner.core.rank",
    "rank_distribution": "planner.core.rank",
    **{name: "planner.errors" for name in (
        "ArchitectureError", "DensityError", "InfeasibleError", "InputDimError", "PlanFormatError",
        "PlannerError", "ProblemError", "RankModelError", "SolverError", "SolverUnavailableError")},
}

__all__ = list(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'planner' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))
