"""What a comparison reports: per-strategy summaries, paired differences against the
planner, the markdown and CSV tables, the plots, and the output directory."""

from __future__ import annotations

import csv
import io
import json
import math
from typing import Sequence

import numpy as np

from planner.experiments.compare import REFERENCE, RESULT_FIELDS, Comparison, ExperimentError


def _mean_se(values: Sequence[float]) -> tuple[float, float]:
    a = np.asarray(values, dtype=np.float64)
    if a.size == 0:
        return float("nan"), float("nan")
    se = float(a.std(ddof=1) / math.sqrt(a.size)) if a.size > 1 else float("nan")  # one value: unknown
    return float(a.mean()), se


def summarize(rows: Sequence[dict]) -> list[dict]:
    """Per (strategy, density): n, mean and standard error of the accuracy, mean log2 bound,
    mean per-layer densities; strategies and densities in first-seen order."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["strategy"], r["density"]), []).append(r)
    out = []
    for (strategy, density), rs in groups.items():
        mean, se = _mean_se([r["accuracy"] for r in rs])
        bounds = [r["log2_bound"] for r in rs if r.get("log2_bound") is not None]
        out.append({
            "strategy": strategy, "density": density, "n": len(rs), "accuracy_mean": mean, "accuracy_se": se,
            "log2_bound_mean": float(np.mean(bounds)) if bounds else None,
            "densities_mean": np.mean([r["densities"] for r in rs], axis=0).tolist(),
        })
    return out


def paired_differences(rows: Sequence[dict], reference: str = REFERENCE) -> list[dict]:
    """For every other strategy and density: the mean over seeds of accuracy(reference) -
    accuracy(other) on the same seed (same dense model, same fine-tuning batches), its standard
    error, and a verdict: ``win``/``loss`` when the mean difference exceeds one standard error,
    ``tie`` otherwise, ``n/a`` with a single seed (its standard error is NaN)."""
    acc = {(r["strategy"], r["density"], r["seed"]): r["accuracy"] for r in rows}
    strategies = list(dict.fromkeys(r["strategy"] for r in rows))
    densities = list(dict.fromkeys(r["density"] for r in rows))
    out = []
    if reference not in strategies:
        return out
    for other in strategies:
        if other == reference:
            continue
        for d in densities:
            seeds = sorted({s for (st, dd, s) in acc if st == reference and dd == d}
                           & {s for (st, dd, s) in acc if st == other and dd == d})
            if not seeds:
                continue
            diffs = [acc[(reference, d, s)] - acc[(other, d, s)] for s in seeds]
            mean, se = _mean_se(diffs)
            if len(seeds) < 2:  # no standard error from one seed: no verdict either
                verdict = "n/a"
            else:
                verdict = "tie" if abs(mean) <= se or (se == 0 and mean == 0) else ("win" if mean > 0 else "loss")
            out.append({"reference": reference, "other": other, "density": d, "n": len(seeds),
                        "difference_mean": mean, "difference_se": se, "verdict": verdict})
    return out


def _pts(se: float) -> str:
    """A standard error in points, or n/a when there is none (a single seed)."""
    return "n/a" if math.isnan(se) else f"{100 * se:.2f}"


def markdown_table(rows: Sequence[dict], dense: Sequence[dict] = ()) -> str:
    """Mean accuracy (%) +- standard error per strategy (rows) and density (columns), then the
    mean log2 bound the same way."""
    summary = summarize(rows)
    strategies = list(dict.fromkeys(s["strategy"] for s in summary))
    densities = list(dict.fromkeys(s["density"] for s in summary))
    cell = {(s["strategy"], s["density"]): s for s in summary}
    head = "| strategy | " + " | ".join(f"{d:g}" for d in densities) + " |"
    rule = "| --- | " + " | ".join("---:" for _ in densities) + " |"
    lines = ["Test accuracy (%), mean ± standard error over seeds:", "", head, rule]
    for st in strategies:
        vals = [cell.get((st, d)) for d in densities]
        lines.append(f"| {st} | " + " | ".join(
            "" if v is None else f"{100 * v['accuracy_mean']:.2f} ± {_pts(v['accuracy_se'])}" for v in vals) + " |")
    if dense:
        m, se = _mean_se([d["accuracy"] for d in dense])
        lines += ["", f"Dense model: {100 * m:.2f} ± {_pts(se)} % ({len(dense)} seeds)."]
    lines += ["", "Expected log2 bound on linear regions, mean over seeds:", "", head, rule]
    for st in strategies:
        vals = [cell.get((st, d)) for d in densities]
        lines.append(f"| {st} | " + " | ".join(
            "" if v is None or v["log2_bound_mean"] is None else f"{v['log2_bound_mean']:.2f}" for v in vals) + " |")
    return "\n".join(lines) + "\n"


def verdict_table(rows: Sequence[dict], reference: str = REFERENCE) -> str:
    """Accuracy(reference) - accuracy(baseline), in points, paired by seed: mean ± SE and W/T/L."""
    diffs = paired_differences(rows, reference)
    if not diffs:
        return ""
    others = list(dict.fromkeys(d["other"] for d in diffs))
    densities = list(dict.fromkeys(d["density"] for d in diffs))
    cell = {(d["other"], d["density"]): d for d in diffs}
    mark = {"win": "**win**", "tie": "tie", "loss": "*loss*", "n/a": "(one seed: no verdict)"}
    lines = [f"{reference} minus each other strategy, accuracy points, paired by seed (mean ± SE; win/loss "
             f"when |mean| > 1 SE):", "",
             "| vs | " + " | ".join(f"{d:g}" for d in densities) + " |",
             "| --- | " + " | ".join("---:" for _ in densities) + " |"]
    for o in others:
        vals = [cell.get((o, d)) for d in densities]
        lines.append(f"| {o} | " + " | ".join(
            "" if v is None else f"{100 * v['difference_mean']:+.2f} ± {_pts(v['difference_se'])} "
                                 f"{mark[v['verdict']]}" for v in vals) + " |")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------ files


def results_csv(rows: Sequence[dict]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(RESULT_FIELDS)
    for r in rows:
        writer.writerow([json.dumps(r[f]) if isinstance(r[f], list) else r[f] for f in RESULT_FIELDS])
    return buf.getvalue()


def _figure_bytes(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, metadata={"Software": None})
    return buf.getvalue()


def _style(strategy: str) -> dict:
    """lr-bound drawn on top; its tie-break variants dashed."""
    if strategy == REFERENCE:
        return {"zorder": 4, "lw": 2.0}
    if strategy.startswith(REFERENCE + ":"):
        return {"ls": "--", "lw": 1.2}
    return {"lw": 1.2}


def _offsets(n: int, spread: float = 0.035) -> list[float]:
    """Multiplicative x offsets so error bars of different strategies do not overlap."""
    return [math.exp(spread * (i - (n - 1) / 2)) for i in range(n)]


def plot_accuracy(ax, rows, dense=(), title=None) -> None:
    summary = summarize(rows)
    strategies = list(dict.fromkeys(s["strategy"] for s in summary))
    for st, off in zip(strategies, _offsets(len(strategies))):
        pts = sorted((s for s in summary if s["strategy"] == st), key=lambda s: s["density"])
        ax.errorbar([s["density"] * off for s in pts], [100 * s["accuracy_mean"] for s in pts],
                    yerr=[0.0 if math.isnan(s["accuracy_se"]) else 100 * s["accuracy_se"] for s in pts], marker="o", ms=4, capsize=3, label=st,
                    **_style(st))
    if dense:
        m, _ = _mean_se([d["accuracy"] for d in dense])
        ax.axhline(100 * m, color="grey", ls="--", lw=1, label="dense")
    ax.set_xscale("log")
    ax.set_xlabel("global density (kept fraction of hidden-layer weights)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title or "accuracy after fine-tuning (mean ± SE)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)


def plot_bound(ax, rows, title=None) -> None:
    summary = summarize(rows)
    strategies = list(dict.fromkeys(s["strategy"] for s in summary))
    for st in strategies:
        pts = sorted((s for s in summary if s["strategy"] == st and s["log2_bound_mean"] is not None),
                     key=lambda s: s["density"])
        ax.plot([s["density"] for s in pts], [s["log2_bound_mean"] for s in pts], marker="o", ms=4, label=st,
                **_style(st))
    ax.set_xscale("log")
    ax.set_xlabel("global density (kept fraction of hidden-layer weights)")
    ax.set_ylabel("expected log2 bound on linear regions")
    ax.set_title(title or "expected bound of each plan")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)


def plots(result: Comparison) -> dict[str, bytes]:
    """PNG bytes: ``accuracy.png``, ``bound.png`` and ``compare.png`` (both panels)."""
    from matplotlib.figure import Figure  # no pyplot: no global backend state

    cfg = result.config
    where = f"{cfg.get('dataset')} {'-'.join(map(str, cfg.get('arch', [])))}, {len(cfg.get('seeds', []))} seeds"
    out = {}
    fig = Figure(figsize=(6.4, 4.4), layout="constrained")
    plot_accuracy(fig.add_subplot(), result.rows, result.dense, f"accuracy after fine-tuning ({where})")
    out["accuracy.png"] = _figure_bytes(fig)
    fig = Figure(figsize=(6.4, 4.4), layout="constrained")
    plot_bound(fig.add_subplot(), result.rows, f"expected log2 bound ({where})")
    out["bound.png"] = _figure_bytes(fig)
    fig = Figure(figsize=(12, 4.6), layout="constrained")
    a, b = fig.subplots(1, 2)
    plot_accuracy(a, result.rows, result.dense, f"accuracy, mean ± SE ({where})")
    plot_bound(b, result.rows, "expected log2 bound on linear regions")
    out["compare.png"] = _figure_bytes(fig)
    return out


def write_outputs(result: Comparison, out_dir) -> list[str]:
    """Write results.csv, results.json, summary.md and the plots into ``out_dir`` (created if
    needed), every file atomically; returns the paths written."""
    from pathlib import Path

    from planner.fileio import atomic_write_bytes, atomic_write_text

    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ExperimentError(f"--out {out} exists and is not a directory")
    out.mkdir(parents=True, exist_ok=True)
    written = []
    atomic_write_text(out / "results.csv", results_csv(result.rows))
    atomic_write_text(out / "results.json", json.dumps(result.to_dict(), indent=2) + "\n")
    atomic_write_text(out / "summary.md", markdown_table(result.rows, result.dense) + "\n"
                      + verdict_table(result.rows))
    written += [str(out / n) for n in ("results.csv", "results.json", "summary.md")]
    for name, data in plots(result).items():
        atomic_write_bytes(out / name, data)
        written.append(str(out / name))
    return written
