"""The ``bound`` command: its JSON equals the library's numbers, ``--sweep`` works, and bad input
is one line on stderr with exit code 2, never a traceback."""

import json
import subprocess
import sys

import pytest

from planner.core.bound import dense_log2_bound, expected_bound
from planner.core.rank import RankCache




def assert_matches_library(data, arch, density, *, rank_model="sampled", input_dim=None, seed=0):
    # recomputed from scratch, not read back from the cache the command filled
    report = expected_bound(arch, density, rank_model=rank_model, input_dim=input_dim, seed=seed,
                            cache=RankCache(disk=False))
    assert data["log2_bound"] == report.log2_bound
    assert data["dense_log2_bound"] == report.dense_log2_bound
    assert data["input_dim"] == report.input_dim
    assert data["rank_model"] == rank_model
    assert data["architecture"] == list(report.arch.sizes)
    assert len(data["layers"]) == len(report.layers)
    for got, want in zip(data["layers"], report.layers):
        assert (got["rows"], got["cols"]) == (want.rows, want.cols)
        assert got["density"] == want.density
        assert got["expected_rank"] == want.expected_rank
        assert got["rank_support"] == [want.distribution.kmin, want.distribution.kmax]
        assert got["rank_samples"] == want.distribution.samples
    return report


@pytest.mark.parametrize(
    "arch, density, rank_model, input_dim",
    [
        ("784,100,100,10", "0.05", "sampled", None),
        ("784,100,100,10", "0.03,0.2", "sampled", 4),
        ("lenet-300-100", "0.1", "analytic", None),
        ("4,4,3,2", "0.4", "exact", 2),
        ("8,10,6,3", "0.3,0.6", "svd", None),
    ],
)
def test_bound_json_equals_library(cli, arch, density, rank_model, input_dim):
    argv = ["bound", "--arch", arch, "--density", density, "--rank-model", rank_model, "--json"]
    if input_dim is not None:
        argv += ["--input-dim", str(input_dim)]
    code, out, err = cli(*argv)
    assert code == 0, err
    data = json.loads(out)
    values = [float(v) for v in density.split(",")]
    assert_matches_library(data, arch, values if len(values) > 1 else values[0], rank_model=rank_model,
                           input_dim=input_dim)
    sizes = data["architecture"]
    assert [(l["rows"], l["cols"]) for l in data["layers"]] == [(sizes[i + 1], sizes[i]) for i in range(len(sizes) - 2)]
    assert data["input_dim"] == (sizes[0] if input_dim is None else input_dim)


def test_dense_json_is_the_closed_form(cli):
    code, out, err = cli("bound", "--arch", "784,100,100,10", "--density", "1", "--json")
    assert code == 0, err
    data = json.loads(out)
    assert data["log2_bound"] == pytest.approx(199.0791, abs=5e-5)
    assert [l["expected_rank"] for l in data["layers"]] == [100, 100]


def test_seed_option_reaches_the_sampler(cli):
    code, out, _ = cli("bound", "--arch", "60,40,30,10", "--density", "0.05", "--seed", "9", "--json")
    assert code == 0
    data = json.loads(out)
    assert data["seed"] == 9
    assert_matches_library(data, "60,40,30,10", 0.05, seed=9)


def test_bound_table_output(cli):
    code, out, err = cli("bound", "--arch", "784,20,20,10", "--density", "0.2", "--rank-model", "analytic")
    assert code == 0 and err == ""
    report = expected_bound("784,20,20,10", 0.2, rank_model="analytic")
    assert f"{report.log2_bound:.4f}" in out
    assert f"{report.dense_log2_bound:.4f}" in out and "39.1704" in out
    assert "fc1" in out and "fc2" in out


def test_sweep_json_equals_library(cli):
    code, out, err = cli("bound", "--arch", "784,100,100,10", "--sweep", "0.005,0.05,1", "--json")
    assert code == 0, err
    data = json.loads(out)
    assert data["dense_log2_bound"] == pytest.approx(199.0791, abs=5e-5)
    assert [s["density"] for s in data["sweep"]] == [0.005, 0.05, 1.0]
    for point in data["sweep"]:
        report = expected_bound("784,100,100,10", point["density"], cache=RankCache(disk=False))
        assert point["log2_bound"] == report.log2_bound
        assert point["expected_ranks"] == [layer.expected_rank for layer in report.layers]
    assert data["sweep"][-1]["log2_bound"] == pytest.approx(data["dense_log2_bound"], abs=1e-9)
    assert data["sweep"][0]["log2_bound"] < data["sweep"][-1]["log2_bound"]


def test_sweep_table(cli):
    code, out, err = cli("bound", "--arch", "64,30,30,10", "--sweep", "0.1, 0.5", "--rank-model", "analytic",
                         "--input-dim", "2")
    assert code == 0 and err == ""
    for p in (0.1, 0.5):
        assert f"{expected_bound('64,30,30,10', p, rank_model='analytic', input_dim=2).log2_bound:.4f}" in out
    assert f"{dense_log2_bound((64, 30, 30), 2):.4f}" in out


def test_vanishing_density(cli):
    # every rank is 0 with probability >= 1 - 1e-15: log2 of one region
    code, out, err = cli("bound", "--arch", "784,100,100,10", "--density", "1e-20", "--json")
    assert code == 0, err
    assert json.loads(out)["log2_bound"] == 0.0


def test_cache_dir_and_no_cache(cli, tmp_path, monkeypatch):
    env_dir = tmp_path / "env"
    monkeypatch.setenv("SPARSITY_PLANNER_CACHE_DIR", str(env_dir))
    code, out1, _ = cli("bound", "--arch", "60,40,30,10", "--density", "0.05", "--json",
                        "--cache-dir", str(tmp_path / "mine"))
    assert code == 0
    assert len(list((tmp_path / "mine").glob("*.json"))) == 2
    code, out2, _ = cli("bound", "--arch", "60,40,30,10", "--density", "0.05", "--json", "--no-cache")
    assert code == 0
    assert not env_dir.exists()
    assert json.loads(out1)["log2_bound"] == json.loads(out2)["log2_bound"]


def test_subprocess_module_entry_point():
    argv = ["bound", "--arch", "784,20,20,10", "--density", "0.2,0.1", "--seed", "3", "--json"]
    proc = subprocess.run([sys.executable, "-m", "planner", *argv], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    assert_matches_library(json.loads(proc.stdout), "784,20,20,10", [0.2, 0.1], seed=3)


def test_subprocess_bad_input():
    proc = subprocess.run([sys.executable, "-m", "planner", "bound", "--arch", "784,100,10", "--density", "2"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert len(proc.stderr.splitlines()) == 1 and "Traceback" not in proc.stderr
    assert "density" in proc.stderr


BAD = {
    "non-integer size": (["--arch", "784,a,10", "--density", "0.5"], "architecture"),
    "fractional size": (["--arch", "784,1.5,10", "--density", "0.5"], "1.5"),
    "zero size": (["--arch", "784,0,10", "--density", "0.5"], "positive"),
    "negative size": (["--arch=784,-3,10", "--density", "0.5"], "positive"),
    "negative input size": (["--arch=-784,30,10", "--density", "0.5"], None),
    "no hidden layer": (["--arch", "784,10", "--density", "0.5"], None),
    "one number": (["--arch", "784", "--density", "0.5"], None),
    "empty arch": (["--arch", "", "--density", "0.5"], None),
    "empty size": (["--arch", "784,,10", "--density", "0.5"], None),
    "unknown preset": (["--arch", "lenet-301-100", "--density", "0.5"], None),
    "density zero": (["--arch", "784,100,10", "--density", "0"], "(0, 1]"),
    "density above one": (["--arch", "784,100,10", "--density", "1.5"], "(0, 1]"),
    "density negative": (["--arch", "784,100,10", "--density=-0.1"], "(0, 1]"),
    "density nan": (["--arch", "784,100,10", "--density", "nan"], None),
    "density inf": (["--arch", "784,100,10", "--density", "inf"], None),
    "density text": (["--arch", "784,100,10", "--density", "half"], "half"),
    "density empty": (["--arch", "784,100,10", "--density", ""], None),
    "density trailing comma": (["--arch", "784,100,10", "--density", "0.5,"], None),
    "too many densities": (["--arch", "784,100,100,10", "--density", "0.1,0.2,0.3"], "3"),
    "too few densities": (["--arch", "784,100,100,100,10", "--density", "0.1,0.2"], "2"),
    "two densities, one layer": (["--arch", "784,100,10", "--density", "0.1,0.2"], None),
    "sweep out of range": (["--arch", "784,100,10", "--sweep", "0.1,0"], None),
    "density and sweep": (["--arch", "784,100,10", "--density", "0.1", "--sweep", "0.1"], None),
    "neither density nor sweep": (["--arch", "784,100,10"], None),
    "missing arch": (["--density", "0.5"], "--arch"),
    "d0 above n0": (["--arch", "784,100,10", "--density", "0.5", "--input-dim", "785"], "785"),
    "d0 zero": (["--arch", "784,100,10", "--density", "0.5", "--input-dim", "0"], None),
    "d0 negative": (["--arch", "784,100,10", "--density", "0.5", "--input-dim=-2"], None),
    "d0 not an integer": (["--arch", "784,100,10", "--density", "0.5", "--input-dim", "1.5"], None),
    "unknown rank model": (["--arch", "784,100,10", "--density", "0.5", "--rank-model", "binomial"], "binomial"),
    "exact on a big layer": (["--arch", "784,100,10", "--density", "0.5", "--rank-model", "exact"], "sampled"),
    "unknown option": (["--arch", "784,100,10", "--density", "0.5", "--frobnicate"], "--frobnicate"),
    "extra argument": (["--arch", "784,100,10", "--density", "0.5", "extra"], None),
    "bad seed": (["--arch", "784,100,10", "--density", "0.5", "--seed", "x"], None),
}


@pytest.mark.parametrize("name", list(BAD))
def test_bad_input_is_one_line_and_exit_2(cli, name):
    argv, needle = BAD[name]
    code, out, err = cli("bound", *argv)
    assert code == 2, (out, err)
    assert out == ""
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1 and err.endswith("\n") and lines[0].strip(), err
    assert lines[0].startswith("sparsity-planner: error:")
    if needle is not None:
        assert needle in lines[0]


def test_unknown_command(cli):
    code, out, err = cli("bounds", "--arch", "784,100,10")
    assert code == 2 and out == "" and len(err.splitlines()) == 1


def test_help(cli):
    code, out, err = cli("bound", "--help")
    assert code == 0 and "--sweep" in out and "--rank-model" in out and err == ""
