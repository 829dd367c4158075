"""``python -m bnnlib.bench --latency``: packed inference per image at batch 1, 100 and 10,000.

Embedded users judge a BNN runtime by single-image latency. At batch 1 every packed weight is
read once per image, so the floor is the time to **stream the packed weights once with the
same threads** (:func:`bnnlib.bench.bounds.stream_floor`: a compiled XOR-reduction over the
words the fused path reads, on all threads and on one; ``floor["ms"]`` is the one with the
threads the packed path uses at batch 1). Large batches are set against the machine's
**compute bound** (:func:`bnnlib.bench.bounds.popcount_bound`: binary MACs per cycle of an
XOR-popcount loop, numba's or a hand-written C one, whichever is faster, the clock measured),
as GMAC/s. At batch 1 the same bound gives a second
floor, the **compute floor**: the hidden and last layers' binary MACs at the bound, on the
batch-1 threads (the first layer counted free). ``batch1_limit`` is the larger of the two
floors: on a CPU without a vector popcount (AVX2) the XOR-popcount work, not the reading of the
weights, is what a batch-1 call cannot go below.

For the MNIST MLP (784 -> 3 x ``hidden`` -> 10) and each batch size, ms per image of:

* ``packed``: :meth:`PackedNet.predict` as a user calls it (``path="auto"``: the fused path of
  :mod:`bnnlib.inference.fused`, in chunks of ``FUSED_CHUNK`` images);
* ``packed_layers``: the layer-at-a-time path (what every batch size took before the fused
  path existed);
* ``float32``: the float32 network a user would deploy instead (:func:`deployed_float32`: the
  same shape, fixed float32 weights, Hardtanh, eval mode, under ``torch.inference_mode()``,
  torch's threads, input already scaled); every ratio against float32 uses it;
* ``bfloat16``, ``int8_dynamic``: the deployed network in bfloat16 and dynamically quantized
  to int8 (:mod:`bnnlib.bench.lowp`: oneDNN / fbgemm, what a torch user of an AVX512_BF16 /
  VNNI / AMX CPU deploys; Hardtanh networks, so not the BNN's predictions);
* ``int8_exact``, ``bfloat16_exact``: the BNN itself on ``torch._int_mm`` (int8 -> int32,
  exact) and on bf16 matmuls (bf16 output: exact while sums stay within 256, or 512 for even
  k), with the packed net's integer compares (:class:`bnnlib.bench.lowp.ExactMLP`); their
  predictions are compared with the float simulation on every image;
* ``float32_plain_sequential``: a float32 MLP of the same shape written from scratch
  (:func:`plain_mlp`), the cross-check that the baseline is as fast as plain torch;
* at batch 1, ``float32_training_module``: the BNN module itself in eval mode, which
  re-binarizes its weights on every call (what a training script would time; never a
  baseline);
* ``packed_int8_gemm``: the fused path with its first layer on ``torch._int_mm`` (oneDNN),
  the library path PackedNet can take for that layer (not its default);
* ``packed_numba``: ``packed`` on numba's loops only, without the hand-written bit-sliced C
  kernels that a lone image takes for every layer, and a batch for its first layer, where
  they are available (:mod:`bnnlib.kernels.native`; ``native`` says whether they were, and
  why not);
* at batch 1, the fused path with each first layer (``packed_bitplanes``, ``packed_int8``),
  and on the calling thread only (``packed_one_thread``; by default its layers are split
  between threads), the figure to set beside the single-threaded floor.

At the largest batch, ``xnor_gemm_same_shape`` sets the packed MLP beside
:func:`bnnlib.kernels.xnor_gemm` on its hidden layers' shape (batch x hidden x hidden, packed
operands, the paper's Section 4 kernel), the two timed in alternation so that a machine whose
speed drifts (a shared VM) shifts both alike: GMAC/s of each and their ratio.

Batch 1 cycles through different test images (one call, one image, timed alone); larger
batches are timed whole. The paths of a batch size are timed in interleaved rounds
(:func:`interleaved_ms`; at batch 1 rounds of :data:`BATCH1_ROUND_CALLS` timed calls, each
path's turn opened by :data:`BATCH1_ROUND_WARMUP` untimed ones), so that a slow spell of a
shared machine falls on all of them while each path is timed with its own data in the caches,
as a user calling it would have. At batch 1 the rounds come in two groups: the packed net's
own paths (``packed`` and its variants but ``packed_layers``) with the weight-streaming floor's
two reads, then the baselines, ``packed_layers`` and ``packed`` once more
(``packed_beside_baselines``, the figure the batch-1 speedups over the baselines divide by):
beside the float networks' megabytes the floor's read came out 24-38% slower, the packed path
8-16% (:func:`_own_path`), which set the packed path too close to its floor.
Ratios (``ratios``) compare figures of this run only; ``gmac_per_s``
gives each path's rate at each batch size. The packed predictions at batch 1 and 100 (and the
``*_exact`` baselines' at the largest batch) are compared with the float simulation on the
whole test set. ``libraries`` names the BLAS and the oneDNN kernels (and ISA) torch used.

The CIFAR-10 ConvNet (``conv``) gets the same batch-1 figures: ``packed`` (its fused
convolutions, :mod:`bnnlib.kernels.fused_conv`), ``packed_layers``, ``float32``, ``bfloat16``
and ``int8_static`` (statically quantized, fbgemm / x86: dynamic quantization leaves
convolutions in float), on random uint8 images (timing does not depend on the pixels), BN
statistics and int8 ranges from 200 of them.

Where this CPU has no hardware path for bf16 or int8 products (:func:`bnnlib.bench.lowp.
slow_products`: AVX2 without AVX512_BF16 / VNNI / AMX), the entries that use them
(``bfloat16``, ``bfloat16_exact``, ``int8_exact``, ``packed_int8_gemm``, the ConvNet's
``bfloat16``) are left out, and ``skipped`` says why; ``int8_dynamic`` (fbgemm, AVX2) stays.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from collections.abc import Callable

import torch

from bnnlib import data
from bnnlib.bench import bounds, lowp
from bnnlib.bench.common import (
    calibrate_batchnorm,
    deployed_float32,
    mlp_model,
    mnist_split,
    plain_mlp,
    with_fused,
)
from bnnlib.bench.mlp import export_and_load
from bnnlib.kernels import native

__all__ = [
    "bench_latency",
    "conv_batch1",
    "weight_stream_floor",
    "batch1_limit",
    "mlp_macs",
    "xnor_gemm_same_shape",
    "interleaved_ms",
    "BASELINES",
    "ROUNDS",
    "BATCH1_ROUND_CALLS",
    "BATCH1_ROUND_WARMUP",
    "BESIDE_BASELINES",
]


#: Rounds of :func:`interleaved_ms`: each path's calls are spread over this many turns.
ROUNDS = 10
#: At batch 1 each path takes this many calls per round (100 rounds of the default 2,000
#: calls): a shared machine's speed drifts within seconds, and at batch 1 two identical paths
#: timed in 10 rounds of 200 calls came out 30% apart (AMD EPYC, Zen 3, 2026-12-07).
BATCH1_ROUND_CALLS = 20
#: ... each turn opened by this many untimed calls: after another path has streamed its own
#: megabytes of weights through the caches, a batch-1 path's first calls are slow (there, the
#: fused MLP took 0.17-0.27 ms per image in turns without an opening and 0.160-0.164 ms with
#: 5 untimed calls, alternating with numba's loops; timed alone it is the latter).
BATCH1_ROUND_WARMUP = 5


def interleaved_ms(
    calls: dict[str, Callable[[int], object]],
    repeats: int,
    warmup: int,
    rounds: int = ROUNDS,
    round_warmup: int = 0,
) -> dict[str, float]:
    """Median wall time in ms of each ``calls[name](i)`` over ``repeats`` calls (i = 0, 1,
    ...), after ``warmup`` calls of each. The calls are made in ``rounds`` rounds (at most
    ``repeats``), each of which runs every path for its share of the calls in turn: on a
    machine whose speed drifts over seconds (a shared VM) a slow spell then falls on every
    path alike, rather than on whichever path it was timing. ``round_warmup`` untimed calls
    open each path's turn in a round: the path before it has filled the caches with its own
    data (megabytes of weights at batch 1), which a user calling one path never sees."""
    for fn in calls.values():
        for i in range(warmup):
            fn(i)
    rounds = max(1, min(rounds, repeats))
    times: dict[str, list[float]] = {k: [] for k in calls}
    for r in range(rounds):
        lo, hi = r * repeats // rounds, (r + 1) * repeats // rounds
        for name, fn in calls.items():
            for i in range(lo, lo + round_warmup):
                fn(i)
            for i in range(lo, hi):
                t0 = time.perf_counter()
                fn(i)
                times[name].append(time.perf_counter() - t0)
    return {k: 1e3 * statistics.median(v) for k, v in times.items()}


def _fused_weights(packed) -> list:
    """The arrays of packed weights the fused MLP reads."""
    f = packed.fused
    return [f.first.weight_t, f.hidden.weights, f.last.weight]


def weight_stream_floor(packed, repeats: int = 2000, ms: dict[str, float] | None = None) -> dict:
    """ms to read the words the fused path reads (all its packed weights) once, on all
    threads and on one (:func:`bnnlib.bench.bounds.stream_floor`; given ``ms``, the two
    figures timed by the caller). ``ms`` is the figure
    for the threads the packed path takes at batch 1 (``threads``: its fused path splits
    each layer between all threads unless ``fused.parallel`` is False, as it is under
    ``OMP_WAIT_POLICY=PASSIVE``)."""
    f = packed.fused
    r = bounds.stream_floor(_fused_weights(packed), repeats, ms)
    parallel = (f.parallel is None or f.parallel) and r["threads"] > 1
    same = "all_threads" if parallel else "one_thread"
    return {
        "ms": r["ms"][same],
        "threads": r["threads"] if parallel else 1,
        "bytes": r["bytes"],
        "GB_per_s": r["GB_per_s"][same],
        "all_threads_ms": r["ms"]["all_threads"],
        "one_thread_ms": r["ms"]["one_thread"],
        "numba_threads": r["threads"],
        "how": r["how"],
    }


def batch1_limit(net, floor: dict, bound: dict) -> dict:
    """What no batch-1 call of ``net`` can beat on this machine: the larger of the
    weight-streaming floor (``floor``, :func:`weight_stream_floor`) and the compute floor, the
    binary MACs of every layer but the first at the XOR-popcount bound (``bound``,
    :func:`bnnlib.bench.bounds.popcount_bound`, per core) on the same threads (the first
    layer, which depends on the pixels, is counted free: a lower bound). Both also on one
    thread (``one_thread_ms``)."""
    linear = [m for m in net.modules() if hasattr(m, "in_features")]
    binary = sum(m.in_features * m.out_features for m in linear[1:])
    per_core = bound["bound_macs_per_s"] / bound["threads"]

    def compute(threads: int) -> float:
        return 1e3 * binary / (per_core * threads)

    ms = {"stream": floor["ms"], "compute": compute(floor["threads"])}
    one = {"stream": floor["one_thread_ms"], "compute": compute(1)}
    return {
        "ms": max(ms.values()),
        "bound_by": max(ms, key=ms.get),
        "stream_ms": ms["stream"],
        "compute_ms": ms["compute"],
        "threads": floor["threads"],
        "one_thread_ms": max(one.values()),
        "one_thread_bound_by": max(one, key=one.get),
        "one_thread_compute_ms": one["compute"],
        "binary_macs": binary,
        "how": "max(weight-streaming floor, binary MACs after the first layer / (XOR-popcount "
        "MACs per second per core x threads)), threads as the packed path at batch 1",
    }


def mlp_macs(net) -> int:
    """Multiply-accumulates per image of an MLP's linear layers."""
    return sum(m.in_features * m.out_features for m in net.modules() if hasattr(m, "in_features"))


def _baselines(net, packed, xs, slow: dict[str, str]) -> dict[str, Callable]:
    """The float32, bf16 and int8 networks of the module docstring, each a function of a
    slice of the scaled images ``xs`` (or, for the exact ones, of the uint8 images); those on
    the ``slow`` products left out."""
    deployed, plain = deployed_float32(net), plain_mlp(xs[0].numel(), *_shape(net))
    q8 = lowp.deployed_int8_dynamic(deployed)
    out = {
        "float32": lambda sl, _xt: deployed(xs[sl]),
        "float32_plain_sequential": lambda sl, _xt: plain(xs[sl]),
        "int8_dynamic": lambda sl, _xt: q8(xs[sl]),
    }
    if "bfloat16" not in slow:
        bf16, xb = lowp.deployed_bfloat16(deployed), xs.to(torch.bfloat16)
        exact16 = lowp.ExactMLP(packed, torch.bfloat16)
        out["bfloat16"] = lambda sl, _xt: bf16(xb[sl])
        out["bfloat16_exact"] = lambda sl, xt: exact16.scores(xt[sl])
    if "int8" not in slow:
        exact8 = lowp.ExactMLP(packed, torch.int8)
        out["int8_exact"] = lambda sl, xt: exact8.scores(xt[sl])
    return out


#: The batch-1 row's entries for the weight-streaming floor's reads while they are timed with
#: the other paths (taken out of the row into ``floor``).
FLOOR_PREFIX = "floor_"


def _mlp_rows(
    net,
    packed,
    xt,
    batches,
    repeats,
    slow: dict[str, str],
    floor_reads: dict[str, Callable[[], object]],
) -> dict:
    """ms per image of every path at every batch size (module docstring), the paths of a batch
    size timed in interleaved rounds (:func:`interleaved_ms`); at batch 1 also the reads of
    the weight-streaming floor (``floor_reads``, entries :data:`FLOOR_PREFIX` + name)."""
    xs = data.scale(xt)
    base = _baselines(net, packed, xs, slow)
    rows = {}
    for b in batches:
        n = len(xt) // b
        reps = repeats * 400 if b == 1 else max(3, repeats * (20 if b <= 100 else 1))

        def batch(i: int, b=b, n=n) -> slice:  # batch i of the test images, cycling
            return slice((i % n) * b, (i % n + 1) * b)

        calls: dict[str, Callable[[int], object]] = {
            name: _under(torch.inference_mode, lambda i, fn=fn: fn(batch(i), xt))
            for name, fn in base.items()
        }
        if b == 1:  # the BNN module itself: binarizes every weight on each call
            calls["float32_training_module"] = _under(torch.no_grad, lambda i: net(xs[batch(i)]))
        calls["packed"] = lambda i: packed.predict(xt[batch(i)])
        calls["packed_numba"] = with_fused(packed, "native", False, calls["packed"])
        calls["packed_layers"] = lambda i: packed.predict(xt[batch(i)], path="layers")
        if "int8" not in slow:
            calls["packed_int8_gemm"] = lambda i: packed.predict(
                xt[batch(i)], first_layer="int8_gemm"
            )
        if b == 1:
            calls.update(_batch1_variants(packed, xt, batch))
            calls.update(
                {FLOOR_PREFIX + k: (lambda i, fn=fn: fn()) for k, fn in floor_reads.items()}
            )
            # two groups of rounds: the packed net's own paths with the floor's reads, then
            # the baselines with the packed path once more (BESIDE_BASELINES)
            own = {k: fn for k, fn in calls.items() if _own_path(k)}
            rest = {k: fn for k, fn in calls.items() if not _own_path(k)}
            rest[BESIDE_BASELINES] = calls["packed"]
            rounds, opening = reps // BATCH1_ROUND_CALLS, BATCH1_ROUND_WARMUP
            ms = {}
            for group in (own, rest):
                ms |= interleaved_ms(group, reps, max(1, reps // 10), max(1, rounds), opening)
        else:
            ms = interleaved_ms(calls, reps, max(1, reps // 10), ROUNDS, 0)
        rows[str(b)] = {k: round(v / b, 5) for k, v in ms.items()} | {"repeats": reps}
    return rows


#: At batch 1, the packed path timed in the baselines' rounds (:func:`_mlp_rows`): the figure
#: the batch-1 speedups over the baselines use.
BESIDE_BASELINES = "packed_beside_baselines"


def _beside_baselines(row: dict) -> float:
    """The packed path's figure in a batch size's row timed in the baselines' rounds:
    :data:`BESIDE_BASELINES` at batch 1, where the rounds come in two groups, else ``packed``."""
    return row.get(BESIDE_BASELINES, row["packed"])


def _own_path(name: str) -> bool:
    """Whether a batch-1 entry reads only the packed net's data (the packed paths but the
    layer-at-a-time one, the floor's reads): these are timed in rounds of their own. Timed in
    the same rounds as the float32 / int8 networks (tens to hundreds of MB through the caches
    each turn), the floor's one-thread read took 24-38% longer than in rounds of its own and
    the packed path 8-16% longer (AMD EPYC Zen 3, scratch, 2026-12-08, four runs, turns opened
    by 5 untimed calls; 16-17% and 0-10% with 40): the ratio to the floor came out too low."""
    return name.startswith(FLOOR_PREFIX) or (name.startswith("packed") and name != "packed_layers")


def _under(context, fn: Callable[[int], object]) -> Callable[[int], object]:
    """``fn`` run under ``context()``: ``torch.inference_mode`` for the float networks, as
    deployed; ``torch.no_grad`` for the training module, as a training script runs it."""

    def call(i: int) -> object:
        with context():
            return fn(i)

    return call


def _batch1_variants(packed, xt, batch) -> dict[str, Callable[[int], object]]:
    """Batch 1: the fused path with each first layer, and on the calling thread only."""
    calls: dict[str, Callable[[int], object]] = {
        f"packed_{mode}": lambda i, m=mode: packed.predict(xt[batch(i)], first_layer=m)
        for mode in ("bitplanes", "int8")
    }
    one = lambda i: packed.predict(xt[batch(i)])  # noqa: E731
    calls["packed_one_thread"] = with_fused(packed, "parallel", False, one)
    return calls


def _shape(net) -> tuple[int, int, int]:
    """(hidden units, hidden layers, classes) of an mnist_mlp."""
    linear = [m for m in net.modules() if hasattr(m, "in_features")]
    return linear[0].out_features, len(linear) - 1, linear[-1].out_features


def _exactness(net, packed, xt, slow: dict[str, str]) -> dict:
    """Predictions compared with the float simulation on every image: the packed path at
    batch 1, 100 and all images at once, each with the C kernels (where available) and on
    numba's loops, the exact int8 / bf16 baselines on all images at once."""
    from bnnlib.inference import simulate

    sim = simulate(net, xt)
    one = torch.cat([packed.predict(xt[i : i + 1]) for i in range(len(xt))])
    numba_one = with_fused(packed, "native", False, lambda i: packed.predict(xt[i : i + 1]))
    one_numba = torch.cat([numba_one(i) for i in range(len(xt))])
    hundred = packed.predict(xt, batch_size=100, path="fused")
    everything = packed.predict(xt, batch_size=len(xt), path="fused")
    every_numba = with_fused(
        packed, "native", False, lambda i: packed.predict(xt, batch_size=len(xt), path="fused")
    )(0)
    lowp_preds = {
        f"{kind}_exact": lowp.ExactMLP(packed, dtype).predict(xt)
        for kind, dtype in (("int8", torch.int8), ("bfloat16", torch.bfloat16))
        if kind not in slow
    }
    return {
        "n_images": len(xt),
        "batch1_identical_to_simulation": int((one == sim).sum()),
        "batch1_numba_identical_to_simulation": int((one_numba == sim).sum()),
        "batch100_identical_to_simulation": int((hundred == sim).sum()),
        "all_at_once_identical_to_simulation": int((everything == sim).sum()),
        "all_at_once_numba_identical_to_simulation": int((every_numba == sim).sum()),
        "all_identical": all(
            torch.equal(p, sim) for p in (one, one_numba, hundred, everything, every_numba)
        ),
        **{f"{k}_identical_to_simulation": int((p == sim).sum()) for k, p in lowp_preds.items()},
    }


def conv_batch1(
    net,
    packed,
    xt: torch.Tensor,
    repeats: int,
    bfloat16: bool = True,
    calibration: torch.Tensor | None = None,
) -> dict[str, float]:
    """Batch-1 ms of a ConvNet: ``packed`` (:meth:`PackedNet.predict`, its fused path),
    ``packed_layers`` (a layer at a time), ``float32`` (the deployed float32 network of the
    same shape, :func:`deployed_float32` of ``net``, under ``inference_mode``), ``bfloat16``
    (that network in bf16, oneDNN; not with ``bfloat16=False``) and, given ``calibration``
    uint8 images, ``int8_static`` (that network statically quantized to int8,
    :func:`bnnlib.bench.lowp.deployed_int8_static`: dynamic quantization leaves convolutions
    in float), each the median of ``repeats`` single-image calls after warm-up, cycling
    through the uint8 images ``xt``, the paths timed in interleaved rounds of
    :data:`CONV_ROUND_CALLS` calls, each path's turn opened by :data:`CONV_ROUND_WARMUP`
    untimed ones (:func:`interleaved_ms`), as a user calling one path has its own weights in
    the caches."""
    xs, n = data.scale(xt), len(xt)
    deployed = deployed_float32(net)
    calls = {"float32": _under(torch.inference_mode, lambda i: deployed(xs[i % n : i % n + 1]))}
    if bfloat16:
        bf16, xb = lowp.deployed_bfloat16(deployed), xs.to(torch.bfloat16)
        calls["bfloat16"] = _under(torch.inference_mode, lambda i: bf16(xb[i % n : i % n + 1]))
    if calibration is not None:
        q8 = lowp.deployed_int8_static(deployed, data.scale(calibration))
        calls["int8_static"] = _under(torch.inference_mode, lambda i: q8(xs[i % n : i % n + 1]))
    calls["packed"] = lambda i: packed.predict(xt[i % n : i % n + 1])
    calls["packed_layers"] = lambda i: packed.predict(xt[i % n : i % n + 1], path="layers")
    rounds = max(1, repeats // CONV_ROUND_CALLS)
    return interleaved_ms(calls, repeats, 2, rounds, CONV_ROUND_WARMUP)


#: The ConvNet at batch 1 (:func:`conv_batch1`): timed calls of each path per round, and the
#: untimed calls that open its turn. Without them, the packed path's two calls a turn came
#: right after the float, bf16 and int8 ConvNets' turns (56 MB of float32 weights, 14 MB of
#: int8) had gone through the caches: 2.61 ms per image in the committed run of 2026-12-07 at
#: 5b282e8, against 1.71 ms in scratch rounds beside the packed path's own variants (AMD EPYC,
#: Zen 4).
CONV_ROUND_CALLS = 4
CONV_ROUND_WARMUP = 2
#: The ConvNet's baselines in bf16 / int8 (:func:`conv_batch1`).
CONV_LOWP = ("bfloat16", "int8_static")


def _conv_rows(repeats: int, log, slow: dict[str, str]) -> dict:
    from bnnlib import inference
    from bnnlib.nn.models import cifar10_convnet

    torch.manual_seed(0)
    net = cifar10_convnet()
    x = torch.randint(0, 256, (264, 3, 32, 32), dtype=torch.uint8)
    calibrate_batchnorm(net, x[:200], batch=50)
    packed, _ = export_and_load(net, inference)
    xt = x[200:]
    reps = max(CONV_ROUND_CALLS, repeats * 8)
    log("  CIFAR-10 ConvNet, batch 1 ...")
    row = conv_batch1(net, packed, xt, reps, bfloat16="bfloat16" not in slow, calibration=x[:200])
    same = torch.equal(packed.predict(xt, batch_size=1), packed.predict(xt, path="layers"))
    lowp_rows = [k for k in CONV_LOWP if k in row]
    return {
        "model": "cifar10_convnet() randomly initialised, BN statistics from 200 random images",
        "packed_weight_bytes": packed.nbytes,
        "batch1_ms": {k: round(v, 4) for k, v in row.items()},
        "speedup_packed_over_float32": row["float32"] / row["packed"],
        **{f"speedup_packed_over_{k}": row[k] / row["packed"] for k in lowp_rows},
        **(
            {"speedup_packed_over_best_lowp": min(row[k] for k in lowp_rows) / row["packed"]}
            if lowp_rows
            else {}
        ),  # fmt: skip
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
    slow = lowp.slow_products()
    for why in slow.values():
        log(f"  {why}")
    log("  compute bound ...")
    bound = bounds.popcount_bound()
    log(f"  batches {list(batches)}, at batch 1 with the weight-streaming floor ...")
    reads = bounds.stream_reads(_fused_weights(packed))
    rows = _mlp_rows(net, packed, xt, batches, repeats, slow, reads)
    floor_ms = {k: rows["1"].pop(f"{FLOOR_PREFIX}{k}") for k in reads}
    floor = weight_stream_floor(packed, ms=floor_ms)
    limit = batch1_limit(net, floor, bound)
    big = max(batches)
    log(f"  packed MLP and xnor_gemm on its hidden layers' shape, batch {big:,}, alternated ...")
    same_shape = xnor_gemm_same_shape(net, packed, xt[:big], hidden, repeats)
    log("  exactness against the float simulation ...")
    exact = _exactness(net, packed, xt, slow)
    macs = mlp_macs(net)
    gmacs = {
        b: {k: macs / v / 1e6 for k, v in r.items() if k != "repeats"} for b, r in rows.items()
    }
    out = {
        "model": model_note,
        "data": data_note,
        "threads": {"torch": torch.get_num_threads(), "numba": _numba_threads()},
        "codegen": _codegen(),
        "native": dataclasses.asdict(native.status()),
        "libraries": lowp.blas_info(),
        "floor": floor,
        "compute_bound": bound,
        "batch1_limit": limit,
        "macs_per_image": macs,
        "ms_per_image": rows,
        "gmac_per_s": gmacs,
        "ratios": _ratios(rows, floor, limit, bound, gmacs, max(batches)),
        "best_baseline_at_largest_batch": _best_baseline(rows[str(max(batches))]),
        "xnor_gemm_same_shape": same_shape,
        "exactness": exact,
        "skipped": slow,
    }
    if conv:
        out["conv"] = _conv_rows(repeats, log, slow)
    return out


def xnor_gemm_same_shape(net, packed, xt: torch.Tensor, hidden: int, repeats: int) -> dict:
    """The packed MLP's ``predict`` on the images ``xt`` and :func:`bnnlib.kernels.xnor_gemm`
    on its hidden layers' shape (len(xt) x hidden x hidden, random packed operands, both
    packed beforehand), timed in alternation (:func:`interleaved_ms`: ``max(3, repeats)``
    rounds of one call each, after one warm-up call each): median GMAC/s of each (the MLP's
    MACs as :func:`mlp_macs` counts them) and the ratio xnor_gemm / packed."""
    from bnnlib import kernels

    m = len(xt)
    gen = torch.Generator().manual_seed(0)
    a = kernels.pack(torch.randint(0, 2, (m, hidden), generator=gen).float() * 2 - 1)
    b = kernels.pack(torch.randint(0, 2, (hidden, hidden), generator=gen).float() * 2 - 1)
    macs = {"packed": mlp_macs(net) * m, "xnor_gemm": m * hidden * hidden}
    calls = {
        "packed": lambda i: packed.predict(xt),
        "xnor_gemm": lambda i: kernels.xnor_gemm(a, b, hidden),
    }
    rounds = max(3, repeats)  # one call of each per round
    ms = interleaved_ms(calls, rounds, warmup=1, rounds=rounds)
    gmacs = {k: macs[k] / v / 1e6 for k, v in ms.items()}
    return {
        "batch": m,
        "shape": [m, hidden, hidden],
        "gmac_per_s": gmacs,
        "xnor_gemm_over_packed": gmacs["xnor_gemm"] / gmacs["packed"],
        "rounds": rounds,
        "how": "alternated rounds, median of each; packed GMAC/s counts the first layer's "
        "inputs x hidden as plain MACs",
    }


#: The baselines a packed figure is compared with at large batches (module docstring), in
#: order, with the names a sentence gives them (the README's rows, :mod:`bnnlib.book.claims`).
BASELINES = {
    "float32": "float32",
    "bfloat16": "bf16",
    "int8_dynamic": "int8 (dynamic)",
    "int8_exact": "int8 (exact BNN)",
    "bfloat16_exact": "bf16 (exact BNN)",
}


def _present(row: dict) -> list[str]:
    """The :data:`BASELINES` timed in ``row`` (not left out as slow on this CPU)."""
    return [k for k in BASELINES if k in row]


def _best_baseline(row: dict) -> str:
    """The fastest of the :data:`BASELINES` timed in ``row``."""
    return min(_present(row), key=lambda k: row[k])


def _ratios(
    rows: dict, floor: dict, limit: dict, bound: dict, gmacs: dict, big: int
) -> dict[str, float]:
    """The ratios of the figures of one run (module docstring)."""
    b1, bb = rows["1"], rows[str(big)]
    # the speedups over the baselines divide by the packed path timed in their rounds
    beside, pb = _beside_baselines(b1), _beside_baselines(bb)
    best = _best_baseline(bb)
    return {
        "batch1_packed_over_floor": b1["packed"] / floor["ms"],
        "batch1_packed_over_floor_all_threads": b1["packed"] / floor["all_threads_ms"],
        "batch1_one_thread_over_floor_one_thread": b1["packed_one_thread"] / floor["one_thread_ms"],
        "batch1_packed_over_compute_floor": b1["packed"] / limit["compute_ms"],
        "batch1_packed_over_limit": b1["packed"] / limit["ms"],
        "batch1_one_thread_over_limit_one_thread": b1["packed_one_thread"]
        / limit["one_thread_ms"],
        "batch1_float32_over_packed": b1["float32"] / beside,
        "batch1_best_baseline_over_packed": b1[_best_baseline(b1)] / beside,
        "batch1_float32_over_plain_sequential": b1["float32"] / b1["float32_plain_sequential"],
        "batch1_layers_over_packed": b1["packed_layers"] / beside,
        "batch1_numba_over_packed": b1["packed_numba"] / b1["packed"],
        **{f"batch{big}_{k}_over_packed": bb[k] / pb for k in _present(bb)},
        f"batch{big}_best_baseline_over_packed": bb[best] / pb,
        f"batch{big}_layers_over_packed": bb["packed_layers"] / pb,
        f"batch{big}_numba_over_packed": bb["packed_numba"] / bb["packed"],
        f"batch{big}_packed_share_of_compute_bound": 1e9 * gmacs[str(big)]["packed"]
        / bound["bound_macs_per_s"],
    }  # fmt: skip


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
