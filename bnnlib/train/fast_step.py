"""The fast path's optimizer step: the same update as ``opt.step()``, in fewer kernels.

The arithmetic lives in :mod:`bnnlib.nn.optim` only, written once; this module only
chooses how it is launched. :class:`bnnlib.nn.optim.ShiftAdaMax` (paper Algorithm 4)
steps with ``foreach=True``: :func:`bnnlib.nn.optim.shift_adamax_` once per group (per
step count) instead of once per parameter. :class:`bnnlib.nn.optim.Adam` is PyTorch's
Adam, fused (or foreach) as built, and every optimizer of :mod:`bnnlib.nn.optim` clips
the binary weights to [-1, 1] with the layers' multi-tensor clamp
(:func:`bnnlib.nn.layers.clip_latent_`, Algorithm 1), so their plain ``opt.step()`` is
already the fast one. The step is always the optimizer's public ``step``, so an LR
scheduler sees it as it sees the plain path's. On the CPU the parameters are those of
the plain path bit for bit (tested). :func:`bnnlib.train.fit` takes it with ``fast=True``.
"""

from __future__ import annotations

import torch

from bnnlib.nn.optim import ShiftAdaMax

__all__ = ["fast_step"]


def fast_step(opt: torch.optim.Optimizer) -> None:
    """The optimizer step of the fast path: the same update as ``opt.step()``.

    :class:`bnnlib.nn.optim.ShiftAdaMax`: ``opt.step(foreach=True)`` (multi-tensor
    operations); any other optimizer, :class:`bnnlib.nn.optim.Adam` included:
    ``opt.step()``.
    """
    if isinstance(opt, ShiftAdaMax):
        opt.step(foreach=True)
    else:
        opt.step()
