"""``sparsity-planner export``: a plan in another pruner's configuration format."""

from __future__ import annotations

import click

from planner.cli.common import check_output

from planner.pruning.export import ALL_FORMATS


@click.command(name="export")
@click.argument("plan_path", type=click.Path(dir_okay=False))
@click.option("--to", "fmt", required=True, type=click.Choice(ALL_FORMATS),
              help="Target pruner's format.")
@click.option("-o", "--output", type=click.Path(dir_okay=False), default=None, help="Write here instead of stdout.")
def export_command(plan_path, fmt, output):
    """Write a plan in another pruner's configuration format."""
    from planner.pruning.export import export_plan
    from planner.fileio import atomic_write_text
    from planner.allocation.planfile import Plan

    if output is not None:
        import os

        check_output(output)
        if os.path.exists(output) and os.path.exists(plan_path) and os.path.samefile(output, plan_path):
            raise click.UsageError(f"-o {output} is the plan file itself: write the export elsewhere")
    text = export_plan(Plan.load(plan_path), fmt)
    if output is None:
        click.echo(text, nl=False)
    else:
        atomic_write_text(output, text)
