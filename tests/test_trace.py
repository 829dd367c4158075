"""bnnlib.analysis.trace: one forward pass recording each layer's shapes, shared by summary, energy
and filters; and the guess of a model's input shape."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bnnlib.analysis.trace import Call, guess_input_shape, layers, trace
from bnnlib.nn import models
from bnnlib.nn.layers import BinaryConv2d, BinaryLinear, SignActivation


def test_shapes_names_and_order_of_an_mlp():
    net = models.mnist_mlp(hidden=16, depth=1)
    calls = trace(net, (1, 28, 28))
    assert all(isinstance(c, Call) for c in calls)
    assert [c.name for c in calls] == [n for n, _ in net.named_modules() if n]
    assert calls[0].input_shape == (1, 28, 28) and calls[0].output_shape == (784,)
    first = next(c for c in calls if isinstance(c.module, BinaryLinear))
    assert (first.input_shape, first.output_shape) == ((784,), (16,))
    assert first.module is net[int(first.name)]


def test_conv_shapes_against_torch():
    net = models.cifar10_convnet(width=1 / 16)
    calls = trace(net, (3, 32, 32), include=lambda m: isinstance(m, BinaryConv2d))
    convs = [m for m in net if isinstance(m, BinaryConv2d)]
    assert [c.module for c in calls] == convs
    x = torch.zeros(1, 3, 32, 32)
    net.eval()
    with torch.no_grad():
        for m in net:
            y = m(x)
            if isinstance(m, BinaryConv2d):
                c = calls[convs.index(m)]
                assert c.input_shape == tuple(x.shape[1:]) and c.output_shape == tuple(y.shape[1:])
            x = y


def test_a_module_called_twice_is_recorded_twice():
    lin = nn.Linear(4, 4)

    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = lin

        def forward(self, x):
            return self.lin(torch.relu(self.lin(x)))

    calls = trace(Twice(), (4,))
    assert [c.name for c in calls] == ["lin", "lin"] and calls[0].module is lin


def test_input_pm1_and_random_input():
    net = nn.Sequential(nn.Linear(5, 6), SignActivation(), nn.Linear(6, 2))
    zero = trace(net, (5,))
    assert [c.input_pm1 for c in zero] == [False, False, True]
    rnd = trace(net, (5,), random=True)
    assert [c.input_pm1 for c in rnd] == [False, False, True]
    # The random sample is seeded: two traces see the same input.
    seen = []
    net[0].register_forward_hook(lambda m, i, o: seen.append(i[0].clone()))
    trace(net, (5,), random=True)
    trace(net, (5,), random=True)
    assert torch.equal(seen[0], seen[1]) and not torch.equal(seen[0], torch.zeros(1, 5))


def test_mode_restored_and_bad_shape_named():
    net = models.mnist_mlp(hidden=8, depth=1)
    net.train()
    trace(net, (1, 28, 28))
    assert net.training
    with pytest.raises(ValueError, match=r"input of shape \(3, 8, 8\)"):
        trace(net, (3, 8, 8))
    assert net.training
    net.eval()
    trace(net, (1, 28, 28))
    assert not net.training
    assert all(not m._forward_hooks for m in net.modules())  # hooks removed


def test_layers_and_guess_input_shape():
    mlp = models.mnist_mlp(hidden=8, depth=1)
    assert [n for n, _ in layers(mlp)] == [n for n, _ in mlp.named_modules() if n]
    single = nn.Linear(3, 2)
    assert layers(single) == [("Linear", single)]
    assert guess_input_shape(mlp) == (1, 28, 28)
    assert guess_input_shape(models.mnist_mlp(hidden=8, depth=1, in_features=12)) == (12,)
    assert guess_input_shape(models.cifar10_convnet(width=1 / 16)) == (3, 32, 32)
    assert guess_input_shape(nn.Sequential(nn.Linear(7, 2))) == (7,)
    assert guess_input_shape(nn.Sequential(nn.ReLU())) is None
    assert guess_input_shape(nn.Sequential()) is None


def test_image_side_is_the_smallest_fitting_square():
    from bnnlib.analysis.trace import image_side

    assert image_side(models.cifar10_convnet(width=1 / 16)) == 32
    assert image_side(models.cifar10_convnet(width=1 / 16, image_size=16)) == 16
    valid = nn.Sequential(nn.Conv2d(1, 2, 3), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(2 * 4, 3))
    assert image_side(valid) == 6  # 6 -> 4 -> 2 (7 fits too; the smallest is taken)
    assert guess_input_shape(valid) == (1, 6, 6)
    assert image_side(nn.Sequential(nn.Conv2d(1, 2, 3))) is None
    assert guess_input_shape(nn.Sequential(nn.Conv2d(1, 2, 3))) == (1, 32, 32)
    assert image_side(models.mnist_mlp(hidden=8, depth=1)) is None
