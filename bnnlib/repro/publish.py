"""Publish a finished training run under ``results/``: ``python -m bnnlib.repro.publish RUN DEST``.

A run folder of ``python -m bnnlib.train --out RUN`` holds ``history.json``,
``checkpoint.pt`` and ``best_model.pt`` (tens of megabytes, never committed).
Publishing turns it into a committed run (:mod:`bnnlib.results`)::

    DEST/history.json       the per-epoch history, as trained
    DEST/run.json           the exact command, data, schedule, hardware, seed, date, code version,
                            and the packed model's check (below)
    DEST/model.safetensors  the best-validation model, packed (bnnlib.inference.export); a float
                            twin (--float) has none: run.json's float_check records its errors

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
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from bnnlib import data as bdata
from bnnlib import inference
from bnnlib.errors import BadInput, one_line_errors
from bnnlib.files import FileLock, LockHeld, atomic_write, read_json, staging_dir
from bnnlib.hardware import describe_machine, hardware
from bnnlib.train.checkpoint import load_checkpoint
from bnnlib.train.config import CONFIG_KEY, RunConfig, RunConfigFormatError
from bnnlib.train.history import History
from bnnlib.train.loop import predict

__all__ = ["publish", "main", "PublishError"]


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
    cmd = "python -m bnnlib.train " + shlex.join(config["argv"])
    for ext in config.get("extended", []):
        argv = ext.get("argv") or _resume_argv(config["argv"], ext["to_epochs"])
        cmd += (
            f" && python -m bnnlib.train {shlex.join(argv)}  # resumed at epoch "
            f"{ext['at_epoch']}, {ext['from_epochs']} -> {ext['to_epochs']} epochs"
        )
    return cmd


class PublishError(BadInput):
    """The run cannot be published as asked (the message says why and what to do)."""


def _finished(history: dict, allow_stopped: bool) -> str | None:
    """None for a run that ran all its epochs; the reason it stopped early when allowed;
    else :class:`PublishError` (still training, killed, diverged, or stopped by its time
    limit without ``allow_stopped``)."""
    planned = history["config"].get("num_epochs")
    done = len(history.get("epochs", []))
    stopped = history.get("stopped")
    if stopped:
        if not allow_stopped:
            raise PublishError(
                f"the run stopped early ({stopped}); finish it with --resume, or publish it "
                "labelled as stopped early with --allow-stopped-early"
            )
        return str(stopped)
    if planned is None or done < planned:
        raise PublishError(
            f"the run has {done} of {planned} epochs and did not stop cleanly: it is still "
            "training, was killed, or its loss went non-finite; finish it (--resume) first"
        )
    return None


def _predictions(pred) -> str | list[int]:
    """Predictions as run.json keeps them: a string of digits when every class is below 10."""
    values = [int(v) for v in pred]
    return "".join(map(str, values)) if all(0 <= v < 10 for v in values) else values


def _check_packed(check: dict) -> None:
    """The packed model (a float twin has none) must make exactly the float model's and the
    history's errors."""
    packed = check.get("errors_packed", check["errors_float_model"])
    if not packed == check["errors_float_model"] == check["errors_history"]:
        raise PublishError(
            f"the packed model makes {packed} errors, the float model "
            f"{check['errors_float_model']}, the history says {check['errors_history']}: the "
            "history or the checkpoint is not this run's (or the data differ); nothing written"
        )


def _dest(dest: str | Path) -> Path:
    if not str(dest).strip():
        raise PublishError("DEST is empty (an unset variable?); give a folder, e.g. results/x")
    dest = Path(dest)
    if dest.exists() and not dest.is_dir():
        raise PublishError(f"DEST {dest} is a file, not a folder; choose another DEST")
    return dest


def _swap_into_place(staging: Path, dest: Path) -> None:
    """Make ``staging`` be ``dest``: one rename when ``dest`` is new; else the old folder is
    renamed aside first and removed after (a kill between the two renames leaves the old run
    whole, as ``.<name>.old-*``, and no half-written DEST)."""
    if not dest.exists():
        os.rename(staging, dest)
        return
    old = staging_dir(dest.parent, dest.name, kind="old")  # an empty folder: rename replaces it
    os.rename(dest, old)
    os.rename(staging, dest)
    shutil.rmtree(old, ignore_errors=True)


def _write_staged(dest: Path, history: dict, build) -> dict:
    """Write the model, history.json and run.json into a staging folder beside ``dest``, then
    rename it into place; ``build(staging)`` writes the model and returns run.json's dict."""
    staging = staging_dir(dest.parent, dest.name)  # removes those of a killed publish
    try:
        run = build(staging)
        atomic_write(staging / "history.json", json.dumps(history, indent=1).encode())
        atomic_write(staging / "run.json", json.dumps(run, indent=1).encode())
        os.chmod(staging, 0o755)
        _swap_into_place(staging, dest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return run


def _read_run(run_dir: Path) -> tuple[dict, RunConfig]:
    """The run's history and its configuration, read strictly and checked against the
    settings the history recorded (a configuration edited after the run is refused)."""
    path = run_dir / "history.json"
    history = read_json(path)
    if not isinstance(history, dict) or not isinstance(history.get("config"), dict):
        raise PublishError(f"{path} is not a training history")
    if not isinstance(history.get("epochs"), list) or not history["epochs"]:
        raise PublishError(f"{path} records no epoch")
    run_config = RunConfig.from_history(history["config"])
    diff = run_config.record_differences(history["config"])
    if diff:
        shown = ", ".join(f"{k}: recorded {a!r} vs run_config {b!r}" for k, (a, b) in diff.items())
        raise PublishError(
            f"{path}: its run_config disagrees with the settings the run recorded ({shown}): "
            "the file was edited after the run; publish the run as it trained; nothing written"
        )
    return history, run_config


def _best_model(run_dir: Path, run_config: RunConfig, train: bdata.Dataset):
    """The run's best-validation model, rebuilt from ``run_config``; refused when the
    checkpoint was trained with another configuration or holds another model."""
    path = run_dir / "checkpoint.pt"
    ckpt = load_checkpoint(path)
    saved = ckpt["config"].get(CONFIG_KEY) if isinstance(ckpt.get("config"), dict) else None
    if saved is not None:
        diff = RunConfig.from_dict(saved).differences(run_config)
        if diff:
            shown = ", ".join(
                f"{k}: checkpoint {a!r} vs history {b!r}" for k, (a, b) in diff.items()
            )
            raise PublishError(
                f"{path} was trained with another run configuration than history.json's "
                f"({shown}): they are not the same run's; nothing written"
            )
    net = run_config.build_model(train.shape, train.num_classes)
    try:
        net.load_state_dict(ckpt["best_model"])
    except RuntimeError as e:
        first = str(e).strip().splitlines()[-1].strip()
        raise PublishError(
            f"{path} holds another model than the run configuration builds "
            f"({run_config.describe_shape()}: {first}); nothing written"
        ) from None
    return net.eval()


def _check_dest(dest: Path, config: dict) -> None:
    """DEST is new, empty, or holds this very run (its run.json has the same command line)."""
    if (dest / "run.json").exists():
        old = read_json(dest / "run.json")
        if not isinstance(old, dict) or old.get("argv") != config.get("argv"):
            what = old.get("command") if isinstance(old, dict) else old
            raise PublishError(f"{dest} holds another run ({what}); choose another DEST")
    elif dest.exists() and any(dest.iterdir()):
        raise PublishError(f"{dest} is a folder with other files; choose another DEST")


def _model_check(net, test, best: History, run_config: RunConfig, where: Path, metadata: dict):
    """The float model's errors and predictions on ``test``, and (a binary run) the packed
    model's, exported to ``where``; refused when they differ from each other or the history."""
    pred_float = predict(net, test.X, device="cpu")
    check = {
        "test_images": len(test),
        "errors_float_model": int((pred_float != test.y).sum()),
        "errors_history": round(best.test_error_at_best * len(test)),
        # One digit per test image (classes < 10), else a list: what the packed model
        # must predict, checked again by the tests from the committed files.
        "predictions_float_model": _predictions(pred_float),
        "checked_on": describe_machine(),
    }
    if run_config.binary:
        model_path = inference.export(net, where, metadata=metadata)
        pred_packed = inference.load(model_path).predict(test.X)
        check["errors_packed"] = int((pred_packed != test.y).sum())
        check["predictions_differing_packed_vs_float"] = int((pred_packed != pred_float).sum())
        check["model_bytes"] = model_path.stat().st_size
    _check_packed(check)
    return check


def _run_json(history: dict, run_config: RunConfig, splits, check: dict, note, stopped_early):
    """run.json's record of the run."""
    config, best = history["config"], History(epochs=history["epochs"])
    return {
        "command": command_line(config),
        "argv": config["argv"],
        "run_config": run_config.to_dict(),
        # What the run trained on (it records it, e.g. after --train-size).
        "data": config.get("data") or bdata.describe_splits(*splits),
        "schedule": _schedule(config, history),
        "stopped": history.get("stopped"),
        "stopped_early": stopped_early,
        # Published on the machine that trained it (a session's CPU may change later).
        "hardware": config.get("hardware") or hardware(),
        "seed": config["seed"],
        "date": datetime.date.today().isoformat(),
        "code_at_publish": _git_commit(),
        "note": note,
        "best_epoch": best.best_epoch,
        "selection": "best validation error; ties: the later epoch",
        "test_error_at_best": best.test_error_at_best,
        # A float twin has no packed model: its check is the float model's errors.
        "packed_check" if run_config.binary else "float_check": check,
    }


def publish(
    run_dir: str | Path,
    dest: str | Path,
    note: str | None = None,
    data_root=None,
    allow_stopped: bool = False,
) -> dict:
    """Write ``dest``'s history.json, run.json and model.safetensors from ``run_dir``.

    ``note`` (free text, e.g. which code version trained it and on what machine) goes into
    run.json; ``code_at_publish`` is the git commit of the code that published it.
    ``data_root``: where the run's data set is (None: ``$BNN_DATA_DIR``, else the cache).
    Refused (:class:`PublishError`, nothing written): a run that did not run all its epochs
    (``allow_stopped`` publishes one its time limit stopped, labelled so), a run configuration
    that disagrees with the settings the history recorded or with the checkpoint's (or whose
    model is not the checkpoint's), a packed model whose errors differ from the float
    model's or the history's, a DEST holding another run. The files are written into a
    staging folder renamed into place, under a lock on DEST, so a second publish waits for
    none and mixes nothing, and a kill or a full disk leaves the old DEST as it was.
    """
    run_dir, dest = Path(run_dir), _dest(dest)
    history, run_config = _read_run(run_dir)
    config = history["config"]
    stopped_early = _finished(history, allow_stopped)
    best = History(epochs=history["epochs"])  # re-read under the one tie rule
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        lock = FileLock(dest.parent / f".{dest.name}.lock").acquire()
    except LockHeld as e:
        raise PublishError(f"another publish into {dest} is running ({e}); try again") from e
    try:
        _check_dest(dest, config)
        splits = run_config.load_data(data_root)
        train, _, test = splits
        if test is None or not len(test):
            raise PublishError(f"{run_config.dataset} has no test images to check the model on")
        net = _best_model(run_dir, run_config, train)
        metadata = {"run": dest.name, "argv": config["argv"], "dataset": run_config.dataset}

        def build(staging: Path) -> dict:
            where = staging / "model.safetensors"
            check = _model_check(net, test, best, run_config, where, metadata)
            return _run_json(history, run_config, splits, check, note, stopped_early)

        return _write_staged(dest, history, build)
    finally:
        lock.release()


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(
        prog="python -m bnnlib.repro.publish", description=__doc__.split("\n")[0]
    )
    p.add_argument("run_dir", help="the --out folder of a finished python -m bnnlib.train run")
    p.add_argument("dest", help="e.g. results/torch7_mnist")
    p.add_argument("--note", help="free text for run.json (training code version, machine, ...)")
    p.add_argument("--data-root", help="data folder (default: $BNN_DATA_DIR, else ~/.cache)")
    p.add_argument(
        "--allow-stopped-early", action="store_true",
        help="publish a run its --max-time stopped before its last epoch, labelled so",
    )  # fmt: skip
    args = p.parse_args(argv)
    if not (Path(args.run_dir) / "checkpoint.pt").exists():
        p.error(f"{args.run_dir}: no checkpoint.pt; is it a python -m bnnlib.train --out folder?")
    try:
        with one_line_errors(p.prog, f"{args.dest} is as it was before"):  # Ctrl-C: 130
            run = publish(
                args.run_dir, args.dest, args.note, args.data_root, args.allow_stopped_early
            )
    except (ValueError, RunConfigFormatError) as e:
        p.error(str(e))
    print(json.dumps(run, indent=1))
    return run


if __name__ == "__main__":
    sys.exit(main() and 0)
