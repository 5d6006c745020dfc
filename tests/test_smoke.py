"""Closed forms of the dense bound (docs/theory.md section 1) through the public API and the CLI."""

import math
import subprocess
import sys

import pytest

import planner


@pytest.mark.parametrize(
    "sizes, d0, expected",
    [((784, 100, 100), None, 199.0791), ((784, 20, 20), None, 39.1704), ((784, 20, 20), 1, math.log2(21 * 21))],
)
def test_dense_closed_forms(sizes, d0, expected):
    assert planner.dense_log2_bound(sizes, d0) == pytest.approx(expected, abs=5e-5)


def test_import_is_light():
    code = "import sys, planner; bad = [m for m in ('torch', 'ortools', 'pulp') if m in sys.modules]; print(bad)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
