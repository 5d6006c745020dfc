"""The ``sparsity-planner`` command line: thin commands that parse, call the library, print."""

from __future__ import annotations

import json
import sys
from contextlib import contextmanager

import click

from .errors import DensityError, PlannerError

PROG = "sparsity-planner"


# ------------------------------------------------------------------------------ shared bits


def parse_densities(text: str, what: str = "--density") -> list[float]:
    from .rank import check_density

    values = []
    for part in text.split(","):
        part = part.strip()
        try:
            values.append(float(part))
        except ValueError:
            raise DensityError(f"{what}: {part!r} is not a number") from None
    return [check_density(v, f"{what} value") for v in values]


def _make_cache(cache_dir, no_cache):
    from .rank import RankCache

    if no_cache:
        return RankCache(disk=False)
    if cache_dir is None:
        return None  # the process-wide default
    return RankCache(cache_dir)


@contextmanager
def layer_progress(enabled: bool, n_layers: int, label: str = "rank distributions"):
    """Yields ``callback(layer, done, total)``; draws a bar on stderr when it is a terminal."""
    if not enabled or not sys.stderr.isatty():
        yield None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        transient=True,
    ) as bar:
        tasks: dict[int, int] = {}

        def callback(layer: int, done: int, total: int) -> None:
            if layer not in tasks:
                tasks[layer] = bar.add_task(f"{label}: layer {layer + 1}/{n_layers}", total=total)
            bar.update(tasks[layer], completed=done, total=max(total, done))

        yield callback


def _print_json(obj) -> None:
    click.echo(json.dumps(obj, indent=2, sort_keys=False))


def _table(title: str | None, columns: list[tuple[str, str]], rows: list[list[str]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, box=None, pad_edge=False, header_style="bold")
    for name, justify in columns:
        table.add_column(name, justify=justify)
    for row in rows:
        table.add_row(*row)
    Console(width=max(100, Console().width)).print(table)


common_rank_options = [
    click.option("--rank-model", type=click.Choice(["sampled", "svd", "analytic", "exact"]),
                 default="sampled", show_default=True,
                 help="Estimator of each pruned layer's rank distribution."),
    click.option("--input-dim", type=int, default=None,
                 help="Dimension d0 of the input subspace (default: the input size)."),
    click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True,
                 help="Seed of the sampled rank models."),
    click.option("--cache-dir", type=click.Path(file_okay=False), default=None,
                 help="Rank-distribution cache (default: $SPARSITY_PLANNER_CACHE_DIR or the user cache)."),
    click.option("--no-cache", is_flag=True, help="Do not read or write the on-disk cache."),
]


def with_options(options):
    def decorate(f):
        for option in reversed(options):
            f = option(f)
        return f

    return decorate


# ------------------------------------------------------------------------------ commands


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="sparsity-planner", prog_name=PROG)
def cli() -> None:
    """Plan per-layer sparsity of ReLU networks by the expected number of linear regions."""


@cli.command()
@click.option("--arch", required=True, help="Sizes input,hidden...,output (e.g. 784,300,100,10) or a preset.")
@click.option("--density", default=None, help="Kept fraction p of every hidden layer, or one per hidden layer.")
@click.option("--sweep", default=None, help="Comma list of densities: print the bound at each (all layers alike).")
@with_options(common_rank_options)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of a table.")
def bound(arch, density, sweep, rank_model, input_dim, seed, cache_dir, no_cache, as_json):
    """Expected upper bound on the linear regions of a pruned MLP (Theorem 1)."""
    from .arch import Architecture
    from .bound import expected_bound

    net = Architecture.parse(arch)
    if (density is None) == (sweep is None):
        raise click.UsageError("give exactly one of --density and --sweep")
    cache = _make_cache(cache_dir, no_cache)
    if sweep is not None:
        points = parse_densities(sweep, "--sweep")
        results = []
        with layer_progress(not as_json, len(net.hidden)) as progress:
            for p in points:
                results.append(expected_bound(net, p, rank_model=rank_model, input_dim=input_dim,
                                              seed=seed, cache=cache, progress=progress))
        dense = results[0].dense_log2_bound
        if as_json:
            _print_json({
                "architecture": list(net.sizes), "input_dim": results[0].input_dim,
                "rank_model": rank_model, "seed": seed, "dense_log2_bound": dense,
                "sweep": [{"density": r.layers[0].density, "log2_bound": r.log2_bound,
                           "expected_ranks": [layer.expected_rank for layer in r.layers]} for r in results],
            })
            return
        click.echo(f"architecture {net}  rank model {rank_model} (seed {seed})  d0 = {results[0].input_dim}")
        _table(None, [("density", "right"), ("log2 bound", "right"), ("of dense", "right"),
                      ("expected ranks", "left")],
               [[f"{r.layers[0].density:g}", f"{r.log2_bound:.4f}", f"{100 * r.log2_bound / dense:.1f}%",
                 ", ".join(f"{layer.expected_rank:.1f}" for layer in r.layers)] for r in results])
        click.echo(f"dense log2 bound {dense:.4f}")
        return

    densities = parse_densities(density)
    if len(densities) == 1:
        densities = densities[0]
    with layer_progress(not as_json, len(net.hidden)) as progress:
        report = expected_bound(net, densities, rank_model=rank_model, input_dim=input_dim,
                                seed=seed, cache=cache, progress=progress)
    if as_json:
        _print_json(report.to_dict())
        return
    click.echo(f"architecture {net}  rank model {rank_model} (seed {seed})  d0 = {report.input_dim}")
    _table(None, [("layer", "left"), ("shape", "right"), ("density", "right"), ("expected rank", "right"),
                  ("rank range", "right")],
           [[layer.name, f"{layer.rows}x{layer.cols}", f"{layer.density:g}", f"{layer.expected_rank:.2f}",
             f"{layer.distribution.kmin}..{layer.distribution.kmax}"] for layer in report.layers])
    click.echo(f"log2 bound        {report.log2_bound:.4f}")
    click.echo(f"dense log2 bound  {report.dense_log2_bound:.4f}")


def parse_shape(text: str | None):
    if text is None:
        return None
    try:
        shape = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise click.UsageError(f"--input-shape takes comma-separated integers like 1,32,32, got {text!r}") from None
    if not shape or any(v <= 0 for v in shape):
        raise click.UsageError(f"--input-shape sizes must be positive, got {text!r}")
    return shape


model_options = [
    click.option("--model", "model_spec", default=None,
                 help="package.module:factory returning an nn.Module (e.g. examples.models:lenet5)."),
    click.option("--weights", type=click.Path(dir_okay=False), default=None,
                 help="State dict for the model, loaded with torch.load(weights_only=True)."),
    click.option("--input-shape", default=None,
                 help="Model input shape without the batch dimension, e.g. 1,32,32 (needed for conv models)."),
]


def load_model(model_spec, weights):
    from .torch_model import load_factory, load_weights

    model = load_factory(model_spec)
    if weights is not None:
        load_weights(model, weights)
    return model


@cli.command(name="plan")
@click.option("--arch", default=None, help="Sizes input,hidden...,output (e.g. 784,300,100,10) or a preset.")
@with_options(model_options)
@click.option("--strategy", type=click.Choice(["lr-bound", "uniform", "uniform-plus", "erk", "global", "lamp"]),
              default="lr-bound", show_default=True,
              help="lr-bound maximizes the bound; the others are baselines (global and lamp need --model).")
@click.option("--density", type=float, default=None, help="Global density: kept fraction of the prunable weights.")
@click.option("--keep", type=int, default=None, help="Kept weights (instead of --density).")
@click.option("--solver", default="cpsat", show_default=True, help="cpsat, ortools-mip, pulp or exact.")
@with_options(common_rank_options)
@click.option("--grid", type=int, default=32, show_default=True, help="Candidate keep-counts per layer.")
@click.option("--min-density", type=float, default=None, help="Lowest density any prunable layer may get.")
@click.option("--max-density", type=float, default=None, help="Highest density any prunable layer may get.")
@click.option("--prune-output", is_flag=True, help="Prune the output layer too (at the global density).")
@click.option("--max-flops", type=click.IntRange(min=1), default=None,
              help="Cap on multiply-accumulates per sample of the prunable layers (conv: per output position).")
@click.option("--tie-break", type=click.Choice(["robust", "robust-analytic", "none"]), default="robust",
              show_default=True,
              help="How plans with equal bounds are ordered.")
@click.option("--time-limit", type=float, default=None, help="Seconds the integer program may take.")
@click.option("--threads", type=int, default=1, show_default=True,
              help="Solver threads (1 is deterministic; more may be faster).")
@click.option("--workers", type=int, default=None,
              help="Processes sampling rank distributions (default: every core; same result for any count).")
@click.option("-o", "--output", type=click.Path(dir_okay=False), default=None, help="Write the plan file here.")
@click.option("--json", "as_json", is_flag=True, help="Print the plan file to stdout instead of a table.")
def plan_command(arch, model_spec, weights, input_shape, strategy, density, keep, solver, rank_model, input_dim, seed,
                 cache_dir, no_cache, grid, min_density, max_density, prune_output, max_flops, tie_break, time_limit,
                 threads, workers, output, as_json):
    """Plan per-layer densities that maximize the expected linear-region bound.

    The network is --arch (sizes) or --model (a torch model factory, optionally --weights).
    """
    from .allocate import plan as make_plan
    from .arch import Architecture

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
        from .torch_model import model_layers, model_weights

        model = load_model(model_spec, weights)
        found = model_layers(model, parse_shape(input_shape), prune_output=prune_output)
        net, layers = None, list(found.layers)
        info = {"model": model_spec, "input_size": found.input_size}
        weight_arrays, kernel_shapes = model_weights(model, layers)
    if (density is None) == (keep is None):
        raise click.UsageError("give exactly one of --density and --keep")
    if time_limit is not None and time_limit <= 0:
        raise click.UsageError("--time-limit must be positive")
    if threads < 1:
        raise click.UsageError("--threads must be at least 1")
    if workers is not None and workers < 1:
        raise click.UsageError("--workers must be at least 1")
    if output is not None:
        from pathlib import Path

        parent = Path(output).parent
        if not parent.is_dir():
            raise click.UsageError(f"cannot write {output}: directory {parent} does not exist")
    if strategy != "lr-bound":
        from .baselines import baseline_plan

        if min_density is not None or max_density is not None or max_flops is not None:
            raise click.UsageError("--min-density, --max-density and --max-flops apply to --strategy lr-bound only")
        result = baseline_plan(strategy, net, layers=layers, architecture_info=info, density=density, keep=keep,
                               weights=weight_arrays, kernel_shapes=kernel_shapes, prune_output=prune_output,
                               rank_model=rank_model, input_dim=input_dim, seed=seed,
                               cache=_make_cache(cache_dir, no_cache))
        if output is not None:
            result.save(output)
        if as_json:
            click.echo(result.to_json(), nl=False)
        else:
            print_plan(result)
        return
    with plan_progress(not as_json) as progress:
        result = make_plan(
            net, layers=layers, architecture_info=info, density=density, keep=keep, solver=solver, rank_model=rank_model, grid=grid,
            min_density=min_density, max_density=max_density, prune_output=prune_output,
            max_flops=max_flops, input_dim=input_dim, time_limit=time_limit, threads=threads, seed=seed,
            tie_break=tie_break, workers=workers, cache=_make_cache(cache_dir, no_cache), progress=progress,
        )
    if output is not None:
        result.save(output)
    if as_json:
        click.echo(result.to_json(), nl=False)
        return
    print_plan(result)
    if output is not None:
        click.echo(f"plan written to {output}")


def _fmt_density(d: float) -> str:
    """Four decimals; tiny densities in scientific notation so they do not print as 0.0000."""
    return f"{d:.4f}" if d == 0 or d >= 1e-3 else f"{d:.2e}"


def print_plan(result) -> None:
    obj = result.objective
    arch = result.architecture.get("sizes")
    head = f"architecture {','.join(map(str, arch))}  " if arch else ""
    if "model" in result.architecture:
        head = f"model {result.architecture['model']}  "
    click.echo(f"{head}strategy {result.strategy}  rank model {obj.get('rank_model')} (seed {result.seed})"
               f"  d0 = {result.input_dim}")
    _table(None, [("layer", "left"), ("shape", "right"), ("keep", "right"), ("density", "right"),
                  ("expected rank", "right"), ("", "left")],
           [[layer.name, f"{layer.rows}x{layer.cols}", str(layer.keep), _fmt_density(layer.density),
             "" if layer.expected_rank is None else f"{layer.expected_rank:.2f}",
             "frozen" if layer.frozen else ("" if layer.in_bound else "outside the bound")]
            for layer in result.layers])
    click.echo(f"kept {result.kept} of {result.prunable} prunable weights (density {result.global_density:.4f})")
    if obj.get("log2_bound") is not None:
        click.echo(f"log2 bound          {obj['log2_bound']:.4f}")
    if obj.get("uniform_log2_bound") is not None:
        click.echo(f"uniform log2 bound  {obj['uniform_log2_bound']:.4f}")
    if obj.get("certificate_log2_upper") is not None:
        click.echo(f"certificate         no plan on the grid exceeds {obj['certificate_log2_upper']:.4f} "
                   f"(gap {obj['certificate_gap_bits']:.2f} bits)")
    if result.solver:
        click.echo(f"solver              {result.solver.get('name')} ({result.solver.get('status')})")


@cli.command(name="apply")
@with_options(model_options)
@click.option("--plan", "plan_path", required=True, type=click.Path(dir_okay=False), help="Plan file to apply.")
@click.option("--criterion", type=click.Choice(["magnitude", "random", "elimination-compensation"]),
              default="magnitude", show_default=True, help="Which weights a layer keeps.")
@click.option("--calibration", type=click.Path(dir_okay=False), default=None,
              help=".npy batch of model inputs (elimination-compensation).")
@click.option("--rescale", is_flag=True, help="Multiply surviving weights by 1/sqrt(density).")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True, help="Seed of --criterion random.")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False),
              help="Where to write the pruned, finalized state dict.")
@click.option("--json", "as_json", is_flag=True, help="Print the realized densities as JSON.")
def apply_command(model_spec, weights, input_shape, plan_path, criterion, calibration, rescale, seed, output,
                  as_json):
    """Prune a torch model to a plan and save the finalized state dict."""
    import io

    import numpy as np
    import torch

    from .apply import apply_plan, finalize
    from .fileio import atomic_write_bytes
    from .plan import Plan

    if model_spec is None:
        raise click.UsageError("give --model package.module:factory")
    from pathlib import Path

    if not Path(output).parent.is_dir():
        raise click.UsageError(f"cannot write {output}: directory {Path(output).parent} does not exist")
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
        _print_json(report.to_dict())
        return
    _table(None, [("layer", "left"), ("size", "right"), ("planned keep", "right"), ("kept", "right"),
                  ("density", "right"), ("criterion", "left")],
           [[a.name, str(a.size), str(a.planned_keep), str(a.kept), f"{a.density:.4f}", a.criterion]
            for a in report.layers])
    for note in report.notes:
        click.echo(f"note: {note}")
    click.echo(f"pruned state dict written to {output}")


@cli.command(name="export")
@click.argument("plan_path", type=click.Path(dir_okay=False))
@click.option("--to", "fmt", required=True, type=click.Choice(["nni", "torch-ao", "sparseml", "torch-prune"]),
              help="Target pruner's format.")
@click.option("-o", "--output", type=click.Path(dir_okay=False), default=None, help="Write here instead of stdout.")
def export_command(plan_path, fmt, output):
    """Write a plan in another pruner's configuration format."""
    from .export import export_plan
    from .fileio import atomic_write_text
    from .plan import Plan

    text = export_plan(Plan.load(plan_path), fmt)
    if output is None:
        click.echo(text, nl=False)
    else:
        atomic_write_text(output, text)


@contextmanager
def plan_progress(enabled: bool):
    """Yields ``callback(stage, done, total)`` drawing one bar per stage on a terminal."""
    if not enabled or not sys.stderr.isatty():
        yield None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=Console(stderr=True), transient=True) as bar:
        tasks: dict[str, int] = {}

        def callback(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                tasks[stage] = bar.add_task(stage, total=total)
            bar.update(tasks[stage], completed=done, total=total)

        yield callback


def _register_optional_commands() -> None:
    """Commands that live in their own modules (they import torch only when run)."""
    from .cli_compare import compare_command

    from .cli_regions import count_regions_command

    cli.add_command(compare_command)
    cli.add_command(count_regions_command)


_register_optional_commands()


# ------------------------------------------------------------------------------ entry point


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; bad input is one line on stderr and exit code 2, never a traceback."""
    try:
        rv = cli.main(args=argv, prog_name=PROG, standalone_mode=False)
    except click.exceptions.Abort:
        click.echo(f"{PROG}: aborted", err=True)
        return 130
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.ClickException as exc:
        click.echo(f"{PROG}: error: {exc.format_message()}", err=True)
        return 2
    except PlannerError as exc:
        click.echo(f"{PROG}: error: {exc}", err=True)
        return 2
    except BrokenPipeError:
        return 0
    return rv if isinstance(rv, int) else 0


if __name__ == "__main__":
    sys.exit(main())
