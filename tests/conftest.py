"""Shared fixtures: the data root, and the ``gpu`` marker's automatic skip."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

# On a machine shared by several jobs, OpenMP threads that spin while waiting make
# every torch op many times slower; set before torch is first imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

REPO = Path(__file__).resolve().parents[1]

# A relative $BNN_DATA_DIR (e.g. ../shared/data) means relative to where pytest was started;
# the notebook tests run kernels in book/, so it is made absolute once, at session start.
if os.environ.get("BNN_DATA_DIR"):
    os.environ["BNN_DATA_DIR"] = str(Path(os.environ["BNN_DATA_DIR"]).expanduser().resolve())


@pytest.fixture(scope="session")
def data_root() -> Path:
    """$BNN_DATA_DIR, else <repo>/../shared/data; skips the test when the folder is absent."""
    root = Path(os.environ.get("BNN_DATA_DIR", REPO.parent / "shared" / "data"))
    if not root.is_dir():
        pytest.skip(f"data root {root} not found (set BNN_DATA_DIR)")
    return root


def _gpu_missing() -> str | None:
    if importlib.util.find_spec("pycuda") is None:
        return "PyCUDA is not installed"
    import torch

    return None if torch.cuda.is_available() else "no CUDA GPU"


def pytest_collection_modifyitems(config, items):
    gpu_items = [item for item in items if "gpu" in item.keywords]
    reason = _gpu_missing() if gpu_items else None
    if reason:
        for item in gpu_items:
            item.add_marker(pytest.mark.skip(reason=f"gpu test: {reason}"))
