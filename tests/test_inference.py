"""Packed inference (bnnlib.inference) against the float simulation and the float32 model.

The oracle is :func:`bnnlib.inference.simulate`: the model run layer by layer with float
products and float64 batch norm, no packing, thresholds or XNOR. Packed predictions must be
*identical* to it; both first-layer modes must give identical scores.
"""

from __future__ import annotations

import copy
import os
import struct

import pytest
import torch
from torch import nn

import bnnlib.kernels as kernels
from bnnlib import inference as inf
from bnnlib.layers import BinaryConv2d, BinaryLinear, SignActivation
from bnnlib.losses import pm1_targets, square_hinge
from bnnlib.models import cifar10_convnet, mnist_mlp
from bnnlib.optim import Adam

# ---------------------------------------------------------------- reference kernels (fallback)

_BITS = torch.arange(64, dtype=torch.int64)


def _ref_pack(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    x = x.movedim(dim, -1)
    k = x.shape[-1]
    w = -(-k // 64)
    bits = torch.zeros(*x.shape[:-1], w * 64, dtype=torch.int64)
    bits[..., :k] = (x > 0).long()
    words = (bits.reshape(*x.shape[:-1], w, 64) << _BITS).sum(-1)  # wraps at bit 63: fine
    return words.movedim(-1, dim)


def _ref_unpack(words: torch.Tensor, k: int, dim: int = -1) -> torch.Tensor:
    words = words.movedim(dim, -1)
    bits = (words.unsqueeze(-1) >> _BITS) & 1
    bits = bits.reshape(*words.shape[:-1], -1)[..., :k]
    return (2.0 * bits - 1.0).movedim(-1, dim)


def _ref_xnor_gemm(a: torch.Tensor, b: torch.Tensor, k: int) -> torch.Tensor:
    return (_ref_unpack(a, k).double() @ _ref_unpack(b, k).double().T).to(torch.int32)


def _ref_bitplane_dot(x: torch.Tensor, w: torch.Tensor, k: int) -> torch.Tensor:
    return (x.double() @ _ref_unpack(w, k).double().T).to(torch.int32)


@pytest.fixture(autouse=True, scope="module")
def _kernels_or_reference():
    """Use bnnlib.kernels; where a function is still missing, a pure-torch reference."""
    with pytest.MonkeyPatch.context() as mp:
        _patch_missing(mp)
        yield


def _patch_missing(monkeypatch):
    for name, fn in [
        ("pack", _ref_pack),
        ("unpack", _ref_unpack),
        ("xnor_gemm", _ref_xnor_gemm),
        ("bitplane_dot", _ref_bitplane_dot),
        ("pack_bits", lambda b, dim=-1: _ref_pack(torch.where(b, 1.0, -1.0), dim)),
    ]:
        if not hasattr(kernels, name):
            monkeypatch.setattr(kernels, name, fn, raising=False)


# ---------------------------------------------------------------- helpers


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


def _train(net, x, y, steps, batch=100, lr=3e-3, seed=0):
    torch.manual_seed(seed)
    opt = Adam(net, lr=lr)
    X = _scaled(x)
    net.train()
    for i in range(steps):
        j = (i * batch) % len(X)
        xb, yb = X[j : j + batch], y[j : j + batch]
        loss = square_hinge(net(xb), pm1_targets(yb, 10))
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
    sim = inf.simulate(net, xt)
    assert torch.equal(packed.predict(xt), sim)
    # Scores of the last layer are the same float64 numbers, not just the same argmax.
    assert torch.equal(packed.scores(xt), inf.simulate_scores(net, xt))
    # A trained model: clearly better than chance (the oracle itself is sane).
    assert (sim == yt).float().mean() > 0.5


def test_mlp_first_layer_modes_identical(trained_mlp, tmp_path):
    net, xt, _ = trained_mlp
    packed = _roundtrip(net, tmp_path)
    real = packed.scores(xt[:300], first_layer="real")
    planes = packed.scores(xt[:300], first_layer="bitplanes")
    assert torch.equal(real, planes)
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
    assert torch.equal(packed.predict(xt), inf.simulate(net, xt))
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


def test_shift_batchnorm_model(tmp_path):
    x, y, xt, _ = _data(n_train=300, n_test=300)
    torch.manual_seed(1)
    net = _calibrate_bn(mnist_mlp(hidden=96, depth=2, batchnorm="shift"), x)
    _randomize_bn(net, seed=4)
    packed = _roundtrip(net, tmp_path)
    assert packed.header["layers"][0]["batchnorm"] == "shift"
    assert torch.equal(packed.predict(xt), inf.simulate(net, xt))


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
    assert torch.equal(packed.scores(xt), sim)
    assert torch.equal(packed.scores(xt, first_layer="bitplanes"), sim)
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


def test_conv_pool_after_bn_and_odd_shapes(tmp_path):
    """Conv -> BN -> MaxPool -> Sign with gamma < 0 (the pool of a decreasing map is a min),
    stride 2, channel counts that are not multiples of 64 and more than 64 channels."""
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
    packed = _roundtrip(net, tmp_path, input_shape=(1, 12, 12))
    sim = inf.simulate_scores(net, x[:100])
    assert torch.equal(packed.scores(x[:100]), sim)
    assert torch.equal(packed.scores(x[:100], first_layer="bitplanes"), sim)


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
    header, tensors = inf._read(good_file)
    header["layers"][1]["out_features"] = 11  # the weights say 10
    p = inf._write(tmp_path / "bad_header.bnn", header, tensors)
    _expect_error(p, "inconsistent")


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
    """bnnlib.cuda's documented functions, computed on the CPU (checks the GPU adapter)."""

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
    run with CPU stand-ins that follow bnnlib.cuda's documented semantics."""

    class Ops(inf._CudaOps):
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
        got = torch.cat([packed._forward(x[:40], ops, mode)])
        assert torch.equal(got, want)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU error")
def test_cuda_without_gpu_is_one_clear_error(good_file):
    packed = inf.load(good_file)
    with pytest.raises(RuntimeError, match="cuda"):
        packed.predict(torch.zeros(2, 784, dtype=torch.uint8), device="cuda")
