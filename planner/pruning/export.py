"""Export a plan to the configuration formats of other pruners.

Every exporter only writes text: this module imports neither torch, NNI nor SparseML, so
``sparsity-planner export`` works where none of them is installed. The same plan always gives
the same bytes (no timestamps, fixed order: the plan's layer order), and every text ends with a
newline.

Frozen layers are kept dense by the plan, so no export names them: a pruner that is only told
about the listed layers leaves them alone.

The formats, and how exactly each reproduces the plan's per-layer keep-counts:

``nni``
    NNI 3.x ``config_list`` (JSON): one entry per non-frozen layer,
    ``{"op_names": [name], "target_names": ["weight"], "sparse_ratio": s}``. ``op_types`` is
    optional in NNI 3 (documented: without it every module type can be selected, and ``op_names``
    selects the module). ``target_names`` restricts the config to the weight: by default NNI 3
    also attaches a mask to the bias, aligned to the weight's output channels, and the plan
    counts weights only. Use the element-wise ``LevelPruner``; ``L1NormPruner`` prunes whole
    output channels. NNI silently ignores an ``op_names`` entry that names no module.
``torch-ao``
    The ``config`` list for ``torch.ao.pruning.WeightNormSparsifier.prepare(model, config)``
    (JSON): ``{"tensor_fqn": name + ".weight", "sparsity_level": s, "sparse_block_shape": [1, 1],
    "zeros_per_block": 1}``. With 1x1 blocks, every weight is its own block and the sparsifier
    zeroes ``round(sparsity_level * numel)`` of them (torch 2.x ``_make_tensor_mask``), which is
    exactly ``size - keep`` for the ``s`` written here (see :func:`_exact_fraction`). Caveat:
    ``WeightNormSparsifier`` handles 2-D weights (``nn.Linear``) only; on a 4-D ``Conv2d``
    weight its ``step()`` fails (torch 2.13), so a plan with conv layers gives conv entries
    that this sparsifier cannot apply.
``sparseml``
    A SparseML recipe (YAML) with one ``!GMPruningModifier`` whose ``final_sparsity`` maps a
    sparsity to the parameter names to prune to it, and ``params: []`` (SparseML requires an
    empty ``params`` when ``final_sparsity`` is a map). SparseML masks
    ``round(sparsity * numel)`` weights and accepts sparsities in (0, 1) only. A layer's key is
    its sparsity with 4 decimals when that gives its exact count both rounded and truncated, and
    with as few more decimals as needed otherwise; layers with the same key share one entry (in
    order of first appearance). Dense layers are left out (they stay dense); a layer pruned whole
    gets the largest key below 1 that rounds to all its weights. Checked against SparseML 1.8.0
    by ``tests/test_external_pruners.py``.
``torch-prune``
    A Python snippet that, given ``model``, calls
    ``torch.nn.utils.prune.l1_unstructured(module, name="weight", amount=size - keep)`` per
    non-frozen layer. ``amount`` is an integer, the number of weights to prune, so the counts are
    exact.
"""

from __future__ import annotations

import json
import math
from decimal import ROUND_CEILING, ROUND_HALF_EVEN, Decimal, localcontext

from planner.pruning.names import split_weight_name, tensor_fqn
from planner.errors import PlanFormatError
from planner.allocation.planfile import Plan, PlanLayer
from planner.pruning.export_nodes import export_torch_pruning

FORMATS = ("nni", "torch-ao", "sparseml", "torch-prune")
#: formats of neuron plans (planner/pruning/export_nodes.py); FORMATS are the weight plans'
NEURON_FORMATS = ("torch-pruning",)
ALL_FORMATS = FORMATS + NEURON_FORMATS

# SparseML schedule: the values of GMPruningModifier's documented sample recipe. They are the
# training-loop side of the recipe, which the plan knows nothing about: edit them to fit.
SPARSEML_INIT_SPARSITY = 0.05
SPARSEML_START_EPOCH = 0.0
SPARSEML_END_EPOCH = 10.0
SPARSEML_UPDATE_FREQUENCY = 1.0
SPARSEML_KEY_DECIMALS = 4


def export_plan(plan: Plan, to: str) -> str:
    """The text of ``plan`` in the format ``to`` (one of :data:`ALL_FORMATS`)."""
    if not isinstance(to, str) or to not in ALL_FORMATS:
        raise PlanFormatError(f"unknown export format {to!r}; choose one of {', '.join(ALL_FORMATS)}")
    layers = _prunable_layers(plan)
    if (to in NEURON_FORMATS) != plan.is_neurons:
        if to in NEURON_FORMATS:
            raise PlanFormatError(f"--to {to} exports neuron plans (plan --granularity neurons); this plan is per weight")
        raise PlanFormatError(f"--to {to} prunes single weights; a neuron plan exports --to {'|'.join(NEURON_FORMATS)}")
    return _EXPORTERS[to](plan, layers)


# ---------------------------------------------------------------------------- helpers
def _prunable_layers(plan: Plan) -> list[PlanLayer]:
    """The plan's non-frozen layers, in plan order, checked: an export of a broken plan would
    silently prune the wrong amounts."""
    if not isinstance(plan, Plan):
        raise PlanFormatError(f"export needs a Plan, got {type(plan).__name__}")
    seen: set[str] = set()
    for layer in plan.layers:
        if not isinstance(layer.name, str) or not layer.name:
            raise PlanFormatError(f"layer name must be a non-empty string, got {layer.name!r}")
        if layer.name in seen:
            raise PlanFormatError(f"duplicate layer name {layer.name!r}")
        seen.add(layer.name)
        for key in ("rows", "cols", "keep"):
            value = getattr(layer, key)
            if isinstance(value, bool) or not isinstance(value, int):
                raise PlanFormatError(f"layer {layer.name}: '{key}' must be an integer, got {value!r}")
        if layer.rows <= 0 or layer.cols <= 0:
            raise PlanFormatError(f"layer {layer.name}: rows and cols must be positive")
        if not 0 <= layer.keep <= layer.size:
            raise PlanFormatError(f"layer {layer.name}: keep {layer.keep} outside [0, {layer.size}]")
    layers = [layer for layer in plan.layers if not layer.frozen]
    if not layers:
        raise PlanFormatError("every layer of the plan is frozen: there is nothing to export")
    return layers


def _exact_fraction(pruned: int, size: int) -> float:
    """A float ``s`` as close as possible to ``pruned / size`` for which both
    ``int(s * size)`` and ``round(s * size)`` give back ``pruned``: torch.ao's
    WeightNormSparsifier and SparseML round, and the NNI 3 source we could read truncates
    (``int(sparse_ratio * numel)`` in its ratio masks).

    ``pruned / size`` alone is not enough: ``1 / 49 * 49 == 0.9999999999999999``, which a
    truncating consumer turns into 0. Stepping up by a few ulps fixes that without moving ``s``
    off ``pruned / size`` by more than ~1e-15."""
    if pruned == 0:
        return 0.0
    if pruned == size:
        return 1.0
    s = pruned / size
    for _ in range(64):
        if int(s * size) == pruned and round(s * size) == pruned:
            return s
        s = math.nextafter(s, 1.0)
    raise PlanFormatError(f"cannot write {pruned}/{size} as a float that multiplies back exactly")  # pragma: no cover


def _sparsity_key(pruned: int, size: int) -> str:
    """The decimal text of a sparsity for ``pruned`` of ``size`` weights that SparseML accepts
    and that gives the exact count: in (0, 1) (SparseML refuses 0 and 1), with
    ``round(float(key) * size) == pruned`` (how SparseML counts) and, for a layer not pruned
    whole, ``int(float(key) * size) == pruned`` as well, so a consumer that truncates agrees.
    4 decimals when that is enough, else as few more as needed. A layer pruned whole (``pruned ==
    size``) gets the largest such key below 1, which SparseML rounds up to every weight."""
    if not 0 < pruned <= size:
        raise PlanFormatError(f"no SparseML sparsity for {pruned} of {size} weights")  # pragma: no cover
    with localcontext() as ctx:
        ctx.prec = 60
        exact = Decimal(pruned) / Decimal(size)
        for decimals in range(SPARSEML_KEY_DECIMALS, 40):
            step = Decimal(1).scaleb(-decimals)
            candidates = [exact.quantize(step, rounding=ROUND_HALF_EVEN), exact.quantize(step, rounding=ROUND_CEILING)]
            if pruned == size:
                candidates = [Decimal(1) - step]
            for value in candidates:
                text = _decimal_text(value)
                f = float(text)
                if not 0.0 < f < 1.0 or round(f * size) != pruned:
                    continue
                if pruned == size or int(f * size) == pruned:
                    return text
    raise PlanFormatError(f"cannot write {pruned}/{size} as a SparseML sparsity")  # pragma: no cover


def _decimal_text(value: Decimal) -> str:
    """Plain decimal notation with at least one digit after the point (so YAML reads a float)."""
    text = format(value, "f")
    if "." in text:
        text = text.rstrip("0")
        if text.endswith("."):
            text += "0"
    else:
        text += ".0"
    return text


def _quote(name: str) -> str:
    """A double-quoted string literal, valid in JSON, YAML and Python alike."""
    return json.dumps(name)


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _describe(plan: Plan) -> list[str]:
    """Comment lines naming the plan: what it is, what it keeps, what stays dense."""
    arch = plan.architecture or {}
    sizes = arch.get("sizes") if isinstance(arch, dict) else None
    if isinstance(sizes, list) and sizes and all(isinstance(n, int) for n in sizes):
        arch_text = "-".join(str(n) for n in sizes)
    elif arch:
        arch_text = json.dumps(arch, sort_keys=True)
    else:
        arch_text = "(not recorded)"
    lines = [
        f"sparsity-planner plan: strategy {plan.strategy}, architecture {arch_text}",
        f"keeps {plan.kept} of {plan.prunable} prunable weights (global density {plan.global_density:.6g})",
    ]
    if plan.log2_bound is not None:
        lines.append(f"expected linear-region bound: log2 {plan.log2_bound:.6g}")
    frozen = [layer.name for layer in plan.layers if layer.frozen]
    lines.append("frozen, kept dense, not exported: " + (", ".join(frozen) if frozen else "none"))
    return [_one_line(line) for line in lines]


def _json(obj) -> str:
    return json.dumps(obj, indent=2) + "\n"


# ---------------------------------------------------------------------------- exporters
def _export_nni(plan: Plan, layers: list[PlanLayer]) -> str:
    config_list = [
        {
            "op_names": [split_weight_name(layer.name)[0]],
            "target_names": [split_weight_name(layer.name)[1]],
            "sparse_ratio": _exact_fraction(layer.size - layer.keep, layer.size),
        }
        for layer in layers
    ]
    return _json(config_list)


def _export_torch_ao(plan: Plan, layers: list[PlanLayer]) -> str:
    # 1x1 blocks make the sparsity unstructured and the count exact: num_blocks == numel and
    # WeightNormSparsifier zeroes round(sparsity_level * numel) blocks (clamped to numel - 1,
    # which only matters at sparsity 1.0, a case it handles separately by zeroing everything).
    # Larger blocks would round the count to whole blocks (and pad ragged edges).
    config = [
        {
            "tensor_fqn": tensor_fqn(layer.name),
            "sparsity_level": _exact_fraction(layer.size - layer.keep, layer.size),
            "sparse_block_shape": [1, 1],
            "zeros_per_block": 1,
        }
        for layer in layers
    ]
    return _json(config)


def _export_sparseml(plan: Plan, layers: list[PlanLayer]) -> str:
    # SparseML's GMPruningModifier refuses a final_sparsity of 0: dense layers are left out,
    # which leaves them dense.
    dense = [layer.name for layer in layers if layer.keep == layer.size]
    layers = [layer for layer in layers if layer.keep < layer.size]
    if not layers:
        raise PlanFormatError("the plan prunes no layer (every unfrozen layer is dense): a SparseML "
                              "recipe needs a sparsity above 0, so there is nothing to export")
    groups: dict[str, list[str]] = {}
    for layer in layers:
        key = _sparsity_key(layer.size - layer.keep, layer.size)
        groups.setdefault(key, []).append(tensor_fqn(layer.name))
    lowest = min(float(key) for key in groups)
    init_sparsity = min(SPARSEML_INIT_SPARSITY, lowest)
    out = ["# SparseML recipe exported by sparsity-planner"]
    out += [f"# {line}" for line in _describe(plan)]
    out += [
        "# final_sparsity maps each sparsity to the weights pruned to it (SparseML masks",
        "# round(sparsity * numel) weights: each key gives its layers their exact count).",
        "# start_epoch, end_epoch and update_frequency are the documented sample schedule: fit them",
        "# to your training loop.",
    ]
    if dense:
        out.append(f"# kept dense, so not listed (SparseML refuses a sparsity of 0): {', '.join(dense)}")
    if any(layer.keep == 0 for layer in layers):
        out.append("# a key just below 1 prunes a layer whole (SparseML refuses 1 and rounds)")
    modifier = {
        "init_sparsity": init_sparsity,
        "final_sparsity": {float(key): names for key, names in groups.items()},
        "start_epoch": SPARSEML_START_EPOCH,
        "end_epoch": SPARSEML_END_EPOCH,
        "update_frequency": SPARSEML_UPDATE_FREQUENCY,
        "params": [],
        "mask_type": "unstructured",
    }
    return "\n".join(out) + "\n" + _sparseml_yaml({"version": "1.1.0", "modifiers": [modifier]})


def _sparseml_yaml(recipe: dict) -> str:
    """The recipe as YAML (PyYAML, imported here only), the modifier under SparseML's
    ``!GMPruningModifier`` tag, name lists in flow style, keys in insertion order. Floats are
    written as Python's shortest repr, so ``float(key)`` gives back the very float chosen."""
    import yaml

    class _Dumper(yaml.SafeDumper):
        def increase_indent(self, flow=False, indentless=False):
            return super().increase_indent(flow, False)  # "modifiers:\n  - ..." as SparseML's docs

    def modifier(dumper, data):
        return dumper.represent_mapping("!GMPruningModifier", data.items())

    def names(dumper, data):  # ["a.weight", ...]: quoted, so any module name reads back as itself
        return yaml.SequenceNode("tag:yaml.org,2002:seq",
                                 [dumper.represent_scalar("tag:yaml.org,2002:str", n, style='"') for n in data],
                                 flow_style=True)

    class _Modifier(dict):
        pass

    class _Names(list):
        pass

    _Dumper.add_representer(_Modifier, modifier)
    _Dumper.add_representer(_Names, names)
    modifiers = [_Modifier(m, final_sparsity={k: _Names(v) for k, v in m["final_sparsity"].items()})
                 for m in recipe["modifiers"]]
    return yaml.dump(dict(recipe, modifiers=modifiers), Dumper=_Dumper, sort_keys=False, default_flow_style=False,
                     width=10**9, allow_unicode=True)


def _export_torch_prune(plan: Plan, layers: list[PlanLayer]) -> str:
    # Top-level statements only (no helper function): the snippet then runs the same whether it
    # is pasted into a script or a function body, or exec'd with any globals/locals.
    params = [layer.name for layer in layers if split_weight_name(layer.name)[1] != "weight"]
    if params:
        raise PlanFormatError(f"the torch-prune snippet prunes module weights; {params[0]} is an attention "
                              "parameter: export with --to nni or --to torch-ao, or use sparsity-planner apply")
    out = ["# torch.nn.utils.prune snippet exported by sparsity-planner"]
    out += [f"# {line}" for line in _describe(plan)]
    out += [
        "# Needs `model`, an nn.Module whose module names match the plan. amount is the number of",
        "# weights to prune (size - keep), an integer, so every layer keeps exactly its planned count.",
        "# Afterwards, prune.remove(module, \"weight\") makes a layer's pruning permanent.",
        "import torch.nn.utils.prune as prune",
        "",
        "for _name, _size, _amount in (",
    ]
    for layer in layers:
        out.append(
            f"    ({_quote(layer.name)}, {layer.size}, {layer.size - layer.keep}),"
            f"  # keep {layer.keep} of {layer.rows}x{layer.cols}"
        )
    out += [
        "):",
        "    _module = model.get_submodule(_name)",
        "    if _module.weight.numel() != _size:",
        "        raise ValueError(f\"{_name}.weight has {_module.weight.numel()} entries; the plan expects {_size}\")",
        "    prune.l1_unstructured(_module, name=\"weight\", amount=_amount)",
        "del _name, _size, _amount, _module",
    ]
    return "\n".join(out) + "\n"


_EXPORTERS = {
    "nni": _export_nni,
    "torch-ao": _export_torch_ao,
    "sparseml": _export_sparseml,
    "torch-prune": _export_torch_prune,
    "torch-pruning": lambda plan, _layers: export_torch_pruning(plan),
}
