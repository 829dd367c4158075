"""The data sets: MNIST, Fashion-MNIST, CIFAR-10, SVHN and npz files (:mod:`.loaders`), read
from checked files (:mod:`.files`: IDX, CIFAR batches, npz without pickles).

``from bnnlib import data; data.load("mnist", "train")``: the public names are those of
:mod:`bnnlib.data.loaders`.
"""

from bnnlib.data.loaders import (
    CIFAR10_SUBSET,
    DATASET_LABELS,
    ENV_VAR,
    MAX_CLASSES,
    MAX_IDX_BYTES,
    NAMES,
    PAPER_SIZES,
    SPLITS,
    CorruptDataError,
    DataNotFoundError,
    Dataset,
    available,
    describe_splits,
    ensure_files,
    is_reduced,
    label,
    load,
    load_splits,
    read_cifar_batch,
    read_idx,
    resolve_root,
    restricted_load,
    scale,
    to_uint8,
    validation_size,
)

__all__ = [
    "Dataset",
    "DataNotFoundError",
    "CorruptDataError",
    "NAMES",
    "SPLITS",
    "ENV_VAR",
    "load",
    "load_splits",
    "resolve_root",
    "validation_size",
    "scale",
    "to_uint8",
    "ensure_files",
    "available",
    "CIFAR10_SUBSET",
    "label",
    "describe_splits",
    "is_reduced",
    "DATASET_LABELS",
    "PAPER_SIZES",
    "read_idx",
    "read_cifar_batch",
    "restricted_load",
    "MAX_CLASSES",
    "MAX_IDX_BYTES",
]
