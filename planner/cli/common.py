"""What the commands share: option sets, argument parsing, the rank cache, progress, output.

Nothing here imports numpy, scipy or torch at module level: ``sparsity-planner --help`` loads
every command module to list it.
"""

from __future__ import annotations

import json

import click

from planner.errors import DensityError

from planner.core import RANK_MODELS
from planner.limits import MAX_SEED, check_time_limit


def parse_densities(text: str, what: str = "--density") -> list[float]:
    """A comma list of densities, each checked to lie in (0, 1]."""
    from planner.core.rank import check_density

    values = []
    for part in text.split(","):
        part = part.strip()
        try:
            values.append(float(part))
        except ValueError:
            raise DensityError(f"{what}: {part!r} is not a number") from None
    return [check_density(v, f"{what} value") for v in values]


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


def make_cache(cache_dir, no_cache):
    """The rank cache the options ask for: none on disk, a directory, or the process default."""
    from planner.core.rank import RankCache

    if no_cache and cache_dir is not None:
        raise click.UsageError("--no-cache and --cache-dir contradict each other: give one")
    if no_cache:
        return RankCache(disk=False)
    if cache_dir is None:
        return None  # the process-wide default
    return RankCache(cache_dir)


class TimeLimit(click.ParamType):
    """Seconds > 0, or ``inf`` for no limit; NaN and non-positive values are refused."""

    name = "seconds"

    def convert(self, value, param, ctx):
        if value is None:
            return None
        from planner.errors import LimitError

        try:
            seconds = check_time_limit(value, param.opts[0] if param else "time limit")
        except LimitError as exc:
            self.fail(str(exc), param, ctx)
        return seconds  # None: no limit


class FiniteFloat(click.FloatRange):
    """A FloatRange that also refuses NaN and infinities (click's range lets NaN through)."""

    def convert(self, value, param, ctx):
        import math

        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{number!r} is not a finite number", param, ctx)
        return number


def _model_kwargs(ctx, param, value):
    """--model-kwargs: a JSON object, kept in the context for :func:`load_model`."""
    if value is None:
        return None
    try:
        kwargs = json.loads(value)
    except ValueError as exc:
        raise click.BadParameter(f"not JSON ({exc})", ctx, param) from None
    if not isinstance(kwargs, dict):
        raise click.BadParameter(f'must be a JSON object like \'{{"num_classes": 10}}\', got {value!r}', ctx, param)
    ctx.meta["planner.model_kwargs"] = kwargs
    return kwargs


def load_model(model_spec, weights):
    from planner.pruning.model import load_factory, load_weights

    ctx = click.get_current_context(silent=True)
    kwargs = None if ctx is None else ctx.meta.get("planner.model_kwargs")
    model = load_factory(model_spec, kwargs)
    if weights is not None:
        load_weights(model, weights)
    return model


def check_output(output, what: str = "output") -> None:
    """Refuse early, before any work, an output file that cannot be written."""
    if output is not None:
        from planner.fileio import check_writable_file

        check_writable_file(output, what)


def progress_bars(enabled: bool, label=None):
    """The command's progress reporter on stderr (see :mod:`planner.progress`), or None."""
    from planner.progress import reporter

    return reporter(enabled, label=label)


def emit_plan(result, output, as_json: bool, printer) -> None:
    """Write the plan to ``output`` (atomically) if given, then print it: its JSON with
    ``as_json``, else ``printer(result)`` and where it was written."""
    if output is not None:
        result.save(output)
    if as_json:
        click.echo(result.to_json(), nl=False)
        return
    printer(result)
    if output is not None:
        click.echo(f"plan written to {output}")


def print_json(obj) -> None:
    click.echo(json.dumps(obj, indent=2, sort_keys=False))


def table(title: str | None, columns: list[tuple[str, str]], rows: list[list[str]]) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=title, box=None, pad_edge=False, header_style="bold")
    for name, justify in columns:
        t.add_column(name, justify=justify)
    for row in rows:
        t.add_row(*row)
    Console(width=max(100, Console().width)).print(t)


def with_options(options):
    def decorate(f):
        for option in reversed(options):
            f = option(f)
        return f

    return decorate


rank_options = [
    click.option("--rank-model", type=click.Choice(RANK_MODELS), default="sampled", show_default=True,
                 help="Estimator of each pruned layer's rank distribution."),
    click.option("--input-dim", type=int, default=None,
                 help="Dimension d0 of the input subspace (default: the input size)."),
    click.option("--seed", type=click.IntRange(0, MAX_SEED), default=0, show_default=True,
                 help="Seed of the sampled rank models."),
    click.option("--cache-dir", type=click.Path(file_okay=False), default=None,
                 help="Rank-distribution cache (default: $SPARSITY_PLANNER_CACHE_DIR or the user cache)."),
    click.option("--no-cache", is_flag=True, help="Do not read or write the on-disk cache."),
]

model_options = [
    click.option("--model", "model_spec", default=None,
                 help="package.module:factory returning an nn.Module (e.g. examples.models:lenet5), or an "
                      "architecture file (.yaml/.json, e.g. examples/archs/lenet5.yaml; docs/cli.md)."),
    click.option("--model-kwargs", default=None, expose_value=False, callback=_model_kwargs, is_eager=False,
                 help='Keyword arguments of the factory as a JSON object, e.g. \'{"num_classes": 100}\'.'),
    click.option("--weights", type=click.Path(dir_okay=False), default=None,
                 help="State dict for the model, loaded with torch.load(weights_only=True)."),
    click.option("--input-shape", default=None,
                 help="Model input shape without the batch dimension, e.g. 1,32,32 (needed for conv models)."),
]
