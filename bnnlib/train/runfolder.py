"""A run's configuration and its folder: what must match to resume, and who may write there.

Resuming. :func:`bnnlib.train.fit` records the run configuration (:func:`run_config`) in
the history and the checkpoint, and ``resume=True`` refuses a checkpoint whose
configuration differs (:func:`config_differences`, each differing setting named: the
:class:`~bnnlib.train.config.RunConfig` fields when both sides hold one, a field missing from
an older checkpoint counting as its default, and the fit's own settings no field holds, such
as the number of processes and of images) or whose model has other parameter shapes
(:func:`check_resume`, :class:`RunConfigError`).

The run folder (``--out`` of ``python -m bnnlib.train``, :func:`claim_run_folder`). A
folder that holds a run (``checkpoint.pt`` or ``history.json``) is refused unless resumed
or overwritten. While a run uses it the folder holds ``.lock``, an ``flock``
(:class:`bnnlib.files.FileLock`, with the holder's PID and host for messages, removed at exit
by :func:`release`): a second run is refused; the kernel drops the lock of a process that
died, and the next run takes it with a message, so neither a reused PID nor another host's PID
can block the folder. Temporary files of an interrupted write are removed when the folder is
claimed.
"""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path

from torch import nn

from bnnlib.files import FileLock, LockHeld
from bnnlib.train.checkpoint import remove_stale_temporaries
from bnnlib.train.config import CONFIG_KEY, RECORD, RunConfig, RunConfigFormatError

__all__ = ["RunConfigError", "config_differences", "run_config", "check_resume"]
__all__ += ["NOT_COMPARED", "RUN_FILES", "claim_run_folder", "release"]
__all__ += ["RunFolderError"]


class RunConfigError(ValueError):
    """A checkpoint of another run configuration than the one asked to resume."""


class RunFolderError(RuntimeError):
    """The run folder cannot be used as asked (it holds a run, is locked, is not writable)."""


#: Settings recorded for the record only: they may change when a run is resumed.
NOT_COMPARED = ("argv", "hardware", "data", "fast", CONFIG_KEY, "extended")
_MISSING = "<not recorded>"


def config_differences(saved: dict, now: dict) -> dict[str, tuple]:
    """``{setting: (saved value, value now)}`` for every setting of a run's configuration
    that differs (a checkpoint's ``config`` and the one of the run asked for).

    When both hold a :class:`~bnnlib.train.config.RunConfig` (``run_config``), its fields are
    compared (:meth:`~bnnlib.train.config.RunConfig.differences`; a field the older one lacks
    is its default), then the fit's settings that no field holds (``world_size``,
    ``n_train`` ...). Otherwise (a bare :func:`~bnnlib.train.loop.fit`, or a checkpoint from
    before run configurations) every recorded setting is compared, but those in
    :data:`NOT_COMPARED`, one missing on one side counting as its field's default
    (:meth:`~bnnlib.train.config.RunConfig.record_defaults`)."""
    diff: dict[str, tuple] = {}
    skip = set(NOT_COMPARED)
    if CONFIG_KEY in saved and CONFIG_KEY in now:
        try:
            diff = _named_differences(_configs(saved), _configs(now))
        except RunConfigFormatError as e:
            raise RunConfigError(f"the checkpoint's run configuration cannot be read: {e}") from e
        skip |= set(RECORD)  # compared just now
    defaults = RunConfig.record_defaults()
    for k in dict.fromkeys([*saved, *now]):
        if k in skip:
            continue
        a = saved.get(k, defaults.get(k, _MISSING))
        b = now.get(k, defaults.get(k, _MISSING))
        if a != b:
            diff[k] = (a, b)
    return diff


def _configs(config: dict) -> RunConfig:
    return RunConfig.from_dict(config[CONFIG_KEY])


def _named_differences(a: RunConfig, b: RunConfig) -> dict[str, tuple]:
    """``a.differences(b)``, each named as the history names it where it has a name
    (``depth``, ``float``, ``num_epochs`` ...: :data:`~bnnlib.train.config.RECORD`), else by
    its field."""
    ra, rb = a.record(), b.record()
    named = {k: (ra[k], rb[k]) for k in ra if ra[k] != rb[k]}
    covered = {RECORD[k][0] for k in named}
    return {**named, **{k: v for k, v in a.differences(b).items() if k not in covered}}


def extends_step_schedule(ckpt: dict, config: dict) -> bool:
    """True when ``config`` only asks for more epochs of a run on the step schedule.

    Torch7's schedule (halve the LR every N epochs) does not depend on the run's
    length, so such a run may be extended on resume (the Torch7 code itself trains
    with no epoch limit); the exponential schedule ends at ``lr_end`` after exactly
    ``num_epochs`` and may not.
    """
    saved = ckpt["config"]
    return (
        bool(saved.get("lr_halve_every"))
        and saved.get("lr_halve_every") == config.get("lr_halve_every")
        and config["num_epochs"] > saved["num_epochs"]
    )


def check_resume(ckpt: dict, config: dict, net: nn.Module, path) -> None:
    """Refuse a checkpoint of another run configuration, or of another model's shapes.

    More epochs are allowed for a run on the step schedule (:func:`extends_step_schedule`).
    """
    diff = config_differences(ckpt["config"], config)
    if extends_step_schedule(ckpt, config):
        diff.pop("num_epochs", None)
        diff.pop("epochs", None)
    if diff:
        shown = ", ".join(f"{k}: checkpoint {a!r} vs now {b!r}" for k, (a, b) in diff.items())
        raise RunConfigError(
            f"{path}: cannot resume with different settings ({shown}); "
            "resume with the same settings, or start a new run in another folder "
            "(or replace this one with --overwrite)"
        )
    saved = {k: tuple(v.shape) for k, v in ckpt["model"].items()}
    mine = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    if saved != mine:
        shown = [
            f"{k}: checkpoint {saved.get(k, 'none')} vs now {mine.get(k, 'none')}"
            for k in dict.fromkeys([*saved, *mine])
            if saved.get(k) != mine.get(k)
        ]
        raise RunConfigError(
            f"{path}: cannot resume: the checkpoint holds another model "
            f"({', '.join(shown[:5])}{', ...' if len(shown) > 5 else ''})"
        )


def run_config(
    train, val, test, *, num_epochs, batch_size, lr_start, lr_end, optimizer, glorot_scale,
    lr_halve_every, seed, world_size=1, fast=False, meta=None, **_ignored,
) -> dict:  # fmt: skip
    """The run configuration :func:`fit` records (``history.config``, the checkpoint's) and
    compares on resume (:func:`config_differences`); ``meta``'s entries are added."""
    return {
        "num_epochs": num_epochs, "batch_size": batch_size, "lr_start": lr_start,
        "lr_end": lr_end, "optimizer": optimizer, "glorot_scale": glorot_scale,
        "lr_halve_every": lr_halve_every, "seed": seed, "world_size": world_size,
        "dataset": train.name, "n_train": len(train),
        "n_val": len(val) if val is not None else 0,
        "n_test": len(test) if test is not None else 0, "fast": fast, **(meta or {}),
    }  # fmt: skip


# ------------------------------------------------------------------ the run folder

#: The files of a run in --out (the first two mark a folder as holding one).
RUN_FILES = ("checkpoint.pt", "history.json", "model.pt", "best_model.pt")
LOCK = ".lock"


def _fail(message: str):
    raise RunFolderError(message)


def _take_lock(out: Path) -> FileLock:
    """Hold ``out/.lock`` (:class:`bnnlib.files.FileLock`: released by the kernel if this
    process dies), or raise :class:`RunFolderError` naming the run that holds it."""
    path = out / LOCK
    lock = FileLock(path)
    try:
        lock.acquire()
    except LockHeld as e:
        who = f"process {e.pid}" if e.pid else "another process"
        if e.host and e.host != platform.node():
            who += f" on {e.host}"
        _fail(
            f"{out} is in use by {who} ({path}): another run trains in this folder; wait for "
            "it to end, or choose another --out"
        )
    except OSError as e:
        _fail(f"cannot write to --out {out}: {e.strerror or e}")
    pid, _ = lock.previous
    if pid is not None:
        print(
            f"{path}: taking over the stale lock of process {pid}, which no longer holds it",
            file=sys.stderr, flush=True,
        )  # fmt: skip
    return lock


def claim_run_folder(out: Path, resume: bool, overwrite: bool) -> FileLock:
    """Create ``out``, take its lock, check it against --resume/--overwrite and clean it.

    Returns the held lock (released by the caller at exit, by the kernel if it dies)."""
    if resume and overwrite:
        _fail("--resume continues the run in --out, --overwrite replaces it: not both")
    no_checkpoint = (
        f"--resume: {out} holds no checkpoint.pt: nothing to resume; start a new run "
        "without --resume"
    )
    if resume and not (out / "checkpoint.pt").exists():  # before creating anything
        _fail(no_checkpoint)
    if out.is_symlink() and not out.exists():
        _fail(f"--out {out} is a symbolic link to {os.readlink(out)}, which does not exist")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        _fail(f"cannot write to --out {out}: {e.strerror or e}")
    lock = _take_lock(out)
    try:
        held = [n for n in RUN_FILES[:2] if (out / n).exists()]
        if resume and not (out / "checkpoint.pt").exists():  # removed meanwhile
            _fail(no_checkpoint)
        if held and not (resume or overwrite):
            _fail(f"{out} holds a run ({', '.join(held)}): continue it with --resume, "
                "replace it with --overwrite, or choose another --out",
            )  # fmt: skip
        if overwrite:
            gone = [n for n in RUN_FILES if (out / n).exists()]
            for name in gone:
                (out / name).unlink()
            if gone:
                print(f"--overwrite: removed {', '.join(gone)} from {out}", file=sys.stderr)
        remove_stale_temporaries(out, RUN_FILES)  # left by a killed process
    except BaseException:
        release(lock)
        raise
    return lock


def release(lock: FileLock | None) -> None:
    if lock is not None:
        lock.release()
