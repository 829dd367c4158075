"""``make book``: run the book's notebooks, collect their results, export them to offline HTML.

::

    python -m bnnlib.book [--profile small|full|tests] [--only 01 [--only 03]] [--out build/book]
                          [--timeout SECONDS] [-p NAME=VALUE ...]

For each ``book/NN_*.ipynb``, in order:

1. parameters: ``small`` keeps the notebook's defaults (about a minute each on a
   CPU), ``full`` injects ``book/params/<notebook>.full.yaml`` (paper scale),
   ``tests`` injects ``book/params/<notebook>.tests.yaml`` when there is one.
   Every injected name must exist in the notebook's cell tagged ``parameters``;
   :func:`parameters` parses that cell (``NAME = literal  # comment`` per line).
   ``-p NAME=VALUE`` (repeatable) then sets NAME in every selected notebook that declares it,
   converted to the type of its default (:func:`~bnnlib.book.notebooks.parse_overrides`);
   a name no selected notebook declares, or a value of the wrong type, stops the book before
   anything runs, naming the parameter, the notebooks and the expected type.
2. execution with papermill in a fresh kernel of this Python (a kernelspec
   ``bnnlib`` is installed into ``sys.prefix`` when missing), the working
   directory being ``book/``, ``BNN_RECORD_FILE`` pointing at
   ``<out>/records/<notebook>.json`` (see :mod:`bnnlib.book.record`) and
   ``BNN_DATA_DIR`` made absolute. The executed copy is ``<out>/<notebook>.ipynb``.
   A failing cell stops the run, naming the notebook and the cell; so does a cell
   running longer than ``--timeout`` seconds (papermill's per-cell
   ``execution_timeout``; default :data:`DEFAULT_TIMEOUT` for the ``small`` and
   ``tests`` profiles, none for ``full``, whose training cells run for hours;
   0 for none), so a hung cell cannot hang the book. The kernel talks to papermill over
   local IPC sockets (POSIX; TCP elsewhere). The executed copy is saved without widget state
   (:func:`~bnnlib.book.notebooks.static_outputs`: anywidget's copy of plotly.js, ~5 MB per
   notebook), keeping each widget's static figure.
3. results: ``<out>/results.md`` and ``<out>/results.json`` open with "the paper vs
   this book" (one row per :data:`bnnlib.paper.CLAIMS`), then every record (value, the
   paper's value, status, data, schedule, hardware, seed) as an appendix. When a notebook
   fails, the results of the notebooks finished before it are still written,
   marked incomplete and naming the failed notebook and those not run (an older
   ``results.md`` never stays in place looking current); the HTML is not exported.
4. HTML: a Jupyter Book of the executed notebooks in ``<out>/html`` (``index.html`` is the
   results page, the summary table first; a sidebar, previous/next links, offline search),
   built without executing anything, sharing one offline ``_static/plotly.min.js`` and loading
   nothing from the network (:func:`bnnlib.book.site.build_site` checks every page).

The pieces: :mod:`bnnlib.book.notebooks` (the notebooks and their parameters),
:mod:`bnnlib.book.results` (step 3), :mod:`bnnlib.book.site` (step 4); this module runs
them (step 2) and re-exports their public names.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bnnlib import settings
from bnnlib.book import claims
from bnnlib.book import record as _record
from bnnlib.book.notebooks import (
    BOOK_DIR,
    PROFILES,
    BookError,
    notebooks,
    parse_overrides,
    profile_parameters,
    read_notebook,
    static_outputs,
    title,
)
from bnnlib.book.results import Run, write_results
from bnnlib.book.site import build_site
from bnnlib.errors import BadInput, describe_os_error
from bnnlib.files import atomic_write

__all__ = ["DEFAULT_TIMEOUT", "kernel_name", "run_notebook", "write_readme_table", "main"]

#: Seconds one cell may run before the book stops it (``--timeout``; 0 for no limit), for the
#: small and tests profiles; the full profile has no default limit (paper-scale training).
DEFAULT_TIMEOUT = 1800
KERNEL = "bnnlib"


# --- execution --------------------------------------------------------------------------------


def kernel_name() -> str:
    """A kernelspec that runs this Python: ``bnnlib`` (installed into sys.prefix if missing)."""
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    def runs_this_python(name: str) -> bool:
        try:
            argv = KernelSpecManager().get_kernel_spec(name).argv
        except NoSuchKernel:
            return False
        exe = argv[0] if argv else ""
        # jupyter_client replaces a bare "python" with sys.executable when it launches.
        if exe in ("python", f"python{sys.version_info[0]}"):
            return True
        return Path(exe).exists() and Path(exe).resolve() == Path(sys.executable).resolve()

    if runs_this_python(KERNEL):
        return KERNEL
    cmd = [sys.executable, "-m", "ipykernel", "install", "--sys-prefix", "--name", KERNEL]
    cmd += ["--display-name", "Python (bnnlib)"]
    subprocess.run(cmd, check=True, capture_output=True)
    if not runs_this_python(KERNEL):
        raise BookError(
            f"a kernelspec named {KERNEL!r} that runs another Python shadows the one in "
            f"{sys.prefix}; remove it (jupyter kernelspec remove {KERNEL}) and re-run"
        )
    return KERNEL


@contextmanager
def _environment(record_file: Path):
    """BNN_RECORD_FILE for this notebook, BNN_DATA_DIR absolute (the kernel runs in book/),
    BNN_BOOK_RUN so figures carry HTML for the exported pages (:mod:`bnnlib.book.viz`)."""
    names = (settings.RECORD_FILE_VAR, settings.DATA_DIR_VAR, settings.BOOK_RUN_VAR)
    saved = {k: os.environ.get(k) for k in names}
    os.environ[settings.RECORD_FILE_VAR] = str(record_file)
    os.environ[settings.BOOK_RUN_VAR] = "1"
    if saved[settings.DATA_DIR_VAR]:
        root = Path(saved[settings.DATA_DIR_VAR]).expanduser().resolve()
        os.environ[settings.DATA_DIR_VAR] = str(root)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _kernel_manager() -> type:
    """jupyter_client's AsyncKernelManager without the SIGINT it sends a kernel before asking
    it to shut down: landing while the kernel handled a message, it printed a stray
    "[IPKernelApp] ERROR | KeyboardInterrupt caught in kernel." in ``make book``'s output. A
    kernel that does not stop when asked is still killed; a cell past ``--timeout`` is still
    interrupted (nbclient calls ``interrupt_kernel``, which is unchanged)."""
    from jupyter_client import AsyncKernelManager

    class QuietShutdownKernelManager(AsyncKernelManager):
        async def _async_interrupt_kernel(self) -> None:
            if self.shutting_down:
                return
            await super()._async_interrupt_kernel()

    return QuietShutdownKernelManager


@contextmanager
def _kernel_config():
    """papermill's kernel config: IPC sockets on POSIX, in a private temporary folder (an
    absolute path: a relative one lands in the notebook's working directory, book/, and two
    kernels there would share socket names); no network port, and no "Kernel is running over
    TCP without encryption" warning from every kernel (ipykernel >= 7). TCP elsewhere, or when
    the temporary folder's path is too long for a Unix socket."""
    from traitlets.config import Config

    if os.name != "posix":
        yield Config()
        return
    with tempfile.TemporaryDirectory(prefix="bnnlib-kernel-") as folder:
        ip = str(Path(folder).resolve() / "kernel")
        if len(ip) > 90:  # sun_path holds 107 bytes; jupyter_client appends -<n>
            yield Config()
        else:
            yield Config({"KernelManager": {"transport": "ipc", "ip": ip}})


def _save_static(executed: Path) -> None:
    """Rewrite the executed copy without widget state (see :func:`static_outputs`)."""
    import nbformat

    if not executed.exists():
        return
    try:
        nb = nbformat.read(executed, as_version=4)
        if static_outputs(nb):
            atomic_write(executed, nbformat.writes(nb).encode("utf-8"))
    except (OSError, BadInput) as e:  # a full disk: keep the copy as papermill wrote it
        print(f"{executed}: not rewritten without widget state ({e})", file=sys.stderr)


def _failure(path: Path, executed: Path, err: Exception) -> BookError:
    source = getattr(err, "source", "") or ""
    index = "?"
    for i, cell in enumerate(read_notebook(path).cells):
        if source and cell.source == source:
            index = str(i)
    count = getattr(err, "exec_count", None)
    excerpt = "\n".join("    " + line for line in source.splitlines()[:8])
    what = f"{getattr(err, 'ename', type(err).__name__)}: {getattr(err, 'evalue', err)}"
    return BookError(
        f"{path.name} failed in cell {index} (execution count {count}):\n{excerpt}\n"
        f"  {what}\n  the executed copy with the traceback: {executed}"
    )


def run_notebook(
    path: Path,
    out_dir: Path,
    profile: str = "small",
    *,
    extra_parameters: dict[str, Any] | None = None,
    kernel: str | None = None,
    log_output: bool = False,
    timeout: int | None = None,
) -> Run:
    """Execute one notebook with papermill into ``out_dir``; returns its :class:`Run`.

    Raises :class:`BookError` naming the notebook and the failing cell.
    """
    import papermill
    from papermill.exceptions import PapermillExecutionError

    # Absolute: the kernel runs in book/, so a relative record path would land elsewhere.
    path, out_dir = Path(path).resolve(), Path(out_dir).resolve()
    params = {**profile_parameters(path, profile), **(extra_parameters or {})}
    executed = out_dir / path.name
    if executed == path:
        raise BookError(_OVER_SOURCES.format(out=out_dir))
    record_file = out_dir / "records" / f"{path.stem}.json"
    record_file.parent.mkdir(parents=True, exist_ok=True)
    record_file.unlink(missing_ok=True)
    start = time.perf_counter()
    with _environment(record_file), _kernel_config() as config:
        try:
            papermill.execute_notebook(
                str(path),
                str(executed),
                parameters=params,
                kernel_name=kernel or kernel_name(),
                language="python",
                cwd=str(path.parent),
                progress_bar=False,
                log_output=log_output,
                execution_timeout=timeout,
                config=config,
                kernel_manager_class=_kernel_manager(),
            )
        except PapermillExecutionError as err:
            raise _failure(path, executed, err) from None
        except Exception as err:  # a dead kernel, a timeout
            raise _failure(path, executed, err) from err
        finally:
            _save_static(executed)
    seconds = time.perf_counter() - start
    records = _record.read(record_file) if record_file.exists() else []
    nb_title = title(read_notebook(path))
    return Run(path.stem, nb_title, executed, seconds, params, records)


_OVER_SOURCES = (
    "--out {out} is the folder of the source notebooks: the executed copies would replace "
    "them; choose another --out (default build/book)"
)


# --- CLI ------------------------------------------------------------------------------------


def _args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bnnlib.book", description="Run the book, collect results, export HTML."
    )
    parser.add_argument("--profile", choices=PROFILES, default="small")
    parser.add_argument("--only", action="append", help="notebook number(s), e.g. 01 or 01,03")
    parser.add_argument(
        "-p",
        "--param",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="set a parameter of every selected notebook that has it, after the profile's "
        "(repeatable), e.g. -p HIDDEN=512 -p NUM_EPOCHS=3; the value must have the type of "
        "the notebook's default (its parameters cell)",
    )
    parser.add_argument("--out", type=Path, default=Path("build/book"))
    parser.add_argument("--book-dir", type=Path, default=BOOK_DIR)
    parser.add_argument("--no-html", action="store_true", help="skip the HTML export")
    parser.add_argument("--log-output", action="store_true", help="echo the notebooks' output")
    parser.add_argument(
        "--readme",
        type=Path,
        metavar="README.md",
        help="only write the committed rows of 'the paper vs this book' into this README "
        "(between its markers) and exit; runs no notebook",
    )
    parser.add_argument(
        "--timeout",
        type=int,
        default=None,
        metavar="SECONDS",
        help=f"stop a cell running longer than this (0: no limit; default {DEFAULT_TIMEOUT}, "
        "none for --profile full)",
    )
    args = parser.parse_args(argv)
    if args.timeout is None:
        args.timeout = 0 if args.profile == "full" else DEFAULT_TIMEOUT
    if args.timeout < 0:
        parser.error(f"--timeout must be >= 0 seconds (0: no limit), got {args.timeout}")
    return args


def _mark_stale(out: Path, profile: str, paths: list[Path]) -> None:
    """Before anything runs: the previous results say they are being replaced (INCOMPLETE
    until this run ends well) and the previous HTML index goes, so a failed or interrupted
    run never leaves an older book looking current."""
    if (out / "results.md").exists() or (out / "results.json").exists():
        write_results(
            [], out, profile, failed="(this run)", error="a book run started and has not finished",
            not_run=[p.stem for p in paths],
        )  # fmt: skip
    (out / "html" / "index.html").unlink(missing_ok=True)


def _run_all(
    paths: list[Path],
    args: argparse.Namespace,
    kernel: str,
    overrides: dict[Path, dict[str, Any]] | None = None,
) -> list[Run]:
    """Run the notebooks in order; a failing or interrupted one writes the results so far,
    marked incomplete, then its :class:`BookError` (or the interrupt) goes on."""
    runs: list[Run] = []
    for i, path in enumerate(paths, start=1):
        print(f"[{i}/{len(paths)}] {path.name} ...", flush=True)
        try:
            run = run_notebook(
                path,
                args.out,
                args.profile,
                extra_parameters=(overrides or {}).get(path) or None,
                kernel=kernel,
                log_output=args.log_output,
                timeout=args.timeout or None,
            )
        except (BookError, KeyboardInterrupt) as err:
            rest = [p.stem for p in paths[i:]]
            why = str(err) if isinstance(err, BookError) else "interrupted (Ctrl-C)"
            try:
                json_path, md_path = write_results(
                    runs, args.out, args.profile, failed=path.stem, error=why, not_run=rest
                )
            except (OSError, BadInput) as e:  # a full disk: say so, and the first failure
                print(f"results NOT written ({e})", file=sys.stderr)
            else:
                print(f"results (INCOMPLETE, without {path.stem}): {md_path} and {json_path}")
            raise
        runs.append(run)
        print(f"    done in {run.seconds:.1f} s, {len(run.records)} results recorded")
    return runs


def _export_all(runs: Sequence[Run], html_dir: Path, profile: str) -> None:
    """The site of every run's executed notebook, the results page first, in ``html_dir``."""
    start = time.perf_counter()
    index = build_site(runs, html_dir, profile)
    print(f"html: {index} ({time.perf_counter() - start:.1f} s)")


def write_readme_table(path: Path) -> int:
    """Replace the block between :data:`claims.README_BEGIN` and :data:`claims.README_END` of
    ``path`` with :func:`claims.readme_table` (atomically); 1 with a message when the markers
    are missing."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        print(f"{path}: cannot read it ({e})", file=sys.stderr)
        return 1
    counts = (text.count(claims.README_BEGIN), text.count(claims.README_END))
    if counts != (1, 1) and min(counts) >= 1:
        print(
            f"{path}: the markers '{claims.README_BEGIN}' / '{claims.README_END}' appear "
            f"{counts[0]} / {counts[1]} times, not once (a block pasted twice?); keep one "
            "block and run again",
            file=sys.stderr,
        )
        return 1
    start, end = text.find(claims.README_BEGIN), text.find(claims.README_END)
    if start < 0 or end < start:
        print(
            f"{path}: no '{claims.README_BEGIN}' ... '{claims.README_END}' block to replace",
            file=sys.stderr,
        )
        return 1
    new = text[:start] + claims.readme_table() + text[end + len(claims.README_END) :]
    try:
        atomic_write(path, new.encode("utf-8"))
    except (OSError, BadInput) as e:
        print(f"{path}: cannot rewrite it ({e})", file=sys.stderr)
        return 1
    print(f"{path}: the paper vs this book, {len(claims.committed_rows())} committed rows")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m bnnlib.book``: run the notebooks, write the results, export the HTML."""
    args = _args(argv)
    if args.readme is not None:
        return write_readme_table(args.readme)
    try:
        paths = notebooks(args.book_dir, args.only)
        if not paths:
            raise BookError(f"no notebooks NN_*.ipynb in {args.book_dir}")
        try:
            overrides = parse_overrides(args.param, paths)
        except BookError as err:
            print(f"python -m bnnlib.book: error: {err}", file=sys.stderr)
            return 2
        if args.out.resolve() == Path(args.book_dir).resolve():
            print(f"python -m bnnlib.book: error: {_OVER_SOURCES.format(out=args.out)} "
                  "(source notebooks untouched)", file=sys.stderr)  # fmt: skip
            return 2
        _mark_stale(args.out, args.profile, paths)
        kernel = kernel_name()
        total = time.perf_counter()
        print(f"book: {len(paths)} notebooks, profile {args.profile}, into {args.out}", flush=True)
        for path, values in overrides.items():
            if values:
                shown = ", ".join(f"{k}={v!r}" for k, v in values.items())
                print(f"    {path.stem}: {shown}")
        runs = _run_all(paths, args, kernel, overrides)
        json_path, md_path = write_results(runs, args.out, args.profile)
        print(f"results: {md_path} and {json_path}")
        if not args.no_html:
            _export_all(runs, args.out / "html", args.profile)
        print(f"book done in {time.perf_counter() - total:.1f} s")
        for run in runs:
            print(f"  {run.notebook:40s} {run.seconds:7.1f} s")
    except BookError as err:
        print(f"book FAILED: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("book INTERRUPTED: the results written so far are marked incomplete", file=sys.stderr)
        return 130
    except (OSError, BadInput) as err:  # a full disk, an unwritable --out: one line
        what = describe_os_error(err) if isinstance(err, OSError) else str(err)
        print(f"book FAILED: {what}", file=sys.stderr)
        return 1
    return 0
