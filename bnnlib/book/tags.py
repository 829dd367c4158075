"""Fold the bookkeeping cells of the book's notebooks in the HTML site: the tag ``hide-input``.

::

    python -m bnnlib.book.tags [--check] [NOTEBOOK ...]   # default: every book/NN_*.ipynb

A code cell is *bookkeeping* (:func:`is_bookkeeping`) when it calls ``record(...)``: a *record
cell*. A notebook splits a cell that teaches and records into a visible teaching cell and a
record cell after it; the record cell's code is folded behind a "show" toggle in the site
(myst-nb's ``hide-input``), and :func:`bnnlib.book.record.record` prints nothing in the book's
run, so the reader sees neither. Other cells may carry the tag by hand (tables of bookkeeping).

The script only adds the tag (idempotent, keeps tags set by hand) and writes a notebook only
when it changes it, keeping its JSON layout. ``--check`` changes nothing and exits 1 naming the
cells that lack the tag (the tests run it).
"""

from __future__ import annotations

import argparse
import ast
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from bnnlib.book.notebooks import BOOK_DIR, BookError, notebooks
from bnnlib.errors import BadInput
from bnnlib.files import atomic_write

__all__ = ["HIDE_INPUT", "is_bookkeeping", "untagged", "tag_notebook", "main"]

HIDE_INPUT = "hide-input"


def _calls_record(tree: ast.AST) -> bool:
    return any(
        isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id == "record"
        for n in ast.walk(tree)
    )


def is_bookkeeping(source: str) -> bool:
    """Whether a code cell's ``source`` is a record cell (calls ``record``; module docstring)."""
    try:
        return _calls_record(ast.parse(source))
    except SyntaxError:
        return False


def _cells_to_tag(nb: dict) -> list[int]:
    found = []
    for i, cell in enumerate(nb.get("cells", [])):
        tags = cell.get("metadata", {}).get("tags", [])
        if cell.get("cell_type") != "code" or HIDE_INPUT in tags or "parameters" in tags:
            continue
        source = cell.get("source", "")
        if is_bookkeeping(source if isinstance(source, str) else "".join(source)):
            found.append(i)
    return found


def _read(path: Path) -> tuple[str, dict]:
    """The text and JSON of notebook ``path``; :class:`BookError` naming it when it is missing
    or not a notebook."""
    try:
        text = Path(path).read_text(encoding="utf-8")
        nb = json.loads(text)
    except OSError as e:
        raise BookError(f"{path}: cannot read the notebook ({e.strerror or e})") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BookError(f"{path}: not a notebook, damaged or truncated ({e})") from None
    if not isinstance(nb, dict) or not isinstance(nb.get("cells"), list):
        raise BookError(f"{path}: not a notebook (no list of cells)")
    if not all(isinstance(c, dict) for c in nb["cells"]):
        raise BookError(f"{path}: not a notebook (a cell is not a JSON object)")
    return text, nb


def untagged(path: Path) -> list[int]:
    """Indices of the bookkeeping cells of notebook ``path`` without the ``hide-input`` tag."""
    return _cells_to_tag(_read(path)[1])


def tag_notebook(path: Path) -> list[int]:
    """Tag the bookkeeping cells of ``path`` ``hide-input``; the indices of the cells tagged
    now (none: the file is left as it is)."""
    text, nb = _read(path)
    cells = _cells_to_tag(nb)
    for i in cells:
        meta = nb["cells"][i].setdefault("metadata", {})
        meta["tags"] = [*meta.get("tags", []), HIDE_INPUT]
    if cells:  # the layout nbformat writes: indent 1, keys in their order, UTF-8
        new = json.dumps(nb, indent=1, ensure_ascii=False) + ("\n" if text.endswith("\n") else "")
        atomic_write(Path(path), new.encode("utf-8"))
    return cells


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bnnlib.book.tags",
        description="Tag the book's bookkeeping cells hide-input (folded in the HTML site).",
    )
    parser.add_argument("paths", nargs="*", type=Path, help="notebooks (default: book/NN_*.ipynb)")
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if untagged")
    args = parser.parse_args(argv)
    try:
        missing = _run(args.paths or notebooks(BOOK_DIR), args.check)
    except (BookError, BadInput) as e:
        parser.exit(2, f"{parser.prog}: error: {e}\n")
    except KeyboardInterrupt:
        parser.exit(130, f"{parser.prog}: interrupted (Ctrl-C); each notebook is whole\n")
    if missing:
        print("fix: python -m bnnlib.book.tags", file=sys.stderr)
    return 1 if missing else 0


def _run(paths: Sequence[Path], check: bool) -> int:
    """Tag (or with ``check`` only list) the notebooks' bookkeeping cells; cells missing it."""
    missing = 0
    for path in paths:
        if check:
            cells = untagged(path)
            missing += len(cells)
            if cells:
                print(f"{path}: bookkeeping cells {cells} lack the tag {HIDE_INPUT!r}")
        else:
            cells = tag_notebook(path)
            if cells:
                print(f"{path}: tagged cells {cells} {HIDE_INPUT!r}")
    return missing


if __name__ == "__main__":
    sys.exit(main())
