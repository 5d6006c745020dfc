"""``sparsity-planner apply``: prune a torch model to a plan and save the finalized state dict."""

from __future__ import annotations

import click

from planner.cli.common import check_output, load_model, model_options, print_json, table, with_options
from planner.limits import MAX_SEED
from planner.pruning.masks import CRITERIA


@click.command(name="apply")
@with_options(model_options)
@click.option("--plan", "plan_path", required=True, type=click.Path(dir_okay=False), help="Plan file to apply.")
@click.option("--criterion", type=click.Choice(CRITERIA),
              default="magnitude", show_default=True, help="Which weights a layer keeps.")
@click.option("--calibration", type=click.Path(dir_okay=False), default=None,
              help=".npy batch of model inputs (elimination-compensation).")
@click.option("--rescale", is_flag=True, help="Multiply surviving weights by 1/sqrt(density).")
@click.option("--seed", type=click.IntRange(0, MAX_SEED), default=0, show_default=True, help="Seed of --criterion random.")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False),
              help="Where to write the pruned, finalized state dict.")
@click.option("--json", "as_json", is_flag=True, help="Print the realized densities as JSON.")
def apply_command(model_spec, weights, input_shape, plan_path, criterion, calibration, rescale, seed, output,
                  as_json):
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
