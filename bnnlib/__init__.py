"""bnnlib: Binarized Neural Networks (Courbariaux, Hubara, Soudry, El-Yaniv, Bengio, 2016).

The packages, by job:

* :mod:`bnnlib.nn`: the paper's ideas as torch modules (binarization, the STE, shift-based
  batch norm and AdaMax, binary layers, the models);
* :mod:`bnnlib.data`: the data sets; :mod:`bnnlib.train`: training and its run folders;
* :mod:`bnnlib.kernels`: XNOR-popcount kernels (CPU, and the CUDA loader);
* :mod:`bnnlib.inference`: packed models and their runtime;
* :mod:`bnnlib.analysis`: memory, energy and filter repetition;
* :mod:`bnnlib.bench`: benchmarks; :mod:`bnnlib.book`: the book's runner, records, figures;
* :mod:`bnnlib.repro`: committed runs (publish) and the GPU schedule (reproduce);
* :mod:`bnnlib.gpucheck`: the prepared GPU check.

Cross-cutting modules: :mod:`bnnlib.paper` (the paper's figures), :mod:`bnnlib.results`
(committed results), :mod:`bnnlib.registry` (the names a run chooses from),
:mod:`bnnlib.hardware`, :mod:`bnnlib.files`, :mod:`bnnlib.settings`.
Importing bnnlib never touches a GPU; the paper's main names are importable from here.
"""

from bnnlib.analysis.summary import summary
from bnnlib.nn.binarize import hard_sigmoid, sign, stochastic_sign
from bnnlib.nn.layers import BinaryConv2d, BinaryLinear, SignActivation
from bnnlib.nn.losses import square_hinge
from bnnlib.nn.models import cifar10_convnet, mnist_mlp, svhn_convnet
from bnnlib.nn.shift import ShiftBatchNorm1d, ShiftBatchNorm2d, ap2
from bnnlib.nn.ste import ste_sign

__all__ = [
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
