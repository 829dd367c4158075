"""Tests of bnnlib.nn.optim: Glorot LR scale, clipping, Adam, shift-based AdaMax, LR schedule.

Oracles: ``torch.optim.Adam`` with the scaled learning rates (then clamp), Algorithm 4
(shift-based AdaMax) computed by hand with a Python AP2, the Glorot scales written out
as numbers, and the exponential schedule lr_start * (lr_end / lr_start)^(t / T).
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from bnnlib.nn import optim
from bnnlib.nn.layers import (
    BinaryConv2d,
    BinaryLinear,
    SignActivation,
    UnclippedWeightError,
    check_clipping,
)
from bnnlib.nn.optim import (
    Adam,
    ShiftAdaMax,
    clip_binary_weights,
    exponential_lr,
    glorot_lr_scale,
    lr_at_epoch,
    param_groups,
    shift_adamax_,
    step_lr,
    step_lr_at_epoch,
)


def _net(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(
        BinaryLinear(20, 30, binarize_input=False),
        nn.BatchNorm1d(30),
        SignActivation(),
        BinaryLinear(30, 10, binarize_input=False),
        nn.BatchNorm1d(10),
    ).double()


def _binary_weights(net):
    return [net[0].weight, net[3].weight]


def _bn_params(net):
    return [net[1].weight, net[1].bias, net[4].weight, net[4].bias]


def _set_grads(net, seed):
    g = torch.Generator().manual_seed(seed)
    for p in net.parameters():
        p.grad = torch.randn(p.shape, generator=g, dtype=p.dtype)


def _naive_ap2(t: torch.Tensor) -> torch.Tensor:
    vals = [
        0.0 if v == 0 else math.copysign(2.0 ** round(math.log2(abs(v))), v)
        for v in t.flatten().tolist()
    ]
    return torch.tensor(vals, dtype=t.dtype).view_as(t)


# --- Glorot LR scale ---------------------------------------------------------------------------


def test_glorot_scale_values():
    # 1 / sqrt(1.5 / (784 + 4096)) = sqrt(4880 / 1.5)
    assert glorot_lr_scale(nn.Linear(784, 4096)) == pytest.approx(57.03799902988649, rel=1e-12)
    assert glorot_lr_scale(BinaryLinear(784, 4096)) == pytest.approx(57.03799902988649, rel=1e-12)
    # Hidden 4096 -> 4096: sqrt(8192 / 1.5)
    assert glorot_lr_scale(BinaryLinear(4096, 4096)) == pytest.approx(73.90083445627211, rel=1e-12)
    # Conv 3x3, 128 -> 256: fans times the kernel area, sqrt((1152 + 2304) / 1.5) = 48 exactly.
    assert glorot_lr_scale(nn.Conv2d(128, 256, 3)) == pytest.approx(48.0, rel=1e-12)
    assert glorot_lr_scale(BinaryConv2d(128, 256, 3)) == pytest.approx(48.0, rel=1e-12)
    # Without the kernel area it would be sqrt(384 / 1.5) = 16: the area matters.
    assert glorot_lr_scale(nn.Conv2d(128, 256, 1)) == pytest.approx(16.0, rel=1e-12)


def test_param_groups_scaled_lr_and_clip_flags():
    net = _net()
    lr = 3e-3
    groups = param_groups(net, lr)
    assert len(groups) == 3
    for group, layer, (n_in, n_out) in zip(
        groups[:2], (net[0], net[3]), ((20, 30), (30, 10)), strict=True
    ):
        scale = 1 / math.sqrt(1.5 / (n_in + n_out))
        assert group["params"] == [layer.weight]
        assert group["clip"] is True
        assert group["lr_scale"] == pytest.approx(scale, rel=1e-12)
        assert group["lr"] == pytest.approx(lr * scale, rel=1e-12)
    rest = groups[2]
    assert rest["clip"] is False and rest["lr"] == lr and rest["lr_scale"] == 1.0
    assert {id(p) for p in rest["params"]} == {id(p) for p in _bn_params(net)}
    # Every parameter appears exactly once.
    ids = [id(p) for g in groups for p in g["params"]]
    assert sorted(ids) == sorted(id(p) for p in net.parameters())


def test_param_groups_without_glorot_scale():
    groups = param_groups(_net(), 0.01, glorot_scale=False)
    assert [g["lr"] for g in groups] == [0.01, 0.01, 0.01]
    assert [g["clip"] for g in groups] == [True, True, False]


def test_param_groups_float_net_has_no_clipped_group():
    net = nn.Sequential(nn.Linear(4, 3, bias=False), nn.BatchNorm1d(3))
    groups = param_groups(net, 0.1)
    assert len(groups) == 1 and groups[0]["clip"] is False and groups[0]["lr"] == 0.1


def test_binary_layer_bias_is_not_clipped():
    net = nn.Sequential(BinaryLinear(4, 3, bias=True))
    groups = param_groups(net, 0.1)
    assert groups[0]["params"] == [net[0].weight] and groups[0]["clip"]
    assert groups[1]["params"] == [net[0].bias] and not groups[1]["clip"]


# --- Adam --------------------------------------------------------------------------------------


def test_adam_matches_torch_adam_then_clamp():
    """Three steps of bnnlib Adam == torch.optim.Adam with lr * scale, then clamp binary weights."""
    lr = 1e-2
    net, ref = _net(), _net()
    opt = Adam(net, lr=lr, betas=(0.8, 0.99), eps=1e-7)
    ref_groups = [
        {"params": [ref[0].weight], "lr": lr / math.sqrt(1.5 / 50)},
        {"params": [ref[3].weight], "lr": lr / math.sqrt(1.5 / 40)},
        {"params": _bn_params(ref), "lr": lr},
    ]
    ref_opt = torch.optim.Adam(ref_groups, betas=(0.8, 0.99), eps=1e-7)
    for step in range(3):
        _set_grads(net, step)
        _set_grads(ref, step)
        opt.step()
        ref_opt.step()
        with torch.no_grad():
            for w in _binary_weights(ref):
                w.clamp_(-1, 1)
    for p, q in zip(net.parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-12)
    # The batch-norm parameters moved (from 1 and 0): the comparison is not vacuous.
    assert not torch.equal(net[1].weight, torch.ones_like(net[1].weight))
    assert not torch.equal(net[1].bias, torch.zeros_like(net[1].bias))
    # The large scaled steps really pushed some latent weights to the clip bound.
    assert any(bool((w.abs() == 1).any()) for w in _binary_weights(net))


def _push_beyond_one(net):
    """Latent weights at ±0.99, gradients pushing them outward; BN params at 0.99, pushed up."""
    with torch.no_grad():
        for w in _binary_weights(net):
            w.copy_(torch.where(torch.arange(w.numel()).view_as(w) % 2 == 0, 0.99, -0.99))
            w.grad = -torch.sign(w) * 0.5  # descent moves w along sign(w): outward
        for p in _bn_params(net):
            p.fill_(0.99)
            p.grad = torch.full_like(p, -0.5)


@pytest.mark.parametrize("opt_cls", [Adam, ShiftAdaMax])
def test_clipping_after_step(opt_cls):
    net = _net()
    opt = opt_cls(net, lr=0.05)
    _push_beyond_one(net)
    opt.step()
    for w in _binary_weights(net):
        assert bool((w.abs() <= 1).all())
        assert bool((w.abs() == 1).all()), "the update pushed every weight beyond 1"
    # Batch-norm parameters are not binary: not clipped.
    for p in _bn_params(net):
        assert bool((p > 1.0).all())


def test_clip_binary_weights_only_marked_groups():
    a = torch.tensor([2.0, -3.0, 0.5])
    b = torch.tensor([2.0, -3.0, 0.5])
    clip_binary_weights([{"params": [a], "clip": True}, {"params": [b], "clip": False}])
    assert a.tolist() == [1.0, -1.0, 0.5] and b.tolist() == [2.0, -3.0, 0.5]


def _train_steps(net, opt, steps=5, seed=0):
    """A few steps of square loss on random data; the forward passes check clipping."""
    g = torch.Generator().manual_seed(seed)
    net.train()
    for _ in range(steps):
        x = torch.randn(16, 20, generator=g, dtype=torch.float64)
        opt.zero_grad()
        net(x).square().mean().backward()
        opt.step()


@pytest.mark.parametrize(
    "make_opt",
    [lambda net: Adam(net, lr=0.5), lambda net: ShiftAdaMax(net, lr=0.5)],
    ids=["adam", "shift_adamax"],
)
def test_optimizers_keep_the_identity_ste_valid(make_opt, monkeypatch):
    """The coupling of Algorithm 1: the optimizers clip, so the layers' identity STE (checked
    with check_clip at every training forward) never sees |W| > 1, even with huge steps."""
    net = check_clipping(_net())
    opt = make_opt(net)
    _train_steps(net, opt)
    assert any(bool((w.abs() == 1).any()) for w in _binary_weights(net))  # the bound was hit
    # Without the optimizers' clipping the same training is caught at the next forward.
    monkeypatch.setattr(optim, "clip_binary_weights", lambda groups: None)
    net = check_clipping(_net())
    with pytest.raises(UnclippedWeightError):
        _train_steps(net, make_opt(net))


def test_plain_torch_optimizer_is_caught_by_the_clip_check():
    """torch.optim.SGD does not clip: a latent weight beyond 1 reaches the identity STE."""
    net = _net()
    opt = torch.optim.SGD(net.parameters(), lr=1.0)
    _set_grads(net, 0)
    opt.step()
    assert any(bool((w.abs() > 1).any()) for w in _binary_weights(net))
    _train_steps(net, opt, steps=1)  # unnoticed without the check
    check_clipping(net)
    with pytest.raises(UnclippedWeightError, match="clip"):
        _train_steps(net, opt, steps=1)


# --- Shift-based AdaMax ------------------------------------------------------------------------


def test_shift_adamax_two_steps_by_hand():
    """Algorithm 4: m = b1 m + (1-b1) g; v = max(b2 v, |g|);
    theta -= AP2(lr_group / (1 - b1^t)) * m / AP2(v + eps)."""
    lr, (b1, b2), eps = 2.0**-6, (0.9, 0.999), 2.0**-27
    net = _net()
    opt = ShiftAdaMax(net, lr=lr)
    assert opt.defaults["eps"] == eps and opt.defaults["betas"] == (b1, b2)
    with torch.no_grad():  # keep weights small so clipping does not interfere
        for w in _binary_weights(net):
            w.mul_(0.01)
    params = list(net.parameters())
    theta = [p.detach().clone() for p in params]
    lr_of = {}
    for w, (n_in, n_out) in zip(_binary_weights(net), ((20, 30), (30, 10)), strict=True):
        lr_of[id(w)] = lr / math.sqrt(1.5 / (n_in + n_out))
    m = [torch.zeros_like(p) for p in params]
    v = [torch.zeros_like(p) for p in params]
    for t in (1, 2):
        _set_grads(net, 10 + t)
        for i, p in enumerate(params):
            g = p.grad.detach()
            m[i] = b1 * m[i] + (1 - b1) * g
            v[i] = torch.maximum(b2 * v[i], g.abs())
            group_lr = lr_of.get(id(p), lr)
            step = 2.0 ** round(math.log2(group_lr / (1 - b1**t)))
            theta[i] = theta[i] - step * m[i] / _naive_ap2(v[i] + eps)
        opt.step()
        for p, expect in zip(params, theta, strict=True):
            torch.testing.assert_close(p.detach(), expect, rtol=1e-12, atol=1e-12)
    for w in _binary_weights(net):
        assert bool((w.abs() <= 1).all())


@pytest.mark.parametrize("shift", [True, False], ids=["shift", "no-shift"])
def test_shift_adamax_torch7_variant_three_steps_by_hand(shift):
    """adaMax_binary_clip_shift.lua: v = AP2(max(b2 v, |g|)) + eps, stored; the step
    AP2(lr / (1 - b1^t)) times the Glorot scale, which also covers batch-norm gamma.
    ``shift=False`` (the optimizer ``adamax_torch7``, the ablation E2 of results/protocol.md):
    the same with no AP2 anywhere."""
    lr, (b1, b2), eps = 2.0**-6, (0.9, 0.999), 2.0**-27
    net = _net()
    opt = ShiftAdaMax(net, lr=lr, glorot_scale="torch7", variant="torch7", shift=shift)
    rounded = _naive_ap2 if shift else (lambda x: x)
    with torch.no_grad():
        for w in _binary_weights(net):
            w.mul_(0.001)
    params = list(net.parameters())
    fans = zip(_binary_weights(net), (50, 40), strict=True)
    scale = {id(w): 1 / math.sqrt(1.5 / n) for w, n in fans}
    scale |= {id(net[1].weight): 1 / math.sqrt(1.5 / 30), id(net[4].weight): 1 / math.sqrt(0.15)}
    theta = [p.detach().clone() for p in params]
    m = [torch.zeros_like(p) for p in params]
    v = [torch.zeros_like(p) for p in params]
    for t in (1, 2, 3):
        _set_grads(net, 20 + t)
        for i, p in enumerate(params):
            g = p.grad.detach()
            m[i] = b1 * m[i] + (1 - b1) * g
            v[i] = rounded(torch.maximum(b2 * v[i], g.abs())) + eps
            step = lr / (1 - b1**t)
            step = 2.0 ** round(math.log2(step)) if shift else step
            theta[i] = theta[i] - step * scale.get(id(p), 1.0) * m[i] / v[i]
            if p is net[0].weight or p is net[3].weight:
                theta[i] = theta[i].clamp(-1, 1)
        opt.step()
        for p, expect in zip(params, theta, strict=True):
            torch.testing.assert_close(p.detach(), expect, rtol=1e-12, atol=1e-12)
    # Beta keeps the base LR; the BN gamma groups are not clipped.
    groups = {id(g["params"][0]): g for g in opt.param_groups if len(g["params"]) == 1}
    assert groups[id(net[1].weight)]["clip"] is False
    assert all(g["shift"] is shift for g in opt.param_groups)


def test_shift_adamax_rejects_unknown_variant_and_glorot_mode():
    with pytest.raises(ValueError, match="unknown variant 'lua'"):
        ShiftAdaMax(_net(), variant="lua")
    t = torch.zeros(2)
    kw = {"step": 1, "lr": 1.0, "lr_scale": 1.0, "betas": (0.9, 0.9), "eps": 1.0}
    with pytest.raises(ValueError, match="unknown variant 'lua'"):
        shift_adamax_([t], [t], [t], [t], variant="lua", **kw)
    with pytest.raises(ValueError, match="glorot_scale must be one of"):
        ShiftAdaMax(_net(), glorot_scale="theano")


@pytest.mark.parametrize("variant", ["paper", "torch7"])
def test_shift_adamax_foreach_step_is_bit_identical(variant):
    """step(foreach=True) (one shift_adamax_ call per group and step count) gives the
    parameters and states of step() (one call per parameter), bit for bit, also when
    some parameters missed a step."""
    nets = [_net(), _net()]
    opts = [ShiftAdaMax(n, lr=2.0**-4, glorot_scale="torch7", variant=variant) for n in nets]
    for t in range(4):
        for net in nets:
            _set_grads(net, 30 + t)
            if t == 0:
                net[1].bias.grad = None  # behind by one step from then on
        opts[0].step()
        opts[1].step(foreach=True)
        for p, q in zip(nets[0].parameters(), nets[1].parameters(), strict=True):
            assert torch.equal(p, q)
            sa, sb = opts[0].state.get(p, {}), opts[1].state.get(q, {})
            assert sa.keys() == sb.keys()
            if sa:
                assert sa["step"] == sb["step"]
                assert torch.equal(sa["exp_avg"], sb["exp_avg"])
                assert torch.equal(sa["exp_inf"], sb["exp_inf"])
    assert opts[0].state[nets[0][1].bias]["step"] == 3
    assert opts[0].state[nets[0][1].weight]["step"] == 4


def test_shift_adamax_update_is_power_of_two_times_m_ratio():
    """One step on a single parameter: delta / m is a (signed) power of two everywhere."""
    net = nn.Sequential(nn.BatchNorm1d(50)).double()
    opt = ShiftAdaMax(net, lr=0.01)
    _set_grads(net, 3)
    before = net[0].weight.detach().clone()
    opt.step()
    delta = before - net[0].weight.detach()
    m = 0.1 * net[0].weight.grad
    ratio = delta / m
    e = torch.log2(ratio)
    assert bool((ratio > 0).all())
    assert torch.allclose(e, torch.round(e), atol=1e-9)


def test_shift_adamax_skips_params_without_grad():
    net = _net()
    opt = ShiftAdaMax(net)
    before = [p.detach().clone() for p in net.parameters()]
    opt.step()
    assert all(torch.equal(a, p) for a, p in zip(before, net.parameters(), strict=True))


def test_shift_adamax_closure_returns_loss():
    net = _net()
    opt = ShiftAdaMax(net)
    x = torch.randn(8, 20, dtype=torch.float64, generator=torch.Generator().manual_seed(0))

    def closure():
        opt.zero_grad()
        loss = net(x).square().mean()
        loss.backward()
        return loss

    loss = opt.step(closure)
    assert loss is not None and float(loss.detach()) > 0
    assert net[0].weight.grad is not None


# --- learning-rate schedule --------------------------------------------------------------------


def test_exponential_lr_reaches_lr_end_and_keeps_group_scale():
    lr_start, lr_end, epochs = 3e-3, 3e-7, 20
    net = _net()
    opt = Adam(net, lr=lr_start)
    sched = exponential_lr(opt, lr_start, lr_end, epochs)
    scales = [g["lr_scale"] for g in opt.param_groups]
    for epoch in range(1, epochs + 1):
        opt.step()  # no grads: a no-op, keeps the scheduler's call order
        sched.step()
        base = opt.param_groups[-1]["lr"]
        assert base == pytest.approx(lr_at_epoch(epoch, lr_start, lr_end, epochs), rel=1e-9)
        for g, s in zip(opt.param_groups, scales, strict=True):
            assert g["lr"] == pytest.approx(base * s, rel=1e-9)
    assert opt.param_groups[-1]["lr"] == pytest.approx(lr_end, rel=1e-9)
    assert opt.param_groups[0]["lr"] == pytest.approx(lr_end / math.sqrt(1.5 / 50), rel=1e-9)


def test_lr_at_epoch_formula():
    assert lr_at_epoch(0, 3e-3, 3e-7, 1000) == pytest.approx(3e-3, rel=1e-12)
    assert lr_at_epoch(1000, 3e-3, 3e-7, 1000) == pytest.approx(3e-7, rel=1e-12)
    # Half way in log space: the geometric mean.
    assert lr_at_epoch(500, 3e-3, 3e-7, 1000) == pytest.approx(3e-5, rel=1e-12)
    assert lr_at_epoch(1, 1e-3, 1e-6, 200) == pytest.approx(1e-3 * 1e-3 ** (1 / 200), rel=1e-12)


@pytest.mark.parametrize("args", [(0.0, 1e-7, 10), (1e-3, 0.0, 10), (1e-3, 1e-7, 0)])
def test_exponential_lr_rejects_bad_arguments(args):
    opt = Adam(_net(), lr=1e-3)
    with pytest.raises(ValueError, match="exponential_lr"):
        exponential_lr(opt, *args)


def test_step_lr_halves_every_20_epochs_like_torch7():
    # Torch7 Main_BinaryNet_MNIST: `if epoch % 20 == 0 then LR = LR * 0.5` after epoch 20, 40...
    torch.manual_seed(0)
    opt = ShiftAdaMax(_net(), lr=2.0**-6)
    sched = step_lr(opt, every=20)
    seen = []
    for epoch in range(61):
        opt.step()  # no grads: a no-op, keeps the scheduler's call order
        seen.append(opt.param_groups[-1]["lr"])
        assert seen[-1] == step_lr_at_epoch(epoch, 2.0**-6, 20)
        sched.step()
    assert seen[0] == seen[19] == 2.0**-6 and seen[20] == seen[39] == 2.0**-7
    assert seen[40] == 2.0**-8 and seen[60] == 2.0**-9
    # The per-layer scale is kept: every group moves by the same factor.
    for g in opt.param_groups:
        assert g["lr"] == pytest.approx(g["lr_scale"] * 2.0**-9, rel=1e-12)


@pytest.mark.parametrize("every,factor", [(0, 0.5), (20, 0.0), (20, 1.5)])
def test_step_lr_rejects_bad_arguments(every, factor):
    opt = ShiftAdaMax(_net())
    with pytest.raises(ValueError, match="step_lr"):
        step_lr(opt, every, factor)
