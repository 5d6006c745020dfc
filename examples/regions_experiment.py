"""Linear regions of a pruned 64-20-20-10 MLP on scikit-learn's digits, next to the Theorem 1
bound: the setting of Figures 1 and 2 of Cai et al. (CPAIOR 2023), on data that ships with
scikit-learn (1797 8x8 images) instead of MNIST.

1. Train the dense network (full-batch Adam) and print its test accuracy.
2. For each density, prune a copy by magnitude with the same density in both hidden layers
   (``planner.baselines.baseline_plan("uniform", ...)`` + ``planner.apply``; the output layer
   stays dense), fine-tune it with the masks held (300 full-batch Adam steps, lr 5e-3), and
   finalize it.
3. Count its linear regions (``planner.experiments.regions.count_regions``) on random subspaces spanned by
   S+1 = 2, 3, 5 test images (S = 1, 2, 4; the same subspaces at every density), with a time
   limit per count (a count the limit stopped is a lower bound and is flagged), next to the
   expected bound of Theorem 1 with d0 = S at the realized per-layer densities.
4. Write results.json, results.csv and regions.png into --out and print a table.

    python examples/regions_experiment.py [--quick] [--seed 0] [--out results/regions]
    python examples/regions_experiment.py --timing      # count times of a 784-20-20-10 MLP

The trained dense model is also a factory: ``--model examples.regions_experiment:digits_2x20``
with ``--weights results/regions/dense.pt`` (written by a run) for ``sparsity-planner
count-regions``.
"""

from __future__ import annotations

import argparse
import copy
import csv
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

ARCH = (64, 20, 20, 10)
TRAIN_LR = 1e-2
FINETUNE_LR = 5e-3


def digits_2x20(seed: int = 0):
    """The experiment's 64-20-20-10 MLP (layers fc1, fc2, fc3), untrained."""
    from examples.models import mlp

    return mlp(ARCH, seed)


def load_data(seed: int):
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)  # pixels 0..16 -> [0, 1]
    return train_test_split(x, y, test_size=0.25, random_state=seed, stratify=y)


def train(model, x, y, steps: int, lr: float):
    """Full-batch Adam on cross-entropy (masks attached by torch pruning stay applied)."""
    import torch

    xt, yt = torch.as_tensor(x), torch.as_tensor(y)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()
    for _ in range(steps):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(xt), yt).backward()
        opt.step()
    model.eval()
    return model


def accuracy(model, x, y) -> float:
    import torch

    with torch.no_grad():
        return float((model(torch.as_tensor(x)).argmax(1).numpy() == y).mean())


def prune_uniform(dense, density: float, x_train, y_train, finetune: int):
    """A pruned, fine-tuned, finalized copy of ``dense`` (density 1 returns a plain copy)."""
    from planner.pruning.masks import apply_plan, finalize
    from planner.allocation.baselines import baseline_plan

    model = copy.deepcopy(dense)
    if density < 1.0:
        plan = baseline_plan("uniform", ",".join(map(str, ARCH)), density=density)
        apply_plan(model, plan, criterion="magnitude")
        if finetune:
            train(model, x_train, y_train, finetune, FINETUNE_LR)
        finalize(model)
    return model


def hidden_densities(model) -> list[float]:
    return [float((model.get_submodule(n).weight != 0).float().mean()) for n in ("fc1", "fc2")]


def log2_bound(densities, d0: int) -> float:
    from planner.core.bound import expected_bound
    from planner.core.rank import RankCache

    report = expected_bound(",".join(map(str, ARCH)), densities, rank_model="sampled", input_dim=d0,
                            cache=RankCache(disk=False))
    return report.log2_bound


def parse_subspaces(text: str) -> dict[int, int]:
    out = {}
    for part in text.split(","):
        s, n = part.split(":")
        out[int(s)] = int(n)
    return out


def fmt_bound(bits: float) -> str:
    return f"{2 ** bits:,.0f}" if bits < 40 else f"2^{bits:.1f}"


# ---------------------------------------------------------------------------------- experiment


def run_experiment(args) -> int:
    import torch

    from planner.core.bound import dense_log2_bound
    from planner.experiments.regions import count_regions

    start = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)
    x_train, x_test, y_train, y_test = load_data(args.seed)
    dense = train(digits_2x20(args.seed), x_train, y_train, args.epochs, TRAIN_LR)
    dense_acc = accuracy(dense, x_test, y_test)
    print(f"dense 64-20-20-10 on digits: test accuracy {dense_acc:.4f} "
          f"({len(x_train)} train / {len(x_test)} test images, {args.epochs} full-batch Adam steps)")
    torch.save(dense.state_dict(), out / "dense.pt")

    rng = np.random.default_rng(args.seed)
    subspaces = {s: [rng.choice(len(x_test), s + 1, replace=False) for _ in range(n)]
                 for s, n in parse_subspaces(args.subspaces).items()}
    for s, idx in subspaces.items():
        np.save(out / f"points_S{s}.npy", x_test[idx[0]].astype(np.float64))

    rows, detail = [], []
    for density in args.densities:
        model = prune_uniform(dense, density, x_train, y_train, args.finetune)
        acc = accuracy(model, x_test, y_test)
        layer_d = hidden_densities(model)
        if density < 1.0:
            torch.save(model.state_dict(), out / f"pruned_{density:g}.pt")
        for s, idx_list in subspaces.items():
            counts = []
            for idx in idx_list:
                r = count_regions(model, x_test[idx].astype(np.float64), time_limit=args.time_limit,
                                  seed=args.seed)
                counts.append(r)
                detail.append({"density": density, "S": s, "points": [int(i) for i in idx],
                               "regions": r.regions, "complete": r.complete, "method": r.method,
                               "seconds": round(r.seconds, 4)})
            bits = log2_bound(layer_d, s)
            regions = np.array([c.regions for c in counts])
            rows.append({
                "density": density, "fc1_density": round(layer_d[0], 6), "fc2_density": round(layer_d[1], 6),
                "test_accuracy": round(acc, 6), "S": s, "subspaces": len(counts),
                "mean_regions": float(regions.mean()), "median_regions": float(np.median(regions)),
                "min_regions": int(regions.min()), "max_regions": int(regions.max()),
                "incomplete": int(sum(not c.complete for c in counts)),
                "log2_bound": round(bits, 6), "bound": 2 ** bits,
                "dense_log2_bound": round(dense_log2_bound(ARCH[:-1], s), 6),
                "mean_seconds": round(float(np.mean([c.seconds for c in counts])), 4),
                "max_seconds": round(float(np.max([c.seconds for c in counts])), 4),
            })
            print(f"  density {density:<5g} S={s}: mean {regions.mean():.1f} regions "
                  f"({sum(not c.complete for c in counts)} incomplete)", flush=True)

    wall = time.perf_counter() - start
    meta = {"architecture": list(ARCH), "dataset": "sklearn digits (8x8), pixels / 16",
            "train": len(x_train), "test": len(x_test), "seed": args.seed, "epochs": args.epochs,
            "train_lr": TRAIN_LR, "finetune_steps": args.finetune, "finetune_lr": FINETUNE_LR, "pruning": "magnitude, uniform per hidden layer, output dense",
            "time_limit_per_count": args.time_limit, "dense_test_accuracy": dense_acc,
            "bound": "Theorem 1 expectation, rank model sampled, d0 = S, realized per-layer densities",
            "wall_seconds": round(wall, 1), "quick": args.quick}
    (out / "results.json").write_text(json.dumps({"meta": meta, "rows": rows, "counts": detail}, indent=2))
    with open(out / "results.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    plot(rows, out / "regions.png")
    print_table(rows)
    print(f"wrote {out / 'results.json'}, {out / 'results.csv'}, {out / 'regions.png'}; wall time {wall:.1f} s")
    return 0


def print_table(rows) -> None:
    head = f"{'density':>7} {'fc1/fc2':>13} {'test acc':>8} {'S':>2} {'regions mean':>12} {'min-max':>9} " \
           f"{'incompl.':>8} {'bound (Thm 1)':>14} {'dense bound':>12} {'s/count':>7}"
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r['density']:>7g} {r['fc1_density']:>6.3f}/{r['fc2_density']:<6.3f} {r['test_accuracy']:>8.4f} "
              f"{r['S']:>2} {r['mean_regions']:>12.1f} {str(r['min_regions']) + '-' + str(r['max_regions']):>9} "
              f"{r['incomplete']:>8} {fmt_bound(r['log2_bound']):>14} {fmt_bound(r['dense_log2_bound']):>12} "
              f"{r['mean_seconds']:>7.2f}")


def plot(rows, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dims = sorted({r["S"] for r in rows})
    densities = sorted({r["density"] for r in rows}, reverse=True)
    colors = dict(zip(dims, plt.rcParams["axes.prop_cycle"].by_key()["color"]))
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    # Figure 1 style: accuracy and region counts (relative to dense) fall together with density
    acc = [next(r["test_accuracy"] for r in rows if r["density"] == d) for d in densities]
    ax1.plot(densities, acc, "k-o", label="test accuracy")
    ax1.set_xlabel("density (kept fraction of hidden weights)")
    ax1.set_ylabel("test accuracy")
    ax1.invert_xaxis()
    twin = ax1.twinx()
    for s in dims:
        sel = [r for r in rows if r["S"] == s]
        base = next(r["mean_regions"] for r in sel if r["density"] == max(densities))
        twin.plot([r["density"] for r in sel], [r["mean_regions"] / base for r in sel], "--s", color=colors[s],
                  label=f"regions / dense, S={s}")
    twin.set_ylabel("mean regions relative to the dense net")
    lines = ax1.get_legend_handles_labels()
    more = twin.get_legend_handles_labels()
    ax1.legend(lines[0] + more[0], lines[1] + more[1], fontsize=8, loc="lower left")
    ax1.set_title("accuracy and linear regions vs density")
    # Figure 2 style: counted regions next to the Theorem 1 bound with d0 = S
    for s in dims:
        sel = [r for r in rows if r["S"] == s]
        xs = [r["density"] for r in sel]
        ax2.plot(xs, [r["mean_regions"] for r in sel], "-o", color=colors[s], label=f"counted, S={s}")
        low = [r for r in sel if r["incomplete"]]
        if low:
            ax2.plot([r["density"] for r in low], [r["mean_regions"] for r in low], "o", mfc="white",
                     color=colors[s], label=f"includes lower bounds, S={s}")
        ax2.plot(xs, [2 ** r["log2_bound"] for r in sel], ":", color=colors[s], label=f"bound (Thm 1), d0={s}")
    for ax in (ax1, ax2):
        ax.set_xscale("log")
        ax.set_xticks(densities, [f"{d:g}" for d in densities], fontsize=7)
        ax.minorticks_off()
    ax2.set_yscale("log")
    ax2.invert_xaxis()
    ax2.set_xlabel("density (kept fraction of hidden weights)")
    ax2.set_ylabel("linear regions on the subspace")
    ax2.legend(fontsize=7, ncol=2, loc="upper right", bbox_to_anchor=(1.0, 0.9))
    ax2.set_title("mean counted regions vs expected bound")
    fig.suptitle("64-20-20-10 MLP on sklearn digits, magnitude pruning (uniform per layer)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# -------------------------------------------------------------------------------------- timing


def run_timing(args) -> int:
    """How long counting takes for a 784-20-20-10 MLP (PyTorch's default initialization) on
    subspaces spanned by S+1 points uniform in [0, 1]^784."""
    from examples.models import mlp
    from planner.experiments.regions import count_regions

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model = mlp((784, 20, 20, 10), args.seed)
    rng = np.random.default_rng(args.seed)
    results = []
    print(f"784-20-20-10, default init (seed {args.seed}), points uniform in [0,1]^784, "
          f"time limit {args.time_limit:g} s per count")
    print(f"{'S':>2} {'method':>6} {'subspaces':>9} {'median s':>9} {'min s':>7} {'max s':>7} "
          f"{'median regions':>14} {'min-max':>9} {'incompl.':>8}")
    for s in (1, 2, 4):
        runs = []
        for _ in range(args.timing_subspaces):
            pts = rng.random((s + 1, 784))
            r = count_regions(model, pts, time_limit=args.time_limit, seed=args.seed)
            runs.append(r)
        secs = np.array([r.seconds for r in runs])
        regs = np.array([r.regions for r in runs])
        inc = sum(not r.complete for r in runs)
        results.append({"S": s, "method": runs[0].method, "seconds": secs.round(4).tolist(),
                        "regions": regs.tolist(), "incomplete": inc})
        print(f"{s:>2} {runs[0].method:>6} {len(runs):>9} {np.median(secs):>9.3f} {secs.min():>7.3f} "
              f"{secs.max():>7.3f} {np.median(regs):>14.0f} {str(regs.min()) + '-' + str(regs.max()):>9} {inc:>8}",
              flush=True)
    (out / "timing.json").write_text(json.dumps({"architecture": [784, 20, 20, 10], "seed": args.seed,
                                                 "time_limit": args.time_limit, "rows": results}, indent=2))
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny settings (seconds), for the tests")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="results/regions")
    parser.add_argument("--densities", default=None, help="comma list (default 1,0.5,0.3,0.2,0.1,0.05,0.02,0.01)")
    parser.add_argument("--subspaces", default=None, help="S:count list (default 1:50,2:30,4:20)")
    parser.add_argument("--time-limit", type=float, default=None, help="seconds per count (default 30)")
    parser.add_argument("--epochs", type=int, default=None, help="full-batch Adam steps of the dense net (300)")
    parser.add_argument("--finetune", type=int, default=None, help="Adam steps after pruning, masks held (300)")
    parser.add_argument("--timing", action="store_true", help="time counts on a 784-20-20-10 MLP instead")
    parser.add_argument("--timing-subspaces", type=int, default=5)
    args = parser.parse_args(argv)
    quick = args.quick
    args.densities = [float(v) for v in (args.densities or ("1,0.2" if quick else "1,0.5,0.3,0.2,0.1,0.05,0.02,0.01")).split(",")]
    args.subspaces = args.subspaces or ("1:3,2:2" if quick else "1:50,2:30,4:20")
    args.time_limit = args.time_limit or (10.0 if quick else 30.0)
    args.epochs = args.epochs if args.epochs is not None else (60 if quick else 300)
    args.finetune = args.finetune if args.finetune is not None else (30 if quick else 300)
    if any(not 0 < d <= 1 for d in args.densities) or not math.isfinite(args.time_limit) or args.time_limit <= 0:
        parser.error("densities must be in (0, 1] and the time limit positive")
    return run_timing(args) if args.timing else run_experiment(args)


if __name__ == "__main__":
    sys.exit(main())
