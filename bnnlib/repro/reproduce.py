"""``python -m bnnlib.repro.reproduce --out DIR``: Table 1's Theano column on one GPU.

1. The paper's MNIST run as its Theano code does it (``python -m bnnlib.train
   --model mnist_mlp --recipe paper``: 784 -> 3 x 4096 -> 10, dropout 0.2 / 0.5,
   deterministic binarization, square hinge, Adam with the Glorot scale, LR 3e-3 ->
   3e-7 over 1000 epochs, batch 100, 50k / 10k split; the paper: 0.96%), under a
   wall-clock guard: if the schedule cannot finish, training stops cleanly at an
   epoch boundary and ``history.json``'s ``stopped`` says how far it got.
2. Its best-validation model exported packed (:func:`bnnlib.repro.publish.publish`:
   ``history.json``, ``run.json``, ``model.safetensors``), and the packed model's
   predictions on the test set compared with the trained model's on the training
   device (``summary.json``: ``device_vs_packed``).
3. The CIFAR-10 ConvNet (the paper's schedule: 500 epochs, batch 50, LR 1e-3 ->
   3e-7) for the time left, on full CIFAR-10 when the data root holds it, else on
   the offline subset ``npz:CIFAR10-subset/cifar10_subset.npz``, labelled as the
   subset everywhere; exported packed too.

Everything lands in DIR::

    DIR/reproduce.log                     everything printed (one line per epoch)
    DIR/summary.json                      command, GPU, date, per stage: test error at the
                                          best-validation epoch, epochs done, epochs/s,
                                          ms per step, seconds, the packed checks
    DIR/mnist_mlp/{history,run}.json, model.safetensors
    DIR/cifar10_convnet/{history,run}.json, model.safetensors
    WORK/<stage>/checkpoint.pt ...        the training folders (large; WORK = DIR/train)

On a GPU the training takes the fast path (:mod:`bnnlib.train`). ``--rehearse``
runs the same steps with a tiny schedule (1 epoch each, 32 hidden units, a
ConvNet of 1/8 width, a few hundred training images), on the CPU in a minute.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import shlex
import sys
import time
from pathlib import Path

import torch

from bnnlib import cliargs, inference
from bnnlib import data as bdata
from bnnlib.files import atomic_write, read_json
from bnnlib.hardware import hardware
from bnnlib.repro.publish import publish
from bnnlib.train.checkpoint import load_checkpoint
from bnnlib.train.cli import main as train_main
from bnnlib.train.config import RunConfig
from bnnlib.train.loop import as_device, predict

__all__ = ["main", "cifar10_dataset", "SUBSET"]

#: The offline CIFAR-10 subset, relative to the data root.
SUBSET = bdata.CIFAR10_SUBSET
#: What --rehearse sets (flags given explicitly still win).
REHEARSAL = {
    "mnist_epochs": 1, "hidden": 32, "train_size": 1000, "cifar_epochs": 1,
    "cifar_width": 0.125, "cifar_train_size": 500,
}  # fmt: skip


def cifar10_dataset(root=None) -> str:
    """``"cifar10"`` when the data root holds CIFAR-10, else the subset (:data:`SUBSET`)."""
    try:
        bdata.ensure_files("cifar10", bdata.resolve_root(root), "the data root", False)
    except bdata.DataNotFoundError:
        return SUBSET
    return "cifar10"


class _Tee:
    """Writes to the console and to the log file."""

    def __init__(self, *streams):
        self.streams = streams

    def write(self, text: str) -> int:
        for s in self.streams:
            s.write(text)
            s.flush()
        return len(text)

    def flush(self) -> None:
        for s in self.streams:
            s.flush()

    def isatty(self) -> bool:
        return False


def _parser_reproduce() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bnnlib.repro.reproduce",
        description="The paper's MNIST run (Theano code, 1000 epochs) and the CIFAR-10 ConvNet "
        "for the time left, each exported packed, into --out.",
    )
    p.add_argument("--out", required=True, help="output folder (must not hold a reproduction)")
    p.add_argument(
        "--max-minutes", type=cliargs.positive_float, default=60.0, help="wall-clock budget, all in"
    )
    p.add_argument(
        "--reserve-minutes", type=cliargs.nonnegative_float, default=1.5,
        help="time kept back from training for the exports and checks (default 1.5)",
    )  # fmt: skip
    p.add_argument(
        "--min-cifar-minutes", type=cliargs.nonnegative_float, default=1.0,
        help="time kept back from MNIST for the ConvNet (default 1; 0 skips it when MNIST "
        "uses everything)",
    )  # fmt: skip
    p.add_argument("--data-root", help=f"data folder (default: ${bdata.ENV_VAR})")
    p.add_argument("--work", help="training folders with checkpoints (default: OUT/train)")
    p.add_argument("--device", help="default: cuda if available")
    p.add_argument("--seed", type=cliargs.nonnegative_int, default=0)
    p.add_argument("--mnist-epochs", type=cliargs.positive_int, help="default: the paper's 1000")
    p.add_argument(
        "--hidden", type=cliargs.positive_int, help="MLP hidden units (default: the paper's 4096)"
    )
    p.add_argument(
        "--train-size", type=cliargs.positive_int, help="MNIST: first N training images only"
    )
    p.add_argument(
        "--cifar-epochs",
        type=cliargs.positive_int,
        help="default: the paper's 500 (time permitting)",
    )
    p.add_argument(
        "--cifar-width", type=cliargs.positive_float, help="ConvNet width multiplier (default 1)"
    )
    p.add_argument(
        "--cifar-train-size", type=cliargs.positive_int, help="CIFAR: first N training images only"
    )
    p.add_argument("--no-cifar", action="store_true", help="MNIST only")
    p.add_argument(
        "--rehearse", action="store_true",
        help="a tiny schedule to check the whole command on a CPU: "
        + ", ".join(f"--{k.replace('_', '-')} {v}" for k, v in REHEARSAL.items()),
    )  # fmt: skip
    return p


def _train_argv(args, model: str, dataset: str | None, run_dir: Path, max_time: float):
    argv = ["--model", model, "--recipe", "paper", "--seed", str(args.seed)]
    argv += ["--out", str(run_dir), "--max-time", f"{max_time:.0f}"]
    if dataset is not None:
        argv += ["--dataset", dataset]
    if args.data_root:
        argv += ["--data-root", args.data_root]
    if args.device:
        argv += ["--device", args.device]
    if model == "mnist_mlp":
        extra = {"--epochs": args.mnist_epochs, "--hidden": args.hidden}
        extra["--train-size"] = args.train_size
    else:
        extra = {"--epochs": args.cifar_epochs, "--width": args.cifar_width}
        extra["--train-size"] = args.cifar_train_size
    for flag, value in extra.items():
        if value is not None:
            argv += [flag, str(value)]
    return argv


def _device_check(run_dir: Path, dest: Path, device: torch.device, data_root) -> dict:
    """The packed model's test predictions (CPU) against the trained model's on ``device``."""
    config = read_json(run_dir / "history.json")["config"]
    run_config = RunConfig.from_history(config)
    train, _, test = run_config.load_data(data_root)
    net = run_config.build_model(train.shape, train.num_classes)
    net.load_state_dict(load_checkpoint(run_dir / "checkpoint.pt")["best_model"])
    pred_device = predict(net.to(device), test.X.to(device)).cpu()
    pred_packed = inference.load(dest / "model.safetensors").predict(test.X)
    return {
        "device": str(device),
        "test_images": len(test),
        "errors_device": int((pred_device != test.y).sum()),
        "errors_packed_cpu": int((pred_packed != test.y).sum()),
        "predictions_differing": int((pred_device != pred_packed).sum()),
    }


def _speed(history: dict) -> dict:
    epochs = history["epochs"]
    c = history["config"]
    steps = c["n_train"] // c["batch_size"]
    train_s = sum(r["time"] for r in epochs)
    eval_s = sum(r["eval_time"] for r in epochs)
    n = len(epochs)
    return {
        "epochs_done": n,
        "epochs_planned": c["num_epochs"],
        "steps_per_epoch": steps,
        "train_seconds": round(train_s, 2),
        "eval_seconds": round(eval_s, 2),
        "epochs_per_second": round(n / max(train_s + eval_s, 1e-9), 4),
        "ms_per_step_training": round(1000 * train_s / max(n * steps, 1), 4),
        "ms_per_step_all_in": round(1000 * (train_s + eval_s) / max(n * steps, 1), 4),
    }


def _stage(args, out: Path, work: Path, model: str, dataset, max_time: float, device) -> dict:
    """Train, publish, check one model; returns its summary."""
    run_dir, dest = work / model, out / model
    argv = _train_argv(args, model, dataset, run_dir, max_time)
    print(f"\n== {model}: python -m bnnlib.train {shlex.join(argv)}", flush=True)
    t0 = time.perf_counter()
    train_main(argv)
    t_train = time.perf_counter() - t0
    history = read_json(run_dir / "history.json")
    print(f"== {model}: publishing the best-validation model packed into {dest}", flush=True)
    # The wall-clock guard may stop a stage before its last epoch: published, labelled so.
    run = publish(run_dir, dest, data_root=args.data_root, allow_stopped=True)
    check = _device_check(run_dir, dest, device, args.data_root)
    summary = {
        "command": "python -m bnnlib.train " + shlex.join(argv),
        "data": history["config"].get("data") or run["data"],
        "dataset_label": bdata.label(history["config"]["dataset"]),
        "best_epoch": history["best_epoch"],
        "best_val_error": history["best_val_error"],
        "test_error_at_best": history["test_error_at_best"],
        "stopped": history.get("stopped"),
        "max_time_s": round(max_time),
        "stage_seconds": round(time.perf_counter() - t0, 1),
        "training_seconds_with_eval": round(t_train, 1),
        **_speed(history),
        "packed_check": run["packed_check"],
        "device_vs_packed": check,
    }
    print(f"== {model}: {json.dumps(summary, indent=1)}", flush=True)
    return summary


def _machine(device: torch.device) -> dict:
    d = {"hardware": hardware(device), "torch": torch.__version__}
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        d.update(gpu=p.name, gpu_memory_gib=round(p.total_memory / 2**30, 1))
        d["cuda"] = torch.version.cuda
        d["allow_tf32_matmul"] = torch.backends.cuda.matmul.allow_tf32
        d["allow_tf32_cudnn"] = torch.backends.cudnn.allow_tf32
    return d


def main(argv: list[str] | None = None) -> dict:
    parser = _parser_reproduce()
    args = parser.parse_args(argv)
    if args.rehearse:
        for key, value in REHEARSAL.items():
            if getattr(args, key) is None:
                setattr(args, key, value)
    t_start = time.perf_counter()
    budget = 60.0 * args.max_minutes
    reserve = 60.0 * args.reserve_minutes
    out = Path(args.out)
    work = Path(args.work) if args.work else out / "train"
    for model in ("mnist_mlp", "cifar10_convnet"):
        if (out / model / "run.json").exists() or (work / model / "checkpoint.pt").exists():
            parser.error(f"{out} (or {work}) holds an earlier reproduction; choose another --out")
    try:
        out.mkdir(parents=True, exist_ok=True)
        (out / ".write-test").touch()
        (out / ".write-test").unlink()
    except OSError as e:
        parser.error(f"cannot write to --out {out}: {e.strerror or e}")
    device = as_device(args.device)
    command = "python -m bnnlib.repro.reproduce " + shlex.join(
        sys.argv[1:] if argv is None else list(argv)
    )
    summary = {
        "command": command,
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "budget_minutes": args.max_minutes,
        "machine": _machine(device),
        "stages": {},
    }

    def left() -> float:
        return budget - (time.perf_counter() - t_start)

    def save() -> None:
        summary["total_seconds"] = round(time.perf_counter() - t_start, 1)
        atomic_write(out / "summary.json", json.dumps(summary, indent=1).encode())

    with open(out / "reproduce.log", "a") as log:
        tee_out, tee_err = _Tee(sys.stdout, log), _Tee(sys.stderr, log)
        with contextlib.redirect_stdout(tee_out), contextlib.redirect_stderr(tee_err):
            print(f"{command}\n{summary['date']}; {summary['machine']}", flush=True)
            cifar_keep = 0.0 if args.no_cifar else 60.0 * args.min_cifar_minutes
            mnist_time = left() - reserve - cifar_keep
            summary["stages"]["mnist_mlp"] = _stage(
                args, out, work, "mnist_mlp", None, max(mnist_time, 1.0), device
            )
            save()
            if args.no_cifar:
                summary["stages"]["cifar10_convnet"] = {"skipped": "--no-cifar"}
            elif left() - reserve / 2 < 15:
                summary["stages"]["cifar10_convnet"] = {
                    "skipped": f"no time left ({left():.0f} s of the budget)"
                }
            else:
                dataset = cifar10_dataset(args.data_root)
                print(f"CIFAR-10 data: {bdata.label(dataset)}", flush=True)
                summary["stages"]["cifar10_convnet"] = _stage(
                    args, out, work, "cifar10_convnet", dataset, left() - reserve / 2, device
                )
            save()
            print(f"\nreproduce: done in {summary['total_seconds']:.0f} s; {out}/summary.json")
    return summary


if __name__ == "__main__":
    main()
