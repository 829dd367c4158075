"""The straight-through estimator (STE), paper Section 1.3.

Sign has zero derivative almost everywhere, so back-propagation through it would
give no signal. The paper keeps the forward binarization and replaces its
derivative in the backward pass (paper Eq. 4)::

    forward:   q = Sign(r)
    backward:  g_r = g_q * 1{|r| <= 1}

which is the derivative of hardtanh(r) = clip(r, -1, 1). The indicator *cancels*
the gradient when r is saturated (|r| > 1); without it performance drops.

For the book's comparison, ``estimator="identity"`` passes the gradient
unchanged (g_r = g_q) and ``estimator="none"`` uses the true derivative, 0.

:data:`ESTIMATORS` is the registry of the estimators by name (what a run's ``estimator``
setting, the training CLI's ``--estimator``, the book and the tests choose from): a new
estimator is one function here and one entry there.
"""

from __future__ import annotations

import torch

from bnnlib.nn.binarize import sign, stochastic_sign
from bnnlib.registry import Registry

__all__ = ["ste_sign", "identity_ste_sign", "SignHardtanhSTE", "ESTIMATORS", "PAPER_ESTIMATOR"]


def _binarize(x: torch.Tensor, stochastic: bool, generator: torch.Generator | None):
    return stochastic_sign(x, generator) if stochastic else sign(x)


class SignHardtanhSTE(torch.autograd.Function):
    """Sign forward; g * 1{|x| <= 1} backward (paper Eq. 4)."""

    @staticmethod
    def forward(ctx, x, stochastic, generator):
        ctx.save_for_backward(x)
        return _binarize(x, stochastic, generator)

    @staticmethod
    def backward(ctx, grad_output):
        (x,) = ctx.saved_tensors
        return grad_output.masked_fill(x.abs() > 1, 0), None, None


class _SignIdentitySTE(torch.autograd.Function):
    """Sign forward; gradient passed through unchanged (no cancellation)."""

    @staticmethod
    def forward(ctx, x, stochastic, generator):
        return _binarize(x, stochastic, generator)

    @staticmethod
    def backward(ctx, grad_output):
        return grad_output, None, None


def _hardtanh(x, stochastic, generator):
    return SignHardtanhSTE.apply(x, stochastic, generator)


def _identity(x, stochastic, generator):
    return _SignIdentitySTE.apply(x, stochastic, generator)


def _none(x, stochastic, generator):
    return _binarize(x.detach(), stochastic, generator) + 0 * x


#: The estimators by name: ``f(x, stochastic, generator)``, Sign forward, each one's backward.
ESTIMATORS = Registry("estimator", {"hardtanh": _hardtanh, "identity": _identity, "none": _none})
#: The paper's estimator (Eq. 4).
PAPER_ESTIMATOR = "hardtanh"


def ste_sign(
    x: torch.Tensor,
    stochastic: bool = False,
    estimator: str = "hardtanh",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Binarize x (deterministic or stochastic) with a straight-through gradient.

    ``estimator``: a name of :data:`ESTIMATORS`: ``"hardtanh"`` (the paper's,
    g * 1{|x| <= 1}), ``"identity"`` (g unchanged) or ``"none"`` (the true derivative of
    Sign: zero).
    """
    return ESTIMATORS.pick(estimator)(x, stochastic, generator)


def identity_ste_sign(x: torch.Tensor, stochastic: bool = False) -> torch.Tensor:
    """Sign forward, identity backward: the STE *without* the paper's gradient cancellation."""
    return ste_sign(x, stochastic, estimator="identity")
