"""``sparsity-planner bound``: Theorem 1's expected bound at given densities, or a sweep."""

from __future__ import annotations

import click

from planner.cli.common import (load_model, make_cache, model_options, parse_densities, parse_shape, print_json,
                                progress_bars, rank_options, table, with_options)


def layer_label(n_layers: int):
    return lambda layer: f"rank distributions: layer {layer + 1}/{n_layers}"


@click.command(name="bound")
@click.option("--arch", default=None, help="Sizes input,hidden...,output (e.g. 784,300,100,10) or a preset.")
@with_options(model_options)
@click.option("--density", default=None, help="Kept fraction p of every hidden layer, or one per hidden layer "
              "(with --model: one per layer of the bound's chain).")
@click.option("--sweep", default=None, help="Comma list of densities: print the bound at each (all layers alike).")
@with_options(rank_options)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of a table.")
def bound_command(arch, model_spec, weights, input_shape, density, sweep, rank_model, input_dim, seed, cache_dir,
                  no_cache, as_json):
    """Expected upper bound on the linear regions of a pruned MLP or CNN (Theorem 1; convolutions
    through their weighted-cover rank bound, docs/theory.md section 7)."""
    from planner.core.arch import Architecture
    from planner.core.bound import expected_bound

    if (arch is None) == (model_spec is None):
        raise click.UsageError("give exactly one of --arch and --model")
    if (density is None) == (sweep is None):
        raise click.UsageError("give exactly one of --density and --sweep")
    cache = make_cache(cache_dir, no_cache)
    if model_spec is not None:
        if sweep is not None:
            raise click.UsageError("--sweep works with --arch; with --model give --density")
        return _model_bound(model_spec, weights, input_shape, density, rank_model, input_dim, seed, cache, as_json)
    if weights is not None or input_shape is not None:
        raise click.UsageError("--weights and --input-shape go with --model")
    net = Architecture.parse(arch)
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


def _model_bound(model_spec, weights, input_shape, density, rank_model, input_dim, seed, cache, as_json):
    """The bound of a model's ReLU chain (Linear and Conv2d layers) at the given densities."""
    from planner.core.bound import chain_bound
    from planner.errors import DensityError, InputDimError, ModelError
    from planner.pruning.model import model_layers

    model = load_model(model_spec, weights)
    shape = parse_shape(input_shape) or getattr(model, "input_shape", None)  # an architecture file's
    found = model_layers(model, shape)
    chain = [w for w in found.layers if w.in_bound]
    if not chain:
        reasons = "; ".join(f"{w.name}: {w.why}" for w in found.layers[:3] if w.why)
        raise ModelError(f"the model has no ReLU chain the bound covers ({reasons})")
    densities = parse_densities(density)
    if len(densities) == 1:
        densities = densities * len(chain)
    if len(densities) != len(chain):
        raise DensityError(f"got {len(densities)} densities for the {len(chain)} layers of the bound's chain "
                           f"({', '.join(w.name for w in chain)}): give one value or one per layer")
    n0 = found.input_size
    d0 = n0 if input_dim is None else input_dim
    if not 1 <= d0 <= n0:
        raise InputDimError(f"input dimension d0 must be between 1 and the chain's input size {n0}, got {d0}")
    with progress_bars(not as_json, label=layer_label(len(chain))) as progress:
        bits, dense, dists = chain_bound([w.geometry for w in chain], densities, d0, rank_model=rank_model,
                                         seed=seed, cache=cache,
                                         progress=None if progress is None else (lambda i: progress(i, 0, 1)))
    by_name = {w.name: (p, d) for w, p, d in zip(chain, densities, dists)}
    rows = []
    for w in found.layers:
        entry = {"name": w.name, "kind": "conv" if w.conv is not None else "linear", "rows": w.rows,
                 "cols": w.cols, "in_bound": w.in_bound}
        if w.in_bound:
            p, d = by_name[w.name]
            g = w.geometry
            entry.update(units=g.units, hyperplanes=g.hyperplanes, pass_cap=g.cap, density=p,
                         expected_rank=d.expected_rank, rank_support=[d.kmin, d.kmax], rank_samples=d.samples)
            if w.conv is not None:
                entry["geometry"] = w.conv.describe()
        else:
            entry["why"] = w.why or None
        rows.append(entry)
    if as_json:
        print_json({"model": model_spec, "input_shape": None if shape is None else list(shape), "input_dim": d0,
                    "input_size": n0, "rank_model": rank_model, "seed": seed, "log2_bound": bits,
                    "dense_log2_bound": dense, "layers": rows, "notes": list(found.notes)})
        return
    click.echo(f"model {model_spec}  rank model {rank_model} (seed {seed})  d0 = {d0}")
    table(None, [("layer", "left"), ("shape", "right"), ("units", "right"), ("density", "right"),
                 ("expected rank", "right"), ("in bound", "left")],
          [[r["name"], f"{r['rows']}x{r['cols']}", str(r.get("units", "")),
            f"{r['density']:g}" if r["in_bound"] else "", f"{r['expected_rank']:.2f}" if r["in_bound"] else "",
            "yes" if r["in_bound"] else f"no: {r['why']}"] for r in rows])
    click.echo(f"log2 bound        {bits:.4f}")
    click.echo(f"dense log2 bound  {dense:.4f}")
