"""The float simulation: the reference the packed net matches exactly.

:func:`simulate` runs the model in evaluation mode (dropout off, deterministic Sign) with:

* the input as the 8-bit image x, scaled as ``(2x - 255) / 255`` (= 2x/255 - 1); the first
  layer's pre-activation is computed as ``t / 255`` with the integer ``t = W_b . (2x - 255)``
  (zero padding of a convolution is 0 in both forms);
* every linear/conv product computed exactly (integer operands, float32 accumulation whose
  partial sums stay below 2^24, then float64);
* batch norm in float64 as ``a * (s - mu) + beta`` (three separately rounded operations), a
  layer bias, if any, folded into mu;
* Sign as ``+1 iff y >= 0``; max-pooling where the model has it; the last layer's scores
  ``a * (s - mu) + beta`` in float64, and the prediction their argmax.

It is independent of packing, thresholds, im2col and XNOR. The float32 model itself computes
the first layer's sum and batch norm in float32, so it can differ from the simulation where a
neuron sits within rounding of its threshold; the benchmark reports that agreement too.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from bnnlib.data.loaders import to_uint8
from bnnlib.inference.fold import EXACT_F32, fold_batchnorm
from bnnlib.inference.graph import Unit, check_batch_size, infer_input_shape, sign_weight, units
from bnnlib.nn.binarize import sign
from bnnlib.nn.layers import BinaryConv2d, BinaryLinear

__all__ = ["simulate", "simulate_scores", "float32_nbytes"]


def _exact_f32(fn, x: torch.Tensor, w: torch.Tensor, bound: float, **kw) -> torch.Tensor:
    """fn(x, w) for integer-valued x, w: float32 when every partial sum is < 2^24, else float64."""
    dt = torch.float32 if bound < EXACT_F32 else torch.float64
    return fn(x.to(dt), w.to(dt), **kw).double()


def _unit(u: Unit, h: torch.Tensor, first: bool) -> torch.Tensor:
    """One unit on float64 values: product, [pool], batch norm, [pool], [Sign]."""
    L, wb = u.layer, sign_weight(u.layer)
    k = wb[0].numel()
    bound = 255 * k if first else k
    if u.flatten_before or (isinstance(L, BinaryLinear) and h.dim() > 2):
        h = h.flatten(1)
    if isinstance(L, BinaryLinear):
        h = _exact_f32(F.linear, h, wb, bound)
    else:
        h = _exact_f32(F.conv2d, h, wb, bound, stride=L.stride, padding=L.padding)
    if first:
        h = h / 255.0
    if u.pool is not None and not u.pool_after_bn:
        h = u.pool(h)
    h = fold_batchnorm(L, u.bn)(h, dim=1)
    if u.pool is not None and u.pool_after_bn:
        h = u.pool(h)
    if u.output == "sign":
        h = sign(h)
    return h


@torch.no_grad()
def simulate_scores(model: nn.Module, X, batch_size: int = 1000) -> torch.Tensor:
    """The float simulation's last-layer scores (float64); see the module docstring.

    Runs the model's layers in their order with evaluation semantics, independently of
    packing, thresholds, im2col and XNOR: float products of +/-1 (and integer) values, batch
    norm as the float64 affine map of :func:`~bnnlib.inference.fold_batchnorm`, Sign as
    ``+1 iff y >= 0``.
    """
    batch_size = check_batch_size(batch_size)
    found = units(model)
    xu = to_uint8(X).cpu()
    if isinstance(found[0].layer, BinaryLinear):
        xu = xu.reshape(xu.shape[0], -1)
    elif xu.dim() != 4:
        xu = xu.reshape(xu.shape[0], *infer_input_shape(model, found))
    out = []
    for i in range(0, len(xu), batch_size):
        h = xu[i : i + batch_size].double() * 2 - 255  # 255 * (2x/255 - 1), an integer
        for j, u in enumerate(found):
            h = _unit(u, h, first=j == 0)
        out.append(h)
    if not out:
        return torch.zeros(0, found[-1].layer.weight.shape[0], dtype=torch.float64)
    return torch.cat(out)


def simulate(model: nn.Module, X, batch_size: int = 1000) -> torch.Tensor:
    """Predicted classes (int64) of the float simulation; the packed net must equal them."""
    return simulate_scores(model, X, batch_size).argmax(1)


def float32_nbytes(model: nn.Module) -> int:
    """Bytes of the binary layers' weights stored as float32 (what packing shrinks ~32x)."""
    return sum(
        4 * m.weight.numel() for m in model.modules() if isinstance(m, (BinaryLinear, BinaryConv2d))
    )
