"""``sparsity-planner count-regions``: count the linear regions of a torch MLP on the convex hull
of a few input points."""

from __future__ import annotations

import json

import click

from planner.experiments.regions import METHODS, SOLVERS, RegionsError
from planner.cli.common import FiniteFloat, TimeLimit
from planner.limits import MAX_REGION_SAMPLES, MAX_SEED


def load_points(path: str):
    """The array in ``path`` (.npy, loaded with allow_pickle=False), or a one-line error."""
    import numpy as np

    try:
        arr = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise RegionsError(f"--points file {path} does not exist") from None
    except IsADirectoryError:
        raise RegionsError(f"--points {path} is a directory, not a .npy file") from None
    except (OSError, ValueError, EOFError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise RegionsError(f"cannot read --points {path} as a .npy array: {first}") from None
    if not isinstance(arr, np.ndarray):  # an .npz archive
        names = list(arr.files)
        arr.close()
        raise RegionsError(f"--points {path} is an .npz archive ({', '.join(names) or 'empty'}); "
                           "save one array with np.save")
    return arr


@click.command(name="count-regions")
@click.option("--model", "model_spec", required=True,
              help="package.module:factory returning the MLP (Linear and ReLU layers).")
@click.option("--weights", type=click.Path(dir_okay=False), default=None,
              help="State dict for the model, loaded with torch.load(weights_only=True).")
@click.option("--points", "points_path", required=True, type=click.Path(dir_okay=False),
              help=".npy array of shape (S+1, n0), or (S+1, C, H, W) for a CNN: the hull of these points is "
                   "counted on.")
@click.option("--input-shape", default=None,
              help="The model's input shape without the batch dimension (e.g. 1,6,6); the points are "
                   "reshaped to it (default: the points' own shape).")
@click.option("--method", type=click.Choice(METHODS), default="auto", show_default=True,
              help="walk: exact walk along a segment (2 points); milp: enumeration by MILP (any S); "
                   "auto: walk for 2 points, milp otherwise.")
@click.option("--solver", type=click.Choice(SOLVERS), default="mip", show_default=True,
              help="MILP backend: mip (SCIP) or cbc, both through OR-Tools.")
@click.option("--time-limit", type=TimeLimit(), default=None,
              help="Seconds the MILP enumeration may take; the count is then a lower bound.")
@click.option("--eps", type=FiniteFloat(min=0, max=1, min_open=True, max_open=True), default=1e-6,
              show_default=True, help="Relative margin a region must admit to be counted (MILP).")
@click.option("--samples", type=click.IntRange(0, MAX_REGION_SAMPLES), default=None,
              help="Random points that seed the MILP enumeration (default 5000*S; 0: none).")
@click.option("--seed", type=click.IntRange(0, MAX_SEED), default=0, show_default=True,
              help="Seed of the random points (the count does not depend on it when complete).")
@click.option("--patterns", "with_patterns", is_flag=True, help="Add the activation patterns to --json.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def count_regions_command(model_spec, weights, points_path, input_shape, method, solver, time_limit, eps, samples,
                          seed, with_patterns, as_json):
    """Count the linear regions of an MLP on the convex hull of S+1 input points.

    A region is an activation pattern of the hidden ReLU layers whose inputs meet the hull in
    full dimension S. Prints the count, whether it is complete, and the dense Theorem 1 bound
    with d0 = S for comparison.
    """
    from planner.core.bound import dense_log2_bound
    from planner.experiments.regions import count_regions
    from planner.pruning.model import load_factory, load_weights

    points = load_points(points_path)  # before the model: cheap checks first
    if input_shape is not None:
        import numpy as np

        from planner.cli.common import parse_shape

        shape = parse_shape(input_shape)
        if points.ndim < 2 or int(np.prod(points.shape[1:])) != int(np.prod(shape)):
            raise RegionsError(f"--points has shape {points.shape}, which does not hold points of shape "
                               f"{tuple(shape)}")
        points = points.reshape(points.shape[0], *shape)
    model = load_factory(model_spec)
    if weights is not None:
        load_weights(model, weights)
    result = count_regions(model, points, method=method, solver=solver, time_limit=time_limit, eps=eps,
                           samples=samples, seed=seed)
    sizes = [int(points.reshape(points.shape[0], -1).shape[1]), *result.widths]
    bound_bits = dense_log2_bound(sizes, result.dimension)
    if as_json:
        data = result.to_dict(patterns=with_patterns)
        data["points"] = result.dimension + 1
        data["dense_log2_bound"] = bound_bits
        click.echo(json.dumps(data, indent=2))
        return
    how = result.method if result.solver is None else f"{result.method}, {result.solver}"
    if result.complete:
        click.echo(f"{result.regions} linear regions on the {result.dimension}-dimensional hull of "
                   f"{result.dimension + 1} points ({how}, {result.seconds:.2f} s)")
    else:
        click.echo(f"at least {result.regions} linear regions on the {result.dimension}-dimensional hull of "
                   f"{result.dimension + 1} points: a lower bound, the time limit of {time_limit:g} s stopped "
                   f"the enumeration ({how})")
    click.echo(f"hidden layers {', '.join(result.layer_names)} ({'-'.join(map(str, result.widths))} units); "
               f"dense bound with d0 = {result.dimension}: 2^{bound_bits:.2f} = {2 ** bound_bits:.4g}")
