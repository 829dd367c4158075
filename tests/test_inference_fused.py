"""The fused small-batch CPU path (bnnlib.inference.fused, bnnlib.kernels.fused).

Oracle: :func:`bnnlib.inference.simulate` (float products, float64 batch norm, no packing),
and the layer-at-a-time path whose scores must be equal bit for bit.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from test_inference import pool_after_bn_net

from bnnlib import data, inference, results
from bnnlib.bench.common import calibrate_batchnorm
from bnnlib.inference import fused
from bnnlib.nn.layers import BinaryConv2d, BinaryLinear, SignActivation
from bnnlib.nn.models import cifar10_convnet, mnist_mlp


def _packed(net):
    with tempfile.TemporaryDirectory() as tmp:
        return inference.load(inference.export(net, Path(tmp) / "m.bnn"))


@pytest.fixture(scope="module")
def mnist(data_root):
    tr, te = data.load("mnist", data_root, "train"), data.load("mnist", data_root, "test")
    return data.to_uint8(tr.X[:2000]), data.to_uint8(te.X), te.y


@pytest.fixture(scope="module")
def mlp(mnist):
    """A 784 -> 3 x 1024 -> 10 MLP, random weights, BN statistics from 2000 training images
    (its thresholds sit inside the data, so every compare is exercised), and its packed net."""
    torch.manual_seed(0)
    net = calibrate_batchnorm(mnist_mlp(hidden=1024), mnist[0])
    return net, _packed(net)


def test_fused_equals_simulation_on_all_mnist_test_images(mlp, mnist):
    """Every one of the 10,000 test images at batch 1 (serial path, per-image first layer),
    and in batches of 16 (threads): predictions identical to the simulation, scores equal to
    the layer-at-a-time path's bit for bit."""
    net, packed = mlp
    xt = mnist[1]
    assert len(xt) == 10_000
    sim = inference.simulate(net, xt)
    layers = packed.scores(xt, path="layers")
    one = torch.cat([packed.scores(xt[i : i + 1]) for i in range(len(xt))])
    assert torch.equal(one, layers)
    assert torch.equal(one.argmax(1), sim)
    batched = packed.scores(xt, path="fused", batch_size=16)
    assert torch.equal(batched, layers)
    preds = torch.cat([packed.predict(xt[i : i + 1]) for i in range(0, 2000)])
    assert torch.equal(preds, sim[:2000])


def test_every_first_layer_equals_simulation_on_all_mnist_test_images(mlp, mnist):
    """Each first-layer product of the fused path (bit planes, sparse int8 rows, the dense
    ``torch._int_mm`` gemm) on all 10,000 test images in chunks of 64 (threads; 4 x 4 register
    tiles where compiled for AVX-512): predictions identical to the float simulation."""
    net, packed = mlp
    xt = mnist[1]
    sim = inference.simulate(net, xt)
    for first_layer in ("bitplanes", "int8", "int8_gemm"):
        got = packed.predict(xt, first_layer=first_layer, path="fused", batch_size=64)
        assert torch.equal(got, sim), first_layer


@pytest.mark.parametrize("first_layer", ["bitplanes", "int8", "int8_gemm"])
@pytest.mark.parametrize("batch", [1, 5, 64])
@pytest.mark.parametrize("parallel", [True, False])
def test_first_layer_modes_equal(mlp, mnist, first_layer, batch, parallel):
    """Every first-layer product, on one thread and on all of them, on dark and bright images
    (an all-255 image has no zero pixel: the int8 rows of every pixel are read; 0 and 255 are
    the ends of the int8 gemm's ``x - 128``)."""
    _, packed = mlp
    x = torch.cat([mnist[1][:200], torch.full((8, 1, 28, 28), 255, dtype=torch.uint8)])
    x[-4:] = torch.randint(0, 256, (4, 1, 28, 28), dtype=torch.uint8)
    ref = packed.scores(x, path="layers")
    default, packed.fused.parallel = packed.fused.parallel, parallel
    try:
        got = packed.scores(x, first_layer=first_layer, path="fused", batch_size=batch)
    finally:
        packed.fused.parallel = default
    assert torch.equal(got, ref)


def test_auto_path_choice(mlp, mnist):
    _, packed = mlp
    x = mnist[1][:200]
    calls = []
    f = packed.fused
    real, real_lone = f.classes, f.classify_lone
    f.classes = lambda xs, mode: calls.append(len(xs)) or real(xs, mode)
    f.classify_lone = lambda xs, mode: calls.append(len(xs)) or real_lone(xs, mode)
    try:
        packed.predict(x[:2], first_layer="real")
        assert calls == []  # the float first layer exists on the layers path only
        packed.predict(x[:1])
        # batch 1 went fused: the lone-image C call, or numba's loops where that is not
        # available (classify_lone says None, then classes)
        assert calls in ([1], [1, 1])
        calls.clear()
        out = packed.predict(x[:150], batch_size=100)
    finally:
        del f.classes, f.classify_lone
    assert calls == [100, 50]  # slices of batch_size: the fused MLP chunks them itself
    assert torch.equal(out, packed.predict(x[:150], path="layers"))


def test_paper_width_rows_equal_the_layers_path(mnist):
    """The Theano MLP's width (784 -> 3 x 4096 -> 10: hidden rows of ``UNROLLED_WORDS``
    words, the loops with a constant trip count; random weights, BN statistics from 2000
    training images) at batch 1 (one image alone), 2, 5 and 64 (tiles of two or four images
    and a lone one), on one thread and on all of them: scores equal to the layer-at-a-time
    path's bit for bit, and ``predict`` (whose argmax is compiled) equal to their argmax."""
    from bnnlib.kernels import fused as kfused

    torch.manual_seed(2)
    packed = _packed(calibrate_batchnorm(mnist_mlp(hidden=4096), mnist[0]))
    assert packed.layers[1].spec.layout.row_words == kfused.UNROLLED_WORDS
    x = torch.cat([mnist[1][:150], torch.full((2, 1, 28, 28), 255, dtype=torch.uint8)])
    ref = packed.scores(x, path="layers")
    for parallel in (False, True):
        packed.fused.parallel = parallel
        for batch in (1, 2, 5, 64):
            got = packed.scores(x, path="fused", batch_size=batch)
            assert torch.equal(got, ref), (parallel, batch)
    one = torch.cat([packed.predict(x[i : i + 1]) for i in range(len(x))])
    assert torch.equal(one, ref.argmax(1))


def _rounded_apart() -> tuple[float, float, float, float]:
    """(a, s, mu, beta) whose numpy value fl(fl(a * fl(s - mu)) + beta) is below the singly
    rounded a * fl(s - mu) + beta that a fused multiply-add gives (found by a seeded search;
    the exact value is a Fraction)."""
    from fractions import Fraction

    rng = np.random.default_rng(0)
    for _ in range(100_000):
        a, mu, beta = rng.normal(size=3)
        s = float(rng.integers(-500, 500))
        d = s - mu
        exact = float(Fraction(a) * Fraction(d) + Fraction(beta))
        if a * d + beta < exact:
            return a, s, mu, beta
    raise AssertionError("no such case in the search")


def test_compiled_argmax_rounds_as_numpy():
    """``affine_argmax`` (numba's, and the C one of :mod:`bnnlib.kernels.native` where it
    is available) against ``np.argmax(a * (s - mu) + beta, axis=1)``: random scores with
    ties, a NaN row, negative scales, and a pair that ties only in numpy's rounding (a fused
    multiply-add would put class 1 ahead; numpy keeps the first of the tie)."""
    from bnnlib.kernels import fused as kfused

    rng = np.random.default_rng(1)
    s = rng.integers(-3, 4, (500, 10)).astype(np.int64)
    a = rng.choice([-1.5, -0.25, 0.0, 0.25, 1.0], 10)
    mu, beta = rng.choice([-1.0, 0.0, 0.5], 10), rng.choice([0.0, 0.75], 10)
    cases = [(s, a, mu, beta)]
    nan = (s.copy(), a.copy(), mu.copy(), beta.copy())
    nan[3][4] = np.nan
    cases.append(nan)
    a1, s1, mu1, beta1 = _rounded_apart()
    numpy_value = a1 * (s1 - mu1) + beta1
    tie = (
        np.array([[0, int(s1)]], np.int64),
        np.array([0.0, a1]),
        np.array([0.0, mu1]),
        np.array([numpy_value, beta1]),
    )
    cases.append(tie)
    from bnnlib.kernels import native

    for s_, a_, mu_, beta_ in cases:
        out = np.empty(len(s_), np.int64)
        kfused.affine_argmax(s_, a_, mu_, beta_, out)
        want = np.argmax(a_ * (s_.astype(np.float64) - mu_) + beta_, axis=1)
        assert np.array_equal(out, want)
        if native.status().available:  # the C argmax of a lone image, row by row
            got = [native.affine_argmax(row, a_, mu_, beta_) for row in s_]
            assert np.array_equal(got, want)
    assert out[0] == 0  # the tie: numpy's rounding, the first class


@pytest.mark.parametrize("first_layer", ["bitplanes", "int8", "auto", "int8_gemm"])
def test_chunks_shared_between_threads_equal_the_layers_path(mlp, mnist, first_layer):
    """A batch of more than FUSED_CHUNK images: its chunks shared between threads (one per
    chunk, buffers of its own, a last partial chunk), or one after the other on the calling
    thread (``chunks_parallel = False``): scores equal to the layer-at-a-time path's bit for
    bit, dark, bright and random images mixed."""
    _, packed = mlp
    x = torch.cat([mnist[1][:300], torch.full((8, 1, 28, 28), 255, dtype=torch.uint8)])
    x[-4:] = torch.randint(0, 256, (4, 1, 28, 28), dtype=torch.uint8)
    x = x[torch.randperm(len(x), generator=torch.Generator().manual_seed(0))]
    ref = packed.scores(x, path="layers")
    assert len(x) % fused.FUSED_CHUNK != 0 and len(x) > 4 * fused.FUSED_CHUNK
    for chunks_parallel in (True, False):
        packed.fused.chunks_parallel = chunks_parallel
        try:
            got = packed.scores(x, first_layer=first_layer, path="fused", batch_size=len(x))
        finally:
            packed.fused.chunks_parallel = True
        assert torch.equal(got, ref), chunks_parallel


def test_two_layer_mlp_and_odd_widths(mnist):
    """No hidden-to-hidden layer (784 -> 100 -> 10) and widths that are not multiples of 64."""
    torch.manual_seed(1)
    for hidden, depth in ((100, 1), (70, 2)):
        net = calibrate_batchnorm(mnist_mlp(hidden=hidden, depth=depth), mnist[0])
        packed = _packed(net)
        x = mnist[1][:300]
        assert torch.equal(
            packed.predict(x, path="fused", batch_size=7), inference.simulate(net, x)
        )


def test_committed_model_fused_equals_history(data_root):
    """The committed Torch7-preset model: the fused path makes the same errors as the history."""
    run = results.load_run(results.TORCH7_MNIST_RUN)
    assert run is not None and run.model_path is not None
    te = data.load("mnist", data_root, "test")
    packed = inference.load(run.model_path)
    x = data.to_uint8(te.X)
    errors = int((packed.predict(x, path="fused", batch_size=50) != te.y).sum())
    assert errors == round(run.test_error * len(te.y))


def test_errors_are_clear(mlp, mnist):
    _, packed = mlp
    x = mnist[1][:2]
    with pytest.raises(ValueError, match="first_layer must be one of"):
        packed.predict(x, first_layer="float")
    with pytest.raises(ValueError, match="path must be"):
        packed.predict(x, path="fast")
    with pytest.raises(ValueError, match="no real first layer"):
        packed.predict(x, path="fused", first_layer="real")
    with pytest.raises(ValueError, match="batch_size"):
        packed.predict(x, batch_size=0)
    with pytest.raises(ValueError, match="does not match"):
        packed.predict(torch.zeros(1, 27, 28, dtype=torch.uint8))
    with pytest.raises(ValueError, match="look like pixels"):
        packed.predict(x.float())
    conv = _packed(cifar10_convnet(width=0.125).eval())
    with pytest.raises(ValueError, match="no bitplanes first layer"):
        conv.predict(
            torch.zeros(1, 3, 32, 32, dtype=torch.uint8), path="fused", first_layer="bitplanes"
        )
    with pytest.raises(ValueError, match="fused path only"):
        conv.predict(
            torch.zeros(1, 3, 32, 32, dtype=torch.uint8), path="layers", first_layer="int8"
        )
    with pytest.raises(ValueError, match="no int8_gemm first layer"):
        conv.predict(
            torch.zeros(1, 3, 32, 32, dtype=torch.uint8), path="fused", first_layer="int8_gemm"
        )
    with pytest.raises(ValueError, match="fused path only"):
        packed.predict(x, path="layers", first_layer="int8_gemm")
    with pytest.raises(ValueError, match="uint8 images"):
        fused.FusedMLP(packed).preactivations(np.zeros((1, 784), np.int64))


def test_empty_batch(mlp):
    _, packed = mlp
    empty = torch.zeros(0, 1, 28, 28, dtype=torch.uint8)
    assert packed.predict(empty).shape == (0,)
    assert packed.scores(empty, path="fused").shape == (0, 10)


# ---------------------------------------------------------------- ConvNets


def test_fused_convnet_equals_simulation():
    """The CIFAR-10 ConvNet (narrow) on images with zero and nonzero pixels, batch 1 and 5,
    its kernels on threads and on the calling thread: scores equal to the layer-at-a-time
    path, predictions to the simulation."""
    torch.manual_seed(3)
    net = cifar10_convnet(width=0.25)
    x = torch.randint(0, 256, (140, 3, 32, 32), dtype=torch.uint8)
    x[:, :, :10] = 0  # zero pixels are skipped by the first layer
    calibrate_batchnorm(net, x[:100], batch=50)
    packed = _packed(net)
    xt = x[100:]
    packed.predict(xt[:1])
    assert isinstance(packed.fused, fused.FusedConvNet)
    ref = packed.scores(xt, path="layers")
    for parallel in (None, True, False):  # the kernels on threads, or on the calling one
        packed.fused.parallel = parallel
        one = torch.cat([packed.scores(xt[i : i + 1]) for i in range(len(xt))])
        assert torch.equal(one, ref), parallel
        assert torch.equal(packed.scores(xt, path="fused", batch_size=5), ref), parallel
    assert torch.equal(one.argmax(1), inference.simulate(net, xt))


def test_fused_conv_pool_after_bn_stride_and_odd_channels():
    """Conv -> BN -> MaxPool -> Sign with gamma < 0 on half the channels (the pool becomes a
    min), stride 2 with padding 2, 70 and 5 channels (not multiples of 64)."""
    net, x = pool_after_bn_net()
    with tempfile.TemporaryDirectory() as tmp:
        packed = inference.load(inference.export(net, Path(tmp) / "c.bnn", input_shape=(1, 12, 12)))
    sim = inference.simulate_scores(net, x[:100])
    for parallel in (True, False):
        packed.fused.parallel = parallel
        for b in (1, 7):
            assert torch.equal(packed.scores(x[:100], path="fused", batch_size=b), sim)


def test_fused_conv_wide_inputs_four_words_at_a_time():
    """Binary convolutions over 300 input channels (4 words counted four at a time, then 1
    more with 20 padding bits), 600 (two passes of four words, then 2 more, the last with 40
    padding bits) and 256 (exactly 4 words), batch 1 and 6, on threads and on the calling
    thread: scores equal to the layer-at-a-time path's and to the simulation's."""
    torch.manual_seed(11)
    net = torch.nn.Sequential(
        BinaryConv2d(1, 300, 3, padding=1, binarize_input=False),
        torch.nn.BatchNorm2d(300),
        torch.nn.MaxPool2d(2),
        SignActivation(),
        BinaryConv2d(300, 600, 3, padding=1, binarize_input=False),
        torch.nn.BatchNorm2d(600),
        SignActivation(),
        BinaryConv2d(600, 256, 3, padding=1, binarize_input=False),
        torch.nn.BatchNorm2d(256),
        SignActivation(),
        BinaryConv2d(256, 6, 3, binarize_input=False),
        torch.nn.BatchNorm2d(6),
        SignActivation(),
        torch.nn.Flatten(),
        BinaryLinear(6 * 2 * 2, 10, binarize_input=True),
        torch.nn.BatchNorm1d(10),
    )
    x = torch.randint(0, 256, (160, 1, 8, 8), dtype=torch.uint8)
    calibrate_batchnorm(net, x[:120], batch=40)
    with tempfile.TemporaryDirectory() as tmp:
        packed = inference.load(inference.export(net, Path(tmp) / "w.bnn", input_shape=(1, 8, 8)))
    xt = x[120:]
    sim = inference.simulate_scores(net, xt)
    assert torch.equal(packed.scores(xt, path="layers"), sim)
    for parallel in (True, False):
        packed.fused.parallel = parallel
        for b in (1, 6):
            assert torch.equal(packed.scores(xt, path="fused", batch_size=b), sim), (parallel, b)


_AVX2_SCRIPT = """
import tempfile, torch
from pathlib import Path
from numba.core import config
from bnnlib import inference
from bnnlib.bench.common import calibrate_batchnorm
from bnnlib.nn.models import cifar10_convnet, mnist_mlp
assert config.CPU_NAME == "haswell", config.CPU_NAME
torch.manual_seed(0)
nets = (
    (mnist_mlp(hidden=200), (1, 28, 28)),
    (mnist_mlp(hidden=4096), (1, 28, 28)),  # rows of UNROLLED_WORDS words
    (cifar10_convnet(width=0.125), (3, 32, 32)),
)
for net, shape in nets:
    x = torch.randint(0, 256, (60, *shape), dtype=torch.uint8)
    calibrate_batchnorm(net, x[:40], batch=20)
    with tempfile.TemporaryDirectory() as tmp:
        p = inference.load(inference.export(net, Path(tmp) / "m.bnn"))
    ref = p.scores(x[40:], path="layers")
    for b in (1, 5):
        assert torch.equal(p.scores(x[40:], path="fused", batch_size=b), ref), (net, b)
print("ok")
"""


def test_fused_kernels_exact_when_compiled_for_avx2_only(tmp_path):
    """The fallback for CPUs without AVX-512: the kernels compiled for Haswell (AVX2, popcount
    by byte lookup) give the same integers. numba's cache is keyed by the target CPU, so code
    compiled here is never loaded on a machine that lacks its instructions."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "NUMBA_CPU_NAME": "haswell", "NUMBA_CPU_FEATURES": ""}
    env["NUMBA_CACHE_DIR"] = str(tmp_path)
    out = subprocess.run(
        [sys.executable, "-c", _AVX2_SCRIPT], env=env, capture_output=True, text=True, timeout=600
    )
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-3000:]


def test_threads_sharing_one_packed_net(mlp, mnist):
    """Callers on several threads share one PackedNet (and its fused buffers): each gets its
    own images' predictions."""
    from concurrent.futures import ThreadPoolExecutor

    _, packed = mlp
    x = mnist[1][:400]
    ref = packed.predict(x, path="layers")
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda i: packed.predict(x[i : i + 1]), range(len(x))))
    assert torch.equal(torch.cat(got), ref)


def test_one_thread_when_openmp_threads_sleep(mlp, monkeypatch):
    """With OMP_WAIT_POLICY=PASSIVE every parallel region wakes sleeping threads, which costs
    more than a layer of a small batch: the fused MLP then stays on the calling thread."""
    _, packed = mlp
    monkeypatch.setenv("OMP_WAIT_POLICY", "passive")
    assert fused.FusedMLP(packed).parallel is False
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    assert fused.FusedMLP(packed).parallel is None
