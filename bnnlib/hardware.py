"""The machine a figure was measured on, and the device to run on.

Every reported number names its hardware: :func:`hardware` gives one line (the CPU model and
cores, or the GPU), :func:`describe_machine` a dict for JSON with the CPU flags that decide the
popcount kernels' speed (AVX2, AVX-512, VPOPCNTDQ), the library versions and the date.
:func:`select_device` picks the torch device a notebook or command runs on.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import os
import platform
from typing import Any

__all__ = [
    "cpu_model",
    "cpu_flags",
    "hardware",
    "describe_machine",
    "select_device",
    "POPCOUNT_FLAGS",
]

#: The CPU flags that matter for XNOR-popcount speed, reported with every figure.
POPCOUNT_FLAGS = ("popcnt", "avx2", "avx512f", "avx512bw", "avx512_vpopcntdq")


def _cpuinfo_field(name: str) -> str | None:
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(name):
                    return line.split(":", 1)[1].strip()
    return None


def cpu_model() -> str:
    """The CPU's model name (Linux ``/proc/cpuinfo``), else what ``platform`` knows."""
    return (
        _cpuinfo_field("model name") or platform.processor() or platform.machine() or "unknown CPU"
    )


def cpu_flags(wanted: tuple[str, ...] = POPCOUNT_FLAGS) -> list[str]:
    """Which of ``wanted`` this CPU reports (empty where ``/proc/cpuinfo`` is missing)."""
    flags = set((_cpuinfo_field("flags") or "").split())
    return [f for f in wanted if f in flags]


def hardware(device: Any = None) -> str:
    """One line naming the hardware: the CPU (cores, flags), or the GPU when ``device`` is CUDA."""
    flags = ", ".join(cpu_flags()) or "no popcount flags"
    cpu = f"CPU: {cpu_model()} ({os.cpu_count()} logical cores; {flags})"
    if device is not None and str(device).startswith("cuda"):
        import torch

        return f"GPU: {torch.cuda.get_device_name(torch.device(device))}; {cpu}"
    return cpu


def describe_machine() -> dict:
    """Where a figure was measured, as plain values for JSON."""
    import torch

    gpu = None
    if torch.cuda.is_available():
        gpu = torch.cuda.get_device_name(0)
    return {
        "cpu": cpu_model(),
        "cpu_flags": cpu_flags(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpu": gpu,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


def select_device(choice: str = "auto"):
    """``torch.device`` to run on: ``"auto"`` takes the GPU when there is one, else the CPU.

    Prints which path runs (and why not the GPU), so an executed notebook says it.
    ``choice="cuda"`` without a GPU is an error naming the fix.
    """
    import torch

    if choice not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device choice {choice!r}: use 'auto', 'cpu' or 'cuda'")
    has_gpu = torch.cuda.is_available()
    if choice == "cuda" and not has_gpu:
        raise RuntimeError("DEVICE = 'cuda' but torch sees no CUDA GPU; set DEVICE = 'auto'")
    device = torch.device("cuda" if choice != "cpu" and has_gpu else "cpu")
    why = "" if device.type == "cuda" or choice == "cpu" else " (no CUDA GPU found)"
    print(f"running on the {device.type.upper()} path{why}: {hardware(device)}")
    return device
