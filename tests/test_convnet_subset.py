"""The committed CIFAR-10-subset ConvNet runs (binary and its float twin): what a reviewer checks.

Both were trained by ``make convnet-subset`` with one schedule fixed before they ran; the BNN is
committed packed. These tests read the committed files only (and the subset's test images)."""

from __future__ import annotations

import pytest

from bnnlib import data, inference, results
from bnnlib.nn.layers import BinaryConv2d
from bnnlib.train.config import RunConfig

BNN, FLOAT = "cifar10_subset_convnet", "cifar10_subset_convnet_float"
needs_subset = pytest.mark.skipif(
    not data.available("cifar10_subset"), reason="the CIFAR-10 subset is not in the data root"
)


def committed(name: str) -> results.CommittedRun:
    run = results.load_run(name)
    assert run is not None, f"results/{name}/ is not committed"
    return run


def test_both_runs_ran_the_fixed_schedule_and_differ_only_in_binarization():
    bnn, flt = committed(BNN), committed(FLOAT)
    for run in (bnn, flt):
        c = run.config
        assert (c["model"], c["dataset"], c["width"], c["fc_width"]) == (
            "cifar10_convnet", "cifar10_subset", 0.5, 1.0,
        )  # fmt: skip
        assert len(run.epochs) == c["epochs"] >= 50 and not run.run.get("stopped_early")
        assert run.run["selection"] == "best validation error; ties: the later epoch"
        assert run.n_test == 1017 and "subset" in run.run["data"]
        assert run.best_epoch == run.run["best_epoch"]
    assert bnn.config["binary"] is True and flt.config["binary"] is False
    assert {**bnn.config, "binary": None} == {**flt.config, "binary": None}
    assert bnn.model_path is not None and flt.model_path is None


def test_the_packed_convnet_has_the_shape_its_configuration_builds():
    run = committed(BNN)
    packed = inference.load(run.model_path)
    net = RunConfig.from_dict(run.config).build_model(tuple(packed.input_shape), 10)
    convs = [tuple(m.weight.shape) for m in net.modules() if isinstance(m, BinaryConv2d)]
    assert [tuple(w.shape) for _, w in packed.binary_conv_weights()] == convs
    assert [c[0] for c in convs] == [64, 64, 128, 128, 256, 256]


@needs_subset
def test_packed_predictions_equal_the_float_models_on_all_1017_test_images():
    run = committed(BNN)
    test = data.load("cifar10_subset", split="test")
    pred = inference.load(run.model_path).predict(data.to_uint8(test.X))
    assert len(pred) == len(run.float_predictions) == 1017
    assert pred.tolist() == run.float_predictions
    assert int((pred != test.y).sum()) == run.test_errors


@needs_subset
def test_the_inference_command_recomputes_the_historys_test_error(capsys):
    from bnnlib.inference import cli

    run = committed(BNN)
    cli.main([str(run.model_path), "--dataset", "cifar10_subset"])
    out = capsys.readouterr().out
    assert f"({run.test_errors} / 1017)" in out
