"""Training a BNN the paper's way: square hinge, Adam, exponential LR, best-validation test error.

The recipe of the paper's Theano code (Section 2), for every model:

* the loss is the square hinge loss of an L2-SVM output layer,
  ``L = mean(max(0, 1 - t * y)^2)`` with targets ``t`` in {-1, +1}
  (:func:`bnnlib.losses.square_hinge`);
* the optimizer is Adam with the per-layer "Glorot" LR scale and clipping of
  the latent binary weights to [-1, 1] after each step, or the shift-based
  AdaMax of Algorithm 4 (:mod:`bnnlib.optim`);
* the learning rate decays exponentially once per epoch, from ``lr_start`` at
  the first epoch to ``lr_end`` after the last one::

      lr(e) = lr_start * (lr_end / lr_start)^(e / num_epochs),  e = 0, 1, ...

* mini-batches are drawn without replacement from a fresh permutation of the
  training set every epoch; a last incomplete batch is dropped, as in the
  paper's code (``len(X) // batch_size`` batches);
* the reported test error is the one *at the epoch of best validation error*,
  not the best test error.

What each epoch records (:class:`History`, errors are fractions in [0, 1]):

``loss``
    the mean training loss over the epoch's mini-batches;
``train_error``
    the error on the mini-batches *as they were trained on*: train mode, so with
    dropout and batch statistics, before each update. This is the training curve
    of the paper's Figure 1 and costs no extra pass; the error of the final
    weights on the training set in eval mode is lower;
``val_error``, ``test_error``
    eval mode (running batch-norm statistics, no dropout, deterministic Sign);
``lr``, ``time``
    the base LR of the epoch (binary layers use it times their Glorot scale)
    and the seconds of the training passes (``eval_time``: of the evaluation).

Speed. The whole dataset is moved to the training device once; a batch is an
index slice of the epoch's permutation. Losses and error counts are summed on
the device and read back once per epoch (``.item()`` syncs a GPU).

Reproducibility. ``seed`` seeds a CPU ``torch.Generator`` for the shuffling
and the global torch RNG (dropout, stochastic binarization; ``seed + rank``
under DDP). A checkpoint is written atomically after every epoch (temporary
file in the same folder, fsync, ``os.replace``) and holds the model,
optimizer, scheduler, best-validation weights, history and all RNG states, so
``resume=True`` ends with the same weights and history, bit for bit, as an
uninterrupted run. Checkpoints load with ``torch.load(weights_only=True)``:
tensors and plain containers only, never arbitrary pickles.

Several processes. ``torchrun --nproc_per_node=N -m bnnlib.train ...`` runs
DistributedDataParallel (gloo on CPU, nccl on GPU, detected from
``WORLD_SIZE``). Each rank takes its contiguous slice of every global batch of
``batch_size`` samples; gradients are averaged, so the update is that of the
global batch. Batch-norm *batch* statistics are computed per rank on its slice
(no SyncBatchNorm), so results differ slightly from one process; the running
statistics of rank 0 are broadcast before each forward (DDP's default) and
before evaluation. Only rank 0 writes the history and checkpoints and shows
progress.

Command line (``--help`` lists everything)::

    python -m bnnlib.train --model mnist_mlp --hidden 1024 --epochs 10 --out runs/mlp

Unset options take the paper's values for the model (epochs, batch size, LR
start and end: mnist_mlp 1000, 100, 3e-3 -> 3e-7; cifar10_convnet 500, 50,
1e-3 -> 3e-7; svhn_convnet 200, 50, 1e-3 -> 1e-6) with one documented
exception, the *short recipe* (``--recipe``), used by default for runs of fewer
than 100 epochs: the LR ends at ``lr_start / 100`` instead of the paper's
1/10,000, and the MLP has no hidden dropout (input dropout 0.2 stays). Both
regularize a 1000-epoch run but only slow a 10-epoch one. Measured on MNIST,
3 x 1024 MLP, 10 epochs, seed 0, test error at the best-validation epoch:

=================================================  ==========
LR 3e-3 -> 3e-7, hidden dropout 0.5 (the paper's)  3.79%
LR 3e-3 -> 3e-5, hidden dropout 0.5                3.12%
LR 3e-3 -> 3e-4, hidden dropout 0.5                3.37%
LR 1e-2 -> 1e-4, hidden dropout 0.5                3.06%
LR 3e-3 -> 3e-7, no hidden dropout                 2.31%
LR 3e-3 -> 3e-5, no hidden dropout (short recipe)  1.92%
=================================================  ==========

``--recipe paper`` (or ``--lr-end``/``--dropout-hidden``) restores the paper's
values for any length. The short recipe was tuned on the MLP only; for the
ConvNets it changes just the LR end.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from tqdm.auto import tqdm

from . import data as bdata
from . import models
from .losses import pm1_targets, square_hinge
from .machine import atomic_write, retain_freed_memory
from .optim import Adam, ShiftAdaMax, exponential_lr, step_lr

__all__ = [
    "History",
    "fit",
    "evaluate",
    "predict",
    "make_optimizer",
    "atomic_save",
    "load_checkpoint",
    "PAPER_DEFAULTS",
    "main",
]

CHECKPOINT_FORMAT = 1

# Runs shorter than this use the "short" recipe by default (see the module docstring).
SHORT_RUN_EPOCHS = 100
SHORT_RECIPE = {"lr_end_ratio": 1e-2, "dropout": 0.0}

# The paper's schedules (Theano code): epochs, batch size, LR start and end.
PAPER_DEFAULTS = {
    "mnist_mlp": {"dataset": "mnist", "epochs": 1000, "batch_size": 100, "lr": (3e-3, 3e-7)},
    "cifar10_convnet": {"dataset": "cifar10", "epochs": 500, "batch_size": 50, "lr": (1e-3, 3e-7)},
    "svhn_convnet": {"dataset": "svhn", "epochs": 200, "batch_size": 50, "lr": (1e-3, 1e-6)},
}


# The Torch7 code's MNIST setup (itayhubara/BinaryNet: Main_BinaryNet_MNIST.lua,
# Models/BinaryNet_MNIST_Model.lua, adaMax_binary_clip_shift.lua,
# BatchNormalizationShiftPow2.lua), Table 1's 1.40%. What we do differently, on purpose:
# the biases of its BinaryLinear layers are left out (batch norm follows each one and
# cancels them exactly); its input normalization (mean/std) is our 2x/255 - 1, which the
# first batch norm makes equivalent (binary weights, so an affine input map only shifts
# and scales each unit's pre-activation); shift batch norm keeps a running variance
# (rounded by AP2 at evaluation) where Torch7 averages the inverse standard deviation.
PRESETS = {
    "torch7": {
        "model": "mnist_mlp", "hidden": 2048, "dropout_in": 0.0, "dropout_hidden": 0.0,
        "batchnorm": "shift", "last_batchnorm": "standard", "bn_eps": 1e-5,
        "bn_momentum": 0.125, "stochastic_activations": True, "stochastic_weights": False,
        "optimizer": "shift_adamax_torch7", "glorot_scale": "torch7", "lr_start": 2.0**-6,
        "lr_halve_every": 20, "batch_size": 100, "epochs": 100,
    },
}  # fmt: skip


# --------------------------------------------------------------------------- History


@dataclass
class History:
    """Per-epoch records (``epoch`` counts from 1) and the paper's best-validation summary."""

    epochs: list[dict] = field(default_factory=list)
    config: dict = field(default_factory=dict)
    #: Why training ended before ``num_epochs`` (e.g. the time limit), else None.
    stopped: str | None = None
    #: The best-validation weights (CPU state dict) after :func:`fit`; not written to JSON.
    best_state: dict | None = field(default=None, repr=False, compare=False)

    @property
    def best_epoch(self) -> int | None:
        """The epoch of lowest validation error (the first one on ties; the last if no val)."""
        if not self.epochs:
            return None
        scored = [r for r in self.epochs if r.get("val_error") is not None]
        if not scored:
            return self.epochs[-1]["epoch"]
        return min(scored, key=lambda r: (r["val_error"], r["epoch"]))["epoch"]

    def _at_best(self, key: str) -> float | None:
        best = self.best_epoch
        return None if best is None else next(r[key] for r in self.epochs if r["epoch"] == best)

    @property
    def best_val_error(self) -> float | None:
        return self._at_best("val_error")

    @property
    def test_error_at_best(self) -> float | None:
        """The test error at the best-validation epoch: the number the paper reports."""
        return self._at_best("test_error")

    def to_dict(self) -> dict:
        return {
            "config": dict(self.config),
            "epochs": [dict(r) for r in self.epochs],
            "best_epoch": self.best_epoch,
            "best_val_error": self.best_val_error,
            "test_error_at_best": self.test_error_at_best,
            "stopped": self.stopped,
        }

    @classmethod
    def from_dict(cls, d: dict) -> History:
        return cls(
            epochs=[dict(r) for r in d.get("epochs", [])],
            config=dict(d.get("config", {})),
            stopped=d.get("stopped"),
        )

    def to_json(self, path: str | os.PathLike) -> None:
        """Write :meth:`to_dict` as JSON, atomically."""
        text = json.dumps(self.to_dict(), indent=1)
        atomic_write(path, text.encode())

    def __str__(self) -> str:
        if not self.epochs:
            return "History(no epochs)"
        best = self.best_epoch
        return (
            f"{len(self.epochs)} epochs; best validation epoch {best}: "
            f"val error {_pct(self.best_val_error)}, test error {_pct(self.test_error_at_best)}"
        )


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}%"


# --------------------------------------------------------------------------- checkpoints


def atomic_save(obj, path: str | os.PathLike) -> None:
    """``torch.save`` that leaves the previous file intact if anything fails mid-write."""
    atomic_write(path, lambda f: torch.save(obj, f))


def load_checkpoint(path: str | os.PathLike) -> dict:
    """Load a checkpoint with ``weights_only=True`` (tensors and plain containers only)."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(
            f"{path}: not a readable bnnlib checkpoint ({type(e).__name__}: {e}); "
            "delete it or choose another --out folder"
        ) from e
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path}: not a bnnlib checkpoint (format {CHECKPOINT_FORMAT})")
    return ckpt


def _rng_state() -> dict:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _cpu_state(net: nn.Module) -> dict:
    return {k: v.detach().to("cpu", copy=True) for k, v in net.state_dict().items()}


# --------------------------------------------------------------------------- evaluation


def _dist() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _interactive() -> bool:
    """A terminal or a Jupyter kernel: somewhere a progress bar redraws in place."""
    return sys.stderr.isatty() or "ipykernel" in sys.modules


def _device(device) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _net_device(net: nn.Module) -> torch.device:
    p = next(net.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


@torch.no_grad()
def _count_errors(net: nn.Module, X: torch.Tensor, y: torch.Tensor, batch_size: int):
    """Misclassified count as a device tensor (no host sync), eval mode restored after."""
    was_training = net.training
    net.eval()
    errors = torch.zeros((), dtype=torch.long, device=X.device)
    for i in range(0, len(y), batch_size):
        errors += (net(X[i : i + batch_size]).argmax(1) != y[i : i + batch_size]).sum()
    net.train(was_training)
    return errors


def evaluate(net: nn.Module, dataset: bdata.Dataset, batch_size: int = 1000, device=None) -> float:
    """The error fraction of ``net`` on ``dataset`` in eval mode (no dropout, running BN stats)."""
    device = _net_device(net) if device is None else torch.device(device)
    net.to(device)
    X, y = dataset.X.to(device), dataset.y.to(device)
    return _count_errors(net, X, y, batch_size).item() / max(len(dataset), 1)


@torch.no_grad()
def predict(net: nn.Module, X: torch.Tensor, batch_size: int = 1000, device=None) -> torch.Tensor:
    """The predicted classes (int64, on X's device) of ``net`` in eval mode."""
    device = _net_device(net) if device is None else torch.device(device)
    was_training = net.training
    net.to(device).eval()
    out = [net(X[i : i + batch_size].to(device)).argmax(1) for i in range(0, len(X), batch_size)]
    net.train(was_training)
    return torch.cat(out).to(X.device) if out else torch.empty(0, dtype=torch.long)


def _dist_errors(net: nn.Module, ds, batch_size: int, rank: int, world: int) -> float | None:
    """Error fraction; under DDP each rank counts its shard with rank 0's BN statistics."""
    if ds is None or len(ds) == 0:
        return None
    if world == 1:
        return _count_errors(net, ds.X, ds.y, batch_size).item() / len(ds)
    for b in net.buffers():  # the same running statistics on every rank
        dist.broadcast(b, 0)
    lo, hi = rank * len(ds) // world, (rank + 1) * len(ds) // world
    errors = _count_errors(net, ds.X[lo:hi], ds.y[lo:hi], batch_size)
    dist.all_reduce(errors)
    return errors.item() / len(ds)


# --------------------------------------------------------------------------- training


OPTIMIZERS = ("adam", "shift_adamax", "shift_adamax_torch7")


def make_optimizer(
    net: nn.Module, name: str, lr: float, glorot_scale: bool | str = True
) -> torch.optim.Optimizer:
    """``"adam"`` (fused kernels where PyTorch has them), ``"shift_adamax"`` (Algorithm 4)
    or ``"shift_adamax_torch7"`` (the Torch7 code's variant), over ``net``."""
    if name == "adam":
        if _net_device(net).type in ("cpu", "cuda"):
            with contextlib.suppress(RuntimeError, ValueError):
                return Adam(net, lr=lr, glorot_scale=glorot_scale, fused=True)
        return Adam(net, lr=lr, glorot_scale=glorot_scale)
    if name in ("shift_adamax", "shift_adamax_torch7"):
        variant = "torch7" if name.endswith("torch7") else "paper"
        return ShiftAdaMax(net, lr=lr, glorot_scale=glorot_scale, variant=variant)
    raise ValueError(f"unknown optimizer {name!r}; choose one of {OPTIMIZERS}")


def make_scheduler(opt, lr_start: float, lr_end: float, num_epochs: int, halve_every):
    """The Theano code's exponential decay, or (``halve_every=N``) Torch7's halving every N."""
    if halve_every:
        return step_lr(opt, halve_every, 0.5)
    return exponential_lr(opt, lr_start, lr_end, num_epochs)


def _base_lr(opt: torch.optim.Optimizer) -> float:
    g = opt.param_groups[0]
    return g["lr"] / g.get("lr_scale", 1.0)


def _train_epoch(model, opt, X, Y, T, perm, batch_size, rank, world, bar):
    """One pass over the permutation; returns device tensors (loss sum, error count, samples)."""
    model.train()
    lo, hi = rank * batch_size // world, (rank + 1) * batch_size // world
    loss_sum = torch.zeros((), device=X.device)
    errors = torch.zeros((), dtype=torch.long, device=X.device)
    steps = len(perm) // batch_size
    for i in range(steps):
        idx = perm[i * batch_size : (i + 1) * batch_size][lo:hi]
        out = model(X[idx])
        loss = square_hinge(out, T[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        loss_sum += loss.detach() * len(idx)
        errors += (out.detach().argmax(1) != Y[idx]).sum()
        if bar is not None:
            bar.update(1)
    if world > 1:
        dist.all_reduce(loss_sum)
        dist.all_reduce(errors)
    return loss_sum, errors, steps * batch_size


def _check_resume(ckpt: dict, config: dict, path) -> None:
    keys = (
        "num_epochs", "batch_size", "lr_start", "lr_end", "lr_halve_every", "optimizer",
        "glorot_scale", "seed", "world_size",
    )  # fmt: skip
    diff = {
        k: (ckpt["config"].get(k), config[k]) for k in keys if ckpt["config"].get(k) != config[k]
    }
    if diff:
        shown = ", ".join(f"{k}: checkpoint {a!r} vs now {b!r}" for k, (a, b) in diff.items())
        raise ValueError(
            f"{path}: cannot resume with different settings ({shown}); "
            "resume with the same settings or start a new run in another folder"
        )


def fit(
    net: nn.Module,
    train: bdata.Dataset,
    val: bdata.Dataset | None = None,
    test: bdata.Dataset | None = None,
    *,
    num_epochs: int,
    batch_size: int = 100,
    lr_start: float = 3e-3,
    lr_end: float = 3e-7,
    optimizer: str = "adam",
    glorot_scale: bool | str = True,
    lr_halve_every: int | None = None,
    max_time: float | None = None,
    seed: int = 0,
    device=None,
    checkpoint: str | os.PathLike | None = None,
    resume: bool = False,
    history_path: str | os.PathLike | None = None,
    progress: bool = True,
    callback: Callable[[History], None] | None = None,
    eval_batch_size: int = 1000,
    meta: dict | None = None,
) -> History:
    """Train ``net`` on ``train`` for ``num_epochs`` epochs; returns the :class:`History`.

    After every epoch: evaluate on ``val`` and ``test``, keep the best-validation
    weights (``history.best_epoch``; the net keeps its *final* weights), write
    ``history_path`` (JSON) and ``checkpoint`` (atomic), then call
    ``callback(history)``. ``resume=True`` continues from ``checkpoint`` if it
    exists, with the same settings. ``lr_halve_every=N`` replaces the exponential
    decay by Torch7's halving every N epochs (``lr_end`` is then unused).
    ``max_time`` (seconds) stops cleanly at the end of the epoch after which
    another one would not fit, and says so in ``history.stopped``; a resumed
    run gets the time again. Under ``torchrun`` the process group must be
    initialized (the CLI does it); ``batch_size`` is then the global batch.
    ``meta`` (plain values) is added to ``history.config`` for the record.
    """
    rank, world = _dist()
    device = _device(device)
    if num_epochs < 1:
        raise ValueError(f"num_epochs must be >= 1, got {num_epochs}")
    if len(train) < batch_size:
        raise ValueError(
            f"the training set ({len(train)}) is smaller than one batch ({batch_size})"
        )
    if batch_size % world:
        raise ValueError(f"batch_size {batch_size} must be a multiple of the {world} processes")
    config = {
        "num_epochs": num_epochs,
        "batch_size": batch_size,
        "lr_start": lr_start,
        "lr_end": lr_end,
        "optimizer": optimizer,
        "glorot_scale": glorot_scale,
        "lr_halve_every": lr_halve_every,
        "seed": seed,
        "world_size": world,
        "dataset": train.name,
        "n_train": len(train),
        "n_val": len(val) if val is not None else 0,
        "n_test": len(test) if test is not None else 0,
        **(meta or {}),
    }
    net.to(device)
    opt = make_optimizer(net, optimizer, lr_start, glorot_scale)
    scheduler = make_scheduler(opt, lr_start, lr_end, num_epochs, lr_halve_every)
    t_fit = time.perf_counter()
    shuffle = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed + rank)  # dropout and stochastic binarization
    history = History(config=config)
    best_state, start = None, 0

    ckpt_path = Path(checkpoint) if checkpoint is not None else None
    if resume and ckpt_path is not None and ckpt_path.exists():
        ckpt = load_checkpoint(ckpt_path)
        _check_resume(ckpt, config, ckpt_path)
        net.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        history = History.from_dict(ckpt["history"])
        best_state, start = ckpt["best_model"], ckpt["epoch"]
        shuffle.set_state(ckpt["shuffle"])
        _set_rng_state(ckpt["rng"][rank])

    model = net
    if world > 1:
        ids = None
        if device.type == "cuda":
            ids = [device.index if device.index is not None else torch.cuda.current_device()]
        model = nn.parallel.DistributedDataParallel(net, device_ids=ids)

    # The data goes to the device once; targets in {-1, +1} for the square hinge loss.
    X, Y = train.X.to(device), train.y.to(device)
    T = pm1_targets(Y, train.num_classes)
    val_d = val.to(device) if val is not None else None
    test_d = test.to(device) if test is not None else None

    show = progress and rank == 0
    # Bars only where they redraw in place (a terminal, a notebook); in a log file
    # (non-TTY) the per-epoch lines below are the progress, so the log stays short.
    live = show and _interactive()
    steps = len(train) // batch_size
    ebar = tqdm(
        total=num_epochs, initial=start, desc="epochs", unit="ep", disable=not live,
        mininterval=1, dynamic_ncols=True,
    )  # fmt: skip
    for epoch in range(start, num_epochs):
        t0 = time.perf_counter()
        perm = torch.randperm(len(train), generator=shuffle).to(device)
        bbar = tqdm(
            total=steps,
            desc=f"epoch {epoch + 1}",
            leave=False,
            disable=not live,
            mininterval=1,
        )
        lr = _base_lr(opt)
        loss_sum, errors, n = _train_epoch(model, opt, X, Y, T, perm, batch_size, rank, world, bbar)
        loss, train_error = loss_sum.item() / n, errors.item() / n  # the epoch's one sync
        bbar.close()
        t_train = time.perf_counter() - t0
        scheduler.step()
        val_error = _dist_errors(net, val_d, eval_batch_size, rank, world)
        test_error = _dist_errors(net, test_d, eval_batch_size, rank, world)
        best_before = history.best_val_error
        history.epochs.append(
            {
                "epoch": epoch + 1,
                "loss": loss,
                "train_error": train_error,
                "val_error": val_error,
                "test_error": test_error,
                "lr": lr,
                "time": t_train,
                "eval_time": time.perf_counter() - t0 - t_train,
            }
        )
        if val_error is None or best_before is None or val_error < best_before:
            best_state = _cpu_state(net)
        if world > 1:
            rngs = [None] * world
            dist.all_gather_object(rngs, _rng_state())
        else:
            rngs = [_rng_state()]
        if rank == 0:
            if ckpt_path is not None:
                atomic_save(
                    {
                        "format": CHECKPOINT_FORMAT,
                        "epoch": epoch + 1,
                        "config": config,
                        "model": net.state_dict(),
                        "optimizer": opt.state_dict(),
                        "scheduler": scheduler.state_dict(),
                        "best_model": best_state,
                        "history": history.to_dict(),
                        "shuffle": shuffle.get_state(),
                        "rng": rngs,
                    },
                    ckpt_path,
                )
            if history_path is not None:
                history.to_json(history_path)
        if show:
            r = history.epochs[-1]
            tqdm.write(
                f"epoch {r['epoch']}/{num_epochs}: loss {loss:.4f}  train {_pct(train_error)}  "
                f"val {_pct(val_error)}  test {_pct(test_error)}  lr {lr:.2e}  {t_train:.1f}s"
            )
        ebar.update(1)
        if callback is not None:
            callback(history)
        elapsed = time.perf_counter() - t_fit
        if max_time is not None and epoch + 1 < num_epochs:
            # Stop if one more epoch like the last one would overrun the budget.
            if elapsed + (time.perf_counter() - t0) > max_time:
                history.stopped = (
                    f"time limit: stopped after epoch {epoch + 1} of {num_epochs} "
                    f"({elapsed:.0f} s of {max_time:.0f} s)"
                )
                if rank == 0 and history_path is not None:
                    history.to_json(history_path)
                if show:
                    tqdm.write(history.stopped)
                break
    ebar.close()
    history.best_state = best_state
    return history


# --------------------------------------------------------------------------- command line


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bnnlib.train",
        description="Train one of the paper's BNNs. Unset options take the paper's values for "
        "the model (mnist_mlp: 1000 epochs, batch 100, LR 3e-3 -> 3e-7; cifar10_convnet: 500, "
        "50, 1e-3 -> 3e-7; svhn_convnet: 200, 50, 1e-3 -> 1e-6). Run under "
        "`torchrun --nproc_per_node=N` for data-parallel training.",
    )
    p.add_argument("--model", choices=sorted(models.MODELS), help="required unless --preset")
    p.add_argument(
        "--dataset",
        help="mnist, fashion_mnist, cifar10, svhn or npz:<path> "
        "(default: mnist for mnist_mlp, cifar10 for cifar10_convnet, svhn for svhn_convnet)",
    )
    p.add_argument("--data-root", help=f"data folder (default: ${bdata.ENV_VAR}, else ~/.cache)")
    p.add_argument("--hidden", type=int, help="MLP hidden units (paper: 4096)")
    p.add_argument("--depth", type=int, default=3, help="MLP hidden layers (paper: 3)")
    p.add_argument("--dropout-in", type=float, help="MLP input dropout (paper: 0.2)")
    p.add_argument(
        "--dropout-hidden", type=float, help="MLP hidden dropout (paper: 0.5; see --recipe)"
    )
    p.add_argument("--width", type=float, default=1.0, help="ConvNet width multiplier")
    p.add_argument("--epochs", type=int, help="number of epochs (default: the paper's)")
    p.add_argument("--batch-size", type=int, help="global mini-batch size (default: the paper's)")
    p.add_argument("--lr-start", type=float, help="first epoch's LR (default: the paper's)")
    p.add_argument("--lr-end", type=float, help="LR after the last epoch (see --recipe)")
    p.add_argument(
        "--recipe",
        choices=("auto", "paper", "short"),
        default="auto",
        help="defaults of --lr-end and --dropout-hidden. paper: the paper's; short: "
        f"LR end = LR start / {1 / SHORT_RECIPE['lr_end_ratio']:g} and no hidden dropout, "
        f"for runs of a few epochs; auto (default): short below {SHORT_RUN_EPOCHS} epochs, "
        "else paper",
    )
    p.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        help="torch7: the Torch7 code's MNIST setup (Table 1, 1.40%%): 3 x 2048 MLP, no "
        "dropout, shift batch norm (ordinary on the output), stochastic activations, "
        "deterministic weights, Torch7's shift AdaMax with its Glorot scales, LR 2^-6 halved "
        "every 20 epochs, batch 100. Options given explicitly still win.",
    )
    p.add_argument("--optimizer", choices=OPTIMIZERS, help="default: adam")
    p.add_argument("--batchnorm", choices=("standard", "shift"), help="default: standard")
    p.add_argument(
        "--lr-halve-every", type=int, help="halve the LR every N epochs (Torch7) instead of "
        "the exponential decay",
    )  # fmt: skip
    p.add_argument(
        "--stochastic", action="store_true", help="stochastic binarization of both the "
        "activations and the weights (training only)",
    )  # fmt: skip
    p.add_argument(
        "--stochastic-activations", action="store_true",
        help="stochastic binarization of the Sign activations (training only)",
    )  # fmt: skip
    p.add_argument(
        "--stochastic-weights", action="store_true",
        help="stochastic binarization of the weights (training only)",
    )  # fmt: skip
    p.add_argument(
        "--max-time", type=float, help="seconds; stop cleanly at the last epoch boundary "
        "that fits (history.json says so)",
    )  # fmt: skip
    p.add_argument("--float", action="store_true", help="train the float twin (no binarization)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument("--out", help="folder for history.json, checkpoint.pt, model.pt, best_model.pt")
    p.add_argument("--resume", action="store_true", help="continue from --out/checkpoint.pt")
    p.add_argument("--no-progress", action="store_true", help="no progress bars or epoch lines")
    return p


def resolve_settings(args: argparse.Namespace) -> dict:
    """Every training setting, from the flags, then the preset, then the paper's defaults.

    The ``short`` recipe (module docstring) sets the LR end and the hidden dropout
    of runs under ``SHORT_RUN_EPOCHS`` epochs unless ``--recipe paper``.
    """
    preset = PRESETS.get(args.preset, {}) if args.preset else {}
    model = preset.get("model", args.model)
    if model is None:
        raise ValueError("choose a model with --model (or a --preset)")
    if args.model not in (None, model):
        raise ValueError(f"--preset {args.preset} trains {model}, not {args.model}")
    paper = PAPER_DEFAULTS[model]

    def pick(flag: str, default):
        value = getattr(args, flag, None)
        return value if value is not None else preset.get(flag, default)

    st = {"model": model, "preset": args.preset}
    st["epochs"] = pick("epochs", paper["epochs"])
    st["batch_size"] = pick("batch_size", paper["batch_size"])
    st["lr_start"] = pick("lr_start", paper["lr"][0])
    recipe = args.recipe
    if recipe == "auto":
        recipe = "short" if st["epochs"] < SHORT_RUN_EPOCHS and not args.preset else "paper"
    st["recipe"] = "preset" if args.preset and args.recipe == "auto" else recipe
    if recipe == "short":
        lr_end, drop = st["lr_start"] * SHORT_RECIPE["lr_end_ratio"], SHORT_RECIPE["dropout"]
    else:
        lr_end, drop = paper["lr"][1], 0.5
    st["lr_end"] = pick("lr_end", lr_end)
    st["lr_halve_every"] = pick("lr_halve_every", None)
    st["dropout_hidden"] = pick("dropout_hidden", drop)
    st["dropout_in"] = pick("dropout_in", 0.2)
    st["hidden"] = pick("hidden", 4096)
    st["batchnorm"] = pick("batchnorm", "standard")
    st["optimizer"] = pick("optimizer", "adam")
    st["glorot_scale"] = preset.get("glorot_scale", True)
    both = args.stochastic
    st["stochastic_activations"] = (
        both or args.stochastic_activations or preset.get("stochastic_activations", False)
    )
    st["stochastic_weights"] = (
        both or args.stochastic_weights or preset.get("stochastic_weights", False)
    )
    for key in ("last_batchnorm", "bn_eps", "bn_momentum"):
        if key in preset:
            st[key] = preset[key]
    return st


def _build(args, st: dict, train: bdata.Dataset) -> nn.Module:
    common = {
        "binary": not args.float, "batchnorm": st["batchnorm"],
        "stochastic_activations": st["stochastic_activations"],
        "stochastic_weights": st["stochastic_weights"],
    }  # fmt: skip
    c, *hw = train.shape
    if st["model"] == "mnist_mlp":
        extra = {k: st[k] for k in ("last_batchnorm", "bn_eps", "bn_momentum") if k in st}
        return models.mnist_mlp(
            hidden=st["hidden"], depth=args.depth, in_features=math.prod(train.shape),
            dropout_in=st["dropout_in"], dropout_hidden=st["dropout_hidden"],
            num_classes=train.num_classes, **common, **extra,
        )  # fmt: skip
    return models.build(
        st["model"], width=args.width, in_channels=c, num_classes=train.num_classes,
        image_size=hw[0], **common,
    )  # fmt: skip


def _describe(st: dict, dataset: str) -> str:
    lr = (
        f"LR {st['lr_start']:g} halved every {st['lr_halve_every']} epochs"
        if st["lr_halve_every"]
        else f"LR {st['lr_start']:g} -> {st['lr_end']:g}"
    )
    drop = ""
    if st["model"] == "mnist_mlp":
        drop = (
            f", {st['hidden']} hidden units, dropout {st['dropout_in']:g}/{st['dropout_hidden']:g}"
        )
    stoch = [k for k in ("activations", "weights") if st[f"stochastic_{k}"]]
    return (
        f"{st['model']} on {dataset}: recipe {st['recipe']}: {st['epochs']} epochs, batch "
        f"{st['batch_size']}, {lr}, {st['optimizer']}, {st['batchnorm']} batch norm{drop}, "
        f"stochastic {' and '.join(stoch) or 'nothing'}"
    )


def _init_distributed(args) -> tuple[int, torch.device]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    device = _device(args.device)
    if world > 1:
        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return world, device


def main(argv: list[str] | None = None) -> History:
    """``python -m bnnlib.train``: parse, load the data, build the model, :func:`fit`, save."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.resume and not args.out:
        parser.error("--resume needs --out (the folder that holds checkpoint.pt)")
    try:
        st = resolve_settings(args)
    except ValueError as e:
        parser.error(str(e))
    retain_freed_memory()  # glibc keeps big freed blocks: about 2x faster CPU steps
    world, device = _init_distributed(args)
    try:
        try:
            train, val, test = bdata.load_splits(
                args.dataset or PAPER_DEFAULTS[st["model"]]["dataset"], args.data_root
            )
        except (ValueError, FileNotFoundError) as e:
            parser.error(str(e))
        torch.manual_seed(args.seed)  # the initial weights
        net = _build(args, st, train)
        out = Path(args.out) if args.out else None
        if _dist()[0] == 0 and not args.no_progress:
            print(_describe(st, train.name), flush=True)
        meta_keys = ("model", "recipe", "preset", "hidden", "dropout_in", "batchnorm")
        meta_keys += ("stochastic_activations", "stochastic_weights")
        meta = {k: st[k] for k in meta_keys}
        meta["dropout_hidden"] = st["dropout_hidden"] if st["model"] == "mnist_mlp" else None
        meta["argv"] = list(sys.argv[1:] if argv is None else argv)
        history = fit(
            net, train, val, test,
            num_epochs=st["epochs"], batch_size=st["batch_size"], lr_start=st["lr_start"],
            lr_end=st["lr_end"], optimizer=st["optimizer"], glorot_scale=st["glorot_scale"],
            lr_halve_every=st["lr_halve_every"], max_time=args.max_time, seed=args.seed,
            device=device, checkpoint=out / "checkpoint.pt" if out else None,
            resume=args.resume, history_path=out / "history.json" if out else None,
            progress=not args.no_progress, meta=meta,
        )  # fmt: skip
        if _dist()[0] == 0:
            if out is not None:
                atomic_save(_cpu_state(net), out / "model.pt")
                if history.best_state is not None:
                    atomic_save(history.best_state, out / "best_model.pt")
            times = sorted(r["time"] for r in history.epochs)
            print(f"{history}; median {times[len(times) // 2]:.1f} s per training epoch")
        return history
    finally:
        if world > 1 and dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    main()
