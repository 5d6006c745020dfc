"""The neuron-plan side of ``plan --granularity neurons`` and of ``apply`` on a neuron plan.

Kept out of plan.py and apply.py, which only branch here: the options that mean nothing for a
neuron plan are refused by name, so a user never believes an option was used when it was not.
"""

from __future__ import annotations

import click

from planner.cli.common import emit_plan, table

#: plan options a neuron plan does not use (the dense ranks need no rank model, nothing ties on a grid)
PLAN_UNUSED = ("rank_model", "tie_break", "integer", "min_density", "max_density", "prune_output", "cache_dir",
               "no_cache", "workers", "objective", "bound_floor", "sensitivity_path", "calibration", "labels",
               "dataset", "data_dir", "samples")
#: apply options only neuron criteria use
APPLY_NODE_ONLY = ("labels", "dpp_mode", "dpp_beta", "candidates", "reweight")
#: the default calibration batch: scikit-learn digits' training inputs, for models with 64 inputs
DIGITS_INPUTS = 64


def _given(ctx, name: str) -> bool:
    from click.core import ParameterSource

    source = ctx.get_parameter_source(name)
    return source is not None and source not in (ParameterSource.DEFAULT, ParameterSource.DEFAULT_MAP)


def plan_neurons(ctx, *, arch, model_spec, weights, input_shape, strategy, output, as_json, options):
    """``plan --granularity neurons``: widths under the weight budget, by the dense bound."""
    from planner.allocation.nodes import NODE_STRATEGIES, plan_nodes
    from planner.cli.common import check_output, load_model, parse_shape

    for name in PLAN_UNUSED:
        if _given(ctx, name):
            raise click.UsageError(f"--{name.replace('_', '-')} does not apply to --granularity neurons")
    if strategy not in NODE_STRATEGIES:
        raise click.UsageError(f"--granularity neurons takes --strategy {' or '.join(NODE_STRATEGIES)}")
    if (arch is None) == (model_spec is None):
        raise click.UsageError("give exactly one of --arch (e.g. 64,100,100,10) and --model (package.module:factory)")
    if (options["density"] is None) == (options["keep"] is None):
        raise click.UsageError("give exactly one of --density and --keep")
    solver = options["solver"] if _given(ctx, "solver") else "auto"
    solver = {"exact": "exhaustive"}.get(solver, solver)
    if solver not in ("auto", "exhaustive", "cpsat"):
        raise click.UsageError(f"--granularity neurons takes --solver cpsat or exact (exhaustive), not {solver}")
    layers = info = None
    if model_spec is not None:
        from planner.pruning.model import model_layers

        model = load_model(model_spec, weights)
        found = model_layers(model, parse_shape(input_shape), prune_output=True)
        layers, info = list(found.layers), {"model": model_spec, "input_size": found.input_size}
        arch = None
    elif weights is not None or input_shape is not None:
        raise click.UsageError("--weights and --input-shape go with --model, not --arch")
    check_output(output)
    result = plan_nodes(arch, layers=layers, architecture_info=info, density=options["density"],
                        keep=options["keep"], strategy=strategy, solver=solver, grid=options["grid"],
                        max_flops=options["max_flops"], input_dim=options["input_dim"],
                        time_limit=options["time_limit"], threads=options["threads"], seed=options["seed"])
    emit_plan(result, output, as_json, print_node_plan)


def print_node_plan(result) -> None:
    obj = result.objective
    head = f"model {result.architecture['model']}" if "model" in result.architecture else \
        f"architecture {','.join(map(str, result.architecture['sizes']))}"
    click.echo(f"{head}  granularity neurons  strategy {result.strategy}  d0 = {result.input_dim}")
    prev = result.layers[0].cols
    rows = []
    for layer in result.layers:
        rows.append([layer.name, f"{layer.rows}x{layer.cols}", f"{layer.keep_neurons}x{prev}", str(layer.keep),
                     f"{layer.keep_neurons}/{layer.rows}", "output" if layer is result.layers[-1] else ""])
        prev = layer.keep_neurons
    table(None, [("layer", "left"), ("shape", "right"), ("kept shape", "right"), ("weights", "right"),
                 ("neurons", "right"), ("", "left")], rows)
    click.echo(f"kept {result.kept} of {result.prunable} weights (density {result.global_density:.4f}; "
               f"budget {result.target['budget']}); with biases {obj['parameters_with_biases']}")
    click.echo(f"log2 bound          {obj['log2_bound']:.4f}  (dense network: {obj['dense_log2_bound']:.4f})")
    if obj.get("uniform_log2_bound") is not None:
        click.echo(f"uniform log2 bound  {obj['uniform_log2_bound']:.4f}")
    if obj.get("certificate_log2_upper") is not None:
        covered = "no integer plan" if obj.get("certificate_covers") == "integers" else "no plan on the grid"
        click.echo(f"certificate         {covered} exceeds {obj['certificate_log2_upper']:.4f} "
                   f"(gap {obj['certificate_gap_bits']:.2f} bits)")
    if result.solver:
        click.echo(f"solver              {result.solver['name']} ({result.solver['status']})")


def _load_array(path, what, kinds):
    import numpy as np

    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise click.UsageError(f"cannot read {what} {path}: {exc}") from None
    if array.dtype.kind not in kinds:
        raise click.UsageError(f"{what} must hold {'integers' if kinds == 'iu' else 'numbers'}, got dtype {array.dtype}")
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise click.UsageError(f"{what} holds nan or infinite values")
    return array


def apply_neurons(ctx, *, model, plan, criterion, calibration, labels, seed, output, as_json, node_options):
    """``apply`` on a neuron plan: prune, shrink, write the smaller state dict."""
    import io

    import torch

    from planner.fileio import atomic_write_bytes
    from planner.pruning.nodes import NODE_CRITERIA, check_neuron_plan, prune_nodes, shrink

    if criterion not in NODE_CRITERIA:
        raise click.UsageError(f"--criterion {criterion} prunes single weights; a neuron plan takes "
                               f"{'|'.join(NODE_CRITERIA)}")
    check_neuron_plan(model, plan)
    if _given(ctx, "rescale"):
        raise click.UsageError("--rescale applies to weight plans; neuron plans fold weights by --reweight")
    notes = []
    calib = None
    if calibration is not None:
        calib = torch.as_tensor(_load_array(calibration, "--calibration", "fiu"), dtype=torch.float32)
    else:
        reweight = node_options["reweight"]
        if criterion != "random" or reweight:
            first = model.get_submodule(plan.layers[0].name)
            if first.in_features != DIGITS_INPUTS:
                raise click.UsageError(f"--criterion {criterion} needs a calibration batch: give --calibration "
                                       f"X.npy (the digits default fits models with {DIGITS_INPUTS} inputs)")
            from planner.experiments.data import load_dataset

            calib = torch.as_tensor(load_dataset("digits")[0])
            notes.append(f"calibration: scikit-learn digits' {len(calib)} training inputs (default)")
    y = None
    if labels is not None:
        y = _load_array(labels, "--labels", "iu")
        if y.ndim != 1:
            raise click.UsageError(f"--labels must be one label per sample, got shape {y.shape}")
    report = prune_nodes(model, plan, criterion, calibration=calib, labels=y, seed=seed,
                         reweight_weights=node_options["reweight"], dpp_mode=node_options["dpp_mode"],
                         beta=node_options["dpp_beta"], candidates=node_options["candidates"])
    shrink(model, report.keep_sets())
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    atomic_write_bytes(output, buffer.getvalue())
    report.notes[:0] = notes
    if as_json:
        from planner.cli.common import print_json

        print_json(report.to_dict())
        return
    table(None, [("layer", "left"), ("shape", "right"), ("kept shape", "right"), ("weights", "right"),
                 ("criterion", "left"), ("reweighted", "left")],
          [[a.name, f"{a.rows}x{a.cols}", f"{a.kept_rows}x{a.kept_cols}", str(a.weights), a.criterion,
            "yes" if a.reweighted else ""] for a in report.layers])
    click.echo(f"weights: realized {report.realized}, planned {report.planned}")
    for note in report.notes:
        click.echo(f"note: {note}")
    click.echo(f"shrunk state dict written to {output} (rebuild: planner.pruning.nodes.resize_to_state_dict)")


def refuse_node_options(ctx, criterion) -> None:
    """A weight plan: node criteria and node options are refused by name."""
    from planner.pruning.masks import CRITERIA

    if criterion not in CRITERIA:
        raise click.UsageError(f"--criterion {criterion} keeps whole neurons: it needs a neuron plan "
                               "(plan --granularity neurons); this plan is per weight")
    from planner.pruning.masks import DATA_CRITERIA

    for name in APPLY_NODE_ONLY:
        if name == "labels" and criterion in DATA_CRITERIA:
            continue  # the labels of the calibration batch
        if _given(ctx, name):
            raise click.UsageError(f"--{name.replace('_', '-')} applies to neuron plans only")
