"""The fast path's optimizer step: the same update as ``opt.step()``, in fewer kernels.

The clipping of the binary weights becomes two ``_foreach_clamp`` calls, PyTorch's Adam
its fused (or foreach) kernel, and the shift AdaMax of :mod:`bnnlib.nn.optim` the
multi-tensor :func:`shift_adamax_foreach`; on the CPU the parameters are those of the
plain path bit for bit (tested). :func:`bnnlib.train.fit` takes it with ``fast=True``.
"""

from __future__ import annotations

import torch

from bnnlib.nn.optim import Adam, ShiftAdaMax

__all__ = ["fast_step", "shift_adamax_foreach"]


@torch.no_grad()
def _clip_foreach(groups) -> None:
    """:func:`bnnlib.nn.optim.clip_binary_weights` as two multi-tensor calls (the same values)."""
    params = [p for g in groups if g.get("clip") for p in g["params"]]
    if params:
        torch._foreach_clamp_min_(params, -1.0)
        torch._foreach_clamp_max_(params, 1.0)


def _ap2_nonnegative(xs: list[torch.Tensor]) -> list[torch.Tensor]:
    """AP2 of tensors with no negative entries: 2^round(log2 x), and 0 where x == 0
    (exp2(-inf) = +0), the values :func:`bnnlib.nn.shift.ap2` gives."""
    e = torch._foreach_log2(xs)
    torch._foreach_round_(e)
    return torch._foreach_pow(2.0, e)


@torch.no_grad()
def shift_adamax_foreach(opt: ShiftAdaMax) -> None:
    """One :class:`bnnlib.nn.optim.ShiftAdaMax` step (either variant) with multi-tensor ops.

    The same arithmetic as ``ShiftAdaMax.step`` per parameter (tested bit for bit on
    the CPU), then the clipping; a group whose parameters are at different step counts
    (some had no gradient) takes ``ShiftAdaMax.step_group``'s loop instead.
    """
    from bnnlib.nn.optim import ap2_scalar

    for group in opt.param_groups:
        params = [p for p in group["params"] if p.grad is not None]
        if not params:
            continue
        beta1, beta2 = group["betas"]
        steps = {opt.state_of(p)["step"] for p in params}
        if len(steps) > 1:  # some parameters missed a step: the per-parameter loop
            opt.step_group(group)
            continue
        for p in params:
            opt.state[p]["step"] += 1
        bias1 = 1 - beta1 ** (steps.pop() + 1)
        grads = [p.grad for p in params]
        ms = [opt.state[p]["exp_avg"] for p in params]
        vs = [opt.state[p]["exp_inf"] for p in params]
        torch._foreach_lerp_(ms, grads, 1 - beta1)
        torch._foreach_mul_(vs, beta2)
        torch._foreach_maximum_(vs, torch._foreach_abs(grads))
        if group.get("variant", "paper") == "torch7":
            rounded = _ap2_nonnegative(vs)
            torch._foreach_add_(rounded, group["eps"])
            torch._foreach_copy_(vs, rounded)
            step_size = ap2_scalar(group["lr"] / group["lr_scale"] / bias1)
            torch._foreach_sub_(
                params, torch._foreach_div(ms, vs), alpha=step_size * group["lr_scale"]
            )
        else:
            denom = _ap2_nonnegative(torch._foreach_add(vs, group["eps"]))
            alpha = ap2_scalar(group["lr"] / bias1)
            torch._foreach_sub_(params, torch._foreach_div(ms, denom), alpha=alpha)
    _clip_foreach(opt.param_groups)


def fast_step(opt: torch.optim.Optimizer) -> None:
    """The optimizer step of the fast path: the same update as ``opt.step()``.

    :class:`bnnlib.nn.optim.Adam`: PyTorch's Adam step (fused or foreach, as built), then
    the clipping as two multi-tensor clamps; :class:`bnnlib.nn.optim.ShiftAdaMax`:
    :func:`shift_adamax_foreach`; any other optimizer: ``opt.step()``.
    """
    if isinstance(opt, Adam):
        torch.optim.Adam.step(opt)
        _clip_foreach(opt.param_groups)
    elif isinstance(opt, ShiftAdaMax):
        shift_adamax_foreach(opt)
    else:
        opt.step()
        return
    opt._opt_called = True  # what the LR scheduler's wrapper of opt.step() would mark
