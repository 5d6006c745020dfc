"""``sparsity-planner bound``: Theorem 1's expected bound at given densities, or a sweep."""

from __future__ import annotations

import click

from planner.cli.common import make_cache, parse_densities, print_json, progress_bars, rank_options, table, with_options


def layer_label(n_layers: int):
    return lambda layer: f"rank distributions: layer {layer + 1}/{n_layers}"


@click.command(name="bound")
@click.option("--arch", required=True, help="Sizes input,hidden...,output (e.g. 784,300,100,10) or a preset.")
@click.option("--density", default=None, help="Kept fraction p of every hidden layer, or one per hidden layer.")
@click.option("--sweep", default=None, help="Comma list of densities: print the bound at each (all layers alike).")
@with_options(rank_options)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of a table.")
def bound_command(arch, density, sweep, rank_model, input_dim, seed, cache_dir, no_cache, as_json):
    """Expected upper bound on the linear regions of a pruned MLP (Theorem 1)."""
    from planner.core.arch import Architecture
    from planner.core.bound import expected_bound

    net = Architecture.parse(arch)
    if (density is None) == (sweep is None):
        raise click.UsageError("give exactly one of --density and --sweep")
    cache = make_cache(cache_dir, no_cache)
    if sweep is not None:
        points = parse_densities(sweep, "--sweep")
        results = []
        with progress_bars(not as_json, label=layer_label(len(net.hidden))) as progress:
            for p in points:
                results.append(expected_bound(net, p, rank_model=rank_model, input_dim=input_dim,
                                              seed=seed, cache=cache, progress=progress))
        dense = results[0].dense_log2_bound
        if as_json:
            print_json({
                "architecture": list(net.sizes), "input_dim": results[0].input_dim,
                "rank_model": rank_model, "seed": seed, "dense_log2_bound": dense,
                "sweep": [{"density": r.layers[0].density, "log2_bound": r.log2_bound,
                           "expected_ranks": [layer.expected_rank for layer in r.layers]} for r in results],
            })
            return
        click.echo(f"architecture {net}  rank model {rank_model} (seed {seed})  d0 = {results[0].input_dim}")
        table(None, [("density", "right"), ("log2 bound", "right"), ("of dense", "right"),
                      ("expected ranks", "left")],
               [[f"{r.layers[0].density:g}", f"{r.log2_bound:.4f}", f"{100 * r.log2_bound / dense:.1f}%",
                 ", ".join(f"{layer.expected_rank:.1f}" for layer in r.layers)] for r in results])
        click.echo(f"dense log2 bound {dense:.4f}")
        return

    densities = parse_densities(density)
    if len(densities) == 1:
        densities = densities[0]
    with progress_bars(not as_json, label=layer_label(len(net.hidden))) as progress:
        report = expected_bound(net, densities, rank_model=rank_model, input_dim=input_dim,
                                seed=seed, cache=cache, progress=progress)
    if as_json:
        print_json(report.to_dict())
        return
    click.echo(f"architecture {net}  rank model {rank_model} (seed {seed})  d0 = {report.input_dim}")
    table(None, [("layer", "left"), ("shape", "right"), ("density", "right"), ("expected rank", "right"),
                  ("rank range", "right")],
           [[layer.name, f"{layer.rows}x{layer.cols}", f"{layer.density:g}", f"{layer.expected_rank:.2f}",
             f"{layer.distribution.kmin}..{layer.distribution.kmax}"] for layer in report.layers])
    click.echo(f"log2 bound        {report.log2_bound:.4f}")
    click.echo(f"dense log2 bound  {report.dense_log2_bound:.4f}")
