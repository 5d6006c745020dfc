"""Paired comparison of compare runs against the best baseline, per (shape, density).

Reads the ``results.json`` of one or more ``sparsity-planner compare --out DIR`` runs (or their
``--json`` output) and prints, per strategy: at how many (run, density) points its mean test
accuracy is within one paired standard error (over seeds) of the best baseline's, its mean
paired difference to that best baseline in points, and at how many points it beats uniform and
ERK by more than one paired standard error.

    python examples/evidence_table.py results/64-200-50-10/results.json results/64-30-30-30-10/results.json
"""

from __future__ import annotations

import argparse
import collections
import json
import statistics


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("results", nargs="+", help="results.json files of compare runs")
    ap.add_argument("--baselines", default="uniform,erk,global,lamp")
    args = ap.parse_args()
    baselines = args.baselines.split(",")
    within, beats, diffs_to_best, points = (collections.Counter(), collections.defaultdict(collections.Counter),
                                            collections.defaultdict(list), 0)
    order: list[str] = []
    for path in args.results:
        with open(path) as fh:
            rows = json.load(fh)["results"]
        acc = collections.defaultdict(dict)
        for r in rows:
            acc[(r["strategy"], r["density"])][r["seed"]] = r["accuracy"]
            if r["strategy"] not in order:
                order.append(r["strategy"])
        for density in sorted({d for _, d in acc}):
            points += 1
            mean = {s: statistics.mean(acc[(s, density)].values()) for s in order}
            best = max((b for b in baselines if b in order), key=lambda b: mean[b])

            def paired(a, b):
                d = [acc[(a, density)][k] - acc[(b, density)][k] for k in acc[(a, density)]]
                return statistics.mean(d), statistics.stdev(d) / len(d) ** 0.5

            for s in order:
                m, se = paired(s, best)
                diffs_to_best[s].append(m)
                within[s] += m >= -se
                for ref in ("uniform", "erk"):
                    if ref in order and ref != s:
                        m2, se2 = paired(s, ref)
                        beats[s][ref] += m2 > se2
    print("| strategy | within 1 SE of the best | mean vs best (points) | beats uniform by > 1 SE | beats ERK by > 1 SE |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for s in order:
        cells = ["-" if s == ref else str(beats[s][ref]) for ref in ("uniform", "erk")]
        print(f"| {s} | {within[s]} / {points} | {100 * statistics.mean(diffs_to_best[s]):+.2f} | "
              f"{cells[0]} | {cells[1]} |")


if __name__ == "__main__":
    main()
