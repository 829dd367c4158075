"""``python -m bnnlib.bench --latency``: packed inference per image at batch 1, 100 and 10,000.

Embedded users judge a BNN runtime by single-image latency. At batch 1 every packed weight is
read once per image, so the floor is the time to **stream the packed weights once**: measured
in the same run as the fastest of two numpy reductions over every packed weight array (sum,
bitwise or; median of repeats after warm-up), on weights that, like the network's, stay in
the caches between calls.

For the MNIST MLP (784 -> 3 x ``hidden`` -> 10) and each batch size, ms per image of:

* ``packed``: :meth:`PackedNet.predict` as a user calls it (``path="auto"``: the fused path of
  :mod:`bnnlib.inference.fused`, in chunks of ``FUSED_CHUNK`` images);
* ``packed_layers``: the layer-at-a-time path (what every batch size took before the fused
  path existed);
* ``float32``: the float32 network a user would deploy instead (:func:`deployed_float32`: the
  same shape, fixed float32 weights, Hardtanh, eval mode, under ``torch.inference_mode()``,
  torch's threads, input already scaled); every ratio against float32 uses it;
* ``float32_plain_sequential``: a float32 MLP of the same shape written from scratch
  (:func:`plain_mlp`), the cross-check that the baseline is as fast as plain torch;
* at batch 1, ``float32_training_module``: the BNN module itself in eval mode, which
  re-binarizes its weights on every call (what a training script would time; never a
  baseline);
* at batch 1, the fused path with each first layer (``packed_bitplanes``, ``packed_int8``) and
  on the calling thread only (``packed_one_thread``; by default its layers are split between
  threads), the figure to set beside the single-threaded floor.

Batch 1 cycles through different test images (one call, one image, timed alone); larger
batches are timed whole. Ratios (``ratios``) compare figures of this run only. The packed
predictions at batch 1 and 100 are compared with the float simulation on the whole test set.

The CIFAR-10 ConvNet (``conv``) gets the same batch-1 figures: ``packed`` (its fused
convolutions, :mod:`bnnlib.kernels.fused_conv`), ``packed_layers`` and ``float32``, on random
uint8 images (timing does not depend on the pixels), BN statistics from 200 of them.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import numpy as np
import torch

from bnnlib import data
from bnnlib.bench.common import (
    calibrate_batchnorm,
    deployed_float32,
    mlp_model,
    mnist_split,
    plain_mlp,
)
from bnnlib.bench.mlp import export_and_load

__all__ = ["bench_latency", "conv_batch1", "weight_stream_floor"]


def _median_ms(fn: Callable[[int], object], repeats: int, warmup: int) -> float:
    """Median wall time in ms of ``fn(i)`` over ``repeats`` calls, after ``warmup`` calls."""
    for i in range(warmup):
        fn(i)
    times = []
    for i in range(repeats):
        t0 = time.perf_counter()
        fn(i)
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def weight_stream_floor(packed, repeats: int = 2000) -> dict:
    """ms to read every packed weight of ``packed`` once (the batch-1 floor), and the bytes."""
    arrays = [lay.weight.numpy() for lay in packed.layers]
    nbytes = sum(a.nbytes for a in arrays)
    ways = {
        "sum": lambda _i: [np.add.reduce(a, axis=None) for a in arrays],
        "bitwise_or": lambda _i: [np.bitwise_or.reduce(a, axis=None) for a in arrays],
    }
    ms = {k: _median_ms(f, repeats, repeats // 10) for k, f in ways.items()}
    best = min(ms.values())
    return {"ms": best, "bytes": nbytes, "GB_per_s": nbytes / best / 1e6, "by_reduction_ms": ms}


def _mlp_rows(net, packed, xt, batches, repeats) -> dict:
    """ms per image of every path at every batch size (module docstring)."""
    xs = data.scale(xt)
    deployed, plain = deployed_float32(net), plain_mlp(xs[0].numel(), *_shape(net))
    rows = {}
    for b in batches:
        n_batches = len(xt) // b
        reps = repeats * 400 if b == 1 else max(3, repeats * (20 if b <= 100 else 1))

        def per_image(call, b=b, n=n_batches, reps=reps) -> float:
            # call(slice of the batch): batch i of the test images, cycling
            return _median_ms(lambda i: call(slice((i % n) * b, (i % n + 1) * b)), reps,
                              max(1, reps // 10)) / b  # fmt: skip

        with torch.inference_mode():
            row = {"float32": per_image(lambda sl: deployed(xs[sl]))}
            row["float32_plain_sequential"] = per_image(lambda sl: plain(xs[sl]))
        if b == 1:
            with torch.no_grad():  # the BNN module itself: binarizes every weight on each call
                row["float32_training_module"] = per_image(lambda sl: net(xs[sl]))
        row["packed"] = per_image(lambda sl: packed.predict(xt[sl]))
        row["packed_layers"] = per_image(lambda sl: packed.predict(xt[sl], path="layers"))
        if b == 1:
            for mode in ("bitplanes", "int8"):
                row[f"packed_{mode}"] = per_image(
                    lambda sl, m=mode: packed.predict(xt[sl], first_layer=m)
                )
            default, packed.fused.parallel = packed.fused.parallel, False  # one thread
            row["packed_one_thread"] = per_image(lambda sl: packed.predict(xt[sl]))
            packed.fused.parallel = default
        rows[str(b)] = {k: round(v, 5) for k, v in row.items()} | {"repeats": reps}
    return rows


def _shape(net) -> tuple[int, int, int]:
    """(hidden units, hidden layers, classes) of an mnist_mlp."""
    linear = [m for m in net.modules() if hasattr(m, "in_features")]
    return linear[0].out_features, len(linear) - 1, linear[-1].out_features


def _exactness(net, packed, xt) -> dict:
    from bnnlib.inference import simulate

    sim = simulate(net, xt)
    one = torch.cat([packed.predict(xt[i : i + 1]) for i in range(len(xt))])
    hundred = packed.predict(xt, batch_size=100, path="fused")
    return {
        "n_images": len(xt),
        "batch1_identical_to_simulation": int((one == sim).sum()),
        "batch100_identical_to_simulation": int((hundred == sim).sum()),
        "all_identical": bool(torch.equal(one, sim) and torch.equal(hundred, sim)),
    }


def conv_batch1(net, packed, xt: torch.Tensor, repeats: int) -> dict[str, float]:
    """Batch-1 ms of a ConvNet: ``packed`` (:meth:`PackedNet.predict`, its fused path),
    ``packed_layers`` (a layer at a time) and ``float32`` (the deployed float32 network of the
    same shape, :func:`deployed_float32` of ``net``, under ``inference_mode``), each the median
    of ``repeats`` single-image calls after warm-up, cycling through the uint8 images ``xt``."""
    xs, n = data.scale(xt), len(xt)
    deployed = deployed_float32(net)
    with torch.inference_mode():
        f32 = _median_ms(lambda i: deployed(xs[i % n : i % n + 1]), repeats, 2)
    return {
        "float32": f32,
        "packed": _median_ms(lambda i: packed.predict(xt[i % n : i % n + 1]), repeats, 2),
        "packed_layers": _median_ms(
            lambda i: packed.predict(xt[i % n : i % n + 1], path="layers"), repeats, 2
        ),
    }


def _conv_rows(repeats: int, log) -> dict:
    from bnnlib import inference
    from bnnlib.nn.models import cifar10_convnet

    torch.manual_seed(0)
    net = cifar10_convnet()
    x = torch.randint(0, 256, (264, 3, 32, 32), dtype=torch.uint8)
    calibrate_batchnorm(net, x[:200], batch=50)
    packed, _ = export_and_load(net, inference)
    xt = x[200:]
    reps = max(5, repeats * 4)
    log("  CIFAR-10 ConvNet, batch 1 ...")
    row = conv_batch1(net, packed, xt, reps)
    same = torch.equal(packed.predict(xt, batch_size=1), packed.predict(xt, path="layers"))
    return {
        "model": "cifar10_convnet() randomly initialised, BN statistics from 200 random images",
        "packed_weight_bytes": packed.nbytes,
        "batch1_ms": {k: round(v, 4) for k, v in row.items()},
        "speedup_packed_over_float32": row["float32"] / row["packed"],
        "speedup_packed_over_layers": row["packed_layers"] / row["packed"],
        "batch1_identical_to_layers_path_64_images": same,
        "repeats": reps,
    }


def bench_latency(
    hidden: int = 4096,
    data_root: str | None = None,
    model_path: str | None = None,
    batchnorm: str = "standard",
    batches: tuple[int, ...] = (1, 100, 10_000),
    repeats: int = 5,
    conv: bool = True,
    log: Callable[[str], None] = print,
) -> dict:
    """The latency section (module docstring); ``repeats`` scales every repeat count."""
    from bnnlib import inference

    if 1 not in batches or min(batches) < 1:
        raise ValueError(f"batches must be sizes >= 1 and include 1, got {list(batches)}")

    xt, yt, xcal, data_note = mnist_split(data_root, None, 5000)
    net, model_note = mlp_model(hidden, batchnorm, model_path, xcal)
    packed, _ = export_and_load(net, inference)
    log(f"  model: {model_note}\n  data: {data_note}")
    log("  weight-streaming floor ...")
    floor = weight_stream_floor(packed, repeats * 400)
    log(f"  batches {list(batches)} ...")
    rows = _mlp_rows(net, packed, xt, batches, repeats)
    log("  exactness against the float simulation ...")
    exact = _exactness(net, packed, xt)
    b1, big = rows["1"], rows[str(max(batches))]
    out = {
        "model": model_note,
        "data": data_note,
        "threads": {"torch": torch.get_num_threads(), "numba": _numba_threads()},
        "codegen": _codegen(),
        "floor": floor,
        "ms_per_image": rows,
        "ratios": {
            "batch1_packed_over_floor": b1["packed"] / floor["ms"],
            "batch1_float32_over_packed": b1["float32"] / b1["packed"],
            "batch1_float32_over_plain_sequential": b1["float32"] / b1["float32_plain_sequential"],
            "batch1_layers_over_packed": b1["packed_layers"] / b1["packed"],
            "batch1_one_thread_over_floor": b1["packed_one_thread"] / floor["ms"],
            f"batch{max(batches)}_float32_over_packed": big["float32"] / big["packed"],
            f"batch{max(batches)}_layers_over_packed": big["packed_layers"] / big["packed"],
        },
        "exactness": exact,
    }
    if conv:
        out["conv"] = _conv_rows(repeats, log)
    return out


def _numba_threads() -> int:
    import numba

    return numba.get_num_threads()


def _codegen() -> dict:
    """The CPU numba compiles for: this machine's, unless NUMBA_CPU_NAME / NUMBA_CPU_FEATURES
    say otherwise (e.g. ``haswell`` to measure the AVX2 code on an AVX-512 machine)."""
    import llvmlite.binding as ll
    from numba.core import config

    features = (
        config.CPU_FEATURES
        if config.CPU_FEATURES is not None
        else ll.get_host_cpu_features().flatten()
    )
    wanted = ("avx2", "avx512f", "avx512bw", "avx512vpopcntdq")
    name = config.CPU_NAME or ll.get_host_cpu_name()
    return {
        "cpu_name": name,
        "features": [f for f in wanted if f"+{f}" in features.split(",")]
        if features
        else f"those of {name}",
        "from_environment": config.CPU_NAME is not None,
    }
