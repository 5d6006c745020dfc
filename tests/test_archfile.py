"""Architecture files (``--model cnn.yaml``): shapes against torch's own forward, models against
the Python definitions they transcribe, bounds and plans against the factory route, and every
mistake as one line with exit 2."""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")

from hypothesis import given, settings, strategies as st  # noqa: E402

from planner.errors import ArchitectureError, ModelError  # noqa: E402
from planner.pruning import archfile  # noqa: E402
from planner.pruning.model import load_factory, model_layers  # noqa: E402


def run_cli(capsys, monkeypatch, *argv):
    from planner.cli import main

    monkeypatch.setenv("SPARSITY_PLANNER_CACHE_DIR", "off")
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.parametrize("path, factory", [("examples/archs/digits_cnn.yaml", "examples.models:digits_cnn"),
                                           ("examples/archs/lenet5.yaml", "examples.models:lenet5")])
def test_example_files_transcribe_the_python_models_weight_for_weight(path, factory):
    """Same seed, same layers in the same order: the same parameters, and the same outputs."""
    from_file = load_factory(path, {"seed": 3})
    from_python = load_factory(factory, {"seed": 3})
    a = [p.detach() for p in from_file.parameters()]
    b = [p.detach() for p in from_python.parameters()]
    assert [t.shape for t in a] == [t.shape for t in b]
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    x = torch.randn(5, *from_file.input_shape)
    with torch.no_grad():
        assert torch.allclose(from_file(x), from_python(x), atol=1e-6)
    assert load_factory(path, {"seed": 4}).state_dict()["conv1.weight"].ne(a[0]).any()  # the seed matters


def test_vgg_file_has_the_python_vggs_parameter_shapes():
    from_file = load_factory("examples/archs/vgg11_cifar.json")
    from_python = load_factory("examples.models:vgg11")
    assert [p.shape for p in from_file.parameters()] == [p.shape for p in from_python.parameters()]


def test_yaml_and_json_files_build_the_same_model(tmp_path):
    import yaml

    data = yaml.safe_load(open("examples/archs/digits_cnn.yaml"))
    (tmp_path / "cnn.json").write_text(json.dumps(data))
    a, b = load_factory("examples/archs/digits_cnn.yaml"), load_factory(str(tmp_path / "cnn.json"))
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert list(a.state_dict()) == list(b.state_dict()) == [
        "conv1.weight", "conv1.bias", "conv2.weight", "conv2.bias", "fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"]


_conv = st.fixed_dictionaries({"out_channels": st.integers(1, 4), "kernel_size": st.integers(1, 4)},
                              optional={"stride": st.integers(1, 3), "padding": st.integers(0, 2),
                                        "dilation": st.integers(1, 2)})
_pool = st.one_of(st.integers(1, 3), st.fixed_dictionaries({"kernel_size": st.integers(2, 3)},
                                                           optional={"stride": st.integers(1, 2),
                                                                     "padding": st.just(1)}))
_layer = st.one_of(st.builds(lambda c: {"conv2d": c}, _conv), st.builds(lambda p: {"maxpool2d": p}, _pool),
                   st.builds(lambda p: {"avgpool2d": p}, _pool), st.just("relu"))


@settings(max_examples=80, deadline=None)
@given(channels=st.integers(1, 3), size=st.integers(3, 12), body=st.lists(_layer, min_size=1, max_size=5),
       head=st.integers(1, 5))
def test_propagated_shapes_are_torchs_or_the_file_is_refused(channels, size, body, head):
    """The oracle is torch's forward: every shape the file reader computes is the shape torch
    produces, and a file it refuses is one torch cannot run (or pads a pool by more than half)."""
    data = {"input": [channels, size, size], "layers": [*body, "flatten", {"linear": head}]}
    try:
        _, specs = archfile.layers(data)
    except ArchitectureError as exc:
        refused = str(exc)
        try:
            model = _torch_sequential(data)
            model(torch.zeros(1, channels, size, size))
        except (RuntimeError, ValueError):
            return
        assert "padding" in refused, refused
        return
    model = archfile.build(data)
    x = torch.zeros(1, channels * size * size)  # flat, as a data set's rows: the input reshape
    x = model.input(x)
    assert tuple(x.shape) == (1, channels, size, size)
    modules = [m for n, m in model.named_children() if n != "input"]
    assert len(modules) == len(specs)
    for (name, _, _, shape), module in zip(specs, modules):
        x = module(x)
        assert tuple(x.shape[1:]) == shape, (name, data)


def _torch_sequential(data):
    """torch's modules built straight from the file's words, without the reader's checks."""
    import torch.nn as nn

    layers, c = [], data["input"][0]
    for item in data["layers"]:
        if item == "relu":
            layers.append(nn.ReLU())
        elif item == "flatten":
            layers.append(nn.Flatten())
        elif "conv2d" in item:
            kw = dict(item["conv2d"])
            layers.append(nn.Conv2d(c, **kw))
            c = kw["out_channels"]
        elif "linear" in item:
            layers.append(nn.LazyLinear(item["linear"]))
        else:
            kind, body = next(iter(item.items()))
            kw = body if isinstance(body, dict) else {"kernel_size": body}
            layers.append((nn.MaxPool2d if kind == "maxpool2d" else nn.AvgPool2d)(**kw))
    return nn.Sequential(*layers)


def test_bound_of_the_file_equals_the_factorys(capsys, monkeypatch):
    args = ("--density", "0.3,0.001,0.1,0.1", "--input-dim", "40", "--json")
    code, out_file, _ = run_cli(capsys, monkeypatch, "bound", "--model", "examples/archs/lenet5.yaml", *args)
    assert code in (0, None)
    code, out_py, _ = run_cli(capsys, monkeypatch, "bound", "--model", "examples.models:lenet5", "--input-shape",
                              "1,32,32", *args)
    a, b = json.loads(out_file), json.loads(out_py)
    assert a["log2_bound"] == b["log2_bound"] and a["dense_log2_bound"] == b["dense_log2_bound"]
    assert [r["in_bound"] for r in a["layers"]] == [True, True, True, True, False]
    assert a["input_shape"] == [1, 32, 32]  # from the file: no --input-shape needed


def test_plan_from_a_file_marks_the_convolutions_in_bound(capsys, monkeypatch, tmp_path):
    out = tmp_path / "plan.json"
    code, _, err = run_cli(capsys, monkeypatch, "plan", "--model", "examples/archs/digits_cnn.yaml", "--density",
                           "0.01", "-o", str(out))
    assert code in (0, None), err
    plan = json.loads(out.read_text())
    layers = {r["name"]: r for r in plan["layers"]}
    assert layers["conv1"]["in_bound"] is True and layers["conv2"]["in_bound"] is True
    assert sum(r["keep"] for r in plan["layers"] if r["name"] != "fc2") == round(0.01 * (72 + 1152 + 16384))
    code, out_py, _ = run_cli(capsys, monkeypatch, "plan", "--model", "examples.models:digits_cnn", "--input-shape",
                              "1,8,8", "--density", "0.01", "--json")
    python_keeps = [r["keep"] for r in json.loads(out_py)["layers"]]
    assert [r["keep"] for r in plan["layers"]] == python_keeps


def test_model_layers_read_the_files_input_shape():
    model = load_factory("examples/archs/lenet5.yaml")
    found = model_layers(model)  # no input shape given: the file's
    assert [w.name for w in found.layers if w.in_bound] == ["conv1", "conv2", "fc1", "fc2"]


BAD = [
    ("layers: [relu]\n", "'input' is a required property"),
    ("input: [1, 8, 8]\nlayers:\n  - conv2d: {out_channels: 8}\n", "'kernel_size' is a required property"),
    ("input: [1, 8, 8]\nlayers:\n  - conv: 3\n", "a layer is relu, flatten"),
    ("input: [1, 8, 8]\nlayers:\n  - conv2d: {out_channels: 4, kernel_size: 3}\n  - linear: 10\n",
     "needs a flat input, it gets 4,6,6 (put a flatten before it)"),
    ("input: [64]\nlayers:\n  - conv2d: {out_channels: 4, kernel_size: 3}\n", "needs a C,H,W input, it gets 64"),
    ("input: [1, 4, 4]\nlayers:\n  - conv2d: {out_channels: 4, kernel_size: 5}\n", "the input is too small"),
    ("input: [3, 8, 8]\nlayers:\n  - conv2d: {out_channels: 4, kernel_size: 3, groups: 2}\n",
     "groups=2 must divide the 3 input"),
    ("input: [1, 8, 8]\nlayers:\n  - conv2d: {out_channels: 4, kernel_size: 3, name: a}\n  - relu: {name: a}\n",
     "the name 'a' is used twice"),
    ("input: [1, 8, 8]\nlayers:\n  - maxpool2d: {kernel_size: 2, padding: 2}\n", "more than half the kernel"),
    ("input: [1, 8, 8\n", "is not valid YAML"),
    ("input: [0, 8, 8]\nlayers: [relu]\n", "at input"),
]


@pytest.mark.parametrize("text, message", BAD)
def test_bad_files_are_one_line_and_exit_2(capsys, monkeypatch, tmp_path, text, message):
    path = tmp_path / "arch.yaml"
    path.write_text(text)
    with pytest.raises(ArchitectureError, match=None) as info:
        load_factory(str(path))
    assert message in str(info.value)
    code, out, err = run_cli(capsys, monkeypatch, "plan", "--model", str(path), "--density", "0.1")
    assert code == 2 and message in err and "Traceback" not in err and err.count("\n") == 1


def test_missing_file_bad_json_and_kwargs(capsys, monkeypatch, tmp_path):
    code, _, err = run_cli(capsys, monkeypatch, "bound", "--model", str(tmp_path / "none.yaml"), "--density", "0.1")
    assert code == 2 and "does not exist" in err
    (tmp_path / "a.json").write_text("{input: 3}")
    with pytest.raises(ArchitectureError, match="is not valid JSON"):
        load_factory(str(tmp_path / "a.json"))
    with pytest.raises(ModelError, match="takes no --model-kwargs but seed"):
        load_factory("examples/archs/digits_cnn.yaml", {"num_classes": 3})
    with pytest.raises(ModelError, match="non-negative integer"):
        load_factory("examples/archs/digits_cnn.yaml", {"seed": -1})


def test_compare_on_the_file_gives_the_rows_of_the_python_model(capsys, monkeypatch):
    """digits_cnn.yaml and examples.models:digits_cnn train, plan and prune identically."""
    rows = []
    for model in ("examples/archs/digits_cnn.yaml", "examples.models:digits_cnn"):
        code, out, err = run_cli(capsys, monkeypatch, "compare", "--dataset", "digits", "--model", model,
                                 "--strategies", "lr-bound,erk", "--seeds", "1", "--densities", "0.05",
                                 "--epochs", "2", "--finetune-epochs", "1", "--jobs", "1", "--json")
        assert code in (0, None), err
        rows.append([{k: r[k] for k in ("strategy", "accuracy", "densities", "log2_bound", "kept")}
                     for r in json.loads(out)["results"]])
    assert rows[0] == rows[1] and len(rows[0]) == 2
