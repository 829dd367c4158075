"""RunConfig as the one list of a run's settings (issue 31) and its strict reading, shared by
the training CLI, publish and upgrade (issue 32: items 5, 6, 10, 12, 16, 17, 18)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from test_train import write_tiny_npz
from test_train_hardening import cli_error, no_data

from bnnlib.nn import models, ste
from bnnlib.repro import publish
from bnnlib.train import cli as train_cli
from bnnlib.train import upgrade
from bnnlib.train.config import CONFIG_KEY, MAX_DEPTH, RunConfig, RunConfigFormatError
from bnnlib.train.optimizers import OPTIMIZERS


def _argv(name: str, out: Path, *extra: str) -> list[str]:
    return [
        "--model", "mnist_mlp", "--dataset", name, "--hidden", "16", "--depth", "1",
        "--epochs", "2", "--batch-size", "30", "--out", str(out), "--no-progress", *extra,
    ]  # fmt: skip


@pytest.fixture
def tiny(tmp_path):
    """(npz dataset name, run folder)."""
    return write_tiny_npz(tmp_path / "tiny.npz"), tmp_path / "run"


@pytest.fixture
def finished(tiny):
    """A finished two-epoch run: (dataset name, run folder)."""
    name, out = tiny
    train_cli.main(_argv(name, out))
    return name, out


def _edit(path: Path, change) -> None:
    d = json.loads(path.read_text())
    change(d)
    path.write_text(json.dumps(d))


# ------------------------------------------------------------------ issue 31: one list


def test_resume_with_another_estimator_is_refused_naming_it(tiny, capsys):
    """A setting added to RunConfig is compared on resume with no other edit (the issue's
    hardtanh run resumed as another estimator without a word)."""
    name, out = tiny
    train_cli.main(_argv(name, out, "--max-time", "1e-9"))  # stops after epoch 1 of 2
    before = (out / "checkpoint.pt").read_bytes()
    err = cli_error([*_argv(name, out), "--estimator", "identity", "--resume"], capsys)
    assert "cannot resume with different settings (estimator: checkpoint 'hardtanh' vs now " \
        "'identity')" in err  # fmt: skip
    assert (out / "checkpoint.pt").read_bytes() == before
    h = train_cli.main([*_argv(name, out), "--resume"])  # the same settings still resume
    assert len(h.epochs) == 2


def test_a_new_setting_is_one_field():
    """A field added to RunConfig is compared, defaults for older records, and round-trips."""
    extended = dataclasses.make_dataclass(
        "WithColour", [("colour", str, dataclasses.field(default="red"))],
        bases=(RunConfig,), frozen=True,
    )  # fmt: skip
    c = extended(model="mnist_mlp", dataset="mnist", epochs=1, batch_size=10, lr_start=1e-3,
                 lr_end=1e-5)  # fmt: skip
    assert c.differences(c.replace(colour="blue")) == {"colour": ("red", "blue")}
    old = {k: v for k, v in c.to_dict().items() if k != "colour"}  # written before the field
    assert extended.from_dict(old) == c
    assert extended.from_dict(json.loads(json.dumps(c.to_dict()))) == c


def test_every_setting_has_its_flag():
    """The CLI's flags are complete against RunConfig's fields, None meaning not given."""
    args = train_cli.build_parser().parse_args([])
    fields = {f.name for f in dataclasses.fields(RunConfig)}
    flagged = {f for f in fields if hasattr(args, f)}
    assert fields - flagged == {"widths", *train_cli.PRESET_ONLY}  # widths: --hidden, --depth
    assert all(getattr(args, f) is None for f in flagged)  # nothing given: all None
    assert {"hidden", "depth"} <= set(vars(args))


def test_the_torch7_preset_resolves_as_before():
    c = train_cli.config_from_argv(["--preset", "torch7"])
    expected = {
        "model": "mnist_mlp", "dataset": "mnist", "epochs": 100, "batch_size": 100,
        "lr_start": 2.0**-6, "lr_end": 3e-7, "lr_halve_every": 20,
        "optimizer": "shift_adamax_torch7", "glorot_scale": "torch7", "recipe": "preset",
        "preset": "torch7", "widths": (2048, 2048, 2048), "width": 1.0, "fc_width": None,
        "dropout_in": 0.0, "dropout_hidden": 0.0, "batchnorm": "shift",
        "last_batchnorm": "standard", "bn_eps": 1e-5, "bn_momentum": 0.125,
        "estimator": "hardtanh", "stochastic_activations": True, "stochastic_weights": False,
        "binary": True, "seed": 0, "train_size": None, "eval_batch_size": None, "fast": None,
    }  # fmt: skip
    assert dataclasses.asdict(c) == expected


def test_registries_are_the_choices(monkeypatch):
    """The CLI offers what the registries hold; a new model is one registry entry, its paper
    schedule the CLI's defaults."""
    spec = models.MODELS["mnist_mlp"]
    schedule = {"dataset": "fashion_mnist", "epochs": 7, "batch_size": 20, "lr": (1e-2, 1e-4)}
    monkeypatch.setitem(models.MODELS, "small_mlp", dataclasses.replace(spec, schedule=schedule))
    c = train_cli.config_from_argv(["--model", "small_mlp", "--recipe", "paper"])
    assert (c.dataset, c.epochs, c.batch_size, c.lr_start, c.lr_end) == (
        "fashion_mnist", 7, 20, 1e-2, 1e-4,
    )  # fmt: skip
    assert "small_mlp" in train_cli.build_parser().format_help()
    for registry in (ste.ESTIMATORS, OPTIMIZERS, models.BATCHNORMS):
        for name in registry:  # every registered name trains a configuration
            key = {id(ste.ESTIMATORS): "estimator", id(OPTIMIZERS): "optimizer"}
            field = key.get(id(registry), "batchnorm")
            assert getattr(c.replace(**{field: name}), field) == name
    with pytest.raises(RunConfigFormatError, match="estimator 'no_such' \\(one of hardtanh"):
        c.replace(estimator="no_such")


def test_an_mlp_of_tapered_widths_is_one_field(tiny):
    name, out = tiny
    argv = [a for a in _argv(name, out) if a not in ("--depth", "1")]
    argv[argv.index("16")] = "12,8,4"
    h = train_cli.main(argv)
    config = RunConfig.from_history(h.config)
    assert config.widths == (12, 8, 4) and h.config["hidden"] == [12, 8, 4]
    net = config.build_model((1, 4, 4), 3)
    linears = [m for m in net.modules() if hasattr(m, "out_features")]
    assert [(m.in_features, m.out_features) for m in linears] == [
        (16, 12), (12, 8), (8, 4), (4, 3),
    ]  # fmt: skip
    assert RunConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config


def test_upgrade_rewrites_the_older_form_of_the_widths(finished):
    _, out = finished
    path = out / "history.json"

    def older(d):
        rc = d["config"][CONFIG_KEY]
        rc.pop("widths")
        rc.update(hidden=16, depth=1)

    _edit(path, older)
    config = RunConfig.from_history(json.loads(path.read_text())["config"])
    assert config.widths == (16,)
    assert upgrade.main([str(out)]) == 0
    assert json.loads(path.read_text())["config"][CONFIG_KEY]["widths"] == [16]


# ------------------------------------------------------------------ issue 32, item 5: types


@pytest.mark.parametrize(
    "key, value",
    [
        ("binary", "false"), ("stochastic_weights", 1), ("epochs", True), ("seed", 1.5),
        ("widths", [16, True]), ("glorot_scale", "yes"), ("lr_start", "0.1"),
        ("batch_size", 1e3),
    ],
)  # fmt: skip
def test_a_run_configuration_is_read_strictly(key, value):
    c = train_cli.config_from_argv(["--model", "mnist_mlp"]).to_dict()
    with pytest.raises(RunConfigFormatError, match=f"{key} "):
        RunConfig.from_dict({**c, key: value})


def test_publish_and_upgrade_share_the_strict_reading(finished, tmp_path):
    _, out = finished
    _edit(out / "history.json", lambda d: d["config"][CONFIG_KEY].update(binary="false"))
    with pytest.raises(RunConfigFormatError, match="binary 'false'"):
        publish.publish(out, tmp_path / "dest")
    assert not (tmp_path / "dest").exists()
    with pytest.raises(SystemExit):
        upgrade.main([str(out)])


# ------------------------------------------------- items 6 and 17: publish cross-checks


def test_publish_refuses_a_run_config_that_is_not_the_runs_record(finished, tmp_path):
    _, out = finished
    _edit(out / "history.json", lambda d: d["config"][CONFIG_KEY].update(seed=5))
    with pytest.raises(publish.PublishError, match="seed: recorded 0 vs run_config 5"):
        publish.publish(out, tmp_path / "dest")
    assert not (tmp_path / "dest").exists()


def test_publish_refuses_a_run_config_that_is_not_the_checkpoints(finished, tmp_path, capsys):
    _, out = finished

    def wider(d):  # the record and the configuration agree, the checkpoint does not
        d["config"][CONFIG_KEY]["widths"] = [32]
        d["config"]["hidden"] = 32

    _edit(out / "history.json", wider)
    with pytest.raises(SystemExit):
        publish.main([str(out), str(tmp_path / "dest")])
    err = capsys.readouterr().err
    assert "trained with another run configuration" in err and "widths" in err
    assert "Traceback" not in err and not (tmp_path / "dest").exists()


# ------------------------------------------------- item 12: sizes bounded before allocation


def test_a_huge_depth_is_refused_before_anything_is_loaded(tmp_path, monkeypatch, capsys):
    no_data(monkeypatch)
    err = cli_error(_argv("mnist", tmp_path / "r", "--depth", "1000000"), capsys)
    assert f"at most {MAX_DEPTH}" in err


def test_a_huge_width_is_refused_before_allocation(tiny, capsys):
    name, out = tiny
    argv = _argv(name, out)
    argv[argv.index("16")], argv[argv.index("--depth") + 1] = "2000000", "2"  # 4e12 parameters
    err = cli_error(argv, capsys)
    assert "parameters: training needs about" in err and "GiB, this machine has" in err


# ------------------------------------------------- item 16: ordinary flags, one clear error


def test_batch_size_one_is_refused_for_batch_norm(tmp_path, monkeypatch, capsys):
    no_data(monkeypatch)
    err = cli_error(_argv("mnist", tmp_path / "r", "--batch-size", "1"), capsys)
    assert "batch_size 1 (at least 2: batch norm" in err


@pytest.mark.parametrize("device", ["tpu", "cuda", "cuda:7", "gpu0"])
def test_a_device_this_machine_lacks_is_one_clear_error(device, tmp_path, monkeypatch, capsys):
    n = torch.cuda.device_count()
    if device.startswith("cuda") and n > int(device.partition(":")[2] or 0):
        pytest.skip(f"this machine has {device}")
    no_data(monkeypatch)
    err = cli_error(_argv("mnist", tmp_path / "r", "--device", device), capsys)
    assert f"--device {device}" in err and "Traceback" not in err
    assert not (tmp_path / "r").exists()  # refused before the folder was claimed


# ------------------------------------------------- item 10: success only for work done


def test_resuming_a_finished_run_without_its_history_writes_it_again(finished, capsys):
    name, out = finished
    history = json.loads((out / "history.json").read_text())
    (out / "history.json").unlink()
    train_cli.main([*_argv(name, out), "--resume"])
    assert "history.json was missing: written again" in capsys.readouterr().err
    assert json.loads((out / "history.json").read_text())["epochs"] == history["epochs"]


def test_upgrade_of_a_help_command_line_is_an_error_naming_the_file(finished, capsys):
    _, out = finished
    path = out / "history.json"

    def helped(d):
        del d["config"][CONFIG_KEY]
        d["config"]["argv"] = ["--help"]

    _edit(path, helped)
    before = path.read_bytes()
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        upgrade.main([str(out)])
    assert e.value.code != 0
    said = capsys.readouterr()
    assert str(path) in said.err and "help" in said.err and "usage" not in said.out
    assert path.read_bytes() == before


# ------------------------------------------------- item 18: no half-upgraded folder


@pytest.mark.parametrize("run_json", ["[1]", "not json", '"text"'])
def test_upgrade_of_odd_files_writes_nothing(finished, capsys, run_json):
    _, out = finished
    path = out / "history.json"
    _edit(path, lambda d: d["config"].pop(CONFIG_KEY))
    (out / "run.json").write_text(run_json)
    before = path.read_bytes()
    with pytest.raises(SystemExit):
        upgrade.main([str(out)])
    assert "run.json" in capsys.readouterr().err
    assert path.read_bytes() == before and (out / "run.json").read_text() == run_json


@pytest.mark.parametrize("history", ["[1]", '{"config": [1]}', '{"config": {"argv": 1}}'])
def test_upgrade_of_an_odd_history_is_one_clear_error(tmp_path, capsys, history):
    (tmp_path / "history.json").write_text(history)
    with pytest.raises(SystemExit):
        upgrade.main([str(tmp_path)])
    err = capsys.readouterr().err
    assert "history.json" in err and "Traceback" not in err
