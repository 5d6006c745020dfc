"""Neuron plans and node pruning (issue 15), each against an independent oracle: exact k-DPP
subset probabilities, brute-force greedy and MAP, least squares, brute-force width search."""

import copy
import itertools
import json
import math

import numpy as np
import pytest

from planner.allocation import nodes as N
from planner.allocation.planfile import Plan
from planner.core.bound import dense_log2_bound
from planner.errors import InfeasibleError, PlanFormatError

torch = pytest.importorskip("torch")

from planner.pruning import nodes as P  # noqa: E402
from planner.cli import main  # noqa: E402


# ----------------------------------------------------------------------------- DPP
def _kernel(n, seed, dim=4):
    A = np.random.default_rng(seed).normal(size=(dim, n))
    return P.rbf_kernel(A, eps=1e-3)


def _kdpp_probabilities(L, k):
    subsets = list(itertools.combinations(range(len(L)), k))
    dets = np.array([np.linalg.det(L[np.ix_(s, s)]) for s in subsets])
    return subsets, dets / dets.sum()


def test_k_dpp_sampler_matches_exact_subset_probabilities():
    pytest.importorskip("dppy")
    from scipy.stats import chisquare

    L = _kernel(5, seed=1)
    subsets, probs = _kdpp_probabilities(L, 2)
    assert probs.max() / probs.min() > 3  # the kernel discriminates: uniform would be a different law
    draws = 2500
    counts = dict.fromkeys(subsets, 0)
    for seed in range(draws):
        counts[tuple(P.sample_k_dpp(L, 2, seed))] += 1
    observed = np.array([counts[s] for s in subsets])
    assert chisquare(observed, probs * draws).pvalue > 1e-3
    # the test has power: the same draws are far from uniform
    assert chisquare(observed, np.full(len(subsets), draws / len(subsets))).pvalue < 1e-6
    assert P.sample_k_dpp(L, 3, 7) == P.sample_k_dpp(L, 3, 7)  # seeded
    assert P.sample_k_dpp(L, 5, 0) == [0, 1, 2, 3, 4]


def _naive_greedy(L, k):
    chosen = []
    for _ in range(k):
        best = max((i for i in range(len(L)) if i not in chosen),
                   key=lambda i: (np.linalg.slogdet(L[np.ix_(chosen + [i], chosen + [i])])[1], -i))
        chosen.append(best)
    return chosen


@pytest.mark.parametrize("seed", range(6))
def test_greedy_map_is_greedy_on_determinants_and_exact_where_greedy_is(seed):
    L = _kernel(7, seed)
    for k in range(1, 8):
        assert P.greedy_map(L, k) == _naive_greedy(L, k)
    subsets, probs = _kdpp_probabilities(L, 1)
    assert P.greedy_map(L, 1) == list(subsets[int(np.argmax(probs))])  # k = 1: greedy is the MAP
    # a diagonal kernel: the MAP of every size is the largest diagonal entries, and greedy finds it
    D = np.diag(np.random.default_rng(seed).uniform(0.5, 2.0, size=6))
    for k in range(1, 7):
        subsets, probs = _kdpp_probabilities(D, k)
        assert sorted(P.greedy_map(D, k)) == list(subsets[int(np.argmax(probs))])


# ----------------------------------------------------------------------------- least squares
def test_reweighting_reproduces_the_next_input_when_removed_neurons_are_combinations():
    rng = np.random.default_rng(0)
    A = rng.normal(size=(50, 6))
    A[:, 4] = 2 * A[:, 0] - A[:, 1] + 0.5  # affine in kept neurons
    A[:, 5] = A[:, 2] + A[:, 3]
    W = rng.normal(size=(3, 6))
    keep = [0, 1, 2, 3]
    X, c = P.reweight(A, W, keep)
    np.testing.assert_allclose(A[:, keep] @ X.T + c, A @ W.T, atol=1e-9)
    A[:, 5] = rng.normal(size=50)  # not a combination: the fit cannot be exact
    X, c = P.reweight(A, W, keep)
    assert np.abs(A[:, keep] @ X.T + c - A @ W.T).max() > 1e-3


def test_greedy_forward_loss_is_non_increasing_and_is_the_least_squares_residual():
    rng = np.random.default_rng(3)
    A = np.maximum(rng.normal(size=(40, 12)), 0)
    W = rng.normal(size=(5, 12))
    order, losses = P.greedy_forward_select(A, W, 12)
    assert sorted(order) == list(range(12))
    assert all(b <= a * (1 + 1e-9) + 1e-12 for a, b in zip(losses, losses[1:]))
    T = A @ W.T
    for t in range(1, 13):
        design = np.hstack([A[:, order[:t]], np.ones((40, 1))])
        resid = T - design @ np.linalg.lstsq(design, T, rcond=None)[0]
        assert losses[t - 1] == pytest.approx(float(np.sum(resid ** 2)), rel=1e-7, abs=1e-9)
    assert losses[-1] == pytest.approx(0.0, abs=1e-8)

    def single(i):
        design = np.hstack([A[:, [i]], np.ones((40, 1))])
        return float(np.sum((T - design @ np.linalg.lstsq(design, T, rcond=None)[0]) ** 2))

    assert order[0] == min(range(12), key=single)  # the first step is the best single neuron
    sub, _ = P.greedy_forward_select(A, W, 4, candidates=3, rng=np.random.default_rng(0))
    assert len(set(sub)) == 4


def test_greedy_forward_with_labels_picks_the_lowest_cross_entropy():
    from examples import models

    model = models.mlp((4, 6, 3), seed=0)
    X = torch.randn(30, 4, generator=torch.Generator().manual_seed(0))
    y = np.arange(30) % 3
    A = P._next_inputs(model, model.fc2, X)
    W2, b2 = model.fc2.weight.detach().double().numpy(), model.fc2.bias.detach().double().numpy()
    order, losses = P.greedy_forward_select(A, W2, 2, labels_loss=P._ce_loss_fn(model, model.fc2, X, y))

    def ce(keep):
        Xw, c = P.reweight(A, W2, keep)
        logits = torch.as_tensor(A[:, keep] @ Xw.T + c + b2)
        return float(torch.nn.functional.cross_entropy(logits, torch.as_tensor(y)))

    assert order[0] == min(range(6), key=lambda i: ce([i]))
    assert losses[0] == pytest.approx(ce([order[0]]), rel=1e-5)


# ----------------------------------------------------------------------------- the model side
def _node_plan(sizes, density):
    return N.plan_nodes(",".join(map(str, sizes)), density=density)


@pytest.mark.parametrize("criterion,options", [
    ("dpp", {}), ("dpp", {"dpp_mode": "map"}), ("greedy-forward", {}), ("activation-norm", {}),
    ("activation-norm", {"reweight_weights": True}), ("random", {})])
def test_shrunk_model_equals_masked_model(criterion, options, tmp_path):
    from examples import models

    model = models.mlp((10, 8, 7, 3), seed=1)
    X = torch.randn(64, 10, generator=torch.Generator().manual_seed(1))
    plan = _node_plan((10, 8, 7, 3), 0.45)
    report = P.prune_nodes(model, plan, criterion, calibration=X, seed=2, **options)
    kept = report.keep_sets()
    assert [len(kept[layer.name]) for layer in plan.layers] == [layer.keep_neurons for layer in plan.layers]
    removed = sorted(set(range(8)) - set(kept["fc1"]))
    assert torch.all(model.fc1.weight[removed] == 0) and torch.all(model.fc2.weight[:, removed] == 0)
    masked = model(X)
    P.shrink(model, kept)
    assert [tuple(model.get_submodule(n).weight.shape) for n in ("fc1", "fc2", "fc3")] == [
        (plan.layers[0].keep_neurons, 10), (plan.layers[1].keep_neurons, plan.layers[0].keep_neurons),
        (3, plan.layers[1].keep_neurons)]
    torch.testing.assert_close(model(X), masked, rtol=0, atol=1e-6)
    assert report.realized == report.planned == plan.kept
    torch.save(model.state_dict(), tmp_path / "small.pt")
    rebuilt = P.resize_to_state_dict(models.mlp((10, 8, 7, 3), seed=9),
                                     torch.load(tmp_path / "small.pt", weights_only=True))
    torch.testing.assert_close(rebuilt(X), masked, rtol=0, atol=1e-6)


def test_duplicate_neurons_are_folded_exactly():
    """fc1's neurons 3 and 4 are 2x neurons 0 and 1: keeping 3 neurons loses nothing after
    reweighting, so the pruned network computes the dense network's function on the batch."""
    from examples import models

    model = models.mlp((6, 5, 4, 3), seed=0)
    with torch.no_grad():
        model.fc1.weight[3] = 2 * model.fc1.weight[0]
        model.fc1.bias[3] = 2 * model.fc1.bias[0]
        model.fc1.weight[4] = 2 * model.fc1.weight[1]
        model.fc1.bias[4] = 2 * model.fc1.bias[1]
    X = torch.randn(80, 6, generator=torch.Generator().manual_seed(0))
    dense = model(X).detach()
    plan = N.plan_nodes("6,5,4,3", keep=3 * 6 + 4 * 3 + 3 * 4)  # room for 3 x 4 hidden neurons
    assert [layer.keep_neurons for layer in plan.layers] == [3, 4, 3]
    report = P.prune_nodes(model, plan, "greedy-forward", calibration=X)
    assert sorted(k % 3 for k in report.keep_sets()["fc1"]) == [0, 1, 2]
    torch.testing.assert_close(model(X), dense, rtol=0, atol=1e-4)


# ----------------------------------------------------------------------------- neuron plans
def _brute_force(sizes, budget, d0):
    best = None
    for widths in itertools.product(*(range(1, n + 1) for n in sizes[1:-1])):
        if N.params([sizes[0], *widths, sizes[-1]]) <= budget:
            value = dense_log2_bound([sizes[0], *widths], d0)
            best = value if best is None else max(best, value)
    return best


CASES = [((5, 4, 3, 2), 0.5, None), ((6, 3, 4, 5, 2), 0.35, None), ((8, 6, 6, 3), 0.3, 3),
         ((4, 7, 2), 0.6, None), ((7, 5, 5, 5, 2), 0.2, 4)]


@pytest.mark.parametrize("sizes,density,d0", CASES)
def test_exhaustive_node_plan_is_the_brute_force_optimum(sizes, density, d0):
    plan = N.plan_nodes(",".join(map(str, sizes)), density=density, input_dim=d0)
    budget = math.floor(density * N.params(sizes) + 1e-9)
    assert plan.solver["name"] == "exhaustive" and plan.kept <= budget
    assert plan.objective["log2_bound"] == pytest.approx(_brute_force(sizes, budget, d0 or sizes[0]), abs=1e-9)
    widths = [layer.keep_neurons for layer in plan.layers[:-1]]
    assert plan.objective["log2_bound"] == pytest.approx(dense_log2_bound([sizes[0], *widths], d0 or sizes[0]))


def _index_set(n0, d0, widths):
    full = [n0, *widths]
    out = []

    def walk(l, d, prefix):
        if l == len(full):
            out.append(tuple(prefix))
            return
        k = min(full[l], full[l - 1])
        for j in range(min(k, d) + 1):
            walk(l + 1, min(full[l] - j, d, k), prefix + [j])

    walk(1, d0, [])
    return out


@pytest.mark.parametrize("sizes,density,d0", CASES[:4])
def test_cpsat_max_plus_is_the_brute_force_best_term(sizes, density, d0):
    d0 = d0 or sizes[0]
    problem = N.build_problem(sizes, [f"fc{i + 1}" for i in range(len(sizes) - 1)], density=density, input_dim=d0)
    grids = [list(range(1, n + 1)) for n in problem.hidden]
    widths, value, upper, status = N.maxplus_cpsat(problem, grids)
    assert status == "OPTIMAL"
    best = None
    for ws in itertools.product(*grids):
        if N.params([sizes[0], *ws, sizes[-1]]) > problem.budget:
            continue
        J = _index_set(sizes[0], d0, ws)
        # the index set is the bound's: summing its terms gives the dense bound
        total = sum(math.prod(math.comb(w, j) for w, j in zip(ws, js)) for js in J)
        assert math.log2(total) == pytest.approx(dense_log2_bound([sizes[0], *ws], d0), abs=1e-9)
        term = max(sum(math.floor(N.log2_binom(w, j) * N._SCALE) for w, j in zip(ws, js)) for js in J) / N._SCALE
        best = term if best is None else max(best, term)
    assert value == pytest.approx(best, abs=1e-9)
    plan = N.plan_nodes(",".join(map(str, sizes)), density=density, input_dim=d0, solver="cpsat")
    assert plan.objective["log2_bound"] <= plan.objective["certificate_log2_upper"] + 1e-9
    assert _brute_force(sizes, problem.budget, d0) <= plan.objective["certificate_log2_upper"] + 1e-9


def test_node_plan_file_round_trips_and_rejects_inconsistent_counts():
    plan = _node_plan((64, 100, 100, 10), 0.25)
    text = plan.to_json()
    assert Plan.from_json(text).to_json() == text
    data = json.loads(text)
    assert data["granularity"] == "neurons" and [layer["keep_neurons"] for layer in data["layers"]] == [28, 67, 10]
    assert data["kept"] == data["objective"]["parameters"] == 28 * 64 + 67 * 28 + 10 * 67
    bad = copy.deepcopy(data)
    bad["layers"][0]["keep_neurons"] = 101
    with pytest.raises(PlanFormatError, match="above the width"):
        Plan.from_dict(bad)
    bad = copy.deepcopy(data)
    bad["layers"][1]["keep"] -= 1
    bad["layers"][1]["density"] = bad["layers"][1]["keep"] / 10000
    with pytest.raises(PlanFormatError, match="keep_neurons x kept inputs"):
        Plan.from_dict(bad)
    bad = copy.deepcopy(data)
    del bad["layers"][2]["keep_neurons"]
    with pytest.raises(PlanFormatError, match="needs keep_neurons"):
        Plan.from_dict(bad)
    with pytest.raises(InfeasibleError):
        N.plan_nodes("64,100,100,10", keep=70)
    uniform = N.plan_nodes("64,100,100,10", density=0.25, strategy="uniform")
    assert uniform.objective["log2_bound"] == plan.objective["uniform_log2_bound"] < plan.objective["log2_bound"]


# ----------------------------------------------------------------------------- the CLI
def test_cli_plan_apply_export_on_a_neuron_plan(tmp_path, capsys):
    plan_path, out = tmp_path / "plan.json", tmp_path / "small.pt"
    assert main(["plan", "--arch", "64,100,100,10", "--density", "0.25", "--granularity", "neurons",
                 "-o", str(plan_path)]) == 0
    assert "28x64" in capsys.readouterr().out
    calib = tmp_path / "x.npy"
    from planner.experiments.data import load_dataset

    X, y = load_dataset("digits")[:2]
    np.save(calib, X[:200])
    assert main(["apply", "--model", "examples.models:digits_mlp", "--plan", str(plan_path), "--criterion", "dpp",
                 "--dpp-mode", "map", "--calibration", str(calib), "-o", str(out)]) == 0
    assert "realized 4338, planned 4338" in capsys.readouterr().out
    state = torch.load(out, weights_only=True)
    assert [tuple(state[f"fc{i}.weight"].shape) for i in (1, 2, 3)] == [(28, 64), (67, 28), (10, 67)]
    np.save(tmp_path / "x60.npy", X[:60])
    np.save(tmp_path / "y.npy", y[:60])
    assert main(["apply", "--model", "examples.models:digits_mlp", "--plan", str(plan_path), "--criterion",
                 "greedy-forward", "--calibration", str(tmp_path / "x60.npy"), "--labels", str(tmp_path / "y.npy"),
                 "--candidates", "3", "-o", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["realized_weights"] == 4338
    assert main(["export", str(plan_path), "--to", "torch-pruning", "-o", str(tmp_path / "tp.py")]) == 0
    snippet = (tmp_path / "tp.py").read_text()
    assert '"fc1": 0.72' in snippet
    try:
        import torch_pruning  # noqa: F401
    except ImportError:
        return
    from examples import models

    scope = {"model": models.digits_mlp()}
    exec(snippet, scope)  # noqa: S102 - our own export
    assert "weights: realized 4338, planned 4338" in capsys.readouterr().out
    assert [scope["model"].get_submodule(n).out_features for n in ("fc1", "fc2")] == [28, 67]


def test_cli_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, capsys):
    node, weight, out = tmp_path / "n.json", tmp_path / "w.json", tmp_path / "out.pt"
    assert main(["plan", "--arch", "64,100,100,10", "--density", "0.25", "--granularity", "neurons",
                 "-o", str(node)]) == 0
    assert main(["plan", "--arch", "64,100,100,10", "--density", "0.25", "--rank-model", "analytic",
                 "--integer", "off", "-o", str(weight)]) == 0
    data = json.loads(node.read_text())
    data["layers"][0]["keep_neurons"] = 101
    (tmp_path / "k.json").write_text(json.dumps(data))
    capsys.readouterr()
    model = ["apply", "--model", "examples.models:digits_mlp", "-o", str(out)]
    for args, message in [
        (["--plan", str(tmp_path / "k.json"), "--criterion", "dpp"], "above the width"),
        (["--plan", str(weight), "--criterion", "dpp"], "needs a neuron plan"),
        (["--plan", str(node), "--criterion", "magnitude"], "prunes single weights"),
        (["--plan", str(node), "--criterion", "dpp", "--calibration", str(tmp_path / "none.npy")], "cannot read"),
        (["--plan", str(weight), "--labels", str(tmp_path / "none.npy")], "neuron plans only"),
    ]:
        assert main(model + args) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err, err
        assert not out.exists()
    assert main(["apply", "--model", "examples.models:lenet_300_100", "--plan", str(node), "--criterion", "dpp",
                 "-o", str(out)]) == 2
    assert "300x784" in capsys.readouterr().err and not out.exists()
    for args, message in [(["--rank-model", "analytic"], "does not apply"), (["--strategy", "erk"], "lr-bound"),
                          (["--density", "0.001"], "cannot keep one neuron")]:
        argv = ["plan", "--arch", "64,100,100,10", "--granularity", "neurons", "-o", str(tmp_path / "p.json")]
        assert main(argv + (["--density", "0.2"] if "--density" not in args else []) + args) == 2
        assert message in capsys.readouterr().err and not (tmp_path / "p.json").exists()
    assert main(["export", str(node), "--to", "nni"]) == 2
    assert main(["export", str(weight), "--to", "torch-pruning"]) == 2
