"""Speed-up of ``compare --jobs N`` (local worker processes) over ``--jobs 1`` (this process).

One sweep on digits (64-100-100-10, the default 64 + 64 epochs), run once per N through the
library with the analytic rank model (no sampling, so no run gains from a rank cache an
earlier run filled; the sampled model changes the plans, not the training that dominates). It prints the wall time of
each N, the speed-up over N = 1, whether the rows equal those of N = 1, and the load average
before and after each run (the machine may be shared).

    python benchmarks/compare_jobs.py [--jobs 1,2] [--seeds 4] [--densities ...] [--strategies ...]

(defaults: compare's own densities and strategies).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from machine import machine_line  # noqa: E402



def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", default="1,2", help="comma list of N")
    ap.add_argument("--seeds", type=int, default=4)
    ap.add_argument("--densities", default="0.1,0.05,0.03,0.02,0.01,0.007")
    ap.add_argument("--strategies", default="lr-bound,uniform,erk,global,lamp")
    args = ap.parse_args()
    counts = [int(v) for v in args.jobs.split(",")]
    DENSITIES = [float(v) for v in args.densities.split(",")]
    STRATEGIES = args.strategies.split(",")
    os.environ["SPARSITY_PLANNER_CACHE_DIR"] = tempfile.mkdtemp(prefix="compare-jobs-cache-")

    from planner.experiments.compare import compare

    print(machine_line())
    n_jobs = args.seeds * (1 + len(DENSITIES) * len(STRATEGIES))
    print(f"sweep: digits 64-100-100-10, 64 + 64 epochs, rank model analytic, {args.seeds} seeds x densities {DENSITIES} x "
          f"strategies {STRATEGIES} = {n_jobs} jobs")
    print(f"{'--jobs':>6} {'wall s':>8} {'speed-up':>8}  {'rows':<10} load before -> after (1 min)")
    reference = base = None
    for n in counts:
        before = os.getloadavg()[0]
        t0 = time.perf_counter()
        result = compare("digits", "64,100,100,10", DENSITIES, STRATEGIES, args.seeds, epochs=64,
                         finetune_epochs=64, lr=0.1, progress=False, n_jobs=n, rank_model="analytic")
        wall = time.perf_counter() - t0
        after = os.getloadavg()[0]
        if reference is None:
            reference, base = result.to_dict(), wall
        same = "same" if result.to_dict() == reference else "DIFFERENT"
        print(f"{n:>6} {wall:>8.1f} {base / wall:>7.2f}x  {same:<10} {before:.2f} -> {after:.2f}")


if __name__ == "__main__":
    main()
