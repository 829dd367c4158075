"""``python -m bnnlib.inference MODEL --dataset NAME``: the error of a packed model on a dataset.

Loads any file written by :func:`bnnlib.inference.export`, runs :meth:`PackedNet.predict` on
one split of a dataset (:func:`bnnlib.data.load`; the test split by default) and prints::

    test error 1.38% (138 / 10000) on mnist test, model results/x/model.safetensors, CPU: ...

or, with ``--json``, the same as one JSON object. Bad input (a missing file, a file that is
not a packed model, an unknown or missing dataset, images of another shape than the model's
input) is one error message and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

from bnnlib import data
from bnnlib.hardware import hardware
from bnnlib.inference.format import load
from bnnlib.inference.runtime import PackedNet, backend

__all__ = ["main", "evaluate"]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bnnlib.inference",
        description="Test error of a packed BNN (bnnlib.inference.export) with XNOR-popcount.",
    )
    p.add_argument("model", help="a packed model file (.safetensors) from inference.export")
    p.add_argument("--dataset", required=True, help=f"dataset name: {', '.join(data.NAMES)}")
    p.add_argument("--data-root", default=None, help="data root (default: $BNN_DATA_DIR)")
    p.add_argument("--split", default="test", choices=data.SPLITS)
    p.add_argument("--batch-size", type=int, default=2000)
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--first-layer", default="real", choices=("real", "bitplanes"))
    p.add_argument("--json", action="store_true", help="print one JSON object")
    return p


def _check_shape(packed: PackedNet, ds: data.Dataset) -> str | None:
    """Why the dataset's images do not fit the model's input, or None when they do."""
    want, got = list(packed.input_shape), list(ds.X.shape[1:])
    fits = got == want if len(want) == 3 else math.prod(got) == math.prod(want)
    if fits:
        return None
    return (
        f"the model {packed.source} takes images of shape {tuple(want)}, but {ds.name} "
        f"{ds.split} images are {tuple(got)}"
    )


def evaluate(
    packed: PackedNet, ds: data.Dataset, device: str = "cpu", batch_size: int = 2000, **kw
) -> dict:
    """Errors of ``packed`` on ``ds`` as a dict (errors, n, error, seconds, ...)."""
    t0 = time.perf_counter()
    pred = packed.predict(ds.X, device=device, batch_size=batch_size, **kw)
    seconds = time.perf_counter() - t0
    errors, n = int((pred != ds.y.cpu()).sum()), len(ds)
    return {
        "model": packed.source,
        "dataset": ds.name,
        "split": ds.split,
        "errors": errors,
        "n": n,
        "error": errors / n,
        "error_percent": round(100 * errors / n, 2),
        "device": device,
        "hardware": hardware(device),
        "seconds": round(seconds, 3),
    }


def _inputs(args, parser: argparse.ArgumentParser) -> tuple[PackedNet, data.Dataset]:
    """The model and the dataset of the command line, or ``parser.error`` (exit status 2)."""
    path = Path(args.model)
    if not path.is_file():
        parser.error(f"model file not found: {path}")
    if args.batch_size < 1:
        parser.error(f"--batch-size must be >= 1, got {args.batch_size}")
    try:
        backend(args.device)
        packed = load(path)
        ds = data.load(args.dataset, args.data_root, split=args.split)
    except (ValueError, OSError, RuntimeError) as e:
        # PackedModelError, an unknown dataset, DataNotFoundError, CorruptDataError, no GPU
        parser.error(str(e))
    if len(ds) == 0:
        parser.error(f"{args.dataset} {args.split} has no images")
    problem = _check_shape(packed, ds)
    if problem:
        parser.error(problem)
    return packed, ds


def main(argv: list[str] | None = None) -> dict:
    """Run the command line (``argv`` without the program name); returns the result dict."""
    parser = _parser()
    args = parser.parse_args(argv)
    packed, ds = _inputs(args, parser)
    res = evaluate(packed, ds, args.device, args.batch_size, first_layer=args.first_layer)
    if args.json:
        print(json.dumps(res, indent=2))
    else:
        print(
            f"{res['split']} error {100 * res['error']:.2f}% ({res['errors']} / {res['n']}) on "
            f"{res['dataset']} {res['split']}, model {res['model']}, {res['hardware']}"
        )
    sys.stdout.flush()
    return res
