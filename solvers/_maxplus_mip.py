"""The max-plus model of :mod:`solvers.cpsat` as plain data, for the floating-point MIP backends.

``ortools-mip`` and ``pulp`` solve the same model as CP-SAT (docs/theory.md section 3, stage B) but with a
continuous objective in nats, so no scaling. Building it once here, as a list of variables and
linear rows, keeps the two backends identical; each only translates the rows into its library's
calls. The helpers also complete a hint into a full feasible assignment (MIP starts need more
than the x-variables) and check a returned solution before a backend reports it.

Variables (per decision layer l, as in cpsat.py):
  x[l,c]    binary, candidate c chosen;              sum_c x[l,c] = 1
  z[l,c,k]  binary, rank k on the path, k in the thinned ranks of maxplus_tables;
            sum_k z[l,c,k] = x[l,c]
  k_l       integer in [0, n_l],  k_l = sum k z[l,c,k]
  j_l       integer in [0, top_l], j_l <= k_l, j_l <= d_l (d_1 = d0, implied by top_1 <= d0)
  t_l       continuous, the concave j-term: t_l <= f(a) + (f(a+1) - f(a)) (j_l - a), a < top_l
  d_{l+1}   integer in [0, min(n_l, max_dim_l)], d_{l+1} <= n_l - j_l, <= k_l, <= d_l
objective  max sum z[l,c,k] ln P_{l,c}(k) + sum t_l;   budgets  sum cost x <= limit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from planner.allocation.problem import AllocationProblem, MaxPlusLayer, maxplus_tables

#: A solution is accepted when every integer variable is within this of an integer and every
#: row and bound holds within this (absolute) tolerance: looser than the solvers' own 1e-6
#: feasibility tolerances, far tighter than anything that could change a rounded choice.
CHECK_TOL = 1e-5

#: Added to a MIP solver's dual bound before it is reported as the certificate: the solvers
#: work to ~1e-6 feasibility and integrality tolerances, so their bound on the exact model can
#: be off by a few 1e-6 per layer (the chord slopes are at most ln n). Far below the 0.01-bit
#: resolution of the plans; it keeps the reported bound an upper bound.
BOUND_SLACK_PER_LAYER = 1e-5


@dataclass
class Row:
    """sum coef * var  (<= or ==)  rhs."""

    coefs: list[tuple[int, float]]
    sense: str  # "<=" or "=="
    rhs: float


@dataclass
class MaxPlusMip:
    """The max-plus integer program of one allocation problem, solver-independent."""

    problem: AllocationProblem
    tables: list[MaxPlusLayer]
    names: list[str] = field(default_factory=list)
    lower: list[float] = field(default_factory=list)
    upper: list[float] = field(default_factory=list)
    integer: list[bool] = field(default_factory=list)
    rows: list[Row] = field(default_factory=list)
    objective: dict[int, float] = field(default_factory=dict)
    choose: list[list[int]] = field(default_factory=list)  # x[l][c]
    z: list[list[list[int]]] = field(default_factory=list)  # z[l][c][r], r indexes tables[l].ranks[c]
    k: list[int] = field(default_factory=list)
    j: list[int] = field(default_factory=list)
    t: list[int] = field(default_factory=list)
    d: list[int | None] = field(default_factory=list)  # d[l] is d_{l+1}; None at the last layer
    #: a row without variables that cannot hold (e.g. an all-zero budget below 0)
    trivially_infeasible: bool = False

    # ------------------------------------------------------------------ building

    def var(self, name: str, lb: float, ub: float, integer: bool) -> int:
        self.names.append(name)
        self.lower.append(float(lb))
        self.upper.append(float(ub))
        self.integer.append(bool(integer))
        return len(self.names) - 1

    def row(self, coefs: Sequence[tuple[int, float]], sense: str, rhs: float) -> Row | None:
        merged: dict[int, float] = {}
        for v, a in coefs:
            merged[v] = merged.get(v, 0.0) + float(a)
        kept = [(v, a) for v, a in merged.items() if a != 0.0]
        if not kept:
            holds = 0.0 <= rhs if sense == "<=" else rhs == 0.0
            if not holds:
                self.trivially_infeasible = True
            return None
        r = Row(kept, sense, float(rhs))
        self.rows.append(r)
        return r

    @classmethod
    def build(cls, problem: AllocationProblem, tables: list[MaxPlusLayer] | None = None) -> "MaxPlusMip":
        m = cls(problem, maxplus_tables(problem) if tables is None else tables)
        last = len(problem.layers) - 1
        prev_d = None
        for i, (layer, t) in enumerate(zip(problem.layers, m.tables)):
            x = [m.var(f"x_{i}_{c}", 0, 1, True) for c in range(len(layer.keeps))]
            m.row([(v, 1.0) for v in x], "==", 1)
            m.choose.append(x)
            zs, rank_terms = [], []
            for c, (ranks, logs) in enumerate(zip(t.ranks, t.log_probs)):
                z = [m.var(f"z_{i}_{c}_{kk}", 0, 1, True) for kk in ranks]
                m.row([(v, 1.0) for v in z] + [(x[c], -1.0)], "==", 0)
                rank_terms += [(v, -float(kk)) for v, kk in zip(z, ranks)]
                for v, w in zip(z, logs):
                    m.objective[v] = float(w)
                zs.append(z)
            m.z.append(zs)
            top = len(t.j_table) - 1
            k = m.var(f"k_{i}", 0, t.width, True)
            m.row([(k, 1.0)] + rank_terms, "==", 0)
            j = m.var(f"j_{i}", 0, top, True)
            m.row([(j, 1.0), (k, -1.0)], "<=", 0)
            if prev_d is not None:
                m.row([(j, 1.0), (prev_d, -1.0)], "<=", 0)
            # (at the first layer j <= d0 is the bound top = min(n_1, d0))
            table = t.j_table
            tv = m.var(f"t_{i}", min(table), max(table), False)
            for a in range(top):
                slope = table[a + 1] - table[a]
                # t - slope * j <= f(a) - slope * a
                m.row([(tv, 1.0), (j, -slope)], "<=", table[a] - slope * a)
            # (top == 0: t <= f(0) is the variable's upper bound)
            m.objective[tv] = 1.0
            m.k.append(k)
            m.j.append(j)
            m.t.append(tv)
            if i < last:
                d = m.var(f"d_{i + 1}", 0, t.next_dim, True)
                m.row([(d, 1.0), (j, 1.0)], "<=", t.width)
                m.row([(d, 1.0), (k, -1.0)], "<=", 0)
                if prev_d is not None:
                    m.row([(d, 1.0), (prev_d, -1.0)], "<=", 0)
                prev_d = d
                m.d.append(d)
            else:
                m.d.append(None)
        for b in problem.budgets:
            m.row([(v, float(cost)) for costs, x in zip(b.costs, m.choose) for cost, v in zip(costs, x)],
                  "<=", b.limit)
        return m

    def nogood(self, choice: Sequence[int]) -> Row | None:
        """The next solve must change at least one layer's candidate."""
        return self.row([(x[c], 1.0) for x, c in zip(self.choose, choice)], "<=", len(self.choose) - 1)

    # ------------------------------------------------------------------ reading solutions

    def choice_from(self, values: Sequence[float]) -> tuple[int, ...] | None:
        """The candidate per layer whose x is > 0.5, or None unless exactly one per layer."""
        out = []
        for x in self.choose:
            on = [c for c, v in enumerate(x) if values[v] is not None and values[v] > 0.5]
            if len(on) != 1:
                return None
            out.append(on[0])
        return tuple(out)

    def value(self, values: Sequence[float]) -> float:
        return float(sum(a * values[v] for v, a in self.objective.items()))

    def check(self, values: Sequence[float | None], tol: float = CHECK_TOL) -> str | None:
        """Why ``values`` is not a solution of the model (None when it is one)."""
        if len(values) != len(self.names):
            return f"{len(values)} values for {len(self.names)} variables"
        for v, val in enumerate(values):
            if val is None or not math.isfinite(val):
                return f"{self.names[v]} has no value"
            if val < self.lower[v] - tol or val > self.upper[v] + tol:
                return f"{self.names[v]} = {val} outside [{self.lower[v]}, {self.upper[v]}]"
            if self.integer[v] and abs(val - round(val)) > tol:
                return f"{self.names[v]} = {val} is not integral"
        for r in self.rows:
            act = sum(a * values[v] for v, a in r.coefs)
            scale = 1.0 + abs(r.rhs)
            if (r.sense == "<=" and act > r.rhs + tol * scale) or (r.sense == "==" and abs(act - r.rhs) > tol * scale):
                names = " ".join(self.names[v] for v, _ in r.coefs[:4])
                return f"row over {names} ... violated: {act} {r.sense} {r.rhs}"
        return None

    # ------------------------------------------------------------------ hints

    def hint(self, choice: Sequence[int] | None) -> list[float] | None:
        """A full feasible assignment that picks ``choice`` and its best max-plus path (None if
        ``choice`` is not a valid index tuple). Budgets are not checked: a hint may break them."""
        if choice is None or len(choice) != len(self.choose):
            return None
        try:
            choice = [int(c) for c in choice]
        except (TypeError, ValueError):
            return None
        if any(not 0 <= c < len(x) for c, x in zip(choice, self.choose)):
            return None
        values = [0.0] * len(self.names)
        for i, ((r, kk, j, nd), t) in enumerate(zip(best_path(self.tables, choice, self.problem.input_dim), self.tables)):
            c = choice[i]
            values[self.choose[i][c]] = 1.0
            values[self.z[i][c][r]] = 1.0
            values[self.k[i]] = float(kk)
            values[self.j[i]] = float(j)
            table = t.j_table
            top = len(table) - 1
            chords = [table[a] + (table[a + 1] - table[a]) * (j - a) for a in range(top)]
            values[self.t[i]] = min([table[j]] + chords)
            if self.d[i] is not None:
                values[self.d[i]] = float(nd)
        return values


def best_path(tables: Sequence[MaxPlusLayer], choice: Sequence[int], input_dim: int):
    """The best single path of the max-plus recurrence for a fixed choice, as a list of
    (rank index r, rank k, j, next dimension) per layer. Same dynamic program as
    :func:`planner.problem.maxplus_log_value`, keeping the arguments of the maxima."""
    nxt = None
    args = [None] * len(tables)
    for i in range(len(tables) - 1, -1, -1):
        t, c = tables[i], choice[i]
        n, dmax = t.width, t.max_dim
        jt = np.asarray(t.j_table)
        cur = np.full(dmax + 1, -np.inf)
        arg = [(0, 0)] * (dmax + 1)
        for r, (kk, w) in enumerate(zip(t.ranks[c], t.log_probs[c])):
            for d in range(dmax + 1):
                m = min(kk, d)
                if nxt is None:
                    j, val = m, w + jt[m]
                else:
                    js = np.arange(m + 1)
                    vals = jt[js] + nxt[np.minimum(np.minimum(np.minimum(n - js, d), kk), t.next_dim)]
                    j = int(np.argmax(vals))
                    val = w + float(vals[j])
                if val > cur[d]:
                    cur[d] = val
                    arg[d] = (r, j)
        args[i] = arg
        nxt = cur
    path, d = [], int(input_dim)
    for t, c, arg in zip(tables, choice, args):
        r, j = arg[d]
        kk = t.ranks[c][r]
        nd = min(t.width - j, d, kk, t.next_dim)
        path.append((r, kk, j, nd))
        d = nd
    return path
