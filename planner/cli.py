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
    click.option("--seed", type=int, default=0, show_default=True, help="Seed of the sampled rank models."),
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
