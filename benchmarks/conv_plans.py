"""Plan time of CNNs whose convolutions are in the bound (issue: LeNet-5 <= 10 s, the VGG-style
CIFAR net <= 60 s), and the bound of each at uniform densities (where it leaves the dense bound).

Each plan runs in a fresh process with the disk cache off (every rank distribution computed):
``sparsity-planner plan --model M --input-shape S --density D``; wall and CPU seconds are the
process's. Run from the repository root:
    python benchmarks/conv_plans.py [--density 0.05]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

from machine import machine_line  # benchmarks/machine.py

MODELS = [("examples.models:lenet5", "1,32,32", 10.0), ("examples.models:digits_cnn", "64", None),
          ("examples.models:vgg11", "3,32,32", 60.0)]


def run(argv):
    env = dict(os.environ, SPARSITY_PLANNER_CACHE_DIR="off")
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "planner", *argv], capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed: {proc.stderr.strip().splitlines()[-1]}")
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), proc.stdout


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--density", default="0.05")
    ap.add_argument("--sweep", default="0.1,0.01,0.003,0.001,0.0003")
    args = ap.parse_args()
    print(machine_line())
    print(f"{'model':<28} {'layers in bound':>15} {'plan wall s':>12} {'cpu s':>8} {'target':>8}")
    for model, shape, target in MODELS:
        wall, cpu, out = run(["plan", "--model", model, "--input-shape", shape, "--density", args.density,
                              "--json"])
        plan = json.loads(out)
        inb = sum(1 for layer in plan["layers"] if layer.get("in_bound"))
        flag = "" if target is None else f"<= {target:g} {'ok' if wall <= target else 'MISSED'}"
        print(f"{model:<28} {inb:>8} of {len(plan['layers']):<4} {wall:>12.1f} {cpu:>8.1f} {flag:>8}")
    print()
    print(f"{'model':<28} " + " ".join(f"{d:>10}" for d in args.sweep.split(",")) + "   (log2 bound / dense)")
    for model, shape, _ in MODELS:
        cells = []
        for d in args.sweep.split(","):
            _, _, out = run(["bound", "--model", model, "--input-shape", shape, "--density", d, "--json"])
            data = json.loads(out)
            cells.append(f"{100 * data['log2_bound'] / data['dense_log2_bound']:9.1f}%")
        print(f"{model:<28} " + " ".join(f"{c:>10}" for c in cells))


if __name__ == "__main__":
    main()
