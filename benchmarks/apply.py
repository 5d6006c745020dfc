"""Time and memory of turning a plan into masks on a 25M-parameter MLP, on the CPU.

    python benchmarks/apply.py            # 1024-4096-4096-1024 (25.2M weights) at 5%
    python benchmarks/apply.py --quick    # 784-300-100-10

Peak memory is the process's resident high-water mark (VmHWM, reset through
/proc/self/clear_refs before each phase) minus the resident size before it, as a multiple of
the model's size in bytes. Also reports elimination-compensation's statistics cost per 1k
calibration samples on LeNet-300-100.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

from machine import machine_line  # benchmarks/machine.py

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))


def _status(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return 0


def _reset_peak() -> None:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        pass


def machine() -> str:
    import torch

    return machine_line(f"torch {torch.__version__}, {torch.get_num_threads()} threads")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--density", type=float, default=0.05)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    import torch

    import planner
    from examples.models import mlp
    from planner.pruning.masks import apply_plan, compute_masks, finalize
    from planner.pruning.model import model_layers

    sizes = (784, 300, 100, 10) if args.quick else (1024, 4096, 4096, 1024)
    print(f"machine: {machine()}")
    model = mlp(sizes, seed=0)
    n_weights = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    model_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    found = model_layers(model, prune_output=True)
    plan = planner.plan(layers=found.layers, density=args.density, rank_model="analytic",
                        architecture_info={"input_size": found.input_size})
    print(f"model {'-'.join(map(str, sizes))}: {n_weights / 1e6:.1f}M weights, {model_bytes / 2**20:.0f} MiB; "
          f"plan keeps {plan.kept} ({plan.global_density:.3f})\n")

    rows = []
    for criterion in ("magnitude", "random"):
        times, peaks = [], []
        for _ in range(args.repeats):
            gen = torch.Generator().manual_seed(0)
            before = _status("VmRSS")
            _reset_peak()
            start = time.perf_counter()
            masks = compute_masks(model, plan, criterion, generator=gen)
            times.append(time.perf_counter() - start)
            peaks.append((_status("VmHWM") - before) / model_bytes)
            del masks
        rows.append((f"compute_masks ({criterion})", statistics.median(times), max(peaks)))
    work = mlp(sizes, seed=0)
    before = _status("VmRSS")
    _reset_peak()
    start = time.perf_counter()
    apply_plan(work, plan)
    finalize(work)
    rows.append(("apply_plan + finalize (magnitude)", time.perf_counter() - start,
                 (_status("VmHWM") - before) / model_bytes))
    print(f"{'step':<36} {'seconds':>8} {'peak extra memory / model size':>32}")
    for name, seconds, peak in rows:
        print(f"{name:<36} {seconds:>8.2f} {peak:>32.2f}")

    lenet = mlp((784, 300, 100, 10), seed=0)
    from planner.pruning.compensation import compensation_statistics

    x = torch.rand(1000, 784)
    names = ["fc1", "fc2", "fc3"]
    compensation_statistics(lenet, names, x[:64])  # warm-up
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        compensation_statistics(lenet, names, x)
        times.append(time.perf_counter() - start)
    print(f"\nelimination-compensation statistics, LeNet-300-100, 1000 calibration samples: "
          f"{statistics.median(times):.2f} s (median of {args.repeats})")


if __name__ == "__main__":
    main()
