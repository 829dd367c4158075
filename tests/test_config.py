"""bnnlib.train.config: the run configuration is the record a run is rebuilt from."""

from __future__ import annotations

import json

import pytest
import torch
from test_train import write_tiny_npz

from bnnlib import data, inference, results
from bnnlib.nn import models
from bnnlib.repro import publish
from bnnlib.train import cli as train_cli
from bnnlib.train import upgrade
from bnnlib.train.config import CONFIG_KEY, RunConfig, RunConfigFormatError


def test_round_trip_and_checks():
    c = train_cli.config_from_argv(["--preset", "torch7"])
    assert RunConfig.from_dict(json.loads(json.dumps(c.to_dict()))) == c
    assert (c.hidden, c.epochs, c.optimizer, c.glorot_scale) == (
        2048,
        100,
        "shift_adamax_torch7",
        "torch7",
    )
    with pytest.raises(RunConfigFormatError, match=r"unknown run configuration keys \['colour'\]"):
        RunConfig.from_dict({**c.to_dict(), "colour": "red"})
    with pytest.raises(RunConfigFormatError, match=r"without \['model'\]"):
        RunConfig.from_dict({k: v for k, v in c.to_dict().items() if k != "model"})
    with pytest.raises(RunConfigFormatError, match="epochs 0"):
        c.replace(epochs=0)
    with pytest.raises(RunConfigFormatError, match="optimizer 'sgd'"):
        c.replace(optimizer="sgd")
    with pytest.raises(RunConfigFormatError, match="JSON object"):
        RunConfig.from_dict(["mnist_mlp"])


def test_the_cli_and_the_config_build_the_same_model():
    c = train_cli.config_from_argv(["--model", "mnist_mlp", "--hidden", "24", "--depth", "2"])
    torch.manual_seed(0)
    a = c.build_model((1, 28, 28), 10)
    torch.manual_seed(0)
    b = models.mnist_mlp(hidden=24, depth=2, dropout_in=0.2, dropout_hidden=0.5)  # 1000 epochs
    assert str(a) == str(b)
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert ka == kb and torch.equal(va, vb)


def test_fc_width_keeps_the_convnets_dense_layers_wide_and_is_checked():
    argv = ["--model", "cifar10_convnet", "--width", "0.5", "--fc-width", "1"]
    c = train_cli.config_from_argv(argv)
    net = c.build_model((3, 32, 32), 10)
    linears = [m for m in net.modules() if isinstance(m, torch.nn.Linear)]
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [m.out_features for m in linears] == [1024, 1024, 10]
    assert [m.out_channels for m in convs] == [64, 64, 128, 128, 256, 256]
    assert RunConfig.from_dict(json.loads(json.dumps(c.to_dict()))) == c
    with pytest.raises(RunConfigFormatError, match="only cifar10_convnet"):
        train_cli.config_from_argv(["--model", "mnist_mlp", "--fc-width", "1"])
    with pytest.raises(RunConfigFormatError, match="fc_width 0"):
        c.replace(fc_width=0)


def test_a_flag_default_changing_later_does_not_change_a_recorded_run(monkeypatch):
    c = train_cli.config_from_argv(["--model", "mnist_mlp", "--epochs", "5"])
    stored = c.to_dict()
    monkeypatch.setitem(train_cli.SHORT_RECIPE, "lr_end_ratio", 0.5)  # a new default
    assert train_cli.config_from_argv(["--model", "mnist_mlp", "--epochs", "5"]) != c
    assert RunConfig.from_dict(stored) == c  # the run still rebuilds as it trained


@pytest.fixture()
def old_style_run(tmp_path):
    """A run folder as bnnlib wrote it before RunConfig: history.config has argv only."""
    name = write_tiny_npz(tmp_path / "tiny.npz", n_train=120, n_test=60)
    argv = ["--model", "mnist_mlp", "--dataset", name, "--hidden", "16", "--depth", "1"]
    argv += ["--epochs", "2", "--batch-size", "30", "--out", str(tmp_path / "run"), "--no-progress"]
    train_cli.main(argv)
    path = tmp_path / "run" / "history.json"
    history = json.loads(path.read_text())
    del history["config"][CONFIG_KEY]
    path.write_text(json.dumps(history))
    return tmp_path, argv


def test_an_old_run_is_refused_until_upgraded_once(old_style_run, capsys):
    tmp, argv = old_style_run
    with pytest.raises(RunConfigFormatError, match="python -m bnnlib.train.upgrade"):
        publish.publish(tmp / "run", tmp / "dest")
    assert upgrade.main([str(tmp / "run")]) == 0
    history = json.loads((tmp / "run" / "history.json").read_text())
    assert RunConfig.from_history(history["config"]) == train_cli.config_from_argv(argv)
    before = (tmp / "run" / "history.json").read_bytes()
    upgrade.upgrade(tmp / "run")  # twice: nothing changes
    assert (tmp / "run" / "history.json").read_bytes() == before
    run = publish.publish(tmp / "run", tmp / "dest")
    assert run["run_config"] == history["config"][CONFIG_KEY]
    assert run["packed_check"]["errors_packed"] == run["packed_check"]["errors_history"]


def test_upgrade_refuses_a_command_line_that_contradicts_the_history(old_style_run, capsys):
    tmp, _ = old_style_run
    path = tmp / "run" / "history.json"
    history = json.loads(path.read_text())
    history["config"]["hidden"] = 99
    path.write_text(json.dumps(history))
    with pytest.raises(SystemExit):
        upgrade.main([str(tmp / "run")])
    assert "does not give the recorded settings {'hidden': (99, 16)}" in capsys.readouterr().err
    assert CONFIG_KEY not in json.loads(path.read_text())["config"]


def test_the_committed_torch7_run_rebuilds_from_its_configuration():
    """Acceptance: the committed run's configuration rebuilds its architecture, and its packed
    model (the same layer shapes) makes the history's 140 test errors."""
    run = results.load_run(results.TORCH7_MNIST_RUN)
    if run is None:
        pytest.skip("results/torch7_mnist is not in this checkout")
    config = RunConfig.from_dict(run.run["run_config"])
    assert config == RunConfig.from_history(run.history["config"])
    assert (config.preset, config.epochs, config.seed, config.hidden) == ("torch7", 120, 0, 2048)
    net = config.build_model((1, 28, 28), 10)
    float_shapes = [tuple(p.shape) for n, p in net.named_parameters() if n.endswith("weight")]
    packed = inference.load(run.model_path)
    linear = [s for s in float_shapes if len(s) == 2]  # the Linear weights (out, in)
    assert [(lay.spec.out_features, lay.spec.in_features) for lay in packed.layers] == linear
    try:
        test = data.load("mnist", None, "test")
    except data.DataNotFoundError:
        pytest.skip("MNIST not in the data root")
    errors = int((packed.predict(test.X) != test.y).sum())
    assert errors == round(run.history["test_error_at_best"] * len(test)) == 140


def test_an_extended_run_records_its_new_length_in_its_configuration(tmp_path):
    name = write_tiny_npz(tmp_path / "tiny.npz", n_train=120, n_test=60)
    argv = ["--preset", "torch7", "--dataset", name, "--hidden", "16", "--depth", "1"]
    argv += ["--batch-size", "30", "--out", str(tmp_path / "run"), "--no-progress"]
    train_cli.main([*argv, "--epochs", "2"])
    train_cli.main([*argv, "--epochs", "3", "--resume"])
    config = json.loads((tmp_path / "run" / "history.json").read_text())["config"]
    assert config["extended"][0]["to_epochs"] == 3
    assert RunConfig.from_history(config).epochs == 3
