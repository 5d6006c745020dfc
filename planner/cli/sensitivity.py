"""``sparsity-planner sensitivity``: measure what pruning each layer alone costs on a calibration set."""

from __future__ import annotations

import click

from planner.cli.common import check_output, load_model, model_options, progress_bars, table, with_options
from planner.limits import MAX_SEED, MAX_THREADS

#: densities shown in the summary table (the full table goes to -o / --csv)
SUMMARY_DENSITIES = (0.5, 0.25, 0.1, 0.05, 0.02, 0.01)
DEFAULT_SAMPLES = 2048

data_options = [
    click.option("--calibration", type=click.Path(dir_okay=False), default=None,
                 help=".npy array of calibration inputs (with --labels)."),
    click.option("--labels", type=click.Path(dir_okay=False), default=None,
                 help=".npy vector of integer labels of --calibration."),
    click.option("--dataset", default=None,
                 help="Calibrate on a dataset's training split instead: digits (built in), mnist, fashion-mnist, "
                      "cifar10 (from --data-dir)."),
    click.option("--data-dir", type=click.Path(file_okay=False), default=None,
                 help="Directory holding the files of --dataset (nothing is downloaded)."),
    click.option("--samples", type=click.IntRange(min=1), default=None,
                 help=f"Use the first N calibration examples (default: all of --calibration, "
                      f"the first {DEFAULT_SAMPLES} of a dataset)."),
]


def load_calibration(calibration, labels, dataset, data_dir, samples):
    """(X, y, description) from --calibration/--labels or --dataset; usage errors otherwise."""
    import numpy as np

    if (calibration is None) == (dataset is None):
        raise click.UsageError("give --calibration X.npy --labels y.npy, or --dataset NAME")
    if calibration is not None:
        if labels is None:
            raise click.UsageError("--calibration needs --labels y.npy (the classes of its examples)")
        arrays = []
        for path, what in ((calibration, "--calibration"), (labels, "--labels")):
            try:
                arrays.append(np.load(path, allow_pickle=False))
            except (OSError, ValueError) as exc:
                raise click.UsageError(f"cannot read {what} {path}: {exc}") from None
        X, y = arrays
        n = len(X) if samples is None else min(samples, len(X))
        return X[:n], y[:n], {"calibration": str(calibration), "labels": str(labels), "samples": int(n)}
    if labels is not None:
        raise click.UsageError("--labels goes with --calibration; --dataset brings its own labels")
    from planner.experiments.data import load_dataset

    X, y, _, _ = load_dataset(dataset, data_dir)
    n = min(DEFAULT_SAMPLES if samples is None else samples, len(X))
    return X[:n], y[:n], {"dataset": str(dataset), "split": "train", "samples": int(n)}


def measure_from_options(model_spec, weights, input_shape, calibration, labels, dataset, data_dir, samples,
                         criterion, steps, min_density, seed, cache_dir, no_cache, show_progress, *,
                         executor="local", n_jobs=None, address=None, work_dir=None, chunk=None, threads=1):
    """The sensitivity table the options describe (cached in the rank cache's directory)."""
    from planner.cli.common import make_cache, parse_shape
    from planner.core.rank import default_cache
    from planner.pruning.sensitivity import measure_sensitivity

    if model_spec is None:
        raise click.UsageError("give --model package.module:factory (and --weights, the trained state dict)")
    cache = (make_cache(cache_dir, no_cache) or default_cache()).disk  # the rank cache's directory
    X, y, source = load_calibration(calibration, labels, dataset, data_dir, samples)
    model = load_model(model_spec, weights)
    ctx = click.get_current_context(silent=True)
    kwargs = None if ctx is None else ctx.meta.get("planner.model_kwargs")
    source = {"model": model_spec, "weights": None if weights is None else str(weights), **source}
    more = {} if chunk is None else {"chunk": chunk}
    with progress_bars(show_progress) as progress:
        return measure_sensitivity(model, X, y, criterion=criterion, steps=steps, min_density=min_density,
                                   seed=seed, input_shape=parse_shape(input_shape), cache=cache, source=source,
                                   progress=progress, executor=executor, n_jobs=n_jobs, address=address,
                                   work_dir=work_dir, threads=threads, factory=(model_spec, kwargs), **more)


def measure_options():
    from planner.allocation.sensitivity import DEFAULT_MIN_DENSITY, DEFAULT_STEPS
    from planner.cli.common import FiniteFloat

    return [
        click.option("--criterion", type=click.Choice(("magnitude", "random")), default="magnitude",
                     show_default=True, help="Which weights the pruned layer keeps."),
        click.option("--steps", type=click.IntRange(1, 64), default=DEFAULT_STEPS, show_default=True,
                     help="Measured keep-counts per halving of the density."),
        click.option("--min-density", "sens_min_density", type=FiniteFloat(min=1e-9, max=1.0),
                     default=DEFAULT_MIN_DENSITY, show_default=True, help="Lowest density measured."),
    ]


@click.command(name="sensitivity")
@with_options(model_options)
@with_options(data_options)
@with_options(measure_options())
@click.option("--seed", type=click.IntRange(0, MAX_SEED), default=0, show_default=True,
              help="Seed of --criterion random.")
@click.option("--cache-dir", type=click.Path(file_okay=False), default=None,
              help="Cache directory (default: $SPARSITY_PLANNER_CACHE_DIR or the user cache).")
@click.option("--no-cache", is_flag=True, help="Do not read or write the on-disk cache.")
@click.option("--executor", type=click.Choice(("local", "ray")), default="local", show_default=True,
              help="Where the measurement jobs run: processes of this machine, or Ray tasks.")
@click.option("--jobs", "n_jobs", type=click.IntRange(1, MAX_THREADS), default=None,
              help="Jobs at once [default: 1 with local (in this process); every CPU of the Ray cluster].")
@click.option("--address", default=None,
              help="Ray cluster to join: auto, HOST:PORT or ray://HOST:10001 [default: a local Ray instance].")
@click.option("--work-dir", type=click.Path(file_okay=False), default=None,
              help="Keep every finished job here (one file each, written atomically); a rerun with the same "
                   "model, data and settings skips them.")
@click.option("--chunk", type=click.IntRange(min=1), default=None,
              help="Keep-counts measured per job (one job per layer and run of that many keep-counts) "
                   "[default: 8; 1: one job per layer and keep-count].")
@click.option("--threads", type=click.IntRange(1, MAX_THREADS), default=1, show_default=True,
              help="torch threads per job (small layers: one is fastest).")
@click.option("-o", "--output", type=click.Path(dir_okay=False), default=None,
              help="Write the table (JSON, for plan --sensitivity) here.")
@click.option("--csv", "csv_path", type=click.Path(dir_okay=False), default=None,
              help="Write the table as CSV (one row per layer and keep-count).")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False), default=None,
              help="Plot loss increase against density per layer (PNG, needs matplotlib).")
@click.option("--json", "as_json", is_flag=True, help="Print the table as JSON.")
def sensitivity_command(model_spec, weights, input_shape, calibration, labels, dataset, data_dir, samples, criterion,
                        steps, sens_min_density, seed, executor, n_jobs, address, work_dir, chunk, threads, cache_dir,
                        no_cache, output, csv_path, plot_path, as_json):
    """Measure each layer's sensitivity: the calibration loss and accuracy with only that layer
    pruned, at every measured keep-count (densities 1, 2^(-1/steps), ... down to --min-density).

    The table feeds plan --objective sensitivity (--sensitivity FILE).
    """
    for path, what in ((output, "output"), (csv_path, "--csv"), (plot_path, "--plot")):
        check_output(path, what)
    if address is not None and executor != "ray":
        raise click.UsageError("--address is for --executor ray")
    if executor == "ray":
        from planner.experiments.executor import ray_available

        if not ray_available():
            raise click.UsageError("--executor ray needs Ray: pip install 'sparsity-planner[ray]'")
    if work_dir is not None:
        from planner.fileio import check_writable_dir

        check_writable_dir(work_dir, "--work-dir directory")
    result = measure_from_options(model_spec, weights, input_shape, calibration, labels, dataset, data_dir, samples,
                                  criterion, steps, sens_min_density, seed, cache_dir, no_cache, not as_json,
                                  executor=executor, n_jobs=n_jobs, address=address, work_dir=work_dir, chunk=chunk,
                                  threads=threads)
    if output is not None:
        result.save(output)
    if csv_path is not None:
        from planner.fileio import atomic_write_text

        atomic_write_text(csv_path, result.to_csv())
    if plot_path is not None:
        plot_sensitivity(result, plot_path)
    if as_json:
        click.echo(result.to_json(), nl=False)
        return
    print_summary(result)
    for path, what in ((output, "table"), (csv_path, "CSV"), (plot_path, "plot")):
        if path is not None:
            click.echo(f"{what} written to {path}")


def print_summary(result) -> None:
    click.echo(f"dense loss {result.dense_loss:.4f}  accuracy {result.dense_accuracy:.4f}  "
               f"({result.samples} calibration examples, criterion {result.criterion})")
    columns = [("layer", "left"), ("shape", "right")] + [(f"d={d:g}", "right") for d in SUMMARY_DENSITIES]
    rows = []
    for layer in result.layers:
        cells = []
        for d in SUMMARY_DENSITIES:
            k = max(1, int(round(d * layer.size)))
            cells.append(f"{result.increase(layer.name, k):+.4f}" if layer.keeps[0] <= k <= layer.keeps[-1] else "")
        rows.append([layer.name, f"{layer.rows}x{layer.cols}", *cells])
    click.echo("loss increase with only that layer pruned to density d:")
    table(None, columns, rows)


def plot_sensitivity(result, path) -> None:
    from matplotlib.figure import Figure  # no pyplot: no global backend state

    from planner.experiments.report import _figure_bytes
    from planner.fileio import atomic_write_bytes

    fig = Figure(figsize=(7, 4.5), layout="constrained")
    ax = fig.add_subplot()
    for layer in result.layers:
        ax.plot([k / layer.size for k in layer.keeps], [v - result.dense_loss for v in layer.loss], marker=".",
                label=f"{layer.name} ({layer.rows}x{layer.cols})")
    ax.set_xscale("log")
    ax.set_xlabel("density of the pruned layer (the others dense)")
    ax.set_ylabel("calibration loss increase")
    ax.set_title(f"layer sensitivity ({result.criterion}, {result.samples} examples)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    atomic_write_bytes(path, _figure_bytes(fig))
