"""bnnlib.train hardened (issue 11): resume checks, run folders and their lock, input checks,
non-finite losses, checkpoint checksums and stale temporary files."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from test_train import _Stop, _stop_after, run, tiny_net, write_tiny_npz

from bnnlib import data
from bnnlib import train as T
from bnnlib.nn.losses import square_hinge
from bnnlib.train import cli as train_cli
from bnnlib.train import loop, runfolder
from bnnlib.train import run as train_run


def _argv(name: str, out: Path, *extra: str) -> list[str]:
    argv = ["--model", "mnist_mlp", "--dataset", name, "--hidden", "16", "--depth", "1"]
    return [
        *argv,
        "--epochs",
        "2",
        "--batch-size",
        "30",
        "--out",
        str(out),
        "--no-progress",
        *extra,
    ]


@pytest.fixture
def tiny(tmp_path):
    """(npz dataset name, run folder)."""
    return write_tiny_npz(tmp_path / "tiny.npz"), tmp_path / "run"


def cli_error(argv, capsys) -> str:
    with pytest.raises(SystemExit) as e:
        train_cli.main(argv)
    assert e.value.code != 0
    return capsys.readouterr().err


def no_data(monkeypatch):
    """Fail the test if the CLI gets as far as loading data."""

    def refuse(*a, **kw):
        raise AssertionError("the data were loaded: the check came too late")

    monkeypatch.setattr(data, "load_splits", refuse)


# ------------------------------------------------------------------ 1. resume compares the run


@pytest.mark.parametrize(
    "change, names",
    [
        (["--hidden", "8"], ["hidden"]),
        (["--depth", "2"], ["depth"]),
        (["--float"], ["float"]),
        (["--batchnorm", "shift"], ["batchnorm"]),
        (["--stochastic"], ["stochastic_activations", "stochastic_weights"]),
        (["--dropout-in", "0.1"], ["dropout_in"]),
        (["--train-size", "60"], ["n_train"]),
        (["--seed", "3"], ["seed"]),
    ],
)
def test_cli_resume_with_another_model_setting_is_refused(tiny, capsys, change, names):
    name, out = tiny
    train_cli.main(_argv(name, out, "--max-time", "1e-9"))  # stops after epoch 1 of 2
    before = (out / "checkpoint.pt").read_bytes()
    err = cli_error([*_argv(name, out), *change, "--resume"], capsys)
    assert "cannot resume" in err
    for key in names:
        assert f"{key}: checkpoint " in err
    assert (out / "checkpoint.pt").read_bytes() == before
    assert len(json.loads((out / "history.json").read_text())["epochs"]) == 1


def test_cli_resume_on_another_dataset_is_refused(tiny, tmp_path, capsys):
    name, out = tiny
    train_cli.main(_argv(name, out, "--max-time", "1e-9"))
    other = write_tiny_npz(tmp_path / "other.npz")
    err = cli_error([*_argv(other, out), "--resume"], capsys)
    assert "cannot resume" in err and "dataset: checkpoint" in err
    assert json.loads((out / "history.json").read_text())["config"]["dataset"] == name


def test_cli_resume_with_the_same_settings_continues(tiny):
    name, out = tiny
    train_cli.main(_argv(name, out, "--max-time", "1e-9"))
    h = train_cli.main(
        [*_argv(name, out), "--resume", "--max-time", "1e6", "--eval-batch-size", "7"]
    )
    assert [r["epoch"] for r in h.epochs] == [1, 2]  # argv, max time, eval batch: not compared


def test_cli_resume_without_a_checkpoint_is_an_error(tiny, capsys):
    name, out = tiny
    err = cli_error([*_argv(name, out), "--resume"], capsys)
    assert "no checkpoint.pt" in err and "without --resume" in err
    assert not out.exists()  # nothing created


def test_fit_resume_without_a_checkpoint_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing to resume"):
        run(tiny_net(), epochs=1, checkpoint=tmp_path / "none.pt", resume=True)
    with pytest.raises(ValueError, match="resume=True needs a checkpoint"):
        run(tiny_net(), epochs=1, resume=True)


def test_fit_resume_with_another_architecture_names_it(tmp_path):
    run(tiny_net(), epochs=1, checkpoint=tmp_path / "c.pt")
    torch.manual_seed(0)
    from bnnlib.nn import models

    wider = models.mnist_mlp(hidden=40, depth=2, in_features=16, num_classes=3)
    with pytest.raises(T.RunConfigError, match="other model"):
        run(wider, epochs=1, checkpoint=tmp_path / "c.pt", resume=True)


def test_missing_keys_of_an_old_config_count_as_their_defaults():
    old = {"num_epochs": 80, "seed": 0, "model": "mnist_mlp"}
    new = {**old, "depth": 3, "width": 1.0, "float": False, "argv": ["--resume"], "fast": True}
    assert T.config_differences(old, new) == {}
    assert T.config_differences(old, {**new, "depth": 2}) == {"depth": (3, 2)}


# The configuration of the long torch7 run started before these checks (runs/torch7_mnist):
# it must still resume with the same flags.
TORCH7_RUN_CONFIG = {
    "num_epochs": 80, "batch_size": 100, "lr_start": 0.015625, "lr_end": 3e-07,
    "optimizer": "shift_adamax_torch7", "glorot_scale": "torch7", "lr_halve_every": 20,
    "seed": 0, "world_size": 1, "dataset": "mnist", "n_train": 50000, "n_val": 10000,
    "n_test": 10000, "model": "mnist_mlp", "recipe": "preset", "preset": "torch7",
    "hidden": 2048, "dropout_in": 0.0, "batchnorm": "shift", "stochastic_activations": True,
    "stochastic_weights": False, "dropout_hidden": 0.0,
    "argv": ["--preset", "torch7", "--epochs", "80", "--max-time", "7000", "--seed", "0",
             "--out", "runs/torch7_mnist"],
}  # fmt: skip


def test_the_running_torch7_checkpoint_still_resumes(data_root, tmp_path, monkeypatch):
    got = {}

    def fake_fit(net, train, val, test, **kw):
        got.update(runfolder.run_config(train, val, test, **kw))
        raise _Stop

    monkeypatch.setattr(train_run, "fit", fake_fit)
    out = tmp_path / "torch7"
    out.mkdir()
    (out / "checkpoint.pt").write_bytes(b"")  # --resume needs one; fit is replaced
    argv = ["--preset", "torch7", "--epochs", "80", "--max-time", "3000", "--seed", "0"]
    with pytest.raises(_Stop):
        train_cli.main([*argv, "--out", str(out), "--resume", "--data-root", str(data_root)])
    assert T.config_differences(TORCH7_RUN_CONFIG, got) == {}


# ------------------------------------------------------------------ 2. run folders and the lock


def test_cli_refuses_an_existing_run_folder(tiny, capsys):
    name, out = tiny
    train_cli.main(_argv(name, out))
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    err = cli_error(_argv(name, out), capsys)
    assert "holds a run" in err and "--resume" in err and "--overwrite" in err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    h = train_cli.main([*_argv(name, out, "--epochs", "1"), "--overwrite"])
    assert len(h.epochs) == 1
    assert len(json.loads((out / "history.json").read_text())["epochs"]) == 1
    assert {p.name for p in out.iterdir()} == set(before)  # the lock is gone
    err = cli_error([*_argv(name, out), "--overwrite", "--resume"], capsys)
    assert "not both" in err


def test_cli_a_folder_with_only_a_history_is_a_run_too(tiny, capsys):
    name, out = tiny
    out.mkdir()
    (out / "history.json").write_text("{}")
    assert "holds a run" in cli_error(_argv(name, out), capsys)


_HOLDER = (
    "import sys, time; from bnnlib.files import FileLock; "
    "FileLock(sys.argv[1]).acquire(); print('held', flush=True); time.sleep(60)"
)


def _hold(path):
    """A separate process holding the lock at ``path`` (as a training run does)."""
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(path)], stdout=subprocess.PIPE, text=True
    )
    assert holder.stdout.readline().strip() == "held"
    return holder


def test_cli_lock_refuses_a_concurrent_run(tiny, capsys, monkeypatch):
    name, out = tiny
    out.mkdir()
    holder = _hold(out / ".lock")
    try:
        err = cli_error(_argv(name, out), capsys)
        assert f"in use by process {holder.pid}" in err
        assert {p.name for p in out.iterdir()} == {".lock"}
    finally:
        holder.kill()  # SIGKILL: no chance to remove its lock file
        holder.wait()
    assert (out / ".lock").exists()
    # Its process is gone: the kernel dropped the lock; it is taken over, with a message, and
    # removed at the end.
    train_cli.main(_argv(name, out))
    assert f"stale lock of process {holder.pid}" in capsys.readouterr().err
    assert not (out / ".lock").exists()


def test_a_lock_file_naming_a_live_process_does_not_block(tiny, capsys):
    """A leftover lock file whose PID was reused by an unrelated live process (or names a
    process of another host) does not block the folder: only a held flock does."""
    name, out = tiny
    out.mkdir()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (out / ".lock").write_text(f"{sleeper.pid} {platform.node()}\n")
        train_cli.main(_argv(name, out))
        (out / ".lock").write_text("4242 another-host\n")
        train_cli.main([*_argv(name, out), "--overwrite"])
    finally:
        sleeper.kill()
        sleeper.wait()
    assert not (out / ".lock").exists()


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGHUP"])
def test_a_run_stopped_by_a_signal_leaves_no_lock_behind(tiny, capsys, sig):
    import signal

    name, out = tiny
    out.mkdir()
    holder = _hold(out / ".lock")
    holder.send_signal(getattr(signal, sig))
    holder.wait()
    train_cli.main(_argv(name, out))  # not blocked
    assert not (out / ".lock").exists()


def test_two_takers_of_a_stale_lock_one_wins(tmp_path):
    from bnnlib.files import FileLock, LockHeld

    path = tmp_path / ".lock"
    path.write_text("999999 somewhere\n")  # left by a dead process
    first = FileLock(path).acquire()
    with pytest.raises(LockHeld, match=f"held by process {os.getpid()}"):
        FileLock(path).acquire()
    first.release()
    assert not path.exists()
    assert FileLock(path).acquire().previous == (None, "")


def test_cli_two_runs_at_once_on_one_folder(tiny, monkeypatch, capsys):
    """While a run trains (its fit is here), a second one on the same folder is refused."""
    name, out = tiny
    real_fit = train_run.fit
    errors = []

    def fit_with_a_second_run(*a, **kw):
        errors.append(cli_error(_argv(name, out, "--overwrite"), capsys))
        return real_fit(*a, **kw)

    monkeypatch.setattr(train_run, "fit", fit_with_a_second_run)
    train_cli.main(_argv(name, out))
    assert f"in use by process {os.getpid()}" in errors[0]
    assert not (out / ".lock").exists()


def test_cli_lock_is_released_when_the_run_fails(tiny, monkeypatch):
    name, out = tiny

    def boom(*a, **kw):
        raise RuntimeError("boom")

    monkeypatch.setattr(train_run, "fit", boom)
    with pytest.raises(RuntimeError, match="boom"):
        train_cli.main(_argv(name, out))
    assert not (out / ".lock").exists()


# ------------------------------------------------------------------ 3. inputs and divergence


@pytest.mark.parametrize(
    "flag, value",
    [
        ("--batch-size", "0"), ("--batch-size", "-5"), ("--hidden", "0"), ("--epochs", "0"),
        ("--epochs", "-1"), ("--lr-start", "inf"), ("--lr-start", "nan"), ("--lr-start", "0"),
        ("--lr-start", "-1e-3"), ("--lr-end", "inf"), ("--lr-end", "0"), ("--depth", "-1"),
        ("--width", "0"), ("--width", "nan"), ("--dropout-in", "1"), ("--dropout-hidden", "-0.1"),
        ("--dropout-in", "nan"), ("--lr-halve-every", "0"), ("--max-time", "nan"),
        ("--max-time", "-1"), ("--train-size", "0"), ("--eval-batch-size", "0"),
    ],
)  # fmt: skip
def test_cli_refuses_bad_values_before_loading_anything(flag, value, capsys, monkeypatch):
    no_data(monkeypatch)
    err = cli_error(["--model", "mnist_mlp", flag, value], capsys)
    assert f"argument {flag}" in err


@pytest.mark.parametrize(
    "kw, message",
    [
        ({"batch_size": 0}, "batch_size must be"),
        ({"batch_size": -5}, "batch_size must be"),
        ({"lr_start": float("inf")}, "lr_start must be"),
        ({"lr_end": float("nan")}, "lr_end must be"),
        ({"lr_halve_every": 0}, "lr_halve_every must be"),
        ({"max_time": float("nan")}, "max_time must be"),
    ],
)
def test_fit_refuses_bad_values(kw, message):
    with pytest.raises(ValueError, match=message):
        run(tiny_net(), epochs=1, **kw)


def _nan_from_epoch(monkeypatch, epoch: int, steps_per_epoch: int = 6):
    real = square_hinge
    calls = []

    def hinge(out, target):
        calls.append(1)
        loss = real(out, target)
        return loss * float("nan") if len(calls) > (epoch - 1) * steps_per_epoch else loss

    monkeypatch.setattr(loop, "square_hinge", hinge)


def test_a_non_finite_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    _nan_from_epoch(monkeypatch, 2)  # 240 images, batch 40: 6 steps an epoch
    with pytest.raises(T.NonFiniteLossError, match="epoch 2: the training loss is nan"):
        run(tiny_net(), checkpoint=tmp_path / "c.pt", history_path=tmp_path / "h.json")
    ckpt = T.load_checkpoint(tmp_path / "c.pt")
    assert ckpt["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())
    assert len(json.loads((tmp_path / "h.json").read_text())["epochs"]) == 1


def test_cli_a_non_finite_loss_exports_no_model(tiny, capsys, monkeypatch):
    name, out = tiny
    _nan_from_epoch(monkeypatch, 1)
    err = cli_error(_argv(name, out), capsys)
    assert "the training loss is nan" in err
    assert not (out / "model.pt").exists() and not (out / "best_model.pt").exists()
    assert not (out / ".lock").exists()


def test_cli_an_unwritable_out_fails_before_training(tiny, tmp_path, capsys, monkeypatch):
    name, _ = tiny
    no_data(monkeypatch)
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    err = cli_error(_argv(name, blocker / "run"), capsys)
    assert "cannot write to --out" in err


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_cli_a_read_only_out_fails_before_training(tiny, capsys, monkeypatch):
    name, out = tiny
    out.mkdir()
    out.chmod(0o555)
    no_data(monkeypatch)
    try:
        assert "cannot write to --out" in cli_error(_argv(name, out), capsys)
    finally:
        out.chmod(0o755)


# ------------------------------------------------------------------ 7. checkpoint checksums


def _flip_bytes_in_largest_tensor(path: Path, count: int = 64) -> None:
    with zipfile.ZipFile(path) as z:
        tensors = [i for i in z.infolist() if "/data/" in i.filename]  # not data.pkl
        info = max(tensors, key=lambda i: i.file_size)
    raw = bytearray(path.read_bytes())
    # the local header: 30 bytes, the name, the extra field; then the (stored) data
    name_len = int.from_bytes(raw[info.header_offset + 26 : info.header_offset + 28], "little")
    extra_len = int.from_bytes(raw[info.header_offset + 28 : info.header_offset + 30], "little")
    start = info.header_offset + 30 + name_len + extra_len + info.file_size // 2
    for i in range(start, start + count):
        raw[i] ^= 0xFF
    path.write_bytes(bytes(raw))


def test_checkpoints_carry_a_checksum_and_damage_is_refused(tmp_path):
    path = tmp_path / "c.pt"
    run(tiny_net(), epochs=1, checkpoint=path)
    ckpt = T.load_checkpoint(path)
    assert len(ckpt["sha256"]) == 64 and ckpt["format"] == T.CHECKPOINT_FORMAT
    _flip_bytes_in_largest_tensor(path)
    with pytest.raises(T.CheckpointError, match="damaged"):
        T.load_checkpoint(path)
    with pytest.raises(T.CheckpointError, match="damaged"):  # resume says so too
        run(tiny_net(), epochs=2, checkpoint=path, resume=True)


def test_a_changed_value_is_caught_by_the_checksum(tmp_path):
    path = tmp_path / "c.pt"
    run(tiny_net(), epochs=1, checkpoint=path)
    ckpt = torch.load(path, weights_only=True)
    ckpt["epoch"] = 2
    torch.save(ckpt, path)
    with pytest.raises(T.CheckpointError, match="SHA-256"):
        T.load_checkpoint(path)


def test_old_checkpoints_without_a_checksum_still_load_and_resume(tmp_path):
    path = tmp_path / "c.pt"
    full = run(tiny_net(), epochs=2)
    with pytest.raises(_Stop):
        run(tiny_net(), epochs=2, checkpoint=path, callback=_stop_after(1))
    ckpt = torch.load(path, weights_only=True)
    del ckpt["sha256"]
    ckpt["format"] = 1  # as written before checksums
    torch.save(ckpt, path)
    assert T.load_checkpoint(path)["epoch"] == 1
    resumed = run(tiny_net(), epochs=2, checkpoint=path, resume=True)
    assert [r["loss"] for r in resumed.epochs] == [r["loss"] for r in full.epochs]
    assert "sha256" in T.load_checkpoint(path)  # rewritten with one


def test_a_checksum_is_required_from_format_2_on(tmp_path):
    path = tmp_path / "c.pt"
    run(tiny_net(), epochs=1, checkpoint=path)
    ckpt = torch.load(path, weights_only=True)
    del ckpt["sha256"]
    torch.save(ckpt, path)
    with pytest.raises(T.CheckpointError, match="no checksum"):
        T.load_checkpoint(path)


# ------------------------------------------------------------------ 11. stale temporary files


def test_a_run_removes_stale_checkpoint_temporaries(tiny, capsys):
    name, out = tiny
    train_cli.main(_argv(name, out, "--max-time", "1e-9"))
    stale = [out / ".checkpoint.pt.k1ll3d.tmp", out / ".history.json.x.tmp"]
    for p in stale:
        p.write_bytes(b"half a checkpoint")
    (out / "notes.tmp").write_text("not ours")
    train_cli.main([*_argv(name, out), "--resume"])
    assert not any(p.exists() for p in stale) and (out / "notes.tmp").exists()
    assert "removed a stale temporary file" in capsys.readouterr().err


def test_a_dangling_symlink_out_is_named_as_such(tiny, tmp_path, capsys):
    name, _ = tiny
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "gone")
    err = cli_error(_argv(name, link), capsys)
    assert f"--out {link} is a symbolic link to {tmp_path / 'gone'}, which does not exist" in err


def test_a_batch_larger_than_the_training_set_is_one_error(tiny, capsys):
    """--batch-size 5000 --train-size 2000 used to end in a traceback."""
    name, out = tiny
    err = cli_error([*_argv(name, out), "--train-size", "50", "--batch-size", "80"], capsys)
    assert "the training set (50 images) is smaller than one batch (80)" in err
    assert "Traceback" not in err


def test_test_images_of_another_shape_are_refused_before_training(tmp_path, capsys):
    """Test images 9 x 9 beside training images 8 x 8 used to fail after the first epoch."""
    g = np.random.default_rng(0)
    np.savez(
        tmp_path / "odd.npz",
        x_train=g.integers(0, 255, (60, 8, 8, 1)).astype(np.uint8), y_train=np.arange(60) % 3,
        x_test=g.integers(0, 255, (20, 9, 9, 1)).astype(np.uint8), y_test=np.arange(20) % 3,
    )  # fmt: skip
    err = cli_error(_argv(f"npz:{tmp_path / 'odd.npz'}", tmp_path / "run"), capsys)
    assert "the splits hold images of different shapes" in err and "(1, 9, 9)" in err
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


def test_a_full_disk_while_checkpointing_is_one_error_and_the_checkpoint_survives(
    tiny, capsys, monkeypatch
):
    """It used to print three chained tracebacks."""
    name, out = tiny
    train_cli.main(_argv(name, out, "--max-time", "1e-9"))  # stops after epoch 1 of 2
    before = (out / "checkpoint.pt").read_bytes()
    real = torch.save

    def full(obj, f, *a, **k):
        if isinstance(obj, dict) and "optimizer" in obj:
            raise OSError(28, "No space left on device", str(out / "checkpoint.pt"))
        return real(obj, f, *a, **k)

    monkeypatch.setattr(torch, "save", full)
    err = cli_error([*_argv(name, out), "--resume"], capsys)
    assert "No space left on device" in err and "--resume" in err
    assert err.count("Traceback") == 0
    assert (out / "checkpoint.pt").read_bytes() == before


def test_a_non_utf8_out_is_refused_before_training(tiny, capsys, tmp_path):
    name, _ = tiny
    out = os.fsdecode(bytes(tmp_path) + b"/run\xff")
    err = cli_error(_argv(name, out), capsys)
    assert "is not valid UTF-8" in err
