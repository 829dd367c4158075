"""``python -m bnnlib.bench``: the run-time measurements of the paper's Section 4, on this machine.

A benchmark, not a test: every figure is the median of repeated runs after warm-up (GPU work
synchronized before the clock is read, :mod:`bnnlib.bench.timing`), and every ratio compares two
things measured in the same run. It prints a table and writes JSON (``--out``, default
``build/bench/bench_<device>.json``; the committed ``results/`` only when ``--out`` names it)
with the machine (CPU model, GPU and driver), library versions, the date and the command line.

Sections:

* ``gemm_cpu`` -- :func:`bnnlib.kernels.xnor_gemm` vs ``torch.matmul`` in float32 for the same
  M = N = K, as multiply-accumulates per second (:func:`bnnlib.bench.kernels.bench_cpu_gemm`).
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
* ``latency_cpu`` -- only with ``--latency``: ms per image of the packed MLP at batch 1 / 100 /
  10,000 against torch float32, bf16 and int8 (:mod:`bnnlib.bench.lowp`), the time to stream
  the packed weights once on the same threads and the machine's compute bound
  (:mod:`bnnlib.bench.bounds`), and the CIFAR-10 ConvNet at batch 1
  (:mod:`bnnlib.bench.latency`). Written to ``build/bench/bench_latency_<device>.json``
  unless ``--out`` says otherwise.
* ``train_cpu`` -- only with ``--train``: one training step of the Torch7 preset MLP, the
  Theano recipe's MLP and the ConvNet at width 0.5, split into forward / backward / optimizer,
  on the plain and the fast path, against the float32 GEMM floor of the same step timed in the
  same run (:mod:`bnnlib.bench.train`). Written to ``build/bench/bench_train_<device>.json``
  unless ``--out`` says otherwise.
* ``section4_cpu`` -- only with ``--section4``: the CPU counterparts of the paper's three
  Section 4 claims (:mod:`bnnlib.bench.section4`): the baseline kernel, XNOR with and without
  packing and torch float32 / bf16 / int8 at ``--sizes`` (default 8192^3), and the MNIST MLP
  on baseline kernels vs XNOR kernels on all test images. Written to
  ``build/bench/bench_section4_<device>.json`` unless ``--out`` says otherwise.
* ``gpu`` -- run first, with a CUDA GPU: :func:`bnnlib.bench.kernels.bench_gpu_gemm` (8192^3,
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
import json
import math
import os
import sys
from pathlib import Path

import torch

from bnnlib import cliargs
from bnnlib.bench.common import (
    loadavg,
    machine_info,
    mlp_options,
    plain,
)
from bnnlib.bench.gpu import (
    bench_gpu,
)
from bnnlib.bench.kernels import bench_cpu_gemm
from bnnlib.bench.latency import bench_latency
from bnnlib.bench.mlp import bench_mnist_mlp, bench_train_step
from bnnlib.bench.report import cpu_table, section4_table
from bnnlib.bench.section4 import bench_section4_gemm, bench_section4_mlp
from bnnlib.bench.train import TRAIN_MODELS, bench_train, train_table
from bnnlib.files import UnsafePathError, atomic_write, check_writable_path

__all__ = ["default_out", "main"]


def _gemm_size(text: str) -> int:
    """A CPU gemm size n (n x n operands): >= 1, and its three float32 n x n matrices must fit
    in half this machine's memory (``--sizes 100000`` would ask for 120 GB)."""
    n = cliargs.positive_int(text)
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        memory = 16 << 30
    largest = math.isqrt(memory // 2 // (3 * 4))
    if n > largest:
        raise argparse.ArgumentTypeError(
            f"{n}^3 needs {3 * 4 * n * n / 1e9:.0f} GB for its float32 matrices; this machine "
            f"({memory / 2**30:.0f} GiB) takes sizes up to {largest}"
        )
    return n


def _json_out(text: str) -> str:
    """A JSON path to write: not empty, not a folder or other non-file."""
    text = cliargs.nonempty(text)
    try:
        check_writable_path(text)
    except UnsafePathError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def _bench_gemm_cpu(sizes: list[int], quick: bool) -> dict:
    reps = 3 if quick else 5
    return {"sizes": sizes, "results": [plain(bench_cpu_gemm(n, reps)) for n in sizes]}


# --------------------------------------------------------------------------- CLI


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bnnlib.bench",
        description="Benchmarks of packed BNN kernels, inference and training (medians of "
        "repeats after warm-up; ratios measured in one run). Writes JSON.",
    )
    p.add_argument("--quick", action="store_true", help="fewer repeats and smaller sizes")
    p.add_argument(
        "--latency",
        action="store_true",
        help="only the latency section: ms per image at batch 1 / 100 / 10,000 against the "
        "weight-streaming floor and the deployed float32 network "
        "(build/bench/bench_latency_<device>.json)",
    )
    p.add_argument(
        "--section4",
        action="store_true",
        help="only the paper's Section 4 claims on this CPU: baseline kernel / XNOR / XNOR with "
        "packing / torch float32 at --sizes (default 8192), and the MNIST MLP on baseline vs "
        "XNOR kernels (build/bench/bench_section4_<device>.json)",
    )
    p.add_argument(
        "--train",
        action="store_true",
        help="only the training-step section: forward / backward / optimizer of the plain and "
        "the fast path against the float32 GEMM floor of the same step "
        "(build/bench/bench_train_<device>.json)",
    )
    p.add_argument(
        "--train-models",
        nargs="+",
        choices=[m.key for m in TRAIN_MODELS],
        help="--train: the models to time (default: all)",
    )
    p.add_argument(
        "--batches",
        type=cliargs.positive_int,
        nargs="+",
        default=[1, 100, 10_000],
        help="latency batch sizes",
    )
    p.add_argument("--no-conv", action="store_true", help="latency: leave out the ConvNet")
    p.add_argument(
        "--out", type=_json_out,
        help="JSON path (default build/bench/bench_<device>.json; results/... to update the "
        "committed figures)",
    )  # fmt: skip
    p.add_argument("--sizes", type=_gemm_size, nargs="+", help="CPU gemm sizes M = N = K")
    p.add_argument("--data-root", help="data folder (default: $BNN_DATA_DIR)")
    p.add_argument("--model-path", help="a trained mnist_mlp state dict (model.pt)")
    p.add_argument("--batchnorm", choices=("standard", "shift"), default="standard")
    p.add_argument(
        "--hidden", type=cliargs.positive_int, default=4096, help="MLP hidden units (inference)"
    )
    p.add_argument("--n-test", type=cliargs.positive_int, help="test images (default: all 10,000)")
    p.add_argument(
        "--n-calib", type=cliargs.positive_int, help="training images for the BN statistics"
    )
    p.add_argument(
        "--repeats", type=cliargs.positive_int, help="timed repeats of the inference runs"
    )
    p.add_argument(
        "--train-hidden",
        type=cliargs.positive_int,
        nargs="+",
        help="hidden sizes of the training-step ratio",
    )
    p.add_argument("--train-repeats", type=cliargs.positive_int, help="timed steps of each model")
    p.add_argument(
        "--skip",
        nargs="+",
        default=[],
        choices=("gemm", "mlp", "train", "gpu"),
        help="sections to leave out",
    )
    return p


def _defaults(args) -> None:
    """The sizes and repeats not given, by ``--quick``."""
    q = args.quick
    args.repeats = args.repeats or (2 if q else 5)
    args.n_calib = args.n_calib or (1000 if q else 5000)
    if args.section4:
        args.sizes = args.sizes or ([1024] if q else [8192])
        args.repeats = 1 if q else 3
    args.sizes = args.sizes or ([256, 1024] if q else [256, 1024, 2048, 4096])
    args.train_hidden = args.train_hidden or [4096, 1024]
    args.train_repeats = args.train_repeats or (6 if q else 20)


def _settings(args) -> dict:
    return {
        "quick": args.quick,
        "sizes": args.sizes,
        "hidden": args.hidden,
        "n_test": args.n_test,
        "n_calib": args.n_calib,
        "repeats": args.repeats,
        "train_hidden": args.train_hidden,
        "train_repeats": args.train_repeats,
        "skip": args.skip,
        "latency": args.latency,
        "section4": args.section4,
        "train": args.train,
        "train_models": args.train_models,
        "batches": args.batches if args.latency else None,
    }


def _log(msg: str) -> None:
    print(msg, flush=True)


def _run_sections(args, res: dict, save) -> None:
    """The sections not skipped, GPU first (the figures that need the rare machine), each
    saved as soon as it exists."""
    if args.train:
        _log("training step, CPU ...")
        models = tuple(args.train_models) if args.train_models else None
        reps = 6 if args.quick else (args.train_repeats or 20)
        res["train_cpu"] = bench_train(models, repeats=reps, warmup=2 if args.quick else 3,
                                       log=_log)  # fmt: skip
        save()
        return
    if args.latency:
        _log("latency, CPU ...")
        res["latency_cpu"] = bench_latency(
            hidden=args.hidden, data_root=args.data_root, model_path=args.model_path,
            batchnorm=args.batchnorm, batches=tuple(args.batches),
            repeats=2 if args.quick else 5, conv=not args.no_conv, log=_log,
        )  # fmt: skip
        save()
        return
    if args.section4:
        res["section4_cpu"] = {"gemm": []}
        for n in args.sizes:
            _log(f"Section 4 on the CPU: {n}^3 ...")
            res["section4_cpu"]["gemm"].append(bench_section4_gemm(n, args.repeats, log=_log))
            save()
        _log("Section 4 on the CPU: the MNIST MLP on baseline vs XNOR kernels ...")
        res["section4_cpu"]["mlp"] = bench_section4_mlp(**mlp_options(args), log=_log)
        save()
        return
    if "gpu" not in args.skip:
        _log("GPU ...")

        def gpu_partial(part: dict) -> None:
            res["gpu"] = part
            save()

        res["gpu"] = bench_gpu(args, _log, on_result=gpu_partial)
        save()
    if "gemm" not in args.skip:
        _log(f"CPU gemm, sizes {args.sizes} ...")
        res["gemm_cpu"] = _bench_gemm_cpu(args.sizes, args.quick)
        save()
    if "mlp" not in args.skip:
        _log("MNIST MLP inference on the CPU ...")
        res["mnist_mlp_cpu"] = bench_mnist_mlp(**mlp_options(args), log=_log)
        save()
    if "train" not in args.skip:
        res["train_step_cpu"] = []
        for h in args.train_hidden:
            _log(f"training step ratio, hidden {h} ...")
            r = bench_train_step(h, repeats=args.train_repeats, warmup=2 if args.quick else 3)
            res["train_step_cpu"].append(r)
            save()


def default_out(kind: str, device: str) -> Path:
    """Where a benchmark writes without ``--out``: ``build/bench/``, never the committed
    ``results/`` (which only an explicit ``--out results/...`` updates)."""
    return Path("build") / "bench" / f"{kind}_{device}.json"


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark; returns the results dict (also written as JSON)."""
    from bnnlib.settings import retain_freed_memory

    args = _parser().parse_args(argv)
    argv = sys.argv[1:] if argv is None else list(argv)
    retain_freed_memory()
    _defaults(args)
    res: dict = {"meta": machine_info(argv)}
    res["settings"] = _settings(args)
    if sum((args.latency, args.section4, args.train)) > 1:
        _parser().error("--latency, --section4 and --train are separate runs: give one of them")
    kind = ("bench_latency" if args.latency else "bench_section4" if args.section4
            else "bench_train" if args.train else "bench")  # fmt: skip
    out = Path(args.out) if args.out else default_out(kind, res["meta"]["device"])

    def save(_partial=None) -> None:  # after every figure: a later crash loses nothing
        atomic_write(out, json.dumps(plain(res), indent=1).encode())

    res["meta"]["allow_tf32"] = torch.backends.cuda.matmul.allow_tf32
    _run_sections(args, res, save)
    res["meta"]["load_average_end"] = loadavg()
    if args.train:
        print(train_table(res["train_cpu"]))
    else:
        print(section4_table(res) if args.section4 else cpu_table(res))
    atomic_write(out, json.dumps(plain(res), indent=1).encode())
    print(f"\nwrote {out}")
    return res
