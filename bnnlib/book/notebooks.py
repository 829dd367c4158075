"""The book's notebooks and their parameters: which ones, their titles, and what a
profile injects (``book/params/<notebook>.<profile>.yaml``, checked against the notebook's
cell tagged ``parameters``: ``NAME = literal  # comment`` per line). Used by
:mod:`bnnlib.book`.
"""

from __future__ import annotations

import ast
import difflib
import io
import math
import re
import tokenize
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["BOOK_DIR", "PROFILES", "BookError", "notebooks", "title", "parameters_source"]
__all__ += ["parameters", "profile_parameters", "parse_overrides", "static_outputs"]

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
    """The notebook at ``path`` (nbformat 4); :class:`BookError` naming the file when it is
    missing, unreadable or not a notebook."""
    import nbformat

    try:
        return nbformat.read(path, as_version=4)
    except OSError as e:
        raise BookError(f"{path}: cannot read the notebook ({e.strerror or e})") from None
    except Exception as e:  # nbformat's NotJSONError, a JSON or a schema error
        raise BookError(
            f"{path}: not a readable notebook, damaged or truncated ({type(e).__name__}); "
            "restore it (git checkout) or run the book again"
        ) from None


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


# --- ``-p NAME=VALUE`` on the command line ----------------------------------------------------


def _type_name(default: Any) -> str:
    if isinstance(default, bool):
        return "a boolean (True or False)"
    if isinstance(default, int):
        return "an integer"
    if isinstance(default, float):
        return "a number"
    if isinstance(default, str):
        return "a string"
    if isinstance(default, (list, tuple)):
        return "a list, e.g. [1, 2]"
    return f"a Python literal like {default!r}"


def _convert(text: str, default: Any) -> Any:
    """``text`` as a value of ``default``'s type; ValueError when it is not one."""
    if isinstance(default, bool):
        words = {"true": True, "false": False}
        if text.strip().lower() not in words:
            raise ValueError
        return words[text.strip().lower()]
    if isinstance(default, int):
        return int(text)  # "1.5" and "abc" raise
    if isinstance(default, float):
        value = float(text)
        if not math.isfinite(value):
            raise ValueError
        return value
    if isinstance(default, str):
        try:  # a quoted Python string: its text; anything else: as typed
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            return text
        return value if isinstance(value, str) else text
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError) as e:
        raise ValueError from e
    if not _compatible(default, value):
        raise ValueError
    return value


def parse_overrides(items: Sequence[str], paths: Sequence[Path]) -> dict[Path, dict[str, Any]]:
    """``-p NAME=VALUE`` items as the parameters each notebook of ``paths`` gets.

    A value is converted to the type of the notebook's default (``HIDDEN=512`` an integer,
    ``LR_START=3e-3`` a number, ``DATASET=cifar10`` a string, ``FAST=true`` a boolean, a list
    as a Python literal) and applies to every notebook of ``paths`` whose parameters cell
    declares NAME. A malformed item, a NAME no notebook of ``paths`` declares or a VALUE of
    the wrong type is one :class:`BookError` naming the parameter, the notebooks and the
    expected type.
    """
    declared = {p: parameters(parameters_source(read_notebook(p), p.name), p.name) for p in paths}
    chosen = ", ".join(p.stem for p in paths)
    result: dict[Path, dict[str, Any]] = {p: {} for p in paths}
    for item in items:
        name, sep, text = item.partition("=")
        name = name.strip()
        if not sep or not _NAME.match(name):
            raise BookError(
                f"-p {item!r}: write -p NAME=VALUE with an UPPER_CASE parameter name, "
                "e.g. -p HIDDEN=512"
            )
        having = [p for p in paths if name in declared[p]]
        if not having:
            known = sorted({n for d in declared.values() for n in d})
            close = difflib.get_close_matches(name, known, n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise BookError(
                f"-p {item}: no selected notebook ({chosen}) has a parameter {name}{hint} "
                f"(their parameters: {', '.join(known)})"
            )
        for p in having:
            default, comment = declared[p][name]
            try:
                result[p][name] = _convert(text, default)
            except ValueError:
                users = [q.name for q in having if _type_name(declared[q][name][0]) ==
                         _type_name(default)]  # fmt: skip
                raise BookError(
                    f"-p {item}: {name} must be {_type_name(default)} in {', '.join(users)} "
                    f"(default {default!r}: {comment}); got {text!r}"
                ) from None
    return result


# --- executed copies ---------------------------------------------------------------------------

WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"


def static_outputs(nb) -> int:
    """Drop the widget state (``metadata.widgets``: anywidget's plotly FigureWidget carries all
    of plotly.js, ~5 MB per notebook) and the widget views, which cannot render without that
    state, in place; returns the bytes of JSON dropped. The outputs keep their static fallback
    (:mod:`bnnlib.book.viz`: ``text/html`` in a book run, else plotly's mimetype), which
    renders without a kernel and is what the book's HTML shows."""
    import json

    state = nb.metadata.pop("widgets", None)
    dropped = len(json.dumps(state)) if state is not None else 0
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            data = out.get("data", {})
            if WIDGET_VIEW in data:
                dropped += len(json.dumps(data.pop(WIDGET_VIEW)))
    return dropped
