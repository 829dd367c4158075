"""The fast training step (bnnlib.train.fast_step, bnnlib.kernels.update): torch's values, bit
for bit, in one pass over memory; torch's AP2 copied exactly; Sign(W) reused safely."""

from __future__ import annotations

import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from bnnlib.kernels import update as K
from bnnlib.nn.binarize import sign
from bnnlib.nn.layers import BinaryLinear, clip_latent_
from bnnlib.nn.losses import pm1_targets, square_hinge
from bnnlib.nn.optim import adamax_step_size, ap2_nonnegative, shift_adamax_
from bnnlib.train import cli as train_cli
from bnnlib.train.fast_linear import XnorProduct
from bnnlib.train.fast_step import FastStep
from bnnlib.train.loop import make_optimizer


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view(torch.int32)


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """The same float32 bits everywhere, NaN matching any NaN (its payload is not compared: a
    NaN gradient stops a run)."""
    nan = a.isnan()
    return torch.equal(nan, b.isnan()) and torch.equal(_bits(a)[~nan], _bits(b)[~nan])


# ------------------------------------------------------------------ AP2


def test_the_table_copies_torchs_ap2_and_shows_where_it_is_not_exact():
    """Every float near a threshold (+-300 around sqrt(2) * 2^e in every binade) and 2 M random
    positive floats, plus 0, subnormals, inf and NaN: the table's AP2 = torch's, bit for bit.
    Torch's AP2 (2^round(log2 x) in float32, ties to even) differs from the exact nearest power
    of two only within a few units in the last place of sqrt(2) * 2^e (inside the kernel's
    window), by one power of two either way."""
    thr = K.ap2_thresholds()
    near = np.concatenate([np.arange(int(t) - 300, int(t) + 300) for t in thr])
    rng = np.random.default_rng(0)
    bits = np.concatenate(
        [near.clip(0, 0x7F7FFFFF), rng.integers(0, 0x7F800000, 2_000_000), [0, 1, 2, 3, 0x7F800000]]
    ).astype(np.uint32)
    x = bits.view(np.float32)
    torch_ap2 = ap2_nonnegative([torch.from_numpy(x)])[0].numpy()
    for exact in (False, None):  # the table alone; the kernel's mix of rule and table
        assert np.array_equal(
            K.ap2_numpy(x, exact=exact).view(np.uint32), torch_ap2.view(np.uint32)
        )
    nan = np.array([np.nan], dtype=np.float32)
    assert np.isnan(K.ap2_numpy(nan)).all()
    assert torch.isnan(ap2_nonnegative([torch.tensor(nan)])[0]).all()
    exact = K.ap2_numpy(x, exact=True)
    normal = (x >= 2.0**-126) & np.isfinite(x)
    differ = x[(exact != torch_ap2) & normal]
    assert 1000 < len(differ) < 20_000  # a few per binade, never far from sqrt(2) * 2^e
    m = differ / np.exp2(np.floor(np.log2(differ.astype(np.float64))))
    assert np.all(np.abs(m - math.sqrt(2)) < K.NEAR * 2.0**-23)
    where = (exact != torch_ap2) & normal
    e_exact = np.log2(exact[where].astype(np.float64))
    e_torch = np.log2(torch_ap2[where].astype(np.float64))  # 2^128 is inf in float32
    e_torch[np.isinf(e_torch)] = 128
    assert set(np.unique(e_exact - e_torch)) == {-1.0, 1.0}  # one power of two off, either way


def test_the_exact_table_is_the_nearest_power_of_two():
    x = np.random.default_rng(1).uniform(2.0**-30, 2.0**10, 100_000).astype(np.float32)
    x64 = x.astype(np.float64)
    lo = np.exp2(np.floor(np.log2(x64)))
    nearest = np.where(x64 / lo >= math.sqrt(2), 2 * lo, lo)  # log2 x >= e + 1/2
    assert np.array_equal(K.ap2_numpy(x, exact=True), nearest.astype(np.float32))


# ------------------------------------------------------------------ the kernel vs torch


@pytest.mark.parametrize("n", [10, 1000, 20_480, 300_007])
@pytest.mark.parametrize("variant", ["paper", "torch7"])
@pytest.mark.parametrize("shift", [True, False])
@pytest.mark.parametrize("clip", [True, False])
def test_adamax_kernel_is_shift_adamax_bit_for_bit(n, variant, shift, clip):
    """Six steps with gradients over seven decades, zeros, +-inf and NaN, against
    shift_adamax_ and clip_latent_: theta, m, v and Sign(theta) bit for bit (NaN as NaN)."""
    g = torch.Generator().manual_seed(n)
    lr, scale = 2.0**-6 * 37.0, 37.0
    p = torch.rand(n, generator=g) * 2 - 1
    m, v = torch.zeros(n), torch.zeros(n)
    p2, m2, v2, s2 = p.clone(), m.clone(), v.clone(), torch.empty(n)
    for t in range(1, 7):
        grad = torch.randn(n, generator=g) * 10 ** (torch.rand(n, generator=g) * 7 - 7)
        if t == 2:
            grad[: n // 10] = 0
        if t == 6 and n > 5:
            grad[:3] = torch.tensor([float("inf"), -float("inf"), float("nan")])
        shift_adamax_([p], [grad], [m], [v], step=t, lr=lr, lr_scale=scale, betas=(0.9, 0.999),
                      eps=2.0**-27, variant=variant, shift=shift)  # fmt: skip
        if clip:
            clip_latent_([p])
        K.adamax_step_(p2, grad, m2, v2, beta1=0.9, beta2=0.999, eps=2.0**-27, clip=clip,
                       alpha=adamax_step_size(t, lr, scale, 0.9, variant, shift),
                       variant=variant, shift=shift, sign_out=s2)  # fmt: skip
        for a, b in ((p, p2), (m, m2), (v, v2)):
            assert _same(a, b)
        assert torch.equal(sign(p)[~p.isnan()], s2[~p.isnan()])


def test_clip_sign_is_clamp_then_sign():
    p = torch.tensor([-3.0, -1.0, -0.0, 0.0, 0.5, 1.0, 7.0, float("nan"), -float("inf")])
    q, s = p.clone(), torch.empty_like(p)
    K.clip_sign_(q, s)
    expect = p.clone()
    clip_latent_([expect])
    assert torch.equal(_bits(q), _bits(expect))
    assert torch.equal(s, sign(expect))
    with pytest.raises(ValueError, match="contiguous float32 CPU"):
        K.clip_sign_(torch.zeros(4, dtype=torch.float64), torch.zeros(4, dtype=torch.float64))


# ------------------------------------------------------------------ Sign(W) given to the layers


def test_a_given_sign_is_used_until_the_weight_changes():
    torch.manual_seed(0)
    layer = BinaryLinear(8, 4, binarize_input=False)
    given = -sign(layer.weight.detach())  # deliberately not Sign(W): shows which one is used
    layer.use_weight_sign(given)
    x = torch.randn(3, 8)
    assert torch.equal(layer(x), x @ given.t())
    with torch.no_grad():
        layer.weight.mul_(1.0)  # any in-place change ends it
    assert torch.equal(layer(x), x @ sign(layer.weight).t())
    layer.use_weight_sign(given)
    layer.double()  # moved to another dtype (or device): Sign(W) is computed again
    assert torch.equal(layer(x.double()), x.double() @ sign(layer.weight).t())
    with pytest.raises(ValueError, match="shape"):
        layer.use_weight_sign(torch.ones(3, 3))


def test_the_gradient_through_a_given_sign_is_the_identity_ste():
    torch.manual_seed(0)
    a, b = BinaryLinear(8, 4, binarize_input=False), BinaryLinear(8, 4, binarize_input=False)
    b.load_state_dict(a.state_dict())
    b.use_weight_sign(sign(b.weight.detach()))
    x = torch.randn(3, 8)
    a(x).square().sum().backward()
    b(x).square().sum().backward()
    assert torch.equal(a.weight.grad, b.weight.grad)


def test_overwriting_a_sign_a_graph_still_needs_is_an_error():
    """The kernel advances the version counters it writes: autograd refuses a stale graph."""
    torch.manual_seed(0)
    layer = BinaryLinear(8, 4, binarize_input=False)
    s = sign(layer.weight.detach())
    layer.use_weight_sign(s)
    out = layer(torch.randn(3, 8, requires_grad=True)).sum()
    K.clip_sign_(layer.weight.data, s)
    with pytest.raises(RuntimeError, match="modified (by an )?inplace"):
        out.backward()


# ------------------------------------------------------------------ the XNOR-popcount product


def _twins(n_in: int, n_out: int) -> tuple[BinaryLinear, BinaryLinear, XnorProduct]:
    """Two copies of one layer with Sign(W) given: the first computes F.linear, the second
    XNOR-popcount."""
    torch.manual_seed(0)
    a, b = (BinaryLinear(n_in, n_out, binarize_input=False) for _ in range(2))
    b.load_state_dict(a.state_dict())
    product = XnorProduct()
    a.use_weight_sign(sign(a.weight.detach()))
    b.use_weight_sign(sign(b.weight.detach()), product)
    return a, b, product


@pytest.mark.parametrize("n_in", [64, 130, 2048])
def test_the_xnor_product_is_f_linear_bit_for_bit(n_in):
    """+-1 inputs (widths a multiple of 64 and not): the same outputs, and with a real-valued
    gradient from above, the same gradients to the input and to the latent weight."""
    a, b, product = _twins(n_in, 96)
    x = sign(torch.randn(37, n_in))
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya, yb = a(xa), b(xb)
    assert product.calls == 1 and _same(ya, yb) and not ya.eq(0).all()
    up = torch.randn(ya.shape)
    ya.backward(up)
    yb.backward(up)
    assert _same(xa.grad, xb.grad) and _same(a.weight.grad, b.weight.grad)
    with torch.no_grad():
        assert _same(a.eval()(x), b.eval()(x)) and product.calls == 2


def test_the_xnor_product_declines_what_is_not_pm1():
    """Pixels, a dropout's 0 and 2, a NaN: F.linear computes them (the same numbers as the
    layer without the product)."""
    a, b, product = _twins(100, 8)
    dropped = sign(torch.randn(5, 100)) * 2 * (torch.rand(5, 100) < 0.5)
    for x in (torch.rand(5, 100), dropped, torch.full((5, 100), math.nan)):
        assert _same(a(x), b(x))
    assert product.calls == 0 and product.declined == 3


# ------------------------------------------------------------------ 200 steps, two recipes


def _train_steps(cfg, fast: bool, steps: int, batch: int):
    torch.manual_seed(cfg.seed)
    net = cfg.build_model((1, 28, 28), 10)
    opt = make_optimizer(net, cfg.optimizer, cfg.lr_start, cfg.glorot_scale)
    stepper = FastStep(opt, net) if fast else None
    g = torch.Generator().manual_seed(1)
    torch.manual_seed(2)  # stochastic activations
    net.train()
    for _ in range(steps):
        x = torch.rand(batch, 1, 28, 28, generator=g)
        t = pm1_targets(torch.randint(0, 10, (batch,), generator=g), 10)
        loss = square_hinge(net(x), t)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        stepper.step() if fast else opt.step()
    return net, opt, stepper


@pytest.mark.slow
@pytest.mark.parametrize(
    "argv",
    [
        ["--preset", "torch7"],  # 3 x 2048, shift BN, shift AdaMax (Torch7), stochastic Sign
        ["--model", "mnist_mlp", "--recipe", "paper", "--hidden", "512", "--epochs", "1000"],
    ],
    ids=["torch7-preset", "theano-recipe-512"],
)
def test_200_steps_of_the_fast_path_equal_the_plain_path_bit_for_bit(argv):
    """The Torch7 preset at its own width and the Theano recipe (Adam, ordinary batch norm,
    dropout; 512 hidden units to keep the test short): 200 steps of each path from the same
    seed end with the same parameters, optimizer states and batch-norm statistics. The Torch7
    preset's hidden and output layers (+-1 inputs) took the XNOR-popcount product at every step
    after the first, its first layer (pixels) never; the Theano recipe's dropout keeps it off."""
    cfg = train_cli.config_from_argv(argv)
    nets = [_train_steps(cfg, fast, steps=200, batch=cfg.batch_size) for fast in (False, True)]
    (plain, plain_opt, _), (fast, fast_opt, stepper) = nets
    calls = [p.calls for p in stepper.products.values()]
    assert calls == ([0, 199, 199, 199] if argv[1] == "torch7" else [0, 0, 0, 0])
    for (k, a), b in zip(plain.state_dict().items(), fast.state_dict().values(), strict=True):
        assert torch.equal(_bits(a) if a.is_floating_point() else a,
                           _bits(b) if b.is_floating_point() else b), k  # fmt: skip
    for sa, sb in zip(plain_opt.state.values(), fast_opt.state.values(), strict=True):
        for key in sa:
            a, b = sa[key], sb[key]
            assert torch.equal(torch.as_tensor(a), torch.as_tensor(b)), key


def test_the_kernels_leave_torchs_thread_count_alone():
    """numba's OpenMP threads, once started, set the shared OpenMP runtime's thread count to
    numba's (here 2): torch, told 1, kept running its products on 1 thread (the products round
    differently on 2, so a run's first step and the rest would not match)."""
    code = (
        "import torch; from bnnlib.kernels import update; "
        "p = torch.zeros(1 << 18); update.clip_sign_(p, torch.zeros(1 << 18)); "
        "print(torch.get_num_threads())"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "2"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["1"]


def test_where_torchs_ap2_cannot_be_copied_the_step_falls_back_to_torch(monkeypatch):
    """An AP2TableError (torch's AP2 not one step near sqrt(2) * 2^e on some CPU) is a warning
    and torch's operations, with the same parameters as opt.step()."""
    cfg = train_cli.config_from_argv(["--preset", "torch7", "--hidden", "64"])

    def refuse(exact=False):
        raise K.AP2TableError("not one step here")

    monkeypatch.setattr(K, "ap2_thresholds", refuse)
    with pytest.warns(RuntimeWarning, match="not one step here"):
        (fast, _, _) = _train_steps(cfg, True, steps=3, batch=100)
    (plain, _, _) = _train_steps(cfg, False, steps=3, batch=100)
    for a, b in zip(plain.state_dict().values(), fast.state_dict().values(), strict=True):
        assert torch.equal(a, b)
