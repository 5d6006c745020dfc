"""Structured masks: BCR (block column-row) and N:M, checked against brute force and torch.ao."""

import itertools
import io

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from planner.errors import PatternError
from planner.pruning import bcr, nm

torch = pytest.importorskip("torch")

from examples import models  # noqa: E402
from planner.allocation.planfile import Plan, PlanLayer  # noqa: E402
from planner.cli import main  # noqa: E402
from planner.pruning.masks import apply_plan, compute_masks, finalize  # noqa: E402

HYP = settings(max_examples=60, deadline=None, derandomize=True)


def brute_force_bcr(w, keep, block):
    """Best kept squared norm over every per-block (r, c) with the top-norm rows/columns, for the
    nearest reachable count (ties: the lower), by enumeration."""
    rows, cols = w.shape
    R, C = block
    blocks = []
    for i in range(0, rows, R):
        for j in range(0, cols, C):
            b = w[i:i + R, j:j + C]
            ro = np.argsort(-(b * b).sum(1), kind="stable")
            co = np.argsort(-(b * b).sum(0), kind="stable")
            opts = {}
            for r in range(b.shape[0] + 1):
                for c in range(b.shape[1] + 1):
                    v = float((b[np.ix_(ro[:r], co[:c])] ** 2).sum())
                    opts[r * c] = max(opts.get(r * c, -1.0), v)
            blocks.append(opts)
    best = {0: 0.0}
    for opts in blocks:
        new = {}
        for a, va in best.items():
            for k, v in opts.items():
                if va + v > new.get(a + k, -1.0):
                    new[a + k] = va + v
        best = new
    target = min(best, key=lambda k: (abs(k - keep), k))
    return target, best[target]


@HYP
@given(rows=st.integers(1, 13), cols=st.integers(1, 13), R=st.integers(1, 6), C=st.integers(1, 6),
       frac=st.floats(0, 1), seed=st.integers(0, 2**16))
def test_bcr_hits_the_count_and_keeps_dense_sub_blocks(rows, cols, R, C, frac, seed):
    w = np.random.default_rng(seed).standard_normal((rows, cols))
    keep = round(frac * rows * cols)
    mask = bcr.bcr_mask_2d(w, keep, (R, C))
    assert bcr.bcr_violations(mask, (R, C)) == []
    reach = bcr.reachable_counts((rows, cols), (R, C))
    want = min(reach, key=lambda k: (abs(k - keep), k))   # exact when reachable, else the nearest (lower)
    assert int(mask.sum()) == want
    if (rows // R + 1) * (cols // C + 1) <= 9:  # small enough to enumerate every choice
        count, value = brute_force_bcr(w, keep, (R, C))
        assert count == want
        assert float((w[mask] ** 2).sum()) == pytest.approx(value, rel=1e-9, abs=1e-12)


@HYP
@given(rows=st.integers(33, 60), cols=st.integers(33, 60), R=st.integers(1, 4), C=st.integers(1, 4),
       frac=st.floats(0, 1), seed=st.integers(0, 2**16))
def test_bcr_lagrangian_route_is_exact_and_near_the_dp(rows, cols, R, C, frac, seed):
    """Layers with more blocks than DP_BLOCKS go through the Lagrangian bracket and a partial DP:
    the count is still exact, and the kept norm is never above the exact DP's (an upper bound)
    and within 1% of it."""
    w = np.random.default_rng(seed).standard_normal((rows, cols))
    keep = round(frac * rows * cols)
    mask = bcr.bcr_mask_2d(w, keep, (R, C))   # many blocks: the Lagrangian route
    assert bcr.bcr_violations(mask, (R, C)) == []
    assert int(mask.sum()) == keep
    nblocks = -(-rows // R) * -(-cols // C)
    assert nblocks > bcr.DP_BLOCKS
    old = bcr.DP_BLOCKS, bcr.DP_CELLS
    try:
        bcr.DP_BLOCKS, bcr.DP_CELLS = 10**9, 10**12
        exact = bcr.bcr_mask_2d(w, keep, (R, C))
    finally:
        bcr.DP_BLOCKS, bcr.DP_CELLS = old
    got, best = float((w[mask] ** 2).sum()), float((w[exact] ** 2).sum())
    assert got <= best + 1e-9
    assert got >= 0.99 * best - 1e-9


def test_bcr_fixed_rows_or_columns():
    w = np.random.default_rng(1).standard_normal((16, 24))
    mask = bcr.bcr_mask_2d(w, 100, (8, 8), keep_rows=0.5)
    blocks = [mask[i:i + 8, j:j + 8] for i in (0, 8) for j in (0, 8, 16)]
    assert all(int(b.any(axis=1).sum()) in (0, 4) for b in blocks)
    assert int(mask.sum()) == 100  # 4 rows x 25 columns over the 6 blocks
    both = bcr.bcr_mask_2d(w, 1, (8, 8), keep_rows=0.5, keep_cols=0.25)
    assert int(both.sum()) == 6 * 4 * 2  # the fractions fix the count
    assert bcr.bcr_violations(both, (8, 8)) == []


def test_bcr_check_catches_non_dense_blocks():
    m = np.ones((4, 4), dtype=bool)
    assert bcr.bcr_violations(m, (2, 2)) == []
    m[0, 0] = False  # block (0, 0) now holds 3 survivors: rows {0,1} x cols {0,1} is not all kept
    assert bcr.bcr_violations(m, (2, 2)) == [(0, 0)]
    with pytest.raises(PatternError, match="block"):
        bcr.check_bcr_mask(m, (2, 2))


def test_parsers_refuse_bad_patterns():
    assert bcr.parse_block("16x8") == (16, 8)
    assert nm.parse_pattern("2:4") == (2, 4)
    for bad in ("16", "0x4", "ax4", "-1x2", None):
        with pytest.raises(PatternError):
            bcr.parse_block(bad)
    for bad in ("4:2", "0:4", "2/4", "2:", None):
        with pytest.raises(PatternError):
            nm.parse_pattern(bad)


@HYP
@given(rows=st.integers(1, 8), cols=st.integers(1, 30), n=st.integers(1, 6), extra=st.integers(0, 5),
       seed=st.integers(0, 2**16))
def test_nm_keeps_exactly_the_n_largest_per_group(rows, cols, n, extra, seed):
    m = n + extra
    w = np.random.default_rng(seed).standard_normal((rows, cols))
    mask = nm.nm_mask_2d(w, n, m)
    assert nm.nm_violations(mask, n, m) == []
    for r in range(rows):
        for start in range(0, cols, m):
            group = np.abs(w[r, start:start + m])
            kept = mask[r, start:start + m]
            assert int(kept.sum()) == min(n, len(group))
            if kept.any() and (~kept).any():
                assert group[kept].min() >= group[~kept].max()


def test_nm_matches_torch_ao_weight_norm_sparsifier():
    from torch.ao.pruning import WeightNormSparsifier

    model = models.mlp((24, 16, 12, 5), seed=2)
    names = ["fc1", "fc2"]
    ours = {n: nm.nm_mask_2d(model.get_submodule(n).weight.detach().double().numpy(), 2, 4) for n in names}
    sparsifier = WeightNormSparsifier()
    sparsifier.prepare(model, nm.torch_ao_config(names, "2:4"))
    sparsifier.step()
    sparsifier.squash_mask()
    for n in names:
        assert np.array_equal(model.get_submodule(n).weight.detach().numpy() != 0, ours[n])


def _plan(model, names, density):
    layers = []
    for name in names:
        w = model.get_submodule(name).weight
        layers.append(PlanLayer(name, w.shape[0], w[0].numel(), round(density * w.numel())))
    return Plan({}, "hand", {}, layers)


def test_apply_bcr_on_conv_and_linear_and_compact_round_trip():
    model = models.lenet5()
    names = ["features.0", "features.3", "classifier.1", "classifier.3"]
    plan = _plan(model, names, 0.3)
    report = apply_plan(model, plan, "bcr", options={"block": "8x8"})
    for layer, applied in zip(plan.layers, report.layers):
        module = model.get_submodule(layer.name)
        assert bcr.bcr_violations(module.weight_mask.reshape(module.weight.shape[0], -1), (8, 8)) == []
        assert applied.kept == layer.keep
    x = torch.randn(3, 1, 32, 32)
    compact = bcr.compact_state_dict(model, "8x8")
    finalize(model)
    expected = model(x)
    assert not any(f"{n}.weight" in compact for n in names)
    buffer = io.BytesIO()
    torch.save(compact, buffer)
    buffer.seek(0)
    torch.manual_seed(1)  # a fresh model with other weights: everything must come from the compact file
    rebuilt = bcr.load_compact_state_dict(models.LeNet5(), torch.load(buffer, weights_only=True))
    assert torch.equal(rebuilt(x), expected)
    stored = sum(compact[f"{n}.bcr.values"].numel() for n in names)
    assert stored == sum(layer.keep for layer in plan.layers)


def test_bcr_linear_runs_as_dense_sub_blocks():
    w = torch.randn(40, 50, dtype=torch.float64)
    mask = torch.from_numpy(bcr.bcr_mask_2d(w.numpy(), 600, (16, 16)))
    w = w * mask
    bias = torch.randn(40, dtype=torch.float64)
    x = torch.randn(7, 50, dtype=torch.float64)
    for mode in ("padded", "grouped"):
        layer = bcr.bcr_linear(bcr.compact_layer(w, (16, 16), mask), bias, mode=mode)
        assert torch.allclose(layer(x), x @ w.T + bias, atol=1e-12)


def test_apply_nm_prunes_the_layers_the_plan_prunes():
    model = models.mlp((24, 16, 12, 5), seed=0)
    plan = Plan({}, "hand", {}, [PlanLayer("fc1", 16, 24, 100), PlanLayer("fc2", 12, 16, 192),
                                 PlanLayer("fc3", 5, 12, 60, frozen=True)])
    masks = compute_masks(model, plan, "nm", options={"pattern": "1:4"})
    assert int(masks["fc1"].sum()) == 16 * 24 // 4 and bool(masks["fc2"].all())
    report = apply_plan(model, plan, "nm", options={"pattern": "1:4"})
    assert [a.kept for a in report.layers] == [96, 192]
    assert any("1/4" in note for note in report.notes)


def test_apply_cli_structured(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "examples").symlink_to(__import__("examples").__path__[0])
    plan = _plan(models.lenet_300_100(), ["fc1", "fc2"], 0.05)
    plan.save(tmp_path / "plan.json")
    base = ["apply", "--model", "examples.models:lenet_300_100", "--plan", "plan.json", "-o", "out.pt"]
    assert main(base + ["--criterion", "bcr", "--block", "16x16", "--compact", "c.pt"]) == 0
    out = capsys.readouterr().out
    assert "bcr 16x16" in out and "compact BCR state dict written" in out
    state = torch.load(tmp_path / "out.pt", weights_only=True)
    assert int((state["fc1.weight"] != 0).sum()) <= plan.layers[0].keep
    rebuilt = bcr.load_compact_state_dict(models.lenet_300_100(seed=5), torch.load(tmp_path / "c.pt",
                                                                                    weights_only=True))
    assert all(torch.equal(rebuilt.state_dict()[k], v) for k, v in state.items())
    assert main(base + ["--criterion", "nm", "--pattern", "2:4"]) == 0
    state = torch.load(tmp_path / "out.pt", weights_only=True)
    assert nm.nm_violations(state["fc1.weight"] != 0, 2, 4) == []
    for args, message in ((["--criterion", "bcr"], "needs --block"), (["--criterion", "nm"], "needs --pattern"),
                          (["--block", "4x4"], "goes with --criterion bcr"),
                          (["--criterion", "bcr", "--block", "4x4", "--pattern", "2:4"], "goes with --criterion nm"),
                          (["--criterion", "nm", "--pattern", "5:4"], "N:M"),
                          (["--criterion", "bcr", "--block", "4x4", "--keep-rows", "1.5"], "keep-rows")):
        assert main(base + args) == 2
        assert message in capsys.readouterr().err


def test_compact_needs_masks_and_refuses_non_bcr():
    model = models.mlp((24, 16, 12, 5), seed=0)
    with pytest.raises(PatternError, match="no pruning mask"):
        bcr.compact_state_dict(model, "4x4")
    mask = torch.ones(16, 24, dtype=torch.bool)
    mask[0, 0] = False  # one hole: not a dense sub-matrix in block (0, 0)
    with pytest.raises(PatternError, match="not block column-row"):
        bcr.compact_state_dict(model, "4x4", masks={"fc1": mask})
