"""Packed inference (bnnlib.inference) against the float simulation and the float32 model.

The oracle is :func:`bnnlib.inference.simulate`: the model run layer by layer with float
products and float64 batch norm, no packing, thresholds or XNOR. Packed predictions must be
*identical* to it; both first-layer modes must give identical scores.
"""

from __future__ import annotations

import copy
import json
import os
import struct
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

import bnnlib.kernels as kernels
from bnnlib import inference as inf
from bnnlib.inference.format import read_packed, write_packed
from bnnlib.nn.layers import BinaryConv2d, BinaryLinear, SignActivation
from bnnlib.nn.losses import pm1_targets, square_hinge
from bnnlib.nn.models import cifar10_convnet, mnist_mlp
from bnnlib.nn.optim import Adam

# ---------------------------------------------------------------- an independent packing


_BITS = torch.arange(64, dtype=torch.int64)


def _ref_pack(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Pure-torch packing (bit 1 for +1, LSB first), the reference for kernels.pack_bits."""
    x = x.movedim(dim, -1)
    k = x.shape[-1]
    w = -(-k // 64)
    bits = torch.zeros(*x.shape[:-1], w * 64, dtype=torch.int64)
    bits[..., :k] = (x > 0).long()
    words = (bits.reshape(*x.shape[:-1], w, 64) << _BITS).sum(-1)  # wraps at bit 63: fine
    return words.movedim(-1, dim)


# ---------------------------------------------------------------- helpers

#: Both CPU paths of PackedNet: a layer at a time, and the fused small-batch kernels.
PATHS = ("layers", "fused")


def _data(n_train=3000, n_test=1000, seed=0):
    """MNIST (uint8 images) when BNN_DATA_DIR has it, else separable synthetic digits."""
    root = os.environ.get("BNN_DATA_DIR")
    if root:
        from bnnlib import data

        try:
            tr, te = data.load("mnist", root, "train"), data.load("mnist", root, "test")
            return (
                data.to_uint8(tr.X[:n_train]),
                tr.y[:n_train],
                data.to_uint8(te.X[:n_test]),
                te.y[:n_test],
            )
        except (FileNotFoundError, ValueError):
            pass
    g = torch.Generator().manual_seed(seed)
    protos = torch.randint(0, 256, (10, 784), generator=g)
    n = n_train + n_test
    y = torch.randint(0, 10, (n,), generator=g)
    noise = torch.randint(-60, 61, (n, 784), generator=g)
    x = (protos[y] + noise).clamp(0, 255).to(torch.uint8).reshape(n, 1, 28, 28)
    return x[:n_train], y[:n_train], x[n_train:], y[n_train:]


def _scaled(x_uint8: torch.Tensor) -> torch.Tensor:
    return x_uint8.float() * (2 / 255) - 1


def _train(net, x, y, steps, batch=100, lr=3e-3, seed=0, classes=10):
    torch.manual_seed(seed)
    opt = Adam(net, lr=lr)
    X = _scaled(x)
    net.train()
    for i in range(steps):
        j = (i * batch) % len(X)
        xb, yb = X[j : j + batch], y[j : j + batch]
        loss = square_hinge(net(xb), pm1_targets(yb, classes))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net.eval()


@torch.no_grad()
def _randomize_bn(net, seed=0, negative=0.3):
    """Random BN statistics and affine, with a fraction of gammas negative (flipped compares)."""
    g = torch.Generator().manual_seed(seed)
    for m in net.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            n = m.num_features
            m.weight.copy_(torch.rand(n, generator=g) + 0.1)
            m.weight[torch.rand(n, generator=g) < negative] *= -1
            m.weight[0] = 0.0  # a constant neuron
            m.bias.copy_(torch.randn(n, generator=g) * 0.5)
    return net


@torch.no_grad()
def _calibrate_bn(net, x, batches=3):
    """Set BN running statistics by forward passes in train mode (momentum None: exact mean)."""
    for m in net.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None
    net.train()
    X = _scaled(x)
    for i in range(batches):
        net(X[i * 100 : (i + 1) * 100])
    for m in net.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.momentum = 0.1
    return net.eval()


def _roundtrip(net, tmp_path, name="m.bnn", **kw):
    path = inf.export(net, tmp_path / name, **kw)
    return inf.load(path)


# ---------------------------------------------------------------- bits and thresholds


def test_pack_bits_of_bools_matches_pack():
    g = torch.Generator().manual_seed(1)
    for shape in ((7, 1), (3, 63), (5, 64), (2, 3, 65), (4, 200)):
        bits = torch.rand(*shape, generator=g) < 0.5
        want = kernels.pack(torch.where(bits, 1.0, -1.0), dim=-1)
        assert torch.equal(kernels.pack_bits(bits), want)
        assert torch.equal(kernels.pack_bits(bits), _ref_pack(torch.where(bits, 1.0, -1.0)))


def test_integer_thresholds_equal_brute_force():
    g = torch.Generator().manual_seed(2)
    n, bound = 400, 40
    a = torch.randn(n, generator=g, dtype=torch.float64)
    a[:20] = 0.0
    mu = torch.randint(-bound, bound, (n,), generator=g).double()
    mu[n // 2 :] += torch.rand(n - n // 2, generator=g, dtype=torch.float64)  # ties and not
    beta = torch.randn(n, generator=g, dtype=torch.float64)
    beta[: n // 4] = 0.0  # y = a (s - mu) exactly 0 at s = mu: the tie Sign(0) = +1
    beta[n // 4 : n // 2] *= 100  # thresholds beyond the reachable range
    for divisor in (1.0, 255.0):
        aff = inf.Affine(a, mu, beta)
        B = bound * int(divisor)
        T, flip = inf.integer_thresholds(aff, B, divisor)
        v = torch.arange(-B, B + 1, dtype=torch.int64)
        x = v.double() / divisor
        want = aff(x.view(-1, 1).expand(-1, n)) >= 0  # (values, neurons)
        got = (v.view(-1, 1) >= T.view(1, -1)) ^ flip.view(1, -1)
        assert torch.equal(got, want)


def test_kernel_thresholds_same_bits_as_t_and_flip():
    """The kernels' (threshold, direction) give the bit (s >= T) XOR flip for every s."""
    g = torch.Generator().manual_seed(3)
    n = 300
    T = torch.randint(-50, 51, (n,), generator=g)
    flip = torch.rand(n, generator=g) < 0.5
    thr, direction = inf.kernel_thresholds(T, flip)
    assert thr.dtype == direction.dtype == torch.int32
    acc = torch.arange(-60, 61, dtype=torch.int32).view(-1, 1).expand(-1, n).contiguous()
    want = kernels.pack_bits((acc >= T.view(1, -1)) ^ flip.view(1, -1))
    assert torch.equal(kernels.threshold_pack(acc, thr, direction), want)


def test_words_as_int64_is_the_one_conversion():
    g = torch.Generator().manual_seed(4)
    for k in (0, 1, 32, 33, 64, 65, 130):
        x = torch.where(torch.rand(3, k, generator=g) < 0.5, 1.0, -1.0)
        w64 = kernels.words_as_int64(kernels.pack(x, word_bits=32))
        assert w64.dtype == torch.int64 and torch.equal(w64, kernels.pack(x))
    p = kernels.pack(torch.ones(2, 70))
    assert kernels.words_as_int64(p) is p


# ---------------------------------------------------------------- the MLP


@pytest.fixture(scope="module")
def trained_mlp():
    x, y, xt, yt = _data()
    torch.manual_seed(0)
    net = mnist_mlp(hidden=128, depth=2)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny steps: one thread avoids oversubscribing a shared CPU
    try:
        _train(net, x, y, steps=150)
    finally:
        torch.set_num_threads(threads)
    return net, xt, yt


def test_mlp_packed_equals_simulation(trained_mlp, tmp_path):
    net, xt, yt = trained_mlp
    packed = _roundtrip(net, tmp_path)
    sim, sim_scores = inf.simulate(net, xt), inf.simulate_scores(net, xt)
    for path in PATHS:
        assert torch.equal(packed.predict(xt, path=path), sim)
        # Scores of the last layer are the same float64 numbers, not just the same argmax.
        assert torch.equal(packed.scores(xt, path=path), sim_scores)
    # A trained model: clearly better than chance (the oracle itself is sane).
    assert (sim == yt).float().mean() > 0.5


def test_a_printed_model_names_its_file_not_its_folder(trained_mlp, tmp_path):
    net, _, _ = trained_mlp
    packed = _roundtrip(net, tmp_path)
    assert str(tmp_path) in packed.source  # the full path stays for error messages
    assert str(tmp_path) not in repr(packed) and repr(packed).endswith(", from m.bnn)")


def test_mlp_first_layer_modes_identical(trained_mlp, tmp_path):
    net, xt, _ = trained_mlp
    packed = _roundtrip(net, tmp_path)
    real = packed.scores(xt[:300], first_layer="real")
    for path, mode in (("layers", "bitplanes"), ("fused", "bitplanes"), ("fused", "int8")):
        assert torch.equal(packed.scores(xt[:300], first_layer=mode, path=path), real)
    with pytest.raises(ValueError, match="first_layer"):
        packed.predict(xt[:2], first_layer="float")


def test_mlp_simulation_agrees_with_float32_model(trained_mlp):
    """The float32 model rounds the first layer and BN in float32: near-total agreement."""
    net, xt, _ = trained_mlp
    with torch.no_grad():
        f32 = net.eval()(_scaled(xt)).argmax(1)
    assert (f32 == inf.simulate(net, xt)).float().mean() >= 0.99


def test_mlp_ties_and_flips(trained_mlp, tmp_path):
    """Integer running means with beta = 0 put hidden neurons exactly on their threshold."""
    net, xt, _ = trained_mlp
    net = _randomize_bn(copy.deepcopy(net), seed=3)
    with torch.no_grad():
        bns = [m for m in net if isinstance(m, nn.BatchNorm1d)]
        for bn in bns[1:]:
            bn.running_mean.copy_(torch.randint(-6, 7, bn.running_mean.shape).float())
            bn.running_var.fill_(1.0)
            bn.bias[::2] = 0.0
        bns[0].running_mean.normal_(0, 3)
        bns[0].running_var.uniform_(1, 20)
    packed = _roundtrip(net, tmp_path)
    for path in PATHS:
        assert torch.equal(packed.predict(xt, path=path), inf.simulate(net, xt))
    flips = [lay.flip for lay in packed.layers if lay.flip is not None]
    assert any(f.any() for f in flips) and any((~f).any() for f in flips)


def test_input_forms(trained_mlp, tmp_path):
    net, xt, _ = trained_mlp
    packed = _roundtrip(net, tmp_path)
    want = packed.predict(xt[:50])
    for form in (xt[:50].reshape(50, 28, 28), xt[:50].reshape(50, 784), _scaled(xt[:50])):
        assert torch.equal(packed.predict(form), want)
    assert torch.equal(packed.predict(xt[:50].numpy()), want)
    with pytest.raises(ValueError, match="does not match"):
        packed.predict(torch.zeros(3, 3, 32, 32, dtype=torch.uint8))


def test_predict_refuses_floats_off_the_paper_scaling(trained_mlp, tmp_path):
    """Float pixels 0..255 or 0..1 used to be clamped into [-1, 1] (31% / 26% accuracy instead
    of the model's), NaN/inf predicted a class, batch_size=-1 returned nothing."""
    net, xt, _ = trained_mlp
    packed = _roundtrip(net, tmp_path)
    x = xt[:40]
    want = packed.predict(x)
    assert torch.equal(packed.predict(_scaled(x).double()), want)  # on the grid: fine
    assert torch.equal(packed.predict(_scaled(x).half()), want)
    for bad, looks in (
        (x.float(), "pixels 0..255 stored as floats"),
        (x.float() / 255, "scaled to 0..1"),
        (_scaled(x) * 1.5, r"outside \[-1, 1\]"),
        ((_scaled(x) + 0.001).clamp(-1, 1), "not on the grid"),
    ):
        for call in (packed.predict, packed.scores, lambda v: inf.simulate(net, v)):
            with pytest.raises(ValueError, match=f"2 \\* pixel / 255 - 1.*{looks}"):
                call(bad)
    for value in (float("nan"), float("inf")):
        bad = _scaled(x)
        bad[3, 0, 5, 5] = value
        with pytest.raises(ValueError, match="1 NaN or infinite"):
            packed.predict(bad)
    with pytest.raises(ValueError, match="bfloat16"):
        packed.predict(_scaled(x).bfloat16())
    for size in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="batch_size must be an int >= 1"):
            packed.predict(x, batch_size=size)
        with pytest.raises(ValueError, match="batch_size"):
            inf.simulate(net, x, batch_size=size)
    assert torch.equal(packed.predict(x, batch_size=np.int64(7)), want)


def test_shift_batchnorm_model(tmp_path):
    x, y, xt, _ = _data(n_train=300, n_test=300)
    torch.manual_seed(1)
    net = _calibrate_bn(mnist_mlp(hidden=96, depth=2, batchnorm="shift"), x)
    _randomize_bn(net, seed=4)
    packed = _roundtrip(net, tmp_path)
    assert packed.header["layers"][0]["batchnorm"] == "shift"
    for path in PATHS:
        assert torch.equal(packed.predict(xt, path=path), inf.simulate(net, xt))


def test_nbytes_ratio_paper_mlp(tmp_path):
    net = mnist_mlp()  # 784 -> 3 x 4096 -> 10
    packed = _roundtrip(net, tmp_path)
    ratio = inf.float32_nbytes(net) / packed.nbytes
    assert inf.float32_nbytes(net) == 4 * (784 * 4096 + 2 * 4096 * 4096 + 4096 * 10)
    assert packed.nbytes == 8 * (4096 * 13 + 2 * 4096 * 64 + 10 * 64)
    assert ratio >= 31


# ---------------------------------------------------------------- the ConvNet


def _small_convnet(seed=0):
    torch.manual_seed(seed)
    return cifar10_convnet(width=1 / 16)  # 8, 16, 32 channels; 64 units


def test_convnet_packed_equals_simulation(tmp_path):
    g = torch.Generator().manual_seed(5)
    x = torch.randint(0, 256, (300, 3, 32, 32), generator=g, dtype=torch.uint8)
    net = _calibrate_bn(_small_convnet(), x)
    _randomize_bn(net, seed=6, negative=0.0)
    # Re-centre BN so that Sign outputs are mixed, then flip some gammas on purpose.
    _calibrate_bn_keep_affine(net, x)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.weight[1::3] *= -1
    packed = _roundtrip(net, tmp_path)
    assert packed.header["input"]["shape"] == [3, 32, 32]
    xt = x[:60]
    sim = inf.simulate_scores(net, xt)
    for path in PATHS:
        assert torch.equal(packed.scores(xt, path=path), sim)
    assert torch.equal(packed.scores(xt, first_layer="bitplanes"), sim)  # layers path
    assert any(lay.flip is not None and lay.flip.any() for lay in packed.layers)
    with torch.no_grad():
        f32 = net.eval()(_scaled(xt)).argmax(1)
    assert (f32 == sim.argmax(1)).float().mean() >= 0.9


@torch.no_grad()
def _calibrate_bn_keep_affine(net, x):
    w = [(m, m.weight.clone(), m.bias.clone()) for m in net.modules() if hasattr(m, "running_mean")]
    _calibrate_bn(net, x)
    for m, wt, b in w:
        m.weight.copy_(wt)
        m.bias.copy_(b)
    return net


def pool_after_bn_net():
    """Conv -> BN -> MaxPool -> Sign with gamma < 0 on every other channel (the pool of a
    decreasing map is a min), stride 2 with padding 2, 70 and 5 channels (not multiples of
    64, one more than 64), BN statistics from 300 random 12 x 12 images: (net, images)."""
    torch.manual_seed(7)
    net = nn.Sequential(
        BinaryConv2d(1, 70, 3, padding=1, binarize_input=False),
        nn.BatchNorm2d(70),
        nn.MaxPool2d(2),
        SignActivation(),
        BinaryConv2d(70, 5, 3, stride=2, padding=2, binarize_input=False),
        nn.BatchNorm2d(5),
        SignActivation(),
        nn.Flatten(),
        BinaryLinear(5 * 4 * 4, 10, binarize_input=True),
        nn.BatchNorm1d(10),
    )
    g = torch.Generator().manual_seed(8)
    x = torch.randint(0, 256, (300, 1, 12, 12), generator=g, dtype=torch.uint8)
    _calibrate_bn(net, x)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.weight[::2] *= -1
    return net, x


def test_conv_pool_after_bn_and_odd_shapes(tmp_path):
    """The layers path on :func:`pool_after_bn_net`: bit planes and the real first layer."""
    net, x = pool_after_bn_net()
    packed = _roundtrip(net, tmp_path, input_shape=(1, 12, 12))
    sim = inf.simulate_scores(net, x[:100])
    assert torch.equal(packed.scores(x[:100], path="layers"), sim)
    assert torch.equal(packed.scores(x[:100], path="layers", first_layer="bitplanes"), sim)


def test_export_refuses_float_model(tmp_path):
    with pytest.raises(ValueError, match="BinaryLinear or BinaryConv2d"):
        inf.export(mnist_mlp(hidden=8, depth=1, binary=False), tmp_path / "f.bnn")


# ---------------------------------------------------------------- bad files


@pytest.fixture(scope="module")
def good_file(tmp_path_factory):
    torch.manual_seed(0)
    net = mnist_mlp(hidden=32, depth=1).eval()
    return inf.export(net, tmp_path_factory.mktemp("good") / "good.bnn")


def _expect_error(path, match):
    with pytest.raises(inf.PackedModelError, match=match) as e:
        inf.load(path)
    assert str(path) in str(e.value)


def test_good_file_loads(good_file):
    assert inf.load(good_file).num_classes == 10


def test_truncated_file(good_file, tmp_path):
    data = good_file.read_bytes()
    for cut in (4, 100, len(data) // 2, len(data) - 1):
        p = tmp_path / f"cut{cut}.bnn"
        p.write_bytes(data[:cut])
        _expect_error(p, "truncated|too short|not a safetensors|corrupted")


def test_flipped_bytes(good_file, tmp_path):
    data = good_file.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = data[8 : 8 + n]
    # A byte inside the JSON metadata (a digit of a shape in the model header).
    key = b'\\"k\\": '
    i = header.index(key) + len(key)
    assert header[i : i + 1].isdigit()
    flipped = data[: 8 + i] + bytes([data[8 + i] ^ 0x01]) + data[9 + i :]
    p = tmp_path / "hdr.bnn"
    p.write_bytes(flipped)
    _expect_error(p, "corrupted|checksum")
    # A byte of the packed weights.
    j = len(data) - 40
    p2 = tmp_path / "data.bnn"
    p2.write_bytes(data[:j] + bytes([data[j] ^ 0x10]) + data[j + 1 :])
    _expect_error(p2, "checksum")
    # A structural byte of the safetensors JSON.
    p3 = tmp_path / "json.bnn"
    p3.write_bytes(data[:8] + b"[" + data[9:])
    _expect_error(p3, "corrupted")


def test_wrong_version(good_file, tmp_path):
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    with safe_open(str(good_file), "pt") as f:
        meta = dict(f.metadata())
    meta["format_version"] = "99"
    p = tmp_path / "v99.bnn"
    save_file(load_file(str(good_file)), str(p), metadata=meta)
    _expect_error(p, "format version '99'")


def test_inconsistent_header_with_valid_checksum(good_file, tmp_path):
    header, tensors = read_packed(good_file)
    header["layers"][1]["out_features"] = 11  # the weights say 10
    p = write_packed(tmp_path / "bad_header.bnn", header, tensors)
    _expect_error(p, "inconsistent")


def _st_bytes(header: str) -> bytes:
    """A safetensors file of just this JSON header (no tensors)."""
    raw = header.encode()
    return struct.pack("<Q", len(raw)) + raw


def test_malformed_metadata_is_a_packed_model_error(good_file, tmp_path):
    """A string __metadata__ or deeply nested JSON used to raise AttributeError or
    RecursionError instead of PackedModelError."""
    deep = "[" * 100_000 + "]" * 100_000
    for i, header in enumerate(
        ['{"__metadata__": "bnnlib.packed"}', '{"__metadata__": {"format": 1}}', "[1, 2]",
         '{"__metadata__": {"format": ' + deep + "}}", deep]
    ):  # fmt: skip
        p = tmp_path / f"meta{i}.bnn"
        p.write_bytes(_st_bytes(header))
        _expect_error(p, "corrupted safetensors header")
    # A deeply nested model header with a valid checksum.
    header_json, tensors = deep, read_packed(good_file)[1]
    from bnnlib.inference.format import packed_digest

    meta = {"format": inf.FORMAT, "format_version": str(inf.FORMAT_VERSION)}
    meta.update(header=header_json, sha256=packed_digest(header_json, tensors))
    from safetensors.torch import save

    p = tmp_path / "deep_model_header.bnn"
    p.write_bytes(save(tensors, metadata=meta))
    _expect_error(p, "corrupted model header")


def test_bfloat16_tensor_is_a_packed_model_error(good_file, tmp_path):
    from safetensors.torch import save

    header, tensors = read_packed(good_file)
    tensors["layers.1.a"] = tensors["layers.1.a"].to(torch.bfloat16)
    meta = {"format": inf.FORMAT, "format_version": str(inf.FORMAT_VERSION)}
    meta.update(header=json.dumps(header, sort_keys=True), sha256="0" * 64)
    p = tmp_path / "bf16.bnn"
    p.write_bytes(save(tensors, metadata=meta))
    _expect_error(p, "layers.1.a has dtype torch.bfloat16")


@pytest.fixture(scope="module")
def conv_file(tmp_path_factory):
    torch.manual_seed(0)
    return inf.export(_small_convnet().eval(), tmp_path_factory.mktemp("conv") / "conv.bnn")


def _resized(header: dict, side: int) -> dict:
    """The conv net's header for side x side inputs, every shape consistent (the first
    convolution keeps its weights; a valid checksum is recomputed by write_packed)."""
    h = copy.deepcopy(header)
    h["input"]["shape"][1:] = [side, side]
    lay = h["layers"][0]
    lay["in_hw"] = [side, side]
    lay["out_hw"] = [side, side]  # 3x3, stride 1, padding 1
    lay["pooled_hw"] = [side, side]
    return h


def test_huge_claimed_input_is_refused_before_allocating(conv_file, tmp_path):
    """A 16 KB conv file claiming a 20000 x 20000 input used to allocate 5.6 GB at load."""
    header, tensors = read_packed(conv_file)
    assert header["layers"][0]["kind"] == "conv2d" and "pool" not in header["layers"][0]
    p = write_packed(tmp_path / "huge.bnn", _resized(header, 20_000), tensors)
    assert p.stat().st_size < 100_000
    _expect_error(p, r"20000 x 20000 pixels.*up to 4096 x 4096")
    # Within the side limit but with too many values per image for the layer tables.
    _expect_error(write_packed(tmp_path / "big.bnn", _resized(header, 4000), tensors), "limit of")
    # Shapes that disagree with each other (the next layer still expects 32 x 32).
    _expect_error(
        write_packed(tmp_path / "mid.bnn", _resized(header, 64), tensors), "layer 1.*in_hw"
    )


@pytest.mark.parametrize(
    "edit, problem",
    [
        (lambda h, t: h["layers"][0].update(k=9), "layer 0: k is 9"),
        (lambda h, t: h["layers"][0].update(out_features=True), "out_features must be an integer"),
        (lambda h, t: h["layers"][1].update(in_features=33), "layer 1: in_features 33"),
        (lambda h, t: h.update(num_classes=11), "num_classes is 11"),
        (lambda h, t: h["layers"][0].update(output="scores"), "layer 0: output"),
        (lambda h, t: h["layers"][0].update(kind="conv2d"), "a convolution needs an image"),
        (lambda h, t: t.update({"extra": torch.zeros(10**5, dtype=torch.uint8)}), "extra"),
        (lambda h, t: t.update({"layers.0.threshold": torch.zeros(33, dtype=torch.int64)}),
         r"layers.0.threshold is torch.int64 \(33,\)"),
        (lambda h, t: t.update({"layers.1.a": t["layers.1.a"].long()}),
         "layers.1.a is torch.int64"),
        (lambda h, t: h.update(layers=[]), "layers must be a list"),
        (lambda h, t: h["input"].update(shape=[-784]), "input shape must be an integer >= 1"),
    ],
)  # fmt: skip
def test_header_shapes_checked_against_each_other_and_tensors(good_file, tmp_path, edit, problem):
    header, tensors = read_packed(good_file)
    edit(header, tensors)
    _expect_error(write_packed(tmp_path / "edited.bnn", header, tensors), problem)


def test_layer_specs_write_back_the_header_they_were_read_from(good_file, conv_file):
    """The typed layer specs (bnnlib.inference.spec) are the header's objects, field for field:
    to_header gives back exactly what the file holds (the format does not change), also for
    the committed model written before they existed."""
    import dataclasses
    from pathlib import Path

    from bnnlib.inference.spec import Conv2dSpec, LayerSpec, LinearSpec

    committed = Path(__file__).resolve().parent.parent / "results/torch7_mnist/model.safetensors"
    paths = [good_file, conv_file] + ([committed] if committed.is_file() else [])
    for path in paths:
        header, _ = read_packed(path)
        specs = [lay.spec for lay in inf.load(path).layers]
        assert [spec.to_header() for spec in specs] == header["layers"]
        assert [LayerSpec.from_header(raw) for raw in header["layers"]] == specs
    conv = [lay.spec for lay in inf.load(conv_file).layers]
    assert isinstance(conv[0], Conv2dSpec) and conv[0].first and conv[0].pool is None
    assert any(isinstance(s, Conv2dSpec) and s.pool is not None for s in conv)
    assert isinstance(conv[-1], LinearSpec) and conv[-1].output == "scores"
    with pytest.raises(dataclasses.FrozenInstanceError):
        conv[0].name = "layers.9"
    raw = read_packed(good_file)[0]["layers"][0] | {"out_features": True}
    with pytest.raises(ValueError, match="layer spec out_features must be an integer >= 1"):
        LayerSpec.from_header(raw)
    with pytest.raises(ValueError, match="unknown kind 'dense'"):
        LayerSpec.from_header(raw | {"kind": "dense"})


def test_padding_bits_in_packed_weights_are_refused(good_file, tmp_path):
    """784 inputs fill 12 words and 16 bits of a 13th; the 48 bits beyond must be 0 (the hidden
    layers count padding bits as matches): a crafted file with a valid checksum was loaded."""
    header, tensors = read_packed(good_file)
    tensors["layers.0.weight"][5, -1] |= 1 << 40
    _expect_error(
        write_packed(tmp_path / "pad.bnn", header, tensors), "layers.0.weight has padding bits"
    )


@pytest.mark.parametrize(
    "tensor, value, match",
    [
        ("layers.0.threshold", 2**32, r"layers.0.threshold holds values in .* outside \[-199920"),
        ("layers.0.threshold", -(2**31) - 1, "outside"),  # used to act as "never fires"
        ("layers.0.threshold", 199922, r"outside \[-199920, 199921\]"),  # 255 x 784 inputs
        ("layers.0.flip", 2, "layers.0.flip must be 0 or 1"),
        ("layers.1.a", float("nan"), "layers.1.a holds NaN"),
        ("layers.1.beta", float("inf"), "layers.1.beta holds NaN or infinite"),
    ],
)
def test_out_of_range_tensors_are_refused(good_file, tmp_path, tensor, value, match):
    """A file with a valid digest but a threshold past int32, a flip of 2 or a NaN batch norm
    used to load and predict silently wrong classes."""
    header, tensors = read_packed(good_file)
    t = tensors[tensor]
    tensors[tensor] = t.clone()
    tensors[tensor][3] = value
    _expect_error(write_packed(tmp_path / "bad.bnn", header, tensors), match)


def test_thresholds_at_the_edge_of_the_range_load(good_file, tmp_path):
    header, tensors = read_packed(good_file)
    t = tensors["layers.0.threshold"] = tensors["layers.0.threshold"].clone()
    t[0], t[1] = 199921, -199920  # never fires / always fires (255 x 784 inputs)
    inf.load(write_packed(tmp_path / "edge.bnn", header, tensors))


def test_channels_last_images_are_refused_by_the_api(tmp_path):
    """The API used to reshape (N, 32, 32, 3) images into (N, 3, 32, 32) silently."""
    torch.manual_seed(0)
    net = cifar10_convnet(width=0.125).eval()
    packed = inf.load(inf.export(net, tmp_path / "c.bnn"))
    x = torch.randint(0, 256, (4, 32, 32, 3), dtype=torch.uint8)
    for call in (packed.predict, packed.scores):
        with pytest.raises(
            ValueError, match=r"channels-last \(N, H, W, C\).*permute\(0, 3, 1, 2\)"
        ):
            call(x)
    assert packed.predict(x.permute(0, 3, 1, 2)).shape == (4,)
    assert packed.predict(x.permute(0, 3, 1, 2).reshape(4, -1)).shape == (4,)  # flat is fine


def test_empty_input(good_file):
    packed = inf.load(good_file)
    assert packed.predict(torch.zeros(0, 784, dtype=torch.uint8)).shape == (0,)


def test_not_a_packed_model(tmp_path):
    p = tmp_path / "text.bnn"
    p.write_text("hello, this is not a model at all")
    _expect_error(p, "not a safetensors|not a packed")
    p2 = tmp_path / "pickle.pt"
    torch.save({"w": torch.ones(3)}, p2)
    _expect_error(p2, "not a safetensors|not a packed|corrupted")
    from safetensors.torch import save_file

    p3 = tmp_path / "other.safetensors"
    save_file({"w": torch.ones(3)}, str(p3))
    _expect_error(p3, "not a packed bnnlib model")
    _expect_error(tmp_path / "missing.bnn", "cannot read")


# ---------------------------------------------------------------- devices


class _CpuStandInForCuda:
    """bnnlib.kernels.cuda's documented functions, computed on the CPU (checks the GPU adapter)."""

    @staticmethod
    def pack(x, dim=-1, word_bits=64, check=True):
        return kernels.pack(x, dim=dim)

    @staticmethod
    def xnor_gemm_fast(a, b, k, method="auto"):
        return kernels.xnor_gemm(a, b, k)

    xnor_gemm = xnor_gemm_fast

    @staticmethod
    def threshold_pack(acc, threshold, direction):
        fire = torch.where(direction >= 0, acc >= threshold, acc <= threshold)
        return kernels.pack(torch.where(fire, 1.0, -1.0), dim=-1)


def test_gpu_adapter_logic_on_cpu_stand_ins(tmp_path):
    """The CUDA back end's own logic (threshold/direction, bit planes, pooling in float64),
    run with CPU stand-ins that follow bnnlib.kernels.cuda's documented semantics."""

    class Ops(inf.CudaBackend):
        device = "cpu"

    g = torch.Generator().manual_seed(9)
    x = torch.randint(0, 256, (200, 3, 32, 32), generator=g, dtype=torch.uint8)
    net = _calibrate_bn(_small_convnet(seed=2), x)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.weight[::3] *= -1
    packed = _roundtrip(net, tmp_path)
    ops = Ops(_CpuStandInForCuda())
    want = inf.simulate_scores(net, x[:40])
    for mode in ("real", "bitplanes"):
        got = torch.cat([packed.forward_layers(x[:40], ops, mode)])
        assert torch.equal(got, want)


def test_one_backend_interface_no_per_device_thresholds():
    """Both back ends inherit the same threshold_pack: the kernels of both devices take the
    (threshold, direction) computed once at load, with no per-device translation."""
    for cls in (inf.CpuBackend, inf.CudaBackend):
        assert issubclass(cls, inf.Backend)
        assert "threshold_pack" not in vars(cls) and "get" not in vars(cls)
        assert {"real_dot", "bitplane_dot", "pool"} <= set(vars(cls))
    assert isinstance(inf.backend("cpu"), inf.CpuBackend)


@pytest.mark.gpu
def test_cuda_backend_equals_simulation(tmp_path):
    from bnnlib.kernels import cuda as bc

    if not bc.available():
        pytest.skip(f"bnnlib.kernels.cuda unavailable: {bc.reason()}")
    g = torch.Generator().manual_seed(10)
    x = torch.randint(0, 256, (120, 3, 32, 32), generator=g, dtype=torch.uint8)
    net = _calibrate_bn(_small_convnet(seed=3), x)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.weight[::3] *= -1
    packed = _roundtrip(net, tmp_path)
    want = inf.simulate_scores(net, x)
    for kernel in ("fast", "paper"):
        for mode in ("real", "bitplanes"):
            got = packed.scores(x, device="cuda", first_layer=mode, kernel=kernel)
            assert torch.equal(got, want), (kernel, mode)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU error")
def test_cuda_without_gpu_is_one_clear_error(good_file):
    packed = inf.load(good_file)
    with pytest.raises(RuntimeError, match="cuda"):
        packed.predict(torch.zeros(2, 784, dtype=torch.uint8), device="cuda")


# ---------------------------------------------------------------- python -m bnnlib.inference


def _write_npz(path, n_train=600, n_test=200, side=8, classes=3, noise=250, seed=0):
    """A small npz dataset (uint8 N x H x W x 1, noisy prototypes, one per class), and its
    images as uint8 N x 1 x H x W tensors: (name, x_train, y_train, x_test, y_test)."""
    g = np.random.default_rng(seed)
    protos = g.integers(0, 256, (classes, side, side, 1))
    y = np.arange(n_train + n_test) % classes
    jitter = g.integers(-noise, noise + 1, (n_train + n_test, side, side, 1))
    x = np.clip(protos[y] + jitter, 0, 255).astype(np.uint8)
    tr, te = slice(0, n_train), slice(n_train, None)
    np.savez(path, x_train=x[tr], y_train=y[tr], x_test=x[te], y_test=y[te])
    xs = torch.from_numpy(x).permute(0, 3, 1, 2)
    ys = torch.from_numpy(y)
    return f"npz:{path}", xs[tr], ys[tr], xs[te], ys[te]


@pytest.fixture(scope="module")
def cli_case(tmp_path_factory):
    """A tiny trained MLP exported, an npz dataset for it, and its simulated test errors."""
    tmp = tmp_path_factory.mktemp("cli")
    name, x, y, xt, yt = _write_npz(tmp / "tiny.npz")
    torch.manual_seed(0)
    net = mnist_mlp(hidden=32, depth=1, in_features=64, num_classes=3)
    _train(net, x, y, steps=20, batch=50, classes=3)
    model = inf.export(net, tmp / "model.safetensors")
    errors = int((inf.simulate(net, xt) != yt).sum())
    return name, model, errors, len(yt)


def test_cli_prints_the_simulated_error(cli_case, capsys):
    name, model, errors, n = cli_case
    assert 0 < errors < n / 2  # a trained model that still makes mistakes
    res = inf.main([str(model), "--dataset", name, "--batch-size", "64"])
    out = capsys.readouterr().out
    want = f"test error {100 * errors / n:.2f}% ({errors} / {n}) on {name} test, model {model}"
    assert out.startswith(want + ", CPU: "), out
    assert res["errors"] == errors and res["n"] == n


def test_cli_json(cli_case, capsys):
    name, model, errors, n = cli_case
    inf.main([str(model), "--dataset", name, "--json", "--first-layer", "bitplanes"])
    d = json.loads(capsys.readouterr().out)
    assert (d["errors"], d["n"], d["split"], d["model"]) == (errors, n, "test", str(model))
    assert d["error"] == errors / n and d["hardware"].startswith("CPU: ")


def test_cli_as_module(cli_case):
    name, model, errors, n = cli_case
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "bnnlib.inference", str(model), "--dataset", name, "--json"]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["errors"] == errors


def _cli_error(argv, capsys) -> str:
    with pytest.raises(SystemExit) as e:
        inf.main(argv)
    assert e.value.code == 2
    return capsys.readouterr().err


def test_cli_bad_input_is_one_error(cli_case, good_file, tmp_path, capsys):
    name, model, _, _ = cli_case
    err = _cli_error([str(tmp_path / "missing.safetensors"), "--dataset", name], capsys)
    assert "model file not found" in err and "missing.safetensors" in err
    text = tmp_path / "text.safetensors"
    text.write_text("hello, this is not a model at all")
    err = _cli_error([str(text), "--dataset", name], capsys)
    assert str(text) in err and ("not a safetensors" in err or "not a packed" in err)
    err = _cli_error([str(model), "--dataset", "imagenet"], capsys)
    assert "unknown dataset 'imagenet'" in err
    err = _cli_error([str(good_file), "--dataset", name], capsys)  # 784 inputs, 8x8 images
    assert "takes images of shape (784,)" in err and "(1, 8, 8)" in err
    err = _cli_error([str(model), "--dataset", f"npz:{tmp_path / 'none.npz'}"], capsys)
    assert "npz dataset not found" in err


@pytest.mark.parametrize("first", [True, False])
def test_conv_rows_and_conv_weight_are_inverses(first):
    from bnnlib.inference.runtime import conv_rows, conv_weight
    from bnnlib.inference.spec import Conv2dSpec, Window

    wb = torch.randn(4, 3, 2, 5, generator=torch.Generator().manual_seed(1)).sign()
    rows = conv_rows(wb, first)
    assert rows.shape == ((4, 1, 30) if first else (4, 10, 3))
    spec = Conv2dSpec.build(
        name="layers.0", first=first, output="sign", in_channels=3, out_channels=4,
        in_hw=(2, 5), window=Window(kernel=(2, 5), stride=(1, 1), padding=(0, 0)),
    )  # fmt: skip
    assert torch.equal(conv_weight(rows, spec), wb)


def test_cli_takes_the_dataset_a_model_records_and_refuses_another(cli_case, tmp_path, capsys):
    """A model trained on MNIST scored on Fashion-MNIST used to report 91% error, exit 0: the
    file did not record its data set."""
    name, model, errors, n = cli_case
    header, tensors = read_packed(model)
    header = copy.deepcopy(header)
    header["metadata"] = {**header.get("metadata", {}), "dataset": name}
    recorded = write_packed(tmp_path / "recorded.bnn", header, tensors)
    assert inf.load(recorded).dataset == name and inf.load(model).dataset is None
    assert inf.main([str(recorded)])["errors"] == errors  # no --dataset: the recorded one
    other_name = _write_npz(tmp_path / "other.npz", seed=1)[0]
    with pytest.raises(SystemExit):
        inf.main([str(recorded), "--dataset", other_name])
    assert f"was trained on {name}, not {other_name}" in capsys.readouterr().err
    inf.main([str(recorded), "--dataset", other_name, "--any-dataset"])  # asked for: allowed
    with pytest.raises(SystemExit):
        inf.main([str(model)])  # records nothing, says nothing: --dataset is needed
    err = capsys.readouterr().err
    assert "does not record its training data set" in err and "give --dataset" in err


def test_a_model_claiming_too_many_classes_is_refused_before_allocation(good_file, tmp_path):
    """A 32 MB model claiming 10^6 classes used to try to allocate 8 GB."""
    header, tensors = read_packed(good_file)
    header = copy.deepcopy(header)
    header["layers"][-1]["out_features"] = 10**6
    header["num_classes"] = 10**6
    _expect_error(write_packed(tmp_path / "wide.bnn", header, tensors), "1000000 classes")


def test_numba_threads_zero_is_one_clear_error():
    env = dict(os.environ, NUMBA_NUM_THREADS="0")
    out = subprocess.run(
        [sys.executable, "-c", "import bnnlib.kernels"], env=env, capture_output=True, text=True
    )
    assert out.returncode != 0
    assert "NUMBA_NUM_THREADS='0': must be an integer >= 1" in out.stderr


def test_cli_reads_the_dataset_from_the_run_json_beside_an_older_model(cli_case, tmp_path, capsys):
    """The committed models predate the dataset record in the file: their run.json names it."""
    name, model, errors, n = cli_case
    folder = tmp_path / "run"
    folder.mkdir()
    copy_ = folder / "model.safetensors"
    copy_.write_bytes(model.read_bytes())
    with pytest.raises(SystemExit):
        inf.main([str(copy_)])
    assert "nor does a run.json beside it" in capsys.readouterr().err
    (folder / "run.json").write_text(json.dumps({"run_config": {"dataset": name}}))
    assert inf.main([str(copy_)])["errors"] == errors
    other_name = _write_npz(tmp_path / "other.npz", seed=1)[0]
    with pytest.raises(SystemExit):
        inf.main([str(copy_), "--dataset", other_name])
    assert f"was trained on {name}, not {other_name}" in capsys.readouterr().err
