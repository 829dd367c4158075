"""``python -m bnnlib.bench --train``: a training step against the float32 GEMMs it must do.

For each model (the Torch7 preset 3 x 2048 MLP, the Theano recipe's 3 x 4096 MLP, the CIFAR-10
ConvNet at width 0.5 with its 1024-unit dense layers), built from its :class:`RunConfig` as
``python -m bnnlib.train`` builds it, on random data of the right shape:

* one step of each path, split into forward (with the loss), backward and optimizer step:
  the plain path (``opt.step()``, the torch operations of :mod:`bnnlib.nn.optim`), the fast
  path (:class:`bnnlib.train.fast_step.FastStep`) and the fast path with float32 forward
  products (``fast_f32``: ``FastStep(xnor=False)``, what the fast path was before its XNOR
  products), alternated step by step so that other load hits them alike; medians over the
  repeats after warm-up;
* the **float32 GEMM floor** of the same step, timed in the same run with the same threads:
  every layer's forward product, its gradient with respect to its input (not for the first
  layer, whose input is the data) and with respect to its weight, as torch computes them
  (``torch.mm`` for dense layers, ``aten.convolution_backward`` for convolutions), on tensors
  of the step's own shapes; nothing else (no batch norm, activation, loss or update);
* the ratio step / floor, and the epoch time it implies (steps per epoch of the model's
  training split times the median step; evaluation not included).

The floor is what a training step must at least cost on this machine in float32. The fast
path computes the forward products of the layers with +-1 inputs (the MLPs' hidden and output
layers, when no dropout comes before them) by XNOR-popcount
(:mod:`bnnlib.train.fast_linear`): the same float32 numbers for far less than their GEMMs, so
its step can go below that floor's share for them; the table names those layers.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from bnnlib.bench.timing import timeit
from bnnlib.nn.losses import pm1_targets, square_hinge
from bnnlib.train import cli as train_cli
from bnnlib.train.fast_step import FastStep
from bnnlib.train.loop import make_optimizer

__all__ = ["TrainModel", "TRAIN_MODELS", "bench_train"]


@dataclass(frozen=True)
class TrainModel:
    """A model of the benchmark: its training flags, what it is, its training split's size."""

    key: str
    argv: tuple[str, ...]
    label: str
    train_images: int


TRAIN_MODELS = (
    TrainModel("torch7_mlp", ("--preset", "torch7"), "MLP 3 x 2048, the Torch7 preset", 50_000),
    TrainModel(
        "theano_mlp",
        ("--model", "mnist_mlp", "--recipe", "paper", "--epochs", "1000"),
        "MLP 3 x 4096, the Theano recipe (Adam)",
        50_000,
    ),
    TrainModel(
        "convnet",
        (
            "--model",
            "cifar10_convnet",
            "--width",
            "0.5",
            "--fc-width",
            "1",
            "--epochs",
            "500",
            "--recipe",
            "paper",
        ),  # fmt: skip
        "CIFAR-10 ConvNet, width 0.5, dense 1024 (Adam)",
        45_000,
    ),
)


def _ms(xs: list[float]) -> float:
    return 1e3 * statistics.median(xs)


class _Shapes:
    """The inputs of every Linear / Conv2d layer of one forward pass (forward hooks)."""

    def __init__(self, net: nn.Module) -> None:
        self.seen: list[tuple[nn.Module, torch.Size]] = []
        self.handles = [
            m.register_forward_hook(self._hook)
            for m in net.modules()
            if isinstance(m, (nn.Linear, nn.Conv2d))
        ]

    def _hook(self, module, inputs, output) -> None:
        self.seen.append((module, inputs[0].shape))

    def close(self) -> None:
        for h in self.handles:
            h.remove()


def _gemm_floor(layers: list[tuple[nn.Module, torch.Size]], repeats: int) -> list[float]:
    """Seconds of the float32 products of one step (module docstring), ``repeats`` times."""
    g = torch.Generator().manual_seed(0)
    work = []
    for i, (module, shape) in enumerate(layers):
        w = torch.randn(module.weight.shape, generator=g)
        x = torch.randn(shape, generator=g)
        if isinstance(module, nn.Conv2d):
            y = F.conv2d(x, w, None, module.stride, module.padding)
            work.append(("conv", module, x, w, torch.randn(y.shape, generator=g), i > 0))
        else:
            x = x.flatten(1)
            gy = torch.randn(x.shape[0], w.shape[0], generator=g)
            work.append(("linear", module, x, w, gy, i > 0))

    def once() -> None:
        for kind, module, x, w, gy, grad_input in work:
            if kind == "linear":
                torch.mm(x, w.t())
                if grad_input:
                    torch.mm(gy, w)
                torch.mm(gy.t(), x)
            else:
                F.conv2d(x, w, None, module.stride, module.padding)
                torch.ops.aten.convolution_backward(
                    gy, x, w, None, module.stride, module.padding, module.dilation, False,
                    [0, 0], 1, [grad_input, True, False],
                )  # fmt: skip

    return timeit(once, repeats, warmup=1)["times_s"]


#: The paths timed: name -> (fast, xnor).
PATHS = {"plain": (False, False), "fast": (True, True), "fast_f32": (True, False)}


def _path(model: TrainModel, fast: bool, xnor: bool = True):
    """(net, optimizer, step function, inputs, targets, batch size, its FastStep or None) of
    one path, seeded alike."""
    cfg = train_cli.config_from_argv(list(model.argv))
    shape = (1, 28, 28) if cfg.model == "mnist_mlp" else (3, 32, 32)
    torch.manual_seed(0)
    net = cfg.build_model(shape, 10).train()
    opt = make_optimizer(net, cfg.optimizer, cfg.lr_start, cfg.glorot_scale)
    stepper = FastStep(opt, net, xnor=xnor) if fast else None
    step = stepper.step if stepper is not None else opt.step
    g = torch.Generator().manual_seed(1)
    x = torch.rand(cfg.batch_size, *shape, generator=g)
    t = pm1_targets(torch.randint(0, 10, (cfg.batch_size,), generator=g), 10)
    return net, opt, step, x, t, cfg.batch_size, stepper


def _timed_step(net, opt, step, x, t) -> tuple[float, float, float]:
    t0 = time.perf_counter()
    loss = square_hinge(net(x), t)
    t1 = time.perf_counter()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    t2 = time.perf_counter()
    step()
    return t1 - t0, t2 - t1, time.perf_counter() - t2


def bench_one(model: TrainModel, repeats: int = 20, warmup: int = 3, log=print) -> dict:
    """The split of one step of each path (:data:`PATHS`), the GEMM floor and the ratios for
    ``model``."""
    paths = {name: _path(model, fast, xnor) for name, (fast, xnor) in PATHS.items()}
    shapes = _Shapes(paths["plain"][0])
    for net, opt, step, x, t, *_ in paths.values():
        for _ in range(warmup):  # compiles the kernels (or loads them from the cache)
            _timed_step(net, opt, step, x, t)
    shapes.close()
    layers = shapes.seen[: len(shapes.seen) // warmup]  # one forward's layers
    split = {name: {"forward": [], "backward": [], "optimizer": []} for name in paths}
    order = list(paths)
    for r in range(repeats):
        for name in order[r % len(order) :] + order[: r % len(order)]:  # each first in turn
            net, opt, step, x, t, *_ = paths[name]
            for part, s in zip(split[name], _timed_step(net, opt, step, x, t), strict=True):
                split[name][part].append(s)
    floor = _gemm_floor(layers, repeats)
    batch = paths["plain"][5]
    steps = model.train_images // batch
    out = {"model": model.key, "label": model.label, "argv": list(model.argv), "batch": batch,
           "steps_per_epoch": steps, "repeats": repeats, "warmup": warmup,
           "gemm_floor_ms": _ms(floor), "gemm_layers": len(layers)}  # fmt: skip
    for name, parts in split.items():
        totals = [sum(p) for p in zip(*parts.values(), strict=True)]
        out[name] = {part: _ms(v) for part, v in parts.items()}
        out[name]["step"] = _ms(totals)
        out[name]["over_floor"] = out[name]["step"] / out["gemm_floor_ms"]
        out[name]["epoch_s"] = steps * out[name]["step"] / 1e3
    out["fast_speedup"] = out["plain"]["step"] / out["fast"]["step"]
    products = paths["fast"][6].products
    out["fast"]["xnor_layers"] = [name for name, p in products.items() if p.calls]
    log(
        f"  {model.label}: plain {out['plain']['step']:.1f} ms, fast {out['fast']['step']:.1f} "
        f"ms (float32 products: {out['fast_f32']['step']:.1f} ms), GEMM floor "
        f"{out['gemm_floor_ms']:.1f} ms"
    )
    return out


def bench_train(
    models: tuple[str, ...] | None = None, repeats: int = 20, warmup: int = 3, log=print
) -> dict:
    """:func:`bench_one` for every model of :data:`TRAIN_MODELS` (or those named)."""
    chosen = [m for m in TRAIN_MODELS if models is None or m.key in models]
    return {
        "threads": torch.get_num_threads(),
        "models": [bench_one(m, repeats, warmup, log) for m in chosen],
    }


def train_table(res: dict) -> str:
    """The printed table of :func:`bench_train`'s result."""
    lines = [
        f"Training step on the CPU ({res['threads']} threads), ms (median): forward + loss / "
        "backward / optimizer = step; the float32 GEMM floor of the same step; "
        "epoch = steps x step",
        f"{'model':48s} {'path':8s} {'fwd':>7s} {'bwd':>7s} {'opt':>7s} {'step':>7s} "
        f"{'floor':>7s} {'x floor':>8s} {'epoch s':>8s}",
    ]
    for m in res["models"]:
        for name in PATHS:
            if name not in m:  # a result written before the path was timed
                continue
            p = m[name]
            lines.append(
                f"{m['label'][:48]:48s} {name:8s} {p['forward']:7.1f} {p['backward']:7.1f} "
                f"{p['optimizer']:7.1f} {p['step']:7.1f} {m['gemm_floor_ms']:7.1f} "
                f"{p['over_floor']:8.2f} {p['epoch_s']:8.1f}"
            )
        xnor = ", ".join(m["fast"].get("xnor_layers", [])) or "none"
        lines.append(
            f"{'':48s} fast path {m['fast_speedup']:.2f}x the plain path; "
            f"XNOR-popcount forward products in layers: {xnor}"
        )
    return "\n".join(lines)
