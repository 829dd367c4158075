"""A whole training run from a :class:`~bnnlib.train.config.RunConfig`: data, model, fit, files.

:func:`train` is what ``python -m bnnlib.train`` does once its flags are resolved, as a
library call (``bnnlib.repro.reproduce`` calls it too): claim the run folder
(:mod:`bnnlib.train.runfolder`), load the data, seed torch, build the model, :func:`fit`
with the configuration recorded in the history (``config["run_config"]``), and save
``model.pt`` (the final weights) and ``best_model.pt`` (the best-validation weights) beside
``checkpoint.pt`` and ``history.json``. How it runs but does not change the result
(:class:`RunOptions`: the folder, device, time limit, progress) is kept apart from the
configuration.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from bnnlib import data as bdata
from bnnlib.hardware import hardware
from bnnlib.settings import retain_freed_memory
from bnnlib.train.checkpoint import atomic_save, cpu_state
from bnnlib.train.config import CONFIG_KEY, RunConfig
from bnnlib.train.history import History
from bnnlib.train.loop import as_device, fit, rank_and_world
from bnnlib.train.runfolder import claim_run_folder, release

__all__ = ["RunOptions", "train", "DataError", "DeviceError", "check_device"]


class DataError(ValueError):
    """The run's data set could not be loaded (the message says which file and why)."""


class DeviceError(ValueError):
    """The device asked for does not exist, or this machine has none of it."""


@dataclass(frozen=True)
class RunOptions:
    """How a run is carried out (not recorded as part of its configuration).

    ``out``: the run folder (None: nothing is saved); ``resume``/``overwrite``: what to do
    with a run already there; ``max_time``: seconds, stop cleanly at the last epoch boundary
    that fits; ``device``: ``cpu``, ``cuda``, ``cuda:1`` (None: the GPU if there is one);
    ``data_root``: where the data sets are (None: ``$BNN_DATA_DIR``, else the cache);
    ``command``: the command line, recorded for the reader.
    """

    out: Path | None = None
    resume: bool = False
    overwrite: bool = False
    max_time: float | None = None
    device: str | None = None
    data_root: Any = None
    progress: bool = True
    command: list[str] | None = None


def _init_distributed(device_choice: str | None) -> tuple[int, torch.device]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    device = as_device(device_choice)
    if world > 1:
        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return world, device


def _meta(config: RunConfig, options: RunOptions, device, splits) -> dict:
    """What the history records beside the fit's own settings: the configuration, and its
    settings under the names the history has always used (:meth:`RunConfig.record`)."""
    return {
        **config.record(),
        "argv": list(options.command or []),
        "hardware": hardware(device),
        "data": bdata.describe_splits(*splits),
        CONFIG_KEY: config.to_dict(),
    }


def check_device(device: str | None) -> None:
    """Refuse (:class:`DeviceError`) a ``--device`` torch does not know or this machine lacks."""
    if device is None:
        return
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise DeviceError(
            f"--device {device} is not a device: use cpu, cuda or cuda:N (or leave it out)"
        ) from None
    if dev.type == "cuda":
        n = torch.cuda.device_count()
        if n == 0:
            raise DeviceError(
                f"--device {device}: this machine has no CUDA GPU that torch can use; "
                "use --device cpu (or leave --device out)"
            )
        if dev.index is not None and dev.index >= n:
            raise DeviceError(
                f"--device {device}: this machine has {n} GPU(s): cuda:0 to cuda:{n - 1}"
            )
    elif dev.type != "cpu":
        raise DeviceError(f"--device {device}: training runs on cpu or cuda, not {dev.type}")


def train(config: RunConfig, options: RunOptions = RunOptions()) -> History:
    """Train ``config`` as ``options`` say; the :class:`History` of the run.

    Raises :class:`~bnnlib.train.runfolder.RunFolderError` (the folder cannot be used),
    :class:`~bnnlib.train.runfolder.RunConfigError` and
    :class:`~bnnlib.train.checkpoint.CheckpointError` (a resume that does not match),
    :class:`~bnnlib.train.loop.NonFiniteLossError`, and the data loaders' errors.
    """
    check_device(options.device)
    lock = None  # rank 0 owns the run folder (the only rank that writes)
    if options.out is not None and int(os.environ.get("RANK", "0")) == 0:
        lock = claim_run_folder(Path(options.out), options.resume, options.overwrite)
    try:
        return _train(config, options)
    finally:
        release(lock)


def _restore_history(history: History, path: Path) -> None:
    """Write ``path`` again when it is missing after the fit (a finished run resumed after its
    history.json was deleted: no epoch was left to write it), and say so."""
    if not path.exists():
        history.to_json(path)
        print(
            f"{path} was missing: written again from the checkpoint's history "
            f"({len(history.epochs)} epochs; the run had no epoch left to train)",
            file=sys.stderr,
        )


def _train(config: RunConfig, options: RunOptions) -> History:
    retain_freed_memory()  # glibc keeps big freed blocks: about 2x faster CPU steps
    world, device = _init_distributed(options.device)
    try:
        try:
            train_set, val, test = config.load_data(options.data_root)
        except (ValueError, FileNotFoundError) as e:
            raise DataError(str(e)) from e
        shapes = {d.split: tuple(d.shape) for d in (train_set, val, test) if d is not None}
        if len(set(shapes.values())) > 1:
            raise DataError(
                f"{config.dataset}: the splits hold images of different shapes {shapes}; the "
                "test images must have the training images' shape"
            )
        torch.manual_seed(config.seed)  # the initial weights
        net = config.build_model(train_set.shape, train_set.num_classes)
        out = Path(options.out) if options.out is not None else None
        if rank_and_world()[0] == 0 and options.progress:
            print(config.describe(train_set.name), flush=True)
        history = fit(
            net, train_set, val, test,
            num_epochs=config.epochs, batch_size=config.batch_size, lr_start=config.lr_start,
            lr_end=config.lr_end, optimizer=config.optimizer, glorot_scale=config.glorot_scale,
            lr_halve_every=config.lr_halve_every, max_time=options.max_time, seed=config.seed,
            device=device, checkpoint=out / "checkpoint.pt" if out else None,
            resume=options.resume, history_path=out / "history.json" if out else None,
            progress=options.progress, meta=_meta(config, options, device, (train_set, val, test)),
            fast=config.fast, eval_batch_size=config.eval_batch_size,
        )  # fmt: skip
        if rank_and_world()[0] == 0:
            if out is not None:
                _restore_history(history, out / "history.json")
                atomic_save(cpu_state(net), out / "model.pt")
                if history.best_state is not None:
                    atomic_save(history.best_state, out / "best_model.pt")
            times = sorted(r["time"] for r in history.epochs)
            print(f"{history}; median {times[len(times) // 2]:.1f} s per training epoch")
        if world > 1:
            # Leave together: a rank that tears gloo down while rank 0 still writes its files
            # can abort ("terminate called without an active exception"), failing the run.
            dist.barrier()
        return history
    finally:
        if world > 1 and dist.is_initialized():
            dist.destroy_process_group()
