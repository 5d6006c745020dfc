"""OR-Tools MIP backend (``pywraplp``, SCIP or else CBC) for the max-plus model of cpsat.py.

The model is the one of :mod:`solvers._maxplus_mip` (identical to CP-SAT's, but with the
objective in nats: no scaling). OR-Tools is imported inside :meth:`available` and
:meth:`solve` only.
"""

from __future__ import annotations

import math
import time

from planner.errors import SolverError

from ._maxplus_mip import BOUND_SLACK_PER_LAYER, MaxPlusMip
from .base import SolveResult, SolveStatus, Solver, run_interruptible

#: Backends of ``pywraplp.Solver.CreateSolver``, in order of preference.
ENGINES = ("SCIP", "CBC")


def _create(engine: str | None = None):
    """(engine name, a fresh pywraplp solver), or (None, None) when neither engine exists."""
    from ortools.linear_solver import pywraplp

    for name in (engine,) if engine else ENGINES:
        solver = pywraplp.Solver.CreateSolver(name)
        if solver is not None:
            return name, solver
    return None, None


def status_map() -> dict[int, SolveStatus]:
    """pywraplp result status -> SolveStatus. FEASIBLE is what pywraplp reports when a limit
    stopped the search with a solution but no proof; NOT_SOLVED (limit hit without a
    solution), ABNORMAL, UNBOUNDED and MODEL_INVALID all become UNKNOWN."""
    from ortools.linear_solver import pywraplp

    return {
        pywraplp.Solver.OPTIMAL: SolveStatus.OPTIMAL,
        pywraplp.Solver.FEASIBLE: SolveStatus.FEASIBLE,
        pywraplp.Solver.INFEASIBLE: SolveStatus.INFEASIBLE,
    }


def _load(solver, model: MaxPlusMip, engine: str, threads: int, seed: int):
    """Put ``model`` into a fresh pywraplp solver; returns its variables and objective."""
    inf = solver.infinity()
    variables = [
        solver.IntVar(lo, hi, name) if integer else solver.NumVar(lo, hi, name)
        for name, lo, hi, integer in zip(model.names, model.lower, model.upper, model.integer)
    ]
    for row in model.rows:
        ct = solver.Constraint(row.rhs if row.sense == "==" else -inf, row.rhs)
        for v, a in row.coefs:
            ct.SetCoefficient(variables[v], a)
    objective = solver.Objective()
    for v, a in model.objective.items():
        objective.SetCoefficient(variables[v], a)
    objective.SetMaximization()
    # threads: SCIP takes it (more than one makes OR-Tools run SCIP's concurrent solver);
    # OR-Tools' CBC rejects the option on stderr ("No match for threads"): it runs on one.
    if engine == "SCIP" and threads and int(threads) > 1:
        solver.SetNumThreads(int(threads))
    # seed: SCIP's randomization/randomseedshift. pywraplp has no seed for CBC (its
    # SetSolverSpecificParametersAsString is unsupported there), so CBC ignores the seed.
    if engine == "SCIP":
        solver.SetSolverSpecificParametersAsString(
            f"randomization/randomseedshift = {abs(int(seed)) % 2_147_483_647}"
        )
    return variables, objective


def _status_name(raw: int) -> str:
    from ortools.linear_solver import pywraplp

    for name in ("OPTIMAL", "FEASIBLE", "INFEASIBLE", "UNBOUNDED", "ABNORMAL", "MODEL_INVALID", "NOT_SOLVED"):
        if getattr(pywraplp.Solver, name) == raw:
            return name
    return f"status {raw}"


class OrToolsMipSolver(Solver):
    name = "ortools-mip"
    objective = "maxplus"

    def __init__(self, engine: str | None = None):
        if engine is not None and engine not in ENGINES:
            raise SolverError(f"ortools-mip: engine must be one of {', '.join(ENGINES)}, got {engine!r}")
        self.engine = engine

    @classmethod
    def available(cls) -> bool:
        try:
            name, _ = _create()
        except ImportError:
            return False
        return name is not None

    def solve(self, problem, *, time_limit=None, threads=1, seed=0, pool_size=1, hint=None) -> SolveResult:
        from ortools.linear_solver import pywraplp

        engine, solver = _create(self.engine)
        if solver is None:
            raise SolverError(f"ortools-mip: OR-Tools has no {self.engine or ' or '.join(ENGINES)} solver here")
        model = MaxPlusMip.build(problem)
        if model.trivially_infeasible:
            return SolveResult(self.name, SolveStatus.INFEASIBLE, message="a budget cannot hold for any choice")

        params = pywraplp.MPSolverParameters()
        # the default relative gap (1e-4) would stop ~0.005 nats short on a 50-nat objective
        params.SetDoubleParam(pywraplp.MPSolverParameters.RELATIVE_MIP_GAP, 0.0)
        start = model.hint(hint)
        deadline = None if time_limit is None else time.monotonic() + float(time_limit)
        mapped_of = status_map()
        pool: list[tuple[int, ...]] = []
        first = None
        for _ in range(max(1, int(pool_size))):
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0 and first is not None:
                    break  # the time limit covers the whole pool
            if solver is None:
                # a fresh solver per pool solve: re-solving a modified model is not reliable
                # (SCIP with threads > 1 came back FEASIBLE, bound 1e20, on the second solve)
                _, solver = _create(engine)
            variables, objective = _load(solver, model, engine, threads, seed)
            if start is not None:
                solver.SetHint(variables, start)
                start = None  # only the first solve is hinted, as in cpsat.py
            if deadline is not None:
                solver.SetTimeLimit(max(1, int(left * 1000)))
            raw = run_interruptible(lambda: solver.Solve(params), solver.InterruptSolve)
            mapped = mapped_of.get(raw, SolveStatus.UNKNOWN)
            choice, value, bound, message = None, None, None, f"{engine}: {_status_name(raw)}"
            if mapped in (SolveStatus.OPTIMAL, SolveStatus.FEASIBLE):
                values = [var.solution_value() for var in variables]
                problem_found = model.check(values)
                choice = model.choice_from(values)
                if problem_found is None and choice is not None and problem.feasible(choice):
                    value = objective.Value()
                    b = objective.BestBound()
                    # SCIP reports a missing bound as its infinity, 1e20, not as inf
                    if math.isfinite(b) and abs(b) < 1e19:
                        bound = b + len(model.choose) * BOUND_SLACK_PER_LAYER
                else:  # never report a solution that does not check out
                    mapped, choice = SolveStatus.UNKNOWN, None
                    message = f"{engine}: reported a solution that fails the check: {problem_found or 'bad x'}"
            if first is None:
                first = (mapped, choice, value, bound, message)
            if choice is None:
                break
            if choice not in pool:
                pool.append(choice)
            model.nogood(choice)
            solver = None
        mapped, choice, value, bound, message = first
        if choice is None:
            return SolveResult(self.name, mapped, message=message)
        return SolveResult(self.name, mapped, choice, value, bound, pool=pool, message=message)
