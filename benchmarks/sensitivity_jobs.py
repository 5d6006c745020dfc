"""Speed of ``sensitivity --jobs N`` (local worker processes) and of the job size ``--chunk``.

One measurement of ``examples.models:digits_cnn`` (or ``--model digits_mlp``) (seeded initial weights) on digits' training
split (1347 examples), every layer, down to density 2^-10, run once per (steps, N, chunk)
through the library with the disk cache off, then again into a fresh work directory (every
job's result written atomically, with fsync: the cost of resumability). It prints the jobs,
the wall times, the speed-up over N = 1 of the same steps and chunk (without the work
directory), whether every table equals the first one of those steps,
the bytes of what every worker receives once (model and calibration set, pickled), and the load
average before the run (the machine may be shared).

    python benchmarks/sensitivity_jobs.py [--model digits_cnn|digits_mlp] [--jobs 1,2] [--chunks 8,1] [--steps 4,16]
"""

from __future__ import annotations

import argparse
import os
import pickle
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # examples.models

from machine import machine_line  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", default="1,2", help="comma list of N")
    ap.add_argument("--chunks", default="8,1", help="comma list of keep-counts per job")
    ap.add_argument("--steps", default="4,16", help="comma list of measured points per halving")
    ap.add_argument("--model", default="digits_cnn", choices=("digits_cnn", "digits_mlp"))
    args = ap.parse_args()

    import examples.models as models
    from planner.allocation.sensitivity import measured_keeps
    from planner.experiments.data import load_dataset
    from planner.pruning.model import model_layers
    from planner.pruning.sensitivity import _model_payload, measure_sensitivity

    X, y, _, _ = load_dataset("digits")
    model = getattr(models, args.model)()
    shape = (1, 8, 8) if args.model == "digits_cnn" else None
    spec = f"examples.models:{args.model}"
    layers = model_layers(model, shape or (64,), prune_output=True).layers
    payload = len(pickle.dumps({"X": X.astype("float32"), "y": y,
                                "model": _model_payload(model, (spec, None))}))
    print(machine_line())
    print(f"{args.model} on {len(X)} digits examples, layers {[w.name for w in layers]}; each worker receives "
          f"{payload / 1e3:.0f} kB once")
    print(f"{'steps':>5} {'points':>6} {'chunk':>5} {'jobs':>5} {'--jobs':>6} {'wall s':>7} {'speed-up':>8} "
          f"{'work-dir s':>10}  {'tables':<9} load before")
    for steps in [int(v) for v in args.steps.split(",")]:
        points = sum(len(measured_keeps(w.size, steps, 2.0 ** -10)) for w in layers)
        reference = None
        for chunk in [int(v) for v in args.chunks.split(",")]:
            n_jobs = 1 + sum(-(-len(measured_keeps(w.size, steps, 2.0 ** -10)) // chunk) for w in layers)
            base = None
            for n in [int(v) for v in args.jobs.split(",")]:
                before = os.getloadavg()[0]
                walls, tables = [], []
                for work_dir in (None, tempfile.mkdtemp(prefix="sens-jobs-")):
                    t0 = time.perf_counter()
                    tables.append(measure_sensitivity(model, X, y, steps=steps, input_shape=shape, n_jobs=n,
                                                      chunk=chunk, work_dir=work_dir,
                                                      factory=(spec, None)).to_json())
                    walls.append(time.perf_counter() - t0)
                base = base or walls[0]
                reference = reference or tables[0]
                same = "same" if all(t == reference for t in tables) else "DIFFERENT"
                print(f"{steps:>5} {points:>6} {chunk:>5} {n_jobs:>5} {n:>6} {walls[0]:>7.1f} {base / walls[0]:>7.2f}x "
                      f"{walls[1]:>10.1f}  {same:<9} {before:.2f}", flush=True)


if __name__ == "__main__":
    main()
