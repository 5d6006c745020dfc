"""What does a structured pattern cost in accuracy? On scikit-learn's digits, a 64-100-100-10 ReLU
MLP is trained dense, then its two hidden layers are pruned to the same density by four
patterns, fine-tuned with the masks fixed, and tested (the output layer stays dense):

  unstructured  the largest |w| of each layer (apply --criterion magnitude)
  bcr           block column-row masks, --block RxC, the same count (apply --criterion bcr)
  rows          whole rows (output neurons) of largest L2 norm, round(density * rows) of them
  nm            N:M with N/M = density (2:4 at 0.5, 1:4 at 0.25, 1:8 at 0.125; apply --criterion nm)

Every layer keeps the same density under every pattern (a uniform plan, not a bound-guided one),
so the table compares patterns only. Training and fine-tuning reuse planner.experiments
(data split, MLP, SGD); the same seed gives the same dense model and the same batches for every
pattern (a paired comparison).

Run from the repository root:
    python examples/structured_accuracy.py [--seeds 8] [--epochs 64] [--block 8x8]
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import statistics
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

PATTERNS = {0.5: "2:4", 0.25: "1:4", 0.125: "1:8"}
METHODS = ("unstructured", "bcr", "rows", "nm")


def row_masks(model, plan):
    """Whole rows of largest L2 norm, round(density * rows) per layer."""
    import torch

    masks = {}
    for layer in plan.layers:
        if layer.frozen:
            continue
        w = model.get_submodule(layer.name).weight.detach()
        keep_rows = round(layer.keep / layer.cols)
        rows = torch.zeros(w.shape[0], dtype=torch.bool)
        rows[torch.argsort(-(w * w).sum(dim=1), stable=True)[:keep_rows]] = True
        masks[layer.name] = rows[:, None].expand_as(w).clone()
    return masks


def main() -> None:
    import torch
    from torch.nn.utils import prune

    from planner.allocation.planfile import Plan, PlanLayer
    from planner.experiments.data import load_dataset
    from planner.experiments.training import evaluate, make_mlp, train
    from planner.pruning.masks import apply_plan, finalize

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=64, help="dense training and fine-tuning epochs each")
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--block", default="8x8")
    args = parser.parse_args()
    torch.set_num_threads(1)
    X_tr, y_tr, X_te, y_te = (torch.as_tensor(a) for a in load_dataset("digits"))
    sizes = (64, 100, 100, 10)
    acc = {(m, d): [] for d in PATTERNS for m in METHODS}
    kept = {}
    dense_acc = []
    for seed in range(args.seeds):
        dense = make_mlp(sizes, seed)
        train(dense, X_tr, y_tr, epochs=args.epochs, lr=args.lr, batch_size=128,
              generator=torch.Generator().manual_seed(seed << 4))
        dense_acc.append(evaluate(dense, X_te, y_te, 10)[0])
        for density, pattern in PATTERNS.items():
            plan = Plan({}, "uniform", {}, [
                PlanLayer(f"fc{i + 1}", sizes[i + 1], sizes[i], round(density * sizes[i] * sizes[i + 1]),
                          frozen=i == len(sizes) - 2) for i in range(len(sizes) - 1)])
            for method in METHODS:
                model = copy.deepcopy(dense)
                if method == "rows":
                    for name, mask in row_masks(model, plan).items():
                        prune.custom_from_mask(model.get_submodule(name), "weight", mask.float())
                elif method == "bcr":
                    apply_plan(model, plan, "bcr", options={"block": args.block})
                elif method == "nm":
                    apply_plan(model, plan, "nm", options={"pattern": pattern})
                else:
                    apply_plan(model, plan, "magnitude")
                kept[(method, density)] = sum(int(model.get_submodule(layer.name).weight_mask.sum())
                                              for layer in plan.layers if not layer.frozen)
                train(model, X_tr, y_tr, epochs=args.epochs, lr=args.lr, batch_size=128,
                      generator=torch.Generator().manual_seed(seed << 4 | 1))
                finalize(model)
                acc[(method, density)].append(evaluate(model, X_te, y_te, 10)[0])

    def cell(values):
        mean = statistics.fmean(values) * 100
        sem = statistics.stdev(values) * 100 / math.sqrt(len(values)) if len(values) > 1 else 0.0
        return f"{mean:.2f} +- {sem:.2f}"

    prunable = sum(sizes[i] * sizes[i + 1] for i in range(len(sizes) - 2))
    print(f"digits 64-100-100-10, {args.seeds} seeds, {args.epochs} + {args.epochs} epochs, lr {args.lr}, "
          f"bcr block {args.block}; test accuracy % (mean +- s.e.m.); dense {cell(dense_acc)}")
    header = "| pattern | " + " | ".join(f"density {d:g}" for d in PATTERNS) + " |"
    print(header)
    print("|" + " --- |" * (len(PATTERNS) + 1))
    for method in METHODS:
        label = f"nm ({', '.join(PATTERNS.values())})" if method == "nm" else (
            f"bcr {args.block}" if method == "bcr" else method)
        print(f"| {label} | " + " | ".join(cell(acc[(method, d)]) for d in PATTERNS) + " |")
    print("| kept density (hidden layers) | " + " | ".join(
        "/".join(f"{kept[(m, d)] / prunable:.3f}" for m in METHODS) for d in PATTERNS) + " |")


if __name__ == "__main__":
    main()
