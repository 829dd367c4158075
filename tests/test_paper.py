"""bnnlib.paper: the paper's figures in one place, the claims and their status."""

from __future__ import annotations

import pytest

from bnnlib import paper
from bnnlib.train import cli as train_cli


def test_table1_figures():
    assert paper.TABLE1["BNN (Torch7)"]["mnist"] == 0.0140
    assert paper.TABLE1["BNN (Theano)"] == {"mnist": 0.0096, "svhn": 0.0280, "cifar10": 0.1140}


def test_schedules_are_the_trainings_defaults():
    assert train_cli.PAPER_DEFAULTS == paper.SCHEDULES


def test_claim_keys_unique_and_statuses_known():
    keys = [c.key for c in paper.CLAIMS]
    assert len(keys) == len(set(keys))
    assert all(c.missing in paper.STATUSES for c in paper.CLAIMS)
    with pytest.raises(KeyError, match="no claim 'x'"):
        paper.claim("x")


@pytest.mark.parametrize(
    "key, value, reduced, expected",
    [
        ("table1_mnist_torch7", 0.0100, True, "reduced run"),  # reduced wins
        ("memory_ratio", 31.8, False, "reproduced"),  # within 1%
        ("memory_ratio", 31.0, False, "not reproduced"),
        ("gpu_xnor_over_cublas", 3.4, False, "reproduced"),  # at least the paper's
        ("gpu_xnor_over_cublas", 3.3, False, "not reproduced"),
        ("energy_mac", 5.0, True, "computed"),
    ],
)
def test_status(key, value, reduced, expected):
    assert paper.status(key, value, reduced=reduced) == expected


def test_an_error_needs_its_interval():
    with pytest.raises(ValueError, match="pass its 95% interval"):
        paper.status("table1_mnist_torch7", 0.0140, reduced=False)


def test_reduced_reasons_trip_on_units_epochs_lr_and_data():
    full = {"num_epochs": 1000, "lr_start": 3e-3, "lr_end": 3e-7, "batch_size": 100}
    assert paper.reduced_reasons("mnist_mlp", hidden=4096, **full) == []
    assert paper.reduced_reasons("mnist_mlp", hidden=1024, **full) == [
        "1024 hidden units (paper: 4096)"
    ]
    assert "10 epochs (paper: 1000)" in paper.reduced_reasons(
        "mnist_mlp", **{**full, "num_epochs": 10}
    )
    lr = paper.reduced_reasons("mnist_mlp", **{**full, "lr_end": 3e-5})
    assert lr == ["LR 0.003 -> 3e-05 (paper: 0.003 -> 3e-07)"]
    assert paper.reduced_reasons("mnist_mlp", dropout_hidden=0.0, **full) == [
        "hidden dropout 0 (paper: 0.5)"
    ]
    assert paper.reduced_reasons("mnist_mlp", data_reduced=True, **full) == [
        "fewer images than the paper's split"
    ]
    conv = {"num_epochs": 500, "lr_start": 1e-3, "lr_end": 3e-7}
    assert paper.reduced_reasons("cifar10_convnet", width=0.125, **conv) == [
        "width 0.125 of the paper's units"
    ]


def test_error_interval_one_seed_is_the_wilson_interval():
    from scipy.stats import binomtest

    iv = paper.error_interval([140], 10_000)
    ci = binomtest(140, 10_000).proportion_ci(confidence_level=0.95, method="wilson")
    assert iv.value == 0.014
    assert iv.low == pytest.approx(ci.low, abs=1e-12) and iv.high == pytest.approx(
        ci.high, abs=1e-12
    )
    assert iv.contains(0.0140) and "Wilson" in iv.method
    # 1.40% within about [1.19%, 1.65%]: 1.63% lies inside, 1.70% outside.
    assert iv.contains(0.0163) and not iv.contains(0.0170)


def test_error_interval_seeds_adds_their_spread():
    one = paper.error_interval([140], 10_000)
    two = paper.error_interval([140, 160], 10_000)
    assert two.value == pytest.approx(0.015)
    # variance p(1-p)/n + s^2/k with p = 0.015, s^2 = var(0.014, 0.016) = 2e-6, k = 2; t on the
    # Welch-Satterthwaite degrees of freedom (scipy as the oracle)
    from scipy.stats import t

    a, b = 0.015 * 0.985 / 10_000, 2e-6 / 2
    df = (a + b) ** 2 / (b**2 / 1)
    half = t.ppf(0.975, df) * (a + b) ** 0.5
    assert (two.low, two.high) == pytest.approx((0.015 - half, 0.015 + half), abs=1e-12)
    assert 2.3 < t.ppf(0.975, df) < 2.6  # not 1.96: one degree of freedom in the seeds' spread
    wide = paper.error_interval([100, 200], 10_000)  # the spread dominates: t near 12.7
    assert wide.high - wide.value > 8 * (0.015 * 0.985 / 10_000 + 0.005**2) ** 0.5  # t > 8
    assert two.high - two.low > one.high - one.low
    with pytest.raises(ValueError, match="0 <= errors <= n"):
        paper.error_interval([10_001], 10_000)
    with pytest.raises(ValueError):
        paper.error_interval([], 10_000)
    with pytest.raises(ValueError, match="whole counts"):
        paper.error_interval([140.5], 10_000)


def test_gap_interval_paired_and_unpaired():
    # 150 vs 140 errors on 10,000 images; 50 images differ between the two models.
    paired = paper.gap_interval(150, 140, 10_000, discordant=50)
    var = (50 - 10**2 / 10_000) / 10_000**2
    assert paired.value == pytest.approx(0.001)
    assert paired.high - paired.value == pytest.approx(paper.Z95 * var**0.5)
    unpaired = paper.gap_interval(150, 140, 10_000)
    assert unpaired.high - unpaired.low > paired.high - paired.low
    with pytest.raises(ValueError, match="discordant"):
        paper.gap_interval(150, 140, 10_000, discordant=5)  # fewer than the 10 they differ by
    with pytest.raises(ValueError, match="discordant"):
        paper.gap_interval(150, 140, 10_000, discordant=51)  # b + c and b - c: same parity


@pytest.mark.parametrize(
    "errors, expected",
    [([140], "consistent"), ([175], "not reproduced"), ([100], "better than the paper"),
     ([141], "consistent"), ([140, 141, 139, 140, 140], "consistent")],  # never "reproduced"
)  # fmt: skip
def test_status_with_an_interval(errors, expected):
    iv = paper.error_interval(errors, 10_000)
    assert paper.status("table1_mnist_torch7", iv.value, False, interval=iv) == expected


def test_no_loss_claims_with_the_gap_interval():
    small = paper.gap_interval(150, 140, 10_000, discordant=50)  # +0.1 points, interval spans 0
    assert paper.status("shift_bn_no_loss", small.value, False, interval=small) == "consistent"
    big = paper.gap_interval(300, 140, 10_000, discordant=200)
    assert paper.status("shift_bn_no_loss", big.value, False, interval=big) == "not reproduced"
    assert set(paper.STATUS_LEGEND) == set(paper.STATUSES)
