"""N:M masks: in every group of M consecutive weights along the input dimension (a Linear's
``in_features``; a Conv2d's flattened in*kh*kw, the order of ``weight.reshape(out, -1)``) the N
of largest magnitude are kept (ties to the lower index).

The density is N/M in every layer the pattern is applied to, whatever the plan says: under
``apply --criterion nm`` the pattern goes to the layers the plan prunes (keep < size) and the
layers it keeps dense (or frozen) stay dense; the report gives every layer's realized count.
When the input dimension is not a multiple of M, the last, shorter group of g weights keeps
min(N, g): after zero padding to a multiple of M it is a valid N:M group, which is how a
semi-structured kernel sees a padded row.

torch.ao reproduces these masks with ``WeightNormSparsifier`` and the configuration of
:func:`torch_ao_config` (``sparsity_level`` 1.0, ``sparse_block_shape`` (1, M),
``zeros_per_block`` M - N) on Linear weights whose input size is a multiple of M (checked by
``tests/test_structured.py``); on a ragged last group torch.ao zeroes M - N of its real
entries instead, and it does not handle 4-D Conv2d weights.

Speed: torch runs 2:4 fast only on CUDA (``torch.sparse.to_sparse_semi_structured``, NVIDIA
Ampere or newer, fp16/bf16/int8 via cuSPARSELt or CUTLASS); on the CPU there is no N:M kernel,
and an N:M-masked weight runs as a dense (or CSR) matrix.
"""

from __future__ import annotations

import re

import numpy as np

from planner.pruning.names import split_weight_name
from planner.errors import PatternError

_PATTERN = re.compile(r"\s*(\d+)\s*:\s*(\d+)\s*")
MAX_M = 1 << 16


def parse_pattern(text) -> tuple[int, int]:
    """``"2:4"`` -> (2, 4); needs 1 <= N <= M."""
    if isinstance(text, (tuple, list)) and len(text) == 2 and all(isinstance(v, int) and not isinstance(v, bool)
                                                                   for v in text):
        n, m = text
    else:
        match = _PATTERN.fullmatch(str(text)) if text is not None else None
        if match is None:
            raise PatternError(f"--pattern takes N:M with integers 1 <= N <= M, like 2:4, got {text!r}")
        n, m = int(match.group(1)), int(match.group(2))
    if not 1 <= n <= m or m > MAX_M:
        raise PatternError(f"--pattern N:M needs 1 <= N <= M <= {MAX_M}, got {n}:{m}")
    return n, m


def nm_mask_2d(w2d, n: int, m: int) -> np.ndarray:
    """Boolean N:M mask of a 2-D weight, groups along axis 1."""
    w = np.abs(np.asarray(w2d, dtype=np.float64))
    rows, cols = w.shape
    groups = -(-cols // m)
    padded = np.full((rows, groups * m), -1.0)  # padding ranks below every real |w|
    padded[:, :cols] = w
    g = padded.reshape(rows, groups, m)
    order = np.argsort(-g, axis=2, kind="stable")
    rank = np.argsort(order, axis=2, kind="stable")
    keep = (rank < n).reshape(rows, groups * m)[:, :cols]
    return np.ascontiguousarray(keep)


def nm_count(rows: int, cols: int, n: int, m: int) -> int:
    """Weights an N:M mask of a rows x cols weight keeps: N per full group of M inputs, min(N, g)
    in a last group of g."""
    return rows * ((cols // m) * n + min(n, cols % m))


def nm_violations(mask, n: int, m: int) -> list[tuple[int, int]]:
    """(row, group) of every group with a count other than min(N, group size)."""
    mk = np.asarray(mask, dtype=bool)
    mk = mk.reshape(mk.shape[0], -1)
    bad = []
    for start in range(0, mk.shape[1], m):
        seg = mk[:, start:start + m]
        want = min(n, seg.shape[1])
        for r in np.flatnonzero(seg.sum(axis=1) != want).tolist():
            bad.append((r, start // m))
    return bad


def compute_nm_masks(pairs, options: dict):
    """{name: bool tensor} for the layers the plan prunes (keep < size), and report notes."""
    import torch

    n, m = parse_pattern(options.get("pattern"))
    masks, notes, dense = {}, [], []
    for layer, module in pairs:
        w = getattr(module, split_weight_name(layer.name)[1]).detach().cpu()
        if layer.keep >= layer.size:
            masks[layer.name] = torch.ones(tuple(w.shape), dtype=torch.bool)
            dense.append(layer.name)
            continue
        mk = nm_mask_2d(w.reshape(w.shape[0], -1).double().numpy(), n, m)
        masks[layer.name] = torch.from_numpy(mk.reshape(tuple(w.shape)))
    notes.append(f"nm {n}:{m} fixes every pruned layer's density at {n}/{m} = {n / m:.4f}; "
                 "the plan chose which layers to prune, not their counts")
    if dense:
        notes.append(f"kept dense as the plan does: {', '.join(dense)}")
    return masks, notes


def torch_ao_config(names, pattern) -> list[dict]:
    """The ``WeightNormSparsifier.prepare`` config reproducing N:M masks on the named Linear layers."""
    n, m = parse_pattern(pattern)
    return [{"tensor_fqn": f"{name}.weight", "sparsity_level": 1.0, "sparse_block_shape": [1, m],
             "zeros_per_block": m - n} for name in names]
