"""Energy accounting (bnnlib.analysis.energy) against the paper's tables and hand counts."""

from __future__ import annotations

import pytest
from torch import nn

from bnnlib.analysis import energy as E
from bnnlib.nn.layers import BinaryConv2d, BinaryLinear, SignActivation
from bnnlib.nn.models import cifar10_convnet, mnist_mlp


def test_tables_equal_the_paper():
    assert E.OPERATIONS == {
        "8-bit integer": {"MUL": 0.2, "ADD": 0.03},
        "32-bit integer": {"MUL": 3.1, "ADD": 0.1},
        "16-bit floating point": {"MUL": 1.1, "ADD": 0.4},
        "32-bit floating point": {"MUL": 3.7, "ADD": 0.9},
    }
    assert E.MEMORY == {"8K": 10.0, "32K": 20.0, "1M": 100.0, "DRAM": (1300.0, 2600.0)}
    assert E.memory_pj("DRAM") == 1300.0 and E.memory_pj("DRAM", "high") == 2600.0
    assert len(E.operation_table()) == 4 and E.memory_table()[-1]["access_pJ_high"] == 2600.0
    with pytest.raises(ValueError, match="memory level"):
        E.memory_pj("L2")


def test_binary_cost_derivation():
    c = E.BinaryCost()
    bit = 0.03 / 8
    assert c.xnor == pytest.approx(64 * bit)
    # popcount tree: 32 one-bit + 16 two-bit + 8 three-bit + 4 four-bit + 2 five-bit + 1 six-bit
    assert c.popcount == pytest.approx((32 + 32 + 24 + 16 + 10 + 6) * bit)
    assert c.word == pytest.approx(64 * bit + 120 * bit + 0.1)


def _tiny():
    return nn.Sequential(
        nn.Flatten(),
        BinaryLinear(100, 70, binarize_input=False),
        nn.BatchNorm1d(70),
        SignActivation(),
        BinaryLinear(70, 10, binarize_input=False),
        nn.BatchNorm1d(10),
    )


def test_counts_tiny_mlp():
    rows = E.count_layers(_tiny(), (100,))
    assert [(r.kind, r.macs, r.fan_in, r.outputs, r.weights, r.first, r.last) for r in rows] == [
        ("linear", 7000, 100, 70, 7000, True, False),
        ("batchnorm", 0, 0, 70, 0, False, False),
        ("linear", 700, 70, 10, 700, False, True),
        ("batchnorm", 0, 0, 10, 0, False, True),
    ]


def test_energy_tiny_mlp_by_hand():
    r = E.energy(_tiny(), (100,))  # DRAM low (1300 pJ) weights, 32K (20 pJ) activations
    word = 0.79
    f = [e.float32_compute for e in r.layers]
    b = [e.binary_compute for e in r.layers]
    assert f == pytest.approx([7000 * 4.6, 70 * 4.6, 700 * 4.6, 10 * 4.6])
    # first layer: 8 bit planes x 2 words per output + 8 combining adds; thresholds are int adds
    assert b == pytest.approx([70 * (8 * 2 * word + 0.8), 70 * 0.1, 10 * 2 * word, 10 * 4.6])
    fm = [e.float32_memory for e in r.layers]
    bm = [e.binary_memory for e in r.layers]
    assert fm == pytest.approx(
        [3500 * 1300 + 13 * 20, 70 * 1300 + 35 * 20, 350 * 1300 + 35 * 20, 10 * 1300 + 5 * 20]
    )
    assert bm == pytest.approx(
        [140 * 1300 + 13 * 20, 35 * 1300 + 2 * 20, 20 * 1300 + 2 * 20, 10 * 1300 + 5 * 20]
    )
    assert r.total("float32_weight_accesses") == 3850
    assert r.total("binary_weight_accesses") == 160
    ratios = r.ratios
    assert ratios["compute"] == pytest.approx(sum(f) / sum(b))
    assert ratios["total"] == pytest.approx((sum(f) + sum(fm)) / (sum(b) + sum(bm)))
    assert r.memory_share("float32") == pytest.approx(sum(fm) / (sum(f) + sum(fm)))
    assert r.memory_share("binary") == pytest.approx(sum(bm) / (sum(b) + sum(bm)))
    d = r.to_dict()
    assert d["totals_pJ"]["binary"] == pytest.approx(sum(b) + sum(bm))
    assert len(d["layers"]) == 4 and d["weight_memory"] == "DRAM"


def test_batch_size_shares_weight_reads_only():
    r1, r10 = E.energy(_tiny(), (100,)), E.energy(_tiny(), (100,), batch_size=10)
    assert r10.total("float32_weight_accesses") == pytest.approx(385)
    assert r10.total("binary_compute") == pytest.approx(r1.total("binary_compute"))
    assert r10.total("binary_memory") < r1.total("binary_memory")


def test_int8_first_layer_option():
    r = E.energy(_tiny(), (100,), first_layer="int8")
    assert r.layers[0].binary_compute == pytest.approx(7000 * 0.03)
    with pytest.raises(ValueError, match="first_layer"):
        E.energy(_tiny(), (100,), first_layer="float")


def test_conv_and_pool_counts():
    net = nn.Sequential(
        BinaryConv2d(3, 4, 3, padding=1, binarize_input=False),
        nn.MaxPool2d(2),
        nn.BatchNorm2d(4),
        SignActivation(),
        nn.Flatten(),
        BinaryLinear(4 * 2 * 2, 10, binarize_input=False),
        nn.BatchNorm1d(10),
    )
    rows = E.count_layers(net, (3, 5, 5))
    conv, pool, bn = rows[:3]
    assert (conv.macs, conv.fan_in, conv.outputs, conv.weights) == (4 * 25 * 27, 27, 100, 108)
    assert (pool.outputs, pool.compares) == (16, 16 * 3)
    assert (bn.outputs, bn.channels) == (16, 4)
    e = E.energy(net, (3, 5, 5))
    assert e.layers[1].binary_compute == pytest.approx(48 * 0.1)
    assert e.layers[1].float32_compute == pytest.approx(48 * 0.9)


def test_paper_models_ratios():
    mlp = E.energy(mnist_mlp(), (1, 28, 28))
    # 32x fewer weight bits, less the padding of 784 inputs to 13 words
    w = mlp.ratios["weight_accesses"]
    assert 31 < w <= 32
    assert w == pytest.approx(
        (784 * 4096 + 2 * 4096 * 4096 + 4096 * 10) / 2 / (4096 * 13 + 2 * 4096 * 64 + 10 * 64)
    )
    assert mlp.ratios["compute"] > 100
    # The float twin has the same architecture, hence the same counts.
    twin = E.count_layers(mnist_mlp(binary=False), (1, 28, 28))
    assert [r.macs for r in twin] == [r.macs for r in mlp.counts]
    conv = E.energy(cifar10_convnet(), (3, 32, 32))
    macs = sum(r.macs for r in conv.counts)
    # (2x128C3)-MP2-(2x256C3)-MP2-(2x512C3)-MP2-(2x1024FC)-10FC on 32x32 images
    want = (
        32 * 32 * 128 * 27
        + 32 * 32 * 128 * 128 * 9
        + 16 * 16 * 256 * 128 * 9
        + 16 * 16 * 256 * 256 * 9
        + 8 * 8 * 512 * 256 * 9
        + 8 * 8 * 512 * 512 * 9
        + 8192 * 1024
        + 1024 * 1024
        + 1024 * 10
    )
    assert macs == want
    assert conv.ratios["total"] > 1
