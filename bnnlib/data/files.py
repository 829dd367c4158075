"""Readers of the datasets' original files, each giving a clear error that names a bad file.

IDX (MNIST, ``.gz`` or not, :func:`read_idx`), the CIFAR-10 python pickles (read with a
*restricted* unpickler that can only rebuild numpy arrays, never run code:
:func:`restricted_load`, :func:`read_cifar_batch`), SVHN's MATLAB files
(``scipy.io.loadmat``) and ``npz`` datasets (x_train, y_train, x_test, y_test). Labels are
checked as they are read (integers in range, :data:`MAX_CLASSES`); a file whose header
claims more data than it holds, or more than :data:`MAX_IDX_BYTES`, is refused before
anything that size is allocated. :mod:`bnnlib.data` turns what they return into datasets.
"""

from __future__ import annotations

import codecs
import gzip
import io
import math
import os
import pickle
import struct
import zlib
from pathlib import Path

import numpy as np

from bnnlib.errors import BadInput

__all__ = ["CorruptDataError", "read_idx", "read_cifar_batch", "restricted_load"]
__all__ += ["MAX_IDX_BYTES", "MAX_CLASSES", "MAX_NPZ_ARRAY_BYTES"]


class CorruptDataError(BadInput):
    """A data file exists but is not in the expected format (the message names the file)."""


# --------------------------------------------------------------------------- IDX (MNIST)

# IDX type byte -> numpy dtype (big-endian), from the MNIST page's format description.
_IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


#: The most data bytes an IDX file may claim (MNIST's largest file holds 47 MB): a header
#: claiming more is refused before anything is allocated or decompressed.
MAX_IDX_BYTES = 1 << 30
_CHUNK = 1 << 20


def _read_at_most(f, n: int) -> bytes:
    """Up to ``n`` bytes of ``f``, read in chunks: memory follows the bytes really there, not
    ``n`` (a header's claim)."""
    parts, left = [], n
    while left > 0:
        part = f.read(min(left, _CHUNK))
        if not part:
            break
        parts.append(part)
        left -= len(part)
    return b"".join(parts)


def _idx_header(path: Path, head: bytes, f) -> tuple[np.dtype, tuple[int, ...], int, bytes]:
    """(dtype, dims, data bytes, header bytes) from the first bytes of an IDX stream."""
    if len(head) < 4 or head[0] != 0 or head[1] != 0 or head[2] not in _IDX_TYPES:
        raise CorruptDataError(
            f"{path}: not an IDX file (magic bytes {head[:4].hex(' ') or 'missing'}, expected "
            "00 00 08 0N); the file is corrupt or of another format: delete it and "
            "download it again"
        )
    ndim = head[3]
    header = head + _read_at_most(f, 4 * ndim)
    if len(header) < 4 + 4 * ndim:
        raise CorruptDataError(f"{path}: truncated IDX file (header cut short); download it again")
    dims = struct.unpack(f">{ndim}I", header[4:])
    dtype = np.dtype(_IDX_TYPES[head[2]])
    expected = math.prod(dims) * dtype.itemsize
    if expected > MAX_IDX_BYTES:
        raise CorruptDataError(
            f"{path}: the IDX header claims shape {dims} ({expected:,} bytes of data), more than "
            f"this reader's limit of {MAX_IDX_BYTES:,} bytes (bnnlib.data.MAX_IDX_BYTES); the "
            "file is corrupt: delete it and download it again"
        )
    return dtype, dims, expected, header


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (MNIST format; ``.gz`` is decompressed): magic 00 00 type ndim, dims, data.

    The header is read first; then at most the data bytes it implies (plus one, to see a
    longer file) are read or decompressed, so a small file cannot force a huge allocation
    (a header claiming more than :data:`MAX_IDX_BYTES` is refused). Raises
    :class:`CorruptDataError` naming the file on a bad magic number, a corrupt gzip stream or a
    size that does not match the header (a truncated download).
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            dtype, dims, expected, header = _idx_header(path, _read_at_most(f, 4), f)
            data = _read_at_most(f, expected + 1)
    except (OSError, EOFError, zlib.error) as e:
        if path.suffix != ".gz":
            raise
        raise CorruptDataError(
            f"{path}: corrupt gzip file ({e}); delete it and download it again"
        ) from e
    if len(data) != expected:
        holds = f"{len(data)}" if len(data) <= expected else "more"
        raise CorruptDataError(
            f"{path}: truncated or corrupt IDX file: the header says shape {dims} "
            f"({expected} bytes of data) but the file holds {holds}; "
            "delete it and download it again"
        )
    return np.frombuffer(data, dtype).reshape(dims).astype(dtype.newbyteorder("="), copy=False)


# --------------------------------------------------------------------------- CIFAR-10 pickles


class _NdarrayType:
    """What ``numpy.ndarray`` unpickles to: numpy's pickles only pass the class to
    ``_reconstruct``; calling it, ``ndarray(shape)``, would allocate an uninitialised array of
    any size a few bytes ask for, so it is refused."""

    def __repr__(self) -> str:
        return "numpy.ndarray"

    def __call__(self, *args, **kwargs):
        raise pickle.UnpicklingError(
            "refused to call numpy.ndarray(...): a numpy pickle never builds an array that way "
            "(it would allocate uninitialised memory of a size the file asks for)"
        )


_NDARRAY = _NdarrayType()


def _checked_reconstruct(reconstruct):
    """numpy's ``_reconstruct(ndarray, (0,), b'b')``, refusing any other class or a non-empty
    shape: numpy's pickles start from an empty array that ``__setstate__`` then fills with
    the bytes the file really holds (and checks their size)."""

    def _reconstruct(cls, shape, dtype):
        if cls is not _NDARRAY or math.prod(tuple(shape)) != 0:
            raise pickle.UnpicklingError(
                f"refused numpy _reconstruct({cls!r}, {shape!r}): numpy's own pickles "
                "rebuild an ndarray from an empty one"
            )
        return reconstruct(np.ndarray, shape, dtype)

    return _reconstruct


def _allowed_globals() -> dict[tuple[str, str], object]:
    # The callables numpy's own pickles use to rebuild an array, found through
    # numpy's public __reduce__ so that both numpy 1 and numpy 2 module names work.
    reconstruct = _checked_reconstruct(np.zeros(1).__reduce__()[0])
    frombuffer = np.zeros(1).__reduce_ex__(5)[0]
    allowed: dict[tuple[str, str], object] = {
        ("numpy", "ndarray"): _NDARRAY,
        ("numpy", "dtype"): np.dtype,
        # Python 3 protocol-2 pickles store bytes as _codecs.encode(str, "latin1").
        ("_codecs", "encode"): codecs.encode,
    }
    for mod in ("numpy.core", "numpy._core"):
        allowed[(f"{mod}.multiarray", "_reconstruct")] = reconstruct
        allowed[(f"{mod}.numeric", "_frombuffer")] = frombuffer
    return allowed


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickles only plain containers and numpy arrays: any other global is refused."""

    def __init__(self, file, source: str):
        super().__init__(file, encoding="latin1")  # latin1: Python 2 numpy pickles
        self._source = source
        self._allowed = _allowed_globals()

    def find_class(self, module: str, name: str):
        obj = self._allowed.get((module, name))
        if obj is None:
            raise pickle.UnpicklingError(
                f"{self._source}: refused to unpickle global {module}.{name}; a data file may "
                "only hold numpy arrays, lists, dicts, numbers and strings (the file is "
                "corrupt or not a CIFAR-10 batch; never load pickles you do not trust)"
            )
        return obj


def restricted_load(data: bytes, source: str = "<bytes>"):
    """``pickle.loads`` that can only build containers, numbers, strings and numpy arrays."""
    try:
        return _RestrictedUnpickler(io.BytesIO(data), source).load()
    except pickle.UnpicklingError as e:
        if str(e).startswith(source):
            raise
        raise pickle.UnpicklingError(f"{source}: {e}") from e


def _get(d: dict, key: str):
    # Official batches (Python 2) unpickle with str keys, Python 3 ones with bytes keys.
    return d[key] if key in d else d.get(key.encode())


def read_cifar_batch(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR-10 python batch -> (uint8 (N, 3, 32, 32), int64 labels (N,)).

    The file is a pickled dict with ``data`` (N x 3072 uint8: the red, green and
    blue 32 x 32 planes of each image) and ``labels`` (N ints).
    """
    path = Path(path)
    try:
        d = restricted_load(path.read_bytes(), str(path))
    except pickle.UnpicklingError:
        raise
    except Exception as e:  # truncated stream, bad opcodes, ...
        raise CorruptDataError(f"{path}: corrupt CIFAR-10 batch ({type(e).__name__}: {e})") from e
    data = _get(d, "data") if isinstance(d, dict) else None
    labels = _get(d, "labels") if isinstance(d, dict) else None
    if (
        not isinstance(data, np.ndarray)
        or data.dtype != np.uint8
        or data.ndim != 2
        or data.shape[1] != 3 * 32 * 32
        or labels is None
        or len(labels) != data.shape[0]
    ):
        raise CorruptDataError(
            f"{path}: not a CIFAR-10 batch (expected a dict with 'data' uint8 N x 3072 "
            "and 'labels' of length N)"
        )
    return data.reshape(-1, 3, 32, 32), _labels(labels, f"{path} labels", 0, 10)


# --------------------------------------------------------------------------- the datasets

# Files each dataset needs, relative to the data root.
_IDX_FILES = {
    True: ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    False: ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
IDX_DIRS = {"mnist": "MNIST/raw", "fashion_mnist": "FashionMNIST/raw"}
_CIFAR_DIR = "cifar-10-batches-py"
_CIFAR_FILES = {True: tuple(f"data_batch_{i}" for i in range(1, 6)), False: ("test_batch",)}
_SVHN_FILES = {True: ("SVHN/train_32x32.mat",), False: ("SVHN/test_32x32.mat",)}


def idx_files(name: str, train: bool) -> list[str]:
    if name in IDX_DIRS:
        return [f"{IDX_DIRS[name]}/{f}" for f in _IDX_FILES[train]]
    if name == "cifar10":
        return [f"{_CIFAR_DIR}/{f}" for f in _CIFAR_FILES[train]]
    return list(_SVHN_FILES[train])


def find_file(root: Path, rel: str) -> Path | None:
    """The file, or for IDX files its ``.gz`` twin; None if neither exists."""
    for p in (root / rel, root / f"{rel}.gz"):
        if p.is_file():
            return p
    return None


def read_mnist(root: Path, name: str, train: bool) -> tuple[np.ndarray, np.ndarray]:
    img_path, lbl_path = (find_file(root, f) for f in idx_files(name, train))
    x, y = read_idx(img_path), read_idx(lbl_path)
    if x.ndim != 3 or y.ndim != 1 or x.shape[0] != y.shape[0] or x.dtype != np.uint8:
        raise CorruptDataError(
            f"{img_path} and {lbl_path}: expected uint8 images N x H x W and N labels, "
            f"got {x.dtype} {x.shape} and {y.shape}"
        )
    return x[:, None], _labels(y, str(lbl_path), 0, 10)


def read_cifar(root: Path, train: bool) -> tuple[np.ndarray, np.ndarray]:
    parts = [read_cifar_batch(root / f) for f in idx_files("cifar10", train)]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def read_svhn(root: Path, train: bool) -> tuple[np.ndarray, np.ndarray]:
    import scipy.io

    path = root / idx_files("svhn", train)[0]
    try:
        mat = scipy.io.loadmat(path)
    except Exception as e:
        raise CorruptDataError(f"{path}: cannot read the MATLAB file ({e})") from e
    X, y = mat.get("X"), mat.get("y")
    if X is None or y is None or X.ndim != 4 or X.shape[:3] != (32, 32, 3):
        raise CorruptDataError(f"{path}: expected X of shape 32 x 32 x 3 x N and y of N x 1")
    y = y.reshape(-1)
    if y.shape[0] != X.shape[3]:
        raise CorruptDataError(f"{path}: X holds {X.shape[3]} images but y {y.shape[0]} labels")
    # X is 32 x 32 x 3 x N (MATLAB order) and the digit 0 is stored as label 10 (or 0).
    y = _labels(y, f"{path} y", 0, 11)
    return np.ascontiguousarray(X.transpose(3, 2, 0, 1), dtype=np.uint8), y % 10


#: The most bytes one array of an npz dataset may hold once loaded (SVHN's 604,388 training
#: images are 1.9 GB); checked from the archive's headers before anything is allocated.
MAX_NPZ_ARRAY_BYTES = 1 << 32


def _check_npz_sizes(path: Path, keys: tuple[str, ...]) -> None:
    """Refuse, before loading, an npz that is not a zip archive, or whose arrays would take
    more than :data:`MAX_NPZ_ARRAY_BYTES` (a header claiming 10^12 bytes, a deflate bomb)."""
    import zipfile

    if not zipfile.is_zipfile(path):
        raise CorruptDataError(f"{path}: not an npz file (an npz is a zip archive of .npy arrays)")
    try:
        with zipfile.ZipFile(path) as z:
            for key in keys:
                try:
                    info = z.getinfo(f"{key}.npy")
                except KeyError:
                    continue  # reported as missing below
                if info.file_size > MAX_NPZ_ARRAY_BYTES:
                    raise CorruptDataError(
                        f"{path}: {key} unpacks to {info.file_size:,} bytes, over the limit of "
                        f"{MAX_NPZ_ARRAY_BYTES:,} (bnnlib.data.files.MAX_NPZ_ARRAY_BYTES)"
                    )
                with z.open(info) as f:
                    version = np.lib.format.read_magic(f)
                    read = (
                        np.lib.format.read_array_header_1_0
                        if version == (1, 0)
                        else np.lib.format.read_array_header_2_0
                    )
                    shape, _, dtype = read(f)
                n = int(np.prod(shape, dtype=np.float64)) * dtype.itemsize
                if n > min(MAX_NPZ_ARRAY_BYTES, info.file_size):
                    raise CorruptDataError(
                        f"{path}: {key}'s header claims {n:,} bytes, but the archive holds "
                        f"{info.file_size:,} for it (limit {MAX_NPZ_ARRAY_BYTES:,}): damaged"
                    )
    except (zipfile.BadZipFile, ValueError, OSError) as e:
        if isinstance(e, CorruptDataError):
            raise
        raise CorruptDataError(f"{path}: cannot read the npz file ({e})") from e


#: The most channels an npz image may have (gray, RGB, RGBA): more is an array stored
#: channels-first (N x C x H x W), which would otherwise be read as images C pixels wide.
MAX_CHANNELS = 4


def read_npz(path: Path, train: bool) -> tuple[np.ndarray, np.ndarray]:
    """(x, y) of one split of an npz dataset; y checked against y_train's classes."""
    keys = ("x_train", "y_train") if train else ("x_test", "y_test")
    _check_npz_sizes(path, keys)
    try:
        with np.load(path, allow_pickle=False) as f:
            missing = [k for k in keys if k not in f.files]
            if missing:
                raise CorruptDataError(
                    f"{path}: missing arrays {missing}; an npz dataset holds x_train, y_train, "
                    "x_test, y_test (uint8 images N x H x W x C, integer labels N)"
                )
            x, y = f[keys[0]], f[keys[1]]
    except (OSError, ValueError) as e:
        if isinstance(e, CorruptDataError):
            raise
        raise CorruptDataError(f"{path}: cannot read the npz file ({e})") from e
    if x.dtype != np.uint8 or x.ndim not in (3, 4) or y.shape != (x.shape[0],):
        raise CorruptDataError(
            f"{path}: {keys[0]} must be uint8 N x H x W [x C] and {keys[1]} of shape (N,); "
            f"got {x.dtype} {x.shape} and {y.shape}"
        )
    x = x[..., None] if x.ndim == 3 else x
    if x.shape[3] > MAX_CHANNELS:
        first = (
            f"; it looks channels-first (N x C x H x W with C = {x.shape[1]}): save "
            "x.transpose(0, 2, 3, 1)"
            if x.shape[1] <= MAX_CHANNELS
            else ""
        )
        raise CorruptDataError(
            f"{path}: {keys[0]} of shape {x.shape} has {x.shape[3]} channels; an npz dataset "
            f"holds images N x H x W x C, channels-last, C at most {MAX_CHANNELS}{first}"
        )
    k = npz_num_classes(path)
    y = _labels(y, f"{path} {keys[1]}", 0, k, f"the classes of y_train, 0..{k - 1}")
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2)), y


#: The most classes a dataset may have (labels 0..MAX_CLASSES - 1): a label beyond it is
#: taken for a corrupt file rather than a model with that many outputs.
MAX_CLASSES = 1000


def _labels(y, source: str, low: int, high: int, what: str | None = None) -> np.ndarray:
    """Labels as int64 (N,), refused unless integers in [low, high) (one clear error)."""
    y = np.asarray(y)
    if y.dtype.kind not in "iu":  # floats would be truncated, bools and objects are no labels
        raise CorruptDataError(
            f"{source}: labels must be integers, got {y.dtype}; store class indices 0..K-1 "
            "as an integer array"
        )
    if y.size:
        lo, hi = int(y.min()), int(y.max())
        if lo < low or hi >= high:
            bad = lo if lo < low else hi
            raise CorruptDataError(
                f"{source}: label {bad} is outside {what or f'{low}..{high - 1}'} (labels "
                f"range over {lo}..{hi}); the file is corrupt or holds other labels"
            )
    return y.astype(np.int64)


def npz_num_classes(path: Path) -> int:
    """K = 1 + the largest training label, with y_train integers using every class 0..K-1
    and K <= MAX_CLASSES (a stray label of 200 would otherwise make a 201-class model)."""
    _check_npz_sizes(path, ("y_train",))
    try:
        with np.load(path, allow_pickle=False) as f:
            y = f["y_train"]
    except (OSError, ValueError, KeyError) as e:
        raise CorruptDataError(f"{path}: cannot read y_train ({e})") from e
    source = f"{path} y_train"
    if y.size == 0:
        raise CorruptDataError(f"{source}: no training labels; the classes come from y_train")
    y = _labels(y, source, 0, MAX_CLASSES, f"0..{MAX_CLASSES - 1} (bnnlib.data.MAX_CLASSES)")
    k = int(y.max()) + 1
    used = np.unique(y)
    if len(used) != k:
        missing = sorted(set(range(k)) - set(used.tolist()))
        raise CorruptDataError(
            f"{source}: the labels go up to {k - 1} but {len(missing)} of the classes 0..{k - 1} "
            f"never occur (e.g. {missing[:5]}); labels must be class indices 0..K-1, each used "
            "in y_train"
        )
    return k
