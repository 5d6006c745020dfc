"""Neuron plans (``plan --granularity neurons``): how many neurons each hidden layer of an MLP
keeps under a budget on the weights that remain.

Removing a neuron of hidden layer l removes its row of W_l, its bias, and its column of
W_{l+1}; the network that remains is a *dense* MLP of widths w = (n0, w_1, ..., w_L, n_out),
and its bound is the dense bound of that narrower network (a dense layer's rank is
min(w_l, w_{l-1}) with probability 1; :func:`planner.core.bound.dense_log2_bound`). Its weight
count is

    params(w) = sum_{l=1}^{L+1} w_{l-1} w_l        (w_0 = n0, w_{L+1} = n_out)

and every weight of every layer is prunable (the output layer loses the columns of the removed
neurons), so ``--density D`` keeps at most ``floor(D * sum_l n_{l-1} n_l)`` weights.
``max_flops`` caps the multiply-accumulates per sample, which for Linear layers is the same
count, so the tighter of the two binds.

The bound is non-decreasing in every width (the index set of the bound's sum only grows, and so
does every binomial), so an optimal plan gives the last hidden layer the largest width the
budget leaves. Two routes choose the widths:

``exhaustive``
    every (w_1, ..., w_{L-1}) with the last width filled, scored by the exact dense bound, when
    there are at most :data:`EXHAUSTIVE_LIMIT` of them: the best integer plan.
``cpsat``
    otherwise, OR-Tools CP-SAT on a geometric grid of widths (about ``grid`` per layer, with the
    full width): widths, products w_{l-1} w_l (CP-SAT's multiplication constraint) under the
    budget, and the bound's max-plus form, max over the index set J(w) of sum_l log2 C(w_l, j_l)
    (j_l <= w_m for m <= l, j_l <= d0, j_i + j_l <= w_i for i < l: the recurrence of
    docs/theory.md unrolled with point-mass ranks). Every plan on the grid has an exact bound of
    at most that optimum plus log2 |J| <= sum_l log2(w_l + 1): the certificate. The solution is
    then improved by a local search on integer widths with the exact bound.

Ties (equal bound to 1e-9 bits) go to the plan keeping more weights, then to the
lexicographically larger widths, so the same input gives the same plan.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Sequence

from planner.errors import DensityError, InfeasibleError, ProblemError

EXHAUSTIVE_LIMIT = 20_000
GRANULARITIES = ("weights", "neurons")
NODE_STRATEGIES = ("lr-bound", "uniform")
NODE_SOLVERS = ("auto", "exhaustive", "cpsat")
_SCALE = 1000  # CP-SAT objective units per bit


@dataclass(frozen=True)
class NodeProblem:
    """An MLP's sizes (n0, n_1..n_L, n_out), its layer names, the weight budget and d0."""

    sizes: tuple
    names: tuple
    budget: int
    input_dim: int

    @property
    def hidden(self) -> tuple:
        return self.sizes[1:-1]

    @property
    def total(self) -> int:
        return sum(a * b for a, b in zip(self.sizes, self.sizes[1:]))


def params(sizes: Sequence[int]) -> int:
    """Weights of a dense MLP with these sizes."""
    return sum(int(a) * int(b) for a, b in zip(sizes, sizes[1:]))


def node_log2_bound(problem: NodeProblem, widths: Sequence[int]) -> float:
    """The dense log2 bound of the network with hidden widths ``widths``."""
    from planner.core.bound import dense_log2_bound

    return dense_log2_bound([problem.sizes[0], *widths], problem.input_dim)


def fill_last(problem: NodeProblem, head: Sequence[int]) -> int | None:
    """The largest last hidden width that fits the budget after widths ``head`` (None: none)."""
    n0, nout = problem.sizes[0], problem.sizes[-1]
    prefix = params([n0, *head])
    prev = head[-1] if head else n0
    room = problem.budget - prefix
    w = min(problem.hidden[-1], room // (prev + nout)) if room > 0 else 0
    return int(w) if w >= 1 else None


def _key(problem: NodeProblem, widths, bound):
    return (round(bound, 9), params([problem.sizes[0], *widths, problem.sizes[-1]]), tuple(widths))


def _score(problem: NodeProblem, head):
    """The plan whose hidden widths but the last are ``head``, the last filled from the budget
    left: ``(key, widths)``, or None when nothing is left for it."""
    last = fill_last(problem, head)
    if last is None:
        return None
    widths = (*head, last)
    return _key(problem, widths, node_log2_bound(problem, widths)), widths


def solve_exhaustive(problem: NodeProblem):
    """(widths, log2 bound, number of plans scored): the best integer plan."""
    best, scored = None, 0
    for head in itertools.product(*(range(1, n + 1) for n in problem.hidden[:-1])):
        found = _score(problem, head)
        if found is None:
            continue
        scored += 1
        key = found[0]
        if best is None or key > best:
            best = key
    if best is None:
        raise InfeasibleError(_infeasible(problem))
    return best[2], best[0], scored


def count_exhaustive(problem: NodeProblem) -> int:
    return math.prod(problem.hidden[:-1])


def width_grid(n: int, grid: int) -> list[int]:
    """About ``grid`` widths 1..n on a geometric scale, always with 1 and n."""
    if n <= grid:
        return list(range(1, n + 1))
    values = {1, n}
    for i in range(grid):
        values.add(max(1, min(n, round(n ** (i / (grid - 1))))))
    return sorted(values)


def log2_binom(n: int, j: int) -> float:
    return (math.lgamma(n + 1) - math.lgamma(j + 1) - math.lgamma(n - j + 1)) / math.log(2.0)


def maxplus_cpsat(problem: NodeProblem, grids: Sequence[Sequence[int]], *, time_limit=None, threads: int = 1,
                  seed: int = 0):
    """CP-SAT on the grid: (widths, max-plus value in bits, status name). The max-plus value is
    max over J(w) of sum_l log2 C(w_l, j_l), in units of 1/_SCALE bit, rounded down per term."""
    from ortools.sat.python import cp_model

    n0, nout, d0 = problem.sizes[0], problem.sizes[-1], problem.input_dim
    m = cp_model.CpModel()
    L = len(problem.hidden)
    w, j, terms = [], [], []
    for l, values in enumerate(grids):
        values = [int(v) for v in values]
        idx = m.NewIntVar(0, len(values) - 1, f"i{l}")
        wl = m.NewIntVarFromDomain(cp_model.Domain.FromValues(values), f"w{l}")
        m.AddElement(idx, values, wl)
        top = max(values)
        jl = m.NewIntVar(0, min(top, d0), f"j{l}")
        table = []
        for v in values:
            table += [int(math.floor(log2_binom(v, t) * _SCALE)) if t <= v else -10**12 for t in range(top + 1)]
        flat = m.NewIntVar(0, len(table) - 1, f"f{l}")
        m.Add(flat == idx * (top + 1) + jl)
        tl = m.NewIntVar(min(table), max(table), f"t{l}")
        m.AddElement(flat, table, tl)
        w.append(wl)
        j.append(jl)
        terms.append(tl)
    products = [n0 * w[0], w[-1] * nout]
    for l in range(1, L):
        p = m.NewIntVar(1, problem.hidden[l - 1] * problem.hidden[l], f"p{l}")
        m.AddMultiplicationEquality(p, [w[l - 1], w[l]])
        products.append(p)
    m.Add(sum(products) <= problem.budget)
    for l in range(L):
        for i in range(l + 1):
            m.Add(j[l] <= w[i])
        for i in range(l):
            m.Add(j[i] + j[l] <= w[i])
    m.Maximize(sum(terms))
    solver = cp_model.CpSolver()
    solver.parameters.num_workers = threads
    solver.parameters.random_seed = seed
    if time_limit is not None:
        solver.parameters.max_time_in_seconds = float(time_limit)
    status = solver.Solve(m)
    if status not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        raise InfeasibleError(_infeasible(problem))
    widths = tuple(int(solver.Value(v)) for v in w)
    upper = solver.BestObjectiveBound() / _SCALE + len(grids) * 1.0 / _SCALE  # rounding down, per term
    return widths, solver.ObjectiveValue() / _SCALE, upper, solver.StatusName(status)


def local_search(problem: NodeProblem, widths, *, max_rounds: int = 200):
    """Move one hidden width (all but the last) by +-1, 2, 4, ... and refill the last; keep a
    move when the exact bound rises. Returns (widths, bound, plans scored)."""
    widths = tuple(widths)
    best = _key(problem, widths, node_log2_bound(problem, widths))
    scored = 1
    for _ in range(max_rounds):
        improved = False
        for l in range(len(widths) - 1):
            step = 1
            while step <= problem.hidden[l]:
                for delta in (step, -step):
                    v = widths[l] + delta
                    if not 1 <= v <= problem.hidden[l]:
                        continue
                    found = _score(problem, (*widths[:l], v, *widths[l + 1:-1]))
                    if found is None:
                        continue
                    scored += 1
                    key, cand = found
                    if key > best:
                        best, widths, improved = key, cand, True
                step *= 2
        if not improved:
            break
    return widths, best[0], scored


def uniform_widths(problem: NodeProblem) -> tuple:
    """The same kept fraction t of every hidden layer (w_l = max(1, floor(t n_l))), the largest
    t whose network fits the budget."""
    n0, nout = problem.sizes[0], problem.sizes[-1]
    cuts = sorted({k / n for n in problem.hidden for k in range(1, n + 1)})

    def widths_at(t):
        return tuple(max(1, min(n, math.floor(t * n + 1e-12))) for n in problem.hidden)

    lo, hi = 0, len(cuts) - 1
    if params([n0, *widths_at(cuts[0]), nout]) > problem.budget:
        raise InfeasibleError(_infeasible(problem))
    while lo < hi:  # the largest feasible cut: params rise with t
        mid = (lo + hi + 1) // 2
        if params([n0, *widths_at(cuts[mid]), nout]) <= problem.budget:
            lo = mid
        else:
            hi = mid - 1
    return widths_at(cuts[lo])


def _infeasible(problem: NodeProblem) -> str:
    least = params([problem.sizes[0], *([1] * len(problem.hidden)), problem.sizes[-1]])
    return (f"a budget of {problem.budget} weights cannot keep one neuron per hidden layer "
            f"(that needs {least} of {problem.total})")


def build_problem(sizes, names, *, density=None, keep=None, max_flops=None, input_dim=None) -> NodeProblem:
    from planner.core.rank import check_density

    sizes = tuple(int(s) for s in sizes)
    if len(sizes) < 3:
        raise ProblemError("a neuron plan needs at least one hidden layer")
    total = params(sizes)
    if (density is None) == (keep is None):
        raise DensityError("give exactly one of density and keep")
    if density is not None:
        budget = math.floor(check_density(density) * total + 1e-9)
    else:
        if isinstance(keep, bool) or not isinstance(keep, int) or keep < 0:
            raise DensityError(f"keep must be a non-negative integer, got {keep!r}")
        budget = min(keep, total)
    if max_flops is not None:
        budget = min(budget, int(max_flops))
    d0 = sizes[0] if input_dim is None else int(input_dim)
    if not 1 <= d0 <= sizes[0]:
        from planner.errors import InputDimError

        raise InputDimError(f"input dimension d0 must be between 1 and the input size {sizes[0]}, got {d0}")
    problem = NodeProblem(sizes, tuple(names), budget, d0)
    least = params([sizes[0], *([1] * (len(sizes) - 2)), sizes[-1]])
    if budget < least:
        raise InfeasibleError(_infeasible(problem))
    return problem


def plan_nodes(arch=None, *, layers=None, architecture_info=None, density=None, keep=None, strategy="lr-bound",
               solver="auto", grid=32, max_flops=None, input_dim=None, time_limit=None, threads=1, seed=0):
    """A neuron plan (:class:`planner.Plan` with ``granularity == "neurons"``) for the MLP
    ``arch`` (sizes or an Architecture) or ``layers`` (the Linear chain read off a model)."""
    from planner.allocation.planfile import Plan, PlanLayer
    from planner.core.arch import Architecture
    from planner.core.bound import dense_log2_bound

    if strategy not in NODE_STRATEGIES:
        raise ProblemError(f"a neuron plan takes strategy {' or '.join(NODE_STRATEGIES)}, not {strategy!r}")
    if solver not in NODE_SOLVERS:
        raise ProblemError(f"a neuron plan takes solver {', '.join(NODE_SOLVERS)}, not {solver!r}")
    if layers is not None:
        layers = list(layers)
        if any(not (layer.in_bound or layer is layers[-1]) for layer in layers):
            bad = next(layer.name for layer in layers if not (layer.in_bound or layer is layers[-1]))
            raise ProblemError(f"neuron plans prune MLPs of Linear layers; {bad} is not part of the trailing "
                               "Linear chain (a convolution?)")
        for a, b in zip(layers, layers[1:]):
            if a.rows != b.cols:
                raise ProblemError(f"neuron plans need a chain of Linear layers: {a.name} has {a.rows} outputs "
                                   f"but {b.name} takes {b.cols} inputs")
        sizes = [layers[0].cols] + [layer.rows for layer in layers]
        names = [layer.name for layer in layers]
        info = dict(architecture_info or {}, sizes=sizes)
    else:
        net = arch if isinstance(arch, Architecture) else Architecture.parse(arch)
        sizes, names = list(net.sizes), list(net.layer_names)
        info = dict(architecture_info or {}, sizes=sizes)
    problem = build_problem(sizes, names, density=density, keep=keep, max_flops=max_flops, input_dim=input_dim)
    uniform = uniform_widths(problem)
    uniform_bound = node_log2_bound(problem, uniform)
    objective = {"rank_model": "dense", "uniform_log2_bound": uniform_bound}
    solver_info = {}
    if strategy == "uniform":
        widths, bound = uniform, uniform_bound
        objective.pop("uniform_log2_bound")
    else:
        route = solver
        if route == "auto":
            route = "exhaustive" if count_exhaustive(problem) <= EXHAUSTIVE_LIMIT else "cpsat"
        if route == "exhaustive":
            widths, bound, scored = solve_exhaustive(problem)
            solver_info = {"name": "exhaustive", "status": "OPTIMAL", "plans_scored": scored}
            objective.update(certificate_log2_upper=bound, certificate_gap_bits=0.0, certificate_covers="integers")
        else:
            grids = [width_grid(n, grid) for n in problem.hidden]
            start, value, upper, status = maxplus_cpsat(problem, grids, time_limit=time_limit, threads=threads,
                                                        seed=seed)
            widths, bound, scored = local_search(problem, start)
            terms = sum(math.log2(n + 1) for n in problem.hidden)
            cert = upper + terms
            solver_info = {"name": "cpsat", "status": status, "maxplus_log2": value, "start_widths": list(start),
                           "plans_scored": scored}
            objective.update(certificate_log2_upper=cert, certificate_gap_bits=max(0.0, cert - bound),
                             certificate_covers="grid")
        if uniform_bound > bound + 1e-9:  # the uniform plan is the floor
            widths, bound = uniform, uniform_bound
    full = [problem.sizes[0], *widths, problem.sizes[-1]]
    plan_layers = []
    for i, name in enumerate(problem.names):
        rows, cols = problem.sizes[i + 1], problem.sizes[i]
        hidden = i < len(widths)
        plan_layers.append(PlanLayer(name, rows, cols, full[i + 1] * full[i], frozen=False, in_bound=hidden,
                                     expected_rank=float(min(full[i + 1], full[i])) if hidden else None,
                                     keep_neurons=full[i + 1]))
    objective.update(log2_bound=bound, dense_log2_bound=dense_log2_bound(problem.sizes[:-1], problem.input_dim),
                     parameters=params(full), parameters_with_biases=params(full) + sum(full[1:]))
    target = {"granularity": "neurons", "budget": problem.budget, "density": density, "keep": keep,
              "max_flops": max_flops}
    return Plan(info, strategy, target, plan_layers, problem.input_dim, objective, solver_info, seed,
                granularity="neurons")
