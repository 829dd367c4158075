"""bnnlib.analysis.filters: unique binary kernels per input channel, against naive Python loops."""

from __future__ import annotations

import itertools
import math
import random

import pytest
import torch

import bnnlib
from bnnlib.analysis import filters


def naive_unique(weight: torch.Tensor, negation: bool = True) -> list[int]:
    """Per input channel: distinct sign patterns (as tuples), a pattern and its negation once."""
    w = weight.tolist()
    counts = []
    for c in range(len(w[0])):
        seen = set()
        for o in range(len(w)):
            pattern = tuple(1 if v >= 0 else -1 for row in w[o][c] for v in row)
            if negation:
                pattern = max(pattern, tuple(-v for v in pattern))
            seen.add(pattern)
        counts.append(len(seen))
    return counts


def test_unique_matches_naive_loop_on_random_weights():
    g = torch.Generator().manual_seed(0)
    for out, cin, k in [(7, 3, 3), (40, 5, 3), (16, 2, 2), (300, 2, 3), (9, 4, 1)]:
        w = torch.rand(out, cin, k, k, generator=g) * 2 - 1
        for negation in (True, False):
            got = filters.unique_per_input_channel(w, negation).tolist()
            assert got == naive_unique(w, negation), (out, cin, k, negation)


def test_unique_matches_naive_loop_on_few_patterns():
    # Few distinct patterns, many repeats and negations: the interesting regime.
    rng = random.Random(1)
    base = [[rng.choice((-1.0, 1.0)) for _ in range(9)] for _ in range(4)]
    rows = []
    for _ in range(50):
        p = rng.choice(base)
        rows.append([[v * rng.choice((-1.0, 1.0)) for v in p] for _ in range(3)])
    w = torch.tensor(rows).reshape(50, 3, 3, 3)
    assert filters.unique_per_input_channel(w).tolist() == naive_unique(w)
    assert filters.unique_per_input_channel(w, negation=False).tolist() == naive_unique(w, False)


def test_negation_pairs_count_once():
    k = bnnlib.sign(torch.randn(1, 1, 3, 3, generator=torch.Generator().manual_seed(2)))
    w = torch.cat([k, -k, k, -k])  # (4, 1, 3, 3): one class
    assert filters.unique_per_input_channel(w).tolist() == [1]
    assert filters.unique_per_input_channel(w, negation=False).tolist() == [2]
    assert filters.unique_fraction(w) == 0.25


def test_all_512_patterns_give_256_classes():
    patterns = torch.tensor(list(itertools.product((-1.0, 1.0), repeat=9)))
    w = patterns.reshape(512, 1, 3, 3)
    assert filters.unique_per_input_channel(w).tolist() == [256]
    assert filters.unique_per_input_channel(w, negation=False).tolist() == [512]
    codes = filters.canonical_codes(w)
    assert codes.unique().numel() == 256 and int(codes.max()) < 256


def test_known_codes_and_sign_of_zero():
    # Row-major bit i is 1 where entry i binarizes to +1; Sign(0) = +1.
    w = torch.tensor([[[[1.0, -1.0], [0.0, -0.5]]]])
    assert filters.kernel_codes(w).item() == 0b0101
    assert filters.canonical_codes(w).item() == 0b0101  # min(0b0101, 0b1010)
    v = torch.tensor([[[[-1.0, 1.0], [1.0, 1.0]]]])
    assert filters.kernel_codes(v).item() == 0b1110
    assert filters.kernel_codes(-v).item() == 0b0001
    assert filters.canonical_codes(v).item() == filters.canonical_codes(-v).item() == 0b0001


def test_channels_are_counted_separately():
    # The same kernel in two input channels is not shared work: it counts in each.
    k = torch.ones(1, 1, 3, 3)
    w = torch.cat([k, k], dim=1).repeat(5, 1, 1, 1)  # (5, 2, 3, 3), all +1
    assert filters.unique_per_input_channel(w).tolist() == [1, 1]
    assert filters.unique_fraction(w) == pytest.approx(2 / 10)


def test_expected_unique_formula_and_simulation():
    assert filters.expected_unique(1) == pytest.approx(1.0)
    assert filters.expected_unique(0) == 0.0
    assert filters.expected_unique_fraction(128) == pytest.approx(
        256 * (1 - (255 / 256) ** 128) / 128
    )
    # Monte Carlo: 200 input channels of 64 random kernels each; the mean count is within
    # 5 standard errors of the formula (the count's sd is below sqrt(n) = 8).
    g = torch.Generator().manual_seed(3)
    w = torch.rand(64, 200, 3, 3, generator=g) * 2 - 1
    mean = filters.unique_per_input_channel(w).double().mean().item()
    assert abs(mean - filters.expected_unique(64)) < 5 * 8 / math.sqrt(200)


def test_filter_repetition_of_a_convnet():
    torch.manual_seed(0)
    net = bnnlib.cifar10_convnet(width=0.125)
    stats = filters.filter_repetition(net)
    assert [s.out_channels for s in stats] == [16, 16, 32, 32, 64, 64]
    assert [s.positions for s in stats] == [1024, 1024, 256, 256, 64, 64]
    first = stats[0]
    assert first.in_channels == 3 and first.kernels == 48
    assert first.unique == sum(naive_unique(net[0].weight.detach()))
    assert first.xnor_macs == 16 * 3 * 9 * 1024
    assert first.xnor_macs_reuse == first.unique * 9 * 1024
    assert first.saved == first.xnor_macs - first.xnor_macs_reuse
    assert first.reduction == pytest.approx(1 / first.fraction)
    for s in stats:
        assert 0 < s.fraction <= 1
    t = filters.totals(stats)
    assert t["layers"] == 6
    assert t["reduction"] == pytest.approx(t["xnor_macs"] / t["xnor_macs_reuse"])
    assert net.training  # mode restored


def test_packed_conv_weights_roundtrip(tmp_path):
    from bnnlib import inference

    torch.manual_seed(0)
    net = bnnlib.cifar10_convnet(width=1 / 16, image_size=16)
    net.eval()
    path = inference.export(net, tmp_path / "net.bnn", input_shape=(3, 16, 16))
    found = filters.packed_conv_weights(inference.load(path))
    convs = [m for m in net if isinstance(m, bnnlib.BinaryConv2d)]
    assert len(found) == len(convs)
    for (_, w, _), conv in zip(found, convs, strict=True):
        assert torch.equal(w, bnnlib.sign(conv.weight.detach()))


def test_pattern_frequencies_and_figures():
    k = bnnlib.sign(torch.randn(1, 1, 3, 3, generator=torch.Generator().manual_seed(4)))
    other = -torch.ones(1, 1, 3, 3)  # class 0 (all -1, the negation of all +1)
    w = torch.cat([k, -k, k, other, -other]).repeat(1, 2, 1, 1)  # (5, 2, 3, 3)
    codes, counts = filters.pattern_frequencies(w)
    assert counts.tolist() == [6, 4]
    assert codes.tolist() == [filters.canonical_codes(k).item(), 0]
    fig = filters.patterns_figure(w, top=8)
    assert len(fig.data) == 2 and [list(r) for r in fig.data[1].z] == [[-1] * 3] * 3
    fig = filters.fraction_figure(["a", "b"], {"x": [0.5, 1.0]}, paper=0.42)
    assert list(fig.data[0].y) == [50.0, 100.0]


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="out, in, kh, kw"):
        filters.unique_fraction(torch.ones(3, 3))
    with pytest.raises(ValueError, match="BinaryConv2d"):
        filters.filter_repetition(bnnlib.mnist_mlp(hidden=8))
