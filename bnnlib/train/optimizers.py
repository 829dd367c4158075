"""The optimizers a run chooses from by name (:data:`OPTIMIZERS`, read by
:func:`bnnlib.train.loop.make_optimizer`, the training CLI and the run configuration).

* ``adam``: Adam (fused kernels where PyTorch has them), the Theano code's;
* ``shift_adamax``: shift-based AdaMax, the paper's Algorithm 4;
* ``shift_adamax_torch7``: the Torch7 code's variant of it;
* ``adamax_torch7``: that variant without its AP2 roundings (the ablation of the shifts).

Each takes the net, the LR and the Glorot scales (:mod:`bnnlib.nn.optim`). A new optimizer is
one function and one entry.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from bnnlib.nn.optim import Adam, ShiftAdaMax
from bnnlib.registry import Registry

__all__ = ["OPTIMIZERS"]


def _adam(net: nn.Module, lr: float, glorot_scale: bool | str) -> torch.optim.Optimizer:
    p = next(net.parameters(), None)
    if (p.device.type if p is not None else "cpu") in ("cpu", "cuda"):
        with contextlib.suppress(RuntimeError, ValueError):
            return Adam(net, lr=lr, glorot_scale=glorot_scale, fused=True)
    return Adam(net, lr=lr, glorot_scale=glorot_scale)


def _shift_adamax(variant: str, shift: bool):
    def make(net: nn.Module, lr: float, glorot_scale: bool | str) -> torch.optim.Optimizer:
        return ShiftAdaMax(net, lr=lr, glorot_scale=glorot_scale, variant=variant, shift=shift)

    return make


OPTIMIZERS = Registry(
    "optimizer",
    {
        "adam": _adam,
        "shift_adamax": _shift_adamax("paper", shift=True),
        "shift_adamax_torch7": _shift_adamax("torch7", shift=True),
        "adamax_torch7": _shift_adamax("torch7", shift=False),
    },
)
