"""bnnlib: Binarized Neural Networks (Courbariaux, Hubara, Soudry, El-Yaniv, Bengio, 2016).

One module per idea of the paper: :mod:`~bnnlib.binarize`, :mod:`~bnnlib.ste`,
:mod:`~bnnlib.shift`, :mod:`~bnnlib.layers`, :mod:`~bnnlib.optim`,
:mod:`~bnnlib.losses`, :mod:`~bnnlib.models`, :mod:`~bnnlib.data`,
:mod:`~bnnlib.train`, :mod:`~bnnlib.summary`. Importing bnnlib never touches a GPU.
"""

from . import binarize, layers, losses, models, optim, shift, ste
from .binarize import hard_sigmoid, sign, stochastic_sign
from .layers import BinaryConv2d, BinaryLinear, SignActivation
from .losses import square_hinge
from .models import cifar10_convnet, mnist_mlp, svhn_convnet
from .shift import ShiftBatchNorm1d, ShiftBatchNorm2d, ap2
from .ste import ste_sign

__all__ = [
    "binarize",
    "layers",
    "losses",
    "models",
    "optim",
    "shift",
    "ste",
    "sign",
    "hard_sigmoid",
    "stochastic_sign",
    "ste_sign",
    "ap2",
    "ShiftBatchNorm1d",
    "ShiftBatchNorm2d",
    "BinaryLinear",
    "BinaryConv2d",
    "SignActivation",
    "square_hinge",
    "mnist_mlp",
    "cifar10_convnet",
    "svhn_convnet",
]
__version__ = "0.1.0"
