"""The ``env`` step of ``python -m bnnlib.gpucheck``, in process and without a GPU call:
machine and versions, TF32, PyCUDA and bnnlib imports (in a child process), MNIST."""

from __future__ import annotations

import json
import platform
import shutil
import sys

from bnnlib import settings
from bnnlib.gpucheck.config import sanitizer_path
from bnnlib.gpucheck.runner import quick_run

_PROBE = r"""
import json, sys
out = {}
try:
    import pycuda, pycuda.driver
    out["pycuda"] = {"imports": True, "version": pycuda.VERSION_TEXT, "path": pycuda.__file__}
except Exception as e:
    out["pycuda"] = {"imports": False, "error": f"{type(e).__name__}: {e}"}
try:
    import bnnlib, bnnlib.bench, bnnlib.inference, bnnlib.kernels.cuda as bc
    out["bnnlib"] = {"imports": True, "path": bnnlib.__file__}
    out["bnnlib_cuda_reason"] = bc.reason()
except Exception as e:
    out["bnnlib"] = {"imports": False, "error": f"{type(e).__name__}: {e}"}
print(json.dumps(out))
"""


def _versions() -> dict:
    """Python, platform, torch (with its TF32 settings as found), numpy."""
    import numpy
    import torch

    info: dict = {"python": platform.python_version(), "executable": sys.executable}
    info["platform"] = platform.platform()
    info["torch"] = torch.__version__
    info["torch_cuda"] = torch.version.cuda
    info["numpy"] = numpy.__version__
    info["allow_tf32"] = torch.backends.cuda.matmul.allow_tf32
    info["cudnn_allow_tf32"] = torch.backends.cudnn.allow_tf32
    info["float32_matmul_precision"] = torch.get_float32_matmul_precision()
    return info


def _gpu() -> dict:
    """The GPU as nvidia-smi names it: name, driver, memory, compute capability."""
    q = "--query-gpu=name,driver_version,memory.total,compute_cap"
    rc, text = quick_run(["nvidia-smi", q, "--format=csv,noheader"])
    gpu = {"nvidia_smi": text if rc is not None else None}
    if rc == 0 and text:
        fields = [f.strip() for f in text.splitlines()[0].split(",")]
        gpu.update(dict(zip(("name", "driver", "memory", "compute_cap"), fields, strict=False)))
    else:
        gpu.update(name=None, driver=None, error=text)
    return gpu


def _tools() -> dict:
    """nvcc and compute-sanitizer: where they are, their versions."""
    from bnnlib.kernels.cuda import nvcc_path

    nvcc = nvcc_path()
    version = quick_run([nvcc, "--version"])[1].splitlines()[-1:] if nvcc else None
    san = sanitizer_path()
    rc, text = quick_run([san, "--version"])
    return {
        "nvcc": {"path": nvcc, "version": version},
        "compute_sanitizer": {"path": shutil.which(san), "version": text.splitlines()[-1:]},
    }


def _probe(timeout: float) -> dict:
    """Whether PyCUDA and bnnlib import, checked in a child process (:data:`_PROBE`)."""
    rc, text = quick_run([sys.executable, "-c", _PROBE], timeout=timeout)
    try:
        return json.loads(text.splitlines()[-1])
    except (json.JSONDecodeError, IndexError):
        return {"pycuda": {"imports": False, "error": f"probe failed (rc {rc}): {text[-500:]}"}}


def _mnist(root) -> dict:
    """Whether the MNIST test set is found under ``root`` (no download)."""
    from bnnlib import data

    try:
        test = data.load("mnist", root, "test", download=False)
        return {"found": True, "root": str(root), "test_images": len(test.y)}
    except Exception as e:
        return {"found": False, "root": str(root), "error": f"{type(e).__name__}: {e}"}


def _log_env(info: dict, log) -> None:
    gpu, p = info["gpu"], info["pycuda"]
    log(
        f"GPU {gpu.get('name')} driver {gpu.get('driver')}; torch {info['torch']} (CUDA "
        f"{info['torch_cuda']}), allow_tf32={info['allow_tf32']}; nvcc {info['nvcc']['path']}; "
        f"compute-sanitizer {info['compute_sanitizer']['path']}\n"
        f"PyCUDA: {'imports ' + p.get('version', '') if p.get('imports') else p.get('error')}\n"
        f"bnnlib: {info.get('bnnlib')}; "
        f"bnnlib.kernels.cuda: {info.get('bnnlib_cuda_reason') or 'ok'}\n"
        f"MNIST: {info['mnist']}\n"
    )


def env_step(args, log) -> dict:
    """Machine, versions, TF32, PyCUDA and bnnlib import checks, MNIST (no GPU call)."""
    info = _versions()
    info["gpu"] = _gpu()
    info.update(_tools())
    info.update(_probe(args.timeouts.get("env", 30)))
    info["mnist"] = _mnist(args.data_root or settings.data_dir())
    rc, text = quick_run(["git", "rev-parse", "HEAD"])
    info["git_commit"] = text if rc == 0 else None
    _log_env(info, log)
    return info
