"""Pattern-aware plans (plan --patterns / --max-latency): BCR and N:M counts, the latency table,
and the integer program against brute force.

Oracles: BCR counts against the enumeration of every per-block (r, c) (``reachable_counts``)
and the masks themselves; N:M counts against the masks; the latency interpolation against
closed forms; the integer program against brute-force enumeration of the max-plus model
(``ExactSolver("maxplus")``); the plans against an enumeration written here of every
(pattern, count) combination, scored with the exact bound and filtered by the budgets.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import random

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from planner.allocation import patterns as P
from planner.allocation.grid import candidates
from planner.allocation.latency import LatencyTable
from planner.allocation.pipeline import run
from planner.allocation.planfile import Plan
from planner.allocation.request import PlanRequest, validate
from planner.core.bound import LN2, log_bound
from planner.core.rank import RankCache, rank_distribution
from planner.errors import InfeasibleError, LatencyTableError, PatternError, PlanFormatError, ProblemError
from planner.pruning import bcr, nm
from solvers import get_solver
from solvers.exact import ExactSolver

HYP = settings(max_examples=80, deadline=None, derandomize=True)


# ----------------------------------------------------------------------------- counts


@HYP
@given(rows=st.integers(1, 11), cols=st.integers(1, 11), R=st.integers(1, 6), C=st.integers(1, 6))
def test_bcr_counts_match_the_enumeration(rows, cols, R, C):
    reach = bcr.reachable_counts((rows, cols), (R, C))
    free, top = bcr.count_structure((rows, cols), (R, C))
    assert set(range(free + 1)) | set(top) == reach
    for keep in range(rows * cols + 1):
        assert bcr.nearest_count((rows, cols), (R, C), keep) == min(reach, key=lambda k: (abs(k - keep), k))


@HYP
@given(rows=st.integers(1, 12), cols=st.integers(1, 12), R=st.integers(1, 5), C=st.integers(1, 5),
       frac=st.floats(0, 1), seed=st.integers(0, 2**16))
def test_bcr_nearest_count_is_what_the_mask_keeps(rows, cols, R, C, frac, seed):
    w = np.random.default_rng(seed).standard_normal((rows, cols))
    keep = round(frac * rows * cols)
    assert int(bcr.bcr_mask_2d(w, keep, (R, C)).sum()) == bcr.nearest_count((rows, cols), (R, C), keep)


def test_bcr_counts_of_a_large_layer_near_the_dense_end():
    """4096 x 4096 in 16 x 16 blocks: every count up to the last block's worth is allowed; just
    below the dense count only the sums of per-block deficits (16 = one line, 31, 32, ...)."""
    free, top = bcr.count_structure((4096, 4096), (16, 16))
    total = 4096 * 4096
    assert free == total - 256 + 16
    assert total in top and total - 16 in top and total - 1 not in top and total - 15 not in top
    assert bcr.nearest_count((4096, 4096), (16, 16), total - 3) == total
    assert bcr.nearest_count((4096, 4096), (16, 16), total - 8) == total - 16  # tie 8 / 8: the lower


@HYP
@given(rows=st.integers(1, 6), cols=st.integers(1, 40), n=st.integers(1, 5), extra=st.integers(0, 5))
def test_nm_count_is_what_the_mask_keeps(rows, cols, n, extra):
    w = np.random.default_rng(rows * 100 + cols).standard_normal((rows, cols))
    assert nm.nm_count(rows, cols, n, n + extra) == int(nm.nm_mask_2d(w, n, n + extra).sum())


def test_parse_patterns():
    got = P.parse_patterns("unstructured, bcr:16x8 ,2:4")
    assert [p.name for p in got] == ["unstructured", "bcr:16x8", "2:4"]
    assert got[1].block == (16, 8) and (got[2].n, got[2].m) == (2, 4)
    for bad, message in (("foo", "unknown pattern"), ("bcr:0x4", "bcr takes"), ("bcr:", "bcr takes"),
                         ("4:2", "N:M"), ("unstructured,unstructured", "twice"), ("", "comma list"),
                         ("2:4,", "comma list")):
        with pytest.raises(PatternError, match=message):
            P.parse_patterns(bad)


# ----------------------------------------------------------------------------- latency table


def small_table(**ms):
    """Two shapes, 10x10 and 1000x1000 (ln sizes 4.6 and 13.8), per-weight times in ns below."""
    entries = []
    for (r, c), scale in (((10, 10), 1.0), ((1000, 1000), 0.5)):
        entries.append({"pattern": "dense", "rows": r, "cols": c, "density": 1.0, "ms": scale * 1e-6 * r * c * 10})
        for d, per in ((0.1, 2.0), (0.5, 6.0)):
            entries.append({"pattern": "unstructured", "rows": r, "cols": c, "density": d,
                            "ms": scale * 1e-6 * r * c * per})
    entries += ms.get("extra", [])
    return {"format": "sparsity-latency/1", "batch": 8, "threads": 1, "entries": entries}


def test_latency_interpolation_closed_forms():
    t = LatencyTable.from_dict(small_table())
    ns = lambda rows, cols, d, pattern="unstructured": t.ms(pattern, rows, cols, d) * 1e6  # noqa: E731
    assert ns(10, 10, 0.1) == pytest.approx(200.0)
    assert ns(10, 10, 0.3) == pytest.approx(400.0)           # halfway 2 -> 6 ns per weight
    assert ns(10, 10, 0.01) == pytest.approx(200.0)          # below the lowest density: constant
    assert ns(10, 10, 0.75) == pytest.approx(100 * 8.0)      # halfway 6 -> the dense 10
    assert ns(10, 10, 1.0) == pytest.approx(1000.0)          # dense
    assert ns(1000, 1000, 0.5) == pytest.approx(3e6)
    # halfway in ln(size) between the two shapes: the mean per-weight time, times the size
    assert ns(100, 100, 0.1) == pytest.approx(1e4 * 1.5)
    assert ns(20, 5, 0.1) == pytest.approx(200.0)            # the same size as 10x10
    assert ns(10_000, 1000, 0.1) == pytest.approx(1e7 * 1.0)  # above the largest shape: its time
    with pytest.raises(LatencyTableError, match="no entries for pattern bcr:8x8"):
        t.ms("bcr:8x8", 10, 10, 0.5)


def test_latency_table_refuses_bad_files(tmp_path):
    good = small_table()
    for mutate, message in ((lambda d: d.pop("format"), "not a latency table"),
                            (lambda d: d.update(entries=[]), "non-empty"),
                            (lambda d: d["entries"][1].update(ms=-1), "positive"),
                            (lambda d: d["entries"][1].update(density=1.5), r"\(0, 1\]"),
                            (lambda d: d["entries"][1].pop("rows"), "needs pattern"),
                            (lambda d: d["entries"][0].update(density=0.5), "dense entry"),
                            (lambda d: d.update(entries=[e for e in d["entries"] if e["pattern"] != "dense"]),
                             "no 'dense'"),
                            (lambda d: d["entries"].append(dict(d["entries"][1])), "two entries")):
        data = json.loads(json.dumps(good))
        mutate(data)
        with pytest.raises(LatencyTableError, match=message):
            LatencyTable.from_dict(data)
    with pytest.raises(LatencyTableError, match="cannot read"):
        LatencyTable.load(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(LatencyTableError, match="invalid JSON"):
        LatencyTable.load(tmp_path / "bad.json")


def test_the_built_in_table_covers_the_documented_patterns():
    t = LatencyTable.default()
    for pattern in ("dense", "unstructured", "bcr:8x8", "bcr:16x16", "2:4", "1:4"):
        t.require(pattern)
    assert t.batch == 64 and t.machine


# ----------------------------------------------------------------------------- brute force


def random_table(rng) -> LatencyTable:
    entries = []
    for r, c in ((6, 8), (12, 12)):
        entries.append({"pattern": "dense", "rows": r, "cols": c, "density": 1.0, "ms": 1.0})
        for d in (0.1, 0.3, 0.6):
            entries.append({"pattern": "unstructured", "rows": r, "cols": c, "density": d,
                            "ms": round(rng.uniform(0.3, 1.2), 3)})
            entries.append({"pattern": "bcr:2x2", "rows": r, "cols": c, "density": d,
                            "ms": round(rng.uniform(0.2, 1.2), 3)})
        entries.append({"pattern": "1:2", "rows": r, "cols": c, "density": 0.5, "ms": round(rng.uniform(0.2, 1.0), 3)})
    return LatencyTable.from_dict({"format": "sparsity-latency/1", "batch": 1, "entries": entries})


def random_request(seed: int) -> PlanRequest:
    rng = random.Random(seed)
    table = random_table(rng)
    arch = rng.choice(["8,6,6,2", "8,6,6,6,2", "12,12,6,2", "6,12,12,2"])
    patterns = rng.sample(["unstructured", "bcr:2x2", "1:2"], rng.choice([2, 3]))
    return PlanRequest.build(arch, density=rng.choice([0.1, 0.2, 0.35, 0.5]), rank_model="analytic",
                             tie_break="none", grid=rng.choice([3, 4, 6]), patterns=",".join(patterns),
                             max_latency=rng.choice([1.5, 2.0, 2.5, 3.0]), latency_table=table)


def brute_force(request: PlanRequest):
    """Every (pattern, count) of every hidden layer, all combinations, scored with the exact
    bound and filtered by the weight and latency budgets: (best log2 bound, its combination),
    or None when nothing fits. The unstructured counts are the plan's grid (a count the grid
    has is scored at the grid's density, as the planner does); BCR counts by enumerating
    block products, N:M counts from a mask; latencies from the table in whole ns, rounded up."""
    target = validate(request)
    table = request.latency_table
    _, grid = candidates(target)
    ranks = RankCache(disk=False)
    per_layer = []
    for w, cs in zip(target.chain, grid):
        if w.frozen:
            per_layer.append([(None, w.size, 1.0, 0)])
            continue
        on_grid = {c.keep: c.density for c in cs}
        reach = bcr.reachable_counts((w.rows, w.cols), (2, 2))
        half = int(nm.nm_mask_2d(np.random.default_rng(0).standard_normal((w.rows, w.cols)), 1, 2).sum())
        options = []
        for p in request.patterns.split(","):
            if p == "unstructured":
                counts = {c.keep for c in cs}
            elif p == "bcr:2x2":
                counts = {min(reach, key=lambda k, c=c: (abs(k - c.keep), k)) for c in cs}
            else:
                counts = {half}
            for k in sorted(counts):
                if 0 < k and target.min_keep[w.name] <= k <= target.max_keep[w.name]:
                    ns = math.ceil(table.ms(p, w.rows, w.cols, k / w.size) * 1e6 - 1e-9)
                    options.append((p, k, on_grid.get(k, k / w.size), ns))
        per_layer.append(options)
    frozen_ns = sum(math.ceil(table.ms("dense", w.rows, w.cols, 1.0) * 1e6 - 1e-9)
                    for w in request.layers if w.frozen)
    limit = math.floor(request.max_latency * 1e6 + 1e-9)
    best = None
    for combo in itertools.product(*per_layer):
        if sum(k for (_, k, _, _), w in zip(combo, target.chain) if not w.frozen) > target.chain_budget:
            continue
        if frozen_ns + sum(ns for *_, ns in combo) > limit:
            continue
        dists = [rank_distribution(w.rows, w.cols, d, "analytic", cache=ranks)
                 for (_, _, d, _), w in zip(combo, target.chain)]
        value = log_bound([w.rows for w in target.chain], dists, target.input_dim) / LN2
        if best is None or value > best[0]:
            best = (value, combo)
    return best


SEEDS = range(12)


@pytest.mark.parametrize("seed", SEEDS)
def test_the_integer_program_meets_brute_force(seed):
    """CP-SAT on the pattern-aware problem reaches the max-plus optimum of every feasible
    combination (enumerated), within every budget, the latency row included."""
    request = random_request(seed)
    try:
        pp = P.build_pattern_problem(validate(request), cache=RankCache(disk=False))
    except InfeasibleError:
        assert brute_force(request) is None
        return
    problem = pp.problem
    assert [b.name for b in problem.budgets] == ["weights", "latency"]
    reference = ExactSolver("maxplus").solve(problem)
    result = get_solver("cpsat").solve(problem, time_limit=30)
    if reference.status.value == "INFEASIBLE":
        assert result.status.value == "INFEASIBLE"
        assert brute_force(request) is None
        return
    assert result.status.value == "OPTIMAL"
    assert problem.feasible(result.choice)
    assert result.objective == pytest.approx(reference.objective, abs=1e-3)


@pytest.mark.parametrize("seed", SEEDS)
def test_pattern_plans_match_brute_force(seed):
    """The plan's bound is the brute-force optimum over every (pattern, count) combination, its
    layers are one such feasible combination, and its latency is what the table says."""
    request = random_request(seed)
    best = brute_force(request)
    if best is None:
        with pytest.raises(InfeasibleError):
            run(request, cache=RankCache(disk=False))
        return
    plan = run(request, cache=RankCache(disk=False))
    assert plan.solver["name"] == "exhaustive"
    assert plan.objective["log2_bound"] == pytest.approx(best[0], abs=1e-6)
    hidden = [layer for layer in plan.layers if layer.in_bound]
    assert all(layer.pattern in request.patterns.split(",") or layer.keep == layer.size for layer in hidden)
    assert plan.kept <= validate(request).budget
    assert plan.objective["latency_ms"] <= request.max_latency + 1e-12
    assert plan.objective["latency_ms"] == pytest.approx(sum(layer.latency_ms for layer in plan.layers), abs=1e-5)


@pytest.mark.parametrize("seed", SEEDS[:6])
def test_the_integer_program_route_is_feasible_and_certified(seed, monkeypatch):
    """Without the exhaustive scoring (many combinations), the plan comes from CP-SAT and the
    exact polish: it meets every budget, and its certificate covers the brute-force optimum."""
    monkeypatch.setattr(P, "EXHAUSTIVE_MAX_COMBINATIONS", 0)
    request = random_request(seed)
    best = brute_force(request)
    if best is None:
        with pytest.raises(InfeasibleError):
            run(request, cache=RankCache(disk=False))
        return
    plan = run(request, cache=RankCache(disk=False))
    assert plan.solver["name"] == "cpsat"
    assert plan.objective["log2_bound"] <= best[0] + 1e-6
    assert plan.objective["certificate_log2_upper"] >= best[0] - 1e-6
    assert plan.objective["latency_ms"] <= request.max_latency + 1e-12


def test_equal_counts_keep_the_pattern_of_least_latency():
    """Without a latency cap, a count two patterns share goes to the faster one; a cap the
    unstructured plan exceeds moves layers to a cheaper pattern."""
    extra = [{"pattern": "bcr:2x2", "rows": r, "cols": c, "density": d, "ms": 1e-6 * r * c * per}
             for r, c in ((10, 10), (1000, 1000)) for d, per in ((0.1, 1.0), (0.5, 3.0))]
    table = LatencyTable.from_dict(small_table(extra=extra))
    base = dict(density=0.3, rank_model="analytic", tie_break="none", grid=6, latency_table=table)
    free = run(PlanRequest.build("12,10,10,3", patterns="unstructured,bcr:2x2", **base), cache=RankCache(disk=False))
    hidden = [layer for layer in free.layers if layer.in_bound]
    for layer in hidden:
        if layer.keep < layer.size and bcr.nearest_count((layer.rows, layer.cols), (2, 2), layer.keep) == layer.keep:
            assert layer.pattern == "bcr:2x2"  # BCR allows the count and runs faster in this table
    only = run(PlanRequest.build("12,10,10,3", patterns="unstructured", **base), cache=RankCache(disk=False))
    assert all(layer.pattern in ("unstructured", "dense") for layer in only.layers)
    cap = round(only.objective["latency_ms"] * 0.8, 6)
    capped = run(PlanRequest.build("12,10,10,3", patterns="unstructured,bcr:2x2", max_latency=cap, **base),
                 cache=RankCache(disk=False))
    assert capped.objective["latency_ms"] <= cap
    with pytest.raises(InfeasibleError):
        run(PlanRequest.build("12,10,10,3", patterns="unstructured", max_latency=1e-6, **base),
            cache=RankCache(disk=False))


def test_layers_outside_the_bound_and_convolutions_pay_their_latency():
    """A layer outside the bound keeps the global density, unstructured, and costs the table's
    time times its output positions (a conv); the frozen output layer costs its dense time."""
    from planner.allocation.request import WeightLayer

    table = LatencyTable.from_dict(small_table())
    layers = [WeightLayer("conv", 10, 10, in_bound=False, flops_per_weight=4, why="convolution"),
              WeightLayer("fc1", 10, 10, in_bound=True), WeightLayer("fc2", 10, 10, in_bound=True),
              WeightLayer("out", 3, 10, frozen=True)]
    request = PlanRequest.build(layers=layers, density=0.3, rank_model="analytic", patterns="unstructured",
                                latency_table=table, architecture_info={"input_size": 10})
    plan = run(request, cache=RankCache(disk=False))
    conv, out = plan.layer("conv"), plan.layer("out")
    assert conv.pattern == "unstructured" and out.pattern == "dense"
    assert conv.latency_ms == pytest.approx(round(4 * table.ms("unstructured", 10, 10, conv.keep / 100), 6))
    assert out.latency_ms == pytest.approx(round(table.ms("dense", 3, 10, 1.0), 6))
    with pytest.raises(ProblemError, match="add unstructured"):
        run(dataclasses.replace(request, patterns="bcr:2x2",
                                latency_table=LatencyTable.from_dict(small_table(extra=[
                                    {"pattern": "bcr:2x2", "rows": 10, "cols": 10, "density": 0.5, "ms": 1e-4}]))),
            cache=RankCache(disk=False))


def test_requests_pattern_aware_plans_refuse():
    base = dict(density=0.3, rank_model="analytic")
    for fields, error, message in (
            ({"patterns": "unstructured", "objective": "sensitivity"}, ProblemError, "bound alone"),
            ({"max_latency": 1.0, "bound_floor": 1}, ProblemError, "bound alone"),
            ({"max_latency": 1.0, "solver": "paper"}, ProblemError, "paper"),
            ({"max_latency": -1.0}, ProblemError, "positive"),
            ({"max_latency": float("nan")}, ProblemError, "positive"),
            ({"latency_table": "x.json"}, ProblemError, "pattern-aware"),
            ({"patterns": "bcr:4"}, PatternError, "bcr takes")):
        with pytest.raises(error, match=message):
            validate(PlanRequest.build("12,10,10,3", **base, **fields))


def test_plans_without_patterns_are_unchanged():
    plan = run(PlanRequest.build("12,10,10,3", density=0.3, rank_model="analytic"), cache=RankCache(disk=False))
    text = plan.to_json()
    assert '"pattern"' not in text and "latency" not in text
    assert Plan.from_json(text).to_json() == text


def test_plan_file_round_trip_and_schema():
    extra = [{"pattern": "1:2", "rows": r, "cols": c, "density": 0.5, "ms": 1e-6 * r * c} for r, c in ((10, 10),)]
    table = LatencyTable.from_dict(small_table(extra=extra))
    plan = run(PlanRequest.build("12,10,10,3", density=0.3, rank_model="analytic", patterns="unstructured,1:2",
                                 latency_table=table), cache=RankCache(disk=False))
    text = plan.to_json()
    again = Plan.from_json(text)
    assert again.to_json() == text
    assert [layer.pattern for layer in again.layers][-1] == "dense"
    data = json.loads(text)
    data["layers"][0]["pattern"] = "bcr:0x4"
    with pytest.raises(PlanFormatError, match="pattern"):
        Plan.from_dict(data)


# ----------------------------------------------------------------------------- CLI and apply

torch = pytest.importorskip("torch")

from planner.cli import main  # noqa: E402


def write_table(path, patterns=("unstructured", "bcr:8x8", "2:4")):
    entries = []
    for r, c in ((100, 64), (100, 100)):
        entries.append({"pattern": "dense", "rows": r, "cols": c, "density": 1.0, "ms": 0.1 * r * c / 6400})
        for p in patterns:
            ds = (0.5,) if ":" in p and not p.startswith("bcr") else (0.1, 0.25, 0.5)
            for d in ds:
                entries.append({"pattern": p, "rows": r, "cols": c, "density": d,
                                "ms": (0.05 + 0.1 * d) * r * c / 6400 * (0.5 if p.startswith("bcr") else 1.0)})
    path.write_text(json.dumps({"format": "sparsity-latency/1", "batch": 64, "threads": 1, "entries": entries}))


def test_cli_refuses_bad_values(tmp_path, capsys):
    write_table(tmp_path / "t.json", patterns=("unstructured",))
    base = ["plan", "--arch", "64,100,100,10", "--density", "0.3", "--rank-model", "analytic"]
    for args, message in ((["--patterns", "foo"], "unknown pattern"),
                          (["--patterns", "bcr:0x4"], "bcr takes"),
                          (["--patterns", "5:4"], "N:M"),
                          (["--patterns", "2:4,2:4"], "twice"),
                          (["--max-latency", "-1"], "max-latency"),
                          (["--max-latency", "nan"], "max-latency"),
                          (["--max-latency", "inf"], "max-latency"),
                          (["--latency-table", str(tmp_path / "t.json")], "goes with --patterns"),
                          (["--max-latency", "1", "--latency-table", str(tmp_path / "missing.json")], "cannot read"),
                          (["--patterns", "bcr:8x8", "--latency-table", str(tmp_path / "t.json")],
                           "no entries for pattern bcr:8x8"),
                          (["--patterns", "2:4", "--strategy", "uniform"], "lr-bound"),
                          (["--patterns", "2:4", "--bound-floor", "1"], "bound alone"),
                          (["--max-latency", "1e-6"], "alone take"),
                          (["--max-latency", "0.005"], "meet")):
        assert main(base + args) == 2, args
        err = capsys.readouterr().err
        assert message in err, (args, err)
        assert err.count("\n") == 1 and "Traceback" not in err


def test_cli_plan_then_apply_realizes_each_layers_pattern(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "examples").symlink_to(__import__("examples").__path__[0])
    write_table(tmp_path / "t.json")
    args = ["plan", "--arch", "64,100,100,10", "--density", "0.3", "--rank-model", "analytic", "--patterns",
            "bcr:8x8,2:4", "--latency-table", "t.json", "--max-latency", "0.25", "-o", "plan.json"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "pattern" in out and "latency" in out and "(at most 0.25)" in out
    plan = Plan.load(tmp_path / "plan.json")
    hidden = [layer for layer in plan.layers if layer.in_bound]
    assert {layer.pattern for layer in hidden} <= {"bcr:8x8", "2:4"}
    assert plan.objective["latency_ms"] <= 0.25
    base = ["apply", "--model", "examples.models:digits_mlp", "--plan", "plan.json", "-o", "out.pt"]
    assert main(base + ["--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    state = torch.load(tmp_path / "out.pt", weights_only=True)
    for layer, applied in zip(hidden, report["layers"]):
        mask = (state[f"{layer.name}.weight"] != 0).numpy()
        assert applied["kept"] == layer.keep == int(mask.sum())  # the plan's counts are the pattern's own
        if layer.pattern == "2:4":
            assert nm.nm_violations(mask, 2, 4) == [] and applied["criterion"] == "nm 2:4"
        else:
            assert bcr.bcr_violations(mask, (8, 8)) == [] and applied["criterion"] == "bcr 8x8"
    assert main(base + ["--criterion", "random"]) == 2
    assert "apply it with the default --criterion magnitude" in capsys.readouterr().err
