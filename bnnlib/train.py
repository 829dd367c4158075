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

The fast path (``fast=True``; the default on a GPU, ``fast=None``) changes only
how the same arithmetic is launched: the optimizer step is one multi-tensor
(``foreach``) update with the clipping of the binary weights as two
``_foreach_clamp`` calls (Adam: PyTorch's fused kernel, as on the plain path;
shift AdaMax: :func:`shift_adamax_foreach`), validation and test are evaluated
in batches of 10,000, and cuDNN picks its convolution algorithms
(``cudnn.benchmark``). On the CPU it gives the plain path's parameters and
history bit for bit (tested), so checkpoints of either path resume in the
other. CUDA graphs and ``torch.compile`` are not used: neither has been
measured on a GPU here yet.

Reproducibility. ``seed`` seeds a CPU ``torch.Generator`` for the shuffling
and the global torch RNG (dropout, stochastic binarization; ``seed + rank``
under DDP). A checkpoint is written atomically after every epoch (temporary
file in the same folder, fsync, ``os.replace``) and holds the model,
optimizer, scheduler, best-validation weights, history and all RNG states, so
``resume=True`` ends with the same weights and history, bit for bit, as an
uninterrupted run. Checkpoints load with ``torch.load(weights_only=True)``:
tensors and plain containers only, never arbitrary pickles.

Safety. ``resume=True`` needs the checkpoint, and refuses one whose run
configuration differs (:func:`config_differences`: every setting that changes
the result, each differing one named; settings missing from an older
checkpoint count as their defaults, :data:`CONFIG_DEFAULTS`) or whose model has
other parameter shapes. A checkpoint carries the SHA-256 of its contents
(``sha256``: every tensor's dtype, shape and bytes, every key and value, in
order), checked on load: a damaged file gives :class:`CheckpointError`.
Checkpoints of format 1, written before the checksum, have none and still load
unchecked. A non-finite training loss stops the run with
:class:`NonFiniteLossError` before that epoch is recorded, so the checkpoint
and history keep the last good epoch.

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
:mod:`bnnlib.train_cli` (the paper's defaults per model, the short recipe, ``--help``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import torch
import torch.distributed as dist
from torch import nn
from tqdm.auto import tqdm

from . import data as bdata
from .losses import pm1_targets, square_hinge
from .machine import atomic_write
from .optim import Adam, ShiftAdaMax, exponential_lr, step_lr

__all__ = ["History", "fit", "evaluate", "predict", "make_optimizer", "atomic_save"]
__all__ += ["shift_adamax_foreach", "fast_step"]
__all__ += ["load_checkpoint", "PAPER_DEFAULTS", "main"]  # noqa: F822 (see __getattr__)
__all__ += ["CheckpointError", "RunConfigError", "NonFiniteLossError"]
__all__ += ["config_differences", "run_config", "CONFIG_DEFAULTS"]

#: 2: with the ``sha256`` of the contents (format 1, without, still loads).
CHECKPOINT_FORMAT = 2
_READABLE_FORMATS = (1, 2)


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: unreadable, not ours, or damaged."""


class RunConfigError(ValueError):
    """A checkpoint of another run configuration than the one asked to resume."""


class NonFiniteLossError(FloatingPointError):
    """The training loss of an epoch is NaN or infinite: the run stops there."""


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
#: The evaluation batch of the fast path (a GPU holds 10,000 MNIST or CIFAR-10 images' activations).
FAST_EVAL_BATCH = 10_000


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


# ------------------------------------------------------------------ the fast path's step


@torch.no_grad()
def _clip_foreach(groups) -> None:
    """:func:`bnnlib.optim.clip_binary_weights` as two multi-tensor calls (the same values)."""
    params = [p for g in groups if g.get("clip") for p in g["params"]]
    if params:
        torch._foreach_clamp_min_(params, -1.0)
        torch._foreach_clamp_max_(params, 1.0)


def _ap2_nonnegative(xs: list[torch.Tensor]) -> list[torch.Tensor]:
    """AP2 of tensors with no negative entries: 2^round(log2 x), and 0 where x == 0
    (exp2(-inf) = +0), the values :func:`bnnlib.shift.ap2` gives."""
    e = torch._foreach_log2(xs)
    torch._foreach_round_(e)
    return torch._foreach_pow(2.0, e)


@torch.no_grad()
def shift_adamax_foreach(opt: ShiftAdaMax) -> None:
    """One :class:`bnnlib.optim.ShiftAdaMax` step (either variant) with multi-tensor ops.

    The same arithmetic as ``ShiftAdaMax.step`` per parameter (tested bit for bit on
    the CPU), then the clipping; a group whose parameters are at different step counts
    (some had no gradient) takes ``ShiftAdaMax.step``'s loop instead.
    """
    from .optim import _ap2_scalar

    for group in opt.param_groups:
        params = [p for p in group["params"] if p.grad is not None]
        if not params:
            continue
        beta1, beta2 = group["betas"]
        for p in params:
            state = opt.state[p]
            if not state:
                state["step"] = 0
                state["exp_avg"] = torch.zeros_like(p)
                state["exp_inf"] = torch.zeros_like(p)
            state["step"] += 1
        steps = {opt.state[p]["step"] for p in params}
        if len(steps) > 1:
            for p in params:
                opt.state[p]["step"] -= 1
            _shift_adamax_loop(opt, group, params)
            continue
        bias1 = 1 - beta1 ** steps.pop()
        grads = [p.grad for p in params]
        ms = [opt.state[p]["exp_avg"] for p in params]
        vs = [opt.state[p]["exp_inf"] for p in params]
        torch._foreach_lerp_(ms, grads, 1 - beta1)
        torch._foreach_mul_(vs, beta2)
        torch._foreach_maximum_(vs, torch._foreach_abs(grads))
        if group.get("variant", "paper") == "torch7":
            rounded = _ap2_nonnegative(vs)
            torch._foreach_add_(rounded, group["eps"])
            torch._foreach_copy_(vs, rounded)
            step_size = _ap2_scalar(group["lr"] / group["lr_scale"] / bias1)
            torch._foreach_sub_(
                params, torch._foreach_div(ms, vs), alpha=step_size * group["lr_scale"]
            )
        else:
            denom = _ap2_nonnegative(torch._foreach_add(vs, group["eps"]))
            alpha = _ap2_scalar(group["lr"] / bias1)
            torch._foreach_sub_(params, torch._foreach_div(ms, denom), alpha=alpha)
    _clip_foreach(opt.param_groups)


def _shift_adamax_loop(opt: ShiftAdaMax, group: dict, params: list) -> None:
    """``ShiftAdaMax.step`` restricted to one group (the rare mixed-step case)."""
    saved = opt.param_groups
    opt.param_groups = [{**group, "params": params, "clip": False}]
    try:
        ShiftAdaMax.step(opt)
    finally:
        opt.param_groups = saved


def fast_step(opt: torch.optim.Optimizer) -> None:
    """The optimizer step of the fast path: the same update as ``opt.step()``.

    :class:`bnnlib.optim.Adam`: PyTorch's Adam step (fused or foreach, as built), then
    the clipping as two multi-tensor clamps; :class:`bnnlib.optim.ShiftAdaMax`:
    :func:`shift_adamax_foreach`; any other optimizer: ``opt.step()``.
    """
    if isinstance(opt, Adam):
        torch.optim.Adam.step(opt)
        _clip_foreach(opt.param_groups)
    elif isinstance(opt, ShiftAdaMax):
        shift_adamax_foreach(opt)
    else:
        opt.step()
        return
    opt._opt_called = True  # what the LR scheduler's wrapper of opt.step() would mark


# ------------------------------------------------------------------ the training epoch


def _train_epoch(model, opt, X, Y, T, perm, batch_size, rank, world, bar, fast=False):
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
        if fast:
            fast_step(opt)
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


#: Settings recorded for the record only: they may change when a run is resumed.
NOT_COMPARED = ("argv", "hardware", "data", "fast")
#: The values of settings that older checkpoints did not record (the CLI's defaults then).
CONFIG_DEFAULTS = {"depth": 3, "width": 1.0, "float": False}
_MISSING = "<not recorded>"


def config_differences(saved: dict, now: dict) -> dict[str, tuple]:
    """``{setting: (saved value, value now)}`` for every setting of a run's configuration
    that differs, but those in :data:`NOT_COMPARED`; a setting missing on one side counts
    as its :data:`CONFIG_DEFAULTS` value (settings added after ``saved`` was written)."""
    diff = {}
    for k in dict.fromkeys([*saved, *now]):
        if k in NOT_COMPARED:
            continue
        a = saved.get(k, CONFIG_DEFAULTS.get(k, _MISSING))
        b = now.get(k, CONFIG_DEFAULTS.get(k, _MISSING))
        if a != b:
            diff[k] = (a, b)
    return diff


def _check_resume(ckpt: dict, config: dict, net: nn.Module, path) -> None:
    """Refuse a checkpoint of another run configuration, or of another model's shapes."""
    diff = config_differences(ckpt["config"], config)
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
    fast: bool = False  # the fast path's optimizer step (module docstring)


def _positive(name: str, value, integer: bool = False) -> None:
    ok = isinstance(value, int) if integer else isinstance(value, (int, float))
    if not ok or isinstance(value, bool) or not math.isfinite(value) or value <= 0:
        kind = "a positive integer" if integer else "a finite number > 0"
        raise ValueError(f"{name} must be {kind}, got {value!r}")


def _check_fit(num_epochs: int, batch_size: int, n_train: int, world: int, **more) -> None:
    """The recipe's numbers, checked before anything starts (``more``: optional ones)."""
    _positive("num_epochs", num_epochs, integer=True)
    _positive("batch_size", batch_size, integer=True)
    for name, value in more.items():
        if value is not None:
            _positive(name, value, integer=name in ("lr_halve_every", "eval_batch_size"))
    if n_train < batch_size:
        raise ValueError(f"the training set ({n_train}) is smaller than one batch ({batch_size})")
    if batch_size % world:
        raise ValueError(f"batch_size {batch_size} must be a multiple of the {world} processes")


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
    _check_resume(ckpt, run.config, run.net, path)
    run.net.load_state_dict(ckpt["model"])
    run.opt.load_state_dict(ckpt["optimizer"])
    run.scheduler.load_state_dict(ckpt["scheduler"])
    run.history = History.from_dict(ckpt["history"])
    run.best_state, run.start = ckpt["best_model"], ckpt["epoch"]
    run.shuffle.set_state(ckpt["shuffle"])
    _set_rng_state(ckpt["rng"][run.rank])


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
    val = _dist_errors(run.net, data.val, batch_size, run.rank, run.world)
    return val, _dist_errors(run.net, data.test, batch_size, run.rank, run.world)


def _record(run: _Run, record: dict) -> None:
    """Append the epoch's record; keep the weights if the validation error is a new best."""
    best_before = run.history.best_val_error
    run.history.epochs.append(record)
    val_error = record["val_error"]
    if val_error is None or best_before is None or val_error < best_before:
        run.best_state = _cpu_state(run.net)


def _save_checkpoint(run: _Run, epoch: int, checkpoint: Path | None, history_path) -> None:
    """Rank 0 writes the checkpoint and the history JSON, atomically.

    Every rank calls it: the RNG states of all ranks are gathered into the checkpoint.
    """
    if run.world > 1:
        rngs = [None] * run.world
        dist.all_gather_object(rngs, _rng_state())
    else:
        rngs = [_rng_state()]
    if run.rank != 0:
        return
    if checkpoint is not None:
        state = {
            "format": CHECKPOINT_FORMAT, "epoch": epoch, "config": run.config,
            "model": run.net.state_dict(), "optimizer": run.opt.state_dict(),
            "scheduler": run.scheduler.state_dict(), "best_model": run.best_state,
            "history": run.history.to_dict(), "shuffle": run.shuffle.get_state(), "rng": rngs,
        }  # fmt: skip
        state["sha256"] = _digest(state)  # checked by load_checkpoint
        atomic_save(state, checkpoint)
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
            f"train {_pct(r['train_error'])}  val {_pct(r['val_error'])}  "
            f"test {_pct(r['test_error'])}  lr {r['lr']:.2e}  {r['time']:.1f}s"
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

    ``fast`` (default: True on a GPU, else False) takes the fast path (module
    docstring): the same parameters, launched as fewer kernels. ``eval_batch_size``
    defaults to 1,000 (10,000 on the fast path).
    """
    rank, world = _dist()
    device = _device(device)
    _check_fit(
        num_epochs, batch_size, len(train), world, lr_start=lr_start, lr_end=lr_end,
        lr_halve_every=lr_halve_every, max_time=max_time, eval_batch_size=eval_batch_size,
    )  # fmt: skip
    checkpoint = Path(checkpoint) if checkpoint is not None else None
    if resume and checkpoint is None:
        raise ValueError("resume=True needs a checkpoint path")
    if resume and not checkpoint.exists():
        raise FileNotFoundError(f"{checkpoint}: no checkpoint: nothing to resume")
    fast = device.type == "cuda" if fast is None else bool(fast)
    if eval_batch_size is None:
        eval_batch_size = FAST_EVAL_BATCH if fast else 1000
    if fast and device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    config = run_config(
        train, val, test, num_epochs=num_epochs, batch_size=batch_size, lr_start=lr_start,
        lr_end=lr_end, optimizer=optimizer, glorot_scale=glorot_scale,
        lr_halve_every=lr_halve_every, seed=seed, world_size=world, fast=fast, meta=meta,
    )  # fmt: skip
    run = _start(net, config, device, rank, world)
    run.fast = fast
    if resume:
        _restore(run, checkpoint)
    run.model = _parallel(net, device, world)
    data = _Data.on(device, train, val, test)
    log = _Progress(progress and rank == 0, num_epochs, run.start, len(train) // batch_size)
    for epoch in range(run.start, num_epochs):
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
    log.bar.close()
    run.history.best_state = run.best_state
    return run.history


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


# ------------------------------------------------------------------ the command line

_CLI = ("main", "resolve_settings", "_parser", "PAPER_DEFAULTS", "PRESETS", "SHORT_RECIPE")
_CLI += ("SHORT_RUN_EPOCHS",)


def __getattr__(name: str):
    """The command line (:mod:`bnnlib.train_cli`), imported on first use."""
    if name in _CLI:
        from . import train_cli

        return getattr(train_cli, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


if __name__ == "__main__":
    from .train_cli import main

    main()
