"""``python -m bnnlib.bench --section4``: the paper's three Section 4 claims, measured on this CPU.

The paper (Section 4, ``../shared/reference/paper.md``) times three GPU kernels on an 8192^3
product: a *baseline kernel* (the CUDA guide's shared-memory tiled matmul, "quite
unoptimized"), its *XNOR kernel* (the same tiling, XOR + popcount on 32-bit words) and cuBLAS.
It reports the XNOR kernel 23x faster than the baseline and 3.4x faster than cuBLAS, and the
MNIST MLP 7x faster on the XNOR kernel than on the baseline kernel, with no loss of accuracy.

The CPU counterparts, timed here in one run:

* ``baseline``: :func:`bnnlib.kernels.baseline_gemm`, a plain tiled float32 kernel written like
  our XNOR kernel (numba, the same blocking, register tile and threads);
* ``xnor``: :func:`bnnlib.kernels.xnor_gemm` on pre-packed operands, and
  ``xnor_with_packing``: packing both operands included, as the paper's benchmark counts its
  concatenation kernels;
* ``torch_float32``: ``torch.matmul`` in float32, the vendor BLAS a user would call (cuBLAS's
  counterpart).

Every product is checked for exact equality with torch's on the ±1 operands (integers below
2^24 are exact in float32).

The MLP (``mlp``): the paper's MNIST MLP (784 -> 3 x 4096 -> 10) on all 10,000 test images at
once, its layers run by one kernel or the other:

* ``baseline``: every layer on the baseline kernel, activations and weights as float32 ±1 (the
  paper's baseline run: its first layer takes the 8-bit pixels);
* ``xnor_first_baseline``: the first layer on the baseline kernel, the hidden ones XNOR (the
  paper's XNOR run: its code keeps the first layer in float);
* ``xnor_bitplanes`` / ``xnor_int8``: everything in integers, the first layer on the paper's bit
  planes (Section 1.6) or on int8 rows (:meth:`bnnlib.inference.PackedNet.predict`'s fused path);
* ``float32_deployed``: the float32 network a user would otherwise deploy
  (:func:`~bnnlib.bench.common.deployed_float32`, ``inference_mode``), for context.

Predictions of all paths are compared on every image with the float simulation of the BNN.
Timings: a warm-up call, then ``repeats`` rounds in which every path runs once (interleaved, so
that other load hits them alike); medians. Rates are multiply-accumulates per second.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch

from bnnlib import data
from bnnlib.bench.common import deployed_float32, mlp_model, mnist_split
from bnnlib.bench.kernels import random_pm1
from bnnlib.bench.mlp import export_and_load
from bnnlib.hardware import cpu_flags, cpu_model

__all__ = ["BaselineMLP", "bench_section4_gemm", "bench_section4_mlp"]


def _interleaved(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, list[float]]:
    """Seconds of every ``fns`` entry per round, ``repeats`` rounds (one warm-up call each
    first is the caller's job)."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return times


def bench_section4_gemm(n: int = 8192, repeats: int = 3, log=print) -> dict:
    """Baseline, XNOR (pre-packed and with packing), torch float32 at M = N = K = n."""
    import numba

    from bnnlib import kernels

    a, b = random_pm1(n, n, 0), random_pm1(n, n, 1)
    k = min(n, 256)
    small_a, small_b = a[:64, :k].contiguous(), b[:64, :k].contiguous()
    kernels.baseline_gemm(small_a, small_b)  # compile / load numba's cache, untimed
    kernels.xnor_gemm(kernels.pack(small_a), kernels.pack(small_b), k)
    torch.matmul(small_a, small_b.T)
    pa, pb = kernels.pack(a), kernels.pack(b)
    log(f"  {n}^3: reference and exactness ...")
    ref = torch.matmul(a, b.T)
    exact = {
        "baseline": bool(torch.equal(kernels.baseline_gemm(a, b), ref)),
        "xnor": bool(torch.equal(kernels.xnor_gemm(pa, pb, n), ref.to(torch.int32))),
    }
    del ref
    fns = {
        "baseline": lambda: kernels.baseline_gemm(a, b),
        "xnor": lambda: kernels.xnor_gemm(pa, pb, n),
        "xnor_with_packing": lambda: kernels.xnor_gemm(kernels.pack(a), kernels.pack(b), n),
        "torch_float32": lambda: torch.matmul(a, b.T),
    }
    log(f"  {n}^3: {repeats} interleaved rounds of {', '.join(fns)} ...")
    times = _interleaved(fns, repeats)
    med = {k: statistics.median(v) for k, v in times.items()}
    macs = n**3
    out = {
        "n": n,
        "repeats": repeats,
        "seconds": med,
        "times_s": times,
        "macs_per_s": {k: macs / t for k, t in med.items()},
        "exact": exact,
        "ratios": {
            "xnor_over_baseline": med["baseline"] / med["xnor"],
            "xnor_over_torch_float32": med["torch_float32"] / med["xnor"],
            "xnor_with_packing_over_baseline": med["baseline"] / med["xnor_with_packing"],
            "xnor_with_packing_over_torch_float32": med["torch_float32"] / med["xnor_with_packing"],
            "torch_float32_over_baseline": med["baseline"] / med["torch_float32"],
        },
        "torch_threads": torch.get_num_threads(),
        "numba_threads": numba.get_num_threads(),
        "cpu": {"model": cpu_model(), "flags": cpu_flags()},
    }
    r = out["ratios"]
    log(
        f"  {n}^3: XNOR {r['xnor_over_baseline']:.1f}x the baseline kernel, "
        f"{r['xnor_over_torch_float32']:.2f}x torch float32; exact {exact}"
    )
    return out


class BaselineMLP:
    """A packed MLP (:class:`~bnnlib.inference.PackedNet`) run the paper's baseline way.

    Weights and activations are float32 ±1 (unpacked once from the packed net), every product
    is :func:`~bnnlib.kernels.baseline_gemm`; batch norm + Sign is the packed net's own integer
    compare (:class:`~bnnlib.inference.runtime.SignOutput`), applied to the exact integer
    pre-activations, so the network is the same and only the kernel differs.
    ``hidden="xnor"`` runs the hidden layers on XNOR-popcount instead (the paper's XNOR run,
    whose first layer stays on the float kernel).
    """

    def __init__(self, net):
        from bnnlib import kernels
        from bnnlib.inference.spec import LinearSpec

        if not all(isinstance(lay.spec, LinearSpec) for lay in net.layers):
            raise ValueError("BaselineMLP runs MLPs (every layer linear); this net has others")
        self.net = net
        self.weights = [
            lay.input.wb if lay.spec.first else kernels.unpack(lay.weight, lay.spec.layout.k)
            for lay in net.layers
        ]

    def scores(self, x_uint8: torch.Tensor, hidden: str = "baseline") -> torch.Tensor:
        """float64 scores (N, classes) of uint8 images ``x_uint8`` (N, ...)."""
        from bnnlib import kernels

        if hidden not in ("baseline", "xnor"):
            raise ValueError(f"hidden must be 'baseline' or 'xnor', got {hidden!r}")
        x = x_uint8.reshape(len(x_uint8), -1)
        h = None  # float32 ±1 activations (baseline) or packed words (xnor)
        for lay, w in zip(self.net.layers, self.weights, strict=True):
            spec = lay.spec
            if spec.first:
                # 2 W_b . x - 255 sum(W_b): exact integers (|.| < 2^24) in float32
                dot = kernels.baseline_gemm(x.to(torch.float32), w)
                s = (2 * dot - 255 * lay.input.wsum.to(torch.float32)).to(torch.int32)
            elif hidden == "baseline":
                s = kernels.baseline_gemm(h, w).to(torch.int32)
            else:
                s = kernels.xnor_gemm(h, lay.weight, spec.layout.packed_bits)
                s = s - spec.layout.pad_bits
            if spec.output == "scores":
                x64 = s.double() / 255.0 if spec.first else s.double()
                return lay.output(x64)
            thr, d = lay.output.threshold, lay.output.direction
            if hidden == "xnor":
                h = kernels.threshold_pack(s, thr, d)
            else:
                h = torch.where(kernels.fires(s, thr, d), 1.0, -1.0).to(torch.float32)
        raise AssertionError("unreachable: the last layer gives scores")


def bench_section4_mlp(
    hidden: int = 4096,
    data_root: str | None = None,
    model_path: str | None = None,
    batchnorm: str = "standard",
    n_test: int | None = None,
    n_calib: int = 5000,
    repeats: int = 3,
    log: Callable[[str], None] = print,
) -> dict:
    """The MNIST MLP on baseline kernels vs XNOR kernels, all test images at once."""
    from bnnlib import inference

    xt, yt, xcal, data_note = mnist_split(data_root, n_test, n_calib)
    net, model_note = mlp_model(hidden, batchnorm, model_path, xcal)
    log(f"  model: {model_note}\n  data: {data_note}")
    packed, _ = export_and_load(net, inference)
    base = BaselineMLP(packed)
    xs = data.scale(xt)
    deployed = deployed_float32(net)
    n = len(xt)

    def float32():
        with torch.inference_mode():
            return deployed(xs)

    paths = {
        "baseline": lambda: base.scores(xt).argmax(1),
        "xnor_first_baseline": lambda: base.scores(xt, hidden="xnor").argmax(1),
        "xnor_bitplanes": lambda: packed.predict(xt, first_layer="bitplanes", batch_size=n),
        "xnor_int8": lambda: packed.predict(xt, first_layer="int8", batch_size=n),
        "float32_deployed": lambda: float32().argmax(1),
    }
    log("  warm-up and predictions ...")
    preds = {k: fn() for k, fn in paths.items()}
    sim = inference.simulate(net, xt)
    log(f"  {repeats} interleaved rounds of {', '.join(paths)} ...")
    times = _interleaved(paths, repeats)
    med = {k: statistics.median(v) for k, v in times.items()}
    bnn = [k for k in paths if k != "float32_deployed"]
    out: dict = {
        "model": model_note,
        "data": data_note,
        "n_images": n,
        "hidden": hidden,
        "repeats": repeats,
        "seconds": med,
        "times_s": times,
        "ms_per_image": {k: 1e3 * t / n for k, t in med.items()},
        "identical_to_simulation": {k: int((preds[k] == sim).sum()) for k in bnn},
        "all_identical": all(torch.equal(preds[k], sim) for k in bnn),
        "ratios": {
            f"{k}_over_baseline": med["baseline"] / med[k] for k in paths if k != "baseline"
        },
    }
    out["ratios"]["xnor_int8_over_float32_deployed"] = med["float32_deployed"] / med["xnor_int8"]
    if yt is not None:
        out["test_error"] = {k: float((preds[k] != yt).float().mean()) for k in paths}
    r = out["ratios"]
    log(
        f"  MLP: XNOR (first layer baseline) {r['xnor_first_baseline_over_baseline']:.1f}x, "
        f"bit planes {r['xnor_bitplanes_over_baseline']:.1f}x, int8 "
        f"{r['xnor_int8_over_baseline']:.1f}x the baseline kernels; identical: "
        f"{out['all_identical']}"
    )
    return out
