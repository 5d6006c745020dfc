"""``sparsity-planner apply``: prune a torch model to a plan and save the finalized state dict."""

from __future__ import annotations

import click

from planner.cli.common import (FiniteFloat, check_output, load_model, model_options, print_json, table,
                                with_options)
from planner.limits import MAX_SEED
from planner.pruning.masks import CRITERIA, DATA_CRITERIA
from planner.pruning.nodes import DPP_MODES, NODE_CRITERIA

#: every criterion apply takes: the weight criteria, then the neuron plans' (random serves both)
ALL_CRITERIA = CRITERIA + tuple(c for c in NODE_CRITERIA if c not in CRITERIA)

#: options of the structured criteria (planner.pruning.masks.STRUCTURED): option -> the criterion it needs
STRUCTURED_OPTIONS = {"block": "bcr", "keep_rows": "bcr", "keep_cols": "bcr", "compact": "bcr", "pattern": "nm"}
structured_options = [
    click.option("--block", default=None, help="bcr: block shape RxC, e.g. 16x16 (a Conv2d is out x in*kh*kw)."),
    click.option("--keep-rows", type=float, default=None,
                 help="bcr: fraction of every block's rows kept (the columns then meet the plan's count)."),
    click.option("--keep-cols", type=float, default=None,
                 help="bcr: fraction of every block's columns kept (the rows then meet the plan's count)."),
    click.option("--compact", type=click.Path(dir_okay=False), default=None,
                 help="bcr: also write the compact state dict (kept indices and dense sub-blocks per block)."),
    click.option("--pattern", default=None, help="nm: N:M, e.g. 2:4 (groups of M along the input dimension)."),
]


def structured_settings(criterion, **given) -> dict | None:
    """The options dict of a structured criterion, after refusing options of another criterion."""
    from planner.pruning.bcr import check_fraction, parse_block
    from planner.pruning.nm import parse_pattern

    for key, needs in STRUCTURED_OPTIONS.items():
        if given.get(key) is not None and criterion != needs:
            raise click.UsageError(f"--{key.replace('_', '-')} goes with --criterion {needs}")
    if criterion == "bcr":
        if given.get("block") is None:
            raise click.UsageError("--criterion bcr needs --block RxC (e.g. --block 16x16)")
        r, c = parse_block(given["block"])
        return {"block": f"{r}x{c}", "keep_rows": check_fraction(given.get("keep_rows"), "--keep-rows"),
                "keep_cols": check_fraction(given.get("keep_cols"), "--keep-cols")}
    if criterion == "nm":
        if given.get("pattern") is None:
            raise click.UsageError("--criterion nm needs --pattern N:M (e.g. --pattern 2:4)")
        n, m = parse_pattern(given["pattern"])
        return {"pattern": f"{n}:{m}"}
    return None


@click.command(name="apply")
@with_options(model_options)
@click.option("--plan", "plan_path", required=True, type=click.Path(dir_okay=False), help="Plan file to apply.")
@click.option("--criterion", type=click.Choice(ALL_CRITERIA),
              default="magnitude", show_default=True, help="Which weights a layer keeps.")
@click.option("--calibration", type=click.Path(dir_okay=False), default=None,
              help=".npy batch of model inputs (elimination-compensation; gradient and undecayed with --labels).")
@click.option("--rescale", is_flag=True, help="Multiply surviving weights by 1/sqrt(density).")
@click.option("--seed", type=click.IntRange(0, MAX_SEED), default=0, show_default=True, help="Seed of --criterion random.")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False),
              help="Where to write the pruned, finalized state dict.")
@click.option("--json", "as_json", is_flag=True, help="Print the realized densities as JSON.")
@with_options(structured_options)
@click.option("--labels", type=click.Path(dir_okay=False), default=None,
              help=".npy labels of the calibration batch: gradient and undecayed; neuron plans (greedy-forward then "
                   "minimizes cross-entropy).")
@click.option("--dataset", default=None,
              help="gradient, undecayed: calibrate on a dataset's training split instead of --calibration/--labels: "
                   "digits (built in), mnist, fashion-mnist, cifar10 (from --data-dir).")
@click.option("--data-dir", type=click.Path(file_okay=False), default=None,
              help="Directory holding the files of --dataset (nothing is downloaded).")
@click.option("--samples", type=click.IntRange(min=1), default=None,
              help="gradient, undecayed: use the first N calibration examples (default: all of --calibration, "
                   "the first 2048 of a dataset).")
@click.option("--weight-decay", type=FiniteFloat(min=0), default=None,
              help="undecayed: eps, the weight decay the model was trained with [default: 0, which ranks as gradient].")
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
                  as_json, **extra):
    """Prune a torch model to a plan and save the finalized state dict."""
    import io

    import numpy as np
    import torch

    from planner.pruning.masks import apply_plan, finalize
    from planner.fileio import atomic_write_bytes
    from planner.allocation.planfile import Plan

    if model_spec is None:
        raise click.UsageError("give --model package.module:factory")
    structured = {k: extra.pop(k) for k in STRUCTURED_OPTIONS}
    data = {k: extra.pop(k) for k in ("dataset", "data_dir", "samples", "weight_decay")}
    node_options = extra
    options = structured_settings(criterion, **structured)
    check_output(output)
    if structured["compact"] is not None:
        check_output(structured["compact"], "--compact file")
    _check_data_options(criterion, data)
    plan_obj = Plan.load(plan_path)
    model = load_model(model_spec, weights)
    if plan_obj.is_neurons:
        if criterion in DATA_CRITERIA or any(data[k] is not None for k in data):
            raise click.UsageError("--dataset, --data-dir, --samples and --weight-decay go with --criterion gradient "
                                   "or undecayed on a weight plan; this plan keeps neurons")
        from planner.cli.nodes import apply_neurons

        return apply_neurons(click.get_current_context(), model=model, plan=plan_obj, criterion=criterion,
                             calibration=calibration, labels=node_options.pop("labels"), seed=seed, output=output,
                             as_json=as_json, node_options=node_options)
    from planner.cli.nodes import refuse_node_options

    refuse_node_options(click.get_current_context(), criterion)
    calib = labels = None
    if criterion in DATA_CRITERIA:
        from planner.cli.sensitivity import load_calibration

        X, y, _ = load_calibration(calibration, node_options.get("labels"), data["dataset"], data["data_dir"],
                                   data["samples"])
        calib, labels = _as_batch(X, y, input_shape)
    elif calibration is not None:
        try:
            calib = np.load(calibration, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise click.UsageError(f"cannot read --calibration {calibration}: {exc}") from None
        if calib.dtype.kind not in "fiu":
            raise click.UsageError(f"--calibration must hold numbers, got dtype {calib.dtype}")
        calib = torch.as_tensor(calib, dtype=torch.float32)
    generator = torch.Generator().manual_seed(seed)
    report = apply_plan(model, plan_obj, criterion=criterion, calibration=calib, rescale=rescale,
                        generator=generator, options=options, labels=labels,
                        weight_decay=data["weight_decay"] or 0.0)
    compact = None
    if structured["compact"] is not None:
        from planner.pruning.bcr import compact_state_dict

        compact = io.BytesIO()
        torch.save(compact_state_dict(model, options["block"]), compact)
    finalize(model)
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    atomic_write_bytes(output, buffer.getvalue())
    if compact is not None:
        atomic_write_bytes(structured["compact"], compact.getvalue())
    if as_json:
        print_json(report.to_dict())
        return
    table(None, [("layer", "left"), ("size", "right"), ("planned keep", "right"), ("kept", "right"),
                  ("density", "right"), ("criterion", "left")],
           [[a.name, str(a.size), str(a.planned_keep), str(a.kept), f"{a.density:.4f}", a.criterion]
            for a in report.layers])
    for note in report.notes:
        click.echo(f"note: {note}")
    if options is not None:
        click.echo(f"kept {sum(a.kept for a in report.layers)} weights, {sum(a.planned_keep for a in report.layers)} "
                   f"planned ({criterion} {options.get('block') or options.get('pattern')})")
    click.echo(f"pruned state dict written to {output}")
    if compact is not None:
        click.echo(f"compact BCR state dict written to {structured['compact']}")


def _check_data_options(criterion, data) -> None:
    """--dataset/--data-dir/--samples go with gradient and undecayed, --weight-decay with undecayed."""
    if criterion not in DATA_CRITERIA:
        for key in ("dataset", "data_dir", "samples"):
            if data[key] is not None:
                raise click.UsageError(f"--{key.replace('_', '-')} goes with --criterion gradient or undecayed")
    if data["weight_decay"] is not None and criterion != "undecayed":
        raise click.UsageError("--weight-decay is the eps of --criterion undecayed")


def _as_batch(X, y, input_shape=None):
    """The calibration inputs (reshaped to ``--input-shape`` when it is given) and labels as
    tensors, after checking their types and lengths."""
    import numpy as np
    import torch

    from planner.cli.common import parse_shape

    X, y = np.asarray(X), np.asarray(y)
    shape = parse_shape(input_shape)
    if shape is not None:
        if len(X) and X[0].size != int(np.prod(shape)):
            raise click.UsageError(f"--calibration examples have {X[0].size} values, --input-shape {input_shape} "
                                   f"needs {int(np.prod(shape))}")
        X = X.reshape(len(X), *shape)
    if X.dtype.kind not in "fiu":
        raise click.UsageError(f"--calibration must hold numbers, got dtype {X.dtype}")
    if y.dtype.kind not in "iu" or y.ndim != 1:
        raise click.UsageError(f"--labels must be a vector of integer classes, got dtype {y.dtype} shape {y.shape}")
    if len(y) != len(X):
        raise click.UsageError(f"--labels has {len(y)} labels for {len(X)} calibration inputs")
    return torch.as_tensor(X, dtype=torch.float32), torch.as_tensor(y, dtype=torch.int64)
