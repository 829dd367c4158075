"""Optimizers for BNNs: Adam with the paper's per-layer LR scale, shift-based AdaMax, clipping.

Three ideas from the paper live here.

*Clipping* (paper Sections 1.2-1.3, Algorithm 1): after every update the latent
weights of binary layers are clipped to [-1, 1]. Beyond that range a weight's
gradient is cancelled anyway, and an unbounded latent weight would never flip
sign again. The binary layers rely on it: their weights' STE passes the gradient
unchanged, which is the paper's g * 1{|W| <= 1} only for clipped weights
(:mod:`bnnlib.nn.layers`). So the clipping is the layers' own
(:func:`bnnlib.nn.layers.clip_latent_`), which both optimizers call on every group
that :func:`param_groups` marks ``clip`` (each binary layer's weight) after each
step; a plain ``torch.optim`` optimizer does not, and a layer with ``check_clip``
then raises.

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

every multiplication by the step and by 1/v being a shift (eps = 2^-27). The
arithmetic is written once, on lists of tensors at the same step t
(:func:`shift_adamax_`): :meth:`ShiftAdaMax.step` applies it one parameter at a
time, or with ``foreach=True`` (the training loop's fast path) to all the
parameters of a group at the same step at once; the values are the same.
The Torch7 code (``adaMax_binary_clip_shift.lua``, ``variant="torch7"``)
computes it slightly differently, and :class:`ShiftAdaMax` can do either::

    v_t   = AP2(max(beta2 * v, |g|)) + eps     # stored: the next max starts from it
    theta = theta - AP2(lr / (1 - beta1^t)) * W_LR_scale * m_t / v_t

i.e. AP2 before eps, the rounded v kept as state, and the per-layer scale
multiplied after rounding the step. Our default divides by AP2(v + eps) and
keeps v exact, as Algorithm 4 is written; both are shifts when v_t is a power of
two (eps = 2^-27 is far below any v that matters).

``shift=False`` leaves out every AP2 (of the step size and of v) and keeps the rest of
the variant: plain AdaMax in the same form. It is the ablation that measures what the
shifts cost (the protocol's experiment E2, ``results/protocol.md``); the optimizer name
``adamax_torch7`` of the training loop.

The learning rate decays exponentially, once per epoch, from ``lr_start`` to
``lr_end`` over the run (:func:`exponential_lr`), as in the paper's Theano code;
the Torch7 code instead halves it every 20 epochs (MNIST, SVHN) or 50
(CIFAR-10) (:func:`step_lr`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch
from torch import nn

from bnnlib.nn.layers import clip_latent_, is_binary_layer

__all__ = [
    "glorot_lr_scale",
    "param_groups",
    "Adam",
    "ShiftAdaMax",
    "shift_adamax_",
    "adamax_step_size",
    "ap2_nonnegative",
    "ap2_scalar",
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


def clip_binary_weights(groups: Iterable[dict]) -> None:
    """Clip every parameter of the groups marked ``clip`` to [-1, 1] in place, with the
    binary layers' own clipping (:func:`bnnlib.nn.layers.clip_latent_`, Algorithm 1)."""
    clip_latent_(p for group in groups if group.get("clip") for p in group["params"])


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
    def step(self, closure=None, *, clip: bool = True):
        """PyTorch's Adam step (fused or foreach, as built), then the clipping of the binary
        layers' weights (:func:`clip_binary_weights`, Algorithm 1). ``clip=False`` leaves the
        clipping to the caller (the fast training step clips and binarizes in one pass)."""
        loss = super().step(closure)
        if clip:
            clip_binary_weights(self.param_groups)
        return loss


class ShiftAdaMax(torch.optim.Optimizer):
    """Shift-based AdaMax (paper Algorithm 4), then clipping of binary layers' weights.

    Takes the model like :class:`Adam`, with the same per-layer LR scale.
    ``variant="torch7"`` computes the step as the Torch7 code does (module docstring);
    ``shift=False`` drops the AP2 roundings (plain AdaMax, the ablation).
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
        shift: bool = True,
    ) -> None:
        if variant not in self.VARIANTS:
            raise ValueError(f"unknown variant {variant!r}; choose one of {self.VARIANTS}")
        defaults = {"lr": lr, "betas": betas, "eps": eps, "variant": variant, "shift": shift}
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
    def step_group(
        self, group: dict, foreach: bool = False, update: Callable | None = None
    ) -> set[int]:
        """Algorithm 4 (or the Torch7 variant) on one group's parameters that have a
        gradient; the clipping is :meth:`step`'s. Returns the ids of the parameters that
        ``update`` took.

        :func:`shift_adamax_` once per parameter, or (``foreach=True``) once per set of
        parameters at the same step count (all of them, unless some missed a step).
        ``update(group, p, step)``, when given, is tried first for each parameter: it returns
        True when it did the whole update of ``p`` at ``step``, clipping included (the fast
        training step's one-pass kernel, :class:`bnnlib.train.fast_step.FastStep`).
        """
        batches: dict[int, list[torch.Tensor]] = {}
        taken: set[int] = set()
        for p in group["params"]:
            if p.grad is None:
                continue
            state = self.state_of(p)
            state["step"] += 1
            if update is not None and update(group, p, state["step"]):
                taken.add(id(p))
            elif foreach:
                batches.setdefault(state["step"], []).append(p)
            else:
                self.update_params(group, [p], state["step"])
        for step, params in batches.items():
            self.update_params(group, params, step)
        return taken

    def update_params(self, group: dict, params: list[torch.Tensor], step: int) -> None:
        """:func:`shift_adamax_` on ``params`` of ``group``, all at step ``step`` (their states
        already counted); the clipping is the caller's."""
        shift_adamax_(
            params,
            [p.grad for p in params],
            [self.state[p]["exp_avg"] for p in params],
            [self.state[p]["exp_inf"] for p in params],
            step=step,
            lr=group["lr"],
            lr_scale=group["lr_scale"],
            betas=group["betas"],
            eps=group["eps"],
            variant=group.get("variant", "paper"),
            shift=group.get("shift", True),
        )

    @torch.no_grad()
    def step(self, closure=None, *, foreach: bool = False, update: Callable | None = None):
        """One update of every parameter with a gradient, then the clipping of the binary
        layers' weights (:func:`clip_binary_weights`). ``foreach=True`` launches the same
        arithmetic as multi-tensor operations; ``update`` (:meth:`step_group`) may take
        parameters over, their clipping with them."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        taken: set[int] = set()
        for group in self.param_groups:
            taken |= self.step_group(group, foreach, update)
        rest = [{**g, "params": [p for p in g["params"] if id(p) not in taken]}
                for g in self.param_groups]  # fmt: skip
        clip_binary_weights(rest)
        return loss


@torch.no_grad()
def shift_adamax_(
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    exp_avgs: list[torch.Tensor],
    exp_infs: list[torch.Tensor],
    *,
    step: int,
    lr: float,
    lr_scale: float,
    betas: tuple[float, float],
    eps: float,
    variant: str = "paper",
    shift: bool = True,
) -> None:
    """Shift-based AdaMax (paper Algorithm 4), in place, on parameters at step ``step``.

    ``exp_avgs`` (m) and ``exp_infs`` (v) are the parameters' states, updated with them;
    ``lr`` is the group's (scaled) learning rate, ``lr_scale`` its Glorot scale. The one
    implementation of the update (module docstring), as multi-tensor operations::

        m = beta1 * m + (1 - beta1) * g;  v = max(beta2 * v, |g|)
        paper:  theta -= AP2(lr / (1 - beta1^t)) * m / AP2(v + eps)
        torch7: v = AP2(v) + eps;  theta -= AP2(lr / lr_scale / (1 - beta1^t)) * lr_scale * m / v

    ``shift=False``: the same with every AP2 replaced by the identity (plain AdaMax).
    """
    alpha = adamax_step_size(step, lr, lr_scale, betas[0], variant, shift)
    beta1, beta2 = betas
    torch._foreach_lerp_(exp_avgs, grads, 1 - beta1)
    torch._foreach_mul_(exp_infs, beta2)
    torch._foreach_maximum_(exp_infs, torch._foreach_abs(grads))
    rounded = ap2_nonnegative if shift else list
    if variant == "torch7":
        torch._foreach_copy_(exp_infs, torch._foreach_add(rounded(exp_infs), eps))
        torch._foreach_sub_(params, torch._foreach_div(exp_avgs, exp_infs), alpha=alpha)
    else:
        denom = rounded(torch._foreach_add(exp_infs, eps))
        torch._foreach_sub_(params, torch._foreach_div(exp_avgs, denom), alpha=alpha)


def adamax_step_size(
    step: int, lr: float, lr_scale: float, beta1: float, variant: str, shift: bool = True
) -> float:
    """The factor of m / v in the update at step ``step`` (:func:`shift_adamax_`):
    AP2(lr / (1 - beta1^t)) (paper), AP2(lr / lr_scale / (1 - beta1^t)) * lr_scale (torch7),
    without the AP2 when ``shift`` is False."""
    if variant not in ShiftAdaMax.VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; choose one of {ShiftAdaMax.VARIANTS}")
    bias1 = 1 - beta1**step
    scalar = ap2_scalar if shift else float
    if variant == "torch7":
        return scalar(lr / lr_scale / bias1) * lr_scale
    return scalar(lr / bias1)


def ap2_nonnegative(xs: list[torch.Tensor]) -> list[torch.Tensor]:
    """AP2 (:func:`bnnlib.nn.shift.ap2`) of tensors with no negative entries, as multi-tensor
    operations: 2^round(log2 x), and 0 where x == 0 (2^-inf = +0), the values ``ap2`` gives.

    In float32, log2 of the floats within a few units in the last place of sqrt(2) * 2^e
    rounds to e + 1/2 (or to its neighbour on the wrong side), and ``round`` sends the tie to
    the even integer: for those (5,343 of the 2^31 positive floats, up to 32 per binade) this
    AP2 is one power of two away from the exact nearest one, either way. The book's runs
    trained with it; :mod:`bnnlib.kernels.update` copies it exactly, and shows the exact AP2
    beside it (``tests/test_fast_step.py``)."""
    e = torch._foreach_log2(xs)
    torch._foreach_round_(e)
    return torch._foreach_pow(2.0, e)


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
