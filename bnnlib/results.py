"""The committed results: training runs, packed models and benchmark files under ``results/``.

Runs that take hours (a paper-schedule training) or need hardware a reader may
not have (a GPU) are committed to the repository's ``results/`` folder, so the
book can show them and anyone can check them. A *committed run* is a folder::

    results/<run>/history.json       per-epoch history (bnnlib.train.History.to_dict)
    results/<run>/run.json           the exact command, machine, date, code version
    results/<run>/model.safetensors  the best-validation model, packed (bnnlib.inference)

:func:`results_dir` finds the folder (``$BNN_RESULTS_DIR``, else the repository
next to this package, else ``../results`` or ``results`` from the working
directory, which covers the book's notebooks run from ``book/``),
:func:`find` globs in it, :func:`load_run` reads a committed run.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["ENV_VAR", "results_dir", "find", "CommittedRun", "load_run", "TORCH7_MNIST_RUN"]

ENV_VAR = "BNN_RESULTS_DIR"
#: The committed Torch7-preset MNIST run (Table 1's Torch7 column).
TORCH7_MNIST_RUN = "torch7_mnist"


def results_dir() -> Path | None:
    """The ``results/`` folder, or None when there is none (e.g. a pip-installed package)."""
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env)
    here = Path(__file__).resolve().parent.parent / "results"
    for candidate in (here, Path("../results"), Path("results")):
        if candidate.is_dir():
            return candidate
    return None


def find(pattern: str) -> list[Path]:
    """The files or folders in ``results/`` matching a glob ``pattern``, sorted (may be empty)."""
    root = results_dir()
    return sorted(root.glob(pattern)) if root is not None else []


@dataclass
class CommittedRun:
    """A training run committed under ``results/<name>/``."""

    name: str
    folder: Path
    history: dict[str, Any]
    run: dict[str, Any]

    @property
    def model_path(self) -> Path | None:
        path = self.folder / "model.safetensors"
        return path if path.exists() else None

    @property
    def test_error(self) -> float | None:
        """The test error at the best-validation epoch: the figure the paper reports."""
        return self.history.get("test_error_at_best")

    @property
    def epochs(self) -> list[dict]:
        return list(self.history.get("epochs", []))

    def describe(self) -> str:
        """Data, schedule and hardware in one line, for a result's label."""
        r = self.run
        return (
            f"{r.get('data', '?')}; {r.get('schedule', '?')}; {r.get('hardware', '?')}; "
            f"seed {r.get('seed', '?')}; {r.get('date', '?')}"
        )


def load_run(name: str) -> CommittedRun | None:
    """The committed run ``results/<name>/`` (None when it is not there)."""
    folder = results_dir()
    if folder is None or not (folder / name / "history.json").exists():
        return None
    folder = folder / name
    try:
        history = json.loads((folder / "history.json").read_text())
        run = (
            json.loads((folder / "run.json").read_text()) if (folder / "run.json").exists() else {}
        )
    except json.JSONDecodeError as e:
        raise ValueError(f"{folder}: a committed result is not valid JSON ({e})") from e
    return CommittedRun(name, folder, history, run)
