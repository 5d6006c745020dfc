"""Start-up time of the command line: what a user waits for before any work starts.

Measures, as wall time of a fresh ``python -m planner`` process (median of ``--repeats`` runs
after one warm-up run that also fills the rank cache):

* ``--help``;
* ``bound --arch 784,300,100,10 --density 0.005`` (LeNet-300-100) with the rank
  distributions already in the on-disk cache;
* ``python -c "import planner"`` and the interpreter alone, for reference;

then which heavy modules ``import planner`` loaded, and the targets with pass/fail.

Run from the repository root:
    python benchmarks/startup.py [--repeats 15]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

from machine import machine_line  # benchmarks/machine.py

HEAVY = ("numpy", "scipy", "scipy.special", "ortools", "pulp", "torch", "rich")
BOUND = ["bound", "--arch", "784,300,100,10", "--density", "0.005"]
TARGETS = {"--help": 0.25, "bound LeNet-300-100 (cached)": 0.40}


def wall(argv: list[str], env: dict, repeats: int) -> float:
    subprocess.run(argv, env=env, capture_output=True, check=True)  # warm-up: page cache, rank cache
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run(argv, env=env, capture_output=True, check=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=15, help="timed runs per command (median reported)")
    args = parser.parse_args()
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    py = sys.executable
    print(f"machine: {machine_line()}")
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, SPARSITY_PLANNER_CACHE_DIR=cache, PYTHONPATH=root)
        rows = [
            ("python -c pass", wall([py, "-c", "pass"], env, args.repeats)),
            ("import planner", wall([py, "-c", "import planner"], env, args.repeats)),
            ("--help", wall([py, "-m", "planner", "--help"], env, args.repeats)),
            ("bound LeNet-300-100 (cached)", wall([py, "-m", "planner", *BOUND], env, args.repeats)),
        ]
        probe = ("import sys, planner; print(' '.join(m for m in %r if m in sys.modules) or '-')" % (HEAVY,))
        loaded = subprocess.run([py, "-c", probe], env=env, capture_output=True, text=True, check=True).stdout.strip()
    print(f"median of {args.repeats} runs, after one warm-up\n")
    print(f"{'command':<32} {'seconds':>8} {'target':>8}  verdict")
    for name, seconds in rows:
        target = TARGETS.get(name)
        verdict = "" if target is None else ("pass" if seconds <= target else "FAIL")
        print(f"{name:<32} {seconds:>8.3f} {'' if target is None else f'{target:.2f}':>8}  {verdict}")
    print(f"\nheavy modules loaded by `import planner`: {loaded}")


if __name__ == "__main__":
    main()
