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


def _ci95(values: Sequence[float]) -> tuple[float, float, int]:
    """(mean, half-width of the 95% Student-t confidence interval, n) of the finite values;
    the half-width is NaN with fewer than two."""
    a = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=np.float64)
    if a.size == 0:
        return float("nan"), float("nan"), 0
    if a.size == 1:
        return float(a[0]), float("nan"), 1
    from scipy.stats import t

    return float(a.mean()), float(t.ppf(0.975, a.size - 1) * a.std(ddof=1) / math.sqrt(a.size)), int(a.size)


def _criterion(r: dict) -> str:
    return r.get("criterion") or "magnitude"  # rows of runs before criteria were a dimension


def labeller(rows: Sequence[dict]):
    """Row -> its series' name: the strategy, with ``[criterion]`` when the rows have several."""
    several = len({_criterion(r) for r in rows}) > 1
    return (lambda r: f"{r['strategy']} [{_criterion(r)}]") if several else (lambda r: r["strategy"])


def summarize(rows: Sequence[dict]) -> list[dict]:
    """Per (strategy, criterion, density): n, mean and standard error of the accuracy, mean log2
    bound, mean per-layer densities; in first-seen order. ``label`` names the series
    (:func:`labeller`)."""
    label = labeller(rows)
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["strategy"], _criterion(r), r["density"]), []).append(r)
    out = []
    for (strategy, criterion, density), rs in groups.items():
        mean, se = _mean_se([r["accuracy"] for r in rs])
        bounds = [r["log2_bound"] for r in rs if r.get("log2_bound") is not None]
        out.append({
            "strategy": strategy, "criterion": criterion, "label": label(rs[0]), "density": density, "n": len(rs),
            "accuracy_mean": mean, "accuracy_se": se,
            "log2_bound_mean": float(np.mean(bounds)) if bounds else None,
            "densities_mean": np.mean([r["densities"] for r in rs], axis=0).tolist(),
        })
    return out


def distortion_summary(rows: Sequence[dict]) -> list[dict]:
    """Per (strategy, criterion, density): the mean pruning ratio t, and the mean of the
    intensification slope alpha_t (after fine-tuning; ``alpha_pruned``: as pruned, before it) and
    of every hidden layer's SVCCA with their 95% confidence intervals over seeds (rows without
    these fields are left out)."""
    label = labeller(rows)
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        if "intensification_slope" in r:
            groups.setdefault((r["strategy"], _criterion(r), r["density"]), []).append(r)
    out = []
    for (strategy, criterion, density), rs in groups.items():
        alpha, alpha_ci, n = _ci95([r["intensification_slope"] for r in rs])
        before, before_ci, _ = _ci95([r.get("intensification_slope_pruned") for r in rs])
        layers = max((len(r.get("svcca") or []) for r in rs), default=0)
        sv = [_ci95([r["svcca"][i] for r in rs if r.get("svcca") and len(r["svcca"]) > i]) for i in range(layers)]
        ratios = [r["pruning_ratio"] for r in rs if r.get("pruning_ratio") is not None]
        out.append({
            "strategy": strategy, "criterion": criterion, "label": label(rs[0]), "density": density,
            "pruning_ratio": float(np.mean(ratios)) if ratios else 1 / density, "n": n,
            "alpha_mean": alpha, "alpha_ci95": alpha_ci, "alpha_pruned_mean": before, "alpha_pruned_ci95": before_ci,
            "svcca_mean": [m for m, _, _ in sv], "svcca_ci95": [c for _, c, _ in sv],
        })
    return out


def reference_svcca(dense: Sequence[dict]) -> list[tuple[float, float, int]]:
    """Per hidden layer: (mean, 95% CI half-width, n pairs) of the dense-vs-dense SVCCA (each
    seed's dense model against another seed's, every pair once), or [] when the run had one seed."""
    pairs = {}
    for d in dense:  # SVCCA is symmetric: with two seeds both dense rows hold the same pair
        if d.get("svcca_reference"):
            pairs.setdefault(frozenset((d["seed"], d.get("reference_seed"))), d["svcca_reference"])
    refs = list(pairs.values())
    if not refs:
        return []
    return [_ci95([r[i] for r in refs]) for i in range(len(refs[0]))]


def paired_differences(rows: Sequence[dict], reference: str = REFERENCE) -> list[dict]:
    """For every other strategy and density: the mean over seeds of accuracy(reference) -
    accuracy(other) on the same seed (same dense model, same fine-tuning batches), its standard
    error, and a verdict: ``win``/``loss`` when the mean difference exceeds one standard error,
    ``tie`` otherwise, ``n/a`` with a single seed (its standard error is NaN)."""
    label = labeller(rows)
    acc = {(r["strategy"], _criterion(r), r["density"], r["seed"]): r["accuracy"] for r in rows}
    names = {(r["strategy"], _criterion(r)): label(r) for r in rows}
    series = list(dict.fromkeys((r["strategy"], _criterion(r)) for r in rows))
    densities = list(dict.fromkeys(r["density"] for r in rows))
    out = []
    for other, crit in series:  # against the reference pruned by the same criterion
        if other == reference or (reference, crit) not in names:
            continue
        for d in densities:
            seeds = sorted({s for (st, c, dd, s) in acc if st == reference and c == crit and dd == d}
                           & {s for (st, c, dd, s) in acc if st == other and c == crit and dd == d})
            if not seeds:
                continue
            diffs = [acc[(reference, crit, d, s)] - acc[(other, crit, d, s)] for s in seeds]
            mean, se = _mean_se(diffs)
            if len(seeds) < 2:  # no standard error from one seed: no verdict either
                verdict = "n/a"
            else:
                verdict = "tie" if abs(mean) <= se or (se == 0 and mean == 0) else ("win" if mean > 0 else "loss")
            out.append({"reference": names[(reference, crit)], "other": names[(other, crit)], "criterion": crit,
                        "density": d, "n": len(seeds), "difference_mean": mean, "difference_se": se,
                        "verdict": verdict})
    return out


def _pts(se: float) -> str:
    """A standard error in points, or n/a when there is none (a single seed)."""
    return "n/a" if math.isnan(se) else f"{100 * se:.2f}"


def markdown_table(rows: Sequence[dict], dense: Sequence[dict] = ()) -> str:
    """Mean accuracy (%) +- standard error per strategy (rows) and density (columns), then the
    mean log2 bound the same way."""
    summary = summarize(rows)
    strategies = list(dict.fromkeys(s["label"] for s in summary))
    densities = list(dict.fromkeys(s["density"] for s in summary))
    cell = {(s["label"], s["density"]): s for s in summary}
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
             f"when |mean| > 1 SE){'' if len({d['criterion'] for d in diffs}) < 2 else ', each against ' + reference + ' pruned by the same criterion'}:", "",
             "| vs | " + " | ".join(f"{d:g}" for d in densities) + " |",
             "| --- | " + " | ".join("---:" for _ in densities) + " |"]
    for o in others:
        vals = [cell.get((o, d)) for d in densities]
        lines.append(f"| {o} | " + " | ".join(
            "" if v is None else f"{100 * v['difference_mean']:+.2f} ± {_pts(v['difference_se'])} "
                                 f"{mark[v['verdict']]}" for v in vals) + " |")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------ files


def _ci(mean: float, ci: float, digits: int = 2) -> str:
    if math.isnan(mean):
        return ""
    return f"{mean:.{digits}f}" + ("" if math.isnan(ci) else f" ± {ci:.{digits}f}")


def distortion_table(rows: Sequence[dict], dense: Sequence[dict] = ()) -> str:
    """The recall-distortion slope alpha_t and the SVCCA per hidden layer, mean ± 95% CI half-width
    over seeds, per series (rows) and pruning ratio t (columns); empty for rows without them."""
    summary = distortion_summary(rows)
    if not summary:
        return ""
    series = list(dict.fromkeys(s["label"] for s in summary))
    densities = list(dict.fromkeys(s["density"] for s in summary))
    cell = {(s["label"], s["density"]): s for s in summary}
    head = "| strategy | " + " | ".join(f"t={1 / d:.3g}" for d in densities) + " |"
    rule = "| --- | " + " | ".join("---:" for _ in densities) + " |"
    lines = ["Recall distortion: alpha_t, the slope through the origin of the pruned model's normalized recall "
             "balances (R_c - A) / A on the dense model's (same seed); > 1 intensification, < 1 attenuation. "
             "Mean ± 95% CI over seeds; t = dense / kept prunable weights:", "", head, rule]
    for st in series:
        vals = [cell.get((st, d)) for d in densities]
        lines.append(f"| {st} | " + " | ".join("" if v is None else _ci(v["alpha_mean"], v["alpha_ci95"])
                                              for v in vals) + " |")
    if any(not math.isnan(s["alpha_pruned_mean"]) for s in summary):
        lines += ["", "alpha_t of the pruned model before fine-tuning (masks applied, no training yet):", "", head, rule]
        for st in series:
            vals = [cell.get((st, d)) for d in densities]
            lines.append(f"| {st} | " + " | ".join(
                "" if v is None else _ci(v["alpha_pruned_mean"], v["alpha_pruned_ci95"]) for v in vals) + " |")
    layers = max(len(s["svcca_mean"]) for s in summary)
    if layers:
        names = " / ".join(f"hidden {i + 1}" for i in range(layers))
        lines += ["", f"SVCCA between the dense and the pruned network on the test set ({names}; 99% of the variance, "
                      "mean canonical correlation), mean ± 95% CI over seeds:", "", head, rule]
        for st in series:
            vals = [cell.get((st, d)) for d in densities]
            lines.append(f"| {st} | " + " | ".join(
                "" if v is None else " / ".join(_ci(m, c) for m, c in zip(v["svcca_mean"], v["svcca_ci95"]))
                for v in vals) + " |")
        ref = reference_svcca(dense)
        if ref:
            lines += ["", "Dense vs dense (each seed's dense model against the next seed's): "
                      + " / ".join(_ci(m, c) for m, c, _ in ref) + f" ({ref[0][2]} pairs)."]
    return "\n".join(lines) + "\n"


def results_csv(rows: Sequence[dict]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(RESULT_FIELDS)
    for r in rows:
        values = [r.get(f, "magnitude" if f == "criterion" else None) for f in RESULT_FIELDS]
        writer.writerow(["" if v is None else json.dumps(v) if isinstance(v, list) else v for v in values])
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
    strategies = list(dict.fromkeys(s["label"] for s in summary))
    for st, off in zip(strategies, _offsets(len(strategies))):
        pts = sorted((s for s in summary if s["label"] == st), key=lambda s: s["density"])
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
    strategies = list(dict.fromkeys(s["label"] for s in summary))
    for st in strategies:
        pts = sorted((s for s in summary if s["label"] == st and s["log2_bound_mean"] is not None),
                     key=lambda s: s["density"])
        ax.plot([s["density"] for s in pts], [s["log2_bound_mean"] for s in pts], marker="o", ms=4, label=st,
                **_style(st))
    ax.set_xscale("log")
    ax.set_xlabel("global density (kept fraction of hidden-layer weights)")
    ax.set_ylabel("expected log2 bound on linear regions")
    ax.set_title(title or "expected bound of each plan")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)


def _log_ticks(ax, values) -> None:
    """Ticks at the measured x values, written plainly (no crowded minor labels on a log axis)."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter, NullLocator

    values = sorted(set(values))
    if values:
        ax.xaxis.set_major_locator(FixedLocator(values))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.3g}"))
        ax.xaxis.set_minor_locator(NullLocator())
        ax.xaxis.set_minor_formatter(NullFormatter())


def plot_distortion(ax, rows, title=None, before: bool = False) -> None:
    """alpha_t against the pruning ratio t per series, 95% CI bars, the line alpha = 1
    (``before``: the pruned models before fine-tuning)."""
    key = "alpha_pruned" if before else "alpha"
    summary = distortion_summary(rows)
    series = list(dict.fromkeys(s["label"] for s in summary))
    for st, off in zip(series, _offsets(len(series))):
        pts = sorted((s for s in summary if s["label"] == st and not math.isnan(s[key + "_mean"])),
                     key=lambda s: s["pruning_ratio"])
        ax.errorbar([s["pruning_ratio"] * off for s in pts], [s[key + "_mean"] for s in pts],
                    yerr=[0.0 if math.isnan(s[key + "_ci95"]) else s[key + "_ci95"] for s in pts], marker="o", ms=4,
                    capsize=3, label=st, **_style(st))
    ax.axhline(1.0, color="grey", ls="--", lw=1, label="alpha = 1 (no distortion)")
    ax.set_xscale("log")
    _log_ticks(ax, [round(1 / s["density"], 6) for s in summary])
    ax.set_xlabel("pruning ratio t (dense / kept hidden-layer weights)")
    ax.set_ylabel("intensification slope alpha_t")
    ax.set_title(title or "recall distortion (mean ± 95% CI)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)


def plot_svcca(axes, rows, dense=(), title=None) -> None:
    """SVCCA (dense vs pruned) against density, one axis per hidden layer, 95% CI bars, and the
    dense-vs-dense reference as a band."""
    summary = distortion_summary(rows)
    series = list(dict.fromkeys(s["label"] for s in summary))
    ref = reference_svcca(dense)
    for i, ax in enumerate(axes):
        for st, off in zip(series, _offsets(len(series))):
            pts = sorted((s for s in summary if s["label"] == st and len(s["svcca_mean"]) > i),
                         key=lambda s: s["density"])
            ax.errorbar([s["density"] * off for s in pts], [s["svcca_mean"][i] for s in pts],
                        yerr=[0.0 if math.isnan(s["svcca_ci95"][i]) else s["svcca_ci95"][i] for s in pts],
                        marker="o", ms=4, capsize=3, label=st, **_style(st))
        if len(ref) > i:
            m, c, n = ref[i]
            ax.axhline(m, color="grey", ls="--", lw=1, label=f"dense vs dense ({n} pairs)")
            if not math.isnan(c):
                ax.axhspan(m - c, m + c, color="grey", alpha=0.15)
        ax.set_xscale("log")
        _log_ticks(ax, [s["density"] for s in summary])
        ax.set_xlabel("global density (kept fraction of hidden-layer weights)")
        ax.set_ylabel("SVCCA (mean canonical correlation)")
        ax.set_title(f"hidden layer {i + 1}" + (f": {title}" if title else ""))
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)


def plots(result: Comparison) -> dict[str, bytes]:
    """PNG bytes: ``accuracy.png``, ``bound.png`` and ``compare.png`` (both panels); with
    recall-distortion and SVCCA fields in the rows also ``distortion.png`` (alpha_t against t)
    and ``svcca.png`` (SVCCA against density, one panel per hidden layer)."""
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
    summary = distortion_summary(result.rows)
    if summary:
        if any(not math.isnan(s["alpha_pruned_mean"]) for s in summary):
            fig = Figure(figsize=(13, 4.8), layout="constrained")
            a, b = fig.subplots(1, 2)
            plot_distortion(a, result.rows, f"alpha_t after fine-tuning ({where})")
            plot_distortion(b, result.rows, "alpha_t as pruned, before fine-tuning", before=True)
        else:
            fig = Figure(figsize=(6.8, 4.6), layout="constrained")
            plot_distortion(fig.add_subplot(), result.rows, f"recall distortion alpha_t ({where})")
        out["distortion.png"] = _figure_bytes(fig)
        layers = max(len(s["svcca_mean"]) for s in summary)
        if layers:
            fig = Figure(figsize=(6.0 * layers, 4.6), layout="constrained")
            axes = fig.subplots(1, layers, squeeze=False)[0]
            plot_svcca(axes, result.rows, result.dense, where)
            out["svcca.png"] = _figure_bytes(fig)
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
    extra = distortion_table(result.rows, result.dense)
    atomic_write_text(out / "summary.md", markdown_table(result.rows, result.dense) + "\n"
                      + verdict_table(result.rows) + ("\n" + extra if extra else ""))
    written += [str(out / n) for n in ("results.csv", "results.json", "summary.md")]
    for name, data in plots(result).items():
        atomic_write_bytes(out / name, data)
        written.append(str(out / name))
    return written
