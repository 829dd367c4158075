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
"""

from __future__ import annotations

from torch import nn

from bnnlib.nn.layers import BinaryConv2d, BinaryLinear, SignActivation
from bnnlib.nn.shift import ShiftBatchNorm1d, ShiftBatchNorm2d

__all__ = [
    "mnist_mlp", "cifar10_convnet", "svhn_convnet", "MODELS", "build", "default_model",
    "for_data",
]  # fmt: skip

BN_EPS = 1e-4
BN_MOMENTUM = 0.1


def _bn(
    num_features: int, kind: str, dims: int, eps: float = BN_EPS, momentum: float = BN_MOMENTUM
) -> nn.Module:
    if kind == "standard":
        cls = nn.BatchNorm1d if dims == 1 else nn.BatchNorm2d
    elif kind == "shift":
        cls = ShiftBatchNorm1d if dims == 1 else ShiftBatchNorm2d
    else:
        raise ValueError(f"unknown batchnorm {kind!r}; choose 'standard' or 'shift'")
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
    hidden: int = 4096,
    depth: int = 3,
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

    ``stochastic_activations`` / ``stochastic_weights`` binarize the Sign
    activations / the weights stochastically while training (paper Eq. 2);
    ``estimator`` picks the STE of the activations (:mod:`bnnlib.nn.ste`).
    ``last_batchnorm`` is the output layer's batch norm (default: ``batchnorm``;
    the Torch7 code keeps an ordinary one there), with ``bn_eps`` and
    ``bn_momentum`` for every batch norm.
    """
    bn = {"eps": bn_eps, "momentum": bn_momentum}
    layers: list[nn.Module] = [nn.Flatten()]
    if dropout_in > 0:
        layers.append(nn.Dropout(dropout_in))
    width = in_features
    for _ in range(depth):
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


MODELS = {"mnist_mlp": mnist_mlp, "cifar10_convnet": cifar10_convnet, "svhn_convnet": svhn_convnet}


def build(name: str, **kw) -> nn.Sequential:
    """Build a model by name (``mnist_mlp``, ``cifar10_convnet``, ``svhn_convnet``)."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {sorted(MODELS)}")
    return MODELS[name](**kw)


def default_model(dataset: str, shape: tuple[int, ...]) -> str:
    """The paper's model for a dataset: the MLP for 1 x 28 x 28 images, else the ConvNet
    (the SVHN one for ``svhn``)."""
    if tuple(shape) == (1, 28, 28):
        return "mnist_mlp"
    return "svhn_convnet" if dataset == "svhn" else "cifar10_convnet"


def for_data(
    name: str,
    shape: tuple[int, ...],
    num_classes: int,
    *,
    hidden: int = 4096,
    width: float = 1.0,
    **kw,
) -> nn.Sequential:
    """Model ``name`` sized for samples of ``shape`` (C, H, W) and ``num_classes`` classes.

    ``hidden`` sets the MLP's units, ``width`` the ConvNets' (see :func:`cifar10_convnet`);
    the other keywords go to the model (``binary``, ``batchnorm``, stochastic flags ...).
    The training CLI and the notebooks build their models with it.
    """
    if name == "mnist_mlp":
        n_in = 1
        for d in shape:
            n_in *= d
        return mnist_mlp(hidden=hidden, in_features=n_in, num_classes=num_classes, **kw)
    c, h, _ = shape
    return build(name, width=width, in_channels=c, num_classes=num_classes, image_size=h, **kw)
