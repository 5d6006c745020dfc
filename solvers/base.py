"""The small interface every backend implements, and the result it returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Sequence

from planner.allocation.problem import AllocationProblem


class SolveStatus(str, Enum):
    """The backend's real status: FEASIBLE means a time limit stopped it before a proof."""

    OPTIMAL = "OPTIMAL"
    FEASIBLE = "FEASIBLE"
    INFEASIBLE = "INFEASIBLE"
    UNKNOWN = "UNKNOWN"  # stopped before finding any solution or a proof of infeasibility

    def __str__(self) -> str:
        return self.value


@dataclass
class SolveResult:
    """``objective`` and ``best_bound`` are natural logs of the backend's objective (the
    max-plus model for the IP backends, the exact bound for ``exact``)."""

    solver: str
    status: SolveStatus
    choice: tuple[int, ...] | None = None
    objective: float | None = None
    best_bound: float | None = None
    pool: list[tuple[int, ...]] = field(default_factory=list)
    message: str = ""

    @property
    def has_solution(self) -> bool:
        return self.choice is not None


class Solver:
    """One integer-programming backend. Subclasses set ``name`` and ``objective``."""

    name: str = ""
    objective: str = "maxplus"  # or "exact"

    @classmethod
    def available(cls) -> bool:
        return True

    def solve(
        self,
        problem: AllocationProblem,
        *,
        time_limit: float | None = None,
        threads: int = 1,
        seed: int = 0,
        pool_size: int = 1,
        hint: Sequence[int] | None = None,
    ) -> SolveResult:
        raise NotImplementedError


def run_interruptible(run, stop):
    """``run()`` in a worker thread while the main thread waits, so Ctrl-C reaches Python at
    once: it calls ``stop()`` (the backend's stop-search), waits for the worker to return, and
    re-raises KeyboardInterrupt. Native solvers otherwise hold the signal until they finish, or
    replace Python's handler for good (CP-SAT does)."""
    import threading

    box: dict = {}

    def target():
        try:
            box["value"] = run()
        except BaseException as exc:  # handed to the main thread
            box["error"] = exc

    worker = threading.Thread(target=target, name="solver", daemon=True)
    worker.start()
    try:
        while worker.is_alive():
            worker.join(0.05)
    except KeyboardInterrupt:
        stop()
        worker.join(10)
        raise
    if "error" in box:
        raise box["error"]
    return box["value"]
