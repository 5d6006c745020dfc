"""Brute force over every combination of candidates: the reference the other backends meet."""

from __future__ import annotations

from planner.errors import SolverError
from planner.allocation.problem import maxplus_log_value, maxplus_tables

from .base import SolveResult, SolveStatus, Solver

#: Above this many combinations brute force refuses and points at an IP backend.
MAX_COMBINATIONS = 250_000


class ExactSolver(Solver):
    """Enumerates all combinations. ``objective="exact"`` (default) maximizes the exact bound;
    ``objective="maxplus"`` the max-plus model the IP backends solve (their test oracle)."""

    name = "exact"
    objective = "exact"

    def __init__(self, objective: str = "exact", max_combinations: int = MAX_COMBINATIONS):
        if objective not in ("exact", "maxplus"):
            raise SolverError(f"exact solver: objective must be 'exact' or 'maxplus', got {objective!r}")
        self.objective = objective
        self.max_combinations = max_combinations

    def solve(self, problem, *, time_limit=None, threads=1, seed=0, pool_size=1, hint=None) -> SolveResult:
        n = problem.n_combinations
        if n > self.max_combinations:
            raise SolverError(
                f"the exact solver enumerates all {n} combinations, more than its limit of "
                f"{self.max_combinations}; use --solver cpsat (or ortools-mip, pulp)"
            )
        if self.objective == "exact":
            value = problem.log_bound
        else:
            tables = maxplus_tables(problem)

            def value(choice):
                return maxplus_log_value(tables, choice, problem.input_dim)

        scored = []
        for choice in problem.all_choices():
            if problem.feasible(choice):
                scored.append((value(choice), choice))
        if not scored:
            return SolveResult(self.name, SolveStatus.INFEASIBLE, message="no combination meets every budget")
        # best value first; among equal values the lexicographically smallest choice
        scored.sort(key=lambda vc: (-vc[0], vc[1]))
        best_value, best = scored[0]
        return SolveResult(
            self.name, SolveStatus.OPTIMAL, tuple(best), best_value, best_value,
            pool=[tuple(c) for _, c in scored[: max(1, pool_size)]],
        )
