"""Does elimination-compensation lower the output error? Mean squared output change against the
dense model, same masks, with and without the bias correction, on the calibration batch and on
held-out inputs; an untrained 64-48-32-10 MLP (Gaussian inputs) and one trained on digits.

Run from the repository root:
    python benchmarks/compensation.py [--seeds 3]
"""

from __future__ import annotations

import argparse
import copy
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from machine import machine_line  # noqa: E402  benchmarks/machine.py


def main() -> None:
    import torch
    from torch.nn.utils import prune

    from examples import models
    from planner.allocation.planfile import Plan, PlanLayer
    from planner.experiments.data import load_dataset
    from planner.experiments.training import train
    from planner.pruning.masks import apply_plan, compute_masks

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"machine: {machine_line(f'torch {torch.__version__}')}")
    X_tr, y_tr, X_te, _ = load_dataset("digits")
    names = ["fc1", "fc2", "fc3"]

    def error(model, x, ref):
        with torch.no_grad():
            return float(((model(x) - ref) ** 2).mean())

    print(f"{'network':<10} {'density':>7} {'calib comp':>11} {'calib mask':>11} {'held comp':>10} "
          f"{'held mask':>10}  (mean over {args.seeds} seeds)")
    for kind in ("untrained", "digits"):
        for density in (0.1, 0.3, 0.5, 0.7, 0.9):
            sums = [0.0] * 4
            for seed in range(args.seeds):
                model = models.mlp((64, 48, 32, 10), seed=seed)
                if kind == "digits":
                    train(model, torch.as_tensor(X_tr, dtype=torch.float32), torch.as_tensor(y_tr), epochs=30,
                          lr=0.1, batch_size=128, generator=torch.Generator().manual_seed(seed))
                    pool = torch.as_tensor(X_te, dtype=torch.float32)
                    calib, held = pool[:256], pool[256:]
                else:
                    g = torch.Generator().manual_seed(100 + seed)
                    calib, held = torch.randn(256, 64, generator=g), torch.randn(256, 64, generator=g)
                plan = Plan({}, "hand", {}, [PlanLayer(n, m.weight.shape[0], m.weight.shape[1],
                                                       round(density * m.weight.numel()))
                                             for n, m in ((n, model.get_submodule(n)) for n in names)])
                ref_c, ref_h = model(calib).detach(), model(held).detach()
                plain = copy.deepcopy(model)
                masks = compute_masks(model, plan, "elimination-compensation", calibration=calib)
                apply_plan(model, plan, "elimination-compensation", calibration=calib)
                for n in names:
                    prune.custom_from_mask(plain.get_submodule(n), "weight", masks[n].float())
                for i, value in enumerate((error(model, calib, ref_c), error(plain, calib, ref_c),
                                           error(model, held, ref_h), error(plain, held, ref_h))):
                    sums[i] += value / args.seeds
            print(f"{kind:<10} {density:>7g} {sums[0]:>11.5f} {sums[1]:>11.5f} {sums[2]:>10.5f} {sums[3]:>10.5f}")


if __name__ == "__main__":
    main()
