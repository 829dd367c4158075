"""``python -m bnnlib.bench``: the run-time measurements of the paper's Section 4, on this machine.

A benchmark, not a test: every figure is the median of repeated runs after warm-up (GPU work
synchronized before the clock is read, :mod:`bnnlib.timing`), and every ratio compares two
things measured in the same run. It prints a table and writes JSON (``--out``, default
``results/bench_<device>.json``) with the machine (CPU model, GPU and driver), library
versions, the date and the command line.

Sections:

* ``gemm_cpu`` -- :func:`bnnlib.kernels.xnor_gemm` vs ``torch.matmul`` in float32 for the same
  M = N = K, as multiply-accumulates per second (:func:`bnnlib.bench_kernels.bench_cpu_gemm`).
* ``mnist_mlp_cpu`` -- the MNIST MLP on the 10,000 test images: the float32 model vs the
  packed net of :mod:`bnnlib.inference` (XNOR-popcount hidden layers), predictions compared
  with the float simulation (must be identical) and with the float32 model, and the weight
  bytes. Without ``--model-path`` the MLP is randomly initialised and its batch-norm running
  statistics are set by one pass over training images in train mode (cumulative average):
  its predictions are meaningless as digits but exercise every threshold.
* ``train_step_cpu`` -- one training step (forward, square hinge, backward, Adam + clipping)
  of the BNN MLP over that of its float twin, batch 100, steps of the two alternated so that
  other load on a shared machine hits both alike; the ratio is the median of the ratios of
  adjacent (BNN, float) steps (the ratio of the two medians is reported too).
* ``gpu`` -- with a CUDA GPU and PyCUDA: :func:`bnnlib.bench_kernels.bench_gpu_gemm` (8192)
  and the MLP through the baseline kernel, cuBLAS and the XNOR kernel; skipped with a note
  otherwise.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from . import cuda as bcuda
from . import data
from .bench_kernels import bench_cpu_gemm, bench_gpu_gemm
from .machine import atomic_write, cpu_flags, cpu_model
from .timing import timeit

__all__ = ["timeit", "machine_info", "bench_mnist_mlp", "bench_train_step", "main"]


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


def _loadavg() -> list[float] | None:
    """1, 5, 15-minute load averages: other work on a shared machine skews timings."""
    with contextlib.suppress(OSError, AttributeError):
        return [round(x, 2) for x in os.getloadavg()]
    return None


def machine_info(argv: list[str] | None = None) -> dict:
    """Where and how the figures were measured."""
    import numba
    import numpy

    gpu = _gpu_info()
    return {
        "device": "cuda" if gpu else "cpu",
        "cpu": cpu_model(),
        "cpu_flags": cpu_flags(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpu": gpu,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numba": numba.__version__,
        "numpy": numpy.__version__,
        "platform": platform.platform(),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "env": {k: os.environ.get(k) for k in _ENV},
        "load_average_start": _loadavg(),
        "command": shlex.join([sys.executable, "-m", "bnnlib.bench", *(argv or [])]),
    }


# --------------------------------------------------------------------------- data and model


def _mnist(root: str | None, n_test: int | None, n_calib: int):
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
    from .models import mnist_mlp

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


# --------------------------------------------------------------------------- sections


def bench_mnist_mlp(
    hidden: int = 4096,
    data_root: str | None = None,
    model_path: str | None = None,
    batchnorm: str = "standard",
    n_test: int | None = None,
    n_calib: int = 5000,
    repeats: int = 3,
    batch_size: int = 1000,
    log: Callable[[str], None] = print,
) -> dict:
    """Packed CPU inference vs the float32 model on MNIST test images (see module docstring)."""
    from . import inference
    from .models import mnist_mlp

    xt, yt, xcal, data_note = _mnist(data_root, n_test, n_calib)
    if model_path:
        net, model_note = _load_mlp(model_path, batchnorm)
    else:
        torch.manual_seed(0)
        net = calibrate_batchnorm(mnist_mlp(hidden=hidden, batchnorm=batchnorm), xcal)
        model_note = (
            f"randomly initialised mnist_mlp(hidden={hidden}); BN running statistics from one "
            f"train-mode pass over {len(xcal)} training images (untrained: accuracy is chance)"
        )
    log(f"  model: {model_note}\n  data: {data_note}")
    with tempfile.TemporaryDirectory() as tmp:
        path = inference.export(net, Path(tmp) / "mlp.bnn")
        file_bytes = path.stat().st_size
        packed = inference.load(path)
    xs = data.scale(xt)

    @torch.no_grad()
    def float_forward():
        return torch.cat([net(xs[i : i + batch_size]) for i in range(0, len(xs), batch_size)])

    out: dict = {"model": model_note, "data": data_note, "n_images": len(xt)}
    out["hidden"] = packed.header["layers"][0]["out_features"]
    log("  timing float32 model ...")
    t_float = timeit(float_forward, repeats)
    log("  timing packed (first layer: real) ...")
    t_packed = timeit(lambda: packed.predict(xt, batch_size=batch_size), repeats)
    log("  timing packed (first layer: bit planes) ...")
    t_planes = timeit(
        lambda: packed.predict(xt, first_layer="bitplanes", batch_size=batch_size), repeats
    )
    pred_packed = packed.predict(xt, batch_size=batch_size)
    pred_planes = packed.predict(xt, first_layer="bitplanes", batch_size=batch_size)
    pred_float = float_forward().argmax(1)
    log("  float simulation (reference) ...")
    pred_sim = inference.simulate(net, xt, batch_size=batch_size)
    fbytes = inference.float32_nbytes(net)
    out.update(
        batch_size=batch_size,
        float32_s=t_float["median_s"],
        packed_s=t_packed["median_s"],
        packed_bitplanes_s=t_planes["median_s"],
        speedup_packed_over_float32=t_float["median_s"] / t_packed["median_s"],
        speedup_bitplanes_over_float32=t_float["median_s"] / t_planes["median_s"],
        times=dict(
            float32=t_float["times_s"],
            packed=t_packed["times_s"],
            packed_bitplanes=t_planes["times_s"],
        ),  # fmt: skip
        identical_packed_vs_simulation=int((pred_packed == pred_sim).sum()),
        identical_bitplanes_vs_real=int((pred_planes == pred_packed).sum()),
        identical_packed_vs_float32_model=int((pred_packed == pred_float).sum()),
        all_identical_to_simulation=bool(
            torch.equal(pred_packed, pred_sim) and torch.equal(pred_planes, pred_sim)
        ),
        weights_float32_bytes=fbytes,
        weights_packed_bytes=packed.nbytes,
        weights_ratio=fbytes / packed.nbytes,
        packed_file_bytes=file_bytes,
        repeats=repeats,
    )
    if yt is not None:
        out["error_packed"] = float((pred_packed != yt).float().mean())
        out["error_float32_model"] = float((pred_float != yt).float().mean())
    return out


def bench_train_step(
    hidden: int, batch: int = 100, repeats: int = 20, warmup: int = 3, x=None, y=None
) -> dict:
    """Median training-step time of the BNN MLP and of its float twin, steps alternated."""
    from .losses import pm1_targets, square_hinge
    from .models import mnist_mlp
    from .optim import Adam

    torch.manual_seed(0)
    if x is None:
        x = torch.rand(batch, 1, 28, 28) * 2 - 1
        y = torch.randint(0, 10, (batch,))
    x, t = x[:batch], pm1_targets(y[:batch], 10)
    nets = {"bnn": mnist_mlp(hidden=hidden), "float": mnist_mlp(hidden=hidden, binary=False)}
    opts = {k: Adam(n, lr=1e-3) for k, n in nets.items()}
    for n in nets.values():
        n.train()

    def step(k):
        loss = square_hinge(nets[k](x), t)
        opts[k].zero_grad(set_to_none=True)
        loss.backward()
        opts[k].step()

    for _ in range(warmup):
        for k in nets:
            step(k)
    times: dict[str, list[float]] = {k: [] for k in nets}
    for r in range(repeats):
        order = ("bnn", "float") if r % 2 == 0 else ("float", "bnn")
        for k in order:
            times[k].append(timeit(lambda k=k: step(k), 1, warmup=0)["median_s"])
    med = {k: statistics.median(v) for k, v in times.items()}
    # Each BNN step has a float step next to it in time: the median of these paired ratios is
    # robust to load that changes during the run (the ratio of medians is not).
    paired = [b / f for b, f in zip(times["bnn"], times["float"], strict=True)]
    return {
        "hidden": hidden,
        "batch": batch,
        "repeats": repeats,
        "warmup": warmup,
        "bnn_step_s": med["bnn"],
        "float_step_s": med["float"],
        "ratio_bnn_over_float": statistics.median(paired),
        "ratio_of_medians": med["bnn"] / med["float"],
        "paired_ratios": paired,
        "times": times,
    }


def _bench_gemm_cpu(sizes: list[int], quick: bool) -> dict:
    reps = 3 if quick else 5
    return {"sizes": sizes, "results": [_plain(bench_cpu_gemm(n, reps)) for n in sizes]}


def _bench_gpu(args, log) -> dict:
    """GPU section: kernels (8192) and the MLP through the baseline, cuBLAS and XNOR."""
    if not torch.cuda.is_available():
        return {"skipped": "no CUDA GPU on this machine"}
    if not bcuda.available():
        return {"skipped": f"bnnlib.cuda not available: {bcuda.reason()}"}
    out: dict = {}
    n = 1024 if args.quick else 8192
    log(f"  GPU gemm {n} ...")
    out["gemm"] = _plain(bench_gpu_gemm(n))
    log("  GPU MNIST MLP ...")
    out["mnist_mlp"] = _gpu_mlp(args)
    return out


def _gpu_mlp(args) -> dict:
    """MLP inference on the GPU: float32 through the baseline kernel, cuBLAS and packed XNOR."""
    from . import inference
    from .models import mnist_mlp

    xt, _, xcal, note = _mnist(args.data_root, args.n_test, args.n_calib)
    if args.model_path:
        net, _ = _load_mlp(args.model_path, args.batchnorm)
    else:
        torch.manual_seed(0)
        net = calibrate_batchnorm(mnist_mlp(hidden=args.hidden), xcal)
    with tempfile.TemporaryDirectory() as tmp:
        packed = inference.load(inference.export(net, Path(tmp) / "mlp.bnn"))
    reps = args.repeats
    res: dict = {"data": note, "n_images": len(xt)}
    netc = net.to("cuda").eval()
    xs = data.scale(xt).to("cuda")

    @torch.no_grad()
    def cublas():
        return netc(xs)

    res["cublas_s"] = timeit(cublas, reps, device="cuda")["median_s"]
    pred_sim = inference.simulate(net.to("cpu"), xt)
    net.to("cuda")
    xg = xt.to("cuda")  # both start from images on the GPU
    for kernel in ("paper", "fast"):
        run = lambda k=kernel: packed.predict(xg, device="cuda", kernel=k)  # noqa: E731
        res[f"xnor_{kernel}_s"] = timeit(run, reps, device="cuda")["median_s"]
        res[f"identical_xnor_{kernel}_vs_simulation"] = int((run().cpu() == pred_sim).sum())
        res[f"speedup_xnor_{kernel}_over_cublas"] = res["cublas_s"] / res[f"xnor_{kernel}_s"]
    baseline = _baseline_forward(netc)
    if baseline is not None:
        res["baseline_s"] = timeit(lambda: baseline(xs), reps, device="cuda")["median_s"]
        for kernel in ("paper", "fast"):
            res[f"speedup_xnor_{kernel}_over_baseline"] = (
                res["baseline_s"] / res[f"xnor_{kernel}_s"]
            )
        pred_base = baseline(xs).argmax(1).cpu()
        res["identical_baseline_vs_simulation"] = int((pred_base == pred_sim).sum())
    net.to("cpu")
    return res


def _baseline_forward(net: nn.Module):
    """The float MLP with every matmul on the paper's baseline kernel, or None if missing."""
    from .binarize import sign

    gemm = getattr(bcuda, "baseline_gemm", None)
    if gemm is None:
        return None
    from .layers import BinaryLinear

    @torch.no_grad()
    def forward(x):
        h = x.flatten(1)
        for m in net:
            if isinstance(m, BinaryLinear):
                h = gemm(h.contiguous(), sign(m.weight).T.contiguous())
            elif isinstance(m, (nn.Flatten, nn.Dropout)):
                continue
            else:
                h = m(h)
        return h

    return forward


def _plain(obj):
    """JSON-able form of a result (dataclass, dict, tensor, number)."""
    import dataclasses

    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return _plain(dataclasses.asdict(obj))
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    return str(obj)


# --------------------------------------------------------------------------- CLI


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bnnlib.bench",
        description="Benchmarks of packed BNN kernels, inference and training (medians of "
        "repeats after warm-up; ratios measured in one run). Writes JSON.",
    )
    p.add_argument("--quick", action="store_true", help="fewer repeats and smaller sizes")
    p.add_argument("--out", help="JSON path (default results/bench_<device>.json)")
    p.add_argument("--sizes", type=int, nargs="+", help="CPU gemm sizes M = N = K")
    p.add_argument("--data-root", help="data folder (default: $BNN_DATA_DIR)")
    p.add_argument("--model-path", help="a trained mnist_mlp state dict (model.pt)")
    p.add_argument("--batchnorm", choices=("standard", "shift"), default="standard")
    p.add_argument("--hidden", type=int, default=4096, help="MLP hidden units (inference)")
    p.add_argument("--n-test", type=int, help="test images (default: all 10,000)")
    p.add_argument("--n-calib", type=int, help="training images for the BN statistics")
    p.add_argument("--repeats", type=int, help="timed repeats of the inference runs")
    p.add_argument(
        "--train-hidden", type=int, nargs="+", help="hidden sizes of the training-step ratio"
    )
    p.add_argument("--train-repeats", type=int, help="timed steps of each model")
    p.add_argument(
        "--skip",
        nargs="+",
        default=[],
        choices=("gemm", "mlp", "train", "gpu"),
        help="sections to leave out",
    )
    return p


def _table(res: dict) -> str:
    lines = ["", "=" * 72, "bnnlib.bench " + res["meta"]["date"], "=" * 72]
    g = res.get("gemm_cpu", {})
    if "results" in g:
        lines.append("CPU GEMM, M = N = K = n, GMAC/s (multiply-accumulates per second):")
        lines.append("      n   float32     xnor   xnor/float32   +packing   exact")
        for r in g["results"]:
            lines.append(
                f"  {r['n']:5d}  {r['float32_macs'] / 1e9:8.1f} {r['xnor_macs'] / 1e9:8.1f}"
                f"   {r['ratio']:12.2f} {r['ratio_with_packing']:10.2f}   {r['exact']}"
            )
    elif g:
        lines.append(f"CPU GEMM: {g.get('skipped')}")
    m = res.get("mnist_mlp_cpu")
    if m:
        lines += [
            f"MNIST MLP (hidden {m['hidden']}), {m['n_images']} images, CPU:",
            f"  float32 model        {m['float32_s']:8.3f} s",
            f"  packed (real 1st)    {m['packed_s']:8.3f} s   "
            f"x{m['speedup_packed_over_float32']:.2f}",
            f"  packed (bit planes)  {m['packed_bitplanes_s']:8.3f} s   "
            f"x{m['speedup_bitplanes_over_float32']:.2f}",
            f"  identical to the float simulation: {m['identical_packed_vs_simulation']}"
            f"/{m['n_images']} (bit planes vs real: {m['identical_bitplanes_vs_real']}); "
            f"to the float32 model: {m['identical_packed_vs_float32_model']}",
            f"  weights: float32 {m['weights_float32_bytes']:,} B, packed "
            f"{m['weights_packed_bytes']:,} B, ratio {m['weights_ratio']:.2f}x",
        ]
        if "error_packed" in m:
            lines.append(
                f"  test error: packed {100 * m['error_packed']:.2f}%, float32 model "
                f"{100 * m['error_float32_model']:.2f}%"
            )
    for t in res.get("train_step_cpu", []):
        lines.append(
            f"Training step, MLP hidden {t['hidden']}, batch {t['batch']}: BNN "
            f"{t['bnn_step_s'] * 1e3:.1f} ms, float twin {t['float_step_s'] * 1e3:.1f} ms, "
            f"ratio {t['ratio_bnn_over_float']:.3f} (median of {t['repeats']} paired ratios; "
            f"ratio of medians {t['ratio_of_medians']:.3f})"
        )
    gpu = res.get("gpu", {})
    if "skipped" in gpu:
        lines.append(f"GPU: skipped ({gpu['skipped']})")
    elif gpu:
        lines.append("GPU: " + json.dumps(gpu)[:600])
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark; returns the results dict (also written as JSON)."""
    from .machine import retain_freed_memory

    args = _parser().parse_args(argv)
    argv = sys.argv[1:] if argv is None else list(argv)
    retain_freed_memory()
    q = args.quick
    args.repeats = args.repeats or (2 if q else 5)
    args.n_calib = args.n_calib or (1000 if q else 5000)
    sizes = args.sizes or ([256, 1024] if q else [256, 1024, 2048, 4096])
    train_hidden = args.train_hidden or [4096, 1024]
    train_repeats = args.train_repeats or (6 if q else 20)

    def log(msg: str) -> None:
        print(msg, flush=True)

    res: dict = {"meta": machine_info(argv)}
    res["settings"] = {
        "quick": q,
        "sizes": sizes,
        "hidden": args.hidden,
        "n_test": args.n_test,
        "n_calib": args.n_calib,
        "repeats": args.repeats,
        "train_hidden": train_hidden,
        "train_repeats": train_repeats,
        "skip": args.skip,
    }
    device = res["meta"]["device"]
    out = Path(args.out or f"results/bench_{device}.json")
    if "gemm" not in args.skip:
        log(f"CPU gemm, sizes {sizes} ...")
        res["gemm_cpu"] = _bench_gemm_cpu(sizes, q)
    if "mlp" not in args.skip:
        log("MNIST MLP inference on the CPU ...")
        res["mnist_mlp_cpu"] = bench_mnist_mlp(
            hidden=args.hidden,
            data_root=args.data_root,
            model_path=args.model_path,
            batchnorm=args.batchnorm,
            n_test=args.n_test,
            n_calib=args.n_calib,
            repeats=args.repeats,
            log=log,
        )
    if "train" not in args.skip:
        res["train_step_cpu"] = []
        for h in train_hidden:
            log(f"training step ratio, hidden {h} ...")
            r = bench_train_step(h, repeats=train_repeats, warmup=2 if q else 3)
            res["train_step_cpu"].append(r)
    if "gpu" not in args.skip:
        log("GPU ...")
        res["gpu"] = _bench_gpu(args, log)
    res["meta"]["load_average_end"] = _loadavg()
    print(_table(res))
    atomic_write(out, json.dumps(_plain(res), indent=1).encode())
    print(f"\nwrote {out}")
    return res


if __name__ == "__main__":
    main()
