"""Walking a trained BNN (an nn.Sequential) into units, and its input's shape and scaling.

A unit is one binary layer with what follows it up to the next one: ``BinaryLinear`` or
``BinaryConv2d``, then [MaxPool2d] [BatchNorm] [MaxPool2d] and ``SignActivation``, or nothing
for the last layer, whose batch-normalized outputs are the class scores. Dropout and Identity
are skipped (evaluation), ``Flatten(1, -1)`` is remembered on the next unit.

The input is the 8-bit image (paper Section 1.6), which the float model saw scaled as
``2x/255 - 1`` (:data:`INPUT_SCALING`, :func:`bnnlib.data.scale`).
"""

from __future__ import annotations

import operator

import torch
from torch import nn

from bnnlib.analysis.trace import image_side, pair
from bnnlib.inference.spec import PoolSpec
from bnnlib.nn.binarize import sign
from bnnlib.nn.layers import BinaryConv2d, BinaryLinear, SignActivation

__all__ = [
    "INPUT_SCALING",
    "Unit",
    "units",
    "infer_input_shape",
    "sign_weight",
    "pool_spec",
    "check_batch_size",
]

INPUT_SCALING = "2x/255-1"


def check_batch_size(batch_size) -> int:
    """``batch_size`` as an int >= 1, else one ValueError (a negative one gave no batches)."""
    try:
        n = operator.index(batch_size)  # ints and numpy ints, not floats
    except TypeError:
        n = None
    if isinstance(batch_size, bool) or n is None or n < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    return n


_SKIP = (nn.Dropout, nn.Identity)
_BN = nn.modules.batchnorm._BatchNorm
_BINARY = (BinaryLinear, BinaryConv2d)


class Unit:
    """One binary layer with its pooling, batch norm and output kind."""

    def __init__(self, layer: nn.Module, flatten_before: bool = False):
        self.layer = layer
        self.bn: nn.Module | None = None
        self.pool: nn.MaxPool2d | None = None
        self.pool_after_bn = False
        self.output = "sign"  # "sign" (binary output) or "scores" (last layer)
        self.flatten_before = flatten_before


def _unit_at(mods: list[nn.Module], i: int, flatten: bool) -> tuple[Unit, int]:
    """The unit whose binary layer is ``mods[i]``, and the index after it."""
    m = mods[i]
    if not isinstance(m, _BINARY):
        raise ValueError(
            f"cannot export module {i} ({type(m).__name__}): expected BinaryLinear or "
            "BinaryConv2d (a float model or an unsupported layer order?)"
        )
    u, i = Unit(m, flatten_before=flatten), i + 1
    if i < len(mods) and isinstance(mods[i], nn.MaxPool2d):
        u.pool, i = mods[i], i + 1
    if i < len(mods) and isinstance(mods[i], _BN):
        u.bn, i = mods[i], i + 1
    if u.pool is None and i < len(mods) and isinstance(mods[i], nn.MaxPool2d):
        u.pool, u.pool_after_bn, i = mods[i], True, i + 1
    if i < len(mods) and isinstance(mods[i], SignActivation):
        i += 1
    elif i == len(mods):
        u.output = "scores"
    else:
        nxt = next((x for x in mods[i:] if not isinstance(x, nn.Flatten)), None)
        if not (isinstance(nxt, _BINARY) and nxt.binarize_input):
            raise ValueError(
                f"cannot export: {type(mods[i]).__name__} after a binary layer; expected "
                "[MaxPool2d] [BatchNorm] SignActivation, or the end of the network"
            )
    if u.pool is not None and not isinstance(m, BinaryConv2d):
        raise ValueError("MaxPool2d after a BinaryLinear layer is not supported")
    return u, i


def units(model: nn.Module) -> list[Unit]:
    """Group an nn.Sequential into units: binary layer [MaxPool] [BN] [MaxPool] [Sign]."""
    if not isinstance(model, nn.Sequential):
        raise ValueError(f"export expects an nn.Sequential BNN, got {type(model).__name__}")
    mods = [m for m in model if not isinstance(m, _SKIP)]
    found: list[Unit] = []
    flatten, i = False, 0
    while i < len(mods):
        m = mods[i]
        if isinstance(m, nn.Flatten):
            if m.start_dim != 1 or m.end_dim != -1:
                raise ValueError(f"unsupported {m}: only Flatten(1, -1)")
            flatten, i = True, i + 1
            continue
        u, i = _unit_at(mods, i, flatten)
        flatten = False
        found.append(u)
    if not found:
        raise ValueError("the model has no binary layer to export")
    if not isinstance(found[-1].layer, BinaryLinear):
        raise ValueError("the last binary layer must be a BinaryLinear giving the class scores")
    if found[0].layer.binarize_input:
        raise ValueError(
            "the first binary layer must take the real 8-bit image (binarize_input=False)"
        )
    return found


def pool_spec(pool: nn.MaxPool2d, after_bn: bool) -> PoolSpec:
    """A MaxPool2d as the packed file's typed pool spec; refuses the options the packed net
    lacks."""
    if pool.ceil_mode or pair(pool.dilation) != (1, 1):
        raise ValueError(f"unsupported {pool}: only dilation 1 and ceil_mode=False")
    return PoolSpec(
        kernel=pair(pool.kernel_size),
        stride=pair(pool.stride if pool.stride is not None else pool.kernel_size),
        padding=pair(pool.padding),
        after_bn=after_bn,
    )


def infer_input_shape(model: nn.Module, found: list[Unit]) -> list[int]:
    """(features,) of an MLP; (C, side, side) of a conv net, the side of
    :func:`~bnnlib.analysis.trace.image_side` (the smallest square image whose convolution
    output fits the first linear layer: 32 for the paper's CIFAR-10 ConvNet)."""
    first = found[0].layer
    if isinstance(first, BinaryLinear):
        return [first.in_features]
    side = image_side(model)
    if side is None:
        raise ValueError("cannot infer the input image size; pass input_shape=(C, H, W)")
    return [first.in_channels, side, side]


def sign_weight(layer: nn.Module) -> torch.Tensor:
    """W_b = Sign(W) of a binary layer, float32 on the CPU (Sign(0) = +1, paper Eq. 1)."""
    return sign(layer.weight.detach().float().cpu())
