"""bnnlib.repro.publish: a finished run becomes a committed result, checked packed."""

from __future__ import annotations

import json

import pytest
from test_train import write_tiny_npz

from bnnlib import inference, results
from bnnlib.repro import publish
from bnnlib.train import cli as train_cli


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("run")
    name = write_tiny_npz(tmp / "tiny.npz", n_train=120, n_test=60)
    argv = ["--preset", "torch7", "--dataset", name, "--hidden", "16", "--depth", "1"]
    argv += ["--epochs", "3", "--batch-size", "30", "--out", str(tmp / "run"), "--no-progress"]
    history = train_cli.main(argv)
    return tmp, argv, history


def test_publish_writes_history_run_and_a_checked_packed_model(finished_run, monkeypatch):
    tmp, argv, history = finished_run
    dest = tmp / "results" / "tiny_run"
    run = publish.publish(tmp / "run", dest)
    assert {p.name for p in dest.iterdir()} == {"history.json", "run.json", "model.safetensors"}
    assert run["command"] == "python -m bnnlib.train " + " ".join(argv)
    assert run["schedule"].startswith("3 epochs, batch 30, shift_adamax_torch7, LR 0.015625")
    assert run["hardware"].startswith("CPU: ") and run["seed"] == 0
    check = run["packed_check"]
    # The packed model makes exactly the float model's errors, and the history's at best.
    assert check["errors_packed"] == check["errors_float_model"] == check["errors_history"]
    assert check["errors_history"] == round(history.test_error_at_best * check["test_images"])
    assert json.loads((dest / "history.json").read_text())["best_epoch"] == history.best_epoch
    # The committed run reads back, and the evaluation command agrees with it.
    monkeypatch.setenv(results.ENV_VAR, str(tmp / "results"))
    committed = results.load_run("tiny_run")
    assert committed.test_error == history.test_error_at_best
    assert committed.model_path == dest / "model.safetensors"
    out = inference.main([str(committed.model_path), "--dataset", argv[3], "--json"])
    assert out["errors"] == check["errors_packed"]
    # Publishing the same run again is harmless; another run may not overwrite it.
    assert publish.publish(tmp / "run", dest)["argv"] == run["argv"]
    other = dict(json.loads((dest / "run.json").read_text()), argv=["--model", "x"])
    (dest / "run.json").write_text(json.dumps(other))
    with pytest.raises(ValueError, match="holds another run"):
        publish.publish(tmp / "run", dest)


def test_publish_cli_refuses_a_folder_without_checkpoint(tmp_path, capsys):
    with pytest.raises(SystemExit):
        publish.main([str(tmp_path), str(tmp_path / "dest")])
    assert "no checkpoint.pt" in capsys.readouterr().err


def test_command_names_each_resume_that_extended_the_run():
    argv = ["--preset", "torch7", "--epochs", "80", "--seed", "0", "--out", "runs/t7"]
    config = {"argv": argv, "extended": [{"from_epochs": 80, "to_epochs": 120, "at_epoch": 80}]}
    cmd = publish.command_line(config)
    assert cmd.startswith("python -m bnnlib.train --preset torch7 --epochs 80 --seed 0")
    assert "&& python -m bnnlib.train --preset torch7 --epochs 120 --seed 0 --out runs/t7 " in cmd
    assert "--resume  # resumed at epoch 80, 80 -> 120 epochs" in cmd
    recorded = [*argv[:3], "120", "--resume"]  # the resume's own command line, when recorded
    config["extended"][0]["argv"] = recorded
    assert (
        publish.command_line(config)
        .split(" && ")[1]
        .startswith("python -m bnnlib.train " + " ".join(recorded) + "  #")
    )
    assert publish.command_line({"argv": argv}) == "python -m bnnlib.train " + " ".join(argv)
