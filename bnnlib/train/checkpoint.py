"""Training checkpoints: their format, checksum, atomic save, checked load and RNG states.

A checkpoint (written by :func:`bnnlib.train.fit` after every epoch) is a dict of tensors
and plain containers: ``format``, ``epoch``, ``config``, ``model``, ``optimizer``,
``scheduler``, ``best_model``, ``history``, ``shuffle``, ``rng`` and ``sha256``, the
SHA-256 of all the others (every tensor's dtype, shape and bytes, every key and value, in
order), checked on load: a damaged file gives :class:`CheckpointError`. Checkpoints of
format 1, written before the checksum, have none and still load unchecked. It is written
atomically by the one writer, :func:`bnnlib.files.atomic_write` (temporary file in the same
folder, fsync, ``os.replace``); the temporaries of an interrupted write are removed by
:func:`remove_stale_temporaries`. It loads with
``torch.load(weights_only=True)``: tensors and plain containers only, never arbitrary
pickles.
"""

from __future__ import annotations

import hashlib
import os
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch
from torch import nn

from bnnlib.errors import BadInput
from bnnlib.files import atomic_write, remove_leftovers

__all__ = ["CHECKPOINT_FORMAT", "CheckpointError", "atomic_save", "load_checkpoint"]
__all__ += ["save_checkpoint", "remove_stale_temporaries"]

#: 2: with the ``sha256`` of the contents (format 1, without, still loads).
CHECKPOINT_FORMAT = 2
_READABLE_FORMATS = (1, 2)


class CheckpointError(BadInput):
    """A checkpoint that cannot be used: unreadable, not ours, or damaged."""


def atomic_save(obj, path: str | os.PathLike) -> None:
    """``torch.save`` that leaves the previous file intact if anything fails mid-write."""
    atomic_write(path, lambda f: torch.save(obj, f))


def _digest(obj) -> str:
    """SHA-256 of a checkpoint's contents: keys, values, tensors' dtype, shape and bytes,
    in order (the same after a ``torch.save``/``torch.load`` round trip)."""
    h = hashlib.sha256()

    def feed(x) -> None:
        if isinstance(x, torch.Tensor):
            t = x.detach().to("cpu").contiguous()
            h.update(f"T{t.dtype}{tuple(t.shape)};".encode())
            if t.numel():
                h.update(t.reshape(-1).view(torch.uint8).numpy().data)
        elif isinstance(x, Mapping):
            h.update(f"M{len(x)};".encode())
            for k, v in x.items():
                feed(k)
                feed(v)
        elif isinstance(x, (list, tuple)):
            h.update(f"{'L' if isinstance(x, list) else 'U'}{len(x)};".encode())
            for v in x:
                feed(v)
        elif isinstance(x, str):
            b = x.encode()
            h.update(f"S{len(b)};".encode() + b)
        elif isinstance(x, (bytes, bytearray)):
            h.update(f"B{len(x)};".encode() + bytes(x))
        else:  # None, bool, int, float (repr is exact), torch.dtype ...
            h.update(f"{type(x).__name__}:{x!r};".encode())

    feed(obj)
    return h.hexdigest()


def save_checkpoint(state: dict, path: str | os.PathLike) -> None:
    """Write ``state`` atomically as a checkpoint of :data:`CHECKPOINT_FORMAT`, with the
    SHA-256 of its contents (``sha256``, checked by :func:`load_checkpoint`)."""
    state = {"format": CHECKPOINT_FORMAT, **state}
    state["sha256"] = _digest(state)
    atomic_save(state, path)


def load_checkpoint(path: str | os.PathLike) -> dict:
    """Load a checkpoint with ``weights_only=True`` (tensors and plain containers only)
    and check its SHA-256 (format 2; format 1, older, has none and loads unchecked)."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(
            f"{path}: not a readable bnnlib checkpoint, damaged or of another kind "
            f"({type(e).__name__}: {e}); delete it or choose another --out folder"
        ) from e
    if not isinstance(ckpt, dict) or ckpt.get("format") not in _READABLE_FORMATS:
        raise CheckpointError(f"{path}: not a bnnlib checkpoint (format {CHECKPOINT_FORMAT})")
    if ckpt["format"] >= 2:
        recorded = ckpt.get("sha256")
        if not isinstance(recorded, str):
            raise CheckpointError(
                f"{path}: damaged checkpoint: no checksum (format {ckpt['format']} has one); "
                "restore it from a copy, or start again with --overwrite"
            )
        actual = _digest({k: v for k, v in ckpt.items() if k != "sha256"})
        if actual != recorded:
            raise CheckpointError(
                f"{path}: damaged checkpoint: the SHA-256 of its contents ({actual[:16]}...) "
                f"is not the one written with it ({recorded[:16]}...); restore it from a "
                "copy, or start again with --overwrite"
            )
    return ckpt


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def cpu_state(net: nn.Module) -> dict:
    return {k: v.detach().to("cpu", copy=True) for k, v in net.state_dict().items()}


def remove_stale_temporaries(folder: Path, names: Iterable[str]) -> None:
    """Remove the temporary files of ``atomic_write`` (``.NAME.*.tmp``) that a killed
    process left in ``folder`` for each of ``names`` (the caller holds the folder's lock:
    :func:`bnnlib.files.remove_leftovers` with ``held``), saying so on stderr."""
    for name in names:
        for tmp in remove_leftovers(folder, name, held=True):
            print(
                f"{folder}: removed a stale temporary file {tmp.name} (an interrupted write)",
                file=sys.stderr,
            )  # fmt: skip
