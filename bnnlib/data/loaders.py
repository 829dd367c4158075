"""The paper's datasets, splits and input scaling, held whole as tensors (paper Section 2).

The paper trains on three image sets, each with a validation set cut from the
end of the training set (the Theano code); the reported test error is the one
at the epoch of best validation error:

============  ===========================  =========  ============  ======
name          files (under the data root)  train      val           test
============  ===========================  =========  ============  ======
mnist         MNIST/raw/*-ubyte[.gz]       first 50k  last 10k      10k
fashion_mnist FashionMNIST/raw/...         first 50k  last 10k      10k
cifar10       cifar-10-batches-py/         first 45k  last 5k       10k
svhn          SVHN/{train,test}_32x32.mat  the rest   last N // 10  26,032
npz:<path>    x_train, y_train, x_test,    the rest   last N // 10  x_test
              y_test (uint8, N x H x W x C)
============  ===========================  =========  ============  ======

In general the validation set is the last ``N // 6`` training images for
(Fashion-)MNIST and the last ``N // 10`` for the others
(:func:`validation_size`), which gives the paper's 10k of 60k and 5k of 50k.
SVHN and ``npz:`` files have no split of their own in the paper; they take the
same tenth as CIFAR-10. (The paper's SVHN also used the 531k ``extra`` images;
:func:`load` reads ``train_32x32.mat`` only.) ``"train_full"`` is the whole
training set (for MNIST the 60k images).

Labels are checked when read: integers (never floats) in 0..9 for the paper's
datasets; for an ``npz:`` file the classes are 0..K-1 with K = 1 + the largest
``y_train`` label, every class used in ``y_train``, K <= :data:`MAX_CLASSES`, and
the ``y_test`` labels among them. A file whose header claims more data than it
holds, or more than a sane limit, is refused before anything that size is
allocated (:data:`MAX_IDX_BYTES`; a CIFAR-10 pickle cannot ask for an array).

Inputs are scaled to [-1, 1] as the paper does::

    x = 2 * pixel / 255 - 1        (pixel in 0..255)

and :func:`to_uint8` inverts that exactly. The first layer of every model takes
these real values (paper Section 1.6: the first layer's input is not binary).

A dataset is small (MNIST is 188 MB as float32), so it is held as one tensor
``X`` (N, C, H, W) and one ``y`` (N,); training moves it to the device once and
takes mini-batches as index slices (:mod:`bnnlib.train`), with no per-sample
PIL transforms in the loop.

Files are read by small readers of the original formats (:mod:`bnnlib.data.files`) so a
bad file gives an error that names it: IDX (MNIST), the CIFAR-10 python pickles (read
with a *restricted* unpickler that can only rebuild numpy arrays, never run code), and
SVHN's MATLAB files (``scipy.io.loadmat``). torchvision is only used to
*download* them when they are missing and the machine is online; nothing else
is cached on disk.

The data root is ``root=`` if given, else ``$BNN_DATA_DIR``, else
``~/.cache/bnnlib/data``.
"""

from __future__ import annotations

import os
import socket
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from bnnlib import settings
from bnnlib.data.files import (
    IDX_DIRS,
    MAX_CLASSES,
    MAX_IDX_BYTES,
    CorruptDataError,
    find_file,
    idx_files,
    npz_num_classes,
    read_cifar,
    read_cifar_batch,
    read_idx,
    read_mnist,
    read_npz,
    read_svhn,
    restricted_load,
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
    "first_available",
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

ENV_VAR = settings.DATA_DIR_VAR
DEFAULT_ROOT = Path("~/.cache/bnnlib/data")
NAMES = ("mnist", "fashion_mnist", "cifar10", "svhn", "cifar10_subset", "npz:<path>")
#: The exact CIFAR-10 subset of this project's offline data folder (5,085 training / 1,017 test
#: images), under the data root; the name ``"cifar10_subset"`` loads it.
CIFAR10_SUBSET = "npz:CIFAR10-subset/cifar10_subset.npz"
_ALIASES = {"cifar10_subset": CIFAR10_SUBSET}
SPLITS = ("train", "val", "test", "train_full")

_NAMES_SET = {"mnist", "fashion_mnist", "cifar10", "svhn"}

# The validation set is the last N // divisor training images (paper's code:
# MNIST 50k/10k, CIFAR-10 45k/5k); CIFAR-10, SVHN and npz files: a tenth.
_VAL_DIVISOR = {"mnist": 6, "fashion_mnist": 6}


class DataNotFoundError(FileNotFoundError):
    """The dataset's files are not under the data root (the message says where to put them)."""


# --------------------------------------------------------------------------- the Dataset


@dataclass(eq=False)
class Dataset:
    """A whole split as tensors: ``X`` float32 (N, C, H, W) in [-1, 1], ``y`` int64 (N,)."""

    X: torch.Tensor
    y: torch.Tensor
    name: str
    split: str
    num_classes: int

    def __post_init__(self) -> None:
        if self.X.shape[0] != self.y.shape[0] or self.y.dim() != 1:
            raise ValueError(
                f"Dataset {self.name!r}: X has {self.X.shape[0]} rows but y has shape "
                f"{tuple(self.y.shape)}; they must be (N, ...) and (N,)"
            )

    def __len__(self) -> int:
        return self.y.shape[0]

    def to(self, device: torch.device | str) -> Dataset:
        """The same dataset with ``X`` and ``y`` on ``device``."""
        return replace(self, X=self.X.to(device), y=self.y.to(device))

    def head(self, n: int | None) -> Dataset:
        """The first ``n`` samples (all of them when ``n`` is None or not smaller)."""
        if n is None or n >= len(self):
            return self
        if n < 1:
            raise ValueError(f"Dataset.head: n must be >= 1 or None, got {n}")
        return replace(self, X=self.X[:n], y=self.y[:n])

    @property
    def label(self) -> str:
        """The dataset's name for a result (the offline CIFAR-10 subset says it is one)."""
        return label(self.name)

    @property
    def shape(self) -> tuple[int, ...]:
        """The shape of one sample, (C, H, W)."""
        return tuple(self.X.shape[1:])

    def __repr__(self) -> str:
        return (
            f"Dataset({self.name!r}, split={self.split!r}, n={len(self)}, "
            f"shape={self.shape}, num_classes={self.num_classes}, device={self.X.device})"
        )


#: How results name each dataset; the offline CIFAR-10 subset is labelled as such.
DATASET_LABELS = {
    "mnist": "MNIST",
    "fashion_mnist": "Fashion-MNIST",
    "cifar10": "CIFAR-10",
    "svhn": "SVHN",
    "cifar10_subset": "CIFAR-10 subset (5,085 / 1,017)",
}
#: The paper's split sizes: train/val cut from the training set, and the test set.
PAPER_SIZES = {
    ("mnist", "train"): 50_000, ("mnist", "val"): 10_000, ("mnist", "test"): 10_000,
    ("fashion_mnist", "train"): 50_000, ("fashion_mnist", "val"): 10_000,
    ("fashion_mnist", "test"): 10_000,
    ("cifar10", "train"): 45_000, ("cifar10", "val"): 5_000, ("cifar10", "test"): 10_000,
    ("svhn", "train"): 598_388, ("svhn", "val"): 6_000, ("svhn", "test"): 26_032,
}  # fmt: skip
#: The sizes of the splits as this module loads them (the subset's are its own).
FULL_SIZES = {
    **PAPER_SIZES,
    ("cifar10_subset", "train"): 4_577, ("cifar10_subset", "val"): 508,
    ("cifar10_subset", "test"): 1_017,
}  # fmt: skip


def label(name: str) -> str:
    """How results name dataset ``name``: "MNIST", "CIFAR-10 subset (5,085 / 1,017)", ..."""
    kind = _kind(name)
    if kind in DATASET_LABELS:
        return DATASET_LABELS[kind]
    return Path(name[4:]).name if name.startswith("npz:") else name


def available(name: str, root: str | os.PathLike | None = None) -> bool:
    """True when dataset ``name``'s files are under the data root (or ``npz:`` path) now;
    nothing is downloaded."""
    _check(name, None)
    name = _ALIASES.get(name, name)
    try:
        if name.startswith("npz:"):
            _npz_path(name, root)
        else:
            ensure_files(name, resolve_root(root), _root_origin(root), False)
    except DataNotFoundError:
        return False
    return True


def first_available(names: Sequence[str], root: str | os.PathLike | None = None) -> str | None:
    """The first of ``names`` whose files are under the data root now (:func:`available`;
    nothing is downloaded), or None when none is there.

    e.g. ``first_available(["cifar10", "cifar10_subset"])`` is ``"cifar10"`` with the full
    CIFAR-10 in the data root, ``"cifar10_subset"`` with only the offline subset, else None.
    """
    if isinstance(names, str):
        raise TypeError(f"first_available takes a list of dataset names, got the string {names!r}")
    for name in names:
        if available(name, root):
            return name
    return None


def _kind(name: str) -> str:
    name = _ALIASES.get(name, name)
    if name.startswith("npz:") and Path(name[4:]).name == "cifar10_subset.npz":
        return "cifar10_subset"
    return name


def describe_splits(*splits: Dataset) -> str:
    """One label for the splits a run used, flagging any cut shorter than the paper's split.

    e.g. "MNIST: 50,000 train / 10,000 val / 10,000 test images" or, after
    :meth:`Dataset.head`, "... (reduced run: the first ones of the 50,000 / 10,000 /
    10,000 split)". The CIFAR-10 subset is always named as the subset.
    """
    if not splits:
        raise ValueError("describe_splits needs at least one Dataset")
    kind = _kind(splits[0].name)
    text = f"{label(splits[0].name)}: " + " / ".join(f"{len(d):,} {d.split}" for d in splits)
    text += " images"
    full = [FULL_SIZES.get((kind, d.split)) for d in splits]
    if any(f is not None and len(d) < f for d, f in zip(splits, full, strict=True)):
        shown = " / ".join("?" if f is None else f"{f:,}" for f in full)
        text += f" (reduced run: the first ones of the {shown} split)"
    return text


def is_reduced(*splits: Dataset) -> bool:
    """True unless every split is the paper's whole split of a paper dataset."""
    return any(PAPER_SIZES.get((d.name, d.split)) != len(d) for d in splits)


def scale(pixels: torch.Tensor | np.ndarray) -> torch.Tensor:
    """uint8 pixels to the paper's inputs, 2 * pixel / 255 - 1, as float32."""
    x = torch.as_tensor(pixels)
    if x.dtype != torch.uint8:
        raise ValueError(f"scale expects uint8 pixels, got {x.dtype}")
    return x.to(torch.float32).mul_(2.0 / 255.0).sub_(1.0)


# How far (in pixel units) a float input may sit from the grid of scale(): float32/float64
# rounding is ~1e-5 here, float16's up to 0.06. bfloat16 (8 bits of mantissa) cannot hold the
# grid: 2p/255 - 1 and 2(p+1)/255 - 1 may round to the same value, so it is refused.
_GRID_TOLERANCE = {torch.float64: 1e-3, torch.float32: 1e-3, torch.float16: 0.1}


def to_uint8(X: torch.Tensor | np.ndarray) -> torch.Tensor:
    """The exact inverse of :func:`scale`: round((X + 1) * 255 / 2) as uint8.

    uint8 input is already pixels and comes back unchanged; other integer types are refused
    (are they pixels or ±1 values? convert them explicitly). Float input must be what
    :func:`scale` gives: finite, in [-1, 1] and on its grid 2p/255 - 1 (p = 0..255);
    anything else (pixels 0..255 or 0..1 as floats, NaN, inf) is refused with a ValueError
    saying what the values look like, rather than clamped into wrong pixels.
    """
    X = torch.as_tensor(X)
    if X.dtype == torch.uint8:
        return X
    if not X.is_floating_point() or X.dtype not in _GRID_TOLERANCE:
        raise ValueError(
            f"to_uint8 takes uint8 pixels or float16/32/64 inputs scaled 2 * pixel / 255 - 1 "
            f"(bnnlib.data.scale), got {X.dtype}"
        )
    pixels = (X.to(torch.float64 if X.dtype == torch.float64 else torch.float32) + 1.0) * 127.5
    rounded = pixels.round()
    _check_scaled(X, pixels, rounded, _GRID_TOLERANCE[X.dtype])
    return rounded.to(torch.uint8)


def _check_scaled(X: torch.Tensor, pixels, rounded, tol: float) -> None:
    """One ValueError unless every entry of X is a finite 2p/255 - 1 with p in 0..255."""
    finite = torch.isfinite(X)
    off = ~finite | (pixels < -tol) | (pixels > 255 + tol) | ((pixels - rounded).abs() > tol)
    n_off = int(off.sum())
    if not n_off:
        return
    fix = (
        "Pass uint8 pixels (0..255), or floats from bnnlib.data.scale(pixels) = "
        "2 * pixel / 255 - 1; nothing is clamped or rounded silently."
    )
    if not bool(finite.all()):
        n = int((~finite).sum())
        raise ValueError(f"the input holds {n} NaN or infinite values of {X.numel()}. {fix}")
    lo, hi = float(X.min()), float(X.max())
    if hi > 1.0 and lo >= 0.0:
        looks = "these look like pixels 0..255 stored as floats"
    elif hi <= 1.0 and lo >= 0.0:
        looks = "these look like pixels scaled to 0..1 (e.g. ToTensor), not to [-1, 1]"
    elif lo < -1.0 or hi > 1.0:
        looks = "outside [-1, 1] (normalized with another mean and std?)"
    else:
        looks = "in [-1, 1] but not on the grid 2p/255 - 1 of 8-bit pixels"
    raise ValueError(
        f"float input must be 8-bit pixels scaled 2 * pixel / 255 - 1, but {n_off} of "
        f"{X.numel()} values are not (range [{lo:.4g}, {hi:.4g}]: {looks}). {fix}"
    )


def resolve_root(root: str | os.PathLike | None = None) -> Path:
    """The data root: ``root`` if given, else ``$BNN_DATA_DIR``, else ``~/.cache/bnnlib/data``."""
    if root is not None:
        return Path(root).expanduser()
    return settings.data_dir() or DEFAULT_ROOT.expanduser()


def _root_origin(root) -> str:
    if root is not None:
        return "--data-root, or root= in Python"
    if settings.data_dir() is not None:
        return f"${ENV_VAR}"
    return f"the default, ${ENV_VAR} being unset"


def _npz_path(name: str, root) -> Path:
    path = Path(name[len("npz:") :]).expanduser()
    if not path.is_absolute() and not path.is_file():
        path = resolve_root(root) / path  # relative paths: the cwd, else the data root
    if not path.is_file():
        raise DataNotFoundError(
            f"npz dataset not found: {name[4:]!r} (looked in the current directory "
            f"{Path.cwd()} and in the data root {resolve_root(root)}); pass npz:<path> with an "
            "existing .npz file holding x_train, y_train, x_test, y_test"
        )
    return path


# --------------------------------------------------------------------------- download


def _torchvision_urls(name: str) -> str:
    from torchvision import datasets as tvd

    if name == "mnist":
        return tvd.MNIST.mirrors[0]
    if name == "fashion_mnist":
        return tvd.FashionMNIST.mirrors[0]
    if name == "cifar10":
        return tvd.CIFAR10.url
    return tvd.SVHN.split_list["train"][0]


def probe_online(url: str, timeout: float = 3.0) -> tuple[bool, str]:
    host = urllib.parse.urlparse(url).hostname or url
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True, host
    except OSError as e:
        return False, f"{host} ({e})"


def download_files(name: str, root: Path) -> None:
    from torchvision import datasets as tvd

    if name == "mnist":
        tvd.MNIST(root, train=True, download=True)
    elif name == "fashion_mnist":
        tvd.FashionMNIST(root, train=True, download=True)
    elif name == "cifar10":
        tvd.CIFAR10(root, train=True, download=True)
    else:
        for split in ("train", "test"):
            tvd.SVHN(root / "SVHN", split=split, download=True)


def _missing_message(name: str, root: Path, origin: str, missing: list[str]) -> str:
    listing = "\n".join(
        f"  {root / f}" + (" (or .gz)" if name in IDX_DIRS else "") for f in missing
    )
    return (
        f"{name} not found under the data root {root} (from {origin}). Missing:\n{listing}\n"
        f"Fix: put the files there, or set {ENV_VAR} (a command's --data-root, root= in "
        "Python) to a folder laid out like this (torchvision's layout). On a machine with "
        "internet the files are downloaded with torchvision when missing (in Python, "
        "download=True insists)."
    )


def ensure_files(name: str, root: Path, origin: str, download: bool | None) -> None:
    """Check the files; download them if missing and allowed (None: only when online)."""
    want = idx_files(name, True) + idx_files(name, False)
    missing = [f for f in want if find_file(root, f) is None]
    if not missing:
        return
    msg = _missing_message(name, root, origin, missing)
    if download is False:
        raise DataNotFoundError(msg + " (download=False: no download was tried.)")
    if download is None:
        online, where = probe_online(_torchvision_urls(name))
        if not online:
            raise DataNotFoundError(
                msg + f" (Nothing was downloaded: this machine is offline, it cannot reach "
                f"{where}.)"
            )
    try:
        download_files(name, root)
    except Exception as e:
        raise DataNotFoundError(msg + f" (download failed: {type(e).__name__}: {e})") from e
    still = [f for f in want if find_file(root, f) is None]
    if still:
        raise DataNotFoundError(_missing_message(name, root, origin, still))


# --------------------------------------------------------------------------- load


def _check(name: str, split: str | None) -> None:
    if not isinstance(name, str) or not (
        name in _NAMES_SET or name in _ALIASES or name.startswith("npz:")
    ):
        raise ValueError(f"unknown dataset {name!r}; valid names: {', '.join(NAMES)}")
    if split is not None and split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; valid splits: {', '.join(SPLITS)}")


def _read(name: str, root, download, train: bool) -> tuple[np.ndarray, np.ndarray]:
    if name.startswith("npz:"):
        return read_npz(_npz_path(name, root), train)
    path = resolve_root(root)
    ensure_files(name, path, _root_origin(root), download)
    if name in IDX_DIRS:
        return read_mnist(path, name, train)
    return read_cifar(path, train) if name == "cifar10" else read_svhn(path, train)


def validation_size(name: str, n: int) -> int:
    """Validation images cut from the end of ``n`` training images: N // 6 (MNIST), else N // 10."""
    return n // _VAL_DIVISOR.get(name, 10)


def _make(name: str, split: str, x: np.ndarray, y: np.ndarray, num_classes: int) -> Dataset:
    # Copy: np.frombuffer arrays are read-only, and a slice should not pin the whole file.
    X = scale(torch.from_numpy(np.array(x, copy=True)))
    return Dataset(X, torch.from_numpy(np.array(y, dtype=np.int64)), name, split, num_classes)


def _num_classes(name: str, root) -> int:
    """10 for the paper's datasets; for an npz file, 1 + the largest label of y_train (whose
    labels must use every class 0..K-1; the test labels must lie among them)."""
    if not name.startswith("npz:"):
        return 10
    return npz_num_classes(_npz_path(name, root))


def load(
    name: str,
    root: str | os.PathLike | None = None,
    split: str = "train",
    download: bool | None = None,
) -> Dataset:
    """Load one split of a dataset as a :class:`Dataset` (inputs scaled to 2x/255 - 1).

    ``name``: ``"mnist"``, ``"fashion_mnist"``, ``"cifar10"``, ``"svhn"`` or
    ``"npz:<path>"``. ``split``: ``"train"`` and ``"val"`` (the paper's split of
    the training set, see the module docstring), ``"test"``, ``"train_full"``.
    ``download``: True downloads missing files with torchvision, False never
    does, None (default) downloads only if files are missing and the machine is
    online. Missing files raise :class:`DataNotFoundError` saying where to put them.
    """
    _check(name, split)
    name = _ALIASES.get(name, name)
    if split == "test":
        x, y = _read(name, root, download, train=False)
        return _make(name, split, x, y, _num_classes(name, root))
    x, y = _read(name, root, download, train=True)
    n_train = len(y) - validation_size(name, len(y))
    sl = {"train": slice(0, n_train), "val": slice(n_train, None), "train_full": slice(None)}
    return _make(name, split, x[sl[split]], y[sl[split]], _num_classes(name, root))


def load_splits(
    name: str, root: str | os.PathLike | None = None, download: bool | None = None
) -> tuple[Dataset, Dataset, Dataset]:
    """(train, val, test) of the paper's split, reading each file once."""
    _check(name, None)
    name = _ALIASES.get(name, name)
    x, y = _read(name, root, download, train=True)
    xt, yt = _read(name, root, download, train=False)
    n_train = len(y) - validation_size(name, len(y))
    k = _num_classes(name, root)
    return (
        _make(name, "train", x[:n_train], y[:n_train], k),
        _make(name, "val", x[n_train:], y[n_train:], k),
        _make(name, "test", xt, yt, k),
    )
