"""Count the linear regions of a ReLU MLP on an input subspace (docs/theory.md section 6).

The domain is the convex hull of S+1 points p_0..p_S,

    h0 = p0 + sum_i alpha_i (p_i - p0),   alpha_i >= 0,   sum_i alpha_i <= 1,

and a *region* is an activation pattern of the hidden ReLU layers (every Linear layer of the
model's trailing Linear chain but the last) whose set of inputs meets the hull in a set of full
dimension S. A unit is active when its pre-activation g is > 0; a unit whose pre-activation is
identically zero on a region counts as inactive (its output is 0 either way).

Everything is computed in alpha space: the first layer composed with the hull's affine map is
an S-column layer, so the input size (784 for MNIST) costs nothing beyond one matrix product.

Two methods:

``walk`` (S = 1 only; exact): walk the segment from alpha = 0 to 1. Within a region every
    pre-activation is affine in alpha, so the next breakpoint is the nearest root of the
    current affine functions; step past it, read the new pattern off the signs and slopes.
    Regions are convex, so a segment meets each region in one piece: the number of pieces of
    positive length is the number of distinct patterns.

``milp`` (any S): the mixed-integer program of docs/theory.md section 6. Variables alpha (continuous),
    per unstable hidden unit a binary z and h >= 0 with the exact big-M ReLU links
    (z = 1 -> h = g; z = 0 -> h = 0, g <= 0), and a margin f with z = 1 -> f <= g / s and
    z = 0 -> f <= -g / s, where s is the unit's largest |g| over the hull (so f is a
    *relative* margin in [0, 1]); f >= eps (default 1e-6) is required. Distinct patterns are
    enumerated by repeated solves, each adding a no-good cut on the binaries, until the model is
    infeasible (then the count is complete) or the time limit stops it (then it is a lower
    bound). Big-M values: exact bounds of every first-layer pre-activation (an affine function
    over a simplex attains its extremes at the vertices, i.e. at the points), then interval
    arithmetic layer by layer, tightened for layers 2.. by LPs over the triangle relaxation of
    the layers before. Units whose bounds have one sign are fixed (no binary). A bias-free unit
    of layer 2.. whose inputs can all be off gets a binary "dead" (all inputs off): it is then
    identically zero, inactive, and exempt from the margin.

    Every pattern a solve returns is verified before it is counted: for that fixed pattern all
    pre-activations are affine in alpha, and ``scipy.optimize.linprog`` (HiGHS) maximizes the
    same margin f over the simplex; the pattern counts only if f >= eps / 2 (solver tolerances
    can return a pattern whose region is thinner than eps, or lower-dimensional). Rejected
    patterns stay cut off and are reported as ``rejected``.

    Seeding (changes the time, never the count): before the first solve, ``samples`` uniform
    random points of the simplex are evaluated, and random chords of the simplex are walked
    exactly (the S = 1 walk; a line meets thin regions that points miss). Every pattern seen at
    a point whose own margin is >= eps is certified by that point (an interior witness, as good
    as the LP's) and cut off; after each region the solver finds, points around its LP centre
    are tried too. The solver then only has to find what seeding missed and prove that nothing
    else exists. On a 784-20-20-10 MLP with S = 4 this cuts the median time from ~22 s to ~8 s.

Backends (``solver``): ``"mip"`` is SCIP through OR-Tools' ``pywraplp`` (the default: the model
has continuous variables, which SCIP handles natively; its feasibility tolerance is tightened to
1e-9 so that eps = 1e-6 is well above it), ``"cbc"`` is COIN-OR CBC through the same wrapper
(2-3x slower here). CP-SAT is not offered: it has no continuous variables, and OR-Tools' own
scaling of this model to integers (pywraplp's CP_SAT backend) declared instances with dozens of
regions infeasible in our tests - a silent undercount, the worst failure a counter can have.

Regions thinner than the margin eps (relative to each unit's range over the hull) are not
counted by the MILP; the walk counts every piece longer than 1e-12 of the segment.

Layout: ``net`` (the network and the subspace), ``walk`` (pattern checks and the segment walk),
``milp`` (the enumeration MILP), ``count`` (:func:`count_regions` and its result). This module
holds the names the command line needs without importing numpy; the rest load on first use.
"""

from __future__ import annotations

import importlib

from planner.errors import PlannerError

METHODS = ("auto", "walk", "milp")
SOLVERS = ("mip", "cbc")
_ENGINE = {"mip": "SCIP", "scip": "SCIP", "cbc": "CBC"}

DEFAULT_EPS = 1e-6
#: pieces of a segment shorter than this (as a fraction of the segment) are breakpoints
WALK_MIN_LENGTH = 1e-12
#: chord seeding stops after this many chords in a row found no new region
CHORD_PATIENCE = 300


class RegionsError(PlannerError, ValueError):
    """Bad input to region counting: points, model, method or solver."""



_EXPORTS = {
    "ReluNet": "net", "relu_net": "net", "activation_patterns": "net", "check_points": "net",
    "region_margin": "walk", "walk_segment": "walk",
    "RegionCount": "count", "count_regions": "count",
}


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    globals()[name] = value
    return value
