"""How a plan layer's name points at a weight tensor (no torch needed).

A plan layer is usually a module (``classifier.1``): its tensor is ``<name>.weight``. The packed
projections of ``nn.MultiheadAttention`` are parameters, not modules: their plan layers are
named by the parameter itself (``blocks.0.attn.in_proj_weight``), so every pruner can find them.
"""

from __future__ import annotations

#: parameters that are plan layers themselves (nn.MultiheadAttention's input projections)
PARAMETER_LAYERS = ("in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight")


def split_weight_name(name: str) -> tuple[str, str]:
    """(module path, parameter name) of a plan layer: ``("a.b", "weight")`` for ``a.b``,
    ``("a.attn", "in_proj_weight")`` for ``a.attn.in_proj_weight``."""
    head, _, last = name.rpartition(".")
    if last in PARAMETER_LAYERS:
        return head, last
    return name, "weight"


def tensor_fqn(name: str) -> str:
    """The fully qualified name of a plan layer's weight tensor (``a.b.weight``)."""
    module, param = split_weight_name(name)
    return f"{module}.{param}" if module else param
