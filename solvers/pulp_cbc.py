"""PuLP backend (its bundled CBC) for the max-plus model of cpsat.py.

The model is the one of :mod:`solvers._maxplus_mip`. PuLP is imported inside
:meth:`available` and :meth:`solve` only. CBC runs as a subprocess on files that PuLP writes;
they go to a private temporary directory that is removed after the solve, whatever happens.
"""

from __future__ import annotations

import tempfile
import time
import warnings

from planner.errors import SolverError

from ._maxplus_mip import BOUND_SLACK_PER_LAYER, MaxPlusMip
from .base import SolveResult, SolveStatus, Solver


def _command(**options):
    """PuLP's bundled CBC (``PULP_CBC_CMD``; PuLP 3.3 flags it as deprecated for 4.0, which
    this backend cannot act on, so that one warning is silenced), or ``COIN_CMD`` (a CBC on the
    PATH) once PULP_CBC_CMD is gone."""
    import pulp

    if hasattr(pulp, "PULP_CBC_CMD"):
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*PULP_CBC_CMD is deprecated", category=DeprecationWarning)
            return pulp.PULP_CBC_CMD(**options)
    return pulp.COIN_CMD(**options)


def map_status(status: int, sol_status: int) -> SolveStatus:
    """PuLP's (status, sol_status) after a CBC solve -> SolveStatus.

    ``status`` alone lies: when CBC stops on a time (or node) limit with an integer solution,
    PuLP reads "Stopped on time - objective value ..." as status Optimal. ``sol_status`` tells
    them apart: LpSolutionOptimal only for CBC's "Optimal", LpSolutionIntegerFeasible for a
    stopped search with a solution. "Infeasible" and "Integer infeasible" are proofs. Anything
    else (stopped without an integer solution, unbounded, undefined) is UNKNOWN."""
    import pulp

    if sol_status == pulp.LpSolutionOptimal and status == pulp.LpStatusOptimal:
        return SolveStatus.OPTIMAL
    if sol_status == pulp.LpSolutionIntegerFeasible:
        return SolveStatus.FEASIBLE
    if status == pulp.LpStatusInfeasible:
        return SolveStatus.INFEASIBLE
    return SolveStatus.UNKNOWN


class PulpCbcSolver(Solver):
    name = "pulp"
    objective = "maxplus"

    @classmethod
    def available(cls) -> bool:
        try:
            return bool(_command(msg=False).available())
        except ImportError:
            return False
        except Exception:  # PulpSolverError on a broken install
            return False

    def solve(self, problem, *, time_limit=None, threads=1, seed=0, pool_size=1, hint=None) -> SolveResult:
        import pulp

        model = MaxPlusMip.build(problem)
        if model.trivially_infeasible:
            return SolveResult(self.name, SolveStatus.INFEASIBLE, message="a budget cannot hold for any choice")
        prob = pulp.LpProblem("maxplus", pulp.LpMaximize)

        def new_var(name, lo, hi, integer):
            cat = pulp.LpInteger if integer else pulp.LpContinuous
            if hasattr(prob, "add_variable"):  # PuLP >= 3.3; LpVariable(...) is deprecated there
                return prob.add_variable(name, lo, hi, cat=cat)
            return pulp.LpVariable(name, lo, hi, cat)

        variables = [new_var(*spec) for spec in zip(model.names, model.lower, model.upper, model.integer)]

        def add(row):
            if row is None:
                return
            expr = pulp.LpAffineExpression([(variables[v], a) for v, a in row.coefs])
            prob.addConstraint(expr == row.rhs if row.sense == "==" else expr <= row.rhs)

        for row in model.rows:
            add(row)
        prob.setObjective(pulp.LpAffineExpression([(variables[v], a) for v, a in model.objective.items()]))

        start = model.hint(hint)
        if start is not None:
            for var, val in zip(variables, start):
                var.setInitialValue(val)
        # CBC's random seeds treat 0 as "the time of day", so seed s is passed as s + 1 to keep
        # every run reproducible. randomCbcSeed drives CBC's heuristics, randomSeed CLP's.
        cbc_seed = abs(int(seed)) % 2_147_483_646 + 1
        options = [f"randomCbcSeed {cbc_seed}", f"randomSeed {cbc_seed}"]

        deadline = None if time_limit is None else time.monotonic() + float(time_limit)
        pool: list[tuple[int, ...]] = []
        first = None
        with tempfile.TemporaryDirectory(prefix="planner-pulp-") as workdir:
            for _ in range(max(1, int(pool_size))):
                limit = None
                if deadline is not None:
                    left = deadline - time.monotonic()
                    if left <= 0 and first is not None:
                        break  # the time limit covers the whole pool
                    limit = max(left, 0.01)
                command = _command(
                    msg=False, timeLimit=limit, threads=max(1, int(threads or 1)), options=options,
                    gapRel=0, warmStart=start is not None, keepFiles=False,
                )
                command.tmpDir = workdir
                try:
                    prob.solve(command)
                except pulp.PulpSolverError as exc:
                    if first is None:
                        raise SolverError(f"pulp: CBC failed: {exc}") from None
                    break
                mapped = map_status(prob.status, prob.sol_status)
                choice, value, bound = None, None, None
                message = f"CBC: {pulp.LpStatus.get(prob.status)} / {pulp.LpSolution.get(prob.sol_status)}"
                if mapped in (SolveStatus.OPTIMAL, SolveStatus.FEASIBLE):
                    values = [var.varValue for var in variables]
                    problem_found = model.check(values)
                    choice = model.choice_from(values) if problem_found is None else None
                    if choice is not None and problem.feasible(choice):
                        value = model.value(values)
                        # PuLP does not hand over CBC's dual bound: only a proof of optimality
                        # makes the objective a bound
                        if mapped is SolveStatus.OPTIMAL:
                            bound = value + len(model.choose) * BOUND_SLACK_PER_LAYER
                    else:  # never report a solution that does not check out
                        mapped, choice = SolveStatus.UNKNOWN, None
                        message += f"; its solution fails the check: {problem_found or 'bad x'}"
                if first is None:
                    first = (mapped, choice, value, bound, message)
                if choice is None:
                    break
                if choice not in pool:
                    pool.append(choice)
                add(model.nogood(choice))
                start = None
        mapped, choice, value, bound, message = first
        if choice is None:
            return SolveResult(self.name, mapped, message=message)
        return SolveResult(self.name, mapped, choice, value, bound, pool=pool, message=message)
