"""``python -m bnnlib.inference MODEL [--dataset NAME]``: the error of a packed model on a dataset.

Loads any file written by :func:`bnnlib.inference.export`, runs :meth:`PackedNet.predict` on
one split of a dataset (:func:`bnnlib.data.load`; the test split by default; the data set the
model was trained on unless ``--dataset`` names one: its file records it, or the ``run.json`` of
its run folder for files published before that) and prints::

    test error 1.38% (138 / 10000) on mnist test, model results/x/model.safetensors, CPU: ...

or, with ``--json``, the same as one JSON object. Bad input (a missing file, a file that is
not a packed model, an unknown or missing dataset, images of another shape than the model's
input) is one error message and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from bnnlib import data
from bnnlib.hardware import hardware
from bnnlib.inference.backend import backend
from bnnlib.inference.format import load
from bnnlib.inference.runtime import PackedNet

__all__ = ["main", "evaluate"]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bnnlib.inference",
        description="Test error of a packed BNN (bnnlib.inference.export) with XNOR-popcount.",
    )
    p.add_argument("model", help="a packed model file (.safetensors) from inference.export")
    p.add_argument(
        "--dataset",
        help=f"dataset name: {', '.join(data.NAMES)} (default: the one the model was trained "
        "on, as its file records it or, for older files, the run.json of its run folder)",
    )
    p.add_argument(
        "--any-dataset", action="store_true",
        help="evaluate on --dataset even if the model records another training set",
    )  # fmt: skip
    p.add_argument(
        "--data-root", default=None,
        help="folder holding the data sets in torchvision's layout (default: $BNN_DATA_DIR, "
        "else ~/.cache/bnnlib/data)",
    )  # fmt: skip
    p.add_argument(
        "--split", default="test", choices=data.SPLITS,
        help="which split: the test set (default), the paper's train/val cut of the training "
        "set, or the whole training set (train_full)",
    )  # fmt: skip
    p.add_argument(
        "--batch-size", type=int, default=2000, help="images per call (memory; same result)"
    )
    p.add_argument(
        "--device", default="cpu", choices=("cpu", "cuda"),
        help="where the XNOR-popcount kernels run: cpu (default) or cuda (needs a GPU and "
        "PyCUDA); same integers",
    )  # fmt: skip
    p.add_argument(
        "--first-layer", default="real", choices=("real", "bitplanes"),
        help="how the 8-bit first layer is computed: a float product with the +/-1 weights "
        "(real) or XNOR-popcount on the 8 bit planes (the paper's Section 1.6); same integers",
    )  # fmt: skip
    p.add_argument("--json", action="store_true", help="print one JSON object")
    return p


def _check_shape(packed: PackedNet, ds: data.Dataset) -> str | None:
    """Why the dataset's images do not fit the model's input, or None when they do."""
    if packed.layout_problem(tuple(ds.X.shape)) is None:
        return None
    return (
        f"the model {packed.source} takes images of shape {tuple(packed.input_shape)}, but "
        f"{ds.name} {ds.split} images are {tuple(ds.X.shape[1:])}"
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


def _recorded_dataset(path: Path, packed: PackedNet) -> str | None:
    """The data set the model was trained on: its file's record (publish writes one), else the
    ``run_config.dataset`` of the ``run.json`` beside it (files published before that)."""
    if packed.dataset is not None:
        return packed.dataset
    try:
        run = json.loads((path.parent / "run.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    config = run.get("run_config") if isinstance(run, dict) else None
    value = config.get("dataset") if isinstance(config, dict) else None
    return value if isinstance(value, str) and value else None


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
        recorded = _recorded_dataset(path, packed)
        if args.dataset is None and recorded is None:
            parser.error(
                f"{path} does not record its training data set (nor does a run.json beside "
                "it): give --dataset"
            )
        if args.dataset and recorded and args.dataset != recorded and not args.any_dataset:
            parser.error(
                f"{path} was trained on {recorded}, not {args.dataset}: its error there means "
                "nothing; pass --any-dataset to evaluate it anyway"
            )
        args.dataset = args.dataset or recorded
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
