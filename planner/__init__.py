"""sparsity-planner: per-layer sparsity plans that maximize the expected linear-region bound.

Importing the package is cheap: OR-Tools, PuLP and torch are imported only where they are used.
"""

from __future__ import annotations

from .allocate import ExtraBudget, WeightLayer, optimize, plan
from .arch import PRESETS, Architecture
from .bound import BoundReport, dense_log2_bound, expected_bound, log2_bound
from .errors import (
    ArchitectureError,
    InfeasibleError,
    DensityError,
    InputDimError,
    PlanFormatError,
    PlannerError,
    ProblemError,
    RankModelError,
    SolverError,
    SolverUnavailableError,
)
from .plan import Plan, PlanLayer
from .problem import AllocationProblem, LayerOption, LinearBudget
from .rank import RANK_MODELS, RankCache, RankDistribution, rank_distribution

__version__ = "0.1.0"

__all__ = [
    "plan", "optimize", "InfeasibleError", "ExtraBudget", "WeightLayer", "Plan", "PlanLayer",
    "AllocationProblem", "LayerOption", "LinearBudget",
    "PRESETS", "Architecture", "BoundReport", "dense_log2_bound", "expected_bound", "log2_bound",
    "ArchitectureError", "DensityError", "InputDimError", "PlanFormatError", "PlannerError",
    "ProblemError", "RankModelError", "SolverError", "SolverUnavailableError",
    "RANK_MODELS", "RankCache", "RankDistribution", "rank_distribution",
]
