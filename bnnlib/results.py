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
:func:`find` globs in it, :func:`load_run` reads a committed run (its best-validation epoch
re-read from its epochs under the book's one tie rule, :attr:`History.best_epoch`: the later
epoch on ties), :func:`runs` all those matching a filter, :func:`load_bench` a benchmark file
(``python -m bnnlib.bench --out results/...``) with its machine.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bnnlib import settings

__all__ = ["ENV_VAR", "results_dir", "find", "CommittedRun", "load_run", "runs", "TORCH7_MNIST_RUN"]
__all__ += ["Bench", "load_bench", "load_benches", "gpu_bench", "machine_line", "hardware_line"]
__all__ += ["readable_command", "display_path"]

ENV_VAR = settings.RESULTS_DIR_VAR
#: The committed Torch7-preset MNIST run (Table 1's Torch7 column).
TORCH7_MNIST_RUN = "torch7_mnist"


def results_dir() -> Path | None:
    """The ``results/`` folder, or None when there is none (e.g. a pip-installed package)."""
    override = settings.results_dir_override()
    if override is not None:
        return override
    here = Path(__file__).resolve().parent.parent / "results"
    for candidate in (here, Path("../results"), Path("results")):
        if candidate.is_dir():
            return candidate
    return None


def display_path(path: str | Path) -> str:
    """``path`` as a page may print it: ``results/<run>/<file>`` inside the results folder, else
    the file's name alone (never a local or temporary folder)."""
    path = Path(path)
    root = results_dir()
    if root is not None:
        try:
            return str(Path("results") / path.resolve().relative_to(root.resolve()))
        except ValueError:
            pass
    return path.name


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
    def best_epoch(self) -> int | None:
        """The best-validation epoch, re-read from the epochs under the one tie rule (the later
        epoch on ties, :attr:`bnnlib.train.History.best_epoch`), whatever the file says."""
        from bnnlib.train.history import History

        return History(epochs=self.epochs).best_epoch

    def _at_best(self, key: str) -> float | None:
        best = self.best_epoch
        return next((r[key] for r in self.epochs if r["epoch"] == best), None)

    @property
    def test_error(self) -> float | None:
        """The test error at the best-validation epoch: the figure the paper reports."""
        return self._at_best("test_error")

    @property
    def best_val_error(self) -> float | None:
        return self._at_best("val_error")

    @property
    def selection_changed(self) -> bool:
        """True when the file's recorded best epoch differs from :attr:`best_epoch` (a run
        recorded under another tie rule)."""
        recorded = self.history.get("best_epoch")
        return recorded is not None and recorded != self.best_epoch

    @property
    def test_errors(self) -> int | None:
        """Test errors at the best epoch, as a count of the test images."""
        n = self.history.get("config", {}).get("n_test")
        return None if n is None or self.test_error is None else round(self.test_error * n)

    @property
    def n_test(self) -> int | None:
        return self.history.get("config", {}).get("n_test")

    @property
    def config(self) -> dict[str, Any]:
        """The run configuration it was trained with (``run_config``; empty if not recorded)."""
        return dict(self.history.get("config", {}).get("run_config") or {})

    @property
    def float_predictions(self) -> list[int] | None:
        """The float model's prediction for every test image at the best epoch, as published
        (run.json's ``packed_check`` or, for a float twin, ``float_check``); None if absent."""
        check = self.run.get("packed_check") or self.run.get("float_check") or {}
        pred = check.get("predictions_float_model")
        if pred is None:
            return None
        return [int(c) for c in pred] if isinstance(pred, str) else [int(v) for v in pred]

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


def runs(**where: Any) -> list[CommittedRun]:
    """Every committed run whose run configuration has ``where``'s values, by folder name
    (e.g. ``runs(preset="torch7", dataset="mnist")`` gives every seed of that cell)."""
    found = []
    for folder in find("*/history.json"):
        run = load_run(folder.parent.name)
        if run is not None and all(run.config.get(k) == v for k, v in where.items()):
            found.append(run)
    return found


def load_run(name: str) -> CommittedRun | None:
    """The committed run ``results/<name>/``; None when it is not there or not complete (a
    committed run has both its history.json and its run.json, which publish writes last)."""
    folder = results_dir()
    if folder is None or not all(
        (folder / name / f).exists() for f in ("history.json", "run.json")
    ):
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


@dataclass
class Bench:
    """A committed benchmark file: its sections (``data``) and where it was measured."""

    path: Path
    data: dict[str, Any]

    @property
    def meta(self) -> dict[str, Any]:
        return dict(self.data.get("meta", {}))

    def section(self, name: str) -> dict[str, Any] | None:
        """A section (``latency_cpu``, ``gemm_cpu``, ``gpu`` ...), None when absent or skipped
        (``{"skipped": "why"}``; a measured section may hold a ``skipped`` dict of the
        products it left out)."""
        value = self.data.get(name)
        if not isinstance(value, dict) or isinstance(value.get("skipped"), str):
            return None
        return value

    def machine(self) -> str:
        return machine_line(self.meta)

    def hardware(self) -> str:
        """The machine alone (no threads, no date), as :func:`bnnlib.hardware.hardware` says it."""
        return hardware_line(self.meta)

    def command(self) -> str:
        """The benchmark's command as a reader types it (:func:`readable_command`)."""
        return readable_command(str(self.meta.get("command", "?")))

    def gpu_name(self) -> str:
        """The GPU a benchmark with a ``gpu`` section ran on."""
        return _gpu_name(self)

    def isa(self) -> str:
        """The vector extension the CPU's popcount kernels used: 'AVX-512 VPOPCNTDQ', 'AVX2'
        or 'no AVX2' (from the recorded CPU flags)."""
        flags = self.meta.get("cpu_flags") or []
        if "avx512_vpopcntdq" in flags:
            return "AVX-512 VPOPCNTDQ"
        return "AVX2" if "avx2" in flags else "no AVX2"


def machine_line(meta: dict[str, Any]) -> str:
    """'AMD EPYC; popcnt avx2; 2 threads; 2026-12-06' from a benchmark's ``meta``."""
    flags = " ".join(meta.get("cpu_flags") or []) or "no popcount flags"
    threads = meta.get("torch_threads")
    parts = [meta.get("cpu") or "unknown CPU", flags]
    if threads:
        parts.append(f"{threads} threads")
    parts.append(str(meta.get("date", "?"))[:10])
    return "; ".join(parts)


def hardware_line(meta: dict[str, Any]) -> str:
    """'CPU: AMD EPYC (2 logical cores; popcnt, avx2)' from a benchmark's ``meta`` (or a
    ``describe_machine()`` dict): the line :func:`bnnlib.hardware.hardware` writes, so the same
    machine reads the same in a run's ``run.json`` and in a benchmark file."""
    flags = ", ".join(meta.get("cpu_flags") or []) or "no popcount flags"
    cores = meta.get("cpu_count")
    inside = f"{cores} logical cores; {flags}" if cores else flags
    cpu = f"CPU: {meta.get('cpu') or 'unknown CPU'} ({inside})"
    gpu = meta.get("gpu")
    name = gpu.get("name") if isinstance(gpu, dict) else gpu
    return f"GPU: {name}; {cpu}" if name else cpu


def readable_command(command: str) -> str:
    """A recorded command without the interpreter's local path: ``/x/.venv/bin/python -m m``
    reads ``python -m m``."""
    return re.sub(r"^\S*python[0-9.]*\s", "python ", command.strip())


def load_bench(name: str) -> Bench | None:
    """The committed benchmark ``results/<name>`` (e.g. ``bench_latency_cpu.json``), None when
    it is not there; a damaged file is a clear error naming it."""
    found = find(name)
    if not found:
        return None
    try:
        data = json.loads(found[0].read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{found[0]}: a committed benchmark is not valid JSON ({e})") from e
    if not isinstance(data, dict):
        raise ValueError(f"{found[0]}: a committed benchmark is a JSON object")
    return Bench(found[0], data)


def load_benches(stem: str) -> list[Bench]:
    """Every committed ``results/<stem>.json`` and ``results/<stem>_*.json`` (the same
    benchmark on other machines, e.g. ``bench_latency_cpu_avx2.json``), that one first, the
    others by name."""
    names = [p.name for p in find(f"{stem}.json") + find(f"{stem}_*.json")]
    return [b for b in (load_bench(n) for n in names) if b is not None]


def gpu_bench() -> Bench | None:
    """The newest committed benchmark with GPU kernel figures (``bench_gpu*.json`` or
    ``bench_cuda*.json`` whose ``gpu`` section holds a measured ``gemm``), None without one."""
    found = None
    for path in find("bench_cuda*.json") + find("bench_gpu*.json"):
        bench = load_bench(path.name)
        gpu = bench.section("gpu") if bench else None
        if gpu is not None and isinstance(gpu.get("gemm"), dict) and "skipped" not in gpu["gemm"]:
            found = bench
    return found


def _gpu_name(bench: Bench) -> str:
    return (bench.meta.get("gpu") or {}).get("name") or bench.data["gpu"]["gemm"].get(
        "gpu", "unknown GPU"
    )
