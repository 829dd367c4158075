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
  counterpart; MKL in torch's CPU wheels, named in ``libraries``);
* ``torch_bfloat16`` and ``torch_int8``: the products a user of a CPU with AVX512_BF16 /
  AVX512_VNNI / AMX would deploy instead (:mod:`bnnlib.bench.lowp`): a bf16 matmul (oneDNN,
  float32 accumulation, bf16 output: sums above 256 in magnitude, 512 for even k, are
  rounded) and ``torch._int_mm`` (int8 x int8 -> int32, exact).

Every product is checked for exact equality with torch's float32 one on the ±1 operands
(integers below 2^24 are exact in float32); the bf16 one reports the fraction of exact
entries. **The paper's 23x counts packing**: its XNOR benchmark packs both operands on every
call (its concatenation kernels), so the like-for-like CPU ratio is ``xnor_with_packing``'s;
the pre-packed ``xnor`` is what a deployed network with packed weights pays.

The MLP (``mlp``): the paper's MNIST MLP (784 -> 3 x 4096 -> 10) on all 10,000 test images at
once, its layers run by one kernel or the other:

* ``baseline``: every layer on the baseline kernel, activations and weights as float32 ±1 (the
  paper's baseline run: its first layer takes the 8-bit pixels);
* ``xnor_first_baseline``: the first layer on the baseline kernel, the hidden ones XNOR (the
  paper's XNOR run: its code keeps the first layer in float);
* ``xnor_bitplanes``: everything in integers, the first layer on the paper's bit planes
  (Section 1.6) by numba's loops, which count every plane word: **the paper's method**,
  whatever the pixels;
* ``xnor_bitplanes_set_bits``: the same bit planes by the hand-written C kernels
  (:mod:`bnnlib.kernels.native`, ``predict``'s default where they are available), which add
  only the weight vectors of the set bits: its time depends on the input (an MNIST digit has
  about 700 set bits of 6,272);
* ``xnor_int8``: the first layer on int8 rows of the nonzero pixels only
  (:meth:`bnnlib.inference.PackedNet.predict`'s fused path): its time depends on the input's
  sparsity (MNIST digits are about 85% black background), not on binarization;
* ``float32_deployed``, ``bfloat16_deployed``, ``int8_dynamic_deployed``: the network a user
  would otherwise deploy (:func:`~bnnlib.bench.common.deployed_float32`, ``inference_mode``)
  in float32, in bf16 and dynamically quantized to int8 (Hardtanh networks: their
  predictions are not the BNN's);
* ``int8_exact``: the BNN on ``torch._int_mm`` (:class:`bnnlib.bench.lowp.ExactMLP`), exact.

Predictions of all paths are compared on every image with the float simulation of the BNN.
Timings: a warm-up call, then ``repeats`` rounds in which every path runs once (interleaved, so
that other load hits them alike); medians. Rates are multiply-accumulates per second.

Where this CPU has no hardware path for bf16 or int8 products (:func:`bnnlib.bench.lowp.
slow_products`: AVX2 without AVX512_BF16 / VNNI / AMX), ``torch_bfloat16``, ``torch_int8``,
``bfloat16_deployed`` and ``int8_exact`` are left out and ``skipped`` says why (an 8192^3
``torch._int_mm`` would take hours there); ``int8_dynamic_deployed`` (fbgemm, AVX2) stays.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch

from bnnlib import data
from bnnlib.bench import lowp
from bnnlib.bench.common import deployed_float32, mlp_model, mnist_split, with_fused
from bnnlib.bench.kernels import random_pm1
from bnnlib.bench.mlp import export_and_load
from bnnlib.hardware import cpu_flags, cpu_model
from bnnlib.kernels import native

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


#: torch's products of the gemm comparison (module docstring).
TORCH_GEMMS = ("torch_float32", "torch_bfloat16", "torch_int8")


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
    slow = lowp.slow_products()
    for why in slow.values():
        log(f"  {why}")
    log(f"  {n}^3: reference and exactness ...")
    ref = torch.matmul(a, b.T)
    exact = {
        "baseline": bool(torch.equal(kernels.baseline_gemm(a, b), ref)),
        "xnor": bool(torch.equal(kernels.xnor_gemm(pa, pb, n), ref.to(torch.int32))),
    }
    fns = {
        "baseline": lambda: kernels.baseline_gemm(a, b),
        "xnor": lambda: kernels.xnor_gemm(pa, pb, n),
        "xnor_with_packing": lambda: kernels.xnor_gemm(kernels.pack(a), kernels.pack(b), n),
        "torch_float32": lambda: torch.matmul(a, b.T),
    }
    bf16_exact_fraction = None
    if "int8" not in slow:
        a8, bt8 = a.to(torch.int8), b.to(torch.int8).T.contiguous()
        exact["torch_int8"] = bool(torch.equal(lowp.gemm_int8(a8, bt8), ref.to(torch.int32)))
        fns["torch_int8"] = lambda: lowp.gemm_int8(a8, bt8)
    if "bfloat16" not in slow:
        a16, bt16 = a.to(torch.bfloat16), b.to(torch.bfloat16).T.contiguous()
        bf16_out = lowp.gemm_bfloat16(a16, bt16)
        exact["torch_bfloat16"] = bool(torch.equal(bf16_out.float(), ref))
        bf16_exact_fraction = float((bf16_out.float() == ref).float().mean())
        fns["torch_bfloat16"] = lambda: lowp.gemm_bfloat16(a16, bt16)
        del bf16_out
    del ref
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
        "torch_bfloat16_exact_fraction": bf16_exact_fraction,
        "ratios": {
            "xnor_over_baseline": med["baseline"] / med["xnor"],
            "xnor_over_torch_float32": med["torch_float32"] / med["xnor"],
            "xnor_with_packing_over_baseline": med["baseline"] / med["xnor_with_packing"],
            "xnor_with_packing_over_torch_float32": med["torch_float32"] / med["xnor_with_packing"],
            "torch_float32_over_baseline": med["baseline"] / med["torch_float32"],
            **{f"xnor_over_{k}": med[k] / med["xnor"] for k in TORCH_GEMMS[1:] if k in med},
            "xnor_over_best_torch": min(med[k] for k in TORCH_GEMMS if k in med) / med["xnor"],
        },
        "skipped": slow,
        "torch_threads": torch.get_num_threads(),
        "numba_threads": numba.get_num_threads(),
        "cpu": {"model": cpu_model(), "flags": cpu_flags() + cpu_flags(lowp.LOWP_FLAGS)},
        "libraries": lowp.blas_info(),
    }
    r = out["ratios"]
    log(
        f"  {n}^3: XNOR {r['xnor_over_baseline']:.1f}x the baseline kernel "
        f"({r['xnor_with_packing_over_baseline']:.1f}x with packing), "
        f"{r['xnor_over_torch_float32']:.2f}x torch float32, "
        f"{r['xnor_over_best_torch']:.2f}x the best of torch's products timed; exact {exact}"
    )
    return out


class BaselineMLP:
    """A packed MLP (:class:`~bnnlib.inference.PackedNet`) run the paper's baseline way.

    Weights and activations are float32 ±1 (unpacked once from the packed net), every product
    is :func:`~bnnlib.kernels.baseline_gemm`; batch norm + Sign is the packed net's own integer
    compare (:class:`~bnnlib.inference.layer.SignOutput`), applied to the exact integer
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


#: The networks a user would deploy instead (module docstring).
DEPLOYED = ("float32_deployed", "bfloat16_deployed", "int8_dynamic_deployed", "int8_exact")


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
    q8 = lowp.deployed_int8_dynamic(deployed)
    slow = lowp.slow_products()
    n = len(xt)

    def run(model, x):
        with torch.inference_mode():
            return model(x).argmax(1)

    def planes():
        return packed.predict(xt, first_layer="bitplanes", batch_size=n)

    paths = {
        "baseline": lambda: base.scores(xt).argmax(1),
        "xnor_first_baseline": lambda: base.scores(xt, hidden="xnor").argmax(1),
        "xnor_bitplanes": with_fused(packed, "native", False, planes),
        "xnor_int8": lambda: packed.predict(xt, first_layer="int8", batch_size=n),
        "float32_deployed": lambda: run(deployed, xs),
        "int8_dynamic_deployed": lambda: run(q8, xs),
    }
    if native.status().available:
        paths["xnor_bitplanes_set_bits"] = planes
    if "int8" not in slow:
        exact8 = lowp.ExactMLP(packed, torch.int8)
        paths["int8_exact"] = lambda: exact8.predict(xt)
    if "bfloat16" not in slow:
        bf16, xb = lowp.deployed_bfloat16(deployed), xs.to(torch.bfloat16)
        paths["bfloat16_deployed"] = lambda: run(bf16, xb)
    log("  warm-up and predictions ...")
    preds = {k: fn() for k, fn in paths.items()}
    sim = inference.simulate(net, xt)
    log(f"  {repeats} interleaved rounds of {', '.join(paths)} ...")
    times = _interleaved(paths, repeats)
    med = {k: statistics.median(v) for k, v in times.items()}
    bnn = [k for k in paths if not k.endswith("_deployed")]
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
    best = min((k for k in DEPLOYED if k in med), key=lambda k: med[k])
    out["best_deployed"] = best
    out["skipped"] = slow
    for k in ("xnor_bitplanes", "xnor_bitplanes_set_bits", "xnor_int8"):
        if k in med:
            out["ratios"][f"{k}_over_best_deployed"] = med[best] / med[k]
    if yt is not None:
        out["test_error"] = {k: float((preds[k] != yt).float().mean()) for k in paths}
    r = out["ratios"]
    log(
        f"  MLP: XNOR (first layer baseline) {r['xnor_first_baseline_over_baseline']:.1f}x, "
        f"bit planes (the paper's method) {r['xnor_bitplanes_over_baseline']:.1f}x, sparse int8 "
        f"first layer (depends on the input's zeros) {r['xnor_int8_over_baseline']:.1f}x the "
        f"baseline kernels; bit planes {r['xnor_bitplanes_over_best_deployed']:.2f}x the best "
        f"deployed ({out['best_deployed']}); identical: "
        f"{out['all_identical']}"
    )
    return out
