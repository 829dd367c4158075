"""bnnlib.files.atomic_write: file modes, leftovers of interrupted writes; the test data root."""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path

import pytest

from bnnlib import files


@pytest.fixture
def umask():
    """Set the umask for one test, then restore it."""
    saved = os.umask(0o022)
    os.umask(saved)

    def set_mask(mask: int) -> None:
        os.umask(mask)

    yield set_mask
    os.umask(saved)


@pytest.mark.parametrize("mask", [0o022, 0o002, 0o077])
def test_atomic_write_mode_follows_the_umask(tmp_path, umask, mask):
    """Files used to be created 0600 (mkstemp's mode) whatever the umask."""
    umask(mask)
    for data in (b"bytes", lambda f: f.write(b"callback")):
        path = files.atomic_write(tmp_path / "out.json", data)
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~mask
    plain = tmp_path / "plain"
    plain.write_bytes(b"x")  # what any new file gets, for comparison
    assert stat.S_IMODE(plain.stat().st_mode) == 0o666 & ~mask


def test_atomic_write_removes_stale_tmp_of_the_same_path_only(tmp_path):
    """A write killed before its rename left its .tmp forever (590 MB at paper scale)."""
    old = time.time() - files.STALE_TMP_SECONDS - 60
    stale = tmp_path / ".ckpt.pt.a1b2c3d4.tmp"
    fresh = tmp_path / ".ckpt.pt.zzzz9999.tmp"  # may be a write still running elsewhere
    other = tmp_path / ".other.pt.a1b2c3d4.tmp"  # another file's leftover
    lookalike = tmp_path / ".ckpt.pt.backup.tmp"  # not a name atomic_write makes
    for p in (stale, fresh, other, lookalike):
        p.write_bytes(b"partial")
    for p in (stale, other, lookalike):
        os.utime(p, (old, old))
    files.atomic_write(tmp_path / "ckpt.pt", b"new")
    assert not stale.exists()
    assert fresh.exists() and other.exists() and lookalike.exists()
    assert (tmp_path / "ckpt.pt").read_bytes() == b"new"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [fresh.name, other.name, lookalike.name, "ckpt.pt"]
    )


def test_atomic_write_cleans_up_on_error(tmp_path):
    def fail(f):
        f.write(b"half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        files.atomic_write(tmp_path / "x.json", fail)
    assert list(tmp_path.iterdir()) == []


def test_data_dir_from_the_environment_is_absolute_for_the_tests():
    """The notebook tests run their kernels in book/: a relative BNN_DATA_DIR (../shared/data)
    given to pytest must reach them as an absolute path (tests/conftest.py resolves it once)."""
    value = os.environ.get("BNN_DATA_DIR")
    if value is None:
        pytest.skip("BNN_DATA_DIR is not set")
    assert Path(value).is_absolute(), value


def test_a_ctrl_c_during_a_write_is_delivered_after_it(tmp_path):
    """SIGINT half-way through the bytes: the file is written whole, then KeyboardInterrupt."""
    import os
    import signal

    from bnnlib.files import atomic_write

    def data(f):
        f.write(b"a" * 10)
        os.kill(os.getpid(), signal.SIGINT)
        f.write(b"b" * 10)

    with pytest.raises(KeyboardInterrupt):
        atomic_write(tmp_path / "x", data)
    assert (tmp_path / "x").read_bytes() == b"a" * 10 + b"b" * 10
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
