"""Block-based column-row (BCR) masks (GRIM, Niu et al.): a weight matrix (a Conv2d viewed as
out x in*kh*kw) is cut into R x C blocks (the last block row and column may be smaller), and
inside every block whole rows and whole columns are pruned, so each block's survivors form a
dense r x c sub-matrix.

Which rows and columns: a block's rows are ranked by their L2 norm inside the block, its
columns likewise (ties to the lower index); a block keeping r rows and c columns keeps the top
r rows and the top c columns, r * c weights.

How many per block (:func:`allocate`): the layer must keep the plan's count K, and a block can
only keep a product r * c. The per-block (r, c) maximize the kept squared norm
sum_b ||W_b[top r_b, top c_b]||^2 subject to sum_b r_b c_b = K, a multiple-choice knapsack:

* with few blocks (at most :data:`DP_BLOCKS`, and a small enough table) an exact dynamic
  program over blocks and kept counts solves it: the count is K whenever some choice of
  products sums to K, else the nearest count that one does (ties: the lower);
* otherwise a Lagrangian relaxation first (every block independently maximizes
  value - lambda * count; lambda bisected until the total brackets K; by Everett's theorem each
  such solution is optimal for its own total), blocks that change between the two bracketing
  solutions are moved one by one while the total stays <= K, and then the exact dynamic program
  re-chooses the :data:`DP_BLOCKS` blocks nearest indifference (smallest Lagrangian regret) to
  close the remaining gap, the other blocks keeping their Lagrangian choice.

``keep_rows`` / ``keep_cols`` (fractions in (0, 1]) fix the rows (columns) every block keeps,
round(f * height) at least 1, and leave the other side to the allocation; with both fixed the
count is what they give and the plan's count is not used.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np

from planner.pruning.names import split_weight_name
from planner.errors import PatternError

#: blocks re-chosen by the exact dynamic program (all of them when a layer has no more)
DP_BLOCKS = 64
#: largest dynamic-programming table (options x counts) the allocation builds
DP_CELLS = 40_000_000
#: bisection steps of the Lagrangian multiplier
BISECTION_STEPS = 60

_BLOCK = re.compile(r"\s*(\d+)\s*[xX]\s*(\d+)\s*")


def parse_block(text) -> tuple[int, int]:
    """``"16x16"`` -> (16, 16); a tuple of two positive ints passes through."""
    if isinstance(text, (tuple, list)) and len(text) == 2 and all(isinstance(v, int) and not isinstance(v, bool)
                                                                   for v in text):
        r, c = text
    else:
        m = _BLOCK.fullmatch(str(text)) if text is not None else None
        if m is None:
            raise PatternError(f"--block takes RxC with positive integers, like 16x16, got {text!r}")
        r, c = int(m.group(1)), int(m.group(2))
    if r < 1 or c < 1 or r > 1 << 16 or c > 1 << 16:
        raise PatternError(f"block sides must lie in 1..65536, got {r}x{c}")
    return r, c


def check_fraction(value, what: str):
    if value is None:
        return None
    try:
        f = float(value)
    except (TypeError, ValueError):
        raise PatternError(f"{what} must be a number in (0, 1], got {value!r}") from None
    if not (0.0 < f <= 1.0):
        raise PatternError(f"{what} must lie in (0, 1], got {value!r}")
    return f


def _fixed(fraction: float | None, side: int) -> int | None:
    if fraction is None:
        return None
    return min(side, max(1, math.floor(fraction * side + 0.5)))


# ------------------------------------------------------------------------------ blocks


@dataclass
class _Group:
    """The blocks of one shape (h x w): their indices, options and values."""

    h: int
    w: int
    blocks: np.ndarray          # block indices (row-major over the block grid)
    counts: np.ndarray          # (n_options,) distinct kept counts, ascending, counts[0] == 0
    pair_r: np.ndarray          # (n_blocks, n_options) rows of each block's best pair per count
    pair_c: np.ndarray
    values: np.ndarray          # (n_blocks, n_options) kept squared norm


def _grid(shape2d, block):
    rows, cols = shape2d
    R, C = block
    return -(-rows // R), -(-cols // C)


def _blocked(w2d: np.ndarray, block) -> np.ndarray:
    """(nbr * nbc, R, C) zero-padded blocks, row-major over the block grid."""
    rows, cols = w2d.shape
    R, C = block
    nbr, nbc = _grid(w2d.shape, block)
    padded = np.zeros((nbr * R, nbc * C), dtype=np.float64)
    padded[:rows, :cols] = w2d
    return padded.reshape(nbr, R, nbc, C).transpose(0, 2, 1, 3).reshape(nbr * nbc, R, C)


def _orders(blocks: np.ndarray):
    """Row and column ranks inside every block (0 = largest L2 norm; ties to the lower index;
    the zero padding ranks after every real row of the same norm, being at higher indices)."""
    sq = blocks * blocks
    row_order = np.argsort(-sq.sum(axis=2), axis=1, kind="stable")
    col_order = np.argsort(-sq.sum(axis=1), axis=1, kind="stable")
    return row_order, col_order


def _groups(w2d: np.ndarray, block, keep_rows, keep_cols):
    rows, cols = w2d.shape
    R, C = block
    nbr, nbc = _grid(w2d.shape, block)
    blocks = _blocked(w2d, block)
    row_order, col_order = _orders(blocks)
    sorted_sq = np.take_along_axis(blocks * blocks, row_order[:, :, None], axis=1)
    sorted_sq = np.take_along_axis(sorted_sq, col_order[:, None, :], axis=2)
    # prefix[b, r, c]: squared norm of the top r rows x top c columns of block b
    prefix = np.zeros((len(blocks), R + 1, C + 1))
    prefix[:, 1:, 1:] = sorted_sq.cumsum(axis=1).cumsum(axis=2)
    heights = np.minimum(R, rows - np.arange(nbr) * R)
    widths = np.minimum(C, cols - np.arange(nbc) * C)
    shape_of = {}
    for i in range(nbr):
        for j in range(nbc):
            shape_of.setdefault((int(heights[i]), int(widths[j])), []).append(i * nbc + j)
    groups = []
    for (h, w), idx in sorted(shape_of.items()):
        idx = np.asarray(idx, dtype=np.int64)
        fr, fc = _fixed(keep_rows, h), _fixed(keep_cols, w)
        rs = [fr] if fr is not None else range(1, h + 1)
        cs = [fc] if fc is not None else range(1, w + 1)
        pairs = [(0, 0)] + [(r, c) for r in rs for c in cs]
        if fr is not None and fc is not None:
            pairs = [(fr, fc)]  # both sides fixed: one option, the count follows
        pr = np.array([p[0] for p in pairs])
        pc = np.array([p[1] for p in pairs])
        kk = pr * pc
        counts = np.unique(kk)
        vals = prefix[idx][:, pr, pc]                      # (n_blocks, n_pairs)
        best_r = np.zeros((len(idx), len(counts)), dtype=np.int64)
        best_c = np.zeros_like(best_r)
        best_v = np.zeros((len(idx), len(counts)))
        for o, k in enumerate(counts):
            cand = np.flatnonzero(kk == k)
            pick = cand[np.argmax(vals[:, cand], axis=1)]
            best_r[:, o], best_c[:, o] = pr[pick], pc[pick]
            best_v[:, o] = vals[np.arange(len(idx)), pick]
        groups.append(_Group(h, w, idx, counts, best_r, best_c, best_v))
    return groups, row_order, col_order


# ------------------------------------------------------------------------------ allocation


def _lagrange_choice(groups, lam):
    """Per group, each block's option maximizing value - lam * count (ties: the larger count)."""
    out = []
    for g in groups:
        score = g.values - lam * g.counts[None, :]
        # the last maximum: reverse, argmax, map back
        rev = score[:, ::-1]
        out.append(len(g.counts) - 1 - np.argmax(rev, axis=1))
    return out


def _total(groups, choice):
    return int(sum(int(g.counts[c].sum()) for g, c in zip(groups, choice)))


def _dp(options, target):
    """Exact multiple-choice knapsack: ``options`` is a list of (counts, values) per block; the
    choice (option index per block) of the largest total value whose total count is ``target``,
    or the nearest reachable total (ties: the lower). Returns (choice, total)."""
    if len(options) == 1:
        counts, values = options[0]
        dist = np.abs(counts - target)
        best = np.flatnonzero(dist == dist.min())
        best = best[counts[best] == counts[best].min()] if len(best) > 1 else best
        return [int(best[0])], int(counts[best[0]])
    size = int(sum(int(c.max()) for c, _ in options)) + 1
    dp = np.full(size, -np.inf)
    dp[0] = 0.0
    reach = 1
    picks = []
    for counts, values in options:
        new = np.full(size, -np.inf)
        pick = np.zeros(size, dtype=np.int32)
        for o, (k, v) in enumerate(zip(counts.tolist(), values.tolist())):
            cand = dp[:reach] + v
            seg = new[k:k + reach]
            better = cand > seg
            seg[better] = cand[better]
            pick[k:k + reach][better] = o
        reach += int(counts.max())
        dp = new
        picks.append(pick)
    ok = np.flatnonzero(np.isfinite(dp))
    dist = np.abs(ok - target)
    total = int(ok[np.flatnonzero(dist == dist.min())[0]])
    choice, at = [], total
    for (counts, _), pick in zip(reversed(options), reversed(picks)):
        o = int(pick[at])
        choice.append(o)
        at -= int(counts[o])
    return choice[::-1], total


def _dp_cells(options):
    size = sum(int(c.max()) for c, _ in options) + 1
    return size * sum(len(c) for c, _ in options)


def allocate(groups, target: int):
    """Option index per block of every group (see the module docstring); returns (choice, total)."""
    flat = [(gi, bi) for gi, g in enumerate(groups) for bi in range(len(g.blocks))]
    opts = {(gi, bi): (groups[gi].counts, groups[gi].values[bi]) for gi, bi in flat}
    if len(flat) <= DP_BLOCKS and _dp_cells([opts[f] for f in flat]) <= DP_CELLS:
        chosen, total = _dp([opts[f] for f in flat], target)
        choice = [np.zeros(len(g.blocks), dtype=np.int64) for g in groups]
        for (gi, bi), o in zip(flat, chosen):
            choice[gi][bi] = o
        return choice, total
    # Lagrangian bracket: count(lo) >= target >= count(hi)
    lo, hi = 0.0, max(float((g.values[:, 1:] / g.counts[None, 1:]).max()) if len(g.counts) > 1 else 0.0
                      for g in groups) * 2 + 1.0
    c_lo, c_hi = _lagrange_choice(groups, lo), _lagrange_choice(groups, hi)
    if _total(groups, c_lo) <= target:
        c_hi, hi = c_lo, lo
    for _ in range(BISECTION_STEPS):
        if _total(groups, c_hi) == target:
            break
        mid = (lo + hi) / 2
        c_mid = _lagrange_choice(groups, mid)
        if _total(groups, c_mid) >= target:
            lo, c_lo = mid, c_mid
        else:
            hi, c_hi = mid, c_mid
    choice = [c.copy() for c in c_hi]
    total = _total(groups, choice)
    if total < target:  # move blocks to their lo choice one by one while the total stays <= target
        for gi, g in enumerate(groups):
            for bi in np.flatnonzero(c_lo[gi] != choice[gi]).tolist():
                step = int(g.counts[c_lo[gi][bi]] - g.counts[choice[gi][bi]])
                if total + step <= target:
                    choice[gi][bi] = c_lo[gi][bi]
                    total += step
    if total == target:
        return choice, total
    # exact re-choice of the blocks nearest indifference
    regret = []
    for gi, g in enumerate(groups):
        score = g.values - hi * g.counts[None, :]
        top = score[np.arange(len(g.blocks)), choice[gi]]
        masked = score.copy()
        masked[np.arange(len(g.blocks)), choice[gi]] = -np.inf
        second = masked.max(axis=1) if masked.shape[1] > 1 else np.full(len(g.blocks), -np.inf)
        regret.extend(zip((top - second).tolist(), [gi] * len(g.blocks), range(len(g.blocks))))
    regret.sort()
    chosen_blocks = []
    for _, gi, bi in regret:
        trial = chosen_blocks + [(gi, bi)]
        if len(trial) > DP_BLOCKS or (len(trial) > 1 and _dp_cells([opts[f] for f in trial]) > DP_CELLS):
            break
        chosen_blocks = trial
    outside = total - sum(int(groups[gi].counts[choice[gi][bi]]) for gi, bi in chosen_blocks)
    sub, sub_total = _dp([opts[f] for f in chosen_blocks], target - outside)
    for (gi, bi), o in zip(chosen_blocks, sub):
        choice[gi][bi] = o
    return choice, outside + sub_total


# ------------------------------------------------------------------------------ masks


def bcr_mask_2d(w2d, keep: int, block, *, keep_rows=None, keep_cols=None) -> np.ndarray:
    """Boolean BCR mask of a 2-D weight keeping ``keep`` weights (or the nearest count the
    pattern allows; with both ``keep_rows`` and ``keep_cols`` the count they give)."""
    w2d = np.asarray(w2d, dtype=np.float64)
    rows, cols = w2d.shape
    R, C = parse_block(block)
    keep_rows = check_fraction(keep_rows, "keep_rows")
    keep_cols = check_fraction(keep_cols, "keep_cols")
    groups, row_order, col_order = _groups(w2d, (R, C), keep_rows, keep_cols)
    choice, _ = allocate(groups, int(keep))
    nblocks = len(row_order)
    r_of = np.zeros(nblocks, dtype=np.int64)
    c_of = np.zeros(nblocks, dtype=np.int64)
    for g, ch in zip(groups, choice):
        r_of[g.blocks] = g.pair_r[np.arange(len(g.blocks)), ch]
        c_of[g.blocks] = g.pair_c[np.arange(len(g.blocks)), ch]
    row_rank = np.argsort(row_order, axis=1)
    col_rank = np.argsort(col_order, axis=1)
    mask_b = (row_rank < r_of[:, None])[:, :, None] & (col_rank < c_of[:, None])[:, None, :]
    nbr, nbc = _grid((rows, cols), (R, C))
    mask = mask_b.reshape(nbr, nbc, R, C).transpose(0, 2, 1, 3).reshape(nbr * R, nbc * C)
    return np.ascontiguousarray(mask[:rows, :cols])


def reachable_counts(shape2d, block, limit: int | None = None) -> set[int]:
    """Every count a BCR mask of this shape and block can keep (a subset-sum over blocks of the
    products r * c); for tests and small layers."""
    rows, cols = shape2d
    R, C = block
    nbr, nbc = _grid(shape2d, block)
    reach = {0}
    for i in range(nbr):
        for j in range(nbc):
            h, w = min(R, rows - i * R), min(C, cols - j * C)
            prods = {r * c for r in range(h + 1) for c in range(w + 1)}
            reach = {a + p for a in reach for p in prods if limit is None or a + p <= limit}
    return reach


def _block_shapes(shape2d, block) -> dict[tuple[int, int], int]:
    """{(h, w): how many blocks of that shape} (the last block row and column may be smaller)."""
    rows, cols = shape2d
    R, C = block
    nbr, nbc = _grid(shape2d, block)
    out: dict[tuple[int, int], int] = {}
    for hh, nh in ((R, rows // R), (rows % R, 1 if rows % R else 0)):
        for ww, nw in ((C, cols // C), (cols % C, 1 if cols % C else 0)):
            if hh and ww and nh * nw:
                out[(min(hh, rows), min(ww, cols))] = out.get((min(hh, rows), min(ww, cols)), 0) + nh * nw
    assert sum(out.values()) == nbr * nbc
    return out


def count_structure(shape2d, block) -> tuple[int, frozenset]:
    """``(free, top)``: every count in [0, free] is one a BCR mask of this shape can keep, and
    above ``free`` exactly the counts in ``top``. Cheap for any layer size.

    Why: block (0, 0) is the largest in both sides (h0 x w0) and keeps any count in [0, L0],
    L0 = max(h0, w0) (one row or one column); every block's kept counts r * c climb in steps of
    at most its shorter side (the multiples of it), which is <= L0. Adding blocks to a set of
    counts holding a run of length >= L0 therefore extends the run by each block's area, so
    [0, T - A0 + L0] is covered (T the weights, A0 = h0 * w0). Above it a count T - d is
    reachable iff the deficit d < A0 - L0 is a sum of per-block deficits (area - r * c): a
    small dynamic program per block shape, stopped when one more block of the shape adds nothing
    below the window (then no further one can)."""
    rows, cols = shape2d
    R, C = parse_block(block)
    total = rows * cols
    h0, w0 = min(R, rows), min(C, cols)
    free = total - h0 * w0 + max(h0, w0)
    window = total - free - 1  # deficits 0..window decide the counts above free
    if window < 0:
        return total, frozenset()
    reach = np.zeros(window + 1, dtype=bool)
    reach[0] = True
    for (h, w), count in sorted(_block_shapes((rows, cols), (R, C)).items()):
        area = h * w
        deficits = sorted({area - r * c for r in range(h + 1) for c in range(w + 1)} - {0})
        deficits = [d for d in deficits if d <= window]
        for _ in range(count):
            new = reach.copy()
            for d in deficits:
                new[d:] |= reach[:window + 1 - d]
            if (new == reach).all():
                break
            reach = new
    return free, frozenset(int(total - d) for d in np.flatnonzero(reach))


def nearest_count(shape2d, block, keep: int) -> int:
    """The count a BCR mask keeping ``keep`` weights realizes: ``keep`` when the pattern allows
    it, else the nearest count it allows (ties: the lower), as :func:`bcr_mask_2d` does."""
    free, top = count_structure(shape2d, block)
    keep = int(keep)
    if keep <= free:
        return max(keep, 0)
    return min([free, *top], key=lambda k: (abs(k - keep), k))


def bcr_violations(mask, block) -> list[tuple[int, int]]:
    """Blocks (block row, block column) whose survivors do not form a dense sub-matrix (the kept
    rows x kept columns); empty when ``mask`` (2-D, or a conv mask viewed as out x rest) is BCR."""
    m = np.asarray(mask, dtype=bool)
    m = m.reshape(m.shape[0], -1)
    R, C = parse_block(block)
    nbr, nbc = _grid(m.shape, (R, C))
    bad = []
    for i in range(nbr):
        for j in range(nbc):
            b = m[i * R:(i + 1) * R, j * C:(j + 1) * C]
            rows, cols = b.any(axis=1), b.any(axis=0)
            if int(b.sum()) != int(rows.sum()) * int(cols.sum()) or not b[np.ix_(rows, cols)].all():
                bad.append((i, j))
    return bad


def check_bcr_mask(mask, block) -> None:
    """Raise :class:`PatternError` naming the first block that is not a dense sub-matrix."""
    bad = bcr_violations(mask, block)
    if bad:
        raise PatternError(f"mask is not block column-row: {len(bad)} block(s) of {parse_block(block)} "
                           f"are not dense sub-matrices, the first at block {bad[0]}")


def compute_bcr_masks(pairs, options: dict):
    """{name: bool tensor} for the (plan layer, module) ``pairs``, and notes for the report."""
    import torch

    block = parse_block(options.get("block"))
    keep_rows = check_fraction(options.get("keep_rows"), "--keep-rows")
    keep_cols = check_fraction(options.get("keep_cols"), "--keep-cols")
    masks, notes = {}, []
    for layer, module in pairs:
        w = getattr(module, split_weight_name(layer.name)[1]).detach().cpu()
        w2d = w.reshape(w.shape[0], -1).double().numpy()
        m = bcr_mask_2d(w2d, layer.keep, block, keep_rows=keep_rows, keep_cols=keep_cols)
        masks[layer.name] = torch.from_numpy(m.reshape(tuple(w.shape)))
        kept = int(m.sum())
        if kept != layer.keep:
            why = ("--keep-rows and --keep-cols fix it" if keep_rows is not None and keep_cols is not None
                   else "the nearest count the pattern allows")
            notes.append(f"bcr {block[0]}x{block[1]}: {layer.name} keeps {kept} of planned {layer.keep} ({why})")
    return masks, notes


# ------------------------------------------------------------------------------ compact form

COMPACT_FIELDS = ("shape", "block", "row_ptr", "row_idx", "col_ptr", "col_idx", "values")
COMPACT_MARK = ".bcr."


def compact_layer(weight, block, mask=None) -> dict:
    """The compact BCR form of one weight: for every block (row-major over the block grid) the
    kept row and column indices inside the block and the dense sub-block values, as tensors
    ``shape``, ``block``, ``row_ptr``/``row_idx``, ``col_ptr``/``col_idx`` (CSR-like offsets per
    block) and ``values`` (every block's r x c sub-matrix, row-major, concatenated). Kept rows
    and columns come from ``mask`` (checked to be BCR) or, without one, from the non-zeros."""
    import torch

    R, C = parse_block(block)
    w = weight.detach().cpu()
    w2d = w.reshape(w.shape[0], -1)
    m = (w2d != 0).numpy() if mask is None else np.asarray(mask.cpu() if hasattr(mask, "cpu") else mask,
                                                           dtype=bool).reshape(w2d.shape)
    check_bcr_mask(m, (R, C))
    rows, cols = w2d.shape
    nbr, nbc = _grid((rows, cols), (R, C))
    row_ptr, col_ptr, row_idx, col_idx, values = [0], [0], [], [], []
    for i in range(nbr):
        for j in range(nbc):
            b = m[i * R:(i + 1) * R, j * C:(j + 1) * C]
            ri = np.flatnonzero(b.any(axis=1))
            ci = np.flatnonzero(b.any(axis=0))
            row_idx.append(ri)
            col_idx.append(ci)
            row_ptr.append(row_ptr[-1] + len(ri))
            col_ptr.append(col_ptr[-1] + len(ci))
            if len(ri) and len(ci):
                values.append(w2d[i * R + torch.as_tensor(ri)][:, j * C + torch.as_tensor(ci)].reshape(-1))
    cat = lambda parts: torch.as_tensor(np.concatenate(parts) if parts else np.zeros(0), dtype=torch.int32)  # noqa: E731
    return {
        "shape": torch.tensor(tuple(w.shape), dtype=torch.int64),
        "block": torch.tensor((R, C), dtype=torch.int64),
        "row_ptr": torch.tensor(row_ptr, dtype=torch.int64),
        "row_idx": cat(row_idx),
        "col_ptr": torch.tensor(col_ptr, dtype=torch.int64),
        "col_idx": cat(col_idx),
        "values": torch.cat(values) if values else torch.zeros(0, dtype=w.dtype),
    }


def dense_from_compact(entry: dict):
    """The dense weight (its original shape) a compact entry describes, zeros elsewhere."""
    import torch

    shape = tuple(int(v) for v in entry["shape"])
    R, C = (int(v) for v in entry["block"])
    rows = shape[0]
    cols = int(np.prod(shape[1:])) if len(shape) > 1 else 1
    nbr, nbc = _grid((rows, cols), (R, C))
    rp, cp = entry["row_ptr"].tolist(), entry["col_ptr"].tolist()
    if len(rp) != nbr * nbc + 1 or len(cp) != nbr * nbc + 1:
        raise PatternError(f"compact BCR entry has {len(rp) - 1} blocks, its shape {shape} and block {R}x{C} "
                           f"need {nbr * nbc}")
    ri, ci, vals = entry["row_idx"].long(), entry["col_idx"].long(), entry["values"]
    out = torch.zeros((rows, cols), dtype=vals.dtype)
    at = 0
    for b in range(nbr * nbc):
        i, j = divmod(b, nbc)
        r = ri[rp[b]:rp[b + 1]] + i * R
        c = ci[cp[b]:cp[b + 1]] + j * C
        n = len(r) * len(c)
        if n:
            out[r[:, None], c[None, :]] = vals[at:at + n].reshape(len(r), len(c))
        at += n
    if at != len(vals):
        raise PatternError(f"compact BCR entry holds {len(vals)} values, its indices need {at}")
    return out.reshape(shape)


def compact_state_dict(model, block, masks: dict | None = None) -> dict:
    """The model's state dict with every BCR layer's ``<name>.weight`` replaced by its compact
    tensors ``<name>.bcr.<field>``. Layers: the keys of ``masks`` (their masks), or, without
    masks, every module with a ``weight_mask`` (torch pruning attached: call it before
    ``finalize``). Every mask must be BCR for ``block`` (:class:`PatternError` otherwise)."""
    state = dict(model.state_dict())
    if masks is None:
        masks = {n: m.weight_mask for n, m in model.named_modules() if hasattr(m, "weight_mask")}
        if not masks:
            raise PatternError("no pruning mask is attached to the model: call compact_state_dict before "
                               "finalize, or pass masks={name: mask}")
    replaced = {f"{name}.{suffix}" for name in masks for suffix in ("weight", "weight_orig", "weight_mask")}
    out = {key: value for key, value in state.items() if key not in replaced}
    for name, mask in masks.items():
        module = model.get_submodule(name)
        weight = module.weight if not hasattr(module, "weight_orig") else module.weight_orig * module.weight_mask
        for field, tensor in compact_layer(weight, block, mask).items():
            out[f"{name}{COMPACT_MARK}{field}"] = tensor
    return out


def load_compact_state_dict(model, state: dict):
    """Rebuild ``model`` (dense layers) from :func:`compact_state_dict`'s output: every compact
    layer's weight is made dense again, then the whole state dict is loaded (strict)."""
    dense, entries = {}, {}
    for key, value in state.items():
        if COMPACT_MARK in key:
            name, field = key.rsplit(COMPACT_MARK, 1)
            entries.setdefault(name, {})[field] = value
        else:
            dense[key] = value
    for name, entry in entries.items():
        missing = [f for f in COMPACT_FIELDS if f not in entry]
        if missing:
            raise PatternError(f"compact BCR layer {name!r} lacks {', '.join(missing)}")
        dense[f"{name}.weight"] = dense_from_compact(entry)
    model.load_state_dict(dense, strict=True)
    return model


def bcr_linear(entry: dict, bias=None, mode: str = "padded"):
    """An ``nn.Module`` computing ``x @ W.T + bias`` from a compact entry of a 2-D weight, run as
    dense sub-blocks with ``torch.bmm``: the inputs of every block are gathered by its kept column
    indices, multiplied by its dense r x c sub-matrix, and scattered back by its kept row indices
    (``index_add_``). ``mode="padded"``: one bmm over all blocks, each padded with zeros to the
    largest r and c (padding indices point at row/column 0 and multiply zeros);
    ``mode="grouped"``: one bmm per distinct kept shape r x c, no padding. Same result as the
    dense layer up to float summation order."""
    import torch
    import torch.nn as nn

    if mode not in ("padded", "grouped"):
        raise PatternError(f"bcr_linear mode must be padded or grouped, got {mode!r}")
    shape = tuple(int(v) for v in entry["shape"])
    if len(shape) != 2:
        raise PatternError(f"bcr_linear needs a 2-D (Linear) weight, got shape {shape}")
    R, C = (int(v) for v in entry["block"])
    rows, cols = shape
    nbr, nbc = _grid(shape, (R, C))
    rp, cp = entry["row_ptr"].tolist(), entry["col_ptr"].tolist()
    ri, ci, vals = entry["row_idx"].long(), entry["col_idx"].long(), entry["values"]
    items = []
    at = 0
    for b in range(nbr * nbc):
        i, j = divmod(b, nbc)
        r, c = ri[rp[b]:rp[b + 1]] + i * R, ci[cp[b]:cp[b + 1]] + j * C
        k = len(r) * len(c)
        if k:
            items.append((r, c, vals[at:at + k].reshape(len(r), len(c))))
        at += k
    groups = {}
    if mode == "grouped":
        for r, c, v in items:
            groups.setdefault((len(r), len(c)), []).append((r, c, v))
    elif items:
        rmax, cmax = max(len(r) for r, _, _ in items), max(len(c) for _, c, _ in items)
        padded = []
        for r, c, v in items:
            pr = torch.zeros(rmax, dtype=torch.long)
            pc = torch.zeros(cmax, dtype=torch.long)
            pv = torch.zeros((rmax, cmax), dtype=v.dtype)
            pr[:len(r)], pc[:len(c)], pv[:len(r), :len(c)] = r, c, v
            padded.append((pr, pc, pv))
        groups[(rmax, cmax)] = padded

    class BCRLinear(nn.Module):
        def __init__(self):
            super().__init__()
            self.in_features, self.out_features = cols, rows
            self.n_groups = len(groups)
            for g, (_, members) in enumerate(sorted(groups.items())):
                self.register_buffer(f"sub_t{g}", torch.stack([v for _, _, v in members]).transpose(1, 2).contiguous())
                self.register_buffer(f"rows{g}", torch.stack([ix for ix, _, _ in members]).reshape(-1))
                self.register_buffer(f"cols{g}", torch.stack([ix for _, ix, _ in members]))
            self.bias = None if bias is None else nn.Parameter(bias.detach().clone())

        def forward(self, x):
            n = x.shape[0]
            y = x.new_zeros(n, self.out_features)
            for g in range(self.n_groups):
                sub_t, rows_g, cols_g = getattr(self, f"sub_t{g}"), getattr(self, f"rows{g}"), getattr(self, f"cols{g}")
                gathered = x[:, cols_g].permute(1, 0, 2)              # (blocks, n, c)
                partial = torch.bmm(gathered, sub_t)                  # (blocks, n, r)
                y.index_add_(1, rows_g, partial.permute(1, 0, 2).reshape(n, -1))
            return y if self.bias is None else y + self.bias

    return BCRLinear()
