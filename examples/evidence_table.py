"""Paired comparison of compare runs against the best baseline, per (shape, density).

Reads the ``results.json`` of one or more ``sparsity-planner compare --out DIR`` runs (or their
``--json`` output) and prints, per strategy: at how many (run, density) points its mean test
accuracy is within one paired standard error (over seeds) of the best baseline's, its mean and
its worst paired difference to that best baseline in points, and at how many points it beats
uniform and ERK by more than one paired standard error (``--lowest N``: also at the N lowest
densities of every run, issue 11's bar). ``--csv FILE`` writes every point's paired
differences; ``--plot FILE`` draws them, one panel per run.

    python examples/evidence_table.py results/64-200-50-10/results.json results/64-30-30-30-10/results.json
    python examples/evidence_table.py results/*/results.json --strategies lr-bound,erk,lamp --plot evidence.png
"""

from __future__ import annotations

import argparse
import collections
import csv
import json
import os
import statistics


def run_name(path: str) -> str:
    """The run's folder name (``compare --out DIR``), else the file name."""
    parent = os.path.basename(os.path.dirname(os.path.abspath(path)))
    return parent or os.path.basename(path)


def points(path: str, baselines: list[str]) -> tuple[list[dict], list[str]]:
    """Every (density, strategy) point of one run: its mean, the best baseline there, the paired
    differences (mean, SE) to that best and to uniform and ERK."""
    with open(path) as fh:
        rows = json.load(fh)["results"]
    name = run_name(path)
    acc: dict = collections.defaultdict(dict)
    order: list[str] = []
    for r in rows:
        acc[(r["strategy"], r["density"])][r["seed"]] = r["accuracy"]
        if r["strategy"] not in order:
            order.append(r["strategy"])

    def paired(a, b, density):
        d = [acc[(a, density)][k] - acc[(b, density)][k] for k in acc[(a, density)]]
        return statistics.mean(d), statistics.stdev(d) / len(d) ** 0.5

    out = []
    densities = sorted({d for _, d in acc}, reverse=True)
    for rank, density in enumerate(densities):
        mean = {s: statistics.mean(acc[(s, density)].values()) for s in order}
        best = max((b for b in baselines if b in order), key=lambda b: mean[b])
        for s in order:
            m, se = paired(s, best, density)
            rec = {"run": name, "density": density, "from_lowest": len(densities) - 1 - rank, "strategy": s,
                   "accuracy": mean[s], "best_baseline": best, "vs_best": m, "vs_best_se": se}
            for ref in ("uniform", "erk"):
                if ref in order and ref != s:
                    rec[f"vs_{ref}"], rec[f"vs_{ref}_se"] = paired(s, ref, density)
            out.append(rec)
    return out, order


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("results", nargs="+", help="results.json files of compare runs")
    ap.add_argument("--baselines", default="uniform,erk,global,lamp")
    ap.add_argument("--strategies", default=None, help="Comma list: only these rows (and plot lines).")
    ap.add_argument("--lowest", type=int, default=2, help="Count the wins over uniform and ERK at this many "
                                                          "lowest densities of every run.")
    ap.add_argument("--csv", default=None, help="Write every point's paired differences here.")
    ap.add_argument("--plot", default=None, help="Plot the paired difference to the best baseline per density.")
    ap.add_argument("--plot-strategies", default=None, help="Comma list: only these lines in the plot.")
    args = ap.parse_args()
    baselines = args.baselines.split(",")
    recs, order = [], []
    for path in args.results:
        got, names = points(path, baselines)
        recs += got
        order += [s for s in names if s not in order]
    if args.strategies:
        keep = args.strategies.split(",")
        missing = [s for s in keep if s not in order]
        if missing:
            raise SystemExit(f"evidence_table: no rows of {', '.join(missing)} in these results")
        order = keep
    npoints = len({(r["run"], r["density"]) for r in recs})
    nlow = len({(r["run"], r["density"]) for r in recs if r["from_lowest"] < args.lowest})
    print(f"| strategy | within 1 SE of the best | mean vs best (points) | worst vs best | beats uniform by > 1 SE "
          f"| beats ERK by > 1 SE | beats both at the {args.lowest} lowest |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for s in order:
        mine = [r for r in recs if r["strategy"] == s]
        within = sum(r["vs_best"] >= -r["vs_best_se"] for r in mine)
        cells = []
        for ref in ("uniform", "erk"):
            cells.append("-" if s == ref else str(sum(r[f"vs_{ref}"] > r[f"vs_{ref}_se"] for r in mine
                                                      if f"vs_{ref}" in r)))
        low = sum(all(r.get(f"vs_{ref}", 1) > r.get(f"vs_{ref}_se", 0) for ref in ("uniform", "erk"))
                  for r in mine if r["from_lowest"] < args.lowest)
        low_cell = "-" if s in ("uniform", "erk") else f"{low} / {nlow}"
        print(f"| {s} | {within} / {npoints} | {100 * statistics.mean(r['vs_best'] for r in mine):+.2f} | "
              f"{100 * min(r['vs_best'] for r in mine):+.2f} | {cells[0]} | {cells[1]} | {low_cell} |")
    if args.csv:
        fields = ["run", "density", "strategy", "accuracy", "best_baseline", "vs_best", "vs_best_se", "vs_uniform",
                  "vs_uniform_se", "vs_erk", "vs_erk_se"]
        tmp = args.csv + ".tmp"
        with open(tmp, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=fields, extrasaction="ignore")
            w.writeheader()
            for r in recs:
                if r["strategy"] in order:
                    w.writerow({k: (round(v, 6) if isinstance(v, float) else v) for k, v in r.items()})
        os.replace(tmp, args.csv)
        print(f"wrote {args.csv}")
    if args.plot:
        plot(recs, args.plot_strategies.split(",") if args.plot_strategies else order, args.plot)
        print(f"wrote {args.plot}")


def plot(recs: list[dict], order: list[str], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    runs = list(dict.fromkeys(r["run"] for r in recs))
    cols = min(3, len(runs))
    rows = (len(runs) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False, sharey=False)
    for ax, run in zip(axes.flat, runs):
        for s in order:
            pts = sorted((r["density"], 100 * r["vs_best"], 100 * r["vs_best_se"]) for r in recs
                         if r["run"] == run and r["strategy"] == s)
            if pts:
                x, y, e = zip(*pts)
                ax.errorbar(x, y, yerr=e, marker="o", markersize=3, capsize=2, label=s)
        ax.axhline(0, color="grey", linewidth=0.8)
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_title(run, fontsize=9)
        ax.set_xlabel("global density")
        ax.set_ylabel("accuracy - best baseline (points)")
    for ax in list(axes.flat)[len(runs):]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(5, len(labels)), fontsize=8)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)


if __name__ == "__main__":
    main()
