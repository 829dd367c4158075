"""bnnlib.kernels.cuda on a real GPU: every kernel equals the CPU reference exactly on ±1 data.

Skipped, test by test, without a CUDA GPU, PyCUDA (``pip install 'bnnlib[cuda]'``) or nvcc;
every test is collected and marked ``gpu`` everywhere, and ``python -m bnnlib.gpucheck``
counts a skip as a failure on the GPU machine. The same kernels run on the CPU under host
emulation in tests/test_cuda_compile.py. The last tests run ``PackedNet.predict(device="cuda")``
(conv, pooling, bit-plane first layer, thresholds on the device) against the float simulation.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import bnnlib
from bnnlib import inference as inf
from bnnlib import kernels as K
from bnnlib.kernels import cuda as bc
from bnnlib.nn.layers import BinaryConv2d, BinaryLinear, SignActivation

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not bc.available(), reason=f"no bnnlib.kernels.cuda: {bc.reason()}"),
]

DEV = torch.device("cuda")


def methods() -> list[str]:
    """XNOR methods of xnor_gemm_fast on this GPU (tensor cores on sm_80+)."""
    has_tc = torch.cuda.get_device_capability() >= (8, 0)
    return ["popc"] + (["tensor_core"] if has_tc else [])


def pm1(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return bnnlib.sign(torch.randn(*shape, generator=g))


def cpu_ref(a, b, k):
    return K.xnor_gemm(K.pack(a), K.pack(b), k)


SHAPES = [(1, 1, 1), (1, 300, 64), (17, 33, 31), (70, 66, 600), (65, 9, 1100), (200, 130, 4099)]


@pytest.mark.parametrize("M,N,k", SHAPES)
def test_xnor_kernels_equal_cpu(M, N, k):
    a, b = pm1(M, k, seed=k), pm1(N, k, seed=k + 1)
    ref = cpu_ref(a, b, k)
    assert torch.equal(ref, (a.double() @ b.double().T).to(torch.int32))
    ag, bg = a.to(DEV), b.to(DEV)
    paper = bc.xnor_gemm(bc.pack(ag, word_bits=32), bc.pack(bg, word_bits=32), k)
    assert torch.equal(paper.cpu(), ref)
    assert torch.equal(bc.xnor_gemm(bc.pack(ag), bc.pack(bg), k).cpu(), ref)
    for method in methods():
        fast = bc.xnor_gemm_fast(bc.pack(ag), bc.pack(bg), k, method=method)
        assert torch.equal(fast.cpu(), ref), method


def test_xnor_large_exact_against_cublas():
    torch.backends.cuda.matmul.allow_tf32 = False
    a, b = pm1(1024, 4096, seed=1).to(DEV), pm1(1000, 4096, seed=2).to(DEV)
    ref = (a @ b.T).to(torch.int32)  # float32 sums of ±1 below 2^24 are exact
    assert torch.equal(bc.xnor_gemm(bc.pack(a, word_bits=32), bc.pack(b, word_bits=32), 4096), ref)
    for method in methods():
        assert torch.equal(bc.xnor_gemm_fast(bc.pack(a), bc.pack(b), 4096, method=method), ref)


def test_baseline_gemm():
    torch.backends.cuda.matmul.allow_tf32 = False
    g = torch.Generator().manual_seed(0)
    A = torch.randn(100, 77, generator=g).to(DEV)
    B = torch.randn(77, 50, generator=g).to(DEV)
    torch.testing.assert_close(bc.baseline_gemm(A, B), A @ B, rtol=1e-4, atol=1e-4)
    a, b = pm1(33, 257, seed=3).to(DEV), pm1(257, 18, seed=4).to(DEV)
    assert torch.equal(bc.baseline_gemm(a, b), a @ b)


@pytest.mark.parametrize("word_bits", [32, 64])
@pytest.mark.parametrize("R,k", [(1, 1), (5, 63), (3, 64), (9, 130), (70000, 40)])
def test_pack_equals_cpu(word_bits, R, k):
    x = pm1(R, k, seed=R + k)
    expected = K.pack(x, word_bits=word_bits)
    assert torch.equal(bc.pack(x.to(DEV), word_bits=word_bits).cpu(), expected)
    assert torch.equal(bc.pack_cols(x.T.contiguous().to(DEV), word_bits=word_bits).cpu(), expected)


def test_pack_rejects_non_pm1():
    with pytest.raises(ValueError, match="not ±1"):
        bc.pack(torch.tensor([[1.0, 0.5]], device=DEV))


def test_popcount_and_threshold_pack():
    w = K.pack(pm1(7, 150, seed=5))
    assert torch.equal(bc.popcount_rows(w.to(DEV)).cpu(), K.popcount_rows(w).to(torch.int32))
    g = torch.Generator().manual_seed(6)
    M, N = 300, 1000
    acc = torch.randint(-50, 51, (M, N), generator=g, dtype=torch.int32)
    thr = torch.randint(-10, 11, (N,), generator=g, dtype=torch.int32)
    direction = torch.where(torch.rand(N, generator=g) < 0.5, -1, 1).to(torch.int32)
    got = bc.threshold_pack(acc.to(DEV), thr.to(DEV), direction.to(DEV))
    assert torch.equal(got.cpu(), K.threshold_pack(acc, thr, direction))


def test_side_stream_is_ordered():
    a, b = pm1(256, 1000, seed=7), pm1(128, 1000, seed=8)
    ref = cpu_ref(a, b, 1000)
    s = torch.cuda.Stream()
    with torch.cuda.stream(s):
        ag, bg = a.to(DEV, non_blocking=True), b.to(DEV, non_blocking=True)
        out = bc.xnor_gemm_fast(bc.pack(ag), bc.pack(bg), 1000) + 0
    s.synchronize()
    assert torch.equal(out.cpu(), ref)


def test_wrong_device_and_dtype_are_clear_errors():
    with pytest.raises(ValueError, match="on cpu"):
        bc.xnor_gemm_fast(K.pack(pm1(2, 8)), K.pack(pm1(2, 8)).to(DEV), 8)
    with pytest.raises(ValueError, match="int32 or torch.int64"):
        bc.xnor_gemm(pm1(2, 8).to(DEV), pm1(2, 8).to(DEV), 8)


def test_tensor_core_with_precomputed_popcounts():
    if torch.cuda.get_device_capability() < (8, 0):
        pytest.fail("the 1-bit tensor-core kernel needs sm_80+")
    a, b = pm1(70, 600, seed=11), pm1(66, 600, seed=12)
    pa, pb = K.pack(a).to(DEV), K.pack(b).to(DEV)
    counts = (bc.popcount_rows(pa), bc.popcount_rows(pb))
    got = bc.xnor_gemm_fast(pa, pb, 600, method="tensor_core", popcounts=counts)
    assert torch.equal(got.cpu(), cpu_ref(a, b, 600))


# ------------------------------------------------- PackedNet.predict(device="cuda")


@torch.no_grad()
def _calibrate(net: nn.Module, x: torch.Tensor, negative_every: int = 3) -> nn.Module:
    """BN running statistics from train-mode passes (exact means), then some gammas < 0."""
    for m in net.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None
    net.train()
    net(x.float() * (2 / 255) - 1)
    net.eval()
    for m in net.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.weight[::negative_every] *= -1  # flipped compares (direction < 0)
    return net


def _images(n, shape, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, *shape), generator=g, dtype=torch.uint8)


def _check_cuda_equals_simulation(net, x, tmp_path, **export_kw):
    packed = inf.load(inf.export(net, tmp_path / "m.bnn", **export_kw))
    want_scores = inf.simulate_scores(net, x)
    want = inf.simulate(net, x)
    assert torch.equal(want_scores.argmax(1), want)
    for kernel in ("fast", "paper"):
        for first in ("real", "bitplanes"):
            scores = packed.scores(x, device="cuda", first_layer=first, kernel=kernel)
            assert torch.equal(scores, want_scores), (kernel, first)
            # images already on the GPU, odd batch size (several batches, the last partial)
            pred = packed.predict(
                x.to(DEV), device="cuda", first_layer=first, kernel=kernel, batch_size=37
            )
            assert torch.equal(pred.cpu(), want), (kernel, first)


def test_packed_mlp_predict_cuda_equals_simulation(tmp_path):
    """MLP with widths that are not multiples of 32 or 64 and flipped thresholds."""
    torch.manual_seed(0)
    net = bnnlib.mnist_mlp(
        hidden=100, depth=2, in_features=70, num_classes=7, dropout_in=0, dropout_hidden=0
    )
    x = _images(150, (70,), seed=1)
    _calibrate(net, x)
    _check_cuda_equals_simulation(net, x, tmp_path)


def test_packed_convnet_predict_cuda_equals_simulation(tmp_path):
    """Conv -> BN -> MaxPool -> Sign with gamma < 0 (pool of a decreasing map is a min),
    stride 2, zero padding, channel counts not multiples of 64 and more than 64 channels."""
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
    x = _images(120, (1, 12, 12), seed=8)
    _calibrate(net, x, negative_every=2)
    _check_cuda_equals_simulation(net, x, tmp_path, input_shape=(1, 12, 12))


def test_packed_cifar_convnet_predict_cuda_equals_simulation(tmp_path):
    """The paper's ConvNet layout at 1/16 width: conv, max-pool before BN, dense layers."""
    torch.manual_seed(3)
    net = bnnlib.cifar10_convnet(width=1 / 16)
    x = _images(64, (3, 32, 32), seed=10)
    _calibrate(net, x)
    _check_cuda_equals_simulation(net, x, tmp_path)
