"""Timing of the expected linear-region bound (docs/theory.md sections 1-2).

For each architecture (input size, hidden widths; the output layer does not enter the bound) and
density, this measures

* the time to build the rank distributions of all hidden layers with each rank model
  (``sampled``, ``analytic``, ``svd``), cold: every measurement gets a fresh in-memory
  ``RankCache(disk=False)``; ``svd`` is skipped for a layer whose single sample takes more than
  ``--svd-sample-budget`` seconds or whose estimated total exceeds ``--svd-layer-budget``;
* the number of samples drawn and the support size (kmax - kmin + 1) of every layer;
* the time of one evaluation of ``planner.core.bound.log2_bound`` once the distributions exist
  (median over many timed repeats);

then the two single-layer targets and the bound-evaluation target, with pass/fail.

Run from the repository root:
    python benchmarks/bound.py [--quick] [--models sampled,analytic,svd] [--blas-threads N]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import statistics
import subprocess
import sys
import time
import timeit
from pathlib import Path

THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def _blas_threads_from_argv(argv: list[str]) -> str | None:
    """``--blas-threads N`` must act before numpy is imported, so it is read here first."""
    for i, arg in enumerate(argv):
        if arg == "--blas-threads" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--blas-threads="):
            return arg.split("=", 1)[1]
    return None


_BLAS_THREADS = _blas_threads_from_argv(sys.argv[1:])
if _BLAS_THREADS is not None and _BLAS_THREADS.isdigit() and int(_BLAS_THREADS) > 0:
    for _var in THREAD_VARS:
        os.environ[_var] = _BLAS_THREADS

from machine import cpu_model  # noqa: E402  benchmarks/machine.py

import numpy as np  # noqa: E402  (after the thread variables are set)
import scipy  # noqa: E402

try:
    import planner
except ImportError:  # run from a checkout without installing: use the repository's package
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    import planner

from planner.core.bound import log2_bound
from planner.core.rank import RankCache, _numerical_rank_sample, rank_distribution

ARCHS = [(784, 100, 100), (784, 400, 400), (3072, 400, 400), (400, 120, 84), (1024, 4096, 4096)]
QUICK_ARCHS = [(784, 100, 100), (400, 120, 84)]
DENSITIES = (0.1, 0.01, 0.001)
MODELS = ("sampled", "analytic", "svd")

#: Single-layer targets: (rows, cols, p, seconds allowed for the sampled distribution).
LAYER_TARGETS = [(400, 784, 0.003, 1.0), (4096, 4096, 0.001, 20.0)]
#: Bound-evaluation target: this architecture, every density, once the distributions exist.
EVAL_TARGET_ARCH = (1024, 4096, 4096)
EVAL_TARGET_SECONDS = 0.010

#: svd probes: shapes whose short side exceeds this are first timed on a copy scaled down to it,
#: and the dense-SVD cost (short^2 * long) is extrapolated before a full-size sample is tried.
SVD_PROBE_SIDE = 512


# --------------------------------------------------------------------------------- machine


def git_state() -> str:
    """The commit, and which files of the planner package differ from it (the benchmark times
    the working tree, not the commit)."""
    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
            capture_output=True, text=True, timeout=10,
        ).stdout.strip()
        diff = subprocess.run(
            ["git", "-C", str(root), "diff", "HEAD", "--", "planner"],
            capture_output=True, timeout=10,
        ).stdout
        changed = subprocess.run(
            ["git", "-C", str(root), "diff", "HEAD", "--name-only", "--", "planner"],
            capture_output=True, text=True, timeout=10,
        ).stdout.split()
    except (OSError, subprocess.SubprocessError):
        return "commit unknown"
    if not head:
        return "commit unknown"
    if not changed:
        return f"commit {head}, no uncommitted changes to tracked planner/ files"
    digest = hashlib.sha1(diff).hexdigest()[:10]
    return f"commit {head} + uncommitted changes to {', '.join(changed)} (diff sha1 {digest})"


def load_average() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg()) + " (1, 5, 15 min)"
    except OSError:
        return "unknown"


def machine_header() -> list[str]:
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    return [
        f"platform  {platform.platform()}",
        f"cpu       {cpu_model()}",
        f"cores     {os.cpu_count()} logical ({usable} usable by this process)",
        f"python    {platform.python_version()} ({platform.python_implementation()})",
        f"numpy     {np.__version__}",
        f"scipy     {scipy.__version__}",
        f"planner   {planner.__version__} ({git_state()})",
        "threads   " + (" ".join(f"{v}={os.environ[v]}" for v in THREAD_VARS if v in os.environ)
                        or "BLAS defaults (no *_NUM_THREADS set)"),
        f"load avg  {load_average()} at start",
    ]


# --------------------------------------------------------------------------------- timing


def arch_name(sizes) -> str:
    return "-".join(map(str, sizes))


def layer_shapes(sizes) -> list[tuple[int, int]]:
    """(rows, cols) = (out, in) of every hidden layer."""
    return [(sizes[i + 1], sizes[i]) for i in range(len(sizes) - 1)]


class OverBudget(Exception):
    pass


def build_one(rows: int, cols: int, p: float, model: str, seed: int, budget: float | None = None):
    """One cold distribution: (distribution, seconds).

    With ``budget``, a sampled model is abandoned (:class:`OverBudget`) after a batch once the
    elapsed time, or the elapsed time projected onto the samples still planned, exceeds it.
    """
    cache = RankCache(disk=False)
    t0 = time.perf_counter()
    progress = None
    if budget is not None:
        def progress(done: int, planned: int) -> None:
            elapsed = time.perf_counter() - t0
            projected = elapsed / done * planned
            if elapsed > budget or projected > budget:
                raise OverBudget(
                    f"{rows}x{cols}: abandoned after {elapsed:.0f} s and {done} samples, "
                    f"{planned} planned (~{projected:.0f} s) > {budget:g} s"
                )
    dist = rank_distribution(rows, cols, p, model, seed=seed, cache=cache, progress=progress)
    return dist, time.perf_counter() - t0


def time_eval(hidden, dists, d0, min_repeat_seconds: float = 0.02, repeats: int = 25) -> float:
    """Median seconds per log2_bound call: ``repeats`` timings of ``number`` calls each, with
    ``number`` chosen so one timing takes at least ``min_repeat_seconds``."""
    timer = timeit.Timer(lambda: log2_bound(hidden, dists, d0))
    number = 1
    while True:
        if timer.timeit(number) >= min_repeat_seconds or number >= 1 << 20:
            break
        number *= 2
    return statistics.median(t / number for t in timer.repeat(repeat=repeats, number=number))


class SvdBudget:
    """Decides, per layer, whether the svd model may run, from a timed single sample."""

    def __init__(self, sample_budget: float, layer_budget: float, seed: int):
        self.sample_budget, self.layer_budget, self.seed = sample_budget, layer_budget, seed
        self.per_sample: dict[tuple[int, int], tuple[float, str]] = {}
        self.samples: dict[tuple[int, int, float], int] = {}

    def _probe(self, short: int, long: int, p: float) -> tuple[float, str]:
        """Seconds of one svd sample of this shape, and how the figure was obtained."""
        key = (short, long)
        if key in self.per_sample:
            return self.per_sample[key]
        rng = np.random.default_rng(12345)
        if short > SVD_PROBE_SIDE:
            f = SVD_PROBE_SIDE / short
            ps, pl = SVD_PROBE_SIDE, max(1, round(long * f))
            t0 = time.perf_counter()
            _numerical_rank_sample(ps, pl, p, rng)
            t = (time.perf_counter() - t0) * (short**2 * long) / (ps**2 * pl)
            if t > 2 * self.sample_budget:
                self.per_sample[key] = (t, f"extrapolated from a {ps}x{pl} sample")
                return self.per_sample[key]
        times = []
        while len(times) < 3:
            t0 = time.perf_counter()
            _numerical_rank_sample(short, long, p, rng)
            times.append(time.perf_counter() - t0)
            if times[0] > 0.3:  # one slow sample is enough to judge
                break
        how = "one timed sample" if len(times) == 1 else f"median of {len(times)} timed samples"
        self.per_sample[key] = (statistics.median(times), how)
        return self.per_sample[key]

    def expected_samples(self, short: int, long: int, p: float) -> int:
        """Samples the adaptive rule will draw: taken from the sampled (structural-rank) model,
        which has the same rank distribution with probability 1."""
        key = (short, long, p)
        if key not in self.samples:
            dist, _ = build_one(short, long, p, "sampled", self.seed)
            self.samples[key] = int(dist.samples)
        return self.samples[key]

    def note_sampled(self, rows: int, cols: int, p: float, samples: int) -> None:
        self.samples[(min(rows, cols), max(rows, cols), p)] = int(samples)

    def check(self, rows: int, cols: int, p: float) -> str | None:
        """None if svd may run on this layer, else the reason it is skipped."""
        short, long = min(rows, cols), max(rows, cols)
        t, how = self._probe(short, long, p)
        if t > self.sample_budget:
            return f"{rows}x{cols}: one sample {t:.1f} s > {self.sample_budget:g} s ({how})"
        n = self.expected_samples(short, long, p)
        if n * t > self.layer_budget:
            return (
                f"{rows}x{cols}: ~{n} samples x {t * 1e3:.0f} ms = ~{n * t:.0f} s "
                f"> {self.layer_budget:g} s"
            )
        return None


# --------------------------------------------------------------------------------- table

COLUMNS = [  # (title, width, align)
    ("architecture", 14, "<"),
    ("p", 5, ">"),
    ("model", 8, "<"),
    ("build s", 8, ">"),
    ("per layer s", 15, ">"),
    ("samples", 11, ">"),
    ("support", 9, ">"),
    ("eval ms", 7, ">"),
    ("log2 bound", 10, ">"),
]


def fmt_row(values) -> str:
    cells = [f"{str(v):{a}{w}}" for v, (_, w, a) in zip(values, COLUMNS)]
    return "  ".join(cells).rstrip()


def fmt_skip(prefix, reason: str) -> str:
    head = "  ".join(f"{str(v):{a}{w}}" for v, (_, w, a) in zip(prefix, COLUMNS[: len(prefix)]))
    return f"{head}  skipped: {reason}"


def fmt_seconds(t: float) -> str:
    return f"{t:.3f}" if t < 100 else f"{t:.1f}"


def out(line: str = "") -> None:
    print(line, flush=True)


def warm_up() -> None:
    """Import and first-call costs (scipy.sparse, csgraph, special, LAPACK) are paid here, so the
    timings below measure cold caches, not cold imports."""
    for model in MODELS:
        build_one(7, 9, 0.3, model, seed=1)
    dists = [rank_distribution(5, 4, 0.5, "analytic", cache=RankCache(disk=False))]
    log2_bound([5], dists, 4)


def run_architectures(archs, models, seed, svd: SvdBudget):
    """Prints one row per (architecture, density, model); returns eval times for the target."""
    eval_times: dict[tuple, float] = {}
    for sizes in archs:
        hidden, d0 = list(sizes[1:]), sizes[0]
        for p in DENSITIES:
            for model in models:
                prefix = [arch_name(sizes), f"{p:g}", model]
                shapes = layer_shapes(sizes)
                if model == "svd":
                    reasons = [
                        f"fc{i + 1} {r}" for i, (rows, cols) in enumerate(shapes)
                        if (r := svd.check(rows, cols, p)) is not None
                    ]
                    if reasons:
                        out(fmt_skip(prefix, "; ".join(reasons)))
                        continue
                dists, times = [], []
                budget = svd.layer_budget if model == "svd" else None
                try:
                    for i, (rows, cols) in enumerate(shapes):
                        dist, t = build_one(rows, cols, p, model, seed, budget)
                        dists.append(dist)
                        times.append(t)
                        if model == "sampled":
                            svd.note_sampled(rows, cols, p, dist.samples)
                except OverBudget as e:
                    out(fmt_skip(prefix, f"fc{i + 1} {e}"))
                    continue
                t_eval = time_eval(hidden, dists, d0)
                eval_times[(tuple(sizes), p, model)] = t_eval
                samples = " / ".join("-" if d.samples is None else str(d.samples) for d in dists)
                out(fmt_row(prefix + [
                    fmt_seconds(sum(times)),
                    " / ".join(fmt_seconds(t) for t in times),
                    samples,
                    " / ".join(str(len(d.probs)) for d in dists),
                    f"{t_eval * 1e3:.3f}",
                    f"{log2_bound(hidden, dists, d0):.4f}",
                ]))
        out()
    return eval_times


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def run_layer_targets(quick: bool, seed: int) -> list[str]:
    lines = []
    for rows, cols, p, limit in LAYER_TARGETS:
        label = f"sampled {rows}x{cols} at p = {p:g}"
        if quick and rows * cols > 1_000_000:
            lines.append(f"{label}: not measured (--quick); target <= {limit:g} s")
            continue
        runs = 5 if rows * cols <= 1_000_000 else 1
        results = [build_one(rows, cols, p, "sampled", seed) for _ in range(runs)]
        t = statistics.median(r[1] for r in results)
        dist = results[0][0]
        how = f"median of {runs} cold runs" if runs > 1 else "one cold run"
        lines.append(
            f"{label}: {t:.3f} s ({how}; {dist.samples} samples, support {len(dist.probs)} "
            f"= {dist.kmin}..{dist.kmax}); target <= {limit:g} s: {verdict(t <= limit)}"
        )
    return lines


def eval_target_line(eval_times, archs) -> list[str]:
    label = f"bound evaluation {arch_name(EVAL_TARGET_ARCH)}, every density"
    limit_ms = EVAL_TARGET_SECONDS * 1e3
    if tuple(EVAL_TARGET_ARCH) not in [tuple(a) for a in archs]:
        return [f"{label}: not measured (--quick); target <= {limit_ms:g} ms"]
    lines = []
    for model in MODELS:
        ts = [(p, t) for (a, p, m), t in eval_times.items() if a == tuple(EVAL_TARGET_ARCH) and m == model]
        if not ts:
            continue
        p_worst, worst = max(ts, key=lambda x: x[1])
        missing = [f"{p:g}" for p in DENSITIES if p not in {q for q, _ in ts}]
        note = f"; not measured at p = {', '.join(missing)} (skipped)" if missing else ""
        lines.append(
            f"{label} ({model} distributions): worst {worst * 1e3:.3f} ms (p = {p_worst:g}){note}; "
            f"target <= {limit_ms:g} ms: {verdict(worst <= EVAL_TARGET_SECONDS)}"
        )
    return lines


def parse_models(text: str) -> list[str]:
    models = [m.strip() for m in text.split(",") if m.strip()]
    bad = [m for m in models if m not in MODELS]
    if bad or not models:
        raise argparse.ArgumentTypeError(
            f"unknown rank model(s) {', '.join(bad) or '(none)'}; choose from {','.join(MODELS)}"
        )
    return [m for m in MODELS if m in models]  # canonical order: svd reuses sampled's counts


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help=f"smoke run: only {', '.join(map(arch_name, QUICK_ARCHS))}; skips the 4096x4096 target")
    ap.add_argument("--models", type=parse_models, default=list(MODELS),
                    help="comma list of rank models to time (default: sampled,analytic,svd)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the sampled models (default 0)")
    ap.add_argument("--svd-sample-budget", type=float, default=1.0,
                    help="skip svd on a layer whose single sample takes longer (seconds, default 1)")
    ap.add_argument("--svd-layer-budget", type=float, default=60.0,
                    help="skip svd on a layer whose estimated total exceeds this (seconds, default 60)")
    ap.add_argument("--blas-threads", type=int, default=None, metavar="N",
                    help="set OMP/OPENBLAS/MKL_NUM_THREADS=N before numpy is imported (only the svd "
                         "model uses BLAS; on a loaded machine multithreaded BLAS can slow it many-fold)")
    args = ap.parse_args(argv)
    if args.blas_threads is not None and args.blas_threads < 1:
        ap.error("--blas-threads must be a positive integer")
    archs = QUICK_ARCHS if args.quick else ARCHS

    out("benchmarks/bound.py" + (" --quick" if args.quick else "")
        + ("" if args.blas_threads is None else f" --blas-threads {args.blas_threads}")
        + f"  models {','.join(args.models)}  seed {args.seed}")
    for line in machine_header():
        out(line)
    out()
    out("build s: time to build the rank distributions of all hidden layers, cold (fresh in-memory")
    out("cache per measurement; imports warmed up first); per layer s, samples, support (kmax-kmin+1)")
    out("are listed layer by layer (fc1 / fc2). eval ms: median time of one log2_bound evaluation")
    out("with the distributions built. svd is skipped on a layer whose single sample takes more")
    out(f"than {args.svd_sample_budget:g} s or whose estimated total exceeds {args.svd_layer_budget:g} s "
        "(estimated from the sampled")
    out("model's sample count before the run, and re-checked after every batch of 50).")
    out()

    t_start = time.perf_counter()
    warm_up()
    svd = SvdBudget(args.svd_sample_budget, args.svd_layer_budget, args.seed)
    header = fmt_row([title for title, _, _ in COLUMNS])
    out(header)
    out("-" * len(header))
    eval_times = run_architectures(archs, args.models, args.seed, svd)

    out("targets")
    for line in run_layer_targets(args.quick, args.seed) + eval_target_line(eval_times, archs):
        out(f"  {line}")
    out()
    out(f"total wall time {time.perf_counter() - t_start:.0f} s; load avg {load_average()} at end")
    return 0


if __name__ == "__main__":
    sys.exit(main())
