"""Publish a finished training run under ``results/``: ``python -m bnnlib.repro.publish RUN DEST``.

A run folder of ``python -m bnnlib.train --out RUN`` holds ``history.json``,
``checkpoint.pt`` and ``best_model.pt`` (tens of megabytes, never committed).
Publishing turns it into a committed run (:mod:`bnnlib.results`)::

    DEST/history.json       the per-epoch history, as trained
    DEST/run.json           the exact command, data, schedule, hardware, seed, date, code version,
                            and the packed model's check (below)
    DEST/model.safetensors  the best-validation model, packed (bnnlib.inference.export)

The model is rebuilt from the run's own configuration (``history.json``'s
``config["run_config"]``, a :class:`~bnnlib.train.config.RunConfig`; runs from before it are
converted once by ``python -m bnnlib.train.upgrade RUN``), loaded with the best-validation
weights, exported packed and checked on the whole test split: the packed model's errors must
equal the float model's (eval mode) and the history's test error at the best epoch, and the
per-image predictions of the packed model and of the float model are
compared (a few may differ where a batch-norm output sits within float32
rounding of a threshold; the count is recorded). DEST must not hold another
run: publishing never overwrites a different run's files.
"""

from __future__ import annotations

import argparse
import datetime
import json
import subprocess
import sys
from pathlib import Path

from bnnlib import data as bdata
from bnnlib import inference
from bnnlib.files import atomic_write
from bnnlib.hardware import describe_machine, hardware
from bnnlib.train.checkpoint import load_checkpoint
from bnnlib.train.config import RunConfig, RunConfigFormatError
from bnnlib.train.loop import predict

__all__ = ["publish", "main"]


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10,
            cwd=Path(__file__).resolve().parent, check=True,
        )  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def _schedule(config: dict, history: dict) -> str:
    epochs = len(history["epochs"])
    if config.get("lr_halve_every"):
        lr = f"LR {config['lr_start']:g} halved every {config['lr_halve_every']} epochs"
    else:
        lr = f"LR {config['lr_start']:g} -> {config['lr_end']:g} exponential"
    ran = (
        f"{epochs} of {config['num_epochs']} epochs"
        if history.get("stopped")
        else f"{epochs} epochs"
    )
    return f"{ran}, batch {config['batch_size']}, {config['optimizer']}, {lr}"


def _resume_argv(argv: list[str], epochs: int) -> list[str]:
    """``argv`` with ``--epochs`` set to ``epochs``, and ``--resume``."""
    out = list(argv)
    if "--epochs" in out[:-1]:
        out[out.index("--epochs") + 1] = str(epochs)
    else:
        out += ["--epochs", str(epochs)]
    return [*out, "--resume"]


def command_line(config: dict) -> str:
    """The command line that trained the run; a run extended on resume names each resume (its
    own command line when recorded, else the one the extension implies)."""
    cmd = "python -m bnnlib.train " + " ".join(config["argv"])
    for ext in config.get("extended", []):
        argv = ext.get("argv") or _resume_argv(config["argv"], ext["to_epochs"])
        cmd += (
            f" && python -m bnnlib.train {' '.join(argv)}  # resumed at epoch "
            f"{ext['at_epoch']}, {ext['from_epochs']} -> {ext['to_epochs']} epochs"
        )
    return cmd


def publish(run_dir: str | Path, dest: str | Path, note: str | None = None, data_root=None) -> dict:
    """Write ``dest``'s history.json, run.json and model.safetensors from ``run_dir``.

    ``note`` (free text, e.g. which code version trained it and on what machine) goes into
    run.json; ``code_at_publish`` is the git commit of the code that published it.
    ``data_root``: where the run's data set is (None: ``$BNN_DATA_DIR``, else the cache).
    """
    run_dir, dest = Path(run_dir), Path(dest)
    history = json.loads((run_dir / "history.json").read_text())
    config = history["config"]
    if (dest / "run.json").exists():
        old = json.loads((dest / "run.json").read_text())
        if old.get("argv") != config.get("argv"):
            raise ValueError(
                f"{dest} holds another run ({old.get('command')}); choose another DEST"
            )
    run_config = RunConfig.from_history(config)
    train, val, test = run_config.load_data(data_root)
    net = run_config.build_model(train.shape, train.num_classes)
    best = load_checkpoint(run_dir / "checkpoint.pt")["best_model"]
    net.load_state_dict(best)
    net.eval()
    model_path = inference.export(
        net, dest / "model.safetensors", metadata={"run": dest.name, "argv": config["argv"]}
    )
    packed = inference.load(model_path)
    pred_packed = packed.predict(test.X)
    pred_float = predict(net, test.X, device="cpu")
    errors_packed = int((pred_packed != test.y).sum())
    errors_float = int((pred_float != test.y).sum())
    at_best = history["test_error_at_best"]
    run = {
        "command": command_line(config),
        "argv": config["argv"],
        "run_config": run_config.to_dict(),
        # What the run trained on (it records it, e.g. after --train-size), else the splits.
        "data": config.get("data") or bdata.describe_splits(train, val, test),
        "schedule": _schedule(config, history),
        "stopped": history.get("stopped"),
        # Published on the machine that trained it (a session's CPU may change later).
        "hardware": config.get("hardware") or hardware(),
        "seed": config["seed"],
        "date": datetime.date.today().isoformat(),
        "code_at_publish": _git_commit(),
        "note": note,
        "best_epoch": history["best_epoch"],
        "test_error_at_best": at_best,
        "packed_check": {
            "test_images": len(test),
            "errors_packed": errors_packed,
            "errors_float_model": errors_float,
            "errors_history": round(at_best * len(test)),
            "predictions_differing_packed_vs_float": int((pred_packed != pred_float).sum()),
            "model_bytes": model_path.stat().st_size,
            "checked_on": describe_machine(),
        },
    }
    atomic_write(dest / "history.json", json.dumps(history, indent=1).encode())
    atomic_write(dest / "run.json", json.dumps(run, indent=1).encode())
    return run


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(
        prog="python -m bnnlib.repro.publish", description=__doc__.split("\n")[0]
    )
    p.add_argument("run_dir", help="the --out folder of a finished python -m bnnlib.train run")
    p.add_argument("dest", help="e.g. results/torch7_mnist")
    p.add_argument("--note", help="free text for run.json (training code version, machine, ...)")
    p.add_argument("--data-root", help="data folder (default: $BNN_DATA_DIR, else ~/.cache)")
    args = p.parse_args(argv)
    if not (Path(args.run_dir) / "checkpoint.pt").exists():
        p.error(f"{args.run_dir}: no checkpoint.pt; is it a python -m bnnlib.train --out folder?")
    try:
        run = publish(args.run_dir, args.dest, args.note, args.data_root)
    except (ValueError, FileNotFoundError, RunConfigFormatError) as e:
        p.error(str(e))
    print(json.dumps(run, indent=1))
    return run


if __name__ == "__main__":
    sys.exit(main() and 0)
