"""bnnlib.nn.layers: binary layers with latent weights (paper Section 1.2-1.5, Algorithm 1).

Oracles: ``F.linear`` / ``F.conv2d`` and float ``nn.Linear`` / ``nn.Conv2d`` evaluated at the
binarized weights, with Sign written out as ``torch.where(w >= 0, 1, -1)``. Products of
±1 (or 8-bit integer) operands are integers, so forward results are compared exactly.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bnnlib.nn.binarize import stochastic_sign
from bnnlib.nn.layers import (
    WEIGHT_BOUND,
    BinaryConv2d,
    BinaryLinear,
    SignActivation,
    UnclippedWeightError,
    check_clipping,
    clip_latent_,
    is_binary_layer,
)
from bnnlib.nn.ste import ste_sign


def _sgn(t: torch.Tensor) -> torch.Tensor:
    """Reference Sign (paper Eq. 1), independent of bnnlib.nn.binarize."""
    return torch.where(t >= 0, 1.0, -1.0).to(t.dtype)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _real_input(shape, seed):
    """Reals in about [-2.5, 2.5], including exact 0, ±1 and values beyond ±1."""
    x = torch.randn(shape, generator=_gen(seed)) * 1.5
    flat = x.view(-1)
    flat[:5] = torch.tensor([0.0, 1.0, -1.0, 1.5, -3.0])
    return x


def _pixels(shape, seed):
    """Integer-valued inputs (8-bit pixels), so the first layer's sums are exact in float32."""
    return torch.randint(0, 256, shape, generator=_gen(seed)).float()


# --- BinaryLinear ------------------------------------------------------------------------------


def test_binary_linear_forward_binarized_input_exact():
    torch.manual_seed(0)
    layer = BinaryLinear(300, 17)  # binarize_input=True by default
    assert layer.binarize_input is True
    x = _real_input((9, 300), 1)
    out = layer(x)
    ref = F.linear(_sgn(x), _sgn(layer.weight.detach()))
    assert torch.equal(out, ref)
    # The reference is integer-valued with the parity of the fan-in: really ±1 products.
    assert torch.equal(out, out.round()) and bool((out.remainder(2) == 0).all())


def test_binary_linear_forward_real_input_exact():
    torch.manual_seed(0)
    layer = BinaryLinear(784, 12, binarize_input=False)
    x = _pixels((5, 784), 2)
    out = layer(x)
    ref = (x.double() @ _sgn(layer.weight.detach()).double().T).float()
    assert torch.equal(out, ref)
    # binarize_input=True on the same input gives a different result.
    layer.binarize_input = True
    assert not torch.equal(layer(x), out)
    assert torch.equal(layer(x), F.linear(_sgn(x), _sgn(layer.weight.detach())))


def test_binary_linear_bias_added():
    torch.manual_seed(0)
    layer = BinaryLinear(8, 3, bias=True)
    assert torch.equal(layer.bias.detach(), torch.zeros(3))  # initialised to zero
    with torch.no_grad():
        layer.bias.copy_(torch.tensor([0.5, -1.0, 2.0]))
    x = _real_input((4, 8), 3)
    ref = F.linear(_sgn(x), _sgn(layer.weight.detach()), layer.bias.detach())
    assert torch.equal(layer(x), ref)


def test_latent_weights_initialised_in_unit_interval_and_untouched_by_forward():
    torch.manual_seed(0)
    layer = BinaryLinear(64, 64)
    w = layer.weight.detach().clone()
    assert bool((w.abs() <= 1).all())
    assert w.abs().max() > 0.95 and w.std() > 0.5  # U(-1, 1), not a small-scale init
    layer(_real_input((2, 64), 4))
    assert torch.equal(layer.weight.detach(), w)
    assert layer.bias is None


@pytest.mark.parametrize("binarize_input", [True, False])
def test_binary_linear_gradients(binarize_input):
    """grad W = float layer's grad at W_b (identity STE); grad x cancelled where |x| > 1."""
    torch.manual_seed(0)
    layer = BinaryLinear(40, 6, binarize_input=binarize_input).double()
    x = _real_input((7, 40), 5).double().requires_grad_(True)
    up = torch.randn(7, 6, generator=_gen(6), dtype=torch.float64)
    layer(x).backward(up)

    wb = _sgn(layer.weight.detach()).requires_grad_(True)
    xf = x.detach().clone().requires_grad_(True)
    x_in = _sgn(xf).detach() if binarize_input else xf
    F.linear(x_in, wb).backward(up)
    torch.testing.assert_close(layer.weight.grad, wb.grad, rtol=1e-12, atol=1e-12)

    dx_float = up @ wb.detach()  # gradient w.r.t. the layer's (binarized) input
    if binarize_input:
        expected = dx_float * (x.detach().abs() <= 1)
        # Exactly ±1 (flat positions 1, 2) keeps its gradient (the paper's 1{|x| <= 1});
        # 1.5 and -3 (positions 3, 4) are cancelled.
        assert bool((x.grad.view(-1)[1:3] != 0).all())
        assert bool((x.grad.view(-1)[3:5] == 0).all())
    else:
        expected = dx_float
    torch.testing.assert_close(x.grad, expected, rtol=1e-12, atol=1e-12)


# --- BinaryConv2d ------------------------------------------------------------------------------


@pytest.mark.parametrize("stride,padding", [(1, 0), (1, 1), (2, 1)])
def test_binary_conv_forward_exact(stride, padding):
    torch.manual_seed(0)
    conv = BinaryConv2d(3, 5, 3, stride=stride, padding=padding)
    x = _real_input((2, 3, 8, 8), 7)
    ref = F.conv2d(_sgn(x), _sgn(conv.weight.detach()), stride=stride, padding=padding)
    out = conv(x)
    assert out.shape == ref.shape
    assert torch.equal(out, ref)


def test_binary_conv_forward_real_input_exact():
    torch.manual_seed(0)
    conv = BinaryConv2d(3, 4, 3, padding=1, binarize_input=False)
    x = _pixels((2, 3, 6, 6), 8)
    ref = F.conv2d(x.double(), _sgn(conv.weight.detach()).double(), padding=1).float()
    assert torch.equal(conv(x), ref)


def test_binary_conv_gradients():
    torch.manual_seed(0)
    conv = BinaryConv2d(2, 3, 3, padding=1).double()
    x = _real_input((2, 2, 5, 5), 9).double().requires_grad_(True)
    up = torch.randn(2, 3, 5, 5, generator=_gen(10), dtype=torch.float64)
    conv(x).backward(up)

    twin = nn.Conv2d(2, 3, 3, padding=1, bias=False).double()
    with torch.no_grad():
        twin.weight.copy_(_sgn(conv.weight))
    xb = _sgn(x.detach()).requires_grad_(True)
    twin(xb).backward(up)
    torch.testing.assert_close(conv.weight.grad, twin.weight.grad, rtol=1e-12, atol=1e-12)
    expected = xb.grad * (x.detach().abs() <= 1)
    torch.testing.assert_close(x.grad, expected, rtol=1e-12, atol=1e-12)
    assert bool((x.grad[x.detach().abs() > 1] == 0).all())


# --- stochastic binarization: training only ----------------------------------------------------


@pytest.mark.parametrize("kind", ["linear", "conv"])
def test_stochastic_only_in_training(kind):
    torch.manual_seed(0)
    both = {"stochastic_weights": True, "stochastic_input": True}
    if kind == "linear":
        layer = BinaryLinear(50, 20, **both)
    else:
        layer = BinaryConv2d(3, 4, 3, **both)
    shape = (4, 50) if isinstance(layer, BinaryLinear) else (2, 3, 6, 6)
    x = torch.rand(shape, generator=_gen(11)) * 1.6 - 0.8  # inside (-1, 1): truly random bits
    ref_fn = F.linear if isinstance(layer, BinaryLinear) else F.conv2d
    det = ref_fn(_sgn(x), _sgn(layer.weight.detach()))

    layer.train()
    a, b = layer(x), layer(x)
    assert not torch.equal(a, b), "training draws should differ"
    assert not torch.equal(a, det)
    torch.manual_seed(123)
    c = layer(x)
    torch.manual_seed(123)
    assert torch.equal(layer(x), c), "draws follow the global seed"

    layer.eval()
    assert torch.equal(layer(x), det)
    assert torch.equal(layer(x), det)


@pytest.mark.parametrize("which", ["weights", "input"])
def test_stochastic_weights_or_input_alone(which):
    """Only the chosen operand is drawn; the other is Sign of it, exactly."""
    torch.manual_seed(0)
    layer = BinaryLinear(50, 20, **{f"stochastic_{which}": True})
    x = torch.rand((4, 50), generator=_gen(12)) * 1.6 - 0.8
    xb, wb = _sgn(x), _sgn(layer.weight.detach())
    layer.train()
    # Recover the operand drawn: solve out = x_b @ W_b^T for the stochastic side.
    # With a fixed seed the draw is reproducible, so redo it by hand and compare.
    torch.manual_seed(5)
    out = layer(x)
    torch.manual_seed(5)
    drawn = stochastic_sign(layer.weight.detach() if which == "weights" else x)
    ref = F.linear(xb, drawn) if which == "weights" else F.linear(drawn, wb)
    assert torch.equal(out, ref)
    assert not torch.equal(out, F.linear(xb, wb))
    layer.eval()
    assert torch.equal(layer(x), F.linear(xb, wb))


@pytest.mark.parametrize("cls,args", [(BinaryLinear, (4, 3)), (BinaryConv2d, (1, 2, 3))])
def test_one_way_to_say_what_is_stochastic(cls, args):
    """Only stochastic_weights and stochastic_input: no ``stochastic`` shorthand or property."""
    with pytest.raises(TypeError, match="stochastic"):
        cls(*args, stochastic=True)
    layer = cls(*args, stochastic_weights=True)
    assert layer.stochastic_weights and not layer.stochastic_input
    assert not hasattr(layer, "stochastic")


def test_deterministic_layer_same_in_train_and_eval():
    torch.manual_seed(0)
    layer = BinaryLinear(30, 5)
    x = _real_input((3, 30), 12)
    layer.train()
    a = layer(x)
    layer.eval()
    assert torch.equal(a, layer(x))


# --- clipping: what makes the weights' identity STE the paper's (Section 1.3, Algorithm 1) ---


def test_identity_ste_of_clipped_weights_is_the_papers_estimator():
    """For |W| <= 1 (the clipped range, ±1 included) g * 1{|W| <= 1} = g: the layer's weight
    gradient equals the one through the paper's hardtanh STE."""
    torch.manual_seed(0)
    layer = BinaryLinear(40, 6, binarize_input=False).double()
    with torch.no_grad():
        layer.weight.view(-1)[:4] = torch.tensor([1.0, -1.0, 0.0, -0.0])
    x = _real_input((7, 40), 13).double()
    up = torch.randn(7, 6, generator=_gen(14), dtype=torch.float64)
    layer(x).backward(up)
    w = layer.weight.detach().clone().requires_grad_(True)
    F.linear(x, ste_sign(w, estimator="hardtanh")).backward(up)
    assert torch.equal(layer.weight.grad, w.grad)
    assert bool((layer.weight.grad != 0).any())


@pytest.mark.parametrize("kind", ["linear", "conv"])
def test_layer_owns_its_clipping(kind):
    torch.manual_seed(0)
    layer = BinaryLinear(5, 4) if kind == "linear" else BinaryConv2d(2, 3, 3)
    with torch.no_grad():
        layer.weight.mul_(3)
    inside = layer.weight.detach().abs() <= 1
    expected = layer.weight.detach().clamp(-1, 1)
    assert not bool(inside.all())
    assert layer.clip_() is layer
    assert torch.equal(layer.weight.detach(), expected)
    assert bool((layer.weight.detach().abs() <= WEIGHT_BOUND).all()) and WEIGHT_BOUND == 1.0


def test_clip_latent_clamps_every_tensor_in_place():
    a = torch.tensor([2.0, -3.0, 0.5, 1.0, -1.0, float("nan")])
    b = torch.tensor([[-1.5, 0.25]])
    clip_latent_([a, b])
    assert a[:5].tolist() == [1.0, -1.0, 0.5, 1.0, -1.0] and bool(a[5].isnan())
    assert b.tolist() == [[-1.0, 0.25]]
    clip_latent_([])  # nothing to clip


@pytest.mark.parametrize("kind", ["linear", "conv"])
@pytest.mark.parametrize("bad", [1.0 + 2**-20, -1.5, float("nan")])
def test_unclipped_weight_reaching_the_identity_ste_is_caught(kind, bad):
    """With check_clip, a training forward refuses a latent weight outside [-1, 1]."""
    torch.manual_seed(0)
    if kind == "linear":
        layer, x = BinaryLinear(6, 3, check_clip=True), torch.randn(2, 6)
    else:
        layer, x = BinaryConv2d(2, 3, 3, check_clip=True), torch.randn(1, 2, 5, 5)
    layer.train()
    layer(x)  # initialised in [-1, 1]: fine
    with torch.no_grad():
        layer.weight.view(-1)[0] = bad
    with pytest.raises(UnclippedWeightError, match="clip"):
        layer(x)
    with pytest.raises(UnclippedWeightError):
        layer.assert_clipped()
    layer.eval()
    layer(x)  # evaluation passes no gradient: not checked
    layer.train()
    layer.clip_()
    if math.isnan(bad):  # clamp keeps a NaN: still refused
        with pytest.raises(UnclippedWeightError):
            layer(x)
    else:
        layer(x)


def test_check_clipping_turns_the_check_on_for_every_binary_layer():
    net = nn.Sequential(BinaryLinear(4, 4), nn.BatchNorm1d(4), BinaryLinear(4, 2))
    assert not any(m.check_clip for m in net if is_binary_layer(m))  # off by default
    with torch.no_grad():
        net[2].weight.fill_(2.0)
    net(torch.randn(3, 4))  # unnoticed without the check
    assert check_clipping(net) is net
    assert all(m.check_clip for m in net if is_binary_layer(m))
    with pytest.raises(UnclippedWeightError, match="BinaryLinear"):
        net(torch.randn(3, 4))
    check_clipping(net, enabled=False)
    assert not any(m.check_clip for m in net if is_binary_layer(m))


# --- SignActivation ----------------------------------------------------------------------------


def test_sign_activation_forward_and_backward():
    act = SignActivation()
    x = torch.tensor([-2.0, -1.0, -0.5, -0.0, 0.0, 0.5, 1.0, 2.0], requires_grad=True)
    y = act(x)
    assert y.tolist() == [-1, -1, -1, 1, 1, 1, 1, 1]
    y.backward(torch.arange(1.0, 9.0))
    assert x.grad.tolist() == [0, 2, 3, 4, 5, 6, 7, 0]


@pytest.mark.parametrize("estimator,expected", [("identity", [1.0, 2, 3]), ("none", [0.0, 0, 0])])
def test_sign_activation_estimators(estimator, expected):
    x = torch.tensor([-3.0, 0.2, 3.0], requires_grad=True)
    SignActivation(estimator=estimator)(x).backward(torch.tensor([1.0, 2.0, 3.0]))
    assert x.grad.tolist() == expected


def test_sign_activation_bad_estimator_raises():
    with pytest.raises(ValueError, match="estimator"):
        SignActivation(estimator="bogus")(torch.zeros(2))


def test_sign_activation_stochastic_only_in_training():
    torch.manual_seed(0)
    act = SignActivation(stochastic=True)
    x = torch.zeros(2000)  # p = 1/2
    act.train()
    y = act(x)
    assert set(y.tolist()) == {-1.0, 1.0}
    act.eval()
    assert torch.equal(act(x), torch.ones(2000))


# --- helpers -----------------------------------------------------------------------------------


def test_is_binary_layer():
    assert is_binary_layer(BinaryLinear(2, 2))
    assert is_binary_layer(BinaryConv2d(1, 1, 3))
    for m in (nn.Linear(2, 2), nn.Conv2d(1, 1, 3), SignActivation(), nn.BatchNorm1d(2)):
        assert not is_binary_layer(m)


def test_extra_repr_shows_flags():
    r = repr(BinaryLinear(3, 4, binarize_input=False))
    assert "in_features=3" in r and "out_features=4" in r
    assert "binarize_input=False" in r and "stochastic_weights=False" in r
    r = repr(BinaryConv2d(3, 4, 3, padding=1, stochastic_weights=True, stochastic_input=True))
    assert "binarize_input=True" in r and "stochastic_input=True" in r and "padding=(1, 1)" in r
    assert "estimator='identity'" in repr(SignActivation(estimator="identity"))
