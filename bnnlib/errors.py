"""The one error type for bad input, and how the command lines turn errors into one line.

:class:`BadInput` is what bnnlib raises when what it was given cannot be used (a path that is
not a regular file, a damaged file, a number out of range): its message names the problem and
the fix. It is a ``ValueError``, so library callers catching those keep working.

:func:`one_line_errors` runs an entry point's work (``python -m bnnlib.repro.publish``): a
:class:`BadInput` becomes ``PROG: error: MESSAGE`` (exit 2), an ``OSError`` (a full disk, a
permission) one line naming the file (exit 1), and Ctrl-C one line (exit 130), never a
traceback. ``python -m bnnlib.train``, ``bnnlib.book`` and ``bnnlib.book.tags`` end the same
way through their own parsers. What was written before stays whole: every file goes through
:func:`bnnlib.files.atomic_write`, so an interrupt leaves the old file or the new one.
"""

from __future__ import annotations

import errno
import sys
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["BadInput", "INTERRUPTED", "describe_os_error", "one_line_errors"]

#: Exit status of a command stopped by Ctrl-C (128 + SIGINT), as a shell reports it.
INTERRUPTED = 130


class BadInput(ValueError):
    """Input that cannot be used; the message names the problem and the fix."""


def describe_os_error(e: OSError) -> str:
    """``FILE: STRERROR`` for an OSError, with the fix for a full disk."""
    where = f"{e.filename}: " if e.filename else ""
    text = f"{where}{e.strerror or e}"
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        text += " (the disk is full: free space and run again)"
    return text


@contextmanager
def one_line_errors(prog: str, interrupted: str = "nothing written was lost") -> Iterator[None]:
    """Run a command's work: :class:`BadInput` -> ``PROG: error: ...`` (exit 2), ``OSError``
    -> one line (exit 1), Ctrl-C -> ``PROG: interrupted (Ctrl-C); INTERRUPTED`` (exit 130)."""
    try:
        yield
    except KeyboardInterrupt:
        print(f"{prog}: interrupted (Ctrl-C); {interrupted}", file=sys.stderr, flush=True)
        raise SystemExit(INTERRUPTED) from None
    except BadInput as e:
        print(f"{prog}: error: {e}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None
    except OSError as e:
        print(f"{prog}: error: {describe_os_error(e)}", file=sys.stderr, flush=True)
        raise SystemExit(1) from None
