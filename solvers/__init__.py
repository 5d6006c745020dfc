"""Integer-programming backends for the allocation problem, behind one registry.

Each backend lives in its own module and imports its library lazily, so a missing optional
library only matters when that backend is asked for.
"""

from __future__ import annotations

import importlib

from planner.errors import SolverError, SolverUnavailableError

from .base import SolveResult, SolveStatus, Solver

#: name -> (module, class); the first is the default.
REGISTRY: dict[str, tuple[str, str]] = {
    "cpsat": ("solvers.cpsat", "CpSatSolver"),
    "ortools-mip": ("solvers.ortools_mip", "OrToolsMipSolver"),
    "pulp": ("solvers.pulp_cbc", "PulpCbcSolver"),
    "exact": ("solvers.exact", "ExactSolver"),
}
DEFAULT_SOLVER = "cpsat"


def solver_class(name: str) -> type[Solver]:
    if name not in REGISTRY:
        raise SolverError(f"unknown solver {name!r}; choose one of {', '.join(REGISTRY)}")
    module, cls = REGISTRY[name]
    try:
        return getattr(importlib.import_module(module), cls)
    except ImportError as exc:
        raise SolverUnavailableError(f"solver {name!r} needs a library that is not installed: {exc}") from None


def get_solver(name: str = DEFAULT_SOLVER, **options) -> Solver:
    """An instance of the named backend; lists the valid names when the name is wrong."""
    cls = solver_class(name)
    if not cls.available():
        raise SolverUnavailableError(f"solver {name!r} is not available on this machine")
    return cls(**options)


def available_solvers() -> list[str]:
    names = []
    for name in REGISTRY:
        try:
            if solver_class(name).available():
                names.append(name)
        except SolverError:
            pass
    return names


__all__ = ["REGISTRY", "DEFAULT_SOLVER", "SolveResult", "SolveStatus", "Solver", "get_solver",
           "available_solvers", "solver_class"]
