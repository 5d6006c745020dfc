"""Export of neuron plans: Torch-Pruning's ``pruning_ratio_dict`` (text only, no torch import).

Torch-Pruning's ratio is *channel sparsity*: the fraction of a layer's output channels (here its
neurons) removed, the matching inputs of the next layer going with them. It keeps
``int(n * (1 - ratio))`` of ``n`` channels (torch_pruning 1.6, ``BasePruner``), so each ratio
written here is the float nearest ``(n - k) / n`` for which that gives back exactly k.
"""

from __future__ import annotations

import json
import math

from planner.errors import PlanFormatError


def channel_ratio(keep: int, n: int) -> float:
    """A ratio r close to (n - keep) / n with int(n * (1 - r)) == keep."""
    r = (n - keep) / n
    for _ in range(64):
        if int(n * (1 - r)) == keep:
            return r
        r = math.nextafter(r, 0.0)
    raise PlanFormatError(f"cannot write keep {keep} of {n} as a channel ratio")  # pragma: no cover


def export_torch_pruning(plan) -> str:
    if not plan.is_neurons:
        raise PlanFormatError("--to torch-pruning exports neuron plans (plan --granularity neurons); "
                              "this plan is per weight")
    hidden, output = plan.layers[:-1], plan.layers[-1]
    names = [layer.name for layer in plan.layers]
    out = [
        "# Torch-Pruning snippet exported by sparsity-planner (neuron plan)",
        f"# keeps {plan.kept} of {plan.prunable} weights; pruning_ratio_dict holds channel sparsity:",
        "# the fraction of each hidden layer's neurons removed (their rows and the next layer's columns).",
        "# Needs `model` (module names as in the plan). Torch-Pruning ranks neurons by its own importance",
        "# (here L2 magnitude); `sparsity-planner apply` ranks them by dpp, greedy-forward, ...",
        "import torch",
        "import torch_pruning as tp",
        "",
        f"_example_inputs = torch.zeros(1, {plan.layers[0].cols})",
        "_ratios = {",
    ]
    for layer in hidden:
        out.append(f"    {json.dumps(layer.name)}: {channel_ratio(layer.keep_neurons, layer.rows)!r},"
                   f"  # keep {layer.keep_neurons} of {layer.rows} neurons")
    out += [
        "}",
        "_pruner = tp.pruner.MetaPruner(",
        "    model, _example_inputs, importance=tp.importance.MagnitudeImportance(p=2),",
        "    pruning_ratio_dict={model.get_submodule(n): r for n, r in _ratios.items()},",
        f"    ignored_layers=[model.get_submodule({json.dumps(output.name)})],",
        ")",
        "_pruner.step()",
        f"_realized = sum(model.get_submodule(n).weight.numel() for n in {json.dumps(names)})",
        f"print(f\"weights: realized {{_realized}}, planned {plan.kept}\")",
        "del _example_inputs, _ratios, _pruner, _realized",
    ]
    return "\n".join(out) + "\n"
