"""Time the planner end to end: cold and warm rank cache, sampled and analytic ranks.

    python benchmarks/plan.py                 # the issue's table
    python benchmarks/plan.py --quick         # two small cases
    python benchmarks/plan.py --grid 64 --density 0.05 --models sampled

"Cold" uses an empty on-disk cache in a fresh process state; "warm" runs the same plan again
in a new process with the disk cache the cold run filled (what a second CLI call sees).
Each run is a subprocess of `sparsity-planner plan --json`, so the figures include start-up.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

from machine import machine_line  # benchmarks/machine.py

CASES = [
    ("784-100-100-10", "784,100,100,10"),
    ("784-300-100-10", "784,300,100,10"),
    ("3072-400-400-10", "3072,400,400,10"),
    ("1024-4096-4096-10", "1024,4096,4096,10"),
    ("784-(256x8)-10", "784," + ",".join(["256"] * 8) + ",10"),
]


def machine() -> str:
    return machine_line()


def run(arch: str, density: float, model: str, grid: int, cache_dir: str, timeout: float) -> tuple[float, dict | str]:
    cmd = [sys.executable, "-m", "planner", "plan", "--arch", arch, "--density", str(density),
           "--rank-model", model, "--grid", str(grid), "--json"]
    env = dict(os.environ, SPARSITY_PLANNER_CACHE_DIR=cache_dir)
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        return time.perf_counter() - start, f"timeout after {timeout:.0f} s"
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        return elapsed, proc.stderr.strip().splitlines()[-1] if proc.stderr else f"exit {proc.returncode}"
    return elapsed, json.loads(proc.stdout)


def stage_timing(arch: str, density: float, grid: int) -> None:
    """One cold plan in this process, with the time at which each stage ended."""
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
    os.environ["SPARSITY_PLANNER_CACHE_DIR"] = tempfile.mkdtemp()
    from planner.allocation.pipeline import plan

    start, seen = time.perf_counter(), set()

    def progress(stage, done, total):
        if done == total and stage not in seen:
            seen.add(stage)
            print(f"{time.perf_counter() - start:8.2f} s  {stage} done ({total})", flush=True)

    result = plan(arch, density=density, grid=grid, progress=progress)
    print(f"{time.perf_counter() - start:8.2f} s  plan done: "
          + ", ".join(f"{layer.name} {layer.keep}" for layer in result.layers))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--density", type=float, default=0.05)
    ap.add_argument("--grid", type=int, default=64)
    ap.add_argument("--models", default="sampled,analytic")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--timeout", type=float, default=600.0)
    ap.add_argument("--stages", metavar="ARCH", default=None,
                    help="time the stages of one cold plan of ARCH (e.g. 1024,4096,4096,10) instead")
    args = ap.parse_args()
    if args.stages:
        print(f"machine: {machine()}")
        stage_timing(args.stages, args.density, args.grid)
        return
    cases = CASES[:2] if args.quick else CASES
    print(f"machine: {machine()}")
    print(f"density {args.density}, grid {args.grid}, solver cpsat (1 thread), workers: all cores\n")
    header = f"{'architecture':<20} {'ranks':<9} {'cold s':>8} {'warm s':>8} {'log2 bound':>11} {'uniform':>10} {'gap bits':>9}  status"
    print(header)
    print("-" * len(header))
    for name, arch in cases:
        for model in args.models.split(","):
            with tempfile.TemporaryDirectory() as cache:
                cold, out = run(arch, args.density, model, args.grid, cache, args.timeout)
                if isinstance(out, str):
                    print(f"{name:<20} {model:<9} {cold:>8.2f} {'-':>8} {'-':>11} {'-':>10} {'-':>9}  {out}")
                    continue
                warm, out2 = run(arch, args.density, model, args.grid, cache, args.timeout)
                obj = out["objective"]
                same = not isinstance(out2, str) and out2 == out
                print(f"{name:<20} {model:<9} {cold:>8.2f} {warm:>8.2f} {obj['log2_bound']:>11.3f} "
                      f"{obj['uniform_log2_bound']:>10.3f} {obj['certificate_gap_bits']:>9.2f}  "
                      f"{out['solver']['status']}{'' if same else ' (warm plan differs!)'}")
            sys.stdout.flush()


if __name__ == "__main__":
    main()
