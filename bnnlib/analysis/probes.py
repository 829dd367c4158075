"""Probes of the Sign activations: what each saw in a forward pass, and the gradient the STE
passed back to it (paper Section 1.3, Eq. 4).

:func:`sign_probes` runs a net once with a forward pre-hook on every
:class:`~bnnlib.nn.layers.SignActivation` and returns each one's real input and, given labels,
the square-hinge loss gradient at that input, optionally under another estimator
(:data:`bnnlib.nn.ste.ESTIMATORS`) for the same weights. :func:`saturation` is the fraction of
inputs with |x| > 1, where the paper's estimator cancels the gradient. Notebook 02 draws them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["SignProbe", "sign_probes", "saturation"]


@dataclass
class SignProbe:
    """What one Sign activation saw: its real input and the gradient that reached that input."""

    name: str
    input: torch.Tensor
    grad: torch.Tensor | None


def sign_probes(
    net: torch.nn.Module,
    X: torch.Tensor,
    y: torch.Tensor | None = None,
    num_classes: int = 10,
    estimator: str | None = None,
) -> list[SignProbe]:
    """Run ``net`` on ``X`` and return, for each :class:`~bnnlib.nn.layers.SignActivation`,
    its input and (when labels ``y`` are given) the square-hinge loss gradient at that input.

    ``estimator`` (see :mod:`bnnlib.nn.ste`) replaces the activations' estimator for this
    one pass, so the same weights can be probed with each. The model's mode
    (train/eval) is left as it is; parameter gradients are left zeroed.
    """
    from bnnlib.nn.layers import SignActivation
    from bnnlib.nn.losses import pm1_targets, square_hinge

    signs = [(n, m) for n, m in net.named_modules() if isinstance(m, SignActivation)]
    saved = [m.estimator for _, m in signs]
    seen: list[tuple[str, torch.Tensor]] = []

    def grab(name: str):
        def hook(_module, args):
            if args[0].requires_grad:
                args[0].retain_grad()  # keep the gradient of this non-leaf tensor
            seen.append((name, args[0]))

        return hook

    hooks = [m.register_forward_pre_hook(grab(n)) for n, m in signs]
    try:
        for _, module in signs:
            module.estimator = estimator or module.estimator
        with torch.set_grad_enabled(y is not None):
            out = net(X)
            if y is not None:
                square_hinge(out, pm1_targets(y, num_classes)).backward()
    finally:
        for h in hooks:
            h.remove()
        for (_, module), original in zip(signs, saved, strict=True):
            module.estimator = original
    probes = [
        SignProbe(n, x.detach(), None if x.grad is None else x.grad.detach()) for n, x in seen
    ]
    net.zero_grad(set_to_none=True)
    return probes


def saturation(x: torch.Tensor) -> float:
    """Fraction of entries with |x| > 1: where the STE of paper Eq. 4 cancels the gradient."""
    return (x.abs() > 1).float().mean().item()
