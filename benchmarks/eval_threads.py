"""One sensitivity evaluation (digits_mlp, digits_cnn on digits' 1347 training images) with 1 and
2 torch threads: why ``sensitivity --threads`` defaults to 1.

    python benchmarks/eval_threads.py
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # examples.models

from machine import machine_line  # noqa: E402


def main() -> None:
    import numpy as np
    import torch

    import examples.models as models
    from planner.experiments.data import load_dataset
    from planner.pruning.sensitivity import _evaluate

    X, y, _, _ = load_dataset("digits")
    Xt, yt = torch.from_numpy(np.asarray(X, dtype=np.float32)), torch.from_numpy(np.asarray(y, dtype=np.int64))
    print(machine_line())
    print(f"load average {os.getloadavg()[0]:.2f}")
    print(f"{'model':<11} {'threads':>7} {'ms per evaluation':>18}")
    for threads in (1, 2):
        torch.set_num_threads(threads)
        for name in ("digits_mlp", "digits_cnn"):
            model = getattr(models, name)().eval()
            with torch.no_grad():
                _evaluate(model, Xt, yt)
                t0 = time.perf_counter()
                for _ in range(20):
                    _evaluate(model, Xt, yt)
            print(f"{name:<11} {threads:>7} {(time.perf_counter() - t0) / 20 * 1000:>18.2f}")


if __name__ == "__main__":
    main()
