"""The fast path's forward product of a binary dense layer: XNOR-popcount, exactly float32's.

A hidden layer of the MLPs gets ±1 inputs (the Sign activations) and uses ±1 weights
(Sign(W)), so every product it computes is a sum of ±1 terms: an integer of at most the
input width in magnitude. float32 holds such integers exactly (up to 2^24), whatever the order
of the sum, so torch's float32 GEMM and an XNOR-popcount product (paper Section 4,
:func:`bnnlib.kernels.xnor.xnor_gemm`: ``a . b = k - 2 popcount(a XOR b)`` over packed bits)
give the same float32 numbers, bit for bit. The second reads 32x fewer bytes and does 64
multiply-accumulates per XOR + popcount of a 64-bit word: on a 2-core EPYC (Zen 3, AVX2, one
thread) the 100 x 2048 by 2048 x 2048 product of the Torch7 preset took about 4 ms, plus 3 ms to
pack Sign(W), against about 20 ms in float32 (MKL).

:class:`XnorProduct` is what :class:`bnnlib.train.fast_step.FastStep` gives each binary dense
layer with its Sign(W) (:meth:`bnnlib.nn.layers.BinaryLinear.use_weight_sign`). It packs the
input and, once per new Sign(W), the weights; where the input is not ±1 (the first layer's
pixels, a dropout's 0 and 2) it returns None and the layer computes ``F.linear``. The backward
pass is the one autograd runs for ``F.linear(x, Sign(W))``: the same two float32 products with
the same operands and layouts (``grad @ Sign(W)`` for the input, ``grad.T @ x`` for the
weight, straight through to the latent W), so the gradients, and with them the trained
parameters, are bit for bit the plain path's (``tests/test_fast_step.py``).
"""

from __future__ import annotations

import torch

__all__ = ["XnorProduct"]

#: float32 represents every integer up to this exactly: the largest input width taken.
EXACT_WIDTH = 1 << 24


def _try_pack(x: torch.Tensor) -> torch.Tensor | None:
    from bnnlib.kernels.packing import try_pack  # numba: imported on the first product

    return try_pack(x.detach())


class _XnorLinear(torch.autograd.Function):
    """y = x @ Sign(W).T from packed bits; the backward pass of ``F.linear(x, Sign(W))``."""

    @staticmethod
    def forward(ctx, x, weight, sign, x_words, w_words):
        from bnnlib.kernels.xnor import xnor_gemm

        ctx.save_for_backward(x, sign)
        return xnor_gemm(x_words, w_words, x.shape[1]).to(x.dtype)

    @staticmethod
    def backward(ctx, grad):
        x, sign = ctx.saved_tensors
        # As autograd's mm backward for x @ Sign(W).T (Sign(W).T is column-major): the input's
        # gradient grad @ Sign(W), the weight's (grad.T @ x), computed as one product each.
        grad_x = grad.mm(sign) if ctx.needs_input_grad[0] else None
        grad_w = grad.t().mm(x) if ctx.needs_input_grad[1] else None
        return grad_x, grad_w, None, None, None


class XnorProduct:
    """A layer's forward product by XNOR-popcount when its input is ±1 (module docstring).

    ``calls`` counts the products it computed and ``declined`` the inputs it returned None
    for, so a benchmark or a test can say which layers took it.
    """

    def __init__(self) -> None:
        self.calls = 0
        self.declined = 0
        self._packed: tuple[torch.Tensor, int, torch.Tensor] | None = None  # (sign, version, words)

    def _weight_words(self, sign: torch.Tensor) -> torch.Tensor | None:
        """Sign(W) packed, once per new Sign(W) (its version counter advances at each step)."""
        cached = self._packed
        if cached is not None and cached[0] is sign and cached[1] == sign._version:
            return cached[2]
        words = _try_pack(sign)
        self._packed = None if words is None else (sign, sign._version, words)
        return words

    def __call__(
        self, x: torch.Tensor, weight: torch.Tensor, sign: torch.Tensor
    ) -> torch.Tensor | None:
        if (x.dim() != 2 or x.dtype != torch.float32 or x.device.type != "cpu"
                or sign.dtype != torch.float32 or x.shape[1] > EXACT_WIDTH):  # fmt: skip
            self.declined += 1
            return None
        x_words = _try_pack(x)
        w_words = None if x_words is None else self._weight_words(sign)
        if w_words is None:
            self.declined += 1
            return None
        self.calls += 1
        return _XnorLinear.apply(x, weight, sign, x_words, w_words)
