"""CPU sections of :mod:`bnnlib.bench`: packed MNIST MLP inference timed against the float32
network a user would deploy (``mnist_mlp_cpu``; its predictions are checked against the BNN
module's, ``*_float32_model``) and the training step of the BNN MLP against its float twin
(``train_step_cpu``). See :mod:`bnnlib.bench` for what each figure means."""

from __future__ import annotations

import statistics
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch

from bnnlib import data
from bnnlib.bench.common import deployed_float32, mlp_model, mnist_split
from bnnlib.bench.timing import timeit

__all__ = ["bench_mnist_mlp", "bench_train_step"]


def export_and_load(net, inference):
    """The net packed through a file, as a user gets it: (PackedNet, file bytes)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = inference.export(net, Path(tmp) / "mlp.bnn")
        file_bytes = path.stat().st_size
        packed = inference.load(path)
    return packed, file_bytes


def _bnn_predictions(net, xs, batch_size: int) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat(
            [net(xs[i : i + batch_size]) for i in range(0, len(xs), batch_size)]
        ).argmax(1)


def _time_cpu_paths(net, packed, xt, repeats: int, batch_size: int, log) -> dict:
    """Times (median and all) and predictions of the packed net, and the time of the float32
    network a user would deploy instead (:func:`deployed_float32`, under ``inference_mode``).
    The predictions compared with the packed ones are the BNN module's (its exact simulation)."""
    xs = data.scale(xt)
    deployed = deployed_float32(net)

    def batches(model):
        return torch.cat([model(xs[i : i + batch_size]) for i in range(0, len(xs), batch_size)])

    def float_forward():
        with torch.inference_mode():
            return batches(deployed)

    log("  timing the deployed float32 network ...")
    t_float = timeit(float_forward, repeats)
    # A layer at a time, as labelled: the fused path has no float first layer, and its own
    # figures are bnnlib.bench.latency's.
    real = {"first_layer": "real", "batch_size": batch_size, "path": "layers"}
    planes = {**real, "first_layer": "bitplanes"}
    log("  timing packed (first layer: real) ...")
    t_packed = timeit(lambda: packed.predict(xt, **real), repeats)
    log("  timing packed (first layer: bit planes) ...")
    t_planes = timeit(lambda: packed.predict(xt, **planes), repeats)
    return {
        "times": {"float32": t_float, "packed": t_packed, "packed_bitplanes": t_planes},
        "packed": packed.predict(xt, **real),
        "planes": packed.predict(xt, **planes),
        "float": _bnn_predictions(net, xs, batch_size),
    }


def bench_mnist_mlp(
    hidden: int = 4096,
    data_root: str | None = None,
    model_path: str | None = None,
    batchnorm: str = "standard",
    n_test: int | None = None,
    n_calib: int = 5000,
    repeats: int = 3,
    batch_size: int = 1000,
    log: Callable[[str], None] = print,
) -> dict:
    """Packed CPU inference vs the float32 model on MNIST test images (see module docstring)."""
    from bnnlib import inference

    xt, yt, xcal, data_note = mnist_split(data_root, n_test, n_calib)
    net, model_note = mlp_model(hidden, batchnorm, model_path, xcal)
    log(f"  model: {model_note}\n  data: {data_note}")
    packed, file_bytes = export_and_load(net, inference)
    out: dict = {"model": model_note, "data": data_note, "n_images": len(xt)}
    out["hidden"] = packed.header["layers"][0]["out_features"]
    run = _time_cpu_paths(net, packed, xt, repeats, batch_size, log)
    t, pred_packed, pred_planes, pred_float = (
        run["times"],
        run["packed"],
        run["planes"],
        run["float"],
    )
    log("  float simulation (reference) ...")
    pred_sim = inference.simulate(net, xt, batch_size=batch_size)
    fbytes = inference.float32_nbytes(net)
    out.update(
        batch_size=batch_size,
        float32_s=t["float32"]["median_s"],
        packed_s=t["packed"]["median_s"],
        packed_bitplanes_s=t["packed_bitplanes"]["median_s"],
        speedup_packed_over_float32=t["float32"]["median_s"] / t["packed"]["median_s"],
        speedup_bitplanes_over_float32=t["float32"]["median_s"] / t["packed_bitplanes"]["median_s"],
        times={k: v["times_s"] for k, v in t.items()},
        identical_packed_vs_simulation=int((pred_packed == pred_sim).sum()),
        identical_bitplanes_vs_real=int((pred_planes == pred_packed).sum()),
        identical_packed_vs_float32_model=int((pred_packed == pred_float).sum()),
        all_identical_to_simulation=bool(
            torch.equal(pred_packed, pred_sim) and torch.equal(pred_planes, pred_sim)
        ),
        weights_float32_bytes=fbytes,
        weights_packed_bytes=packed.nbytes,
        weights_ratio=fbytes / packed.nbytes,
        packed_file_bytes=file_bytes,
        repeats=repeats,
    )
    if yt is not None:
        out["error_packed"] = float((pred_packed != yt).float().mean())
        out["error_float32_model"] = float((pred_float != yt).float().mean())
    return out


def bench_train_step(
    hidden: int, batch: int = 100, repeats: int = 20, warmup: int = 3, x=None, y=None
) -> dict:
    """Median training-step time of the BNN MLP and of its float twin, steps alternated."""
    from bnnlib.nn.losses import pm1_targets, square_hinge
    from bnnlib.nn.models import mnist_mlp
    from bnnlib.nn.optim import Adam

    torch.manual_seed(0)
    if x is None:
        x = torch.rand(batch, 1, 28, 28) * 2 - 1
        y = torch.randint(0, 10, (batch,))
    x, t = x[:batch], pm1_targets(y[:batch], 10)
    nets = {"bnn": mnist_mlp(hidden=hidden), "float": mnist_mlp(hidden=hidden, binary=False)}
    opts = {k: Adam(n, lr=1e-3) for k, n in nets.items()}
    for n in nets.values():
        n.train()

    def step(k):
        loss = square_hinge(nets[k](x), t)
        opts[k].zero_grad(set_to_none=True)
        loss.backward()
        opts[k].step()

    for _ in range(warmup):
        for k in nets:
            step(k)
    times: dict[str, list[float]] = {k: [] for k in nets}
    for r in range(repeats):
        order = ("bnn", "float") if r % 2 == 0 else ("float", "bnn")
        for k in order:
            times[k].append(timeit(lambda k=k: step(k), 1, warmup=0)["median_s"])
    med = {k: statistics.median(v) for k, v in times.items()}
    # Each BNN step has a float step next to it in time: the median of these paired ratios is
    # robust to load that changes during the run (the ratio of medians is not).
    paired = [b / f for b, f in zip(times["bnn"], times["float"], strict=True)]
    return {
        "hidden": hidden,
        "batch": batch,
        "repeats": repeats,
        "warmup": warmup,
        "bnn_step_s": med["bnn"],
        "float_step_s": med["float"],
        "ratio_bnn_over_float": statistics.median(paired),
        "ratio_of_medians": med["bnn"] / med["float"],
        "paired_ratios": paired,
        "times": times,
    }
