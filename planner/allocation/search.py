"""Steps 4 and 5 of the pipeline: solve the integer program, then polish on the exact bound.

:func:`solve` runs a backend from ``solvers/`` on the max-plus integer program; its optimum plus
ln(number of terms) is the certificate, an upper bound on the best exact bound over the grid.
:func:`polish` scores the backend's solutions (and the uniform choice) by the exact bound,
improves the best by a local search that moves keep-count between layers, and :func:`fill`
hands out the weights the grid left over so the plan keeps exactly the budget.
"""

from __future__ import annotations

from planner.allocation.problem import AllocationProblem, log_terms, maxplus_tables
from planner.allocation.request import apportion
from planner.allocation.scoring import Scorer
from planner.core.bound import LN2
from planner.errors import InfeasibleError

#: uniform is the floor: a plan may not be below it by more than float noise
NOT_WORSE_EPS_BITS = 1e-9


def report(cb, stage, done, total):
    if cb is not None:
        cb(stage, done, total)


def solve(problem: AllocationProblem, *, solver: str = "cpsat", uniform_choice=None, time_limit=None,
          threads: int = 1, seed: int = 0, pool_size: int = 1, progress=None):
    """The backend's integer program. Returns ``(solve_result, certificate_log2_upper)``;
    raises :class:`InfeasibleError` when it proves infeasibility or finds nothing."""
    from solvers import get_solver

    report(progress, "integer program", 0, 1)
    backend = get_solver(solver)
    result = backend.solve(problem, time_limit=time_limit, threads=threads, seed=seed,
                           pool_size=pool_size, hint=uniform_choice)
    report(progress, "integer program", 1, 1)
    if result.status.value == "INFEASIBLE":
        raise InfeasibleError(f"no allocation meets the budgets ({result.message or 'solver: infeasible'})")
    if not result.has_solution:
        raise InfeasibleError(f"solver {solver} found no solution ({result.status}; {result.message}); "
                              "raise --time-limit")
    certificate = None
    if result.best_bound is not None:
        upper = result.best_bound
        if backend.objective != "exact":
            upper += log_terms(maxplus_tables(problem))
        certificate = upper / LN2
    return result, certificate


def polish(problem: AllocationProblem, scorer: Scorer, starts, uniform_choice=None, progress=None):
    """The best feasible start under the tie-break, improved by local search; never below
    ``uniform_choice`` in exact bound."""
    floor_bits = None if uniform_choice is None else scorer.exact(uniform_choice)

    def admissible(choice):
        return floor_bits is None or scorer.exact(choice) >= floor_bits - NOT_WORSE_EPS_BITS

    starts = list(dict.fromkeys(list(starts) + ([uniform_choice] if uniform_choice else [])))
    best = None
    for c in starts:
        if problem.feasible(c) and admissible(c) and (best is None or scorer.better(c, best)):
            best = c
    return _local_search(problem, scorer, best, admissible, progress)


def optimize(
    problem: AllocationProblem,
    scorer: Scorer | None = None,
    *,
    solver: str = "cpsat",
    uniform_choice: tuple[int, ...] | None = None,
    time_limit: float | None = None,
    threads: int = 1,
    seed: int = 0,
    pool_size: int = 1,
    progress=None,
):
    """:func:`solve` then :func:`polish` on a built problem.

    Returns ``(choice, solve_result, certificate_log2_upper)``; raises :class:`InfeasibleError`
    when the backend proves infeasibility or finds nothing. No returned choice is below
    ``uniform_choice`` in exact bound.
    """
    scorer = scorer or Scorer(problem)
    result, certificate = solve(problem, solver=solver, uniform_choice=uniform_choice, time_limit=time_limit,
                                threads=threads, seed=seed, pool_size=pool_size, progress=progress)
    best = polish(problem, scorer, [result.choice, *result.pool], uniform_choice, progress)
    return best, result, certificate


def _neighbours(problem: AllocationProblem, choice: tuple[int, ...], reach: int = 2):
    """Choices that move one layer, or two layers in opposite directions, by up to ``reach``
    grid steps: shifting keep-count between layers."""
    n = len(choice)
    sizes = [len(layer.keeps) for layer in problem.layers]
    for a in range(n):
        for s in range(-reach, reach + 1):
            if s == 0 or not 0 <= choice[a] + s < sizes[a]:
                continue
            c = list(choice)
            c[a] += s
            yield tuple(c)
            for b in range(n):
                if b == a:
                    continue
                for t in range(1, reach + 1):
                    tb = -t if s > 0 else t
                    if 0 <= choice[b] + tb < sizes[b]:
                        c2 = list(c)
                        c2[b] += tb
                        yield tuple(c2)


def _local_search(problem, scorer, choice, admissible, progress, max_rounds: int = 500):
    """Best-improvement search over :func:`_neighbours` until no neighbour is better."""
    for round_ in range(max_rounds):
        report(progress, "local search", round_, max_rounds)
        best = choice
        for nb in dict.fromkeys(_neighbours(problem, choice)):
            if problem.feasible(nb) and admissible(nb) and scorer.better(nb, best):
                best = nb
        if best == choice:
            break
        choice = best
    report(progress, "local search", max_rounds, max_rounds)
    return choice


def fill(problem, keeps, chain, extras, max_keep):
    """Hand out the weights the grid left over, in proportion to the planned keep-counts and
    within every layer's room and every further budget (``extras``: per-weight costs of the
    chain layers and the limit left), so the plan keeps exactly the budget unless a layer
    maximum or another budget binds first."""
    decision = [i for i, w in enumerate(chain) if not w.frozen]
    room = {i: min(max_keep[chain[i].name], chain[i].size) - keeps[i] for i in decision}
    left = problem.budgets[0].limit - sum(keeps[i] for i in decision)
    extra_left = [limit - sum(keeps[i] * costs[i] for i in decision) for costs, limit in extras]
    while left > 0:
        open_ = [i for i in decision if room[i] > 0]
        if not open_:
            break
        shares = apportion(left, [max(keeps[i], 1) for i in open_])
        moved = 0
        for i, share in zip(open_, shares):
            add = min(share, room[i])
            for e, (costs, _) in enumerate(extras):
                if costs[i] > 0:
                    add = min(add, extra_left[e] // costs[i])
            for e, (costs, _) in enumerate(extras):
                extra_left[e] -= add * costs[i]
            keeps[i] += add
            room[i] -= add
            moved += add
        left -= moved
        if moved == 0:
            break
    return keeps
