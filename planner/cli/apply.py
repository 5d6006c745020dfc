"""``sparsity-planner apply``: prune a torch model to a plan and save the finalized state dict."""

from __future__ import annotations

import click

from planner.cli.common import check_output, load_model, model_options, print_json, table, with_options
from planner.limits import MAX_SEED
from planner.pruning.masks import CRITERIA
from planner.pruning.nodes import DPP_MODES, NODE_CRITERIA

#: every criterion apply takes: the weight criteria, then the neuron plans' (random serves both)
ALL_CRITERIA = CRITERIA + tuple(c for c in NODE_CRITERIA if c not in CRITERIA)


@click.command(name="apply")
@with_options(model_options)
@click.option("--plan", "plan_path", required=True, type=click.Path(dir_okay=False), help="Plan file to apply.")
@click.option("--criterion", type=click.Choice(ALL_CRITERIA),
              default="magnitude", show_default=True, help="Which weights a layer keeps.")
@click.option("--calibration", type=click.Path(dir_okay=False), default=None,
              help=".npy batch of model inputs (elimination-compensation).")
@click.option("--rescale", is_flag=True, help="Multiply surviving weights by 1/sqrt(density).")
@click.option("--seed", type=click.IntRange(0, MAX_SEED), default=0, show_default=True, help="Seed of --criterion random.")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False),
              help="Where to write the pruned, finalized state dict.")
@click.option("--json", "as_json", is_flag=True, help="Print the realized densities as JSON.")
@click.option("--labels", type=click.Path(dir_okay=False), default=None,
              help="Neuron plans: .npy labels of the calibration batch (greedy-forward then minimizes cross-entropy).")
@click.option("--dpp-mode", type=click.Choice(DPP_MODES), default="sample", show_default=True,
              help="Neuron plans, dpp: sample the k-DPP (seeded) or take its greedy MAP.")
@click.option("--dpp-beta", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Neuron plans, dpp: kernel width beta (default 1 / median squared distance).")
@click.option("--candidates", type=click.IntRange(min=1), default=None,
              help="Neuron plans, greedy-forward: neurons tried per step (default all).")
@click.option("--reweight/--no-reweight", default=None,
              help="Neuron plans: fold removed neurons' outgoing weights into kept ones by least squares "
                   "(default: on for dpp and greedy-forward, off otherwise).")
def apply_command(model_spec, weights, input_shape, plan_path, criterion, calibration, rescale, seed, output,
                  as_json, **node_options):
    """Prune a torch model to a plan and save the finalized state dict."""
    import io

    import numpy as np
    import torch

    from planner.pruning.masks import apply_plan, finalize
    from planner.fileio import atomic_write_bytes
    from planner.allocation.planfile import Plan

    if model_spec is None:
        raise click.UsageError("give --model package.module:factory")
    check_output(output)
    plan_obj = Plan.load(plan_path)
    model = load_model(model_spec, weights)
    if plan_obj.is_neurons:
        from planner.cli.nodes import apply_neurons

        return apply_neurons(click.get_current_context(), model=model, plan=plan_obj, criterion=criterion,
                             calibration=calibration, labels=node_options.pop("labels"), seed=seed, output=output,
                             as_json=as_json, node_options=node_options)
    from planner.cli.nodes import refuse_node_options

    refuse_node_options(click.get_current_context(), criterion)
    calib = None
    if calibration is not None:
        try:
            calib = np.load(calibration, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise click.UsageError(f"cannot read --calibration {calibration}: {exc}") from None
        if calib.dtype.kind not in "fiu":
            raise click.UsageError(f"--calibration must hold numbers, got dtype {calib.dtype}")
        calib = torch.as_tensor(calib, dtype=torch.float32)
    generator = torch.Generator().manual_seed(seed)
    report = apply_plan(model, plan_obj, criterion=criterion, calibration=calib, rescale=rescale,
                        generator=generator)
    finalize(model)
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    atomic_write_bytes(output, buffer.getvalue())
    if as_json:
        print_json(report.to_dict())
        return
    table(None, [("layer", "left"), ("size", "right"), ("planned keep", "right"), ("kept", "right"),
                  ("density", "right"), ("criterion", "left")],
           [[a.name, str(a.size), str(a.planned_keep), str(a.kept), f"{a.density:.4f}", a.criterion]
            for a in report.layers])
    for note in report.notes:
        click.echo(f"note: {note}")
    click.echo(f"pruned state dict written to {output}")
