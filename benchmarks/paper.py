"""The paper's procedure and this planner side by side, as whole commands.

For each of the paper's architectures and densities (the authors' instructions: MNIST 2x100,
2x200, 2x400, CIFAR-10 2x100 and LeNet's fully connected 400-120-84), runs

  (a) ``sparsity-planner plan --solver paper --rank-model svd``: the paper's 1-D search with
      the paper's rank estimator (Gaussian matrices, Bernoulli masks, numerical rank), and
  (b) ``sparsity-planner plan``: this planner with its defaults,

each in a fresh process with an empty rank cache, and prints both splits, both bounds scored
by one estimator (the sampled model, seed 0, at each plan's integer keep-counts), the wall
time of each command and their ratio. ``--estimator sampled`` runs (a) with the sampled model
instead: the same procedure, without the cost of SVD.

Run from the repository root:
    python benchmarks/paper.py                            # every case, (a) with svd: hours
    python benchmarks/paper.py --cases mnist400 --densities 0.0005,0.0001
    python benchmarks/paper.py --estimator sampled        # the procedures alone, minutes
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from machine import machine_line  # noqa: E402  benchmarks/machine.py

#: the authors' instructions (bounding_accuracy/Instruction.md of their repository)
CASES = {
    "mnist100": ("784,100,100,10", (0.01, 0.005, 0.0025, 0.001, 0.00075, 0.0005, 0.0001)),
    "mnist200": ("784,200,200,10", (0.01, 0.001, 0.0006, 0.0004, 0.0002, 0.0001, 0.00005)),
    "mnist400": ("784,400,400,10", (0.001, 0.0005, 0.00025, 0.0001, 0.000075, 0.00005, 0.000025, 0.00001)),
    "cifar100": ("3072,100,100,10", (0.01, 0.005, 0.001, 0.00075, 0.0005, 0.00025, 0.0001)),
    "lenet": ("400,120,84,10", (0.001, 0.00075, 0.000625, 0.0005, 0.000375, 0.00025, 0.0001, 0.00009, 0.00008)),
}


def command(arch: str, density: float, extra: list[str]) -> tuple[dict, float]:
    """One whole ``plan`` command in a fresh process with an empty cache: (plan file, seconds)."""
    with tempfile.TemporaryDirectory() as cache_dir:
        args = [sys.executable, "-m", "planner", "plan", "--arch", arch, "--density", repr(density),
                "--cache-dir", cache_dir, "--json", *extra]
        t0 = time.perf_counter()
        run = subprocess.run(args, capture_output=True, text=True)
        seconds = time.perf_counter() - t0
    if run.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed: {run.stderr.strip()}")
    return json.loads(run.stdout), seconds


def main() -> None:
    from planner import RankCache
    from planner.allocation.scoring import KeepScorer

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", default=",".join(CASES), help=f"comma-separated, of {', '.join(CASES)}")
    parser.add_argument("--densities", default=None, help="only these densities (comma-separated)")
    parser.add_argument("--estimator", choices=("svd", "sampled"), default="svd",
                        help="rank model of the paper's procedure (a)")
    args = parser.parse_args()
    only = None if args.densities is None else {float(d) for d in args.densities.split(",")}
    print(f"machine: {machine_line()}")
    print(f"(a) plan --solver paper --rank-model {args.estimator}   (b) plan (defaults)   "
          "bits: sampled model, seed 0, at each plan's keep-counts")
    head = (f"{'architecture':<16} {'density':>8} {'keep':>5} {'(a) split':>13} {'(a) bits':>9} {'(a) s':>8} "
            f"{'(b) split':>13} {'(b) bits':>9} {'(b) s':>6} {'a/b time':>9} {'b-a bits':>9}")
    print(head)
    cache = RankCache(disk=False)
    lower = 0
    rows = 0
    for name in args.cases.split(","):
        if name not in CASES:
            raise SystemExit(f"unknown case {name!r}; choose from {', '.join(CASES)}")
        arch, densities = CASES[name]
        sizes = [int(s) for s in arch.split(",")]
        shapes = [(sizes[i + 1], sizes[i]) for i in range(len(sizes) - 2)]
        scorer = KeepScorer(shapes, sizes[0], "sampled", 0, cache)
        for density in densities:
            if only is not None and density not in only:
                continue
            paper, t_a = command(arch, density, ["--solver", "paper", "--rank-model", args.estimator])
            ours, t_b = command(arch, density, [])
            ka = tuple(layer["keep"] for layer in paper["layers"] if layer["in_bound"])
            kb = tuple(layer["keep"] for layer in ours["layers"] if layer["in_bound"])
            bits_a, bits_b = scorer.exact(ka), scorer.exact(kb)
            lower += bits_b < bits_a - 1e-9
            rows += 1
            split = " + ".join
            print(f"{arch:<16} {density:>8g} {ours['kept']:>5} {split(map(str, ka)):>13} {bits_a:>9.3f} {t_a:>8.1f} "
                  f"{split(map(str, kb)):>13} {bits_b:>9.3f} {t_b:>6.1f} {t_a / t_b:>8.1f}x {bits_b - bits_a:>+9.3f}",
                  flush=True)
    print(f"{rows} cases; (b) below (a) in {lower}")


if __name__ == "__main__":
    main()
