"""bnnlib.repro.reproduce: the one-command GPU reproduction, rehearsed on the CPU."""

from __future__ import annotations

import json

import pytest

from bnnlib import data
from bnnlib.repro import reproduce


def _have(name: str) -> bool:
    try:
        data.load_splits(name, download=False)
    except (data.DataNotFoundError, ValueError, FileNotFoundError):
        return False
    return True


needs_data = pytest.mark.skipif(
    not (_have("mnist") and _have(reproduce.SUBSET)),
    reason="needs MNIST and the CIFAR-10 subset under $BNN_DATA_DIR",
)


@needs_data
def test_rehearsal_writes_everything(tmp_path):
    out = tmp_path / "out"
    s = reproduce.main(["--out", str(out), "--rehearse", "--device", "cpu", "--max-minutes", "10"])
    assert {p.name for p in out.iterdir()} == {
        "reproduce.log", "summary.json", "mnist_mlp", "cifar10_convnet", "train",
    }  # fmt: skip
    for stage in ("mnist_mlp", "cifar10_convnet"):
        names = {p.name for p in (out / stage).iterdir()}
        assert names == {"history.json", "run.json", "model.safetensors"}
        st = s["stages"][stage]
        assert st["epochs_done"] == 1 and st["epochs_per_second"] > 0
        assert st["ms_per_step_training"] > 0 and st["stopped"] is None
        assert st["device_vs_packed"]["predictions_differing"] == 0
        check = st["packed_check"]
        assert check["errors_packed"] == check["errors_float_model"]
        assert "--recipe paper" in st["command"] and "--max-time" in st["command"]
    mnist, cifar = s["stages"]["mnist_mlp"], s["stages"]["cifar10_convnet"]
    assert mnist["data"].startswith("MNIST: 1,000 train") and "reduced run" in mnist["data"]
    assert "--hidden 32" in mnist["command"]
    # The offline subset is labelled as such (the data root of the tests has no full CIFAR-10).
    assert cifar["dataset_label"].startswith("CIFAR-10 subset")
    assert cifar["data"].startswith("CIFAR-10 subset")
    history = json.loads((out / "mnist_mlp" / "history.json").read_text())
    assert history["config"]["recipe"] == "paper" and history["config"]["lr_end"] == 3e-7
    assert history["config"]["dropout_in"] == 0.2 and history["config"]["dropout_hidden"] == 0.5
    assert json.loads((out / "summary.json").read_text()) == s
    log = (out / "reproduce.log").read_text()
    assert "epoch 1/1" in log and "reproduce: done" in log
    with pytest.raises(SystemExit):  # an output folder is never reused
        reproduce.main(["--out", str(out), "--rehearse", "--device", "cpu"])


@needs_data
def test_a_spent_budget_skips_the_convnet(tmp_path):
    out = tmp_path / "out"
    argv = ["--out", str(out), "--rehearse", "--device", "cpu", "--max-minutes", "0.01"]
    s = reproduce.main([*argv, "--reserve-minutes", "0", "--min-cifar-minutes", "0"])
    assert s["stages"]["mnist_mlp"]["max_time_s"] == 1
    assert s["stages"]["cifar10_convnet"]["skipped"].startswith("no time left")
    assert (out / "mnist_mlp" / "model.safetensors").exists()
    assert not (out / "cifar10_convnet").exists()


def test_cifar10_falls_back_to_the_subset(tmp_path):
    assert reproduce.cifar10_dataset(tmp_path) == reproduce.SUBSET
    assert data.label(reproduce.SUBSET).startswith("CIFAR-10 subset")


@pytest.mark.parametrize(
    "flag, value",
    [
        ("--max-minutes", "-1"),
        ("--max-minutes", "0"),
        ("--reserve-minutes", "-0.5"),
        ("--max-minutes", "nan"),
    ],
)
def test_bad_minutes_are_refused(tmp_path, capsys, flag, value):
    with pytest.raises(SystemExit):
        reproduce.main(["--out", str(tmp_path / "r"), flag, value])
    assert f"argument {flag}: must be a finite number" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_an_unwritable_out_is_one_error(capsys):
    with pytest.raises(SystemExit):
        reproduce.main(["--out", "/proc/bnnlib-cannot-write/r", "--rehearse"])
    assert "cannot write to --out /proc/bnnlib-cannot-write/r" in capsys.readouterr().err
