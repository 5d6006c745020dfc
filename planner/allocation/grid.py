"""Step 2 of the pipeline: every decision layer's candidate keep-counts on one aligned grid.

Densities sit on ``uniform * 2^(index / steps)``, shared by all layers, with index 0 the
uniform plan's apportioned keep-count. Halving every density of a grid plan is then the grid
plan ``steps`` indices lower, so the robustness tie-break reuses grid distributions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from planner.allocation.request import Target
from planner.errors import InfeasibleError

#: the grid reaches down to uniform/GRID_SPAN (unless --min-density says otherwise)
GRID_SPAN = 32


@dataclass(frozen=True)
class Candidate:
    """A candidate of one layer: ``keep`` weights, scored at ``density``; ``index`` is its
    place on the aligned grid (None for the dense layer and off-grid fallbacks)."""

    keep: int
    density: float
    index: int | None = None


class DensityGrid:
    """The aligned geometric grid: density(index) = uniform * 2^(index / steps)."""

    def __init__(self, uniform: float, steps: int):
        self.uniform, self.steps = uniform, steps

    def density(self, index: int) -> float:
        return self.uniform * 2.0 ** (index / self.steps)

    def candidates(self, size: int, lo: int, hi: int, uniform_keep: int) -> list[Candidate]:
        """Grid candidates with keep in [lo, hi] (keep = round(density * size); index 0 is the
        uniform plan's apportioned keep), plus the dense layer when hi allows it."""
        if hi < lo:
            return []
        if hi < 1:
            return [Candidate(0, 0.0, None)]
        first = math.floor(math.log2(max(lo, 0.5) / (self.uniform * size)) * self.steps) - 1
        last = math.ceil(math.log2(hi / (self.uniform * size)) * self.steps) + 1
        out: dict[int, Candidate] = {}
        for index in range(first, last + 1):
            p = self.density(index)
            if p > 1.0:
                break
            keep = uniform_keep if index == 0 else int(round(p * size))
            if lo <= keep <= hi and keep > 0 and keep not in out:
                out[keep] = Candidate(keep, p, index)
        if hi == size and size not in out:
            out[size] = Candidate(size, 1.0, None)
        if not out and lo <= hi:  # a range too narrow for any grid point
            keep = max(lo, 1) if hi >= 1 else 0
            out[keep] = Candidate(keep, keep / size if keep else 0.0, None)
        return [out[k] for k in sorted(out)]


def candidates(target: Target) -> tuple[DensityGrid, list[list[Candidate]]]:
    """The aligned grid and, per chain layer, its candidates (a frozen layer: dense only).

    A layer ranges from uniform/GRID_SPAN (or its minimum density) to what the budget leaves
    once every other layer sits at its floor; ``grid`` candidates span the widest such range.
    """
    grid = target.request.grid
    decision, uniform, chain_budget = target.decision, target.uniform, target.chain_budget
    floors = {w.name: max(target.min_keep[w.name], min(uniform[w.name], max(1, uniform[w.name] // GRID_SPAN)))
              for w in decision}
    ceilings = {}
    for w in decision:
        room = chain_budget - sum(floors[v.name] for v in decision if v is not w)
        ceilings[w.name] = min(target.max_keep[w.name], w.size, room)
        if ceilings[w.name] < floors[w.name]:
            raise InfeasibleError(f"layer {w.name}: no keep-count fits between {floors[w.name]} and "
                                  f"{ceilings[w.name]} within the budget")
    octaves = max(math.log2(max(ceilings[w.name], 1) / max(floors[w.name], 1)) for w in decision) if decision else 1.0
    steps = max(1, int(round((grid - 1) / max(octaves, 1e-9)))) if grid > 1 else 1
    dgrid = DensityGrid(target.budget / target.total if target.budget else 1.0 / target.total, steps)
    cands: list[list[Candidate]] = []
    for w in target.chain:
        if w.frozen:
            cands.append([Candidate(w.size, 1.0, None)])
        else:
            cs = dgrid.candidates(w.size, floors[w.name], ceilings[w.name], uniform[w.name])
            if grid == 1:  # the uniform choice alone, when it fits
                cs = [c for c in cs if c.index == 0] or cs[:1]
            cands.append(cs)
    return dgrid, cands
