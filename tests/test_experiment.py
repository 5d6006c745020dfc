"""The accuracy experiment end to end (tiny settings): the compare command, its files, determinism."""

import csv
import json

import numpy as np
import pytest

from planner.cli import cli, main
from planner.cli.compare import compare_command
from planner.experiments.compare import Comparison, ExperimentError, compare, parse_strategy
from planner.experiments.report import markdown_table, paired_differences, summarize, write_outputs

if "compare" not in cli.commands:
    cli.add_command(compare_command)

TINY = ["compare", "--dataset", "digits", "--arch", "64,100,100,10", "--densities", "0.05,0.02",
        "--strategies", "lr-bound,uniform,lamp", "--seeds", "1", "--epochs", "1", "--finetune-epochs", "1",
        "--lr", "0.1", "--no-progress"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    import os

    import planner.core.rank as rank

    out = tmp_path_factory.mktemp("compare-out")
    saved = os.environ.get("SPARSITY_PLANNER_CACHE_DIR"), rank._default_cache
    os.environ["SPARSITY_PLANNER_CACHE_DIR"] = str(tmp_path_factory.mktemp("rank-cache-module"))
    rank._default_cache = None
    try:
        import contextlib
        import io

        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            rc = main([*TINY, "--json", "--out", str(out)])
    finally:
        if saved[0] is None:
            os.environ.pop("SPARSITY_PLANNER_CACHE_DIR", None)
        else:
            os.environ["SPARSITY_PLANNER_CACHE_DIR"] = saved[0]
        rank._default_cache = saved[1]
    return rc, buf.getvalue(), out


def test_compare_cli_rows(tiny_run):
    rc, stdout, _ = tiny_run
    assert rc == 0
    data = json.loads(stdout)
    rows = data["results"]
    assert {(r["strategy"], r["density"], r["seed"]) for r in rows} == {
        (s, d, 0) for s in ("lr-bound", "uniform", "lamp") for d in (0.05, 0.02)}
    assert len(rows) == 6
    for r in rows:
        assert 0.0 <= r["accuracy"] <= 1.0 and len(r["per_class_recall"]) == 10
        assert r["log2_bound"] > 0
        # realized per-layer densities (read from the masks) are the plan's
        assert r["densities"] == pytest.approx(r["plan_densities"], abs=0)
        assert r["densities"][-1] == 1.0  # the output layer stays dense
        assert r["kept"] == round(r["density"] * (64 * 100 + 100 * 100))
    for d in (0.05, 0.02):
        assert len({r["kept"] for r in rows if r["density"] == d}) == 1
    by = {(r["strategy"], r["density"]): r for r in rows}
    assert by[("uniform", 0.05)]["densities"][:2] == pytest.approx([0.05, 0.05])
    # the bound-guided plan is never below uniform in bound
    assert by[("lr-bound", 0.02)]["log2_bound"] >= by[("uniform", 0.02)]["log2_bound"] - 1e-6
    assert data["config"]["epochs"] == 1 and data["config"]["output_layer"] == "dense"
    assert len(data["dense"]) == 1


def test_compare_cli_writes_files(tiny_run):
    _, stdout, out = tiny_run
    for name in ("results.csv", "results.json", "summary.md", "accuracy.png", "bound.png", "compare.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    assert not list(out.glob(".*.tmp"))
    saved = json.loads((out / "results.json").read_text())
    assert saved["results"] == json.loads(stdout)["results"]
    with open(out / "results.csv", newline="") as fh:
        table = list(csv.DictReader(fh))
    assert len(table) == 6 and json.loads(table[0]["densities"]) == saved["results"][0]["densities"]
    assert (out / "accuracy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "lr-bound" in (out / "summary.md").read_text()
    # results.json reads back and redraws the same files
    again = Comparison.load(out / "results.json")
    assert again.rows == saved["results"] and again.config == saved["config"]
    redraw = out / "redraw"
    write_outputs(again, redraw)
    assert (redraw / "results.csv").read_text() == (out / "results.csv").read_text()
    (out / "bad.json").write_text("[1, 2]")
    with pytest.raises(ExperimentError, match="not a results.json"):
        Comparison.load(out / "bad.json")


def test_compare_is_deterministic_and_paired(tiny_run):
    _, stdout, _ = tiny_run
    first = {(r["strategy"], r["density"]): r["accuracy"] for r in json.loads(stdout)["results"]}
    # the same seed again, through the library, with a subset of the strategies and densities:
    # each row depends only on its own (strategy, density, seed)
    again = compare("digits", "64,100,100,10", [0.02], ["uniform", "lamp"], 1, epochs=1, finetune_epochs=1,
                    lr=0.1, progress=False)
    for r in again.rows:
        assert r["accuracy"] == first[(r["strategy"], r["density"])]


def test_masks_hold_during_fine_tuning():
    import torch

    from planner.pruning.masks import apply_plan, finalize
    from planner.allocation.baselines import baseline_plan
    from planner.experiments.training import make_mlp, train

    model = make_mlp((64, 100, 100, 10), seed=0)
    p = baseline_plan("erk", "64,100,100,10", density=0.03, rank_model="analytic")
    apply_plan(model, p)
    X = torch.rand(64, 64)
    y = torch.randint(0, 10, (64,))
    train(model, X, y, epochs=3, lr=0.5, batch_size=16, generator=torch.Generator().manual_seed(0))
    finalize(model)
    for layer in p.layers:
        assert int((model.get_submodule(layer.name).weight != 0).sum()) == layer.keep


@pytest.mark.parametrize("args,message", [
    (["--strategies", "lr-bound,magic"], "unknown strategy 'magic'"),
    (["--strategies", "lr-bound:fastest"], "unknown tie-break"),
    (["--densities", "0.1,,0.05"], "--densities"),
    (["--densities", "0.1,abc"], "'abc' is not a number"),
    (["--densities", "0"], "(0, 1]"),
    (["--arch", "784,100,100,10"], "input size 784 does not match dataset digits, which has 64 features"),
    (["--arch", "64,100,100,7"], "output size 7"),
    (["--dataset", "mnist", "--arch", "784,100,10"], "--data-dir"),
])
def test_compare_cli_errors_are_one_line(capsys, args, message):
    assert main(["compare", "--no-progress", "--epochs", "1", "--finetune-epochs", "0", *args]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


def test_strategy_names():
    assert parse_strategy("lr-bound") == ("lr-bound", "auto")
    assert parse_strategy("lr-bound:robust-analytic") == ("lr-bound", "robust-analytic")
    assert parse_strategy("erk") == ("erk", None)
    with pytest.raises(ExperimentError):
        parse_strategy("erk:robust")


def test_summaries_and_verdicts():
    rows = []
    for seed, (a, b) in enumerate([(0.9, 0.8), (0.8, 0.8), (0.7, 0.6)]):
        rows.append({"strategy": "lr-bound", "density": 0.1, "seed": seed, "accuracy": a, "log2_bound": 10.0,
                     "densities": [0.1, 1.0]})
        rows.append({"strategy": "uniform", "density": 0.1, "seed": seed, "accuracy": b, "log2_bound": 9.0,
                     "densities": [0.1, 1.0]})
    s = {x["strategy"]: x for x in summarize(rows)}
    assert s["lr-bound"]["accuracy_mean"] == pytest.approx(0.8)
    assert s["lr-bound"]["accuracy_se"] == pytest.approx(np.std([0.9, 0.8, 0.7], ddof=1) / np.sqrt(3))
    (d,) = paired_differences(rows)
    assert d["difference_mean"] == pytest.approx(0.2 / 3)
    assert d["difference_se"] == pytest.approx(np.std([0.1, 0.0, 0.1], ddof=1) / np.sqrt(3))
    assert d["verdict"] == "win"
    assert "80.00 ± 5.77" in markdown_table(rows)
