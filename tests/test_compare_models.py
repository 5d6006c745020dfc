"""compare --model: the accuracy experiment on a model factory (a CNN on digits), planned through
the model route; kept counts checked against independent oracles (closed forms, a brute-force
global threshold on the stored dense weights, the planner on a fresh model)."""

import json

import numpy as np
import pytest

from planner.cli import main

STRATEGIES = ["lr-bound", "uniform", "erk", "global", "lamp"]
#: the sweep's settings (a fifth of digits keeps the test fast; the split's classes are all there)
SWEEP = dict(densities=[0.02], seeds=1, epochs=2, finetune_epochs=1, rank_model="analytic", progress=False,
             model="examples.models:digits_cnn")


def _data():
    from planner.experiments.data import load_dataset

    X_tr, y_tr, X_te, y_te = load_dataset("digits")
    return X_tr[:300], y_tr[:300], X_te[:100], y_te[:100]


#: digits_cnn's layers (name, size) and its prunable weights (every layer but the output)
LAYERS = [("features.0", 8 * 9), ("features.2", 16 * 72), ("classifier.1", 64 * 256), ("classifier.3", 10 * 64)]
PRUNABLE = 8 * 9 + 16 * 72 + 64 * 256


@pytest.fixture(scope="module")
def cnn_run(tmp_path_factory):
    pytest.importorskip("torch")
    from planner.experiments.compare import compare

    out = tmp_path_factory.mktemp("cnn-out")
    result = compare("digits", strategies=STRATEGIES, data=_data(), resume_dir=out / "jobs", **SWEEP)
    return result.to_dict(), out


def _dense_weights(out):
    """The trained dense model's prunable weights, decoded from the dense job in --out/jobs."""
    from planner.experiments.compare import _decode_state

    for path in (out / "jobs").glob("*.json"):
        record = json.loads(path.read_text())
        if record.get("spec", {}).get("job") == "dense":
            state = _decode_state(record["result"]["state"])
            return {name: state[f"{name}.weight"].numpy() for name, _ in LAYERS}
    raise AssertionError("no dense job stored")


def test_cnn_rows_keep_what_the_plans_say(cnn_run):
    import examples.models as models
    import planner

    data, out = cnn_run
    rows = {r["strategy"]: r for r in data["results"]}
    assert list(rows) == ["lr-bound", "uniform", "erk", "global", "lamp"]
    budget = round(0.02 * PRUNABLE)
    for r in rows.values():
        assert set(r) == {"strategy", "density", "seed", "accuracy", "accuracy_pruned", "dense_accuracy",
                          "log2_bound", "kept", "densities", "plan_densities", "per_class_recall", "criterion",
                          "pruning_ratio", "normalized_balance", "intensification_ratio", "intensification_slope",
                          "intensification_slope_pruned", "svcca"}
        assert r["criterion"] == "magnitude" and all(0 <= v <= 1 + 1e-9 for v in r["svcca"])
        assert r["densities"] == r["plan_densities"]  # the masks keep exactly the plan
        assert r["densities"][-1] == 1.0  # the output layer stays dense
        assert r["kept"] == budget == sum(round(d * size) for d, (_, size) in zip(r["densities"][:-1], LAYERS))
        assert 0 <= r["accuracy"] <= 1 and len(r["per_class_recall"]) == 10
    # uniform: every prunable layer within one weight of 2%
    for d, (_, size) in zip(rows["uniform"]["densities"][:-1], LAYERS):
        assert abs(d * size - 0.02 * size) < 1
    # lr-bound: the planner's plan of the model (it does not depend on the weights)
    fresh = planner.plan(models.digits_cnn(), density=0.02, input_shape=(1, 8, 8), rank_model="analytic")
    assert rows["lr-bound"]["plan_densities"] == [layer.density for layer in fresh.layers]
    # global: one magnitude threshold over every prunable weight of the trained dense model
    weights = _dense_weights(out)
    magnitudes = np.concatenate([np.abs(weights[name]).ravel() for name, _ in LAYERS[:-1]])
    threshold = np.sort(magnitudes)[-budget]
    expected = [int((np.abs(weights[name]) >= threshold).sum()) for name, _ in LAYERS[:-1]]
    assert [round(d * size) for d, (_, size) in zip(rows["global"]["densities"], LAYERS)][:-1] == expected
    # erk gives the small convolutions a larger share than uniform
    assert rows["erk"]["densities"][0] > rows["uniform"]["densities"][0]
    config = data["config"]
    assert config["model"] == "examples.models:digits_cnn" and config["input_shape"] == [1, 8, 8]
    assert config["prunable"] == PRUNABLE and "arch" not in config
    assert config["layers"] == [name for name, _ in LAYERS]


def test_cnn_rows_are_the_same_with_two_workers(cnn_run):
    from planner.experiments.compare import compare

    data, _ = cnn_run
    two = compare("digits", strategies=["uniform", "lamp"], data=_data(), n_jobs=2, **SWEEP).to_dict()
    by = {r["strategy"]: r for r in data["results"]}
    assert two["results"] == [by["uniform"], by["lamp"]] and two["dense"] == data["dense"]


@pytest.mark.parametrize("args,message", [
    (["--arch", "64,100,100,10"], "give --arch or --model, not both"),
    (["--model", "examples.models:no_such_factory"], "no_such_factory"),
    (["--model", "no_such_package.models:f"], "cannot import 'no_such_package'"),
    (["--model", "examples.models:digits_cnn", "--input-shape", "1,9,9"], "--input-shape 1,9,9 has 81 values"),
    (["--model", "examples.models:lenet5"], "cannot run on inputs of shape 1,8,8"),
    (["--model", "examples.models:digits_cnn", "--model-kwargs", "[1]"], "--model-kwargs must be a JSON object"),
    (["--model", "examples.models:mlp", "--model-kwargs", '{"sizes": [64, 32, 7]}'], "which has 10 classes"),
    (["--model", "examples.models:digits_cnn", "--model-kwargs", '{"width": 2}'], "unexpected keyword argument"),
    (["--input-shape", "1,8,8"], "--input-shape goes with --model"),
])
def test_compare_model_errors_are_one_line(capsys, args, message):
    base = ["compare", "--no-progress", "--epochs", "1", "--finetune-epochs", "0", "--densities", "0.1",
            "--strategies", "uniform"]
    if args[0] != "--model" and "--model" not in args and args[0] != "--input-shape":
        base += ["--model", "examples.models:digits_cnn"]
    assert main([*base, *args]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


def test_an_mlp_factory_gives_the_rows_of_the_same_arch(capsys):
    """examples.models:digits_mlp is --arch 64,100,100,10 with the same initial weights (seeded the
    same way, the same layer order): the model route must give the arch route's rows exactly."""
    pytest.importorskip("torch")
    common = ["compare", "--densities", "0.05,0.01", "--strategies", "lr-bound,uniform,erk,global,lamp",
              "--seeds", "1", "--epochs", "2", "--finetune-epochs", "1", "--rank-model", "analytic",
              "--no-progress", "--json"]
    rows = {}
    for name, extra in (("arch", ["--arch", "64,100,100,10"]), ("model", ["--model", "examples.models:digits_mlp"])):
        assert main([*common, *extra]) == 0, capsys.readouterr().err
        rows[name] = json.loads(capsys.readouterr().out)
    assert rows["model"]["results"] == rows["arch"]["results"]
    assert rows["model"]["dense"] == rows["arch"]["dense"]
    assert rows["model"]["config"]["input_shape"] == [64]  # no convolution: the flat features


def test_two_seed_cnn_run_has_a_dense_reference():
    """The dense-vs-dense SVCCA reference also works for a factory's model (it had assumed an MLP)."""
    pytest.importorskip("torch")
    from planner.experiments.compare import compare

    sweep = dict(SWEEP, seeds=2, epochs=1, finetune_epochs=0)
    result = compare("digits", strategies=["uniform"], data=_data(), **sweep).to_dict()
    refs = [d["svcca_reference"] for d in result["dense"]]
    assert all(len(r) == 3 and all(0 <= v <= 1 + 1e-9 for v in r) for r in refs)
