"""bnnlib: Binarized Neural Networks (Courbariaux, Hubara, Soudry, El-Yaniv, Bengio, 2016).

One module per idea of the paper: :mod:`~bnnlib.binarize`, :mod:`~bnnlib.ste`,
:mod:`~bnnlib.shift`, :mod:`~bnnlib.layers`, :mod:`~bnnlib.optim`,
:mod:`~bnnlib.losses`, :mod:`~bnnlib.models`, :mod:`~bnnlib.data`,
:mod:`~bnnlib.train` (imported on use, as it is also ``python -m bnnlib.train``),
:func:`~bnnlib.summary`, :mod:`~bnnlib.kernels`,
:mod:`~bnnlib.inference`, :mod:`~bnnlib.energy`, :mod:`~bnnlib.filters`, and for the book
:mod:`~bnnlib.record` and :mod:`~bnnlib.viz`. GPU code lives in :mod:`bnnlib.cuda`, imported
on demand: importing bnnlib never touches a GPU.
"""

from . import (
    binarize,
    data,
    energy,
    filters,
    inference,
    kernels,
    layers,
    losses,
    models,
    optim,
    record,
    shift,
    ste,
)
from .binarize import hard_sigmoid, sign, stochastic_sign
from .layers import BinaryConv2d, BinaryLinear, SignActivation
from .losses import square_hinge
from .models import cifar10_convnet, mnist_mlp, svhn_convnet
from .shift import ShiftBatchNorm1d, ShiftBatchNorm2d, ap2
from .ste import ste_sign
from .summary import summary

__all__ = [
    "binarize",
    "data",
    "energy",
    "filters",
    "inference",
    "kernels",
    "layers",
    "losses",
    "models",
    "optim",
    "record",
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
    "summary",
]
__version__ = "0.1.0"
