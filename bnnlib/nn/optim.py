"""Optimizers for BNNs: Adam with the paper's per-layer LR scale, shift-based AdaMax, clipping.

Three ideas from the paper live here.

*Clipping* (paper Section 1.2, Algorithm 1): after every update the latent
weights of binary layers are clipped to [-1, 1]. Beyond that range a weight's
gradient is cancelled anyway, and an unbounded latent weight would never flip
sign again.

*Per-layer learning-rate scale* (the paper's Theano code, after Glorot and
Bengio): the Adam step of a binary layer's weights is multiplied by::

    W_LR_scale = 1 / sqrt(1.5 / (fan_in + fan_out))

with fan_in = in_channels * kh * kw and fan_out = out_channels * kh * kw for a
convolution. Other parameters (batch-norm gamma and beta) use the base LR. The
Torch7 code (``glorot_scale="torch7"``) also scales each batch norm's gamma by
1 / sqrt(1.5 / num_features); beta keeps the base LR.

*Shift-based AdaMax* (paper Algorithm 4, the Torch7 code)::

    m_t   = beta1 * m + (1 - beta1) * g
    v_t   = max(beta2 * v, |g|)
    theta = theta - AP2(lr / (1 - beta1^t)) * m_t * AP2(v_t + eps)^-1

every multiplication by the step and by 1/v being a shift (eps = 2^-27).
The Torch7 code (``adaMax_binary_clip_shift.lua``, ``variant="torch7"``)
computes it slightly differently, and :class:`ShiftAdaMax` can do either::

    v_t   = AP2(max(beta2 * v, |g|)) + eps     # stored: the next max starts from it
    theta = theta - AP2(lr / (1 - beta1^t)) * W_LR_scale * m_t / v_t

i.e. AP2 before eps, the rounded v kept as state, and the per-layer scale
multiplied after rounding the step. Our default divides by AP2(v + eps) and
keeps v exact, as Algorithm 4 is written; both are shifts when v_t is a power of
two (eps = 2^-27 is far below any v that matters).

The learning rate decays exponentially, once per epoch, from ``lr_start`` to
``lr_end`` over the run (:func:`exponential_lr`), as in the paper's Theano code;
the Torch7 code instead halves it every 20 epochs (MNIST, SVHN) or 50
(CIFAR-10) (:func:`step_lr`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn

from bnnlib.nn.layers import is_binary_layer
from bnnlib.nn.shift import ap2

__all__ = [
    "glorot_lr_scale",
    "param_groups",
    "Adam",
    "ShiftAdaMax",
    "clip_binary_weights",
    "exponential_lr",
    "lr_at_epoch",
    "step_lr",
    "step_lr_at_epoch",
]


def glorot_lr_scale(layer: nn.Module) -> float:
    """W_LR_scale = 1 / sqrt(1.5 / (fan_in + fan_out)) for a Linear or Conv2d layer."""
    w = layer.weight
    area = math.prod(w.shape[2:]) if w.dim() > 2 else 1
    fan_in, fan_out = w.shape[1] * area, w.shape[0] * area
    return 1.0 / math.sqrt(1.5 / (fan_in + fan_out))


GLOROT_MODES = (True, False, "torch7")


def param_groups(net: nn.Module, lr: float, glorot_scale: bool | str = True) -> list[dict]:
    """One group per binary layer's weight (scaled LR, clipped), one group for the rest.

    ``glorot_scale="torch7"`` adds one group per batch norm's gamma, scaled by
    1 / sqrt(1.5 / num_features) as the Torch7 code does.
    """
    if glorot_scale not in GLOROT_MODES:
        raise ValueError(f"glorot_scale must be one of {GLOROT_MODES}, got {glorot_scale!r}")
    groups, seen = [], set()
    for module in net.modules():
        if is_binary_layer(module):
            scale = glorot_lr_scale(module) if glorot_scale else 1.0
            groups.append(
                {"params": [module.weight], "lr": lr * scale, "lr_scale": scale, "clip": True}
            )
            seen.add(id(module.weight))
        elif glorot_scale == "torch7" and _is_bn(module):
            scale = 1.0 / math.sqrt(1.5 / module.num_features)
            groups.append(
                {"params": [module.weight], "lr": lr * scale, "lr_scale": scale, "clip": False}
            )
            seen.add(id(module.weight))
    rest = [p for p in net.parameters() if id(p) not in seen and p.requires_grad]
    if rest:
        groups.append({"params": rest, "lr": lr, "lr_scale": 1.0, "clip": False})
    return groups


def _is_bn(module: nn.Module) -> bool:
    return isinstance(module, nn.modules.batchnorm._BatchNorm) and module.weight is not None


@torch.no_grad()
def clip_binary_weights(groups: Iterable[dict]) -> None:
    """Clip every parameter of the groups marked ``clip`` to [-1, 1] (in place)."""
    for group in groups:
        if group.get("clip"):
            for p in group["params"]:
                p.clamp_(-1.0, 1.0)


class Adam(torch.optim.Adam):
    """Adam over a BNN: Glorot LR scale for binary layers' weights, then clipping to [-1, 1].

    ``Adam(net, lr=3e-3)`` takes the model (not a parameter list) so it can find
    the binary layers. Set ``glorot_scale=False`` to use one LR for everything.
    """

    def __init__(
        self,
        net: nn.Module,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        glorot_scale: bool = True,
        fused: bool | None = None,
    ) -> None:
        groups = param_groups(net, lr, glorot_scale)
        super().__init__(groups, lr=lr, betas=betas, eps=eps, fused=fused)

    @torch.no_grad()
    def step(self, closure=None):
        loss = super().step(closure)
        clip_binary_weights(self.param_groups)
        return loss


class ShiftAdaMax(torch.optim.Optimizer):
    """Shift-based AdaMax (paper Algorithm 4), then clipping of binary layers' weights.

    Takes the model like :class:`Adam`, with the same per-layer LR scale.
    ``variant="torch7"`` computes the step as the Torch7 code does (module docstring).
    """

    VARIANTS = ("paper", "torch7")

    def __init__(
        self,
        net: nn.Module,
        lr: float = 2.0**-6,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 2.0**-27,
        glorot_scale: bool | str = True,
        variant: str = "paper",
    ) -> None:
        if variant not in self.VARIANTS:
            raise ValueError(f"unknown variant {variant!r}; choose one of {self.VARIANTS}")
        defaults = {"lr": lr, "betas": betas, "eps": eps, "variant": variant}
        super().__init__(param_groups(net, lr, glorot_scale), defaults)

    def state_of(self, p: torch.Tensor) -> dict:
        """The state of parameter ``p``, created (step 0, m = v = 0) on first use."""
        state = self.state[p]
        if not state:
            state["step"] = 0
            state["exp_avg"] = torch.zeros_like(p)
            state["exp_inf"] = torch.zeros_like(p)
        return state

    @torch.no_grad()
    def step_group(self, group: dict) -> None:
        """Algorithm 4 (or the Torch7 variant) on one group's parameters that have a
        gradient; the clipping is :meth:`step`'s."""
        beta1, beta2 = group["betas"]
        for p in group["params"]:
            if p.grad is None:
                continue
            state = self.state_of(p)
            state["step"] += 1
            m, v = state["exp_avg"], state["exp_inf"]
            m.lerp_(p.grad, 1 - beta1)
            torch.maximum(v * beta2, p.grad.abs(), out=v)
            bias1 = 1 - beta1 ** state["step"]
            if group.get("variant", "paper") == "torch7":
                v.copy_(ap2(v) + group["eps"])
                step_size = ap2_scalar(group["lr"] / group["lr_scale"] / bias1)
                p.sub_(m / v, alpha=step_size * group["lr_scale"])
            else:
                p.sub_(m / ap2(v + group["eps"]), alpha=ap2_scalar(group["lr"] / bias1))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            self.step_group(group)
        clip_binary_weights(self.param_groups)
        return loss


def ap2_scalar(x: float) -> float:
    """AP2 of a positive scalar: the nearest power of two, a shift."""
    return 2.0 ** round(math.log2(x))


def lr_at_epoch(epoch: int, lr_start: float, lr_end: float, num_epochs: int) -> float:
    """The paper's schedule: lr_start * (lr_end / lr_start)^(epoch / num_epochs), epoch from 0."""
    return lr_start * (lr_end / lr_start) ** (epoch / num_epochs)


def exponential_lr(
    optimizer: torch.optim.Optimizer, lr_start: float, lr_end: float, num_epochs: int
) -> torch.optim.lr_scheduler.ExponentialLR:
    """Decay every group's LR by (lr_end / lr_start)^(1 / num_epochs) at each ``scheduler.step()``.

    Call ``step()`` once per epoch. The optimizer must have been built with
    ``lr=lr_start``; per-group scales are kept because each group decays by the
    same factor. After ``num_epochs`` steps the base LR is ``lr_end``.
    """
    if lr_start <= 0 or lr_end <= 0 or num_epochs < 1:
        raise ValueError("exponential_lr needs lr_start > 0, lr_end > 0 and num_epochs >= 1")
    gamma = (lr_end / lr_start) ** (1.0 / num_epochs)
    return torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=gamma)


def step_lr_at_epoch(epoch: int, lr_start: float, every: int, factor: float = 0.5) -> float:
    """The Torch7 schedule: lr_start * factor^(epoch // every), epoch from 0.

    Epochs 0 .. every-1 use lr_start; the Torch7 MNIST code halves (factor 0.5)
    after every 20th epoch.
    """
    return lr_start * factor ** (epoch // every)


def step_lr(
    optimizer: torch.optim.Optimizer, every: int, factor: float = 0.5
) -> torch.optim.lr_scheduler.StepLR:
    """Multiply every group's LR by ``factor`` after each ``every`` epochs (one ``step()``
    per epoch)."""
    if every < 1 or not 0 < factor <= 1:
        raise ValueError(f"step_lr needs every >= 1 and 0 < factor <= 1, got {every}, {factor}")
    return torch.optim.lr_scheduler.StepLR(optimizer, step_size=every, gamma=factor)
