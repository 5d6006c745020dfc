"""Edge pruning against node pruning at equal weight counts, on scikit-learn's digits (seed 000,
Acharyya et al., UAI 2021, claims edge-pruned networks generalize better at equal parameters).

For each seed, a 64-100-100-10 ReLU MLP is trained (SGD, lr 0.1, batch 128, 64 epochs: the
digits defaults of ``sparsity-planner compare``). For each density D of *all* its weights:

* node methods keep the widths of the neuron plan (``plan --granularity neurons``, the widths
  that maximize the dense bound of the narrower network), and choose the neurons by ``dpp``
  (k-DPP sample seeded by the seed, with reweighting), ``greedy-forward`` (with reweighting),
  ``activation-norm`` and ``random`` (no reweighting), on the 1347 training inputs; ``dpp@uniform``
  is dpp on the widths of the uniform neuron plan (the same fraction of every hidden layer);
* edge methods keep exactly as many weights (the output layer dense, as the planner's weight
  plans do; the hidden layers get the rest): ``random-edge`` and ``magnitude-edge`` on the
  uniform plan, ``lr-bound-edge`` the bound-guided plan with magnitude pruning;

then each is evaluated as pruned and after fine-tuning (64 epochs, masks held for edges, the
shrunk network for nodes). Biases are not counted (node-pruned networks also drop the removed
neurons' biases, so they hold fewer parameters in all).

    python examples/node_vs_edge.py [--seeds 4] [--densities 0.5,0.25,0.15,0.1] [--out docs/results]

writes node_vs_edge.csv, node_vs_edge.md (the table) and node_vs_edge.png into --out.
"""

from __future__ import annotations

import argparse
import copy
import csv
import io
import math
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

ARCH = (64, 100, 100, 10)
EDGE = ("random-edge", "magnitude-edge", "lr-bound-edge")
NODE = ("dpp", "greedy-forward", "activation-norm", "random-node", "dpp@uniform")
METHODS = EDGE + NODE


def run(seeds, densities, epochs=64, finetune_epochs=64, lr=0.1, batch_size=128, log=print):
    import torch

    import planner
    from planner.allocation.baselines import baseline_plan
    from planner.allocation.nodes import plan_nodes
    from planner.experiments.data import load_dataset
    from planner.experiments.training import evaluate, make_mlp, train
    from planner.pruning.masks import apply_plan, finalize
    from planner.pruning.nodes import prune_nodes, shrink

    torch.set_num_threads(1)
    X_tr, y_tr, X_te, y_te = (torch.as_tensor(a) for a in load_dataset("digits"))
    arch = ",".join(map(str, ARCH))
    plans = {}
    for density in densities:
        node = plan_nodes(arch, density=density)
        uniform = plan_nodes(arch, density=density, strategy="uniform")
        hidden_keep = node.kept - ARCH[-2] * ARCH[-1]  # the edge plans keep the output layer dense
        if hidden_keep < 1:
            raise SystemExit(f"density {density}: the neuron plan keeps {node.kept} weights, fewer than the "
                             f"{ARCH[-2] * ARCH[-1]} of the dense output layer the edge plans keep")
        plans[density] = {
            "node": node, "node-uniform": uniform,
            "uniform-edge": baseline_plan("uniform", planner.Architecture.parse(arch), keep=hidden_keep),
            "lr-bound-edge": planner.plan(arch, keep=hidden_keep),
        }
        log(f"density {density}: node widths {[layer.keep_neurons for layer in node.layers[:-1]]} "
            f"({node.kept} weights), uniform widths {[layer.keep_neurons for layer in uniform.layers[:-1]]} "
            f"({uniform.kept}), edge plans keep {hidden_keep} hidden + {ARCH[-2] * ARCH[-1]} output weights")
    rows = []
    for seed in seeds:
        t0 = time.perf_counter()
        dense = make_mlp(ARCH, seed)
        train(dense, X_tr, y_tr, epochs=epochs, lr=lr, batch_size=batch_size,
              generator=torch.Generator().manual_seed(seed << 4))
        dense_acc = evaluate(dense, X_te, y_te, 10)[0]
        for density in densities:
            p = plans[density]
            for method in METHODS:
                model = copy.deepcopy(dense)
                if method in EDGE:
                    plan = p["lr-bound-edge"] if method == "lr-bound-edge" else p["uniform-edge"]
                    criterion = "random" if method == "random-edge" else "magnitude"
                    apply_plan(model, plan, criterion=criterion, generator=torch.Generator().manual_seed(seed))
                    kept = sum(int(model.get_submodule(layer.name).weight_mask.sum()) if not layer.frozen
                               else layer.size for layer in plan.layers)
                else:
                    plan = p["node-uniform"] if method == "dpp@uniform" else p["node"]
                    criterion = {"random-node": "random", "dpp@uniform": "dpp"}.get(method, method)
                    report = prune_nodes(model, plan, criterion, calibration=X_tr, seed=seed)
                    shrink(model, report.keep_sets())
                    kept = report.realized
                pruned_acc = evaluate(model, X_te, y_te, 10)[0]
                train(model, X_tr, y_tr, epochs=finetune_epochs, lr=lr, batch_size=batch_size,
                      generator=torch.Generator().manual_seed((seed << 4) | 1))
                if method in EDGE:
                    finalize(model)
                rows.append({"seed": seed, "density": density, "method": method, "kind": "edge" if method in EDGE
                             else "node", "weights": kept, "dense_accuracy": dense_acc,
                             "accuracy_pruned": pruned_acc, "accuracy_finetuned": evaluate(model, X_te, y_te, 10)[0]})
        log(f"seed {seed}: dense {dense_acc:.4f}, {time.perf_counter() - t0:.0f} s")
    return rows, plans


def summarize(rows, densities):
    def stats(values):
        m = sum(values) / len(values)
        se = math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1) / len(values)) if len(values) > 1 else 0
        return m, se

    lines = ["| density | method | weights | pruned (no fine-tuning) | fine-tuned |", "| ---: | --- | ---: | ---: | ---: |"]
    table = {}
    for density in densities:
        for method in METHODS:
            sel = [r for r in rows if r["density"] == density and r["method"] == method]
            pm, pse = stats([r["accuracy_pruned"] for r in sel])
            fm, fse = stats([r["accuracy_finetuned"] for r in sel])
            table[density, method] = (pm, pse, fm, fse)
            lines.append(f"| {density:g} | {method} | {sel[0]['weights']} | {100 * pm:.1f} ± {100 * pse:.1f} | "
                         f"{100 * fm:.1f} ± {100 * fse:.1f} |")
    dense = stats([r["dense_accuracy"] for r in rows if r["method"] == METHODS[0] and r["density"] == densities[0]])
    lines.append(f"\nDense 64-100-100-10 (17400 weights): {100 * dense[0]:.1f} ± {100 * dense[1]:.1f}. "
                 "Accuracy in %, mean ± standard error over seeds.")
    return "\n".join(lines) + "\n", table


def plot(table, densities, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=False)
    for ax, which, title in ((axes[0], 0, "pruned, no fine-tuning"), (axes[1], 2, "after fine-tuning")):
        for method in METHODS:
            ys = [100 * table[d, method][which] for d in densities]
            es = [100 * table[d, method][which + 1] for d in densities]
            ax.errorbar(densities, ys, yerr=es, marker="o" if method in EDGE else "s",
                        linestyle="-" if method in EDGE else "--", label=method, capsize=2)
        ax.set_xscale("log")
        ax.set_xlabel("kept fraction of all weights")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=8)
    fig.suptitle("digits 64-100-100-10: edge (solid) vs node (dashed) pruning at equal weight counts")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, metadata={"Software": None})
    plt.close(fig)
    from planner.fileio import atomic_write_bytes

    atomic_write_bytes(path, buffer.getvalue())


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--densities", default="0.5,0.25,0.15,0.1")
    parser.add_argument("--epochs", type=int, default=64)
    parser.add_argument("--finetune-epochs", type=int, default=64)
    parser.add_argument("--out", default="docs/results")
    args = parser.parse_args(argv)
    from planner.fileio import atomic_write_text, check_writable_dir

    out = check_writable_dir(args.out)
    densities = [float(d) for d in args.densities.split(",")]
    started = time.perf_counter()
    rows, _ = run(range(args.seeds), densities, args.epochs, args.finetune_epochs)
    text, table = summarize(rows, densities)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(out / "node_vs_edge.csv", buffer.getvalue())
    atomic_write_text(out / "node_vs_edge.md", text)
    plot(table, densities, out / "node_vs_edge.png")
    print(text)
    print(f"{time.perf_counter() - started:.0f} s; wrote node_vs_edge.csv, .md, .png to {out}")


if __name__ == "__main__":
    main()
