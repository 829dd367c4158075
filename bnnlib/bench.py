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
* ``gpu`` -- run first, with a CUDA GPU: :func:`bnnlib.bench_kernels.bench_gpu_gemm` (8192^3,
  the XNOR kernels with and without the packing of both operands) and :func:`bench_gpu_mlp`
  (the MLP with every layer on the baseline kernel against the XNOR path, per-layer times,
  predictions compared); the cuBLAS figures alone without PyCUDA, skipped with a note
  without a GPU. ``allow_tf32`` records torch's TF32 setting.

The JSON is rewritten after every section (and every GPU figure), so a crash loses only
the figure in progress. ``python -m bnnlib.gpucheck`` runs the GPU section together with the
GPU tests and compute-sanitizer on a GPU machine.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
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
from .machine import atomic_write, describe_machine
from .timing import timeit

__all__ = [
    "timeit",
    "machine_info",
    "bench_mnist_mlp",
    "bench_gpu_mlp",
    "bench_train_step",
    "gpu_table",
    "main",
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
        **describe_machine(),
        "device": "cuda" if gpu else "cpu",
        "gpu": gpu,
        "numba": numba.__version__,
        "numpy": numpy.__version__,
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


def _bench_gpu(args, log, on_result: Callable[[dict], None] | None = None) -> dict:
    """GPU section: kernels (8192) and the MLP through the baseline kernel, cuBLAS and XNOR.

    Each part runs inside its own error handling (a failure is recorded as ``error`` and the
    next part still runs) and ``on_result(out)`` is called after every figure, so that the
    caller can write what exists before a later crash."""
    if not torch.cuda.is_available():
        return {"skipped": "no CUDA GPU on this machine"}
    out: dict = {"allow_tf32": torch.backends.cuda.matmul.allow_tf32}
    if not bcuda.available():
        out["kernels_unavailable"] = bcuda.reason()  # cuBLAS figures are still measured

    def emit(part: str):
        def put(res: dict) -> None:
            out[part] = res
            if on_result is not None:
                on_result(out)

        return put

    n = 1024 if args.quick else 8192
    log(f"  GPU gemm {n} ...")
    try:
        out["gemm"] = _plain(bench_gpu_gemm(n, on_result=emit("gemm"), log=log))
    except Exception as e:
        out["gemm_error"] = f"{type(e).__name__}: {e}"
        log(f"  GPU gemm FAILED: {out['gemm_error']}")
    log("  GPU MNIST MLP ...")
    try:
        out["mnist_mlp"] = bench_gpu_mlp(
            hidden=args.hidden,
            data_root=args.data_root,
            model_path=args.model_path,
            batchnorm=args.batchnorm,
            n_test=args.n_test,
            n_calib=args.n_calib,
            repeats=args.repeats,
            on_result=emit("mnist_mlp"),
            log=log,
        )
    except Exception as e:
        out["mnist_mlp_error"] = f"{type(e).__name__}: {e}"
        log(f"  GPU MNIST MLP FAILED: {out['mnist_mlp_error']}")
    if on_result is not None:
        on_result(out)
    return out


def _stages_float(net: nn.Module, gemm) -> list:
    """The float MLP as one stage per binary layer: ``gemm`` for the product, then the
    model's own modules (batch norm, Sign, ...) up to the next binary layer, in float32."""
    from .binarize import sign
    from .layers import BinaryLinear

    stages, cur = [], None
    for m in net:
        if isinstance(m, BinaryLinear):
            wt = sign(m.weight.detach()).T.contiguous()
            cur = {"layer": m, "wt": wt, "post": []}
            stages.append(cur)
        elif isinstance(m, nn.Flatten) or cur is None:
            continue
        else:
            cur["post"].append(m)

    def run(st, h):
        L = st["layer"]
        h = gemm(L.binary_input(h.flatten(1)).contiguous(), st["wt"])
        if L.bias is not None:
            h = h + L.bias
        for m in st["post"]:
            h = m(h)
        return h

    return [(f"layer{i + 1}", lambda h, st=st: run(st, h)) for i, st in enumerate(stages)]


def _stages_xnor(net: nn.Module, kernel: str, first: str) -> list:
    """The same MLP with packed XNOR products from the second layer on.

    The first layer takes the real input through the baseline kernel as in the paper
    (``first="baseline"``) or through our bit planes with the XNOR kernel
    (``first="bitplanes"``, from uint8 images); every later layer packs the Sign output of
    the one before and multiplies it with the packed weights (``kernel``: "paper", the
    32-bit XNOR kernel; "fast", our 64-bit popcount / 1-bit tensor-core kernel). Batch norm
    and Sign are the model's own float32 modules, as in :func:`_stages_float`, so the two
    paths differ only in their products and the packing. On the tensor cores the weights'
    row popcounts are computed once here (they are part of the weights), the activations'
    at every call.
    """
    from .binarize import sign
    from .layers import BinaryLinear

    bits = 32 if kernel == "paper" else 64
    floats = _stages_float(net, bcuda.baseline_gemm)
    layers = [m for m in net if isinstance(m, BinaryLinear)]
    wpacked = [bcuda.pack(sign(L.weight.detach()), word_bits=bits, check=False) for L in layers]
    dev = wpacked[0].device
    tensor_cores = (
        kernel == "fast" and dev.type == "cuda" and torch.cuda.get_device_capability(dev) >= (8, 0)
    )
    if kernel == "paper":
        gemm = bcuda.xnor_gemm
    elif tensor_cores:  # the weights' row popcounts once, not at every call
        wcounts = {id(w): bcuda.popcount_rows(w) for w in wpacked}

        def gemm(a, w, k):
            counts = (bcuda.popcount_rows(a), wcounts[id(w)])
            return bcuda.xnor_gemm_fast(a, w, k, method="tensor_core", popcounts=counts)

    else:
        gemm = bcuda.xnor_gemm_fast
    k = [L.in_features for L in layers]
    posts = [_post_modules(net, L) for L in layers]
    n_layers = len(layers)

    def post(i, h):
        if layers[i].bias is not None:
            h = h + layers[i].bias
        for m in posts[i]:
            h = m(h)
        return h if i == n_layers - 1 else bcuda.pack(h, word_bits=bits, check=False)

    def hidden(i, hp):
        return post(i, gemm(hp, wpacked[i], k[i]).float())

    stages = []
    if first == "baseline":
        first_float = floats[0][1]
        stages.append(("layer1", lambda x: bcuda.pack(first_float(x), word_bits=bits, check=False)))
    else:
        w64 = bcuda.pack(sign(layers[0].weight.detach()), check=False)
        wsum = sign(layers[0].weight.detach()).sum(1).round().long()

        def planes(x):  # x: uint8 (N, in_features); W_b . x on the 8 bit planes
            acc = torch.zeros(x.shape[0], w64.shape[0], dtype=torch.int64, device=x.device)
            for b in range(8):
                plane = ((x >> b) & 1).float() * 2 - 1
                words = bcuda.pack(plane, check=False)
                acc += bcuda.xnor_gemm_fast(words, w64, k[0]).long() << b
            dot = (acc + 255 * wsum) // 2  # x^b . w = (p_b . w + sum w) / 2
            return post(0, ((2 * dot - 255 * wsum).double() / 255.0).float())

        stages.append(("layer1_bitplanes", planes))
    stages += [(f"layer{i + 1}", lambda h, i=i: hidden(i, h)) for i in range(1, n_layers)]
    return stages


def _post_modules(net: nn.Module, layer: nn.Module) -> list:
    """The modules after ``layer`` up to the next binary layer (batch norm, Sign, ...)."""
    from .layers import BinaryLinear

    mods, found = [], False
    for m in net:
        if m is layer:
            found = True
        elif isinstance(m, BinaryLinear):
            if found:
                break
        elif found and not isinstance(m, nn.Flatten):
            mods.append(m)
    return mods


@torch.no_grad()
def _time_stages(stages: list, x: torch.Tensor, repeats: int) -> tuple[dict, torch.Tensor]:
    """GPU time of a staged forward pass, per stage and in all (CUDA events, medians)."""
    h = x
    for _, fn in stages:  # warm-up (and compilation)
        h = fn(h)
    torch.cuda.synchronize()
    per = {name: [] for name, _ in stages}
    totals = []
    for _ in range(repeats):
        ev = [torch.cuda.Event(enable_timing=True) for _ in range(len(stages) + 1)]
        h = x
        ev[0].record()
        for i, (_, fn) in enumerate(stages):
            h = fn(h)
            ev[i + 1].record()
        ev[-1].synchronize()
        for i, (name, _) in enumerate(stages):
            per[name].append(ev[i].elapsed_time(ev[i + 1]) / 1e3)
        totals.append(ev[0].elapsed_time(ev[-1]) / 1e3)
    timing = {
        "total_s": statistics.median(totals),
        "times_s": totals,
        "stages_s": {name: statistics.median(v) for name, v in per.items()},
    }
    return timing, h


def bench_gpu_mlp(
    hidden: int = 4096,
    data_root: str | None = None,
    model_path: str | None = None,
    batchnorm: str = "standard",
    n_test: int | None = None,
    n_calib: int = 5000,
    repeats: int = 5,
    on_result: Callable[[dict], None] | None = None,
    log: Callable[[str], None] = print,
) -> dict:
    """The MNIST MLP on the GPU, the paper's comparison (Section 4), on the test images.

    Paths, all on the GPU from the images already there to the predicted classes there, batch
    norm and Sign by the model's own float32 modules, timed per layer with CUDA events:

    * ``baseline``: every layer, the first included, on the paper's baseline kernel;
    * ``cublas_fp32``: the same with cuBLAS float32, TF32 off (context);
    * ``xnor_paper`` / ``xnor_fast``: the first layer on the baseline kernel as in the paper,
      the others packed, on the paper's XNOR kernel / ours (packing included);
    * ``xnor_fast_bitplanes``: our bit-plane first layer (XNOR kernel on the 8 bit planes of
      the uint8 images) then as ``xnor_fast``.

    Predictions of each are compared with the baseline path and with the float simulation
    (:func:`bnnlib.inference.simulate`). ``packed_predict_*`` times the library's
    ``PackedNet.predict(device="cuda")`` end to end for reference: it also copies the scores
    to the host, runs the last layer's affine map on the CPU in float64 and the "real" first
    layer as a float64 matmul, so it is not the like-for-like figure. A failing path is
    recorded as ``<path>_error`` and the others still run; ``on_result(res)`` after each.
    """
    from . import inference
    from .models import mnist_mlp

    res: dict = {"allow_tf32": torch.backends.cuda.matmul.allow_tf32, "repeats": repeats}

    def emit():
        if on_result is not None:
            on_result(_plain(res))

    dev = torch.device("cuda")
    xt, yt, xcal, data_note = _mnist(data_root, n_test, n_calib)
    if model_path:
        net, model_note = _load_mlp(model_path, batchnorm)
    else:
        torch.manual_seed(0)
        net = mnist_mlp(hidden=hidden, batchnorm=batchnorm).to(dev)
        net = calibrate_batchnorm(net, xcal.to(dev)).cpu()
        model_note = (
            f"randomly initialised mnist_mlp(hidden={hidden}); BN running statistics from one "
            f"train-mode pass over {len(xcal)} training images (untrained: accuracy is chance)"
        )
    log(f"  model: {model_note}\n  data: {data_note}")
    res.update(model=model_note, data=data_note, n_images=len(xt))
    log("  float simulation (reference, CPU) ...")
    pred_sim = inference.simulate(net, xt)
    with tempfile.TemporaryDirectory() as tmp:
        packed = inference.load(inference.export(net, Path(tmp) / "mlp.bnn"))
    res["hidden"] = packed.header["layers"][0]["out_features"]
    emit()

    netc = net.to(dev).eval()
    xg = xt.to(dev).reshape(len(xt), -1)  # uint8 images on the GPU
    xs = data.scale(xg)  # the paper's inputs 2x/255 - 1, float32
    preds: dict[str, torch.Tensor] = {}
    saved_tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        paths = [("cublas_fp32", lambda: (_stages_float(netc, torch.matmul), xs))]
        if bcuda.available():
            paths += [
                ("baseline", lambda: (_stages_float(netc, bcuda.baseline_gemm), xs)),
                ("xnor_paper", lambda: (_stages_xnor(netc, "paper", "baseline"), xs)),
                ("xnor_fast", lambda: (_stages_xnor(netc, "fast", "baseline"), xs)),
                ("xnor_fast_bitplanes", lambda: (_stages_xnor(netc, "fast", "bitplanes"), xg)),
            ]
        else:
            res["kernels_unavailable"] = bcuda.reason()
        for name, make in paths:
            log(f"  {name} ...")
            try:
                stages, x = make()
                timing, scores = _time_stages(stages, x, repeats)
                preds[name] = scores.argmax(1).cpu()
                res[name] = timing
                log(f"  {name}: {timing['total_s'] * 1e3:.2f} ms")
            except Exception as e:
                res[f"{name}_error"] = f"{type(e).__name__}: {e}"
                log(f"  {name}: FAILED {res[f'{name}_error']}")
            emit()
        if bcuda.available():
            for kernel in ("paper", "fast"):
                for first in ("real", "bitplanes"):
                    key = f"packed_predict_{kernel}_{first}"
                    log(f"  {key} ...")
                    try:
                        run = lambda k=kernel, f=first: packed.predict(  # noqa: E731
                            xg, device="cuda", first_layer=f, kernel=k, batch_size=len(xg)
                        )
                        res[f"{key}_s"] = timeit(run, repeats, device="cuda")["median_s"]
                        preds[key] = run().cpu()
                    except Exception as e:
                        res[f"{key}_error"] = f"{type(e).__name__}: {e}"
                        log(f"  {key}: FAILED {res[f'{key}_error']}")
                    emit()
    finally:
        torch.backends.cuda.matmul.allow_tf32 = saved_tf32
        net.cpu()
    n = len(xt)
    base = preds.get("baseline")
    for name, p in preds.items():
        res[f"identical_{name}_vs_simulation"] = int((p == pred_sim).sum())
        if base is not None:
            res[f"identical_{name}_vs_baseline"] = int((p == base).sum())
        if yt is not None:
            res[f"error_{name}"] = float((p != yt).float().mean())
    packed_ok = [k for k in preds if k.startswith("packed_predict")]
    res["packed_predict_identical_to_simulation"] = all(
        res[f"identical_{k}_vs_simulation"] == n for k in packed_ok
    )
    total = {k: res[k]["total_s"] for k in preds if isinstance(res.get(k), dict)}
    for name, t in total.items():
        for against in ("baseline", "cublas_fp32"):
            if against in total and name != against:
                res[f"speedup_{name}_vs_{against}"] = total[against] / t
    ours = [k for k in ("xnor_fast", "xnor_fast_bitplanes") if k in total]
    if ours:
        res["fastest_xnor"] = min(ours, key=total.get)
    emit()
    return _plain(res)


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
        lines += gpu_table(gpu.get("gemm"), gpu.get("mnist_mlp"))
    return "\n".join(lines)


def _x(ratio: float | None, width: int) -> str:
    return " " * width if ratio is None else f"{ratio:{width - 1}.2f}x"


def gpu_table(gemm: dict | None, mlp: dict | None) -> list[str]:
    """Lines summarising the GPU figures: both timing views of the gemm, the MLP paths."""
    lines = []
    if gemm:
        lines.append(
            f"GPU GEMM {gemm.get('n')}^3 on {gemm.get('gpu')} (allow_tf32 as found: "
            f"{gemm.get('allow_tf32')}); ms, TMAC/s, x baseline, x cuBLAS fp32, exact:"
        )
        names = [k[:-2] for k in gemm if k.endswith("_s") and not k.endswith("_times_s")]
        for name in names:
            t = gemm[f"{name}_s"]
            vb = gemm.get(f"speedup_{name}_vs_baseline")
            vc = gemm.get(f"speedup_{name}_vs_cublas_fp32")
            lines.append(
                f"  {name:32s} {t * 1e3:9.3f} {gemm[f'{name}_macs'] / 1e12:8.2f}"
                f" {_x(vb, 9)} {_x(vc, 9)}"
                f"  {gemm.get(f'{name}_exact', '')}"
            )
        lines += [f"  {k}: {v}" for k, v in gemm.items() if k.endswith("_error")]
    if mlp:
        n = mlp.get("n_images")
        lines.append(f"GPU MNIST MLP (hidden {mlp.get('hidden')}), {n} images; ms, x baseline:")
        for name, v in mlp.items():
            if isinstance(v, dict) and "total_s" in v:
                sp = mlp.get(f"speedup_{name}_vs_baseline")
                stages = ", ".join(f"{k} {t * 1e3:.2f}" for k, t in v["stages_s"].items())
                lines.append(
                    f"  {name:22s} {v['total_s'] * 1e3:9.2f} {_x(sp, 8)}"
                    f"  same as baseline {mlp.get(f'identical_{name}_vs_baseline', '-')}/{n},"
                    f" as simulation {mlp.get(f'identical_{name}_vs_simulation', '-')}/{n}"
                    f"  [{stages}]"
                )
            elif name.startswith("packed_predict") and name.endswith("_s"):
                key = name[:-2]
                lines.append(
                    f"  {key:38s} {v * 1e3:9.2f} ms end to end, as simulation "
                    f"{mlp.get(f'identical_{key}_vs_simulation', '-')}/{n}"
                )
        lines += [f"  {k}: {v}" for k, v in mlp.items() if k.endswith("_error")]
    return lines


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

    def save(_partial=None) -> None:  # after every figure: a later crash loses nothing
        atomic_write(out, json.dumps(_plain(res), indent=1).encode())

    res["meta"]["allow_tf32"] = torch.backends.cuda.matmul.allow_tf32
    if "gpu" not in args.skip:  # first: the figures that need the rare machine
        log("GPU ...")

        def gpu_partial(part: dict) -> None:
            res["gpu"] = part
            save()

        res["gpu"] = _bench_gpu(args, log, on_result=gpu_partial)
        save()
    if "gemm" not in args.skip:
        log(f"CPU gemm, sizes {sizes} ...")
        res["gemm_cpu"] = _bench_gemm_cpu(sizes, q)
        save()
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
        save()
    if "train" not in args.skip:
        res["train_step_cpu"] = []
        for h in train_hidden:
            log(f"training step ratio, hidden {h} ...")
            r = bench_train_step(h, repeats=train_repeats, warmup=2 if q else 3)
            res["train_step_cpu"].append(r)
            save()
    res["meta"]["load_average_end"] = _loadavg()
    print(_table(res))
    atomic_write(out, json.dumps(_plain(res), indent=1).encode())
    print(f"\nwrote {out}")
    return res


if __name__ == "__main__":
    main()
