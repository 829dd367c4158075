"""bnnlib.analysis.summary: parameter counts, packed memory and MACs against hand arithmetic."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bnnlib.analysis.summary import summary
from bnnlib.nn import models
from bnnlib.nn.layers import is_binary_layer


def test_paper_mlp_packs_at_least_31x():
    net = models.mnist_mlp()  # 784 -> 3 x 4096 -> 10
    s = summary(net)
    assert s.params == sum(p.numel() for p in net.parameters())
    binary = 784 * 4096 + 2 * 4096 * 4096 + 4096 * 10
    assert s.binary_weights == binary
    bn = 2 * (3 * 4096 + 10)  # gamma and beta stay 32-bit
    assert s.params == binary + bn
    assert s.memory_float32 == 4 * (binary + bn)
    assert s.memory_packed == binary // 8 + 4 * bn
    assert s.weight_ratio == 32.0  # the weights alone: exactly 32x
    assert s.ratio >= 31  # the whole model, batch norm included
    assert s.ratio == pytest.approx(4 * (binary + bn) / (binary / 8 + 4 * bn))


def test_mlp_macs_and_shapes():
    net = models.mnist_mlp(hidden=64, depth=2)
    s = summary(net)
    assert s.input_shape == (1, 28, 28)  # the default for a Flatten + 784-input MLP
    # The first layer reads the real image: its MACs are real; the others read +-1.
    assert s.macs_real == 784 * 64
    assert s.macs_binary == 64 * 64 + 64 * 10
    rows = {r.name: r for r in s.rows}
    assert rows["2"].output_shape == (64,) and rows["2"].weight_bits == 1
    assert rows["3"].weight_bits == 32 and rows["0"].weight_bits is None
    assert len(s.rows) == len(net)


def test_float_twin_is_all_real():
    net = models.mnist_mlp(hidden=64, depth=2, binary=False)
    s = summary(net)
    assert s.binary_weights == 0 and s.ratio == 1.0
    assert s.macs_binary == 0 and s.macs_real == 784 * 64 + 64 * 64 + 64 * 10


def test_convnet_macs_match_a_naive_count():
    net = models.cifar10_convnet(width=1 / 16)  # channels 8, 16, 32; fc 64
    s = summary(net)
    assert s.input_shape == (3, 32, 32)
    expected_binary = expected_real = 0
    x = torch.zeros(1, 3, 32, 32)
    net.eval()
    with torch.no_grad():
        for m in net:
            y = m(x)
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                fan = m.in_channels * 9 if isinstance(m, nn.Conv2d) else m.in_features
                macs = y[0].numel() * fan
                if m is net[0]:
                    expected_real += macs  # the image is not binary
                else:
                    expected_binary += macs
            x = y
    assert (s.macs_binary, s.macs_real) == (expected_binary, expected_real)
    assert s.rows[0].output_shape == (8, 32, 32) and s.rows[4].output_shape == (8, 16, 16)
    n_bin = sum(m.weight.numel() for m in net.modules() if is_binary_layer(m))
    assert s.binary_weights == n_bin


def test_table_text_and_dict():
    s = summary(models.mnist_mlp(hidden=32, depth=1))
    text = str(s)
    assert "Total" in text and "Binary MACs" in text and "x smaller" in text
    assert "BinaryLinear" in text and "(784)" in text
    d = s.to_dict()
    assert d["params"] == s.params and len(d["rows"]) == len(s.rows)


def test_input_shape_given_or_unknown():
    net = models.mnist_mlp(hidden=32, depth=1, in_features=3 * 8 * 8)
    s = summary(net, input_shape=(3, 8, 8))
    assert s.rows[2].output_shape == (32,) and s.macs_real == 192 * 32
    unknown = summary(nn.Sequential(nn.ReLU()))
    assert unknown.input_shape is None and unknown.macs_binary is None
    assert "MACs per sample" not in str(unknown)
    with pytest.raises(ValueError, match="input of shape"):
        summary(net, input_shape=(1, 28, 28))


def test_summary_keeps_training_mode():
    net = models.mnist_mlp(hidden=32, depth=1)
    summary(net)
    assert net.training
