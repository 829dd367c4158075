"""The book's notebooks and their parameters: which ones, their titles, and what a
profile injects (``book/params/<notebook>.<profile>.yaml``, checked against the notebook's
cell tagged ``parameters``: ``NAME = literal  # comment`` per line). Used by
:mod:`bnnlib.book`.
"""

from __future__ import annotations

import ast
import io
import re
import tokenize
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["BOOK_DIR", "PROFILES", "BookError", "notebooks", "title", "parameters_source"]
__all__ += ["parameters", "profile_parameters"]

BOOK_DIR = Path(__file__).resolve().parents[2] / "book"
PROFILES = ("small", "full", "tests")
_NAME = re.compile(r"^[A-Z][A-Z0-9_]*$")


class BookError(RuntimeError):
    """A notebook, its parameters or its export is wrong; the message names it."""


def notebooks(book_dir: Path = BOOK_DIR, only: Sequence[str] | None = None) -> list[Path]:
    """``book_dir/NN_*.ipynb`` in order; ``only`` keeps those whose number or name is listed."""
    found = sorted(p for p in Path(book_dir).glob("[0-9][0-9]_*.ipynb"))
    if only:
        wanted = {w.strip() for item in only for w in item.split(",") if w.strip()}
        found = [p for p in found if p.stem[:2] in wanted or p.stem in wanted]
        if not found:
            raise BookError(f"--only {sorted(wanted)} matches no notebook in {book_dir}")
    return found


def read_notebook(path: Path):
    import nbformat

    return nbformat.read(path, as_version=4)


def title(nb) -> str:
    """The first markdown heading of a notebook."""
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            for line in cell.source.splitlines():
                if line.startswith("#"):
                    return line.lstrip("#").strip()
    return ""


def parameters_source(nb, name: str = "notebook") -> str:
    """The source of the one cell tagged ``parameters``."""
    cells = [c for c in nb.cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    if len(cells) != 1:
        raise BookError(f"{name}: expected one cell tagged 'parameters', found {len(cells)}")
    return cells[0].source


def parameters(source: str, name: str = "notebook") -> dict[str, tuple[Any, str]]:
    """Parse a parameters cell: ``{NAME: (value, comment)}``.

    Each line is blank, a comment, or ``NAME = literal  # comment`` with NAME in
    UPPER_CASE, a Python literal and a comment saying what it is.
    """
    found: dict[str, tuple[Any, str]] = {}
    for number, line in enumerate(source.splitlines(), start=1):
        code, comment = _split_comment(line)
        if not code:
            continue
        where = f"{name}, parameters cell line {number} ({line.strip()!r})"
        try:
            tree = ast.parse(code)
        except SyntaxError as e:
            raise BookError(f"{where}: not Python ({e.msg})") from e
        stmt = tree.body[0] if len(tree.body) == 1 else None
        if not (isinstance(stmt, ast.Assign) and len(stmt.targets) == 1):
            raise BookError(f"{where}: expected one assignment NAME = literal per line")
        target = stmt.targets[0]
        if not (isinstance(target, ast.Name) and _NAME.match(target.id)):
            raise BookError(f"{where}: parameter names are UPPER_CASE")
        try:
            value = ast.literal_eval(stmt.value)
        except ValueError as e:
            raise BookError(f"{where}: the value must be a literal (number, string, ...)") from e
        if not comment:
            raise BookError(f"{where}: each parameter needs a comment saying what it is")
        found[target.id] = (value, comment)
    return found


def _split_comment(line: str) -> tuple[str, str]:
    """(code, comment text) of one line, using the tokenizer so '#' inside strings is kept."""
    try:
        tokens = list(tokenize.generate_tokens(io.StringIO(line).readline))
    except (tokenize.TokenError, SyntaxError):
        return line.strip(), ""
    for tok in tokens:
        if tok.type == tokenize.COMMENT:
            return line[: tok.start[1]].strip(), tok.string.lstrip("#").strip()
    return line.strip(), ""


def _compatible(default: Any, value: Any) -> bool:
    if isinstance(default, bool) or isinstance(value, bool):
        return isinstance(default, bool) and isinstance(value, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float))
    if isinstance(default, (list, tuple)):
        return isinstance(value, (list, tuple))
    return isinstance(value, type(default))


def profile_parameters(path: Path, profile: str) -> dict[str, Any]:
    """The parameters ``profile`` injects into notebook ``path`` (checked against its cell)."""
    if profile not in PROFILES:
        raise BookError(f"unknown profile {profile!r}; choose one of {PROFILES}")
    if profile == "small":
        return {}
    file = path.parent / "params" / f"{path.stem}.{profile}.yaml"
    if not file.exists():
        if profile == "full":
            print(f"  note: no {file.name}; the notebook's defaults are used", flush=True)
        return {}
    import yaml

    try:
        loaded = yaml.safe_load(file.read_text()) or {}
    except yaml.YAMLError as e:
        raise BookError(
            f"{file}: not valid YAML ({str(e).splitlines()[0]}); fix the file"
        ) from None
    if not isinstance(loaded, dict):
        raise BookError(f"{file}: expected a mapping NAME: value")
    declared = parameters(parameters_source(read_notebook(path), path.name), path.name)
    for name, value in loaded.items():
        if name not in declared:
            raise BookError(
                f"{file}: {name!r} is not a parameter of {path.name} "
                f"(its parameters cell declares {', '.join(declared)})"
            )
        if not _compatible(declared[name][0], value):
            raise BookError(
                f"{file}: {name} = {value!r} does not match the type of the notebook's "
                f"default {declared[name][0]!r}"
            )
    return loaded
