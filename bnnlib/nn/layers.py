"""Binary layers: latent real weights, binarized in the forward pass (paper Section 1.2-1.5).

Each binary layer keeps a real-valued *latent* weight W. Training uses only its
binarization W_b = Sign(W) in the forward pass and to compute gradients
(paper Algorithm 1); the gradient reaches W through the straight-through
estimator (:mod:`bnnlib.nn.ste`).

Clipping and the weight's STE belong together (paper Section 1.3, Algorithm 1).
The paper's STE is g * 1{|W| <= 1}; the layers pass g unchanged (the "identity"
estimator, as the paper's code does), which is the same thing only while every
latent weight lies in [-1, 1]. That is what clipping keeps: after each update the
optimizers of :mod:`bnnlib.nn.optim` call this module's :func:`clip_latent_` on
every binary layer's weight (:meth:`BinaryLinear.clip_` for one layer), so the
latent weights cannot grow without bound and the indicator is always 1. The
coupling is checked on demand: a layer with ``check_clip=True`` (or every layer of
a net after :func:`check_clipping`) verifies in training mode, once per forward,
that its weight is within [-1, 1] and raises :class:`UnclippedWeightError`
otherwise, e.g. when a plain ``torch.optim`` optimizer (which does not clip)
trains it. The check reads the whole weight and syncs a GPU, so it is off by default.

Stochastic binarization (paper Eq. 2) is chosen separately for the weights
(``stochastic_weights``) and for the layer's input activation
(``stochastic_input``): the Torch7 code of the paper binarizes activations
stochastically and weights deterministically (its ``-stcNeurons true
-stcWeights false``). Either applies in training only; evaluation is always
deterministic.

The input of a binary layer is binarized by the layer itself when
``binarize_input=True`` (a hidden layer fed by a batch-norm output), or taken as
it comes when ``binarize_input=False``: the first layer, whose input is the real
8-bit image (paper Section 1.6), and a layer whose input was already binarized
by a :class:`SignActivation` (for instance Sign -> Dropout -> layer, the order of
the paper's code). Nothing is inferred from a layer's width.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import nn
from torch.nn import functional as F

from bnnlib.nn.ste import ESTIMATORS, ste_sign

__all__ = [
    "BinaryLinear",
    "BinaryConv2d",
    "SignActivation",
    "is_binary_layer",
    "WEIGHT_BOUND",
    "clip_latent_",
    "check_clipping",
    "UnclippedWeightError",
]

#: Latent weights live in [-WEIGHT_BOUND, WEIGHT_BOUND] (paper Section 1.3, Algorithm 1).
WEIGHT_BOUND = 1.0


class UnclippedWeightError(RuntimeError):
    """A latent weight outside [-1, 1] reached the identity STE of a binary layer."""


@torch.no_grad()
def clip_latent_(weights: Iterable[torch.Tensor]) -> None:
    """Clip latent weights to [-1, 1] in place (paper Section 1.3, Algorithm 1).

    The one clipping of the package, as two multi-tensor clamps: the binary layers'
    :meth:`~BinaryLinear.clip_` and the optimizers of :mod:`bnnlib.nn.optim` (after
    every step) call it. Elementwise ``clamp(w, -1, 1)``; NaN stays NaN.
    """
    weights = list(weights)
    if weights:
        torch._foreach_clamp_min_(weights, -WEIGHT_BOUND)
        torch._foreach_clamp_max_(weights, WEIGHT_BOUND)


class _BinaryMixin:
    """What BinaryLinear and BinaryConv2d share: flags, init, input/weight binarization."""

    binarize_input: bool
    stochastic_weights: bool
    stochastic_input: bool
    check_clip: bool = False  # the debug check of clipping (module docstring)
    weight: nn.Parameter
    # (Sign(W), W's version, the product that uses it or None): use_weight_sign
    _weight_sign: tuple[torch.Tensor, int, Product | None] | None = None

    def _init_binary(
        self, binarize_input: bool, weights: bool, inputs: bool, check_clip: bool
    ) -> None:
        self.binarize_input = binarize_input
        self.stochastic_weights = weights
        self.stochastic_input = inputs
        self.check_clip = check_clip
        # The paper's code draws latent weights from U(-H, H) with H = 1.
        with torch.no_grad():
            self.weight.uniform_(-WEIGHT_BOUND, WEIGHT_BOUND)
            if self.bias is not None:
                self.bias.zero_()

    def clip_(self):
        """Clip the latent weight to [-1, 1] in place (:func:`clip_latent_`); returns the layer."""
        clip_latent_([self.weight])
        return self

    def assert_clipped(self) -> None:
        """Raise :class:`UnclippedWeightError` unless every latent weight is in [-1, 1].

        One reduction over the weight and, on a GPU, a sync.
        """
        largest = self.weight.detach().abs().max()
        if not bool(largest <= WEIGHT_BOUND):  # NaN fails too
            raise UnclippedWeightError(
                f"{type(self).__name__}: latent weight with |W| = {float(largest):g} > "
                f"{WEIGHT_BOUND:g} reached the identity STE; the optimizer must clip binary "
                "weights after every step (bnnlib.nn.optim.Adam / ShiftAdaMax do, "
                "bnnlib.nn.layers.clip_latent_)"
            )

    def use_weight_sign(self, sign: torch.Tensor, product: Product | None = None) -> None:
        """Take ``sign`` = Sign(W) of the current latent weight, computed by whoever just
        changed W: the fast training step writes it in the same pass over memory as the
        update (:class:`bnnlib.train.fast_step.FastStep`). :meth:`binary_weight` returns it,
        with the same straight-through gradient, as long as W's version counter shows no
        change since (any in-place operation on W, ``load_state_dict`` included, ends it);
        stochastic binarization never uses it.

        ``product`` (dense layers only) computes ``x @ sign.T`` for the forward pass with the
        same gradients as ``F.linear`` of the given sign (e.g. by XNOR-popcount,
        :mod:`bnnlib.train.fast_linear`), called as ``product(x, W, sign)``; it returns None
        for an input it does not take, and the layer then uses ``F.linear``."""
        if sign.shape != self.weight.shape:
            raise ValueError(
                f"use_weight_sign: Sign(W) of shape {tuple(sign.shape)} for a weight of shape "
                f"{tuple(self.weight.shape)}"
            )
        if product is not None and not isinstance(self, nn.Linear):
            raise ValueError(f"use_weight_sign: a product is for dense layers, not {type(self)}")
        self._weight_sign = (sign, self.weight._version, product)

    def _given(self) -> tuple[torch.Tensor, Product | None] | None:
        """The given (Sign(W), product) while still valid for this weight, in training or
        evaluation with deterministic weights; else None."""
        given, w = self._weight_sign, self.weight
        if given is None or (self.stochastic_weights and self.training):
            return None
        if given[1] != w._version or given[0].device != w.device or given[0].dtype != w.dtype:
            return None
        return given[0], given[2]

    def binary_weight(self) -> torch.Tensor:
        """W_b = Sign(W), with the straight-through gradient to the latent W.

        The weight's STE passes the gradient unchanged ("identity"), as the paper's
        code does. The paper's g * 1{|W| <= 1} (Section 1.3) equals it because the
        optimizers clip W to [-1, 1] after every step (:func:`clip_latent_`), so the
        indicator is always 1 and computing it would only cost a pass over the largest
        tensors. With ``check_clip`` set, training mode verifies that premise
        (:meth:`assert_clipped`) before each use.
        """
        if self.check_clip and self.training:
            self.assert_clipped()
        given = self._given()
        if given is not None:
            return _GivenSign.apply(self.weight, given[0])
        # Stochastic binarization in training only; evaluation is deterministic.
        stoch = self.stochastic_weights and self.training
        return ste_sign(self.weight, stoch, estimator="identity")

    def binary_input(self, x: torch.Tensor) -> torch.Tensor:
        if not self.binarize_input:
            return x
        return ste_sign(x, self.stochastic_input and self.training)

    def _flags(self) -> str:
        return (
            f"binarize_input={self.binarize_input}, "
            f"stochastic_weights={self.stochastic_weights}, "
            f"stochastic_input={self.stochastic_input}"
        )


#: A dense layer's forward product with a given Sign(W): ``product(x, W, Sign(W))`` is
#: ``x @ Sign(W).T`` with ``F.linear``'s gradients to x and (straight through) to W, or None.
Product = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], "torch.Tensor | None"]


class _GivenSign(torch.autograd.Function):
    """Sign(W) already computed (:meth:`_BinaryMixin.use_weight_sign`) forward; the identity
    STE backward, as :func:`bnnlib.nn.ste.ste_sign` with ``estimator="identity"``."""

    @staticmethod
    def forward(ctx, weight, sign):
        return sign.view_as(sign)  # a new tensor object over the same memory and version

    @staticmethod
    def backward(ctx, grad_output):
        return grad_output, None


class BinaryLinear(_BinaryMixin, nn.Linear):
    """Fully connected layer with binary weights (and binary input unless ``binarize_input=False``).

    ``y = x_b @ Sign(W)^T (+ b)``. The bias defaults to off: batch norm follows
    every binary layer in the paper's models and would absorb it.
    ``stochastic_weights`` / ``stochastic_input`` binarize the weights / the input
    stochastically while training (paper Eq. 2); ``check_clip`` checks in training
    that the latent weights were clipped (module docstring).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        binarize_input: bool = True,
        bias: bool = False,
        *,
        stochastic_weights: bool = False,
        stochastic_input: bool = False,
        check_clip: bool = False,
    ) -> None:
        super().__init__(in_features, out_features, bias=bias)
        self._init_binary(binarize_input, stochastic_weights, stochastic_input, check_clip)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.binary_input(x)
        given = self._given()
        if given is not None and given[1] is not None and self.bias is None:
            if self.check_clip and self.training:
                self.assert_clipped()
            y = given[1](x, self.weight, given[0])
            if y is not None:
                return y
            return F.linear(x, _GivenSign.apply(self.weight, given[0]))  # checked just above
        return F.linear(x, self.binary_weight(), self.bias)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, {self._flags()}"


class BinaryConv2d(_BinaryMixin, nn.Conv2d):
    """2-D convolution with binary weights (and binary input unless ``binarize_input=False``).

    Padding, if any, adds zeros to the *binarized* input, as in the paper's code.
    Flags as in :class:`BinaryLinear`.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int = 1,
        padding: int | str = 0,
        binarize_input: bool = True,
        bias: bool = False,
        *,
        stochastic_weights: bool = False,
        stochastic_input: bool = False,
        check_clip: bool = False,
    ) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, bias=bias)
        self._init_binary(binarize_input, stochastic_weights, stochastic_input, check_clip)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(self.binary_input(x), self.binary_weight(), self.bias)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, {self._flags()}"


class SignActivation(nn.Module):
    """The binary activation: Sign in the forward pass, STE in the backward pass (Section 1.3).

    ``stochastic=True`` binarizes stochastically while training (paper Eq. 2, the
    Torch7 default; a model's ``stochastic_activations``) and deterministically in
    evaluation. ``estimator`` is one of
    :data:`bnnlib.nn.ste.ESTIMATORS` (the paper's is ``"hardtanh"``).
    """

    def __init__(self, stochastic: bool = False, estimator: str = "hardtanh") -> None:
        super().__init__()
        if estimator not in ESTIMATORS:
            raise ValueError(f"unknown estimator {estimator!r}; choose one of {ESTIMATORS}")
        self.stochastic = stochastic
        self.estimator = estimator

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ste_sign(x, self.stochastic and self.training, self.estimator)

    def extra_repr(self) -> str:
        return f"stochastic={self.stochastic}, estimator={self.estimator!r}"


def is_binary_layer(module: nn.Module) -> bool:
    """True for the layers whose latent weights are binarized (and clipped)."""
    return isinstance(module, (BinaryLinear, BinaryConv2d))


def check_clipping(net: nn.Module, enabled: bool = True) -> nn.Module:
    """Turn the clipping check (``check_clip``, module docstring) on or off for every binary
    layer of ``net``; returns ``net``. A debugging aid: each check syncs a GPU."""
    for module in net.modules():
        if is_binary_layer(module):
            module.check_clip = enabled
    return net
