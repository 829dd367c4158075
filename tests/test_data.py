"""bnnlib.data: readers of the real file formats, the paper's splits and scaling, clear errors.

Every format is tested on tiny files written here by independent writers (IDX
bytes by hand, CIFAR-10 batches with pickle, SVHN with scipy.io.savemat), and
on the real data in ../shared/data when it is present.
"""

from __future__ import annotations

import gzip
import os
import pickle
import struct

import numpy as np
import pytest
import scipy.io
import torch

from bnnlib import data
from bnnlib.data import loaders

RNG = np.random.default_rng(0)


# ------------------------------------------------------------------ independent writers


def write_idx(path, arr: np.ndarray, gz: bool = False) -> None:
    """The IDX format: 00 00 08 ndim, big-endian uint32 dims, then the uint8 bytes."""
    raw = bytes([0, 0, 8, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    if gz:
        with gzip.open(f"{path}.gz", "wb") as f:
            f.write(raw)
    else:
        path.write_bytes(raw)


def write_mnist(root, folder="MNIST", n_train=60, n_test=12, gz=False):
    raw = root / folder / "raw"
    x = RNG.integers(0, 256, (n_train, 28, 28), dtype=np.uint8)
    y = (np.arange(n_train) % 10).astype(np.uint8)
    xt = RNG.integers(0, 256, (n_test, 28, 28), dtype=np.uint8)
    yt = (np.arange(n_test) % 10).astype(np.uint8)
    write_idx(raw / "train-images-idx3-ubyte", x, gz)
    write_idx(raw / "train-labels-idx1-ubyte", y, gz)
    write_idx(raw / "t10k-images-idx3-ubyte", xt, gz)
    write_idx(raw / "t10k-labels-idx1-ubyte", yt, gz)
    return x, y, xt, yt


def write_cifar(root, n_per_batch=10):
    """Five data batches and a test batch: pickled dicts like the official python version."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    batches = []
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        rows = RNG.integers(0, 256, (n_per_batch, 3072), dtype=np.uint8)
        labels = [int(v) for v in RNG.integers(0, 10, n_per_batch)]
        d = {
            b"batch_label": name.encode(),
            b"labels": labels,
            b"data": rows,
            b"filenames": [b"x.png"] * n_per_batch,
        }
        (folder / name).write_bytes(pickle.dumps(d, protocol=2))
        batches.append((rows, labels))
    return batches


def write_svhn(root, n_train=20, n_test=7):
    out = {}
    for split, n in (("train", n_train), ("test", n_test)):
        X = RNG.integers(0, 256, (32, 32, 3, n), dtype=np.uint8)
        y = RNG.integers(1, 11, (n, 1)).astype(np.uint8)  # digit 0 stored as 10
        (root / "SVHN").mkdir(parents=True, exist_ok=True)
        scipy.io.savemat(root / "SVHN" / f"{split}_32x32.mat", {"X": X, "y": y})
        out[split] = (X, y)
    return out


def write_npz(path, n_train=30, n_test=8, classes=4, channels=3):
    arrays = {
        "x_train": RNG.integers(0, 256, (n_train, 8, 8, channels), dtype=np.uint8),
        "y_train": (np.arange(n_train) % classes).astype(np.uint8),
        "x_test": RNG.integers(0, 256, (n_test, 8, 8, channels), dtype=np.uint8),
        "y_test": (np.arange(n_test) % classes).astype(np.uint8),
    }
    np.savez(path, **arrays)
    return arrays


def expected_scale(pixels: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(pixels.astype(np.float64) * 2 / 255 - 1).float()


# ------------------------------------------------------------------ scaling


def test_scale_and_to_uint8_are_exact_inverses():
    pixels = torch.arange(256, dtype=torch.uint8)
    X = data.scale(pixels)
    assert X[0] == -1 and X[-1] == 1
    torch.testing.assert_close(X, expected_scale(pixels.numpy()), atol=1e-6, rtol=0)
    assert torch.equal(data.to_uint8(X), pixels)


def test_to_uint8_refuses_what_scale_cannot_give():
    pixels = torch.arange(256, dtype=torch.uint8)
    assert torch.equal(data.to_uint8(data.scale(pixels).double()), pixels)
    assert torch.equal(data.to_uint8(data.scale(pixels).half()), pixels)
    for bad in (pixels.float(), pixels.float() / 255, data.scale(pixels) * 2):
        with pytest.raises(ValueError, match=r"not \(range"):
            data.to_uint8(bad)
    with pytest.raises(ValueError, match="NaN or infinite"):
        data.to_uint8(torch.tensor([0.0, float("-inf")]))
    with pytest.raises(ValueError, match="int64"):
        data.to_uint8(torch.tensor([1, -1]))


def test_scale_rejects_floats():
    with pytest.raises(ValueError, match="uint8"):
        data.scale(torch.zeros(3))


# ------------------------------------------------------------------ IDX / MNIST


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("name,folder", [("mnist", "MNIST"), ("fashion_mnist", "FashionMNIST")])
def test_mnist_files_and_paper_split(tmp_path, name, folder, gz):
    x, y, xt, yt = write_mnist(tmp_path, folder, gz=gz)
    train = data.load(name, tmp_path, "train", download=False)
    val = data.load(name, tmp_path, "val", download=False)
    test = data.load(name, tmp_path, "test", download=False)
    full = data.load(name, tmp_path, "train_full", download=False)
    # The paper's split, scaled: first 5/6 train, last 1/6 validation (50k / 10k of 60k).
    assert (len(train), len(val), len(test), len(full)) == (50, 10, 12, 60)
    assert train.X.shape == (50, 1, 28, 28) and train.X.dtype == torch.float32
    assert train.y.dtype == torch.int64 and train.num_classes == 10
    assert torch.equal(data.to_uint8(train.X)[:, 0], torch.from_numpy(x[:50]))
    assert torch.equal(data.to_uint8(val.X)[:, 0], torch.from_numpy(x[50:]))
    assert torch.equal(val.y, torch.from_numpy(y[50:]).long())
    assert torch.equal(data.to_uint8(test.X)[:, 0], torch.from_numpy(xt))
    assert torch.equal(test.y, torch.from_numpy(yt).long())
    tr, va, te = data.load_splits(name, tmp_path, download=False)
    for a, b in ((tr, train), (va, val), (te, test)):
        assert torch.equal(a.X, b.X) and torch.equal(a.y, b.y) and a.split == b.split


def test_read_idx_matches_writer(tmp_path):
    arr = RNG.integers(0, 256, (3, 5, 7), dtype=np.uint8)
    write_idx(tmp_path / "a", arr)
    assert np.array_equal(data.read_idx(tmp_path / "a"), arr)


def test_corrupt_idx_bad_magic(tmp_path):
    write_mnist(tmp_path)
    bad = tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte"
    bad.write_bytes(b"PK\x03\x04" + bad.read_bytes()[4:])
    with pytest.raises(data.CorruptDataError, match="magic") as e:
        data.load("mnist", tmp_path, download=False)
    assert str(bad) in str(e.value)


def test_corrupt_idx_truncated(tmp_path):
    write_mnist(tmp_path)
    bad = tmp_path / "MNIST" / "raw" / "t10k-images-idx3-ubyte"
    bad.write_bytes(bad.read_bytes()[:-100])
    with pytest.raises(data.CorruptDataError, match="truncated") as e:
        data.load("mnist", tmp_path, "test", download=False)
    assert str(bad) in str(e.value)


def test_corrupt_gzip(tmp_path):
    write_mnist(tmp_path, gz=True)
    bad = tmp_path / "MNIST" / "raw" / "train-labels-idx1-ubyte.gz"
    bad.write_bytes(bad.read_bytes()[:20])
    with pytest.raises(data.CorruptDataError) as e:
        data.load("mnist", tmp_path, download=False)
    assert str(bad) in str(e.value)


# ------------------------------------------------------------------ CIFAR-10


def test_cifar_batches_and_split(tmp_path):
    batches = write_cifar(tmp_path, n_per_batch=10)
    train, val, test = data.load_splits("cifar10", tmp_path, download=False)
    assert (len(train), len(val), len(test)) == (45, 5, 10)  # 45k / 5k at full size
    rows = np.concatenate([b[0] for b in batches[:5]])
    labels = np.concatenate([b[1] for b in batches[:5]])
    # Each row holds the red, then green, then blue 32 x 32 plane.
    img = rows.reshape(-1, 3, 32, 32)
    assert torch.equal(data.to_uint8(train.X), torch.from_numpy(img[:45]))
    assert torch.equal(data.to_uint8(val.X), torch.from_numpy(img[45:]))
    assert torch.equal(train.y, torch.from_numpy(labels[:45]))
    assert torch.equal(
        data.to_uint8(test.X)[3, 1].flatten(), torch.from_numpy(batches[5][0][3, 1024:2048])
    )


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > pwned.txt",))


def test_restricted_unpickler_refuses_code(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    payload = pickle.dumps({b"data": _Evil(), b"labels": []}, protocol=2)
    with pytest.raises(pickle.UnpicklingError, match="refused.*system"):
        data.restricted_load(payload)
    write_cifar(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").write_bytes(payload)
    with pytest.raises(pickle.UnpicklingError, match="data_batch_3"):
        data.load("cifar10", tmp_path, download=False)
    assert not (tmp_path / "pwned.txt").exists()


def test_restricted_unpickler_reads_numpy_pickles():
    arr = RNG.integers(0, 256, (4, 3072), dtype=np.uint8)
    for protocol in (2, 4, 5):
        d = data.restricted_load(pickle.dumps({"data": arr, "labels": [1, 2]}, protocol=protocol))
        assert np.array_equal(d["data"], arr) and d["labels"] == [1, 2]
    # The official batches were written by numpy 1 (module numpy.core.multiarray).
    old_numpy = pickle.dumps({"data": arr}, protocol=2).replace(b"numpy._core.", b"numpy.core.")
    assert b"numpy.core.multiarray" in old_numpy
    assert np.array_equal(data.restricted_load(old_numpy)["data"], arr)


def test_cifar_wrong_content(tmp_path):
    write_cifar(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(pickle.dumps({b"x": 1}))
    with pytest.raises(data.CorruptDataError, match="test_batch.*not a CIFAR-10 batch"):
        data.load("cifar10", tmp_path, "test", download=False)


# ------------------------------------------------------------------ SVHN, npz


def test_svhn_mat_files(tmp_path):
    mats = write_svhn(tmp_path, n_train=20, n_test=7)
    train, val, test = data.load_splits("svhn", tmp_path, download=False)
    assert (len(train), len(val), len(test)) == (18, 2, 7)  # validation: the last tenth
    X, y = mats["train"]
    # X is height x width x channel x N; our layout N x channel x height x width.
    assert torch.equal(data.to_uint8(train.X), torch.from_numpy(X.transpose(3, 2, 0, 1)[:18]))
    labels = y[:, 0].astype(np.int64)
    labels[labels == 10] = 0
    assert torch.equal(val.y, torch.from_numpy(labels[18:]))
    assert int(train.y.max()) <= 9 and train.num_classes == 10


def test_npz_file(tmp_path):
    arrays = write_npz(tmp_path / "tiny.npz", n_train=30, n_test=8, classes=4)
    train, val, test = data.load_splits(f"npz:{tmp_path / 'tiny.npz'}")
    assert (len(train), len(val), len(test)) == (27, 3, 8)
    assert train.shape == (3, 8, 8) and train.num_classes == 4
    hwc = torch.from_numpy(arrays["x_train"][:27])
    assert torch.equal(data.to_uint8(train.X).permute(0, 2, 3, 1), hwc)
    assert torch.equal(test.y, torch.from_numpy(arrays["y_test"]).long())
    # A relative path is looked up in the data root too.
    assert len(data.load("npz:tiny.npz", root=tmp_path, split="test")) == 8


# ------------------------------------------------------------------ labels


def _npz_with(path, **labels):
    arrays = write_npz(path, n_train=30, n_test=8, classes=4)
    arrays.update(labels)
    np.savez(path, **arrays)
    return f"npz:{path}"


@pytest.mark.parametrize(
    "labels, problem",
    [
        ({"y_train": np.r_[np.arange(29) % 4, 200].astype(np.int64)}, r"classes 0\.\.200 never"),
        ({"y_train": np.r_[np.arange(29) % 4, 10**9].astype(np.int64)},
         r"label 1000000000.*0\.\.999"),
        ({"y_train": (np.arange(30) % 4).astype(np.float32)}, "integers, got float32"),
        ({"y_train": np.r_[np.arange(29) % 4, -1].astype(np.int64)}, "label -1 is outside"),
        ({"y_test": np.r_[np.arange(7) % 4, 7].astype(np.int64)},
         r"y_test: label 7.*y_train, 0\.\.3"),
    ],
)  # fmt: skip
def test_npz_labels_are_range_checked(tmp_path, labels, problem):
    """A label of 200 made a 201-class model, 1e9 tried a 256 GB allocation, float labels were
    truncated, a test label outside the training classes just counted as an error."""
    name = _npz_with(tmp_path / "d.npz", **labels)
    with pytest.raises(data.CorruptDataError, match=problem) as e:
        data.load_splits(name)
    assert str(tmp_path / "d.npz") in str(e.value)
    split = "test" if "y_test" in labels else "train"
    with pytest.raises(data.CorruptDataError, match=problem):
        data.load(name, split=split)


def test_paper_dataset_labels_are_range_checked(tmp_path):
    write_mnist(tmp_path)
    bad = tmp_path / "MNIST" / "raw" / "t10k-labels-idx1-ubyte"
    write_idx(bad, np.r_[np.arange(11) % 10, 12].astype(np.uint8))
    with pytest.raises(data.CorruptDataError, match=r"label 12 is outside 0\.\.9") as e:
        data.load("mnist", tmp_path, "test", download=False)
    assert str(bad) in str(e.value)
    write_cifar(tmp_path)
    batch = tmp_path / "cifar-10-batches-py" / "test_batch"
    rows = RNG.integers(0, 256, (3, 3072), dtype=np.uint8)
    for labels, problem in (([0, 1, 10], "label 10"), ([0.0, 1.5, 2.0], "integers, got float64")):
        batch.write_bytes(pickle.dumps({b"data": rows, b"labels": labels}, protocol=2))
        with pytest.raises(data.CorruptDataError, match=problem):
            data.load("cifar10", tmp_path, "test", download=False)


# ------------------------------------------------------------------ huge claims, small files


def test_gz_idx_is_not_decompressed_past_its_header(tmp_path, monkeypatch):
    """A small .gz whose header claims 10 bytes but which inflates to far more used to be
    decompressed whole before the header was checked."""
    raw = bytes([0, 0, 8, 1]) + struct.pack(">I", 10) + bytes(10)
    path = tmp_path / "bomb-idx1-ubyte.gz"
    with gzip.open(path, "wb") as f:
        f.write(raw)
        for _ in range(64):  # 64 MiB of zeros beyond the claimed 10 bytes: ~64 KB compressed
            f.write(bytes(1 << 20))
    assert path.stat().st_size < 200_000
    read = []
    real_read = gzip.GzipFile.read
    monkeypatch.setattr(gzip.GzipFile, "read", lambda f, n=-1: read.append(n) or real_read(f, n))
    with pytest.raises(data.CorruptDataError, match=r"shape \(10,\).*holds more"):
        data.read_idx(path)
    assert sum(read) <= 4 + 4 + 11 and all(0 < n <= 11 for n in read)
    # A header claiming more than the limit is refused before reading any data.
    big = tmp_path / "big-idx3-ubyte.gz"
    with gzip.open(big, "wb") as f:
        f.write(bytes([0, 0, 8, 3]) + struct.pack(">3I", 100_000, 4096, 4096) + bytes(100))
    with pytest.raises(data.CorruptDataError, match="limit of 1,073,741,824 bytes"):
        data.read_idx(big)


class _Alloc:
    """Pickles as a call that allocates an uninitialised array of any shape."""

    def __init__(self, call, args):
        self.call, self.args = call, args

    def __reduce__(self):
        return self.call, self.args


def test_cifar_pickle_cannot_allocate_what_its_bytes_do_not_hold(tmp_path):
    """A ~200-byte batch used to unpickle into 100k uninitialised images (2.4 GB)."""
    reconstruct = np.zeros(1).__reduce__()[0]
    for data_obj in (
        _Alloc(np.ndarray, ((100_000, 3072), np.dtype(np.uint8))),
        _Alloc(reconstruct, (np.ndarray, (100_000, 3072), b"B")),
    ):
        payload = pickle.dumps({b"data": data_obj, b"labels": [0] * 3}, protocol=2)
        assert len(payload) < 400
        with pytest.raises(pickle.UnpicklingError, match="refused"):
            data.restricted_load(payload)
    write_cifar(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(payload)
    with pytest.raises(pickle.UnpicklingError, match="test_batch"):
        data.load("cifar10", tmp_path, "test", download=False)


# ------------------------------------------------------------------ errors


def test_missing_root_says_where_and_how(tmp_path):
    root = tmp_path / "nothing"
    with pytest.raises(data.DataNotFoundError) as e:
        data.load("mnist", root, download=False)
    msg = str(e.value)
    assert str(root / "MNIST" / "raw" / "train-images-idx3-ubyte") in msg
    assert "BNN_DATA_DIR" in msg and "download=True" in msg


def test_missing_files_offline_says_offline(tmp_path, monkeypatch):
    monkeypatch.setattr(loaders, "probe_online", lambda url, timeout=3.0: (False, "example.org"))
    monkeypatch.setenv("BNN_DATA_DIR", str(tmp_path))
    with pytest.raises(data.DataNotFoundError, match="offline") as e:
        data.load("cifar10")
    assert "$BNN_DATA_DIR" in str(e.value)
    assert str(tmp_path / "cifar-10-batches-py" / "data_batch_1") in str(e.value)


def test_download_only_when_missing_and_online(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(loaders, "probe_online", lambda url, timeout=3.0: (True, "example.org"))
    monkeypatch.setattr(
        loaders, "download_files", lambda name, root: calls.append(name) or write_mnist(root)
    )
    assert len(data.load("mnist", tmp_path, "test")) == 12
    assert len(data.load("mnist", tmp_path, "test")) == 12  # files present: no second download
    assert calls == ["mnist"]


def test_unknown_names():
    with pytest.raises(ValueError, match="unknown dataset 'imagenet'.*mnist.*cifar10.*svhn.*npz"):
        data.load("imagenet")
    with pytest.raises(ValueError, match="unknown split 'dev'.*train.*val.*test"):
        data.load("mnist", split="dev")


def test_missing_npz(tmp_path):
    with pytest.raises(data.DataNotFoundError, match="npz dataset not found"):
        data.load(f"npz:{tmp_path / 'nope.npz'}")


def test_resolve_root(tmp_path, monkeypatch):
    monkeypatch.setenv("BNN_DATA_DIR", str(tmp_path))
    assert data.resolve_root() == tmp_path
    assert data.resolve_root(tmp_path / "x") == tmp_path / "x"
    monkeypatch.delenv("BNN_DATA_DIR")
    assert data.resolve_root().parts[-3:] == (".cache", "bnnlib", "data")


def test_validation_size_is_the_papers():
    assert data.validation_size("mnist", 60_000) == 10_000
    assert data.validation_size("fashion_mnist", 60_000) == 10_000
    assert data.validation_size("cifar10", 50_000) == 5_000


def test_dataset_to_and_len(tmp_path):
    write_npz(tmp_path / "t.npz")
    ds = data.load(f"npz:{tmp_path / 't.npz'}", split="test")
    moved = ds.to("cpu")
    assert len(moved) == 8 and moved.X.device.type == "cpu" and "n=8" in repr(ds)
    with pytest.raises(ValueError, match="rows"):
        data.Dataset(torch.zeros(3, 1, 2, 2), torch.zeros(2, dtype=torch.long), "x", "train", 2)


# ------------------------------------------------------------------ the real data


@pytest.fixture(scope="module")
def mnist(data_root):
    if not (data_root / "MNIST").is_dir():
        pytest.skip("MNIST not in the data root")
    return data.load_splits("mnist", data_root, download=False)


MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def test_real_mnist(mnist):
    train, val, test = mnist
    assert (len(train), len(val), len(test)) == (50_000, 10_000, 10_000)
    assert train.X.shape == (50_000, 1, 28, 28)
    for ds in mnist:
        assert ds.X.min() == -1 and ds.X.max() == 1
    counts = torch.bincount(torch.cat([train.y, val.y]), minlength=10).tolist()
    assert counts == MNIST_TRAIN_COUNTS
    assert torch.bincount(test.y, minlength=10).tolist() == MNIST_TEST_COUNTS


def test_real_fashion_mnist(data_root):
    if not (data_root / "FashionMNIST").is_dir():
        pytest.skip("FashionMNIST not in the data root")
    test = data.load("fashion_mnist", data_root, "test", download=False)
    assert test.X.shape == (10_000, 1, 28, 28)
    assert torch.bincount(test.y).tolist() == [1000] * 10


def test_real_cifar10_subset(data_root):
    path = data_root / "CIFAR10-subset" / "cifar10_subset.npz"
    if not path.is_file():
        pytest.skip("CIFAR10-subset not in the data root")
    train, val, test = data.load_splits(f"npz:{path}")
    assert len(train) + len(val) == 5085 and len(test) == 1017
    assert (len(train), len(val)) == (4577, 508)
    assert train.X.shape[1:] == (3, 32, 32) and train.num_classes == 10
    raw = np.load(path)
    assert torch.equal(torch.cat([train.y, val.y]), torch.from_numpy(raw["y_train"]).long())
    hwc = data.to_uint8(val.X).permute(0, 2, 3, 1)
    assert torch.equal(hwc, torch.from_numpy(raw["x_train"][4577:]))
    assert torch.bincount(test.y).tolist() == [105, 93, 100, 104, 92, 87, 114, 102, 110, 110]


# ------------------------------------------------- npz files refused before loading


def _npy_header(shape, descr="|u1") -> bytes:
    import io

    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buf, {"descr": descr, "fortran_order": False, "shape": shape}
    )
    return buf.getvalue()


def test_an_npz_that_is_not_a_zip_is_named_as_such(tmp_path):
    """It used to be reported as 'pickled (object) data'."""
    (tmp_path / "x.npz").write_text("not a zip")
    with pytest.raises(data.CorruptDataError, match="not an npz file"):
        data.load(f"npz:{tmp_path / 'x.npz'}")


def test_an_npz_header_claiming_a_terabyte_is_refused_before_allocation(tmp_path):
    import zipfile

    with zipfile.ZipFile(tmp_path / "huge.npz", "w") as z:  # 1 KB on disk
        z.writestr("x_train.npy", _npy_header((10**6, 1000, 1000)) + b"\0" * 100)
        z.writestr("y_train.npy", _npy_header((10**6,)))
    with pytest.raises(data.CorruptDataError, match="header claims 1,000,000,000,000 bytes"):
        data.load(f"npz:{tmp_path / 'huge.npz'}")


def test_a_deflate_bomb_is_refused_from_its_unpacked_size(tmp_path, monkeypatch):
    """A small deflated archive that unpacks to more than the limit (lowered here to 1 MB: a
    real bomb of gigabytes behaves the same) is refused before numpy inflates it."""
    import zipfile

    from bnnlib.data import files

    monkeypatch.setattr(files, "MAX_NPZ_ARRAY_BYTES", 1 << 20)
    x = np.zeros((64, 128, 128, 1), np.uint8)  # 1 MB of zeros: deflates to about 1 KB
    np.savez_compressed(tmp_path / "bomb.npz", x_train=x, y_train=np.zeros(64, np.int64),
                        x_test=x[:2], y_test=np.zeros(2, np.int64))  # fmt: skip
    assert (tmp_path / "bomb.npz").stat().st_size < 50_000
    with pytest.raises(data.CorruptDataError, match="x_train unpacks to 1,048,704 bytes"):
        data.load(f"npz:{tmp_path / 'bomb.npz'}")
    assert zipfile.is_zipfile(tmp_path / "bomb.npz")
