"""How far is `plan` from the best integer plan? Two hidden layers, analytic ranks,
`--tie-break none`: the plan's bound against exhaustive search over every integer split of its
kept hidden weights between the two layers (the output layer stays dense, as in `plan`).
Issue 13's cases; the gap is what an integer-exact polish has to close.

Run from the repository root:
    python benchmarks/integer_gap.py [--grid 32]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from machine import machine_line  # noqa: E402  benchmarks/machine.py

CASES = (("400,120,84,10", 0.0005), ("784,100,100,10", 0.0005), ("3072,100,100,10", 0.00025),
         ("784,100,100,10", 0.001))


def main() -> None:
    import planner

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--grid", type=int, default=32)
    args = parser.parse_args()
    print(f"machine: {machine_line()}")
    print(f"{'architecture':<16} {'density':>8} {'kept':>5} {'plan split':>11} {'plan bits':>10} "
          f"{'best split':>11} {'best bits':>10} {'gap':>6} {'plan s':>7} {'search s':>9}")
    cache = planner.RankCache(disk=False)
    for arch, density in CASES:
        t0 = time.perf_counter()
        plan = planner.plan(arch, density=density, rank_model="analytic", tie_break="none", grid=args.grid,
                            cache=cache)
        t1 = time.perf_counter()
        a, b = [layer for layer in plan.layers if layer.in_bound]
        total = a.keep + b.keep

        def bits(k):
            return planner.expected_bound(arch, [k / a.size, (total - k) / b.size], rank_model="analytic",
                                          cache=cache).log2_bound

        best_bits, best_k = max((bits(k), k) for k in range(1, total))
        t2 = time.perf_counter()
        plan_bits = bits(a.keep)
        print(f"{arch:<16} {density:>8g} {total:>5} {f'{a.keep} + {b.keep}':>11} {plan_bits:>10.3f} "
              f"{f'{best_k} + {total - best_k}':>11} {best_bits:>10.3f} {best_bits - plan_bits:>6.3f} "
              f"{t1 - t0:>7.2f} {t2 - t1:>9.2f}")


if __name__ == "__main__":
    main()
