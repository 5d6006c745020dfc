"""``sparsity-planner plan``: a per-layer plan for an architecture or a torch model.

The options map one to one onto :class:`planner.allocation.request.PlanRequest`'s fields (see
:data:`REQUEST_OPTIONS`); a new budget or objective is a field there and an option here.
"""

from __future__ import annotations

import click

from planner.allocation import INTEGER_SEARCHES, OBJECTIVES, STRATEGIES, TIE_BREAKS
from planner.limits import DEFAULT_TIME_LIMIT, MAX_GRID, MAX_THREADS
from planner.cli.sensitivity import data_options
from planner.cli.common import (
    FiniteFloat,
    TimeLimit,
    check_output,
    emit_plan,
    load_model,
    make_cache,
    model_options,
    parse_shape,
    progress_bars,
    rank_options,
    table,
    with_options,
)

#: options that are fields of PlanRequest, passed through under the same name
REQUEST_OPTIONS = ("density", "keep", "solver", "rank_model", "input_dim", "seed", "grid", "min_density",
                   "max_density", "max_flops", "tie_break", "integer", "objective", "bound_floor", "time_limit",
                   "threads", "max_latency")
#: what the baselines ignore
LR_BOUND_ONLY = ("min_density", "max_density", "max_flops", "bound_floor")
#: where the sensitivity objective's table comes from (besides --sensitivity FILE)
DATA_OPTIONS = ("calibration", "labels", "dataset", "data_dir", "samples")


@click.command(name="plan")
@click.option("--arch", default=None, help="Sizes input,hidden...,output (e.g. 784,300,100,10) or a preset.")
@with_options(model_options)
@click.option("--strategy", type=click.Choice(STRATEGIES), default="lr-bound", show_default=True,
              help="lr-bound maximizes the bound; the others are baselines (global and lamp need --model).")
@click.option("--density", type=FiniteFloat(), default=None, help="Global density: kept fraction of the prunable weights.")
@click.option("--keep", type=int, default=None, help="Kept weights (instead of --density).")
@click.option("--solver", default="cpsat", show_default=True, help="cpsat, ortools-mip, pulp, exact, or paper (the paper's 1-D search, two hidden layers).")
@with_options(rank_options)
@click.option("--grid", type=click.IntRange(1, MAX_GRID), default=32, show_default=True,
              help="Candidate keep-counts per layer.")
@click.option("--min-density", type=FiniteFloat(), default=None, help="Lowest density any prunable layer may get.")
@click.option("--max-density", type=FiniteFloat(), default=None, help="Highest density any prunable layer may get.")
@click.option("--prune-output", is_flag=True, help="Prune the output layer too (at the global density).")
@click.option("--max-flops", type=click.IntRange(min=1), default=None,
              help="Cap on multiply-accumulates per sample of the prunable layers (conv: per output position).")
@click.option("--tie-break", type=click.Choice(TIE_BREAKS), default="auto", show_default=True,
              help="How plans with equal bounds are ordered. auto (chosen by evidence, docs/experiments.md): "
                   "with --weights, LAMP's allocation while the bound stays within 2 bits of the best plan's "
                   "(lamp, --bound-floor 2); without, the plan closest to ERK within 2 bits of the best "
                   "(prior:erk, --bound-floor 2); a --bound-floor given replaces the default's. "
                   "robust (the bound at halved densities; the former default), "
                   "prior:uniform / prior:erk (closest to that allocation), magnitude / lamp (most kept "
                   "squared magnitude / LAMP score mass of the --model's weights), none.")
@click.option("--integer", type=click.Choice(INTEGER_SEARCHES), default="auto", show_default=True,
              help="Search integer keep-counts after the grid: auto scores every integer plan when there "
                   "are few, else searches locally; local; off keeps the grid plan.")
@click.option("--objective", type=click.Choice(OBJECTIVES), default="bound", show_default=True,
              help="bound: maximize the linear-region bound; sensitivity: minimize the summed measured loss "
                   "increase of every prunable layer (needs --model and --sensitivity or calibration data).")
@click.option("--bound-floor", default=None,
              help="Keep the bound within X bits (e.g. 2) or X% (e.g. 5%) of the best grid plan's; among those "
                   "plans the tie-break (objective bound) or the sensitivity decides.")
@click.option("--sensitivity", "sensitivity_path", type=click.Path(dir_okay=False), default=None,
              help="Sensitivity table from `sparsity-planner sensitivity -o` (objective sensitivity).")
@with_options(data_options)
@click.option("--time-limit", type=TimeLimit(), default=DEFAULT_TIME_LIMIT, show_default=True,
              help="Wall-clock seconds the integer program may take; inf lifts the limit.")
@click.option("--threads", type=click.IntRange(1, MAX_THREADS), default=1, show_default=True,
              help="Solver threads (1 is deterministic; more may be faster).")
@click.option("--workers", type=click.IntRange(1, MAX_THREADS), default=None,
              help="Processes sampling rank distributions (default: every core; same result for any count).")
@click.option("-o", "--output", type=click.Path(dir_okay=False), default=None, help="Write the plan file here.")
@click.option("--json", "as_json", is_flag=True, help="Print the plan file to stdout instead of a table.")
@click.option("--patterns", default=None,
              help="Pattern-aware plan: each hidden layer chooses one of these patterns and a count, e.g. "
                   "unstructured,bcr:16x16,2:4 (with --max-latency alone: unstructured).")
@click.option("--max-latency", type=FiniteFloat(min=0, min_open=True), default=None,
              help="Cap (ms) on the summed layer latency, read off --latency-table (a pattern-aware plan).")
@click.option("--latency-table", type=click.Path(dir_okay=False), default=None,
              help="Latency table from `python benchmarks/structured.py --write-table` (default: the built-in "
                   "one, measured on this project's machine).")
@click.option("--granularity", type=click.Choice(("weights", "neurons")), default="weights", show_default=True,
              help="weights: keep-counts per layer; neurons: kept neurons per hidden layer (a smaller dense MLP).")
def plan_command(arch, model_spec, weights, input_shape, strategy, prune_output, cache_dir, no_cache, workers,
                 output, as_json, sensitivity_path, patterns, latency_table, **request_options):
    """Plan per-layer densities that maximize the expected linear-region bound.

    The network is --arch (sizes) or --model (a torch model factory, optionally --weights).
    """
    from planner.core.arch import Architecture

    o = request_options
    data = {k: o.pop(k) for k in DATA_OPTIONS}
    pattern_aware = patterns is not None or o["max_latency"] is not None
    if latency_table is not None and not pattern_aware:
        raise click.UsageError("--latency-table goes with --patterns or --max-latency")
    if pattern_aware:
        from planner.allocation.patterns import parse_patterns
        from planner.errors import PatternError

        try:
            parse_patterns(patterns if patterns is not None else "unstructured")
        except PatternError as exc:
            raise click.BadParameter(str(exc).removeprefix("--patterns: "), param_hint="--patterns") from None
        if o["granularity"] == "neurons" or strategy != "lr-bound":
            raise click.UsageError("--patterns and --max-latency make weight plans of --strategy lr-bound")
        if o["objective"] != "bound" or o["bound_floor"] is not None:
            raise click.UsageError("--patterns and --max-latency plan the bound alone: no --objective sensitivity "
                                   "or --bound-floor with them")
    if o.pop("granularity") == "neurons":
        from planner.cli.nodes import plan_neurons

        return plan_neurons(click.get_current_context(), arch=arch, model_spec=model_spec, weights=weights,
                            input_shape=input_shape, strategy=strategy, output=output, as_json=as_json, options=o)
    if (arch is None) == (model_spec is None):
        raise click.UsageError("give exactly one of --arch (e.g. 784,300,100,10) and --model (package.module:factory)")
    weight_arrays = kernel_shapes = None
    if arch is not None:
        if weights is not None or input_shape is not None:
            raise click.UsageError("--weights and --input-shape go with --model, not --arch")
        if strategy in ("global", "lamp"):
            raise click.UsageError(f"--strategy {strategy} ranks weights by magnitude: give --model (and --weights)")
        net, layers, info = Architecture.parse(arch), None, None
    else:
        from planner.pruning.model import model_layers, model_weights

        model = load_model(model_spec, weights)
        found = model_layers(model, parse_shape(input_shape), prune_output=prune_output)
        net, layers = None, list(found.layers)
        info = {"model": model_spec, "input_size": found.input_size}
        weight_arrays, kernel_shapes = model_weights(model, layers)
    if (o["density"] is None) == (o["keep"] is None):
        raise click.UsageError("give exactly one of --density and --keep")
    if o["bound_floor"] is not None:
        from planner.allocation.secondary import BoundFloor
        from planner.errors import ProblemError

        try:
            BoundFloor.parse(o["bound_floor"])
        except ProblemError as exc:
            raise click.BadParameter(str(exc), param_hint="--bound-floor") from None
    given_data = any(data[k] is not None for k in ("calibration", "labels", "dataset"))
    if o["objective"] != "sensitivity" and (sensitivity_path is not None or given_data):
        raise click.UsageError("--sensitivity, --calibration and --dataset go with --objective sensitivity")
    if o["objective"] == "sensitivity":
        if strategy != "lr-bound":
            raise click.UsageError("--objective sensitivity is a plan of --strategy lr-bound")
        if model_spec is None:
            raise click.UsageError("--objective sensitivity measures a model's layers: give --model (and --weights)")
        if (sensitivity_path is None) == (not given_data):
            raise click.UsageError("--objective sensitivity needs --sensitivity TABLE.json, or calibration data "
                                   "(--calibration X.npy --labels y.npy, or --dataset NAME), not both")
    check_output(output)
    cache = make_cache(cache_dir, no_cache)
    table_ = None
    if o["objective"] == "sensitivity":
        from planner.allocation.sensitivity import DEFAULT_MIN_DENSITY, DEFAULT_STEPS, SensitivityTable

        if sensitivity_path is not None:
            table_ = SensitivityTable.load(sensitivity_path)
        else:
            from planner.cli.sensitivity import measure_from_options

            lowest = min(DEFAULT_MIN_DENSITY, (o["density"] or o["keep"] / sum(w.size for w in layers if not w.frozen))
                         / 32)
            table_ = measure_from_options(model_spec, weights, input_shape, data["calibration"], data["labels"],
                                          data["dataset"], data["data_dir"], data["samples"], "magnitude",
                                          DEFAULT_STEPS, lowest, 0, cache_dir, no_cache, not as_json)
    if strategy != "lr-bound":
        from planner.allocation.baselines import baseline_plan

        if any(o[k] is not None for k in LR_BOUND_ONLY):
            raise click.UsageError("--min-density, --max-density, --max-flops and --bound-floor apply to "
                                   "--strategy lr-bound only")
        result = baseline_plan(strategy, net, layers=layers, architecture_info=info, density=o["density"],
                               keep=o["keep"], weights=weight_arrays, kernel_shapes=kernel_shapes,
                               prune_output=prune_output, rank_model=o["rank_model"], input_dim=o["input_dim"],
                               seed=o["seed"], cache=cache)
    else:
        from planner.allocation.pipeline import run
        from planner.allocation.request import PlanRequest

        if o["tie_break"] in ("magnitude", "lamp") and weight_arrays is None:
            raise click.UsageError(f"--tie-break {o['tie_break']} ranks trained weights: give --model (and --weights)")
        if o["tie_break"] == "auto" and weights is None:
            weight_arrays = None  # a factory's own weights are untrained: auto plans by the prior
        request = PlanRequest.build(net, layers=layers, prune_output=prune_output, architecture_info=info,
                                    sensitivity=table_, patterns=patterns, latency_table=latency_table,
                                    weights=weight_arrays,
                                    **{k: o[k] for k in REQUEST_OPTIONS})
        with progress_bars(not as_json) as progress:
            result = run(request, cache=cache, workers=workers, progress=progress)
    emit_plan(result, output, as_json, print_plan)


def fmt_density(d: float) -> str:
    """Four decimals; tiny densities in scientific notation so they do not print as 0.0000."""
    return f"{d:.4f}" if d == 0 or d >= 1e-3 else f"{d:.2e}"


def print_plan(result) -> None:
    obj = result.objective
    arch = result.architecture.get("sizes")
    head = f"architecture {','.join(map(str, arch))}  " if arch else ""
    if "model" in result.architecture:
        head = f"model {result.architecture['model']}  "
    d0 = f"  d0 = {result.input_dim}" if result.input_dim is not None else "  no ReLU chain: the bound guides no layer"
    click.echo(f"{head}strategy {result.strategy}  rank model {obj.get('rank_model')} (seed {result.seed}){d0}")
    patterned = any(layer.pattern is not None for layer in result.layers)
    extra_columns = [("pattern", "left"), ("latency ms", "right")] if patterned else []
    table(None, [("layer", "left"), ("shape", "right"), ("keep", "right"), ("density", "right"),
                 ("expected rank", "right"), *extra_columns, ("rule", "left")],
          [[layer.name, f"{layer.rows}x{layer.cols}", str(layer.keep), fmt_density(layer.density),
            "" if layer.expected_rank is None else f"{layer.expected_rank:.2f}",
            *([layer.pattern or "", "" if layer.latency_ms is None else f"{layer.latency_ms:.4f}"] if patterned
              else []),
            (layer.rule or ("frozen" if layer.frozen else ("" if layer.in_bound else "outside the bound")))
            + (f" ({layer.why})" if layer.why and not layer.frozen else "")]
           for layer in result.layers])
    click.echo(f"kept {result.kept} of {result.prunable} prunable weights (density {result.global_density:.4f})")
    if obj.get("predicted_loss_increase") is not None:
        uniform = obj.get("uniform_predicted_loss_increase")
        click.echo(f"loss increase       {obj['predicted_loss_increase']:+.4f} (sum of measured single-layer increases"
                   + (f"; uniform {uniform:+.4f})" if uniform is not None else ")"))
    if obj.get("latency_ms") is not None:
        cap = obj.get("max_latency_ms")
        click.echo(f"latency             {obj['latency_ms']:.4f} ms" + (f" (at most {cap:g})" if cap is not None else "")
                   + f"; batch {obj.get('latency_batch')}, table {obj.get('latency_table')}")
    if obj.get("log2_bound") is not None:
        click.echo(f"log2 bound          {obj['log2_bound']:.4f}")
    if obj.get("floor_log2_bound") is not None:
        click.echo(f"bound floor         {obj['floor_log2_bound']:.4f} ({obj.get('bound_floor')} below the best "
                   f"plan's {obj['best_log2_bound']:.4f})")
    if obj.get("uniform_log2_bound") is not None:
        click.echo(f"uniform log2 bound  {obj['uniform_log2_bound']:.4f}")
    if obj.get("tie_break") is not None and obj.get("log2_bound") is not None:
        auto = " (the default auto)" if obj.get("tie_break_requested") == "auto" else ""
        click.echo(f"tie-break           {obj['tie_break']}{auto}")
    if obj.get("certificate_log2_upper") is not None:
        covered = ("no integer plan keeping the budget" if obj.get("certificate_covers") == "integers"
                   else "no plan on the grid")
        click.echo(f"certificate         {covered} exceeds {obj['certificate_log2_upper']:.4f} "
                   f"(gap {obj['certificate_gap_bits']:.2f} bits)")
    if result.solver:
        note = f"; {result.solver['message']}" if result.solver.get("message") else ""
        click.echo(f"solver              {result.solver.get('name')} ({result.solver.get('status')}{note})")
