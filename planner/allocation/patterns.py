"""Pattern-aware plans: every decision layer chooses a (pattern, keep-count) pair.

``plan --patterns unstructured,bcr:16x16,2:4 --max-latency MS`` gives each hidden layer of the
bound chain the candidates of every listed pattern:

``unstructured``
    the usual aligned grid (:mod:`planner.allocation.grid`);
``bcr:RxC``
    the grid's keep-counts moved to the nearest count a BCR mask of that block allows
    (:func:`planner.pruning.bcr.nearest_count`; for layers of more than a few blocks every
    count but a few near the dense end is allowed);
``N:M``
    one candidate: the count an N:M mask keeps (density N/M; :func:`planner.pruning.nm.nm_count`).

Each candidate costs its kept weights (the weight budget, ``--max-flops``, further budgets, as
for unstructured plans) and its latency read off a measured table (:mod:`.latency`; a Conv2d's
times its output positions), in whole nanoseconds rounded up; ``--max-latency`` caps the
summed latency of every layer of the network, the frozen (dense) ones and those outside the
bound included.

The objective stays the exact bound of the keep-counts. The bound's rank model assumes i.i.d.
masks, so a structured pattern's count is scored as an unstructured mask of the same count
would be; a BCR mask (whole rows and columns inside blocks) can have a lower rank than that at
low densities, an N:M mask (every row keeps N of each M) a higher one, which the bound does not
see. Two candidates of one layer
with the same count therefore have the same bound and the same weight and FLOP costs: only the
one of least latency (ties: the pattern listed first) enters the integer program, which loses
no plan. The integer program is the usual one (one binary per layer and candidate, one
candidate per layer, every budget a linear row; :mod:`solvers`), polished on the exact bound
(:func:`planner.allocation.search.polish`); with at most :data:`EXHAUSTIVE_MAX_COMBINATIONS`
combinations every one is scored on the exact bound instead (the max-plus optimum is the
brute-force one, but its polish once ended 0.02 bits below the exact optimum in 300 random
small instances). The left-over weights are not handed out and no
search on integer keep-counts follows: a pattern's counts are its own.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from planner.allocation.grid import Candidate, candidates
from planner.allocation.problem import AllocationProblem, LinearBudget
from planner.errors import InfeasibleError, PatternError, ProblemError

UNSTRUCTURED = "unstructured"
_BCR = re.compile(r"bcr:(.*)")
_NM = re.compile(r"\s*\d+\s*:\s*\d+\s*")
#: latencies enter the integer program in whole nanoseconds
NS_PER_MS = 1_000_000
#: at most this many combinations of the candidates are all scored on the exact bound instead
#: of running the integer program (whose max-plus objective only approximates the bound)
EXHAUSTIVE_MAX_COMBINATIONS = 4096


@dataclass(frozen=True)
class Pattern:
    """``unstructured``, ``bcr`` with ``block`` (R, C), or ``nm`` with ``n``, ``m``."""

    kind: str
    block: tuple[int, int] | None = None
    n: int | None = None
    m: int | None = None

    @property
    def name(self) -> str:
        if self.kind == "bcr":
            return f"bcr:{self.block[0]}x{self.block[1]}"
        if self.kind == "nm":
            return f"{self.n}:{self.m}"
        return UNSTRUCTURED

    def counts(self, rows: int, cols: int, keeps) -> list[int]:
        """The counts this pattern realizes for the asked ``keeps`` of a rows x cols layer."""
        if self.kind == "nm":
            from planner.pruning.nm import nm_count

            return [nm_count(rows, cols, self.n, self.m)]
        if self.kind == "bcr":
            from planner.pruning.bcr import count_structure

            free, top = count_structure((rows, cols), self.block)
            allowed = sorted({free, *top})
            return [k if k <= free else min(allowed, key=lambda a, k=k: (abs(a - k), a)) for k in keeps]
        return list(keeps)

    def mask_settings(self) -> tuple[str, dict | None]:
        """(criterion, options) of ``apply`` that realize the pattern."""
        if self.kind == "bcr":
            return "bcr", {"block": f"{self.block[0]}x{self.block[1]}", "keep_rows": None, "keep_cols": None}
        if self.kind == "nm":
            return "nm", {"pattern": f"{self.n}:{self.m}"}
        return "magnitude", None


def parse_pattern(text) -> Pattern:
    """``unstructured``, ``bcr:RxC`` or ``N:M``."""
    from planner.pruning.bcr import parse_block
    from planner.pruning.nm import parse_pattern as parse_nm

    if isinstance(text, Pattern):
        return text
    s = str(text).strip() if text is not None else ""
    if s == UNSTRUCTURED:
        return Pattern(UNSTRUCTURED)
    match = _BCR.fullmatch(s)
    if match:
        try:
            return Pattern("bcr", block=parse_block(match.group(1)))
        except PatternError:
            raise PatternError(f"--patterns: {s!r}: bcr takes a block RxC of positive integers, like bcr:16x16") \
                from None
    if _NM.fullmatch(s):
        try:
            n, m = parse_nm(s)
        except PatternError as exc:
            raise PatternError(f"--patterns: {exc}".replace("--pattern N:M", "N:M")) from None
        return Pattern("nm", n=n, m=m)
    raise PatternError(f"--patterns: unknown pattern {s!r}; give a comma list of unstructured, bcr:RxC "
                       "(e.g. bcr:16x16) and N:M (e.g. 2:4)")


def parse_patterns(value) -> tuple[Pattern, ...]:
    """A comma list (or a sequence) of patterns, each once."""
    parts = value.split(",") if isinstance(value, str) else list(value)
    if not parts or any(str(p).strip() == "" for p in parts):
        raise PatternError("--patterns: give a comma list like unstructured,bcr:16x16,2:4 (no empty entries)")
    out = [parse_pattern(p) for p in parts]
    names = [p.name for p in out]
    dup = next((n for n in names if names.count(n) > 1), None)
    if dup is not None:
        raise PatternError(f"--patterns: {dup} is listed twice")
    return tuple(out)


def check_request(request) -> tuple[Pattern, ...]:
    """Refuse what pattern-aware plans do not combine with; returns the patterns."""
    patterns = parse_patterns(request.patterns if request.patterns is not None else UNSTRUCTURED)
    if request.max_latency is not None:
        v = request.max_latency
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
            raise ProblemError(f"--max-latency must be a positive number of milliseconds, got {v!r}")
    if request.objective != "bound" or request.bound_floor is not None:
        raise ProblemError("--patterns and --max-latency plan the bound alone: no --objective sensitivity "
                           "or --bound-floor with them")
    from planner.allocation.request import PAPER_SOLVER

    if request.solver == PAPER_SOLVER:
        raise ProblemError("--patterns and --max-latency need an integer-programming solver, not --solver paper")
    if not any(w.in_bound for w in request.layers):
        raise ProblemError("--patterns and --max-latency choose among the bound's candidates, and this network "
                           "has no ReLU chain in the bound")
    return patterns


def _ns(ms: float) -> int:
    return int(math.ceil(ms * NS_PER_MS - 1e-9))


def layer_ms(table, pattern: str, w, keep: int) -> float:
    """A layer's latency: the table's time of its rows x cols matrix at keep / size, times its
    output positions (``flops_per_weight``: 1 for a Linear; a Conv2d runs its out x in*kh*kw
    matrix once per output position, costed as that many batches)."""
    return table.ms(pattern, w.rows, w.cols, keep / w.size) * max(1, int(w.flops_per_weight))


def pattern_candidates(target, patterns, table):
    """Per chain layer: the candidates (ascending keep) entering the integer program, each with
    its pattern name and latency in ns; the dominated ones (same count, not less latency)
    are left out. Returns ``(grid, candidates, names, latencies)``."""
    dgrid, grid_cands = candidates(target)
    cands, names, lat = [], [], []
    for w, cs in zip(target.chain, grid_cands):
        if w.frozen:
            cands.append(cs)
            names.append([None])
            lat.append([0])
            continue
        lo, hi = target.min_keep[w.name], min(target.max_keep[w.name], w.size)
        # a count the grid has is scored at the grid's density whatever the pattern (so equal
        # counts have equal bounds); other counts at keep / size
        on_grid = {c.keep: c for c in cs}
        best: dict[int, tuple[int, int, str, Candidate]] = {}
        for order, p in enumerate(patterns):
            if p.kind == UNSTRUCTURED:
                pcs = cs
            else:
                pcs = [on_grid.get(k) or Candidate(k, k / w.size, None)
                       for k in p.counts(w.rows, w.cols, [c.keep for c in cs])]
            for c in pcs:
                if not (lo <= c.keep <= hi) or c.keep <= 0:
                    continue
                ns = _ns(layer_ms(table, p.name, w, c.keep))
                old = best.get(c.keep)
                if old is None or (ns, order) < old[:2]:
                    best[c.keep] = (ns, order, p.name, c)
        if not best:
            raise InfeasibleError(f"layer {w.name}: no pattern of --patterns gives a count within its density "
                                  "limits")
        ks = sorted(best)
        cands.append([best[k][3] for k in ks])
        names.append([best[k][2] for k in ks])
        lat.append([best[k][0] for k in ks])
    return dgrid, cands, names, lat


@dataclass
class PatternProblem:
    """The pattern-aware integer program and what maps its choices back to patterns."""

    problem: AllocationProblem
    grid: object
    cands: list
    names: list  # per chain layer, per candidate: the pattern name
    latency_ns: list  # per chain layer, per candidate
    uniform_choice: tuple | None
    fixed_ms: dict  # layers the program does not choose: name -> (pattern, ms)
    constant_ns: int
    patterns: tuple
    table: object


def build_pattern_problem(target, *, cache=None, workers=None, progress=None) -> PatternProblem:
    """Candidates of every pattern, their rank distributions, and the budgets: weights, FLOPs
    and further budgets as for unstructured plans, and the latency row under ``max_latency``."""
    from planner.allocation.latency import resolve
    from planner.allocation.pipeline import build_problem

    r = target.request
    patterns = check_request(r)
    table = resolve(r.latency_table)
    for p in patterns:
        table.require(p.name)
    dgrid, cands, names, lat = pattern_candidates(target, patterns, table)
    built = build_problem(target, dgrid, cands, cache=cache, workers=workers, progress=progress)

    # every layer the integer program does not choose: frozen ones run dense, the others keep
    # the global density, unstructured
    chosen = {w.name for w in target.decision}
    fixed_ms: dict[str, tuple[str, float]] = {}
    for w in r.layers:
        if w.name in chosen:
            continue
        if w.frozen:
            fixed_ms[w.name] = ("dense", layer_ms(table, "dense", w, w.size))
        else:
            keep = target.fixed[w.name]
            if not any(p.kind == UNSTRUCTURED for p in patterns):
                raise ProblemError(f"layer {w.name} is outside the bound and keeps the global density "
                                   "unstructured: add unstructured to --patterns")
            fixed_ms[w.name] = (UNSTRUCTURED, layer_ms(table, UNSTRUCTURED, w, keep))
    constant_ns = sum(_ns(ms) for _, ms in fixed_ms.values())
    budgets = list(built.problem.budgets)
    if r.max_latency is not None:
        limit = int(math.floor(r.max_latency * NS_PER_MS + 1e-9)) - constant_ns
        if limit < 0:
            raise InfeasibleError(f"the layers the plan does not choose (frozen, dense; outside the bound) alone "
                                  f"take {constant_ns / NS_PER_MS:.4f} ms, above --max-latency {r.max_latency:g}")
        budgets.append(LinearBudget("latency", tuple(tuple(x) for x in lat), limit))
    problem = AllocationProblem(built.problem.layers, built.problem.input_dim, tuple(budgets))
    uniform = built.uniform_choice if built.uniform_choice is not None and problem.feasible(built.uniform_choice) \
        else None
    return PatternProblem(problem, dgrid, cands, names, lat, uniform, fixed_ms, constant_ns, patterns, table)


def run_patterns(target, *, cache=None, workers=None, progress=None):
    """The pattern-aware pipeline: candidates, the integer program with the latency row, the
    exact polish, the plan file with each layer's pattern and latency."""
    from planner.allocation.pipeline import Allocation, assemble, tie_inputs
    from planner.allocation.scoring import Scorer
    from planner.allocation.search import polish, solve
    from planner.limits import check_time_limit

    r = target.request
    pp = build_pattern_problem(target, cache=cache, workers=workers, progress=progress)
    problem, uniform, cands, dgrid = pp.problem, pp.uniform_choice, pp.cands, pp.grid
    names, lat, fixed_ms, constant_ns, patterns, table = (pp.names, pp.latency_ns, pp.fixed_ms, pp.constant_ns,
                                                          pp.patterns, pp.table)
    chosen = {w.name for w in target.decision}
    scorer = Scorer(problem, cands, dgrid, r.rank_model, r.seed, cache, r.tie_break, **tie_inputs(target))
    if problem.n_combinations <= EXHAUSTIVE_MAX_COMBINATIONS:
        best = exhaustive(problem, scorer)
        certificate, status, name = scorer.exact(best), "OPTIMAL", "exhaustive"
        message = f"every feasible combination of the {problem.n_combinations} scored on the exact bound"
    else:
        result, certificate = solve(problem, solver=r.solver, uniform_choice=uniform,
                                    time_limit=check_time_limit(r.time_limit), threads=r.threads, seed=r.seed,
                                    pool_size=r.pool_size, progress=progress)
        best = polish(problem, scorer, [result.choice, *result.pool], uniform, progress)
        status, name = str(result.status), None
        message = result.message if result.status.value == "FEASIBLE" else ""
    keeps = problem.keeps(best)
    dists = [layer.dists[c] for layer, c in zip(problem.layers, best)]
    alloc = Allocation(list(keeps), scorer.exact(best), dists, None if uniform is None else scorer.exact(uniform),
                       certificate, status, message, solver=name)
    per_layer = dict(fixed_ms)
    for w, i, c in zip(target.chain, range(len(best)), best):
        if w.name in chosen:
            per_layer[w.name] = (names[i][c], lat[i][c] / NS_PER_MS)
    total_ns = constant_ns + sum(lat[i][c] for i, c in enumerate(best))
    extra = {"patterns": [p.name for p in patterns],
             "latency_ms": round(total_ns / NS_PER_MS, 6),
             "max_latency_ms": r.max_latency,
             "latency_table": table.source,
             "latency_batch": table.batch}
    plan = assemble(target, alloc, extra)
    for layer in plan.layers:
        pattern, ms = per_layer[layer.name]
        layer.pattern = pattern
        layer.latency_ms = round(ms, 6)
    return plan



def exhaustive(problem: AllocationProblem, scorer) -> tuple[int, ...]:
    """The best feasible combination on the exact bound under the scorer's tie-break, then the
    lexicographically smallest; :class:`InfeasibleError` when none meets the budgets."""
    feasible = [c for c in problem.all_choices() if problem.feasible(c)]
    if not feasible:
        raise InfeasibleError("no combination of the candidates meets the budgets ("
                              + ", ".join(b.name for b in problem.budgets) + ")")
    top = max(scorer.step(scorer.exact(c)) for c in feasible)
    tied = sorted(c for c in feasible if scorer.step(scorer.exact(c)) == top)
    best = tied[0]
    for c in tied[1:]:
        if scorer.better(c, best):
            best = c
    return best
