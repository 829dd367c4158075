"""The paper's models (Section 2) and their float twins.

* :func:`mnist_mlp` — the permutation-invariant MLP 784 -> 3 x 4096 -> 10 (Section 2.1).
* :func:`cifar10_convnet` — (2 x 128C3)-MP2-(2 x 256C3)-MP2-(2 x 512C3)-MP2-(2 x 1024FC)-10FC
  (Section 2.3).
* :func:`svhn_convnet` — the same ConvNet with half the units in each layer (Section 2.4).

Every binary layer is followed by batch norm (moving-average factor 0.1,
epsilon 1e-4, as the paper's code); hidden layers then binarize with Sign (STE).
The last layer keeps batch norm and no activation: its outputs feed the square
hinge loss. ``stochastic_activations`` and ``stochastic_weights`` choose stochastic
binarization (paper Eq. 2, training only) for the Sign activations and for the
weights separately (pass both for a fully stochastic net). The Torch7 code uses
stochastic activations with deterministic weights.

``binary=False`` builds the *float twin*: the same architecture with
``nn.Linear``/``nn.Conv2d`` and hardtanh, the function whose derivative the STE
uses, in place of Sign. ``batchnorm="shift"`` uses the shift-based batch norm.

The layer order follows the paper's code: Linear -> BN -> Sign -> Dropout -> Linear,
so a hidden layer after dropout takes its (already binary) input as it comes
(``binarize_input=False``), and Conv -> MaxPool -> BN -> Sign for the ConvNets.

Registries (:class:`bnnlib.registry.Registry`): :data:`MODELS` holds each model's
:class:`ModelSpec` (its builder, its kind, the run settings it takes, the paper's schedule
for it), :data:`BATCHNORMS` the batch norms by name. A new model is a builder and one entry.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn

from bnnlib import paper
from bnnlib.nn.layers import BinaryConv2d, BinaryLinear, SignActivation
from bnnlib.nn.shift import ShiftBatchNorm1d, ShiftBatchNorm2d
from bnnlib.registry import Registry

__all__ = [
    "mnist_mlp", "cifar10_convnet", "svhn_convnet", "MODELS", "ModelSpec", "BATCHNORMS",
    "build", "default_model", "for_data", "mlp_widths",
]  # fmt: skip

BN_EPS = 1e-4
BN_MOMENTUM = 0.1

#: The batch norms by name: (the 1-d class, the 2-d class).
BATCHNORMS = Registry(
    "batchnorm",
    {
        "standard": (nn.BatchNorm1d, nn.BatchNorm2d),
        "shift": (ShiftBatchNorm1d, ShiftBatchNorm2d),
    },
)


def _bn(
    num_features: int, kind: str, dims: int, eps: float = BN_EPS, momentum: float = BN_MOMENTUM
) -> nn.Module:
    cls = BATCHNORMS.pick(kind)[0 if dims == 1 else 1]
    return cls(num_features, eps=eps, momentum=momentum)


def _act(binary: bool, stochastic: bool, estimator: str) -> nn.Module:
    return SignActivation(stochastic, estimator) if binary else nn.Hardtanh()


def _linear(n_in: int, n_out: int, binary: bool, stochastic_weights: bool) -> nn.Module:
    if binary:
        # The input is the real image (first layer) or already binary (after Sign).
        return BinaryLinear(
            n_in, n_out, binarize_input=False, stochastic_weights=stochastic_weights
        )
    return nn.Linear(n_in, n_out, bias=False)


def _conv(c_in: int, c_out: int, binary: bool, stochastic_weights: bool) -> nn.Module:
    if binary:
        return BinaryConv2d(
            c_in, c_out, 3, padding=1, binarize_input=False, stochastic_weights=stochastic_weights
        )
    return nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)


def mnist_mlp(
    hidden: int | Sequence[int] = 4096,
    depth: int | None = None,
    dropout_in: float = 0.2,
    dropout_hidden: float = 0.5,
    binary: bool = True,
    batchnorm: str = "standard",
    estimator: str = "hardtanh",
    in_features: int = 784,
    num_classes: int = 10,
    *,
    stochastic_activations: bool = False,
    stochastic_weights: bool = False,
    last_batchnorm: str | None = None,
    bn_eps: float = BN_EPS,
    bn_momentum: float = BN_MOMENTUM,
) -> nn.Sequential:
    """The paper's MNIST MLP: in_features -> depth x hidden -> num_classes (Section 2.1).

    ``hidden`` is one width for ``depth`` layers (default 3), or one width per hidden layer
    (a sequence: 784-2048-1024-512-10 is ``hidden=(2048, 1024, 512)``).

    ``stochastic_activations`` / ``stochastic_weights`` binarize the Sign
    activations / the weights stochastically while training (paper Eq. 2);
    ``estimator`` picks the STE of the activations (:mod:`bnnlib.nn.ste`).
    ``last_batchnorm`` is the output layer's batch norm (default: ``batchnorm``;
    the Torch7 code keeps an ordinary one there), with ``bn_eps`` and
    ``bn_momentum`` for every batch norm.
    """
    widths = mlp_widths(hidden, depth)
    bn = {"eps": bn_eps, "momentum": bn_momentum}
    layers: list[nn.Module] = [nn.Flatten()]
    if dropout_in > 0:
        layers.append(nn.Dropout(dropout_in))
    width = in_features
    for hidden in widths:
        layers += [
            _linear(width, hidden, binary, stochastic_weights),
            _bn(hidden, batchnorm, 1, **bn),
            _act(binary, stochastic_activations, estimator),
        ]
        if dropout_hidden > 0:
            layers.append(nn.Dropout(dropout_hidden))
        width = hidden
    layers += [
        _linear(width, num_classes, binary, stochastic_weights),
        _bn(num_classes, last_batchnorm or batchnorm, 1, **bn),
    ]
    return nn.Sequential(*layers)


def mlp_widths(hidden: int | Sequence[int], depth: int | None = None) -> tuple[int, ...]:
    """The hidden widths of an MLP: ``hidden`` repeated ``depth`` times (default 3), or the
    sequence ``hidden`` itself (``depth``, if given, must be its length)."""
    if isinstance(hidden, int):
        return (hidden,) * (3 if depth is None else depth)
    widths = tuple(hidden)
    if depth is not None and depth != len(widths):
        raise ValueError(f"depth {depth} but {len(widths)} hidden widths {widths}")
    return widths


def cifar10_convnet(
    binary: bool = True,
    width: float = 1.0,
    in_channels: int = 3,
    num_classes: int = 10,
    image_size: int = 32,
    batchnorm: str = "standard",
    estimator: str = "hardtanh",
    *,
    stochastic_activations: bool = False,
    stochastic_weights: bool = False,
    fc_width: float | None = None,
) -> nn.Sequential:
    """The paper's CIFAR-10 ConvNet (Section 2.3); ``width`` scales the convolutions' units.

    (2 x 128C3)-MP2-(2 x 256C3)-MP2-(2 x 512C3)-MP2-(2 x 1024FC)-10FC, batch norm
    after every layer, Conv -> MaxPool -> BN -> Sign where a pooling follows.
    ``fc_width`` scales the two dense layers (default: ``width``). Stochastic
    flags as in :func:`mnist_mlp`.
    """
    chans = [max(1, round(c * width)) for c in (128, 256, 512)]
    fc = max(1, round(1024 * (width if fc_width is None else fc_width)))
    layers: list[nn.Module] = []
    c_prev = in_channels
    for c in chans:
        layers += [_conv(c_prev, c, binary, stochastic_weights), _bn(c, batchnorm, 2)]
        layers += [_act(binary, stochastic_activations, estimator)]
        layers += [_conv(c, c, binary, stochastic_weights), nn.MaxPool2d(2), _bn(c, batchnorm, 2)]
        layers += [_act(binary, stochastic_activations, estimator)]
        c_prev = c
    side = image_size // 8
    layers.append(nn.Flatten())
    width_in = c_prev * side * side
    for _ in range(2):
        layers += [_linear(width_in, fc, binary, stochastic_weights), _bn(fc, batchnorm, 1)]
        layers += [_act(binary, stochastic_activations, estimator)]
        width_in = fc
    layers += [
        _linear(width_in, num_classes, binary, stochastic_weights),
        _bn(num_classes, batchnorm, 1),
    ]
    return nn.Sequential(*layers)


def svhn_convnet(binary: bool = True, width: float = 1.0, **kw) -> nn.Sequential:
    """The SVHN ConvNet: the CIFAR-10 ConvNet with half the units in each convolution.

    The paper (Section 2.4) says "half the number of units in each layer", but
    both official codes (Theano ``svhn.py``, Torch7 ``BinaryNet_SVHN_Model.lua``)
    halve only the convolutions (64-128-256 channels) and keep the two dense
    layers at 1024 units; we follow the code. ``width`` scales both further.
    """
    return cifar10_convnet(binary=binary, width=0.5 * width, fc_width=width, **kw)


@dataclass(frozen=True)
class ModelSpec:
    """A model of :data:`MODELS`: ``build`` (its builder), ``kind`` (``"mlp"``: sized by its
    hidden widths, the input flattened; ``"convnet"``: sized by a width multiplier, for C x H x W
    images), ``options`` (the run settings, :class:`bnnlib.train.config.RunConfig` fields,
    that its builder takes besides those every model takes: ``binary``, ``batchnorm``,
    ``estimator`` and the stochastic flags) and ``schedule`` (the paper's: dataset, epochs,
    batch size, LR start and end; the training CLI's defaults)."""

    build: Callable[..., nn.Sequential]
    kind: str
    options: tuple[str, ...]
    schedule: dict[str, Any]

    def sized(self, shape: Sequence[int], num_classes: int) -> dict[str, int]:
        """The builder's keywords that size it for samples of ``shape`` and ``num_classes``."""
        if self.kind == "mlp":
            return {"in_features": math.prod(shape), "num_classes": num_classes}
        c, h, _ = shape
        return {"in_channels": c, "num_classes": num_classes, "image_size": h}


_MLP_OPTIONS = ("hidden", "dropout_in", "dropout_hidden", "last_batchnorm", "bn_eps")
MODELS = Registry(
    "model",
    {
        "mnist_mlp": ModelSpec(
            mnist_mlp, "mlp", (*_MLP_OPTIONS, "bn_momentum"), paper.SCHEDULES["mnist_mlp"]
        ),
        "cifar10_convnet": ModelSpec(
            cifar10_convnet, "convnet", ("width", "fc_width"), paper.SCHEDULES["cifar10_convnet"]
        ),
        "svhn_convnet": ModelSpec(
            svhn_convnet, "convnet", ("width",), paper.SCHEDULES["svhn_convnet"]
        ),
    },
)


def build(name: str, **kw) -> nn.Sequential:
    """Build a model by name (``mnist_mlp``, ``cifar10_convnet``, ``svhn_convnet``)."""
    return MODELS.pick(name).build(**kw)


def default_model(dataset: str, shape: tuple[int, ...]) -> str:
    """The paper's model for a dataset: the one whose schedule trains on it, else the MLP
    for 1 x 28 x 28 images and the first ConvNet for others."""
    for name, spec in MODELS.items():
        if spec.schedule["dataset"] == dataset:
            return name
    kind = "mlp" if tuple(shape) == (1, 28, 28) else "convnet"
    return next(name for name, spec in MODELS.items() if spec.kind == kind)


def for_data(name: str, shape: tuple[int, ...], num_classes: int, **kw) -> nn.Sequential:
    """Model ``name`` sized for samples of ``shape`` (C, H, W) and ``num_classes`` classes.

    The keywords go to the model (``hidden`` for an MLP, ``width`` for a ConvNet, ``binary``,
    ``batchnorm``, stochastic flags ...). The training CLI and the notebooks build their
    models with it.
    """
    spec = MODELS.pick(name)
    return spec.build(**spec.sized(shape, num_classes), **kw)
