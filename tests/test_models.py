"""Tests of bnnlib.nn.models: the paper's MLP and ConvNets (Section 2) and their float twins.

Structures are checked layer by layer against the paper's description; parameter counts
against the formula written out here.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bnnlib.nn.layers import BinaryConv2d, BinaryLinear, SignActivation, is_binary_layer
from bnnlib.nn.models import MODELS, build, cifar10_convnet, mnist_mlp, svhn_convnet
from bnnlib.nn.shift import ShiftBatchNorm1d, ShiftBatchNorm2d

BN_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, ShiftBatchNorm1d, ShiftBatchNorm2d)


def _n_params(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def _types(net: nn.Sequential) -> list[type]:
    return [type(m) for m in net]


# --- MNIST MLP ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def paper_mlp() -> nn.Sequential:
    return mnist_mlp()  # 784 -> 3 x 4096 -> 10, built once for the tests below


def test_mnist_mlp_structure_is_the_papers(paper_mlp):
    net = paper_mlp
    L, BN, S, D = BinaryLinear, nn.BatchNorm1d, SignActivation, nn.Dropout
    expected = [nn.Flatten, D] + [L, BN, S, D] * 3 + [L, BN]
    assert _types(net) == expected
    binary = [m for m in net if is_binary_layer(m)]
    assert len(binary) == 4
    shapes = [(m.in_features, m.out_features) for m in binary]
    assert shapes == [(784, 4096), (4096, 4096), (4096, 4096), (4096, 10)]
    assert all(m.bias is None for m in binary)
    # The first layer's input is the real image: not binarized. The others take
    # Sign -> Dropout outputs as they come: binarizing again would turn dropped zeros into +1.
    assert [m.binarize_input for m in binary] == [False] * 4
    # Dropout 0.2 on the input, 0.5 on hidden layers.
    assert [m.p for m in net if isinstance(m, D)] == [0.2, 0.5, 0.5, 0.5]
    bns = [m for m in net if isinstance(m, BN)]
    assert [m.num_features for m in bns] == [4096, 4096, 4096, 10]
    assert all(m.eps == 1e-4 and m.momentum == 0.1 for m in bns)
    # The last layer: batch norm, no Sign (its outputs feed the square hinge loss).
    assert isinstance(net[-1], BN) and not isinstance(net[-2], S)


def test_mnist_mlp_parameter_count(paper_mlp):
    h = 4096
    weights = 784 * h + h * h + h * h + h * 10
    bn = 2 * (3 * h + 10)
    assert _n_params(paper_mlp) == weights + bn


def test_mnist_mlp_hidden_layers_receive_pm1_in_eval():
    """Every binary layer after the first takes the (binary) output of a SignActivation."""
    torch.manual_seed(0)
    net = mnist_mlp(hidden=64).eval()
    seen = []
    hooks = [
        m.register_forward_hook(lambda mod, inp, out: seen.append(inp[0].detach()))
        for m in net
        if is_binary_layer(m)
    ]
    x = torch.rand(5, 1, 28, 28) * 2 - 1
    net(x)
    for h in hooks:
        h.remove()
    assert len(seen) == 4
    assert torch.equal(seen[0], x.flatten(1))  # the real image
    for inp in seen[1:]:
        assert set(inp.unique().tolist()) == {-1.0, 1.0}


@pytest.mark.parametrize("shape", [(3, 1, 28, 28), (3, 784)])
def test_mnist_mlp_output_shape(shape):
    torch.manual_seed(0)
    net = mnist_mlp(hidden=32)
    out = net(torch.randn(shape))
    assert out.shape == (3, 10)
    out.square().mean().backward()
    assert all(p.grad is not None for p in net.parameters())


def test_mnist_mlp_float_twin():
    binary, twin = mnist_mlp(hidden=48), mnist_mlp(hidden=48, binary=False)
    assert not any(is_binary_layer(m) for m in twin.modules())
    assert not any(isinstance(m, SignActivation) for m in twin.modules())
    linears = [m for m in twin if isinstance(m, nn.Linear)]
    assert len(linears) == 4 and all(m.bias is None for m in linears)
    assert sum(isinstance(m, nn.Hardtanh) for m in twin) == 3
    assert _n_params(twin) == _n_params(binary)
    # Same state-dict layout, so weights can be moved between the two.
    assert {k: v.shape for k, v in twin.state_dict().items()} == {
        k: v.shape for k, v in binary.state_dict().items()
    }
    assert twin(torch.randn(2, 784)).shape == (2, 10)


def test_mnist_mlp_options():
    net = mnist_mlp(
        hidden=16, depth=2, dropout_in=0, dropout_hidden=0, in_features=20, num_classes=5
    )
    L, BN, S = BinaryLinear, nn.BatchNorm1d, SignActivation
    assert _types(net) == [nn.Flatten, L, BN, S, L, BN, S, L, BN]
    assert net[1].in_features == 20 and net[-2].out_features == 5
    both = {"stochastic_activations": True, "stochastic_weights": True}
    net = mnist_mlp(hidden=16, estimator="identity", **both)
    # Both flags: the weights and the Sign activations.
    assert all(m.stochastic_weights for m in net if is_binary_layer(m))
    assert all(m.stochastic for m in net if isinstance(m, SignActivation))
    assert all(m.estimator == "identity" for m in net if isinstance(m, SignActivation))


@pytest.mark.parametrize("build_net", [mnist_mlp, cifar10_convnet], ids=["mlp", "convnet"])
@pytest.mark.parametrize("acts,weights", [(True, False), (False, True), (False, False)])
def test_stochastic_activations_and_weights_chosen_separately(build_net, acts, weights):
    kw = {"stochastic_activations": acts, "stochastic_weights": weights}
    net = build_net(width=1 / 16, **kw) if build_net is cifar10_convnet else build_net(16, **kw)
    signs = [m for m in net.modules() if isinstance(m, SignActivation)]
    binaries = [m for m in net.modules() if is_binary_layer(m)]
    assert signs and binaries
    assert all(m.stochastic is acts for m in signs)
    assert all(m.stochastic_weights is weights for m in binaries)
    # Every binary layer of the paper's models takes its input already binary.
    assert not any(m.stochastic_input or m.binarize_input for m in binaries)


@pytest.mark.parametrize("name", ["mnist_mlp", "cifar10_convnet", "svhn_convnet"])
def test_no_stochastic_shorthand(name):
    """What is stochastic is said one way: stochastic_activations and stochastic_weights."""
    with pytest.raises(TypeError, match="stochastic"):
        build(name, stochastic=True)


def test_torch7_mlp_layout_last_batchnorm_and_bn_constants():
    net = mnist_mlp(
        hidden=16, batchnorm="shift", last_batchnorm="standard", bn_eps=1e-5, bn_momentum=0.125
    )
    bns = [m for m in net if isinstance(m, BN_TYPES)]
    assert [type(m) for m in bns] == [ShiftBatchNorm1d] * 3 + [nn.BatchNorm1d]
    assert all(m.eps == 1e-5 and m.momentum == 0.125 for m in bns)


def test_mnist_mlp_shift_batchnorm():
    torch.manual_seed(0)
    net = mnist_mlp(hidden=32, batchnorm="shift")
    bns = [m for m in net if isinstance(m, BN_TYPES)]
    assert len(bns) == 4 and all(type(m) is ShiftBatchNorm1d for m in bns)
    assert all(m.eps == 1e-4 and m.momentum == 0.1 for m in bns)
    assert net(torch.randn(4, 784)).shape == (4, 10)
    with pytest.raises(ValueError, match="unknown batchnorm 'layer'"):
        mnist_mlp(hidden=8, batchnorm="layer")


# --- ConvNets ----------------------------------------------------------------------------------


def _conv_expected_types(binary=True):
    C = BinaryConv2d if binary else nn.Conv2d
    L = BinaryLinear if binary else nn.Linear
    S = SignActivation if binary else nn.Hardtanh
    B2, B1 = nn.BatchNorm2d, nn.BatchNorm1d
    block = [C, B2, S, C, nn.MaxPool2d, B2, S]
    return block * 3 + [nn.Flatten] + [L, B1, S] * 2 + [L, B1]


def _convnet_param_count(c1, c2, c3, fc, c_in=3, side=4, classes=10):
    convs = 9 * (c_in * c1 + c1 * c1 + c1 * c2 + c2 * c2 + c2 * c3 + c3 * c3)
    fcs = c3 * side * side * fc + fc * fc + fc * classes
    bn = 2 * (2 * c1 + 2 * c2 + 2 * c3 + 2 * fc + classes)
    return convs + fcs + bn


def _widths(net):
    convs = [m.out_channels for m in net if isinstance(m, nn.Conv2d)]
    fcs = [m.out_features for m in net if isinstance(m, nn.Linear)]
    return convs, fcs


def test_cifar10_convnet_full_width():
    net = cifar10_convnet()
    assert _types(net) == _conv_expected_types()
    convs, fcs = _widths(net)
    assert convs == [128, 128, 256, 256, 512, 512]
    assert fcs == [1024, 1024, 10]
    assert net[len(_conv_expected_types()) - 8].in_features == 512 * 4 * 4
    for m in net:
        if isinstance(m, BinaryConv2d):
            assert m.kernel_size == (3, 3) and m.padding == (1, 1) and m.bias is None
        if is_binary_layer(m):
            assert m.binarize_input is False  # after Sign, or the real image
        if isinstance(m, nn.MaxPool2d):
            assert m.kernel_size == 2
        if isinstance(m, BN_TYPES):
            assert m.eps == 1e-4 and m.momentum == 0.1
    assert _n_params(net) == _convnet_param_count(128, 256, 512, 1024)
    assert _n_params(net) == 14_029_716  # the formula above, as a number


def test_cifar10_convnet_small_width_forward():
    torch.manual_seed(0)
    net = cifar10_convnet(width=1 / 16)
    assert _widths(net) == ([8, 8, 16, 16, 32, 32], [64, 64, 10])
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    out = net(x)
    assert out.shape == (2, 10)
    out.square().mean().backward()
    assert all(p.grad is not None for p in net.parameters())
    net.eval()
    assert net(x).shape == (2, 10)


def test_convnet_other_input_size_and_channels():
    torch.manual_seed(0)
    net = cifar10_convnet(width=1 / 16, in_channels=1, image_size=28)
    assert net[0].in_channels == 1
    assert _n_params(net) == _convnet_param_count(8, 16, 32, 64, c_in=1, side=3)
    assert net(torch.rand(2, 1, 28, 28)).shape == (2, 10)


def test_svhn_convnet_half_convolutions_full_dense():
    # Both official codes halve the convolutions only; the dense layers keep 1024 units.
    net = svhn_convnet()
    assert _types(net) == _conv_expected_types()
    assert _widths(net) == ([64, 64, 128, 128, 256, 256], [1024, 1024, 10])
    assert _n_params(net) == _convnet_param_count(64, 128, 256, 1024)


def test_convnet_float_twin():
    binary, twin = cifar10_convnet(width=1 / 16), cifar10_convnet(width=1 / 16, binary=False)
    assert _types(twin) == _conv_expected_types(binary=False)
    assert not any(is_binary_layer(m) for m in twin.modules())
    assert all(m.bias is None for m in twin if isinstance(m, (nn.Conv2d, nn.Linear)))
    assert _n_params(twin) == _n_params(binary)


def test_convnet_shift_batchnorm():
    torch.manual_seed(0)
    net = cifar10_convnet(width=1 / 16, batchnorm="shift")
    kinds = [type(m) for m in net if isinstance(m, BN_TYPES)]
    assert kinds == [ShiftBatchNorm2d] * 6 + [ShiftBatchNorm1d] * 3
    assert net(torch.rand(2, 3, 32, 32)).shape == (2, 10)


# --- registry ----------------------------------------------------------------------------------


def test_build_by_name():
    assert set(MODELS) == {"mnist_mlp", "cifar10_convnet", "svhn_convnet"}
    net = build("mnist_mlp", hidden=8)
    assert isinstance(net, nn.Sequential) and net[2].out_features == 8
    assert _widths(build("svhn_convnet", width=1 / 8))[0][0] == 8


def test_build_unknown_name_lists_names():
    with pytest.raises(ValueError, match="unknown model 'resnet'") as info:
        build("resnet")
    for name in MODELS:
        assert name in str(info.value)
