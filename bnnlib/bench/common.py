"""What the benchmarks of :mod:`bnnlib.bench` share: the machine they ran on, the MNIST images
and the MLP they time (trained, or random with calibrated batch norm), JSON-able results."""

from __future__ import annotations

import contextlib
import os
import shlex
import subprocess
import sys
from collections.abc import Callable

import torch
from torch import nn

from bnnlib import data
from bnnlib.hardware import describe_machine

__all__ = [
    "machine_info",
    "git_commit",
    "calibrate_batchnorm",
    "deployed_float32",
    "plain_mlp",
    "with_fused",
]


# --------------------------------------------------------------------------- machine


def _gpu_info() -> dict | None:
    if not torch.cuda.is_available():
        return None
    info = {
        "name": torch.cuda.get_device_name(0),
        "capability": list(torch.cuda.get_device_capability(0)),
        "torch_cuda": torch.version.cuda,
    }
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
        )
        info["driver"] = out.stdout.strip().splitlines()[0] if out.stdout.strip() else None
    return info


_ENV = ("OMP_WAIT_POLICY", "OMP_NUM_THREADS", "NUMBA_NUM_THREADS", "BNN_DATA_DIR")


def loadavg() -> list[float] | None:
    """1, 5, 15-minute load averages: other work on a shared machine skews timings."""
    with contextlib.suppress(OSError, AttributeError):
        return [round(x, 2) for x in os.getloadavg()]
    return None


def git_commit() -> dict:
    """The commit of the code that ran (``git rev-parse HEAD`` in the package's folder) and
    whether tracked files differed from it; None values outside a git checkout."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    out: dict = {"commit": None, "dirty": None}
    with contextlib.suppress(OSError, subprocess.SubprocessError):

        def git(*a: str) -> subprocess.CompletedProcess:
            return subprocess.run(
                ["git", "-C", root, *a], capture_output=True, text=True, timeout=20
            )

        head = git("rev-parse", "HEAD")
        if head.returncode == 0:
            out["commit"] = head.stdout.strip()
            out["dirty"] = bool(git("status", "--porcelain", "--untracked-files=no").stdout.strip())
    return out


def machine_info(argv: list[str] | None = None) -> dict:
    """Where and how the figures were measured, and the commit of the code that measured."""
    import numba
    import numpy

    gpu = _gpu_info()
    return {
        **describe_machine(),
        "device": "cuda" if gpu else "cpu",
        "gpu": gpu,
        "numba": numba.__version__,
        "numpy": numpy.__version__,
        "env": {k: os.environ.get(k) for k in _ENV},
        "load_average_start": loadavg(),
        "code": git_commit(),
        "command": shlex.join([sys.executable, "-m", "bnnlib.bench", *(argv or [])]),
    }


# --------------------------------------------------------------------------- data and model


def mnist_split(root: str | None, n_test: int | None, n_calib: int):
    """(test uint8 images, test labels, calibration uint8 images, a note on the data)."""
    try:
        test = data.load("mnist", root, "test", download=False)
        train = data.load("mnist", root, "train", download=False)
    except (FileNotFoundError, ValueError) as e:
        g = torch.Generator().manual_seed(0)
        n = n_test or 10_000
        x = torch.randint(0, 256, (n + n_calib, 1, 28, 28), generator=g, dtype=torch.uint8)
        note = f"random uint8 images: MNIST not found ({type(e).__name__})"
        return x[:n], None, x[n:], note
    xt, yt = data.to_uint8(test.X), test.y
    if n_test:
        xt, yt = xt[:n_test], yt[:n_test]
    return xt, yt, data.to_uint8(train.X[:n_calib]), f"MNIST test set ({len(xt)} images)"


@torch.no_grad()
def calibrate_batchnorm(net: nn.Module, x_uint8: torch.Tensor, batch: int = 500) -> nn.Module:
    """Running BN statistics from one train-mode pass over ``x_uint8`` (cumulative average)."""
    moms = {}
    for m in net.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            moms[m], m.momentum = m.momentum, None
    net.train()
    for i in range(0, len(x_uint8) - batch + 1, batch):
        net(data.scale(x_uint8[i : i + batch]))
    for m, mom in moms.items():
        m.momentum = mom
    return net.eval()


def _load_mlp(path: str, batchnorm: str) -> tuple[nn.Module, str]:
    """A trained mnist_mlp from a state dict (model.pt / best_model.pt of bnnlib.train)."""
    from bnnlib.nn.models import mnist_mlp

    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]  # a training checkpoint
    weights = [v for k, v in state.items() if k.endswith("weight") and v.dim() == 2]
    if not weights:
        raise ValueError(f"{path}: no linear weights in this state dict")
    hidden, depth = weights[0].shape[0], len(weights) - 1
    net = mnist_mlp(hidden=hidden, depth=depth, batchnorm=batchnorm)
    net.load_state_dict(state)
    return net.eval(), f"trained model {path} (hidden {hidden}, depth {depth})"


def mlp_model(
    hidden: int,
    batchnorm: str,
    model_path: str | None,
    x_calib: torch.Tensor,
    device: str | torch.device = "cpu",
) -> tuple[nn.Module, str]:
    """(the MLP on the CPU, a note on it): trained from ``model_path``, else randomly
    initialised (seed 0) with batch-norm statistics from ``x_calib`` on ``device``."""
    from bnnlib.nn.models import mnist_mlp

    if model_path:
        return _load_mlp(model_path, batchnorm)
    torch.manual_seed(0)
    net = mnist_mlp(hidden=hidden, batchnorm=batchnorm).to(device)
    net = calibrate_batchnorm(net, x_calib.to(device)).cpu()
    note = (
        f"randomly initialised mnist_mlp(hidden={hidden}); BN running statistics from one "
        f"train-mode pass over {len(x_calib)} training images (untrained: accuracy is chance)"
    )
    return net, note


# --------------------------------------------------------------------------- results


def mlp_options(args) -> dict:
    """The MNIST MLP benchmark's keyword arguments from ``python -m bnnlib.bench``'s flags
    (the CPU and the GPU benchmark take the same ones)."""
    keys = ("hidden", "data_root", "model_path", "batchnorm", "n_test", "n_calib", "repeats")
    return {k: getattr(args, k) for k in keys}


def plain(obj):
    """JSON-able form of a result (dataclass, dict, tensor, number)."""
    import dataclasses

    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return plain(dataclasses.asdict(obj))
    if isinstance(obj, dict):
        return {str(k): plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    return str(obj)


# --------------------------------------------------------------------------- float32 baselines


def deployed_float32(net: nn.Module) -> nn.Sequential:
    """The float32 network a user would deploy instead of the BNN ``net``: the same shape with
    plain torch layers and *fixed* float32 weights (the BNN's +/-1 weights, bound once), batch
    norm with the same statistics, Hardtanh for Sign (the float twin's activation), no
    dropout; in eval mode. Time it under ``torch.inference_mode()``: unlike ``net`` itself,
    nothing is binarized on each call, so it is the baseline a speed ratio must use."""
    from bnnlib.nn.layers import BinaryConv2d, BinaryLinear, SignActivation

    out = []
    for m in net.children():
        if isinstance(m, (BinaryLinear, BinaryConv2d)):
            kind = nn.Linear if isinstance(m, BinaryLinear) else nn.Conv2d
            if kind is nn.Linear:
                layer = nn.Linear(m.in_features, m.out_features, bias=m.bias is not None)
            else:
                layer = nn.Conv2d(
                    m.in_channels, m.out_channels, m.kernel_size, m.stride, m.padding,
                    bias=m.bias is not None,
                )  # fmt: skip
            with torch.no_grad():
                layer.weight.copy_(torch.where(m.weight >= 0, 1.0, -1.0))
                if m.bias is not None:
                    layer.bias.copy_(m.bias)
            out.append(layer)
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            two_d = isinstance(m, nn.BatchNorm2d) or type(m).__name__.endswith("2d")
            bn = (nn.BatchNorm2d if two_d else nn.BatchNorm1d)(m.num_features, eps=m.eps)
            bn.load_state_dict(m.state_dict(), strict=False)
            out.append(bn)
        elif isinstance(m, SignActivation):
            out.append(nn.Hardtanh())
        elif isinstance(m, nn.Dropout):
            continue
        else:
            out.append(m)
    return nn.Sequential(*out).eval()


def plain_mlp(n_in: int, hidden: int, depth: int, num_classes: int) -> nn.Sequential:
    """A float32 MLP written from scratch (Linear / BatchNorm1d / Hardtanh), eval mode: the
    cross-check that :func:`deployed_float32` is as fast as any plain torch network."""
    layers: list[nn.Module] = [nn.Flatten()]
    for i in range(depth):
        layers += [nn.Linear(n_in if i == 0 else hidden, hidden, bias=False)]
        layers += [nn.BatchNorm1d(hidden), nn.Hardtanh()]
    layers += [nn.Linear(hidden if depth else n_in, num_classes, bias=False)]
    layers += [nn.BatchNorm1d(num_classes)]
    return nn.Sequential(*layers).eval()


def with_fused(packed, name: str, value, fn: Callable[..., object]) -> Callable[..., object]:
    """``fn`` with the packed net's fused runner's setting ``name`` (``parallel``: the layers
    split between threads; ``native``: the hand-written C kernels) set to ``value`` for each
    call, then restored."""

    def call(*args) -> object:
        default = getattr(packed.fused, name)
        setattr(packed.fused, name, value)
        try:
            return fn(*args)
        finally:
            setattr(packed.fused, name, default)

    return call
