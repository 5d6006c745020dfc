"""OR-Tools CP-SAT backend for the max-plus model (the default)."""

from __future__ import annotations

import math
import time

from planner.allocation.problem import maxplus_tables

from .base import SolveResult, SolveStatus, Solver, run_interruptible

#: CP-SAT works over integers: every ln-value of the model (ln P, ln C(n, j)) is multiplied by
#: this and rounded, here and nowhere else. 1e4 keeps the rounding error of one term below
#: 5e-5 nats, far below the 0.01-bit resolution of the tie-break.
OBJECTIVE_SCALE = 10_000


def _scaled(value: float) -> int:
    return int(round(value * OBJECTIVE_SCALE))


class CpSatSolver(Solver):
    name = "cpsat"
    objective = "maxplus"

    @classmethod
    def available(cls) -> bool:
        try:
            import ortools.sat.python.cp_model  # noqa: F401
        except ImportError:
            return False
        return True

    def solve(self, problem, *, time_limit=None, threads=1, seed=0, pool_size=1, hint=None) -> SolveResult:
        from ortools.sat.python import cp_model

        tables = maxplus_tables(problem)
        model = cp_model.CpModel()
        choose = []  # choose[l][c]
        objective = []
        prev_d = None  # d_l as a variable (d_1 is the constant input_dim)
        for i, (layer, t) in enumerate(zip(problem.layers, tables)):
            x = [model.new_bool_var(f"x[{i},{c}]") for c in range(len(layer.keeps))]
            model.add_exactly_one(x)
            choose.append(x)
            rank_terms = []
            for c, (ranks, logs) in enumerate(zip(t.ranks, t.log_probs)):
                z = [model.new_bool_var(f"z[{i},{c},{k}]") for k in ranks]
                model.add(sum(z) == x[c])
                rank_terms += [k * zb for k, zb in zip(ranks, z)]
                objective += [_scaled(w) * zb for w, zb in zip(logs, z)]
            top = len(t.j_table) - 1
            k = model.new_int_var(0, t.width, f"k[{i}]")
            model.add(k == sum(rank_terms))
            j = model.new_int_var(0, top, f"j[{i}]")
            model.add(j <= k)
            if prev_d is None:
                model.add(j <= problem.input_dim)
            else:
                model.add(j <= prev_d)
            # the j-term is concave in j, so its chords bound it exactly at integer j and give
            # the LP relaxation something to work with (an element constraint was 3-7x slower)
            table = [_scaled(v) for v in t.j_table]
            term = model.new_int_var(min(table), max(table), f"t[{i}]")
            for a in range(top):
                model.add(term <= table[a] + (table[a + 1] - table[a]) * (j - a))
            if top == 0:
                model.add(term <= table[0])
            objective.append(term)
            if i + 1 < len(problem.layers):
                d = model.new_int_var(0, t.next_dim, f"d[{i + 1}]")
                model.add(d <= t.width - j)
                model.add(d <= k)
                if prev_d is not None:
                    model.add(d <= prev_d)
                prev_d = d
        for b in problem.budgets:
            model.add(sum(cost * xc for costs, x in zip(b.costs, choose) for cost, xc in zip(costs, x)) <= b.limit)
        model.maximize(sum(objective))
        if hint is not None:
            for x, c in zip(choose, hint):
                for ci, xc in enumerate(x):
                    model.add_hint(xc, ci == c)

        solver = cp_model.CpSolver()
        solver.parameters.num_workers = max(1, int(threads))
        solver.parameters.random_seed = int(seed)
        # Ctrl-C is ours (run_interruptible stops the search): CP-SAT's own handler would end the
        # search as if it had finished and stay installed, killing the process at the next Ctrl-C
        solver.parameters.catch_sigint_signal = False
        # wall-clock seconds for the whole pool. CP-SAT's deterministic time would make a limited
        # plan reproducible, but its units were 5.6 wall seconds each on a 20-layer MLP here, so a
        # "60" ran 335 s; a plan the limit cut short says so instead (status FEASIBLE, message)
        deadline = None if time_limit is None else time.monotonic() + float(time_limit)
        limited = False

        class _Seen(cp_model.CpSolverSolutionCallback):
            """Keeps the solutions met on the way, with their objective: a free pool."""

            def __init__(self):
                super().__init__()
                self.found: list[tuple[float, tuple[int, ...]]] = []

            def on_solution_callback(self):
                self.found.append((self.objective_value, tuple(
                    next(c for c, xc in enumerate(x) if self.boolean_value(xc)) for x in choose)))

        found: dict[tuple[int, ...], float] = {}
        first = None
        for _ in range(max(1, pool_size)):
            if deadline is not None:  # the limit covers the whole pool
                left = deadline - time.monotonic()
                if left <= 0 and first is not None:
                    break
                solver.parameters.max_time_in_seconds = max(left, 0.01)
            seen = _Seen()
            status = run_interruptible(lambda: solver.solve(model, seen), solver.stop_search)
            if deadline is not None and status != cp_model.OPTIMAL and time.monotonic() >= deadline - 0.05:
                limited = True
            for value, c in seen.found:
                found[c] = max(found.get(c, -math.inf), value)
            if status not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
                if first is None:
                    first = (status, None, None, None)
                break
            choice = tuple(next(c for c, xc in enumerate(x) if solver.boolean_value(xc)) for x in choose)
            found[choice] = solver.objective_value
            if first is None:
                first = (status, choice, solver.objective_value, solver.best_objective_bound)
            # no-good cut: the next solve must change at least one layer's candidate
            model.add(sum(x[c] for x, c in zip(choose, choice)) <= len(choose) - 1)
            model.clear_hints()
        # every distinct solution seen, best first (ties: smaller choice first); the intermediate
        # ones cost nothing and give the exact polish more starting points
        pool = sorted(found, key=lambda c: (-found[c], c))
        status, choice, obj, bound = first
        mapped = {
            cp_model.OPTIMAL: SolveStatus.OPTIMAL,
            cp_model.FEASIBLE: SolveStatus.FEASIBLE,
            cp_model.INFEASIBLE: SolveStatus.INFEASIBLE,
        }.get(status, SolveStatus.UNKNOWN)
        if status == cp_model.MODEL_INVALID:
            from planner.errors import SolverError

            raise SolverError(f"cpsat: model invalid: {model.validate() or 'no reason given (a parameter out of range?)'}")
        reached = f"time limit of {time_limit:g} s reached" if limited else ""
        if choice is None:
            return SolveResult(self.name, mapped, message=reached or solver.status_name(status))
        # back in nats; a solution has two rounded terms per layer (its z and its j-term), so
        # this slack keeps the bound an upper bound on the unrounded model
        slack = len(choose) / OBJECTIVE_SCALE
        return SolveResult(
            self.name, mapped, choice, obj / OBJECTIVE_SCALE, bound / OBJECTIVE_SCALE + slack, pool=pool,
            message=reached,
        )
