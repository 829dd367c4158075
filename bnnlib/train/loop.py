"""Training a BNN the paper's way: square hinge, Adam, exponential LR, best-validation test error.

The recipe of the paper's Theano code (Section 2), for every model:

* the loss is the square hinge loss of an L2-SVM output layer,
  ``L = mean(max(0, 1 - t * y)^2)`` with targets ``t`` in {-1, +1}
  (:func:`bnnlib.nn.losses.square_hinge`);
* the optimizer is Adam with the per-layer "Glorot" LR scale and clipping of
  the latent binary weights to [-1, 1] after each step, or the shift-based
  AdaMax of Algorithm 4 (:mod:`bnnlib.nn.optim`);
* the learning rate decays exponentially once per epoch, from ``lr_start`` at
  the first epoch to ``lr_end`` after the last one::

      lr(e) = lr_start * (lr_end / lr_start)^(e / num_epochs),  e = 0, 1, ...

* mini-batches are drawn without replacement from a fresh permutation of the
  training set every epoch; a last incomplete batch is dropped, as in the
  paper's code (``len(X) // batch_size`` batches);
* the reported test error is the one *at the epoch of best validation error*,
  not the best test error.

What each epoch records: :class:`bnnlib.train.history.History` (errors are fractions in [0, 1]).

Speed. The whole dataset is moved to the training device once; a batch is an
index slice of the epoch's permutation. Losses and error counts are summed on
the device and read back once per epoch (``.item()`` syncs a GPU).

The fast path (``fast=True``, the default; ``fast=False`` is the plain path) changes only
how the same arithmetic is carried out: the optimizer step is
:class:`bnnlib.train.fast_step.FastStep`: on the CPU one pass over each parameter's memory
(shift AdaMax, clipping and Sign(W) together, numba; Adam: PyTorch's fused kernel, then
clipping and Sign(W) in one pass), the binary layers reusing that Sign(W) in the next forward
and backward passes instead of binarizing again, and the dense layers fed by Sign computing
their forward products by XNOR-popcount (:mod:`bnnlib.train.fast_linear`: the float32 GEMM's
numbers exactly); on a GPU multi-tensor (``foreach``) updates,
validation and test in batches of 10,000, and cuDNN picking its convolution algorithms
(``cudnn.benchmark``). It gives the plain path's parameters and history bit for bit (tested on
the CPU for the Torch7 preset and the Theano recipe), so checkpoints of either path resume in
the other. CUDA graphs and ``torch.compile`` are not used: neither has been measured on a GPU
here yet. ``python -m bnnlib.bench --train`` times the paths against the float32 GEMMs of
the same step.

Reproducibility. ``seed`` seeds a CPU ``torch.Generator`` for the shuffling
and the global torch RNG (dropout, stochastic binarization; ``seed + rank``
under DDP). A checkpoint (:mod:`bnnlib.train.checkpoint`: atomic, with a SHA-256 of its
contents, loaded with ``weights_only=True``) is written after every epoch and
holds the model, optimizer, scheduler, best-validation weights, history and all
RNG states, so ``resume=True`` ends with the same weights and history, bit for
bit, as an uninterrupted run.

Safety. ``resume=True`` needs the checkpoint, and refuses one whose run
configuration differs or whose model has other parameter shapes
(:mod:`bnnlib.train.runfolder`: :func:`config_differences`, :class:`RunConfigError`); a
damaged checkpoint gives :class:`CheckpointError`. A non-finite training loss
stops the run with :class:`NonFiniteLossError` before that epoch is recorded, so
the checkpoint and history keep the last good epoch.

Several processes. ``torchrun --nproc_per_node=N -m bnnlib.train ...`` runs
DistributedDataParallel (gloo on CPU, nccl on GPU, detected from
``WORLD_SIZE``). Each rank takes its contiguous slice of every global batch of
``batch_size`` samples; gradients are averaged, so the update is that of the
global batch. Batch-norm *batch* statistics are computed per rank on its slice
(no SyncBatchNorm), so results differ slightly from one process; the running
statistics of rank 0 are broadcast before each forward (DDP's default) and
before evaluation. Only rank 0 writes the history and checkpoints and shows
progress.

Command line: ``python -m bnnlib.train --model mnist_mlp --epochs 10``, in
:mod:`bnnlib.train.cli` (the paper's defaults per model, the short recipe, ``--help``).
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch
import torch.distributed as dist
from torch import nn
from tqdm.auto import tqdm

from bnnlib import data as bdata
from bnnlib.nn.losses import pm1_targets, square_hinge
from bnnlib.nn.optim import exponential_lr, step_lr
from bnnlib.train.checkpoint import (
    cpu_state,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from bnnlib.train.fast_step import FastStep
from bnnlib.train.history import History, pct
from bnnlib.train.optimizers import OPTIMIZERS
from bnnlib.train.runfolder import (
    check_resume,
    extends_step_schedule,
    run_config,
)

__all__ = ["fit", "evaluate", "predict", "make_optimizer", "make_scheduler", "NonFiniteLossError"]
__all__ += ["FitSetupError"]


class FitSetupError(ValueError):
    """The numbers given to :func:`fit` cannot make a run (checked before anything starts)."""


class NonFiniteLossError(FloatingPointError):
    """The training loss of an epoch is NaN or infinite: the run stops there."""


# --------------------------------------------------------------------------- evaluation


def rank_and_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _interactive() -> bool:
    """A terminal or a Jupyter kernel: somewhere a progress bar redraws in place."""
    return sys.stderr.isatty() or "ipykernel" in sys.modules


def as_device(device) -> torch.device:
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


def dist_errors(net: nn.Module, ds, batch_size: int, rank: int, world: int) -> float | None:
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


#: The evaluation batch of the fast path (a GPU holds 10,000 MNIST or CIFAR-10 images' activations).
FAST_EVAL_BATCH = 10_000


def make_optimizer(
    net: nn.Module, name: str, lr: float, glorot_scale: bool | str = True
) -> torch.optim.Optimizer:
    """The optimizer ``name`` of :data:`bnnlib.train.optimizers.OPTIMIZERS` over ``net``:
    ``"adam"`` (fused kernels where PyTorch has them), ``"shift_adamax"`` (Algorithm 4),
    ``"shift_adamax_torch7"`` (the Torch7 code's variant) or ``"adamax_torch7"`` (that
    variant without its AP2 roundings: the ablation of the shifts)."""
    return OPTIMIZERS.pick(name)(net, lr, glorot_scale)


def make_scheduler(opt, lr_start: float, lr_end: float, num_epochs: int, halve_every):
    """The Theano code's exponential decay, or (``halve_every=N``) Torch7's halving every N."""
    if halve_every:
        return step_lr(opt, halve_every, 0.5)
    return exponential_lr(opt, lr_start, lr_end, num_epochs)


def _base_lr(opt: torch.optim.Optimizer) -> float:
    g = opt.param_groups[0]
    return g["lr"] / g.get("lr_scale", 1.0)


# ------------------------------------------------------------------ the training epoch


def _train_epoch(model, opt, X, Y, T, perm, batch_size, rank, world, bar, fast=None):
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
        if fast is not None:
            fast.step()
        else:
            opt.step()
        loss_sum += loss.detach() * len(idx)
        errors += (out.detach().argmax(1) != Y[idx]).sum()
        if bar is not None:
            bar.update(1)
    if world > 1:
        dist.all_reduce(loss_sum)
        dist.all_reduce(errors)
    return loss_sum, errors, steps * batch_size


# ------------------------------------------------- the pieces of fit, in the order it calls them


class _Data(NamedTuple):
    """The data on the training device: inputs, labels, {-1, +1} targets, val and test."""

    X: torch.Tensor
    Y: torch.Tensor
    T: torch.Tensor
    val: bdata.Dataset | None
    test: bdata.Dataset | None

    @classmethod
    def on(cls, device: torch.device, train, val, test) -> _Data:
        """Move the data to ``device`` once; targets in {-1, +1} for the square hinge loss."""
        X, Y = train.X.to(device), train.y.to(device)
        val, test = (d.to(device) if d is not None else None for d in (val, test))
        return cls(X, Y, pm1_targets(Y, train.num_classes), val, test)


@dataclass
class _Run:
    """What :func:`fit` carries from one epoch to the next (and a checkpoint holds)."""

    net: nn.Module
    opt: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    shuffle: torch.Generator
    history: History
    config: dict
    device: torch.device
    rank: int = 0
    world: int = 1
    t_fit: float = 0.0  # when training started, for max_time
    start: int = 0  # epochs already done (resume)
    best_state: dict | None = None
    model: nn.Module | None = None  # net, or its DistributedDataParallel wrapper
    fast: FastStep | None = None  # the fast path's optimizer step (module docstring)


def _positive(name: str, value, integer: bool = False) -> None:
    ok = isinstance(value, int) if integer else isinstance(value, (int, float))
    if not ok or isinstance(value, bool) or not math.isfinite(value) or value <= 0:
        kind = "a positive integer" if integer else "a finite number > 0"
        raise FitSetupError(f"{name} must be {kind}, got {value!r}")


def _check_fit(num_epochs: int, batch_size: int, n_train: int, world: int, **more) -> None:
    """The recipe's numbers, checked before anything starts (``more``: optional ones)."""
    _positive("num_epochs", num_epochs, integer=True)
    _positive("batch_size", batch_size, integer=True)
    for name, value in more.items():
        if value is not None:
            _positive(name, value, integer=name in ("lr_halve_every", "eval_batch_size"))
    if n_train < batch_size:
        raise FitSetupError(
            f"the training set ({n_train} images) is smaller than one batch ({batch_size}): "
            "lower --batch-size or raise --train-size"
        )
    if batch_size % world:
        raise FitSetupError(f"batch_size {batch_size} must be a multiple of the {world} processes")


def _start(net: nn.Module, config: dict, device: torch.device, rank: int, world: int) -> _Run:
    """Optimizer, LR schedule and seeded RNGs for a fresh run (the clock starts here)."""
    c = config
    net.to(device)
    opt = make_optimizer(net, c["optimizer"], c["lr_start"], c["glorot_scale"])
    sched = make_scheduler(opt, c["lr_start"], c["lr_end"], c["num_epochs"], c["lr_halve_every"])
    t_fit = time.perf_counter()
    shuffle = torch.Generator().manual_seed(c["seed"])
    torch.manual_seed(c["seed"] + rank)  # dropout and stochastic binarization
    history = History(config=config)
    return _Run(net, opt, sched, shuffle, history, config, device, rank, world, t_fit)


def _restore(run: _Run, path: Path) -> None:
    """Continue ``run`` from the checkpoint at ``path``, refused if the settings differ."""
    ckpt = load_checkpoint(path)
    check_resume(ckpt, run.config, run.net, path)
    run.net.load_state_dict(ckpt["model"])
    run.opt.load_state_dict(ckpt["optimizer"])
    run.scheduler.load_state_dict(ckpt["scheduler"])
    run.history = History.from_dict(ckpt["history"])
    if extends_step_schedule(ckpt, run.config):  # more epochs of a step schedule: say so
        old = ckpt["config"]["num_epochs"]
        run.history.config["num_epochs"] = run.config["num_epochs"]
        if "run_config" in run.config:  # the configuration's length follows the extension
            run.history.config["run_config"] = run.config["run_config"]
        run.history.config.setdefault("extended", []).append(
            {
                "from_epochs": old,
                "to_epochs": run.config["num_epochs"],
                "at_epoch": ckpt["epoch"],
                "argv": run.config.get("argv"),
            }  # fmt: skip
        )
    run.best_state, run.start = ckpt["best_model"], ckpt["epoch"]
    run.shuffle.set_state(ckpt["shuffle"])
    set_rng_state(ckpt["rng"][run.rank])


def _parallel(net: nn.Module, device: torch.device, world: int) -> nn.Module:
    """``net`` itself, or under torchrun its DistributedDataParallel wrapper."""
    if world == 1:
        return net
    ids = None
    if device.type == "cuda":
        ids = [device.index if device.index is not None else torch.cuda.current_device()]
    return nn.parallel.DistributedDataParallel(net, device_ids=ids)


def _run_epoch(run: _Run, data: _Data, batch_size: int, bar, t0: float) -> tuple[float, ...]:
    """Shuffle, train one epoch, step the LR schedule; returns the mean loss, the train
    error, the epoch's base LR and the seconds of training since ``t0``.

    A non-finite mean loss raises :class:`NonFiniteLossError` (nothing of the epoch is
    recorded or saved: the checkpoint keeps the last good epoch)."""
    perm = torch.randperm(len(data.Y), generator=run.shuffle).to(run.device)
    lr = _base_lr(run.opt)
    loss_sum, errors, n = _train_epoch(
        run.model, run.opt, data.X, data.Y, data.T, perm, batch_size, run.rank, run.world, bar,
        fast=run.fast,
    )  # fmt: skip
    loss, train_error = loss_sum.item() / n, errors.item() / n  # the epoch's one sync
    bar.close()
    if not math.isfinite(loss):
        epoch = len(run.history.epochs) + 1
        raise NonFiniteLossError(
            f"epoch {epoch}: the training loss is {loss}: the run diverged (too high a "
            f"learning rate? lr {lr:g}); stopped, nothing of epoch {epoch} saved: the "
            f"checkpoint and history keep epoch {epoch - 1}"
        )
    t_train = time.perf_counter() - t0
    run.scheduler.step()
    return loss, train_error, lr, t_train


def _evaluate_epoch(run: _Run, data: _Data, batch_size: int) -> tuple[float | None, ...]:
    """(val error, test error) of the current weights, None where there is no such set."""
    val = dist_errors(run.net, data.val, batch_size, run.rank, run.world)
    return val, dist_errors(run.net, data.test, batch_size, run.rank, run.world)


def _record(run: _Run, record: dict) -> None:
    """Append the epoch's record; keep the weights on a new best validation error or a tie."""
    best_before = run.history.best_val_error
    run.history.epochs.append(record)
    val_error = record["val_error"]
    if val_error is None or best_before is None or val_error <= best_before:
        run.best_state = cpu_state(run.net)


def _save_checkpoint(run: _Run, epoch: int, checkpoint: Path | None, history_path) -> None:
    """Rank 0 writes the checkpoint and the history JSON, atomically.

    Every rank calls it: the RNG states of all ranks are gathered into the checkpoint.
    """
    if run.world > 1:
        rngs = [None] * run.world
        dist.all_gather_object(rngs, rng_state())
    else:
        rngs = [rng_state()]
    if run.rank != 0:
        return
    if checkpoint is not None:
        state = {
            "epoch": epoch, "config": run.config,
            "model": run.net.state_dict(), "optimizer": run.opt.state_dict(),
            "scheduler": run.scheduler.state_dict(), "best_model": run.best_state,
            "history": run.history.to_dict(), "shuffle": run.shuffle.get_state(), "rng": rngs,
        }  # fmt: skip
        save_checkpoint(state, checkpoint)  # with the format and the SHA-256, first and last
    if history_path is not None:
        run.history.to_json(history_path)


class _Progress:
    """Rank 0's progress: tqdm bars where they redraw in place (a terminal, a notebook),
    and one line per epoch; in a log file (non-TTY) the lines alone, so the log stays short."""

    def __init__(self, show: bool, num_epochs: int, start: int, steps: int):
        self.show, self.live = show, show and _interactive()
        self.num_epochs, self.steps = num_epochs, steps
        self.bar = tqdm(
            total=num_epochs, initial=start, desc="epochs", unit="ep", disable=not self.live,
            mininterval=1, dynamic_ncols=True,
        )  # fmt: skip

    def batches(self, epoch: int):
        """The bar of one epoch's mini-batches."""
        return tqdm(
            total=self.steps, desc=f"epoch {epoch + 1}", leave=False, disable=not self.live,
            mininterval=1,
        )  # fmt: skip

    def log_epoch(self, r: dict) -> None:
        self.say(
            f"epoch {r['epoch']}/{self.num_epochs}: loss {r['loss']:.4f}  "
            f"train {pct(r['train_error'])}  val {pct(r['val_error'])}  "
            f"test {pct(r['test_error'])}  lr {r['lr']:.2e}  {r['time']:.1f}s"
        )
        self.bar.update(1)

    def say(self, text: str) -> None:
        if self.show:
            tqdm.write(text)


def _out_of_time(run: _Run, max_time, t_epoch: float, epoch: int, history_path, log) -> bool:
    """True if one more epoch like the last one (started at ``t_epoch``) would overrun
    ``max_time``; then ``history.stopped`` says so, in the history file too."""
    elapsed = time.perf_counter() - run.t_fit
    num_epochs = run.config["num_epochs"]
    if max_time is None or epoch >= num_epochs:
        return False
    if elapsed + (time.perf_counter() - t_epoch) <= max_time:
        return False
    run.history.stopped = (
        f"time limit: stopped after epoch {epoch} of {num_epochs} "
        f"({elapsed:.0f} s of {max_time:.0f} s)"
    )
    if run.rank == 0 and history_path is not None:
        run.history.to_json(history_path)
    log.say(run.history.stopped)
    return True


def fit(
    net: nn.Module, train: bdata.Dataset, val: bdata.Dataset | None = None,
    test: bdata.Dataset | None = None, *,
    # the recipe
    num_epochs: int, batch_size: int = 100, lr_start: float = 3e-3, lr_end: float = 3e-7,
    optimizer: str = "adam", glorot_scale: bool | str = True, lr_halve_every: int | None = None,
    seed: int = 0, device=None, eval_batch_size: int | None = None, fast: bool | None = None,
    # files, progress and stopping
    checkpoint: str | os.PathLike | None = None, resume: bool = False,
    history_path: str | os.PathLike | None = None, progress: bool = True,
    callback: Callable[[History], None] | None = None, max_time: float | None = None,
    meta: dict | None = None,
) -> History:  # fmt: skip
    """Train ``net`` on ``train`` for ``num_epochs`` epochs; returns the :class:`History`.

    After every epoch: evaluate on ``val`` and ``test``, keep the best-validation
    weights (``history.best_epoch``; the net keeps its *final* weights), write
    ``history_path`` (JSON) and ``checkpoint`` (atomic), then call
    ``callback(history)``. ``resume=True`` continues from ``checkpoint``, with the
    same settings: no checkpoint is an error (``FileNotFoundError``), and so is one of
    another configuration (:class:`RunConfigError`, naming each differing setting).
    ``lr_halve_every=N`` replaces the exponential decay by Torch7's halving every N
    epochs (``lr_end`` is then unused). A non-finite epoch loss raises
    :class:`NonFiniteLossError` (the checkpoint keeps the last good epoch).
    ``max_time`` (seconds) stops cleanly at the end of the epoch after which
    another one would not fit, and says so in ``history.stopped``; a resumed
    run gets the time again. Under ``torchrun`` the process group must be
    initialized (the CLI does it); ``batch_size`` is then the global batch.
    ``meta`` (plain values) is added to ``history.config`` for the record.

    ``fast`` (default True) takes the fast path (module docstring): the same parameters,
    in fewer passes over memory. ``eval_batch_size`` defaults to 1,000 (10,000 on the fast
    path on a GPU).
    """
    rank, world = rank_and_world()
    device = as_device(device)
    _check_fit(
        num_epochs, batch_size, len(train), world, lr_start=lr_start, lr_end=lr_end,
        lr_halve_every=lr_halve_every, max_time=max_time, eval_batch_size=eval_batch_size,
    )  # fmt: skip
    checkpoint = _checkpoint_path(checkpoint, resume)
    fast, eval_batch_size = _fast_path(device, fast, eval_batch_size)
    config = run_config(
        train, val, test, num_epochs=num_epochs, batch_size=batch_size, lr_start=lr_start,
        lr_end=lr_end, optimizer=optimizer, glorot_scale=glorot_scale,
        lr_halve_every=lr_halve_every, seed=seed, world_size=world, fast=fast, meta=meta,
    )  # fmt: skip
    run = _start(net, config, device, rank, world)
    run.fast = FastStep(run.opt, net) if fast else None
    if resume:
        _restore(run, checkpoint)
    run.model = _parallel(net, device, world)
    data = _Data.on(device, train, val, test)
    log = _Progress(progress and rank == 0, num_epochs, run.start, len(train) // batch_size)
    _epochs(run, data, log, batch_size, eval_batch_size, checkpoint, history_path, callback,
            max_time)  # fmt: skip
    log.bar.close()
    run.history.best_state = run.best_state
    return run.history


def _checkpoint_path(checkpoint, resume: bool) -> Path | None:
    """``checkpoint`` as a Path; ``resume=True`` needs one that exists."""
    checkpoint = Path(checkpoint) if checkpoint is not None else None
    if resume and checkpoint is None:
        raise ValueError("resume=True needs a checkpoint path")
    if resume and not checkpoint.exists():
        raise FileNotFoundError(f"{checkpoint}: no checkpoint: nothing to resume")
    return checkpoint


def _fast_path(device: torch.device, fast: bool | None, eval_batch_size: int | None):
    """(fast, evaluation batch): the fast path's defaults (module docstring); on a GPU
    it lets cuDNN pick its convolution algorithms."""
    fast = True if fast is None else bool(fast)
    if eval_batch_size is None:  # the CPU's stays 1,000: its histories match the plain path's
        eval_batch_size = FAST_EVAL_BATCH if fast and device.type == "cuda" else 1000
    if fast and device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    return fast, eval_batch_size


def _epochs(run: _Run, data: _Data, log, batch_size, eval_batch_size, checkpoint, history_path,
            callback, max_time) -> None:  # fmt: skip
    """The epochs of :func:`fit` from ``run.start``: train, evaluate, record, save, report."""
    for epoch in range(run.start, run.config["num_epochs"]):
        t0 = time.perf_counter()
        loss, train_error, lr, t_train = _run_epoch(run, data, batch_size, log.batches(epoch), t0)
        val_error, test_error = _evaluate_epoch(run, data, eval_batch_size)
        _record(run, {
            "epoch": epoch + 1, "loss": loss, "train_error": train_error,
            "val_error": val_error, "test_error": test_error, "lr": lr, "time": t_train,
            "eval_time": time.perf_counter() - t0 - t_train,
        })  # fmt: skip
        _save_checkpoint(run, epoch + 1, checkpoint, history_path)
        log.log_epoch(run.history.epochs[-1])
        if callback is not None:
            callback(run.history)
        if _out_of_time(run, max_time, t0, epoch + 1, history_path, log):
            break
