"""Every expected failure is a clean one: exit code 2, one line on stderr, no traceback, no file.

A table of bad inputs and faults across every command (run in-process through ``main``), then
the cases that need a real process: sys.exit in user code, a full stdout, Ctrl-C.
"""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from planner.cli import main  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture()
def work(tmp_path, monkeypatch):
    """A directory with a valid plan, an MLP checkpoint, points and a few broken files; the user
    modules live in it and it is importable."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    assert main(["plan", "--arch", "64,16,10", "--density", "0.2", "--rank-model", "analytic", "--no-cache",
                 "-o", "plan.json"]) == 0
    (tmp_path / "broken_zero.py").write_text("x = 1 / 0\n")
    (tmp_path / "broken_syntax.py").write_text("def f(:\n")
    (tmp_path / "exits.py").write_text("import sys\n\ndef factory():\n    sys.exit(3)\n")
    (tmp_path / "nanmodel.py").write_text(textwrap.dedent("""
        import torch
        from torch import nn

        def mlp():
            torch.manual_seed(0)
            m = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10))
            with torch.no_grad():
                m[1].weight[0, 0] = float("nan")
            return m
    """))
    (tmp_path / "invalid.json").write_bytes(b'{"format": "sparsity-plan/1", "strategy": "\xff"}')
    (tmp_path / "deep.json").write_text("[" * 200_000 + "]" * 200_000)
    plan = json.loads((tmp_path / "plan.json").read_text())
    for version in ("0", "-7"):
        (tmp_path / f"v{version}.json").write_text(json.dumps(dict(plan, format=f"sparsity-plan/{version}")))
    (tmp_path / "empty.pt").write_bytes(b"")
    np.save(tmp_path / "points0.npy", np.zeros((0, 64)))
    np.save(tmp_path / "points.npy", np.random.default_rng(0).random((3, 64)))
    (tmp_path / "afile").write_text("not a directory")
    return tmp_path


DIGITS = "examples.models:digits_mlp"
PLAN = ["plan", "--arch", "64,16,10", "--density", "0.2", "--rank-model", "analytic", "--no-cache"]

CASES = {
    # outputs that cannot be written: refused before any work
    "plan -o in a missing directory": (PLAN + ["-o", "missing/plan.json"], "does not exist", "missing/plan.json"),
    "plan -o under a file": (PLAN + ["-o", "afile/plan.json"], "not a directory", None),
    "plan -o into /proc": (PLAN + ["-o", "/proc/plan.json"], "cannot write", None),
    "plan -o is a directory": (PLAN + ["-o", "."], "is a directory", None),
    "apply -o in a missing directory": (["apply", "--model", DIGITS, "--plan", "plan.json", "-o", "missing/p.pt"],
                                        "does not exist", None),
    "export -o under a file": (["export", "plan.json", "--to", "nni", "-o", "afile/x.json"], "not a directory", None),
    "export over its own input": (["export", "plan.json", "--to", "nni", "-o", "plan.json"], "plan file itself", None),
    "compare --out under a file": (["compare", "--out", "afile/out", "--epochs", "1", "--no-progress"],
                                   "not a directory", None),
    # plan files
    "plan file not UTF-8": (["export", "invalid.json", "--to", "nni"], "not UTF-8", None),
    "plan file nested 200000 deep": (["export", "deep.json", "--to", "nni"], "nested too deeply", None),
    "plan format version 0": (["export", "v0.json", "--to", "nni"], "versions start at 1", None),
    "plan format version -7": (["export", "v-7.json", "--to", "nni"], "versions start at 1", None),
    "plan file missing": (["export", "nope.json", "--to", "nni"], "cannot read plan", None),
    # --model: the user's code fails
    "module raises on import": (["plan", "--model", "broken_zero:f", "--density", "0.1"], "ZeroDivisionError", None),
    "module has a syntax error": (["plan", "--model", "broken_syntax:f", "--density", "0.1"], "SyntaxError", None),
    "relative spec": (["plan", "--model", ".relative:f", "--density", "0.1"], "dotted names", None),
    "path-like spec": (["plan", "--model", "../../etc:x", "--density", "0.1"], "dotted names", None),
    "module not found": (["plan", "--model", "no_such_module_xyz:f", "--density", "0.1"], "cannot import", None),
    "empty checkpoint": (["plan", "--model", DIGITS, "--weights", "empty.pt", "--density", "0.1"],
                         "empty or cut short", None),
    # numbers out of range
    "seed 2^63": (PLAN + ["--seed", str(2**63)], "--seed", None),
    "seed 10^26": (["bound", "--arch", "64,16,10", "--density", "0.2", "--seed", str(10**26)], "--seed", None),
    "width 10^9": (["bound", "--arch", f"64,{10**9},10", "--density", "0.2"], "not supported", None),
    "grid 1000000": (PLAN + ["--grid", "1000000"], "--grid", None),
    "threads 100000": (PLAN + ["--threads", "100000"], "--threads", None),
    "workers 0": (PLAN + ["--workers", "0"], "--workers", None),
    "time limit nan": (PLAN + ["--time-limit", "nan"], "--time-limit", None),
    "time limit 0": (PLAN + ["--time-limit", "0"], "--time-limit", None),
    "density nan": (["plan", "--arch", "64,16,10", "--density", "nan"], "--density", None),
    "density inf": (["plan", "--arch", "64,16,10", "--density", "inf"], "--density", None),
    "min density nan": (PLAN + ["--min-density", "nan"], "--min-density", None),
    "compare lr nan": (["compare", "--lr", "nan", "--no-progress"], "--lr", None),
    "count-regions samples 1e8": (["count-regions", "--model", DIGITS, "--points", "points.npy",
                                   "--samples", str(10**8)], "--samples", None),
    "count-regions zero points": (["count-regions", "--model", DIGITS, "--points", "points0.npy"],
                                  "at least two points", None),
    "count-regions eps nan": (["count-regions", "--model", DIGITS, "--points", "points.npy", "--eps", "nan"],
                              "--eps", None),
    "count-regions time limit nan": (["count-regions", "--model", DIGITS, "--points", "points.npy",
                                      "--time-limit", "nan"], "--time-limit", None),
    # contradictions
    "no-cache with cache-dir": (["bound", "--arch", "64,16,10", "--density", "0.2", "--no-cache", "--cache-dir", "c"],
                                "contradict", None),
    # NaN that must never pass
    "global with a NaN weight": (["plan", "--model", "nanmodel:mlp", "--strategy", "global", "--density", "0.1",
                                  "-o", "nan-plan.json"], "non-finite", "nan-plan.json"),
    "lamp with a NaN weight": (["plan", "--model", "nanmodel:mlp", "--strategy", "lamp", "--density", "0.1"],
                               "non-finite", None),
    "count-regions with a NaN weight": (["count-regions", "--model", "nanmodel:mlp", "--points", "points.npy"],
                                        "non-finite", None),
}


@pytest.mark.parametrize("name", list(CASES))
def test_clean_failure(name, work, capsys):
    argv, message, must_not_exist = CASES[name]
    before = set(os.listdir(work))
    rc = main(argv)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert rc == 2, err
    assert len(lines) == 1 and lines[0].startswith("sparsity-planner: error:"), err
    assert "Traceback" not in err
    assert message.lower() in lines[0].lower(), lines[0]
    after = set(os.listdir(work))
    assert after - before <= {"__pycache__"}, f"left behind: {after - before}"
    if must_not_exist:
        assert not (work / must_not_exist).exists()


def test_a_budget_beyond_64_bits_is_a_budget_that_does_not_bind(work, capsys):
    """--max-flops 10^23 does not overflow the solver: it cannot bind, so the plan is the plan
    without it (the oracle), apart from the target it records."""
    assert main(PLAN + ["--json"]) == 0
    free = json.loads(capsys.readouterr().out)
    assert main(PLAN + ["--max-flops", str(10**23), "--json"]) == 0
    capped = json.loads(capsys.readouterr().out)
    assert capped["target"]["max_flops"] == 10**23
    capped["target"]["max_flops"] = None
    assert capped == free


def run_cli(args, cwd, **kwargs):
    return subprocess.run([sys.executable, "-m", "planner", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120, **kwargs)


def test_a_factory_that_calls_sys_exit(work):
    proc = run_cli(["plan", "--model", "exits:factory", "--density", "0.1"], work,
                   env=dict(os.environ, PYTHONPATH=f"{work}{os.pathsep}{ROOT}"))
    assert proc.returncode == 2, proc.stderr
    assert "sys.exit(3)" in proc.stderr and "Traceback" not in proc.stderr


def test_a_full_stdout(work):
    with open("/dev/full", "w") as full:
        proc = subprocess.run([sys.executable, "-m", "planner", "bound", "--arch", "64,16,10", "--density", "0.2",
                               "--rank-model", "analytic"], cwd=work, stdout=full, stderr=subprocess.PIPE,
                              text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "No space left on device" in lines[0], proc.stderr


def _interrupt(args, cwd, wait_for: str | None, delay: float):
    """Start the CLI, wait for ``wait_for`` on stderr (or ``delay`` seconds), send SIGINT, and
    return (returncode, stderr, seconds from the signal to the exit)."""
    env = dict(os.environ, SPARSITY_PLANNER_CACHE_DIR=str(Path(cwd) / "cold-cache"))
    proc = subprocess.Popen([sys.executable, "-m", "planner", *args], cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    time.sleep(delay)
    sent = time.monotonic()
    proc.send_signal(signal.SIGINT)
    try:
        out, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"still running 60 s after SIGINT: {err[-500:]}")
    return proc.returncode, err, time.monotonic() - sent


@pytest.mark.skipif(not hasattr(signal, "SIGINT") or os.name != "posix", reason="POSIX signals")
def test_ctrl_c_while_sampling_a_cold_alexnet_plan(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    rc, err, took = _interrupt(["plan", "--arch", "alexnet-fc", "--density", "0.001", "-o", str(out / "plan.json")],
                               tmp_path, None, 4.0)
    assert rc == 130, err
    assert "interrupted" in err and "Traceback" not in err
    assert took < 5.0, f"took {took:.1f} s to stop"
    assert os.listdir(out) == []  # no plan, no temporary file


@pytest.mark.skipif(os.name != "posix", reason="POSIX signals")
def test_ctrl_c_after_a_solve_still_interrupts(tmp_path):
    """CP-SAT must not keep a SIGINT handler of its own after a solve: the next Ctrl-C is still a
    KeyboardInterrupt the program can clean up after."""
    code = textwrap.dedent("""
        import sys, time, planner
        planner.plan("64,32,32,10", density=0.2, rank_model="analytic", cache=planner.RankCache(disk=False))
        try:  # "solved" inside the try: the Ctrl-C may come as soon as the parent reads it
            print("solved", flush=True)
            time.sleep(30)
        except KeyboardInterrupt:
            print("interrupted", flush=True)
            sys.exit(130)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "solved"
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=20)
    assert proc.returncode == 130 and "interrupted" in out
