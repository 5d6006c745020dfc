"""Elimination-compensation statistics (seed 001): per-weight importance and optimal bias shift.

Removing W_ij changes the pre-activation g_i = sum_j W_ij a_j + b_i by -W_ij a_j; shifting the
bias by delta adds delta. To first order the output moves by (delta - W_ij a_j) * df/dg_i, so the
squared output error averaged over the calibration batch is

    E[s_i (delta - W_ij a_j)^2],    s_i(x) = ||df(x)/db_i||^2 = sum_o (df_o/dg_i(x))^2,

a quadratic in delta minimised at delta* = W_ij E[s_i a_j] / E[s_i] (the ``shift``), where it is
W_ij^2 (E[s_i a_j^2] - E[s_i a_j]^2 / E[s_i]) (the ``importance``; >= 0 by Cauchy-Schwarz).

Imports torch; only ``planner.apply`` imports this module, and only for that criterion.
"""

from __future__ import annotations

from planner.errors import ModelError, PlannerError

DEFAULT_CHUNK_SIZE = 256


def _as_batch(calibration, dtype, device):
    import numpy as np
    import torch

    if isinstance(calibration, torch.Tensor):
        x = calibration.detach()
    else:
        x = torch.as_tensor(np.asarray(calibration))
    if x.dim() < 2:
        raise PlannerError(f"calibration must be a batch of shape (N, *input_shape), got shape {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise PlannerError("calibration batch is empty")
    return x.to(device=device, dtype=dtype)


def _module_modes(model):
    return [(m, m.training) for m in model.modules()]


def compensation_statistics(model, names: list[str], calibration, *, chunk_size: int = DEFAULT_CHUNK_SIZE
                            ) -> dict[str, dict]:
    """``{name: {"importance": (rows, cols), "shift": (rows, cols)}}`` for every ``nn.Linear`` in
    ``names``; other modules are absent from the result.

    ``calibration`` is a batch of model inputs (torch tensor or numpy array, shape
    ``(N, *input_shape)``), converted to the model's floating dtype (float32 for the usual
    model). Expectations are over that batch, accumulated in float64 chunk by chunk of
    ``chunk_size`` samples. The model runs in eval mode, so samples do not interact (batch norm
    uses its running statistics); every module's train/eval flag is restored afterwards.
    Parameters and their ``.grad`` are not touched: gradients are taken with
    ``torch.autograd.grad`` with respect to the layers' outputs only.

    Cost: one forward and ``n_out`` backward passes per chunk, ``n_out`` being the number of
    model outputs per sample (the model's output is flattened to ``(N, n_out)``).

    A Linear without a bias cannot be compensated: its importance is the uncompensated error
    W_ij^2 E[s_i a_j^2] and its shift is zero.
    """
    import torch
    from torch import nn

    if chunk_size < 1:
        raise PlannerError(f"chunk_size must be positive, got {chunk_size}")
    linears: dict[str, nn.Linear] = {}
    for name in names:
        try:
            module = model.get_submodule(name)
        except AttributeError:
            raise ModelError(f"{name!r} is not a module of the model") from None
        if isinstance(module, nn.Linear):
            linears[name] = module
    if not linears:
        return {}

    params = [p for p in model.parameters() if p.is_floating_point()]
    dtype = params[0].dtype if params else torch.float32
    device = params[0].device if params else torch.device("cpu")
    x_all = _as_batch(calibration, dtype, device)
    n_total = x_all.shape[0]

    sums = {name: {"s": torch.zeros(m.out_features, dtype=torch.float64, device=device),
                   "sa": torch.zeros(m.out_features, m.in_features, dtype=torch.float64, device=device),
                   "sa2": torch.zeros(m.out_features, m.in_features, dtype=torch.float64, device=device)}
            for name, m in linears.items()}

    captured: dict[str, list] = {}

    def make_hook(name):
        def hook(module, inputs, output):
            a = inputs[0]
            if a.dim() != 2:
                raise ModelError(
                    f"layer {name!r} sees an input of shape {tuple(a.shape)}; elimination-compensation "
                    "is defined for Linear layers applied to (batch, features)")
            if name in captured:
                raise ModelError(f"layer {name!r} is called more than once per forward pass; "
                                 "its compensation is not defined")
            # A frozen model (requires_grad False) still needs a path from g to f.
            g = output if output.requires_grad else output.detach().requires_grad_(True)
            captured[name] = [a.detach().clone(), g]
            # Hand a copy downstream: an in-place op after the layer (ReLU(inplace=True)) must not
            # overwrite the pre-activation we differentiate with respect to.
            return g.clone()
        return hook

    modes = _module_modes(model)
    handles = [m.register_forward_hook(make_hook(name)) for name, m in linears.items()]
    try:
        model.eval()
        for start in range(0, n_total, chunk_size):
            x = x_all[start:start + chunk_size]
            n = x.shape[0]
            captured.clear()
            with torch.enable_grad():
                out = model(x)
                if not isinstance(out, torch.Tensor):
                    raise ModelError(f"the model returns {type(out).__name__}; compensation needs one tensor output")
                out = out.reshape(n, -1)
                order = [name for name in linears if name in captured]
                gs = [captured[name][1] for name in order]
                s_chunk = {name: torch.zeros(n, linears[name].out_features, dtype=torch.float64, device=device)
                           for name in order}
                n_out = out.shape[1]
                if out.requires_grad and gs:
                    # Samples are independent in eval mode, so the gradient of sum_x f_o(x) with
                    # respect to g(x) is the per-sample df_o(x)/dg(x): one backward per output.
                    for o in range(n_out):
                        grads = torch.autograd.grad(out[:, o].sum(), gs, retain_graph=o < n_out - 1,
                                                    allow_unused=True)
                        for name, grad in zip(order, grads):
                            if grad is not None:  # None: the layer does not reach the output
                                s_chunk[name] += grad.detach().to(torch.float64).square()
            with torch.no_grad():
                for name in order:
                    a = captured[name][0].to(torch.float64)
                    s = s_chunk[name]
                    acc = sums[name]
                    acc["s"] += s.sum(dim=0)
                    acc["sa"] += s.T @ a
                    acc["sa2"] += s.T @ (a * a)
            del out, gs
            captured.clear()
    finally:
        for h in handles:
            h.remove()
        captured.clear()
        for m, training in modes:
            m.training = training

    result = {}
    with torch.no_grad():
        for name, module in linears.items():
            w = module.weight.detach()
            w64 = w.to(torch.float64)
            e_s = sums[name]["s"] / n_total                 # (rows,)
            e_sa = sums[name]["sa"] / n_total               # (rows, cols)
            e_sa2 = sums[name]["sa2"] / n_total
            uncompensated = w64.square() * e_sa2
            if module.bias is None:
                # No bias to shift: the importance is the plain first-order removal error.
                importance = uncompensated
                shift = torch.zeros_like(w64)
            else:
                # A dead neuron (E[s_i] = 0, i.e. df/dg_i = 0 on every calibration sample) has
                # E[s_i a_j] = E[s_i a_j^2] = 0 as well: shift 0, importance W_ij^2 E[s_i a_j^2] = 0.
                alive = (e_s > 0).unsqueeze(1)
                safe_s = torch.where(e_s > 0, e_s, torch.ones_like(e_s)).unsqueeze(1)
                shift = torch.where(alive, w64 * e_sa / safe_s, torch.zeros_like(w64))
                residual = torch.where(alive, e_sa2 - e_sa.square() / safe_s, e_sa2)
                # >= 0 in exact arithmetic (Cauchy-Schwarz); clamp the rounding.
                importance = w64.square() * residual.clamp_min(0.0)
            result[name] = {"importance": importance.to(dtype=w.dtype, device=w.device),
                            "shift": shift.to(dtype=w.dtype, device=w.device)}
    return result
