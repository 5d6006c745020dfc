"""The plan command as a user runs it: output, files, and errors."""

import json
import subprocess
import sys

import pytest

from planner.allocation.planfile import Plan




def test_plan_json_and_output_file(cli, tmp_path):
    target = tmp_path / "plan.json"
    code, out, err = cli("plan", "--arch", "64,32,16,10", "--density", "0.1", "--rank-model", "analytic",
                         "--json", "-o", str(target))
    assert code == 0, err
    data = json.loads(out)
    assert data["format"] == "sparsity-plan/1"
    assert data["kept"] == data["target"]["keep"] == round(0.1 * (64 * 32 + 32 * 16))
    assert target.read_text() == out
    assert Plan.load(target).to_json() == out
    assert [p.name for p in tmp_path.iterdir()] == ["plan.json"]  # no temporary left behind


def test_plan_table(cli):
    code, out, _ = cli("plan", "--arch", "64,32,16,10", "--keep", "300", "--rank-model", "analytic",
                       "--tie-break", "robust")
    assert code == 0
    assert "fc1" in out and "fc3" in out and "frozen" in out
    assert "kept 300 of 2560 prunable weights" in out
    assert "certificate" in out and "exhaustive (OPTIMAL" in out  # 299 integer plans: all scored
    code, out, _ = cli("plan", "--arch", "64,32,16,10", "--keep", "300", "--rank-model", "analytic",
                       "--integer", "off", "--tie-break", "robust")
    assert code == 0 and "no plan on the grid exceeds" in out and "cpsat (OPTIMAL)" in out


@pytest.mark.parametrize(
    "args, message",
    [
        (["--arch", "784,300,100,10", "--density", "0.05", "--min-density", "0.5"], "minimum density"),
        (["--arch", "784,300,100,10", "--density", "0.05", "--solver", "nope"], "unknown solver"),
        (["--arch", "784,0,10", "--density", "0.05"], "positive"),
        (["--arch", "784,300,10", "--density", "0"], "density"),
        (["--arch", "784,300,10"], "exactly one"),
        (["--arch", "784,300,10", "--density", "0.1", "--keep", "5"], "exactly one"),
        (["--arch", "784,300,10", "--keep", "99999999"], "keep"),
        (["--arch", "784,300,10", "--density", "0.1", "--grid", "0"], "grid"),
        (["--arch", "784,300,10", "--density", "0.1", "--input-dim", "785"], "input dimension"),
        (["--arch", "784,300,10", "--density", "0.1", "--tie-break", "coin"], "tie-break"),
    ],
)
def test_bad_input_exit_2_one_line_no_file(cli, tmp_path, args, message):
    target = tmp_path / "plan.json"
    code, out, err = cli("plan", *args, "--rank-model", "analytic", "-o", str(target))
    assert code == 2
    assert err.count("\n") == 1 and "Traceback" not in err
    assert message in err
    assert not target.exists()


def test_existing_output_survives_a_failed_run(cli, tmp_path):
    target = tmp_path / "plan.json"
    target.write_text("old")
    code, _, _ = cli("plan", "--arch", "784,300,100,10", "--density", "0.05", "--min-density", "0.9",
                     "-o", str(target))
    assert code == 2 and target.read_text() == "old"


def test_python_dash_m(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "planner", "plan", "--arch", "64,32,10", "--density", "0.2", "--rank-model",
         "analytic", "--json"], capture_output=True, text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["strategy"] == "lr-bound"
