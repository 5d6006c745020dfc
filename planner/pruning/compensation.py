"""Elimination-compensation statistics (seed 001): per-weight importance and optimal bias shift.

Removing W_ij changes the pre-activation g_i = sum_j W_ij a_j + b_i by -W_ij a_j; shifting the
bias by delta adds delta. To first order the output moves by (delta - W_ij a_j) * df/dg_i, so the
squared output error averaged over the calibration batch is

    E[s_i (delta - W_ij a_j)^2],    s_i(x) = ||df(x)/db_i||^2 = sum_o (df_o/dg_i(x))^2,

a quadratic in delta minimised at delta* = W_ij E[s_i a_j] / E[s_i] (the ``shift``), where it is
W_ij^2 (E[s_i a_j^2] - E[s_i a_j]^2 / E[s_i]) (the ``importance``; >= 0 by Cauchy-Schwarz).

The importance selects which weights a layer keeps. The shifts applied to the biases are not
these first-order ones, which are taken on the dense network and, applied to every layer at
once, raised the output error on 64-48-32-10 MLPs: :func:`sequential_bias_correction` measures
each layer's shift on the already pruned network and scales it so the error never rises.

Imports torch; only ``planner.pruning.masks`` imports this module, and only for that criterion.
"""

from __future__ import annotations

from planner.errors import ModelError, PlannerError

DEFAULT_CHUNK_SIZE = 256


def _as_batch(model, calibration):
    """The calibration batch as a tensor of the model's dtype on its device, checked: at least
    2-D, not empty, finite."""
    import numpy as np
    import torch

    params = [p for p in model.parameters() if p.is_floating_point()]
    dtype = params[0].dtype if params else torch.float32
    device = params[0].device if params else torch.device("cpu")
    if isinstance(calibration, torch.Tensor):
        x = calibration.detach()
    else:
        x = torch.as_tensor(np.asarray(calibration))
    if x.dim() < 2:
        raise PlannerError(f"calibration must be a batch of shape (N, *input_shape), got shape {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise PlannerError("calibration batch is empty")
    x = x.to(device=device, dtype=dtype)
    if not bool(torch.isfinite(x).all()):
        raise PlannerError("the calibration batch holds non-finite values (nan or inf)")
    return x


def _module_modes(model):
    return [(m, m.training) for m in model.modules()]


def _run(model, x, shape=None):
    """``model(x)`` as (batch, outputs), with a one-line ModelError when the batch does not fit."""
    import torch

    try:
        out = model(x)
    except RuntimeError as exc:  # a shape mismatch deep inside the model
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"the calibration batch of shape {shape or tuple(x.shape)} does not fit the model: "
                         f"{first}") from None
    if not isinstance(out, torch.Tensor):
        raise ModelError(f"the model returns {type(out).__name__}; compensation needs one tensor output")
    return out.reshape(x.shape[0], -1)


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
    from planner.pruning.names import split_weight_name

    for name in names:
        if split_weight_name(name)[1] != "weight":
            continue  # an attention projection parameter: magnitude
        try:
            module = model.get_submodule(name)
        except AttributeError:
            raise ModelError(f"{name!r} is not a module of the model") from None
        if isinstance(module, nn.Linear):
            linears[name] = module
    if not linears:
        return {}

    x_all = _as_batch(model, calibration)
    device = x_all.device
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
                out = _run(model, x, tuple(x_all.shape))
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
                            "shift": shift.to(dtype=w.dtype, device=w.device),
                            "alive": (e_s > 0).to(device=w.device)}
    return result


#: scales tried for each layer's bias shift; 0 (no shift) is always among them
SHIFT_STEPS = (1.0, 0.5, 0.25, 0.0)


def sequential_bias_correction(model, masks: dict, calibration, alive: dict | None = None) -> tuple[dict, dict]:
    """Bias shifts for the masked ``nn.Linear`` layers of ``masks`` ({name: bool mask}), chosen
    so that the pruned model's output error on the calibration batch never exceeds that of the
    same masks without them.

    Layer by layer in forward order, on the network with every mask applied and the earlier
    layers already corrected: the shift is the mean change of the layer's pre-activation
    against the dense network (what the later layers were trained to see), scaled by the step
    of :data:`SHIFT_STEPS` that gives the lowest mean squared output error against the dense
    model; step 0 (no shift) is always allowed, so the error never rises. The model is left as
    it came. ``alive`` ({name: bool per output row}, the ``alive`` of
    :func:`compensation_statistics`) marks the neurons the output depends on; the others keep
    their biases. Returns ``({name: shift}, {name: step})``.
    """
    import torch
    from torch import nn

    layers = {name: model.get_submodule(name) for name in masks}
    layers = {n: m for n, m in layers.items() if isinstance(m, nn.Linear) and m.bias is not None}
    if not layers:
        return {}, {}
    x = _as_batch(model, calibration)

    seen: dict[str, torch.Tensor] = {}
    order: list[str] = []

    def make_hook(name):
        def hook(module, inputs, output):
            if name not in seen:
                order.append(name)
            seen[name] = output.detach().reshape(-1, output.shape[-1])
        return hook

    def error(out):
        return float(((out - dense_out) ** 2).to(torch.float64).mean())

    modes = _module_modes(model)
    handles = [m.register_forward_hook(make_hook(n)) for n, m in layers.items()]
    weights = {n: m.weight.detach().clone() for n, m in layers.items()}
    biases = {n: m.bias.detach().clone() for n, m in layers.items()}
    shifts, steps = {}, {}
    try:
        model.eval()
        with torch.no_grad():
            dense_out = _run(model, x)
            dense_pre = {n: t.clone() for n, t in seen.items()}
            for n, m in layers.items():
                m.weight.mul_(masks[n].to(device=m.weight.device, dtype=m.weight.dtype))
            current = error(_run(model, x))
            for n in list(order):
                module = layers[n]
                delta = (dense_pre[n] - seen[n]).to(torch.float64).mean(dim=0).to(module.bias.dtype)
                if alive is not None and n in alive:
                    delta = torch.where(alive[n].to(delta.device), delta, torch.zeros_like(delta))
                best_step, best = 0.0, current
                for step in SHIFT_STEPS:
                    if step == 0.0:
                        continue
                    module.bias.copy_(biases[n] + step * delta)
                    trial = error(_run(model, x))
                    if trial < best:
                        best_step, best = step, trial
                module.bias.copy_(biases[n] + best_step * delta)
                current = best
                _run(model, x)  # refresh the pre-activations the next layer sees
                shifts[n], steps[n] = best_step * delta, best_step
    finally:
        for h in handles:
            h.remove()
        with torch.no_grad():
            for n, m in layers.items():
                m.weight.copy_(weights[n])
                m.bias.copy_(biases[n])
        for m, training in modes:
            m.training = training
    return shifts, steps
