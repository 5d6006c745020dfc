"""The enumeration MILP: big-M formulation of the ReLU network on the hull, solved through
OR-Tools (SCIP or CBC), one no-good cut per region found."""

from __future__ import annotations

import numpy as np

from planner.experiments.regions import RegionsError
from planner.experiments.regions.net import _SubNet
from solvers.base import run_interruptible


# ----------------------------------------------------------------------------------------- MILP


class _Milp:
    """The region MILP in a pywraplp solver, with no-good cuts added one pattern at a time."""

    def __init__(self, sub: _SubNet, engine: str, eps: float):
        from ortools.linear_solver import pywraplp

        solver = pywraplp.Solver.CreateSolver(engine)
        if solver is None:
            raise RegionsError(f"OR-Tools has no {engine} backend in this installation")
        self.solver, self.engine, self.eps = solver, engine, eps
        inf = solver.infinity()
        dim = sub.dim
        alpha = [solver.NumVar(0.0, 1.0, f"alpha{k}") for k in range(dim)]
        ct = solver.Constraint(-inf, 1.0)
        for v in alpha:
            ct.SetCoefficient(v, 1.0)
        f = solver.NumVar(eps, 1.0, "f")
        self.alpha, self.f = alpha, f
        self.fixed = []  # per unit: True/False (fixed activity) or the binary variable
        self.z_vars = []  # (unit index, var) of the free units
        scales = sub.scales()
        prev_vars, prev_z = alpha, []  # previous layer's outputs (None: identically 0) and activities
        unit = 0
        for layer, (w, b) in enumerate(zip(sub.weights, sub.biases)):
            lo, hi, sc = sub.lower[layer], sub.upper[layer], scales[layer]
            layer_vars, layer_z = [], []
            for i in range(w.shape[0]):
                terms = [(prev_vars[j], float(w[i, j])) for j in range(w.shape[1])
                         if prev_vars[j] is not None and w[i, j] != 0.0]
                const = float(b[i])
                s, li, ui = float(sc[i]), float(lo[i]), float(hi[i])
                if s == 0.0 or (not terms and const == 0.0):
                    # identically zero over the hull: inactive, no margin
                    self.fixed.append(False)
                    layer_vars.append(None)
                    layer_z.append(False)
                    unit += 1
                    continue
                dead = None
                if layer > 0 and const == 0.0:
                    dead = self._dead_indicator(w[i], prev_z, prev_vars)
                if li > 0.0:  # stably active
                    h = solver.NumVar(li, ui, f"h{unit}")
                    self._row([(h, 1.0)] + [(v, -a) for v, a in terms], const, const)
                    self._row([(f, 1.0)] + [(v, -a / s) for v, a in terms], -inf, const / s)
                    self.fixed.append(True)
                    layer_vars.append(h)
                    layer_z.append(True)
                elif ui < 0.0:  # stably inactive
                    self._row([(f, 1.0)] + [(v, a / s) for v, a in terms], -inf, -const / s)
                    self.fixed.append(False)
                    layer_vars.append(None)
                    layer_z.append(False)
                else:
                    z = solver.IntVar(0.0, 1.0, f"z{unit}")
                    h = solver.NumVar(0.0, max(ui, 0.0), f"h{unit}")
                    # h >= g ; h <= g - L (1 - z) ; h <= U z
                    self._row([(h, 1.0)] + [(v, -a) for v, a in terms], const, inf)
                    self._row([(h, 1.0), (z, -li)] + [(v, -a) for v, a in terms], -inf, const - li)
                    self._row([(h, 1.0), (z, -ui)], -inf, 0.0)
                    m1, m2 = 1.0 - li / s, 1.0 + ui / s
                    extra = [] if dead is None else [(dead, -1.0)]
                    # z = 1 -> f <= g / s ;  z = 0 -> f <= -g / s   (both relaxed when dead)
                    self._row([(f, 1.0), (z, m1)] + extra + [(v, -a / s) for v, a in terms], -inf, const / s + m1)
                    self._row([(f, 1.0), (z, -m2)] + extra + [(v, a / s) for v, a in terms], -inf, -const / s)
                    if dead is not None:  # a dead unit (all its inputs off, no bias) is inactive
                        self._row([(z, 1.0), (dead, 1.0)], -inf, 1.0)
                    self.fixed.append(z)
                    self.z_vars.append((unit, z))
                    layer_vars.append(h)
                    layer_z.append(z)
                unit += 1
            prev_vars, prev_z = layer_vars, layer_z
        self.units = unit
        solver.Objective().SetMinimization()  # feasibility: any pattern with margin >= eps
        if engine == "SCIP":
            # tight tolerances (eps = 1e-6 must be far above them); no cutting planes and no
            # restarts: each solve only needs one feasible pattern, and root separation
            # dominated the time of these small models (2-4x slower with it)
            solver.SetSolverSpecificParametersAsString(
                "numerics/feastol = 1e-9\nnumerics/epsilon = 1e-12\nnumerics/sumepsilon = 1e-10\n"
                "separating/maxroundsroot = 0\nseparating/maxrounds = 0\npresolving/maxrestarts = 0\n"
                "randomization/randomseedshift = 0\n")
        self.cuts = 0

    def _row(self, terms, lo, hi):
        ct = self.solver.Constraint(lo, hi)
        for v, a in terms:
            ct.SetCoefficient(v, ct.GetCoefficient(v) + a)
        return ct

    def _dead_indicator(self, row, prev_z, prev_vars):
        """A binary equal to 1 iff every input of this bias-free unit is off (then g = 0 on the
        whole region), or None when that cannot happen or is fixed."""
        support = [j for j in range(len(row)) if row[j] != 0.0]
        zs = [prev_z[j] for j in support]
        if any(z is True for z in zs):
            return None  # a stably active input: never dead
        free = [z for z in zs if z is not False]
        if not free:
            return None  # always dead: already identically zero (handled by the caller's bounds)
        d = self.solver.IntVar(0.0, 1.0, "")
        for z in free:
            self._row([(d, 1.0), (z, 1.0)], -self.solver.infinity(), 1.0)
        self._row([(d, 1.0)] + [(z, 1.0) for z in free], 1.0, self.solver.infinity())
        return d

    def full_pattern(self, free_values: dict[int, bool]) -> np.ndarray:
        out = np.zeros(self.units, dtype=bool)
        for u, v in enumerate(self.fixed):
            out[u] = free_values[u] if not isinstance(v, bool) else v
        return out

    def cut(self, pattern: np.ndarray) -> None:
        """Exclude ``pattern`` (a full pattern) from the free binaries."""
        if not self.z_vars:
            self.exhausted = True
            return
        ones = [var for u, var in self.z_vars if pattern[u]]
        zeros = [var for u, var in self.z_vars if not pattern[u]]
        # sum_{ones} (1 - z) + sum_{zeros} z >= 1
        self._row([(v, -1.0) for v in ones] + [(v, 1.0) for v in zeros], 1.0 - len(ones), self.solver.infinity())
        self.cuts += 1

    exhausted = False

    def consistent(self, pattern: np.ndarray) -> bool:
        """Whether ``pattern`` agrees with the units fixed by the bounds."""
        return all(isinstance(v, bool) is False or pattern[u] == v for u, v in enumerate(self.fixed))

    def solve(self, seconds: float | None):
        """(status, pattern or None, alpha or None); status one of found/infeasible/timeout."""
        from ortools.linear_solver import pywraplp

        if self.exhausted:
            return "infeasible", None, None
        if seconds is not None:
            self.solver.SetTimeLimit(max(1, int(seconds * 1000)))
        status = run_interruptible(self.solver.Solve, self.solver.InterruptSolve)
        if status in (pywraplp.Solver.OPTIMAL, pywraplp.Solver.FEASIBLE):
            values = {u: var.solution_value() > 0.5 for u, var in self.z_vars}
            alpha = np.array([v.solution_value() for v in self.alpha])
            return "found", self.full_pattern(values), alpha
        if status == pywraplp.Solver.INFEASIBLE:
            return "infeasible", None, None
        if status == pywraplp.Solver.NOT_SOLVED:
            return "timeout", None, None
        raise RegionsError(f"the {self.engine} solver failed on the region MILP (status {status})")
