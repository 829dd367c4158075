"""Smoke run of ``python -m bnnlib.bench`` with tiny sizes: structure and exactness, not speed."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from bnnlib.bench import cli as bench
from bnnlib.bench import common as bench_common
from bnnlib.bench import gpu as bench_gpu
from bnnlib.bench import timing


def test_timeit_counts_calls():
    calls = []
    r = timing.timeit(lambda: calls.append(1), repeats=3, warmup=2)
    assert len(calls) == 5 and len(r["times_s"]) == 3
    assert r["median_s"] == sorted(r["times_s"])[1]


def test_bench_quick_smoke(tmp_path, monkeypatch):
    torch.manual_seed(0)
    out = tmp_path / "bench.json"
    argv = ["--quick", "--sizes", "64", "--hidden", "64", "--n-test", "300", "--n-calib", "500"]
    argv += ["--train-hidden", "32", "--train-repeats", "2", "--repeats", "1", "--out", str(out)]
    res = bench.main(argv)
    saved = json.loads(out.read_text())
    assert saved["meta"]["command"].endswith(" ".join(argv))
    for key in ("cpu", "torch", "numba", "date", "device"):
        assert key in saved["meta"]
    # The commit of the code that measured (issue 28): the checkout's HEAD.
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(bench.__file__).parents[2],
                          capture_output=True, text=True)  # fmt: skip
    if head.returncode == 0:
        assert saved["meta"]["code"]["commit"] == head.stdout.strip()
    g = saved["gemm_cpu"]
    assert "results" in g or "skipped" in g
    m = saved["mnist_mlp_cpu"]
    assert m["n_images"] == 300 and m["hidden"] == 64
    # Exactness: the packed net equals the float simulation, in both first-layer modes.
    assert m["all_identical_to_simulation"] is True
    assert m["identical_packed_vs_simulation"] == 300
    assert m["identical_bitplanes_vs_real"] == 300
    assert m["weights_float32_bytes"] == 4 * (784 * 64 + 64 * 64 * 2 + 64 * 10)
    assert m["weights_ratio"] == m["weights_float32_bytes"] / m["weights_packed_bytes"]
    (t,) = saved["train_step_cpu"]
    assert t["hidden"] == 32 and t["batch"] == 100 and len(t["times"]["bnn"]) == 2
    assert t["ratio_of_medians"] == t["bnn_step_s"] / t["float_step_s"]
    pairs = [b / f for b, f in zip(t["times"]["bnn"], t["times"]["float"], strict=True)]
    assert t["ratio_bnn_over_float"] == pytest.approx(sum(pairs) / 2)
    if not torch.cuda.is_available():
        assert "skipped" in saved["gpu"]
    assert res["mnist_mlp_cpu"]["identical_packed_vs_simulation"] == 300


class _CpuStandIns:
    """bnnlib.kernels.cuda's functions computed on the CPU (checks the GPU MLP paths' own logic)."""

    @staticmethod
    def available():
        return True

    @staticmethod
    def baseline_gemm(a, b):
        return a @ b

    @staticmethod
    def pack(x, dim=-1, word_bits=64, check=True):
        from bnnlib import kernels

        return kernels.pack(x.float(), dim=dim, word_bits=word_bits)

    @staticmethod
    def xnor_gemm(a, b, k):
        from bnnlib import kernels

        return kernels.xnor_gemm(a, b, k)

    @staticmethod
    def xnor_gemm_fast(a, b, k, method="auto"):
        from bnnlib import kernels

        return kernels.xnor_gemm(a, b, k)


def test_gpu_mlp_paths_on_cpu_stand_ins(monkeypatch):
    """The staged GPU MLP paths (baseline kernel everywhere vs packed XNOR from layer 2, and the
    bit-plane first layer) run on CPU stand-ins: the XNOR paths predict exactly as the baseline
    path, and agree with the float simulation."""
    from bnnlib import inference
    from bnnlib.nn.models import mnist_mlp

    monkeypatch.setattr(bench_gpu, "bcuda", _CpuStandIns)  # the module that holds the paths
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, 256, (300, 784), generator=g, dtype=torch.uint8)
    net = bench_common.calibrate_batchnorm(mnist_mlp(hidden=96, depth=3), x, batch=100)
    xs = x.float() * (2 / 255) - 1

    def run(stages, h):
        with torch.no_grad():
            for _, fn in stages:
                h = fn(h)
        return h.argmax(1)

    base = run(bench_gpu.stages_float(net, _CpuStandIns.baseline_gemm), xs)
    assert [n for n, _ in bench_gpu.stages_float(net, torch.matmul)] == [
        f"layer{i}" for i in (1, 2, 3, 4)
    ]
    for kernel in ("paper", "fast"):
        stages = bench_gpu.stages_xnor(net, kernel, "baseline")
        assert torch.equal(run(stages, xs), base), kernel
    planes = run(bench_gpu.stages_xnor(net, "fast", "bitplanes"), x)
    sim = inference.simulate(net, x)
    assert (planes == sim).float().mean() >= 0.99
    assert (base == sim).float().mean() >= 0.99


def test_without_out_nothing_is_written_into_results(tmp_path, monkeypatch):
    """`python -m bnnlib.bench --quick` used to rewrite the committed results/bench_cpu.json."""
    assert bench.default_out("bench", "cpu").parts[:2] == ("build", "bench")
    assert bench.default_out("bench_latency", "cpu").name == "bench_latency_cpu.json"
    monkeypatch.chdir(tmp_path)
    (tmp_path / "results").mkdir()
    argv = ["--quick", "--sizes", "64", "--skip", "mlp", "train", "gpu"]
    bench.main(argv)
    assert list((tmp_path / "results").iterdir()) == []
    assert (tmp_path / "build" / "bench" / "bench_cpu.json").exists()
    with pytest.raises(SystemExit):
        bench.main([*argv, "--out", ""])


def test_baseline_mlp_is_the_packed_net_on_another_kernel():
    """The Section 4 MLP paths (every layer on the baseline kernel; hidden layers on XNOR with
    the first on the baseline kernel) give the packed net's scores exactly."""
    from bnnlib import inference
    from bnnlib.bench.mlp import export_and_load
    from bnnlib.bench.section4 import BaselineMLP
    from bnnlib.nn.models import mnist_mlp

    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, 256, (300, 1, 28, 28), generator=g, dtype=torch.uint8)
    net = bench_common.calibrate_batchnorm(mnist_mlp(hidden=100, depth=2), x, batch=100)
    packed, _ = export_and_load(net, inference)
    ref = packed.scores(x, path="layers")
    base = BaselineMLP(packed)
    assert torch.equal(base.scores(x), ref)
    assert torch.equal(base.scores(x, hidden="xnor"), ref)
    assert len(set(ref.argmax(1).tolist())) > 1  # the thresholds are exercised
    with pytest.raises(ValueError, match="hidden must be"):
        base.scores(x, hidden="int4")


def test_section4_quick_run_writes_build_bench_only(tmp_path, monkeypatch):
    from bnnlib.bench import lowp

    monkeypatch.setattr(lowp, "slow_products", dict)  # every product timed, whatever the CPU
    monkeypatch.chdir(tmp_path)
    (tmp_path / "results").mkdir()
    argv = ["--section4", "--quick", "--sizes", "96", "--hidden", "64"]
    res = bench.main([*argv, "--n-test", "200", "--n-calib", "200"])
    s4 = res["section4_cpu"]
    # k = 96: every +/-1 sum is within 256, so even the bf16 output is exact
    assert s4["gemm"][0]["exact"] == {
        "baseline": True, "xnor": True, "torch_int8": True, "torch_bfloat16": True,
    }  # fmt: skip
    assert set(s4["gemm"][0]["seconds"]) == {
        "baseline", "xnor", "xnor_with_packing", "torch_float32", "torch_bfloat16", "torch_int8",
    }  # fmt: skip
    assert s4["mlp"]["all_identical"] and s4["mlp"]["n_images"] == 200
    assert s4["mlp"]["identical_to_simulation"]["int8_exact"] == 200
    assert s4["mlp"]["best_deployed"] in s4["mlp"]["seconds"]
    assert list((tmp_path / "results").iterdir()) == []
    assert (tmp_path / "build" / "bench" / "bench_section4_cpu.json").exists()
    with pytest.raises(SystemExit):
        bench.main(["--section4", "--latency"])


def test_bench_train_times_each_path_against_the_gemm_floor_of_the_same_layers():
    """bench --train's record: each path's split adds up to its step, the floor covers every
    dense layer of the model, the ratios are the quotients of the figures (no timing asserted)."""
    from bnnlib.bench.train import TrainModel, bench_one, train_table

    model = TrainModel("tiny", ("--preset", "torch7", "--hidden", "64"), "tiny preset", 1000)
    r = bench_one(model, repeats=2, warmup=1, log=lambda _: None)
    assert r["gemm_layers"] == 4 and r["steps_per_epoch"] == 10  # 3 hidden + output, batch 100
    for path in ("plain", "fast", "fast_f32"):
        p = r[path]
        assert p["step"] > 0 and p["over_floor"] == p["step"] / r["gemm_floor_ms"]
        assert abs(p["epoch_s"] - 10 * p["step"] / 1e3) < 1e-12
    # the layers fed by Sign (hidden 2-3, output) take XNOR-popcount; the first (pixels) not
    assert r["fast"]["xnor_layers"] == ["4", "7", "10"]
    table = train_table({"threads": 1, "models": [r]})
    assert "tiny preset" in table and "fast_f32" in table and "layers: 4, 7, 10" in table


def test_latency_quick_run_has_every_baseline_the_floor_and_the_bound(tmp_path, monkeypatch):
    """``--latency``: the bf16 / int8 baselines beside float32, the exact int8 / bf16 BNN equal
    to the float simulation on every image, the floor on the same threads and on one, the
    compute bound from a measured clock, the libraries named."""
    from bnnlib.bench import lowp

    monkeypatch.setattr(lowp, "slow_products", dict)  # every product timed, whatever the CPU
    monkeypatch.chdir(tmp_path)
    argv = ["--latency", "--quick", "--hidden", "64", "--batches", "1", "16", "--no-conv"]
    lat = bench.main(argv)["latency_cpu"]
    for b in ("1", "16"):
        assert set(lat["ms_per_image"][b]) >= {"packed", "float32", "bfloat16", "int8_dynamic",
                                                "int8_exact", "bfloat16_exact"}  # fmt: skip
    e = lat["exactness"]
    assert e["all_identical"] is True
    assert e["int8_exact_identical_to_simulation"] == e["n_images"]
    assert e["bfloat16_exact_identical_to_simulation"] == e["n_images"]  # k <= 256: exact
    f = lat["floor"]
    assert f["ms"] in (f["all_threads_ms"], f["one_thread_ms"]) and f["bytes"] > 0
    # the floor's reads were timed in the batch-1 rounds, then taken out of the row
    assert not [k for k in lat["ms_per_image"]["1"] if k.startswith("floor_")]
    assert lat["ratios"]["batch1_packed_over_floor"] == pytest.approx(
        lat["ms_per_image"]["1"]["packed"] / f["ms"], rel=1e-3
    )
    # the speedups over the baselines divide by the packed path timed in their rounds
    b1 = lat["ms_per_image"]["1"]
    assert lat["ratios"]["batch1_float32_over_packed"] == pytest.approx(
        b1["float32"] / b1["packed_beside_baselines"], rel=1e-3
    )
    cb = lat["compute_bound"]
    assert 0.3e9 < cb["clock"]["measured_hz"] < 7e9  # a real clock, not a nominal one
    assert cb["bound_macs_per_s"] > 0 and "batch16_packed_share_of_compute_bound" in lat["ratios"]
    same = lat["xnor_gemm_same_shape"]  # at the largest batch, timed in turn
    assert same["shape"] == [16, 64, 64] and same["rounds"] >= 3
    g = same["gmac_per_s"]
    assert same["xnor_gemm_over_packed"] == pytest.approx(g["xnor_gemm"] / g["packed"])
    variants = cb["variants_macs_per_cycle"]  # numba's loop and the hand-written C ones
    assert cb["macs_per_cycle_per_core"] == max(variants.values()) == variants[cb["by"]]
    lim = lat["batch1_limit"]
    assert lim["ms"] == max(lim["stream_ms"], lim["compute_ms"]) and lim["stream_ms"] == f["ms"]
    assert lat["ratios"]["batch1_packed_over_limit"] == pytest.approx(
        lat["ms_per_image"]["1"]["packed"] / lim["ms"], rel=1e-3
    )
    assert lat["libraries"]["blas"] and lat["libraries"]["cpu_capability"]
    assert (tmp_path / "build" / "bench" / "bench_latency_cpu.json").exists()


def test_latency_batch_1_only_keeps_the_batch1_speedups_beside_the_baselines(tmp_path, monkeypatch):
    """``--batches 1``: the largest batch is batch 1, and its speedups over the baselines still
    divide by the packed path timed in the baselines' rounds, its floor ratio by the one timed
    in rounds of its own."""
    monkeypatch.chdir(tmp_path)
    argv = ["--latency", "--quick", "--hidden", "64", "--batches", "1", "--no-conv"]
    lat = bench.main(argv)["latency_cpu"]
    b1, r = lat["ms_per_image"]["1"], lat["ratios"]
    assert r["batch1_float32_over_packed"] == pytest.approx(
        b1["float32"] / b1["packed_beside_baselines"], rel=1e-3
    )
    assert r["batch1_layers_over_packed"] == pytest.approx(
        b1["packed_layers"] / b1["packed_beside_baselines"], rel=1e-3
    )
    assert r["batch1_packed_over_floor"] == pytest.approx(
        b1["packed"] / lat["floor"]["ms"], rel=1e-3
    )


@pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler")
def test_hand_written_popcount_variants_build_run_and_agree():
    """The C variants of the compute bound (built with -march=native here): each one's sum
    equals the scalar popcount's (none ``wrong``), the AVX2 ones where the CPU has AVX2 and
    ``vpopcntq`` where it has AVX-512 VPOPCNTDQ, a plausible rate for each (0.1 to 2000
    binary MACs per ns of one core)."""
    from bnnlib import hardware
    from bnnlib.bench import bounds

    r = bounds.hand_written_popcount()
    assert r["available"], r.get("why")
    assert r["wrong"] == []
    rates = r["macs_per_s_per_core"]
    assert "scalar_popcnt" in rates
    flags = hardware.cpu_flags()
    if "avx2" in flags:
        assert {"avx2_lookup", "avx2_lookup_deferred", "avx2_harley_seal"} <= set(rates)
    if {"avx512f", "avx512_vpopcntdq"} <= set(flags):
        assert "avx512_vpopcntq" in rates
    assert all(1e8 < v < 2e12 for v in rates.values()), rates


def test_a_failing_c_compiler_is_reported_not_raised(monkeypatch):
    """``$CC`` that fails (here ``false``): the variants are reported missing with the
    compiler's name, and nothing is raised."""
    from bnnlib.bench import bounds

    false = shutil.which("false")
    if false is None:
        pytest.skip("no false command")
    monkeypatch.setenv("CC", false)
    r = bounds.hand_written_popcount()
    assert r["available"] is False and r["why"].startswith(f"{false} failed")


def test_no_c_compiler_leaves_numbas_loop_as_the_bound(monkeypatch):
    """Without a C compiler the hand-written variants are reported missing, with the reason,
    and the bound is numba's loop alone."""
    import shutil

    from bnnlib.bench import bounds

    monkeypatch.setattr(shutil, "which", lambda name: None)
    r = bounds.hand_written_popcount()
    assert r == {"available": False, "why": "no C compiler ($CC, cc, gcc or clang) found"}
    clock = {"measured_hz": 3e9, "nominal_mhz": None, "how": "stated"}
    b = bounds.popcount_bound(threads=1, clock=clock)
    assert b["by"] == "numba_loop" and set(b["variants_macs_per_cycle"]) == {"numba_loop"}


def test_the_batch1_limit_is_the_larger_floor_with_the_first_layer_counted_free():
    """The compute floor counts the binary MACs after the first layer at the per-core bound on
    the batch-1 threads; the limit is the larger of it and the streaming floor, each way."""
    from bnnlib.bench.latency import batch1_limit
    from bnnlib.nn.models import mnist_mlp

    net = mnist_mlp(hidden=64, depth=3)  # 784-64-64-64-10
    binary = 64 * 64 * 2 + 64 * 10
    floor = {"ms": 0.5, "threads": 2, "one_thread_ms": 0.8}
    fast = batch1_limit(net, floor, {"bound_macs_per_s": 4e9, "threads": 4})  # 1e9 per core
    assert fast["binary_macs"] == binary
    assert fast["compute_ms"] == pytest.approx(1e3 * binary / 2e9)
    assert fast["one_thread_compute_ms"] == pytest.approx(1e3 * binary / 1e9)
    assert (fast["ms"], fast["bound_by"], fast["one_thread_ms"]) == (0.5, "stream", 0.8)
    slow = batch1_limit(net, floor, {"bound_macs_per_s": 4e6, "threads": 4})  # 1e6 per core
    assert slow["bound_by"] == slow["one_thread_bound_by"] == "compute"
    assert slow["ms"] == pytest.approx(1e3 * binary / 2e6) and slow["stream_ms"] == 0.5
    assert slow["one_thread_ms"] == pytest.approx(1e3 * binary / 1e6)


def test_the_static_int8_convnet_is_int8_throughout_and_tracks_the_float32_network():
    """``deployed_int8_static``: every convolution and linear layer becomes an int8 module (the
    batch norms right after them folded in), none stays float, and its scores follow the
    float32 network's (a timing baseline, not the BNN: correlation above 0.9 on 64 images,
    seed 0)."""
    from torch import nn
    from torch.ao.nn import quantized as nnq

    from bnnlib import data
    from bnnlib.bench import lowp
    from bnnlib.bench.common import calibrate_batchnorm, deployed_float32
    from bnnlib.nn.models import cifar10_convnet

    torch.manual_seed(0)
    net = cifar10_convnet(width=0.125, fc_width=0.125)
    x = torch.randint(0, 256, (264, 3, 32, 32), dtype=torch.uint8)
    calibrate_batchnorm(net, x[:200], batch=50)
    deployed = deployed_float32(net)
    q8 = lowp.deployed_int8_static(deployed, data.scale(x[:200]))
    kinds = [type(m) for m in q8.modules()]
    assert kinds.count(nnq.Conv2d) == 6 and kinds.count(nnq.Linear) == 3
    assert nn.Conv2d not in kinds and nn.Linear not in kinds
    assert kinds.count(nnq.BatchNorm2d) == 3  # after the pools: not next to a convolution
    with torch.inference_mode():
        f, q = deployed(data.scale(x[200:])), q8(data.scale(x[200:]))
    assert f.shape == q.shape == (64, 10) and q.dtype == torch.float32
    assert torch.corrcoef(torch.stack([f.flatten(), q.flatten()]))[0, 1] > 0.9


def test_products_without_a_hardware_path_are_left_out_and_said_so(tmp_path, monkeypatch):
    """On a CPU where bf16 and int8 products run in reference loops (AVX2: 80-200x float32's
    time), --latency and --section4 leave out what uses them, say why, and still rank the
    rest (float32 and fbgemm's dynamic int8 stay)."""
    from bnnlib.bench import lowp

    why = {"bfloat16": "bf16: no hardware path here", "int8": "int8: no hardware path here"}
    monkeypatch.setattr(lowp, "slow_products", lambda: why)
    monkeypatch.chdir(tmp_path)
    argv = ["--latency", "--quick", "--hidden", "64", "--batches", "1", "16", "--no-conv"]
    lat = bench.main(argv)["latency_cpu"]
    left_out = {"bfloat16", "bfloat16_exact", "int8_exact", "packed_int8_gemm"}
    for b in ("1", "16"):
        assert not left_out & set(lat["ms_per_image"][b])
        assert {"packed", "float32", "int8_dynamic"} <= set(lat["ms_per_image"][b])
    assert lat["skipped"] == why and lat["best_baseline_at_largest_batch"] in (
        "float32",
        "int8_dynamic",
    )
    assert "batch16_bfloat16_over_packed" not in lat["ratios"]
    assert lat["ratios"]["batch16_best_baseline_over_packed"] > 0
    assert not any(k.endswith("_exact_identical_to_simulation") for k in lat["exactness"])
    argv = ["--section4", "--quick", "--sizes", "96", "--hidden", "64", "--n-test", "200"]
    s4 = bench.main([*argv, "--n-calib", "200"])["section4_cpu"]
    g = s4["gemm"][0]
    assert set(g["seconds"]) == {"baseline", "xnor", "xnor_with_packing", "torch_float32"}
    assert g["skipped"] == why and g["ratios"]["xnor_over_best_torch"] == pytest.approx(
        g["seconds"]["torch_float32"] / g["seconds"]["xnor"]
    )
    assert set(s4["mlp"]["seconds"]).isdisjoint({"int8_exact", "bfloat16_deployed"})
    assert s4["mlp"]["best_deployed"] in ("float32_deployed", "int8_dynamic_deployed")


def test_the_probe_names_a_product_slower_than_float32_by_the_factor():
    """factor 0: any product is slower than 0 x float32's time, so both are named, with the
    measured ratio and the CPU's flags; the benchmarks use 4."""
    from bnnlib.bench import lowp

    slow = lowp.slow_products(0.0)
    assert set(slow) == {"bfloat16", "int8"}
    assert all("float32's time" in why and "CPU flags" in why for why in slow.values())
    assert lowp.SLOW_FACTOR == 4.0


def test_interleaved_timing_spreads_every_path_over_the_rounds(monkeypatch):
    """``interleaved_ms``: warm-up calls of each path first, then rounds that run every path
    for its share of the calls in turn (each path sees i = 0 .. repeats - 1 once), and one
    median per path."""
    from bnnlib.bench.latency import interleaved_ms

    log: list[tuple[str, int]] = []
    calls = {k: (lambda i, k=k: log.append((k, i))) for k in ("a", "b")}
    ms = interleaved_ms(calls, repeats=7, warmup=2, rounds=3)
    assert set(ms) == {"a", "b"} and all(v >= 0 for v in ms.values())
    assert log[:4] == [("a", 0), ("a", 1), ("b", 0), ("b", 1)]  # warm-up
    timed = log[4:]
    assert [k for k, _ in timed] == ["a"] * 2 + ["b"] * 2 + ["a"] * 2 + ["b"] * 2 + ["a"] * 3 + [
        "b"
    ] * 3
    assert sorted(i for k, i in timed if k == "a") == list(range(7))
    assert len(log) == 4 + 14
    log.clear()
    interleaved_ms(calls, repeats=2, warmup=0, rounds=10)  # rounds capped at the repeats
    assert log == [("a", 0), ("b", 0), ("a", 1), ("b", 1)]
    log.clear()
    timings = iter(range(1000))  # a clock that counts the calls timed
    import bnnlib.bench.latency as latency

    monkeypatch.setattr(latency.time, "perf_counter", lambda: next(timings))
    # each turn opened by one untimed call: 2 rounds x 2 paths x (1 + 2) calls
    interleaved_ms(calls, repeats=4, warmup=0, rounds=2, round_warmup=1)
    monkeypatch.undo()
    assert log == [("a", 0), ("a", 0), ("a", 1), ("b", 0), ("b", 0), ("b", 1),
                   ("a", 2), ("a", 2), ("a", 3), ("b", 2), ("b", 2), ("b", 3)]  # fmt: skip
    assert next(timings) == 16  # 8 timed calls, two clock reads each: the openings untimed
