"""GPU section of :mod:`bnnlib.bench`: the gemm of :func:`bnnlib.bench.kernels.bench_gpu_gemm`
and the MNIST MLP on the GPU, every layer on the paper's baseline kernel against the XNOR
path, timed per layer with CUDA events, predictions compared (:func:`bench_gpu_mlp`)."""

from __future__ import annotations

import statistics
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from bnnlib import data
from bnnlib.bench.common import mlp_model, mlp_options, mnist_split, plain
from bnnlib.bench.kernels import add_speedups, bench_gpu_gemm
from bnnlib.bench.timing import timeit
from bnnlib.kernels import cuda as bcuda

__all__ = ["bench_gpu_mlp"]


def bench_gpu(args, log, on_result: Callable[[dict], None] | None = None) -> dict:
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
        out["gemm"] = plain(bench_gpu_gemm(n, on_result=emit("gemm"), log=log))
    except Exception as e:
        out["gemm_error"] = f"{type(e).__name__}: {e}"
        log(f"  GPU gemm FAILED: {out['gemm_error']}")
    log("  GPU MNIST MLP ...")
    try:
        out["mnist_mlp"] = bench_gpu_mlp(**mlp_options(args), on_result=emit("mnist_mlp"), log=log)
    except Exception as e:
        out["mnist_mlp_error"] = f"{type(e).__name__}: {e}"
        log(f"  GPU MNIST MLP FAILED: {out['mnist_mlp_error']}")
    if on_result is not None:
        on_result(out)
    return out


def stages_float(net: nn.Module, gemm) -> list:
    """The float MLP as one stage per binary layer: ``gemm`` for the product, then the
    model's own modules (batch norm, Sign, ...) up to the next binary layer, in float32."""
    from bnnlib.nn.binarize import sign
    from bnnlib.nn.layers import BinaryLinear

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


def stages_xnor(net: nn.Module, kernel: str, first: str) -> list:
    """The same MLP with packed XNOR products from the second layer on.

    The first layer takes the real input through the baseline kernel as in the paper
    (``first="baseline"``) or through our bit planes with the XNOR kernel
    (``first="bitplanes"``, from uint8 images); every later layer packs the Sign output of
    the one before and multiplies it with the packed weights (``kernel``: "paper", the
    32-bit XNOR kernel; "fast", our 64-bit popcount / 1-bit tensor-core kernel). Batch norm
    and Sign are the model's own float32 modules, as in :func:`stages_float`, so the two
    paths differ only in their products and the packing. On the tensor cores the weights'
    row popcounts are computed once here (they are part of the weights), the activations'
    at every call.
    """
    from bnnlib.nn.binarize import sign
    from bnnlib.nn.layers import BinaryLinear

    bits = 32 if kernel == "paper" else 64
    floats = stages_float(net, bcuda.baseline_gemm)
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
    from bnnlib.nn.layers import BinaryLinear

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
    from bnnlib import inference

    res: dict = {"allow_tf32": torch.backends.cuda.matmul.allow_tf32, "repeats": repeats}

    def emit():
        if on_result is not None:
            on_result(plain(res))

    dev = torch.device("cuda")
    xt, yt, xcal, data_note = mnist_split(data_root, n_test, n_calib)
    net, model_note = mlp_model(hidden, batchnorm, model_path, xcal, dev)
    log(f"  model: {model_note}\n  data: {data_note}")
    res.update(model=model_note, data=data_note, n_images=len(xt))
    log("  float simulation (reference, CPU) ...")
    pred_sim = inference.simulate(net, xt)
    with tempfile.TemporaryDirectory() as tmp:
        packed = inference.load(inference.export(net, Path(tmp) / "mlp.bnn"))
    res["hidden"] = packed.layers[0].spec.out_features
    emit()
    preds = _run_gpu_paths(net, packed, xt, repeats, res, emit, log)
    _compare_predictions(res, preds, pred_sim, yt, len(xt))
    emit()
    return plain(res)


def _run_gpu_paths(net, packed, xt, repeats: int, res: dict, emit, log) -> dict:
    """Every path on the GPU with TF32 off (restored afterwards): their predictions."""
    dev = torch.device("cuda")
    netc = net.to(dev).eval()
    xg = xt.to(dev).reshape(len(xt), -1)  # uint8 images on the GPU
    xs = data.scale(xg)  # the paper's inputs 2x/255 - 1, float32
    preds: dict[str, torch.Tensor] = {}
    saved_tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        _time_staged_paths(_gpu_paths(netc, xs, xg, res), repeats, res, preds, emit, log)
        if bcuda.available():
            _time_packed_predict(packed, xg, repeats, res, preds, emit, log)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = saved_tf32
        net.cpu()
    return preds


def _gpu_paths(netc: nn.Module, xs: torch.Tensor, xg: torch.Tensor, res: dict) -> list:
    """(name, make) of each staged path; ``make()`` gives (stages, input)."""
    paths = [("cublas_fp32", lambda: (stages_float(netc, torch.matmul), xs))]
    if bcuda.available():
        paths += [
            ("baseline", lambda: (stages_float(netc, bcuda.baseline_gemm), xs)),
            ("xnor_paper", lambda: (stages_xnor(netc, "paper", "baseline"), xs)),
            ("xnor_fast", lambda: (stages_xnor(netc, "fast", "baseline"), xs)),
            ("xnor_fast_bitplanes", lambda: (stages_xnor(netc, "fast", "bitplanes"), xg)),
        ]
    else:
        res["kernels_unavailable"] = bcuda.reason()
    return paths


def _time_staged_paths(paths: list, repeats: int, res: dict, preds: dict, emit, log) -> None:
    """Each staged path timed per stage; a failing one recorded as ``<path>_error``."""
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


def _time_packed_predict(packed, xg, repeats: int, res: dict, preds: dict, emit, log) -> None:
    """The library's ``PackedNet.predict(device="cuda")`` end to end, for reference."""
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


def _compare_predictions(res: dict, preds: dict, pred_sim, yt, n: int) -> None:
    """Agreement with the simulation and the baseline path, errors, speed-ups, the fastest."""
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
    add_speedups(res, total)
    ours = [k for k in ("xnor_fast", "xnor_fast_bitplanes") if k in total]
    if ours:
        res["fastest_xnor"] = min(ours, key=total.get)
