"""bnnlib.bench.timing: median of repeats after warm-up, device synchronized per read."""

from __future__ import annotations

import pytest
import torch

from bnnlib.bench import kernels as bench_kernels
from bnnlib.bench import timing


def test_fake_clock_median_and_call_order():
    events = []
    ticks = iter([0.0, 1.0, 10.0, 13.0, 20.0, 22.0, 30.0, 30.5])

    def clock():
        events.append("clock")
        return next(ticks)

    r = timing.timeit(
        lambda: events.append("fn"), repeats=4, warmup=2, sync=lambda: events.append("sync"),
        clock=clock,
    )  # fmt: skip
    assert r["times_s"] == [1.0, 3.0, 2.0, 0.5]
    assert r["median_s"] == 1.5
    # Warm-up calls untimed, then per repeat: sync, clock, fn, sync, clock.
    assert events == ["fn", "fn"] + ["sync", "clock", "fn", "sync", "clock"] * 4


def test_no_warmup_and_cpu_has_no_sync():
    calls = []
    r = timing.timeit(lambda: calls.append(1), repeats=3, warmup=0)
    assert len(calls) == 3 and len(r["times_s"]) == 3 and all(t >= 0 for t in r["times_s"])
    assert timing.device_sync("cpu") is None
    assert timing.device_sync("cuda") is torch.cuda.synchronize


def test_bench_modules_share_the_timer():
    assert bench_kernels.timeit is timing.timeit and bench_kernels.cuda_timeit is timing.cuda_timeit


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_events_time_gpu_work():
    a = torch.randn(512, 512, device="cuda")
    calls = []

    def fn():
        calls.append(1)
        return a @ a

    r = timing.cuda_timeit(fn, repeats=3, warmup=2)
    assert len(calls) == 5 and len(r["times_s"]) == 3 and r["median_s"] > 0
    w = timing.timeit(fn, repeats=3, device="cuda")
    assert w["median_s"] > 0
