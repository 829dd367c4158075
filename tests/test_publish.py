"""bnnlib.repro.publish: a finished run becomes a committed result, checked packed."""

from __future__ import annotations

import json
from pathlib import Path

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


# ------------------------------------------------------------------ nothing lost, nothing mixed


def _tiny_run(tmp, name="run", epochs="3", extra=()):
    data_name = write_tiny_npz(tmp / "tiny.npz", n_train=120, n_test=60)
    argv = ["--preset", "torch7", "--dataset", data_name, "--hidden", "16", "--depth", "1"]
    argv += ["--epochs", epochs, "--batch-size", "30", "--out", str(tmp / name), "--no-progress"]
    train_cli.main([*argv, *extra])
    return tmp / name


def test_a_second_publish_into_the_same_destination_is_refused_while_one_runs(
    finished_run, tmp_path
):
    import subprocess
    import sys

    tmp, _, _ = finished_run
    dest = tmp_path / "dest"
    code = (
        "import sys, time; from bnnlib.files import FileLock; "
        "FileLock(sys.argv[1]).acquire(); print('held', flush=True); time.sleep(60)"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", code, str(tmp_path / ".dest.lock")],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(publish.PublishError, match="another publish into"):
            publish.publish(tmp / "run", dest)
        assert not dest.exists()
    finally:
        holder.kill()
        holder.wait()
    publish.publish(tmp / "run", dest)  # the holder died: its lock went with it
    assert (dest / "run.json").exists()


def test_a_failure_mid_publish_leaves_the_old_destination_whole(
    finished_run, tmp_path, monkeypatch
):
    tmp, _, _ = finished_run
    dest = tmp_path / "dest"
    publish.publish(tmp / "run", dest)
    before = {p.name: p.read_bytes() for p in dest.iterdir()}

    def full_disk(path, data):
        if Path(path).name == "run.json":
            raise OSError(28, "No space left on device")
        return real(path, data)

    real = publish.atomic_write
    monkeypatch.setattr(publish, "atomic_write", full_disk)
    with pytest.raises(OSError, match="No space left"):
        publish.publish(tmp / "run", dest)
    assert {p.name: p.read_bytes() for p in dest.iterdir()} == before  # untouched
    assert [p.name for p in tmp_path.iterdir()] == ["dest"]  # no staging folder left

    monkeypatch.setattr(publish, "atomic_write", real)

    def killed(*a, **k):
        raise KeyboardInterrupt  # as a kill between the model and run.json would

    monkeypatch.setattr(publish.inference, "export", killed)
    with pytest.raises(KeyboardInterrupt):
        publish.publish(tmp / "run", tmp_path / "new")
    assert not (tmp_path / "new").exists()


def test_a_folder_without_run_json_is_not_a_committed_run(finished_run, tmp_path, monkeypatch):
    tmp, _, _ = finished_run
    publish.publish(tmp / "run", tmp_path / "r")
    (tmp_path / "r" / "run.json").unlink()
    monkeypatch.setenv(results.ENV_VAR, str(tmp_path))
    assert results.load_run("r") is None


def test_empty_or_file_destinations_are_refused(finished_run, tmp_path, capsys):
    tmp, _, _ = finished_run
    with pytest.raises(SystemExit):
        publish.main([str(tmp / "run"), ""])
    assert "DEST is empty" in capsys.readouterr().err
    (tmp_path / "f").write_text("x")
    with pytest.raises(publish.PublishError, match="is a file"):
        publish.publish(tmp / "run", tmp_path / "f")


def test_a_history_the_packed_check_contradicts_is_refused(finished_run, tmp_path):
    tmp, _, _ = finished_run
    run = tmp_path / "run"
    import shutil

    shutil.copytree(tmp / "run", run)
    history = json.loads((run / "history.json").read_text())
    for r in history["epochs"]:  # another run's errors, same shape
        r["test_error"] = min(1.0, r["test_error"] + 0.1)
    (run / "history.json").write_text(json.dumps(history))
    with pytest.raises(publish.PublishError, match="the history says"):
        publish.publish(run, tmp_path / "dest")
    assert not (tmp_path / "dest").exists()


def test_unfinished_runs_are_refused_or_labelled(tmp_path, capsys):
    run = _tiny_run(tmp_path, extra=["--max-time", "1e-9"])  # stops after its first epoch
    with pytest.raises(publish.PublishError, match="stopped early"):
        publish.publish(run, tmp_path / "d1")
    out = publish.publish(run, tmp_path / "d1", allow_stopped=True)
    assert out["stopped_early"].startswith("time limit") and out["schedule"].startswith("1 of 3")
    history = json.loads((run / "history.json").read_text())
    history["stopped"] = None  # as a run still training, killed, or gone non-finite
    (run / "history.json").write_text(json.dumps(history))
    with pytest.raises(publish.PublishError, match="1 of 3 epochs and did not stop cleanly"):
        publish.publish(run, tmp_path / "d2", allow_stopped=True)


def test_train_refuses_an_empty_out_and_says_when_nothing_is_saved(tmp_path, capsys):
    data_name = write_tiny_npz(tmp_path / "tiny.npz", n_train=120, n_test=60)
    argv = ["--model", "mnist_mlp", "--dataset", data_name, "--hidden", "8", "--epochs", "1"]
    with pytest.raises(SystemExit):
        train_cli.main([*argv, "--out", ""])
    assert "--out is empty" in capsys.readouterr().err
    train_cli.main([*argv, "--no-progress"])
    assert "no --out" in capsys.readouterr().err


def test_the_command_is_shell_quoted():
    import shlex

    argv = ["--preset", "torch7", "--out", "runs/my run", "--dataset", "npz:a b.npz"]
    cmd = publish.command_line({"argv": argv})
    assert shlex.split(cmd) == ["python", "-m", "bnnlib.train", *argv]


def test_a_truncated_history_names_its_file(finished_run, tmp_path, capsys):
    import shutil

    tmp, _, _ = finished_run
    run = tmp_path / "run"
    shutil.copytree(tmp / "run", run)
    text = (run / "history.json").read_text()
    (run / "history.json").write_text(text[: len(text) // 2])
    with pytest.raises(SystemExit):
        publish.main([str(run), str(tmp_path / "dest")])
    err = capsys.readouterr().err
    assert f"{run / 'history.json'}: not valid JSON" in err and "truncated" in err
    (run / "history.json").write_text('{"x": 1}')
    with pytest.raises(SystemExit):
        publish.main([str(run), str(tmp_path / "dest")])
    assert "is not a training history" in capsys.readouterr().err


def test_a_float_twin_is_published_without_a_packed_model(tmp_path, monkeypatch):
    """--float: no model file; run.json's float_check holds the float model's errors (equal to
    the history's) and its per-image predictions, which CommittedRun gives back."""
    run_dir = _tiny_run(tmp_path, extra=("--float",))
    dest = tmp_path / "results" / "tiny_float"
    run = publish.publish(run_dir, dest)
    assert {p.name for p in dest.iterdir()} == {"history.json", "run.json"}
    assert "packed_check" not in run and run["run_config"]["binary"] is False
    check = run["float_check"]
    assert check["errors_float_model"] == check["errors_history"]
    assert "errors_packed" not in check and len(check["predictions_float_model"]) == 60
    monkeypatch.setenv(results.ENV_VAR, str(tmp_path / "results"))
    committed = results.load_run("tiny_float")
    assert committed.model_path is None
    assert committed.float_predictions == [int(c) for c in check["predictions_float_model"]]
