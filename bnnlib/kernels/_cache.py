"""Where numba caches the compiled kernels, for a user who cannot write where numba wants to.

The kernels are compiled with ``cache=True``. numba looks for a writable folder in this order:
``$NUMBA_CACHE_DIR``, the ``__pycache__`` next to the source (``bnnlib/kernels/__pycache__``),
then the user cache (``$XDG_CACHE_HOME/numba``, else ``~/.cache/numba``), and raises
"cannot cache function ...: no locator available" at *import* when none is writable (a
read-only install with a read-only or missing home). :data:`CACHE` settles this once, before the
kernels are defined: numba's own choice when it has one; else a private folder of this user
under the temp dir (``bnnlib-numba-<uid>``, created 0700 and used only if owned by this user and
not writable by others: numba loads pickled code from it); else no on-disk cache (each process
compiles the kernels again, a few seconds).
"""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path

__all__ = ["CACHE"]


def _probe() -> None:
    """A function of this folder: numba looks up its cache folder from the source file."""


def _numba_has_a_folder() -> bool:
    """Whether numba's own locators find a writable cache folder for this package's files."""
    try:
        from numba.core import caching

        impl = getattr(caching, "CacheImpl", None) or caching._CacheImpl  # numba >= 0.61 / older
        locators = impl._locator_classes
    except (ImportError, AttributeError):  # numba's internals moved: check its first choice
        try:
            folder = Path(__file__).parent / "__pycache__"
            folder.mkdir(exist_ok=True)
            tempfile.TemporaryFile(dir=folder).close()
            return True
        except OSError:
            return False
    return any(cls.from_function(_probe, __file__) is not None for cls in locators)


def _private_folder() -> Path | None:
    """``<tmp>/bnnlib-numba-<uid>``, owned by this user and closed to others, or None."""
    try:
        folder = Path(tempfile.gettempdir()) / f"bnnlib-numba-{os.getuid()}"
        try:
            folder.mkdir(mode=0o700)
        except FileExistsError:
            pass
        st = folder.lstat()
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o022:
            return None  # someone else's, or writable by others: its cache could run their code
        tempfile.TemporaryFile(dir=folder).close()  # writable?
        return folder
    except (OSError, AttributeError):  # no temp dir at all; no getuid (Windows)
        return None


def _configure() -> bool:
    if _numba_has_a_folder():
        return True
    folder = _private_folder()
    if folder is None:
        return False
    from numba.core import config

    config.CACHE_DIR = str(folder)
    os.environ["NUMBA_CACHE_DIR"] = str(folder)  # survives numba re-reading its configuration
    return True


#: Whether the kernels are compiled with ``cache=True`` (see the module docstring).
CACHE: bool = _configure()
