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
        ("table1_mnist_torch7", 0.0140, False, "reproduced"),  # at most the paper's
        ("table1_mnist_torch7", 0.0141, False, "not reproduced"),
        ("table1_mnist_torch7", 0.0100, True, "reduced run"),  # reduced wins
        ("memory_ratio", 31.8, False, "reproduced"),  # within 1%
        ("memory_ratio", 31.0, False, "not reproduced"),
        ("gpu_xnor_over_cublas", 3.4, False, "reproduced"),  # at least the paper's
        ("gpu_xnor_over_cublas", 3.3, False, "not reproduced"),
        ("energy_mac", 5.0, True, "computed from the paper's tables"),
    ],
)
def test_status(key, value, reduced, expected):
    assert paper.status(key, value, reduced=reduced) == expected


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
