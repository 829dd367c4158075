"""The hand-written bit-sliced kernels of a lone image's hidden layers (bnnlib.kernels.native)
against numpy's popcounts and compares, and against numba's loops through the public API."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

from bnnlib import inference
from bnnlib.bench.common import calibrate_batchnorm
from bnnlib.kernels import native
from bnnlib.nn.models import mnist_mlp


def _cpu_has(flag: str) -> bool:
    try:
        return f" {flag}" in Path("/proc/cpuinfo").read_text()
    except OSError:
        return False


needs_native = pytest.mark.skipif(
    not native.status().available, reason=f"native kernels: {native.status().why}"
)


def test_available_where_a_compiler_and_avx2_are():
    """CI has gcc and an AVX2 CPU: the kernels must build there, or every test below skips."""
    if os.environ.get("BNN_NATIVE") == "0" or native.find_compiler() is None:
        pytest.skip("no compiler, or disabled")
    if not _cpu_has("avx2"):
        pytest.skip("no AVX2")
    st = native.status()
    assert st.available, st.why


def test_widest_vectors_by_default():
    """On an AVX-512 CPU the default build has 512 lanes (BNN_NATIVE=avx2 asks for 256)."""
    if not native.status().available or os.environ.get("BNN_NATIVE", "1") != "1":
        pytest.skip(f"native kernels: {native.status().why}")
    assert native.lanes() == (512 if _cpu_has("avx512f") else 256)


def _random_layer(rng, n: int, k: int, pad_noise: bool = False):
    """Packed rows (n, words) with zero padding bits (random ones with ``pad_noise``),
    thresholds spread over [-k - 3, k + 3] (some always and some never fire), directions +/-1."""
    words = -(-k // 64)
    bits = rng.integers(0, 2, (n, 64 * words), dtype=np.uint8)
    if not pad_noise:
        bits[:, k:] = 0
    w = np.packbits(bits, axis=1, bitorder="little").view("<i8").astype(np.int64)
    thr = rng.integers(-k - 3, k + 4, n).astype(np.int64)
    thr[: min(n, 4)] = [-(10**6), 10**6, k, -k][: min(n, 4)]  # always, never, the ends
    d = np.where(rng.random(n) < 0.5, 1, -1).astype(np.int64)
    return w, thr, d


def _xor_popcount(a: np.ndarray, w: np.ndarray) -> np.ndarray:
    """popcount(a XOR w_j) over every bit of the words, for each row j (numpy, bit by bit)."""
    diff = np.bitwise_xor(w.view(np.uint64), a.view(np.uint64)[None, :])
    return np.unpackbits(diff.view(np.uint8), axis=1).sum(1).astype(np.int64)


def _numpy_layer(a, w, thr, d, k) -> np.ndarray:
    """The packed output words: bit j = (k - 2 h_j - thr_j) * d_j >= 0."""
    t = k - 2 * _xor_popcount(a, w)
    bits = ((t - thr) * d >= 0).astype(np.uint8)
    words = -(-len(bits) // 64)
    padded = np.zeros(64 * words, np.uint8)
    padded[: len(bits)] = bits
    return np.packbits(padded, bitorder="little").view("<i8").astype(np.int64)


@needs_native
@pytest.mark.parametrize(
    "k, widths",
    [
        (64, [1, 10]),  # one word, one neuron
        (100, [63, 64, 3]),  # padding bits (every bit of the words is counted: 128 inputs)
        (130, [65, 300, 7]),  # a partial block of 256
        (1000, [513, 256, 10]),
        (4096, [4096, 10]),  # the bench MLP's layer
    ],
)
def test_layers_equal_numpy(k, widths):
    """Hidden layers (k inputs, then the widths; the last width is the last layer) run by
    Batch1Plan equal numpy's XOR popcounts and compares bit for bit, on random images."""
    rng = np.random.default_rng(k)
    ins = [k] + widths[:-1]
    hidden = [_random_layer(rng, n, kin) for n, kin in zip(widths[:-1], ins[:-1], strict=True)]
    last_w, _, _ = _random_layer(rng, widths[-1], ins[-1])
    layers = [native.BitslicedLayer.from_packed(w, t, d, kin) for (w, t, d), kin in
              zip(hidden, ins, strict=False)]  # fmt: skip
    words = max(-(-x // 64) for x in ins)
    acts = np.zeros((len(hidden) + 1, words), np.int64)
    s = np.zeros((1, widths[-1]), np.int64)
    plan = native.Batch1Plan(layers, acts, last_w, ins[-1], s)
    for _ in range(5):
        a = _random_layer(rng, 1, k)[0][0]
        acts[:] = 0
        acts[0, : len(a)] = a
        plan.run()
        ref = a
        for (w, t, d), kin, row in zip(hidden, ins, acts[1:], strict=False):
            ref = _numpy_layer(ref, w, t, d, kin)
            assert np.array_equal(row[: len(ref)], ref)
        assert np.array_equal(s[0], ins[-1] - 2 * _xor_popcount(ref, last_w))


@needs_native
def test_padding_bits_are_counted_as_numba_counts_them():
    """Nonzero padding bits (never written by PackedNet) are counted like any other bit, as
    numba's loops count them: both paths give the same answer on any input."""
    rng = np.random.default_rng(7)
    w, t, d = _random_layer(rng, 70, 100, pad_noise=True)
    lay = native.BitslicedLayer.from_packed(w, t, d, 100)
    last_w = _random_layer(rng, 3, 70)[0]
    acts = np.zeros((2, 2), np.int64)
    s = np.zeros((1, 3), np.int64)
    plan = native.Batch1Plan([lay], acts, last_w, 70, s)
    a = _random_layer(rng, 1, 100, pad_noise=True)[0][0]
    acts[0] = a
    plan.run()
    assert np.array_equal(acts[1], _numpy_layer(a, w, t, d, 100))


@needs_native
@pytest.mark.parametrize("k0, n", [(784, 300), (20, 64), (1, 5), (200, 513)])
def test_first_layer_equals_numpy_with_ties(k0, n):
    """The first layer by bit planes (run_image) against numpy's integers: t_j = 2 W_b . x -
    255 sum_i w_ij compared with thresholds set to t_j itself (ties, where the two directions
    differ), t_j +/- 1, far below and far above, on images with zeros, 255s and everything in
    between; the last layer's pre-activations too."""
    rng = np.random.default_rng(k0)
    w, _, _ = _random_layer(rng, n, k0)
    pm1 = (
        2 * np.unpackbits(w.view(np.uint8), axis=1, bitorder="little")[:, :k0].astype(np.int64) - 1
    )
    wsum = pm1.sum(1)
    last_w = _random_layer(rng, 7, n)[0]
    for trial in range(6):
        x = rng.integers(0, 256, k0).astype(np.uint8)
        x[rng.random(k0) < 0.6] = 0
        x[rng.random(k0) < 0.1] = 255
        if trial == 0:
            x[:] = 0
        t = 2 * (pm1 @ x.astype(np.int64)) - 255 * wsum
        thr = t + rng.integers(-1, 2, n)
        thr[rng.random(n) < 0.1] = -(10**12)
        thr[rng.random(n) < 0.1] = 10**12
        d = np.where(rng.random(n) < 0.5, 1, -1).astype(np.int64)
        first = native.FirstBitsliced.from_packed(w, wsum, thr, d, k0)
        acts = np.zeros((1, -(-n // 64)), np.int64)
        s = np.zeros((1, 7), np.int64)
        plan = native.Batch1Plan([], acts, last_w, n, s, first)
        plan.run_image(x)
        bits = ((t - thr) * d >= 0).astype(np.uint8)
        padded = np.zeros(64 * acts.shape[1], np.uint8)
        padded[:n] = bits
        want = np.packbits(padded, bitorder="little").view("<i8")
        assert np.array_equal(acts[0], want), trial
        assert np.array_equal(s[0], n - 2 * _xor_popcount(want, last_w)), trial


@needs_native
@pytest.mark.parametrize("threads", [1, 2, 5])
def test_first_layer_of_a_batch_equals_numpy(threads):
    """first_layer_images on 9 images (all zero, all 255, sparse, dense) split between
    threads, into rows wider than the output: each row as numpy's integers compare, bit for
    bit, and the words past the output untouched."""
    rng = np.random.default_rng(threads)
    k0, n = 300, 700
    w, _, _ = _random_layer(rng, n, k0)
    pm1 = (
        2 * np.unpackbits(w.view(np.uint8), axis=1, bitorder="little")[:, :k0].astype(np.int64) - 1
    )
    wsum = pm1.sum(1)
    x = rng.integers(0, 256, (9, k0)).astype(np.uint8)
    x[2:5][rng.random((3, k0)) < 0.8] = 0
    x[0], x[1] = 0, 255
    t = 2 * x.astype(np.int64) @ pm1.T - 255 * wsum
    thr = t[3] + rng.integers(-1, 2, n)  # ties for image 3
    d = np.where(rng.random(n) < 0.5, 1, -1).astype(np.int64)
    first = native.FirstBitsliced.from_packed(w, wsum, thr, d, k0)
    words = -(-n // 64)
    out = np.full((9, words + 2), -7, np.int64)
    native.first_layer_images(first, x, out, threads)
    bits = np.zeros((9, 64 * words), np.uint8)
    bits[:, :n] = (t - thr) * d >= 0
    assert np.array_equal(out[:, :words], np.packbits(bits, 1, bitorder="little").view("<i8"))
    assert (out[:, words:] == -7).all()
    with pytest.raises(ValueError, match="wrong shape"):
        native.first_layer_images(first, x, out[:8], threads)
    with pytest.raises(ValueError, match="wrong shape"):
        native.first_layer_images(first, x[:, :-1], out, threads)
    with pytest.raises(ValueError, match="wrong shape"):
        native.first_layer_images(first, x, out[:, :1], threads)


@needs_native
def test_plan_refuses_wrong_buffers():
    rng = np.random.default_rng(0)
    w, t, d = _random_layer(rng, 64, 128)
    lay = native.BitslicedLayer.from_packed(w, t, d, 128)
    last_w = _random_layer(rng, 10, 64)[0]
    with pytest.raises(ValueError, match="wrong shape"):
        native.Batch1Plan(
            [lay], np.zeros((2, 1), np.int64), last_w, 64, np.zeros((1, 10), np.int64)
        )
    with pytest.raises(ValueError, match="wrong shape"):
        native.Batch1Plan(
            [lay], np.zeros((2, 2), np.int32), last_w, 64, np.zeros((1, 10), np.int64)
        )
    bad = dataclasses.replace(lay, digits=lay.digits + 1)  # cbits no longer match
    with pytest.raises(ValueError, match="wrong shape"):
        native.Batch1Plan(
            [bad], np.zeros((2, 2), np.int64), last_w, 64, np.zeros((1, 10), np.int64)
        )
    with pytest.raises(ValueError, match="directions"):
        native.BitslicedLayer.from_packed(w, t, np.zeros_like(d), 128)
    other = 768 - native.lanes()  # the layout of the other build
    wide = native.BitslicedLayer.from_packed(w, t, d, 128, width=other)
    assert wide.consistent()
    with pytest.raises(ValueError, match="wrong shape"):
        native.Batch1Plan(
            [wide], np.zeros((2, 2), np.int64), last_w, 64, np.zeros((1, 10), np.int64)
        )
    with pytest.raises(ValueError, match="256 or 512"):
        native.BitslicedLayer.from_packed(w, t, d, 128, width=128)


def _packed(net):
    with tempfile.TemporaryDirectory() as tmp:
        return inference.load(inference.export(net, Path(tmp) / "m.bnn"))


@needs_native
@pytest.mark.parametrize("hidden, depth", [(1024, 3), (300, 3), (70, 2)])
def test_predict_native_equals_numba(mnist_uint8, hidden, depth):
    """Through PackedNet at batch 1, with each first layer: the native hidden layers give the
    pre-activations of numba's loops and of the layer-at-a-time path, bit for bit. The plan
    follows the buffers when they are made again (the int8 rows made on first use). Batches
    of 2 to 122 images, whose first layer runs in C: the same."""
    xtr, xt = mnist_uint8
    torch.manual_seed(hidden)
    net = calibrate_batchnorm(mnist_mlp(hidden=hidden, depth=depth), xtr)
    packed = _packed(net)
    x = torch.cat([xt[:60], torch.full((1, 1, 28, 28), 255, dtype=torch.uint8)])
    ref = packed.scores(x, path="layers")
    f = packed.fused
    for first_layer in ("bitplanes", "int8", "auto", "int8_gemm"):
        for flag in (True, False):
            f.native = flag
            got = torch.cat([packed.scores(x[i : i + 1], first_layer=first_layer) for i in
                             range(len(x))])  # fmt: skip
            assert torch.equal(got, ref), (first_layer, flag)
    xx, rr = torch.cat([x, x]), torch.cat([ref, ref])  # 122 images
    for batch in (2, 64, 122):  # the first layer in C, then numba: chunks, chunks in parallel
        for first_layer in ("bitplanes", "auto"):
            for flag in (None, False):
                f.native = flag
                got = packed.scores(xx, first_layer=first_layer, batch_size=batch)
                assert torch.equal(got, rr), (batch, first_layer, flag)
    f.native = True
    preds = torch.cat([packed.predict(x[i : i + 1]) for i in range(len(x))])
    assert torch.equal(preds, inference.simulate(net, x))
    xn = x.numpy().reshape(len(x), -1)
    lone = [f.classify_lone(xn[i : i + 1]) for i in range(len(x))]
    assert lone == preds.tolist()
    assert f.classify_lone(xn[:1], "int8") is None  # numba's first layer: the general path
    f.native = False
    assert f.classify_lone(xn[:1]) is None


@pytest.fixture(scope="module")
def mnist_uint8(data_root):
    from bnnlib import data

    tr, te = data.load("mnist", data_root, "train"), data.load("mnist", data_root, "test")
    return data.to_uint8(tr.X[:1000]), data.to_uint8(te.X[:200])


_STATUS_SCRIPT = """
import torch
from bnnlib import inference
from bnnlib.kernels import native
from bnnlib.nn.models import mnist_mlp
st = native.status()
assert st.available == (st.lanes > 0)
torch.manual_seed(0)
net = mnist_mlp(hidden=100).eval()
import tempfile
from pathlib import Path
with tempfile.TemporaryDirectory() as tmp:
    p = inference.load(inference.export(net, Path(tmp) / "m.bnn"))
x = torch.randint(0, 256, (5, 1, 28, 28), dtype=torch.uint8)
p.fused.native = True
one = torch.cat([p.predict(x[i : i + 1]) for i in range(5)])
assert torch.equal(one, p.predict(x, path="layers"))
print(st.available, st.lanes, st.why)
"""


@pytest.mark.parametrize(
    "env, why",
    [
        ({"BNN_NATIVE": "0"}, "disabled by BNN_NATIVE=0"),
        ({"BNN_NATIVE": "yes"}, "BNN_NATIVE must be 0, 1 or avx2, got 'yes'"),
        ({"CC": "false"}, "false failed"),
    ],
)
def test_unavailable_is_reported_and_numba_runs(env, why):
    """Disabled, a value it does not know, or a compiler that fails: status says why, and a
    lone image still runs (on numba's loops) with the same predictions."""
    if "CC" in env and not Path("/bin/false").exists() and not Path("/usr/bin/false").exists():
        pytest.skip("no false(1)")
    available, lanes, reason = _status_in_subprocess(env)
    assert available == "False" and lanes == "0" and why in reason


def _status_in_subprocess(env: dict[str, str]) -> list[str]:
    """_STATUS_SCRIPT's line (available, lanes, why) in a fresh process with ``env`` added."""
    out = subprocess.run(
        [sys.executable, "-c", _STATUS_SCRIPT],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout.strip().split(" ", 2)


def test_avx2_build_runs_on_any_avx2_cpu():
    """BNN_NATIVE=avx2: the 256-lane build even on an AVX-512 CPU (both layouts are tested on
    such a machine), with the predictions of numba's loops."""
    if native.find_compiler() is None or not _cpu_has("avx2"):
        pytest.skip("no compiler or no AVX2")
    available, lanes, reason = _status_in_subprocess({"BNN_NATIVE": "avx2"})
    assert (available, lanes) == ("True", "256"), reason
