"""The data sets: MNIST, Fashion-MNIST, CIFAR-10, SVHN and npz files (:mod:`.loaders`), read
from checked files (:mod:`.files`: IDX, CIFAR batches, npz without pickles).

``from bnnlib import data; data.load("mnist", "train")``: the public names are those of
:mod:`bnnlib.data.loaders`.
"""

from bnnlib.data.loaders import *  # noqa: F403  (the public names of loaders, below)
from bnnlib.data.loaders import __all__  # noqa: F401
