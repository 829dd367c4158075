"""bnnlib.train: the training loop, history, atomic checkpoints, bit-exact resume, CLI, torchrun."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from bnnlib import data
from bnnlib import train as T
from bnnlib.data import loaders
from bnnlib.nn import models
from bnnlib.nn.optim import lr_at_epoch
from bnnlib.train import cli as train_cli
from bnnlib.train import fast_step, loop

REPO = Path(__file__).resolve().parents[1]


def blobs(n: int, split: str, seed: int, classes: int = 3) -> data.Dataset:
    """Easy data: class c is a bright block at row c of a 4 x 4 image, plus noise."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % classes
    X = torch.rand(n, 1, 4, 4, generator=g) * 0.6 - 1
    X[torch.arange(n), 0, y, :] += 1.2
    return data.Dataset(X, y, "blobs", split, classes)


TRAIN, VAL, TEST = blobs(240, "train", 1), blobs(60, "val", 2), blobs(60, "test", 3)


def tiny_net(seed: int = 0, **kw) -> torch.nn.Module:
    torch.manual_seed(seed)
    return models.mnist_mlp(hidden=32, depth=2, in_features=16, num_classes=3, **kw)


def run(net, epochs=3, **kw):
    kw = {"batch_size": 40, "lr_start": 3e-3, "lr_end": 3e-4, "progress": False, **kw}
    return T.fit(net, TRAIN, VAL, TEST, num_epochs=epochs, device="cpu", **kw)


def no_times(history: T.History) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in ("time", "eval_time")} for r in history.epochs]


def write_tiny_npz(path: Path, n_train=100, n_test=40) -> str:
    g = np.random.default_rng(0)
    y, yt = np.arange(n_train) % 3, np.arange(n_test) % 3
    x = g.integers(0, 100, (n_train, 4, 4, 1)).astype(np.uint8)
    xt = g.integers(0, 100, (n_test, 4, 4, 1)).astype(np.uint8)
    x[np.arange(n_train), y] += 150
    xt[np.arange(n_test), yt] += 150
    np.savez(path, x_train=x, y_train=y.astype(np.uint8), x_test=xt, y_test=yt.astype(np.uint8))
    return f"npz:{path}"


# ------------------------------------------------------------------ fit, history


def test_fit_learns_and_records_history():
    net = tiny_net()
    h = run(net, epochs=4)
    assert [r["epoch"] for r in h.epochs] == [1, 2, 3, 4]
    for r in h.epochs:
        assert 0 <= r["train_error"] <= 1 and 0 <= r["val_error"] <= 1 and r["loss"] > 0
    # The LR decays exponentially per epoch: lr_start * (lr_end / lr_start)^(e / num_epochs).
    for e, r in enumerate(h.epochs):
        assert r["lr"] == pytest.approx(lr_at_epoch(e, 3e-3, 3e-4, 4), rel=1e-9)
    assert h.epochs[-1]["val_error"] < 0.2  # far below chance (2/3)
    vals = [r["val_error"] for r in h.epochs]
    assert h.best_epoch == len(vals) - vals[::-1].index(min(vals))  # the last of the ties
    assert h.test_error_at_best == h.epochs[h.best_epoch - 1]["test_error"]
    # The final errors are those evaluate() measures on the final weights.
    assert h.epochs[-1]["test_error"] == T.evaluate(net, TEST)
    assert str(h.best_epoch) in str(h)


def test_best_state_is_the_best_validation_weights(monkeypatch):
    vals = iter([0.5, 0.2, 0.3, 0.2, 0.4])  # ties: the later epoch (4) wins, Theano's <=
    snapshots = []
    real = loop.dist_errors

    def fake(net, ds, bs, rank, world):
        if ds is not None and ds.split == "val":
            snapshots.append({k: v.clone() for k, v in net.state_dict().items()})
            return next(vals)
        return real(net, ds, bs, rank, world)

    monkeypatch.setattr(loop, "dist_errors", fake)
    h = run(tiny_net(), epochs=5)
    assert h.best_epoch == 4 and h.best_val_error == 0.2
    for k, v in h.best_state.items():
        assert torch.equal(v, snapshots[3][k])
    assert not all(torch.equal(v, snapshots[1][k]) for k, v in h.best_state.items())


def test_evaluate_and_predict_match_the_model():
    net = tiny_net()
    run(net, epochs=1)
    net.eval()
    with torch.no_grad():
        expected = net(TEST.X).argmax(1)
    net.train()
    pred = T.predict(net, TEST.X, batch_size=7)
    assert torch.equal(pred, expected) and pred.dtype == torch.int64
    assert net.training  # the mode is restored
    assert T.evaluate(net, TEST, batch_size=7) == (expected != TEST.y).sum().item() / len(TEST)


def test_history_json(tmp_path):
    h = run(tiny_net(), epochs=2, history_path=tmp_path / "h.json")
    d = json.loads((tmp_path / "h.json").read_text())
    assert d["epochs"] == h.epochs and d["best_epoch"] == h.best_epoch
    assert d["config"]["num_epochs"] == 2 and d["config"]["n_train"] == 240
    assert T.History.from_dict(d).test_error_at_best == h.test_error_at_best


def test_fit_bad_arguments():
    with pytest.raises(ValueError, match="smaller than one batch"):
        run(tiny_net(), batch_size=1000)
    with pytest.raises(ValueError, match="unknown optimizer 'sgd'"):
        run(tiny_net(), optimizer="sgd")


def test_shift_adamax_runs():
    h = run(tiny_net(batchnorm="shift"), epochs=2, optimizer="shift_adamax", lr_start=2**-6)
    assert h.epochs[-1]["val_error"] < 0.5


# ------------------------------------------------------------------ checkpoints and resume


class _Stop(Exception):
    pass


def _stop_after(epochs: int):
    def callback(history):
        if len(history.epochs) == epochs:
            raise _Stop

    return callback


def test_resume_is_bit_exact(tmp_path):
    # Dropout and stochastic binarization draw from the RNG; the shuffling has its own.
    kw = {"stochastic_activations": True, "stochastic_weights": True}
    full_net = tiny_net(**kw)
    full = run(full_net, checkpoint=tmp_path / "a.pt")

    with pytest.raises(_Stop):
        run(tiny_net(**kw), checkpoint=tmp_path / "b.pt", callback=_stop_after(1))
    assert T.load_checkpoint(tmp_path / "b.pt")["epoch"] == 1
    torch.manual_seed(1234)  # disturb the global RNG: resume must restore it
    resumed_net = tiny_net(seed=99, **kw)  # other initial weights: overwritten by the checkpoint
    resumed = run(resumed_net, checkpoint=tmp_path / "b.pt", resume=True)

    assert no_times(resumed) == no_times(full)
    for (k, a), b in zip(
        full_net.state_dict().items(), resumed_net.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), k
    for k, v in full.best_state.items():
        assert torch.equal(v, resumed.best_state[k]), k


def test_resume_with_other_settings_is_refused(tmp_path):
    run(tiny_net(), epochs=1, checkpoint=tmp_path / "c.pt")
    with pytest.raises(ValueError, match="cannot resume.*batch_size"):
        run(tiny_net(), epochs=1, batch_size=20, checkpoint=tmp_path / "c.pt", resume=True)


def test_failed_checkpoint_write_keeps_the_previous_one(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.pt"
    real_save = torch.save
    calls = []

    def flaky_save(obj, f, *a, **kw):
        calls.append(1)
        if len(calls) == 2:  # the second epoch's write dies half-way
            f.write(b"half a checkpoint")
            raise OSError("No space left on device")
        return real_save(obj, f, *a, **kw)

    monkeypatch.setattr(torch, "save", flaky_save)
    with pytest.raises(OSError, match="No space"):
        run(tiny_net(), epochs=3, checkpoint=path)
    monkeypatch.setattr(torch, "save", real_save)
    ckpt = T.load_checkpoint(path)
    assert ckpt["epoch"] == 1 and len(ckpt["history"]["epochs"]) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.pt"]  # no temporary left


def test_checkpoint_refuses_pickled_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned > pwned.txt",))

    path = tmp_path / "evil.pt"
    path.write_bytes(pickle.dumps({"format": 1, "x": Evil()}, protocol=2))
    with pytest.raises(ValueError, match="not a readable bnnlib checkpoint"):
        T.load_checkpoint(path)
    assert not Path("pwned.txt").exists()


# ------------------------------------------------------------------ command line


def test_cli_run_and_resume(tmp_path, capsys):
    name = write_tiny_npz(tmp_path / "tiny.npz")
    out = tmp_path / "run"
    argv = ["--model", "mnist_mlp", "--dataset", name, "--hidden", "16", "--depth", "1"]
    argv += ["--epochs", "2", "--batch-size", "30", "--out", str(out), "--no-progress"]
    h = train_cli.main(argv)
    assert {p.name for p in out.iterdir()} == {
        "history.json",
        "checkpoint.pt",
        "model.pt",
        "best_model.pt",
    }
    d = json.loads((out / "history.json").read_text())
    assert len(d["epochs"]) == 2 and d["config"]["model"] == "mnist_mlp"
    assert d["config"]["n_train"] == 90 and d["config"]["n_val"] == 10
    # A 2-epoch run takes the short recipe: LR end = LR start / 100, no hidden dropout.
    assert d["config"]["recipe"] == "short" and d["config"]["dropout_hidden"] == 0
    assert d["config"]["lr_end"] == pytest.approx(d["config"]["lr_start"] / 100)
    state = torch.load(out / "model.pt", weights_only=True)
    assert state["2.weight"].shape == (16, 16)
    assert "best validation epoch" in capsys.readouterr().out
    # Resuming a finished run trains nothing more and gives the same history.
    again = train_cli.main([*argv, "--resume"])
    assert no_times(again) == no_times(h)


def test_cli_paper_recipe(tmp_path):
    name = write_tiny_npz(tmp_path / "tiny.npz")
    argv = ["--model", "mnist_mlp", "--dataset", name, "--hidden", "16", "--depth", "1"]
    argv += ["--epochs", "1", "--batch-size", "30", "--no-progress", "--recipe", "paper"]
    h = train_cli.main(argv)
    assert h.config["lr_end"] == 3e-7 and h.config["dropout_hidden"] == 0.5
    h = train_cli.main(
        [*argv, "--lr-end", "1e-4", "--dropout-hidden", "0.1"]
    )  # explicit values win
    assert h.config["lr_end"] == 1e-4 and h.config["dropout_hidden"] == 0.1


def test_cli_torch7_preset_sets_the_torch7_setup(tmp_path):
    name = write_tiny_npz(tmp_path / "tiny.npz")
    argv = ["--preset", "torch7", "--dataset", name, "--hidden", "16", "--depth", "1"]
    h = train_cli.main([*argv, "--epochs", "1", "--batch-size", "30", "--no-progress"])
    c = h.config
    assert c["preset"] == "torch7" and c["model"] == "mnist_mlp" and c["recipe"] == "preset"
    assert c["optimizer"] == "shift_adamax_torch7" and c["glorot_scale"] == "torch7"
    assert c["lr_start"] == 2.0**-6 and c["lr_halve_every"] == 20
    assert c["stochastic_activations"] is True and c["stochastic_weights"] is False
    assert c["batchnorm"] == "shift" and c["dropout_in"] == 0 and c["dropout_hidden"] == 0
    assert c["hidden"] == 16 and c["batch_size"] == 30  # explicit flags win over the preset
    # Without overrides: 2048 hidden units, batch 100, 100 epochs.
    st = train_cli.resolve_settings(train_cli.build_parser().parse_args(["--preset", "torch7"]))
    assert (st.hidden, st.batch_size, st.epochs) == (2048, 100, 100)
    assert st.last_batchnorm == "standard" and st.bn_momentum == 0.125


def test_cli_stochastic_flags_separately():
    parse = train_cli.build_parser().parse_args
    st = train_cli.resolve_settings(parse(["--model", "mnist_mlp", "--stochastic-activations"]))
    assert st.stochastic_activations and not st.stochastic_weights
    st = train_cli.resolve_settings(parse(["--model", "mnist_mlp", "--stochastic-weights"]))
    assert st.stochastic_weights and not st.stochastic_activations
    st = train_cli.resolve_settings(parse(["--model", "mnist_mlp", "--stochastic"]))
    assert st.stochastic_weights and st.stochastic_activations


def test_cli_preset_with_another_model_or_no_model(capsys):
    with pytest.raises(SystemExit):
        train_cli.main(["--preset", "torch7", "--model", "cifar10_convnet"])
    assert "--preset torch7 trains mnist_mlp, not cifar10_convnet" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        train_cli.main([])
    assert "choose a model with --model" in capsys.readouterr().err


def test_step_schedule_in_fit_and_resume(tmp_path):
    ckpt = tmp_path / "c.pt"
    kw = {"lr_halve_every": 2, "optimizer": "shift_adamax_torch7", "glorot_scale": "torch7"}
    h = run(tiny_net(), epochs=5, lr_start=2.0**-6, **kw)
    assert [r["lr"] for r in h.epochs] == [2.0**-6] * 2 + [2.0**-7] * 2 + [2.0**-8]
    with pytest.raises(_Stop):
        run(tiny_net(), epochs=5, lr_start=2.0**-6, checkpoint=ckpt, callback=_stop_after(3), **kw)
    resumed = run(tiny_net(), epochs=5, lr_start=2.0**-6, checkpoint=ckpt, resume=True, **kw)
    assert no_times(resumed) == no_times(h)
    with pytest.raises(ValueError, match="lr_halve_every"):
        run(tiny_net(), epochs=5, lr_start=2.0**-6, checkpoint=ckpt, resume=True)


def test_max_time_stops_at_an_epoch_boundary_and_says_so(tmp_path):
    h = run(tiny_net(), epochs=50, max_time=1e-9, history_path=tmp_path / "h.json")
    assert len(h.epochs) == 1 and h.stopped.startswith("time limit: stopped after epoch 1 of 50")
    assert json.loads((tmp_path / "h.json").read_text())["stopped"] == h.stopped
    assert run(tiny_net(), epochs=2, max_time=1e6).stopped is None


def test_cli_unknown_model(capsys):
    with pytest.raises(SystemExit):
        train_cli.main(["--model", "resnet50"])
    assert "invalid choice: 'resnet50'" in capsys.readouterr().err


def test_cli_unknown_dataset(capsys):
    with pytest.raises(SystemExit):
        train_cli.main(["--model", "mnist_mlp", "--dataset", "imagenet"])
    assert "unknown dataset 'imagenet'" in capsys.readouterr().err


def test_cli_missing_data(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(loaders, "probe_online", lambda url, timeout=3.0: (False, "example.org"))
    with pytest.raises(SystemExit):
        train_cli.main(["--model", "mnist_mlp", "--data-root", str(tmp_path), "--epochs", "1"])
    err = capsys.readouterr().err
    assert str(tmp_path / "MNIST" / "raw") in err and "BNN_DATA_DIR" in err and "offline" in err


@pytest.mark.slow
def test_torchrun_two_processes(tmp_path):
    """A 2-process gloo DistributedDataParallel run of the CLI (rank 0 writes the files)."""
    name = write_tiny_npz(tmp_path / "tiny.npz")
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    cmd += ["-m", "bnnlib.train", "--model", "mnist_mlp", "--dataset", name, "--hidden", "16"]
    cmd += ["--depth", "1", "--epochs", "1", "--batch-size", "30", "--device", "cpu"]
    cmd += ["--out", str(out), "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    d = json.loads((out / "history.json").read_text())
    assert d["config"]["world_size"] == 2 and len(d["epochs"]) == 1
    assert 0 <= d["epochs"][0]["val_error"] <= 1
    assert proc.stdout.count("best validation epoch") == 1  # only rank 0 reports


# ------------------------------------------------------------------ the fast path


def _same_params(a: torch.nn.Module, b: torch.nn.Module) -> None:
    for (k, x), y in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(x, y), k


@pytest.mark.parametrize(
    "kw",
    [
        {},
        {"stochastic_activations": True, "stochastic_weights": True},
        {"optimizer": "shift_adamax", "lr_start": 2.0**-6},
        {"optimizer": "shift_adamax_torch7", "glorot_scale": "torch7", "lr_start": 2.0**-6},
    ],
    ids=["adam", "adam-stochastic", "shift_adamax", "shift_adamax_torch7"],
)
def test_fast_path_gives_the_plain_paths_parameters(kw):
    """Same seed, same math: the fast path's parameters and history equal the plain path's."""
    net_kw = {k: kw.pop(k) for k in ("stochastic_activations", "stochastic_weights") if k in kw}
    if kw.get("optimizer", "adam") != "adam":
        net_kw["batchnorm"] = "shift"
    plain_net, fast_net = tiny_net(**net_kw), tiny_net(**net_kw)
    plain = run(plain_net, epochs=2, fast=False, **kw)
    fast = run(fast_net, epochs=2, fast=True, **kw)
    _same_params(plain_net, fast_net)
    assert no_times(fast) == no_times(plain)
    assert plain.config["fast"] is False and fast.config["fast"] is True
    for k, v in plain.best_state.items():
        assert torch.equal(v, fast.best_state[k]), k


def test_fast_path_resumes_bit_exact_from_either_path(tmp_path):
    kw = {"stochastic_activations": True, "stochastic_weights": True}
    full_net = tiny_net(**kw)
    full = run(full_net, fast=True)
    for first, second in ((True, True), (False, True), (True, False)):
        ckpt = tmp_path / f"{first}-{second}.pt"
        with pytest.raises(_Stop):
            run(tiny_net(**kw), checkpoint=ckpt, callback=_stop_after(1), fast=first)
        net = tiny_net(seed=7, **kw)
        resumed = run(net, checkpoint=ckpt, resume=True, fast=second)
        assert no_times(resumed) == no_times(full)
        _same_params(full_net, net)


def test_fast_step_of_shift_adamax_equals_its_step_with_mixed_steps():
    """A group whose parameters are at different steps: fast_step (opt.step(foreach=True))
    updates each set of parameters at the same step together, with the same values."""
    from bnnlib.nn.optim import ShiftAdaMax

    nets = [tiny_net(batchnorm="shift") for _ in range(2)]
    opts = [ShiftAdaMax(n, lr=2.0**-6) for n in nets]
    g = torch.Generator().manual_seed(0)
    for step in range(3):
        grads = [torch.randn(p.shape, generator=g) for p in nets[0].parameters()]
        for net in nets:
            for i, (p, gr) in enumerate(zip(net.parameters(), grads, strict=True)):
                # the last parameter has no gradient in the first step: steps differ after
                p.grad = None if (step == 0 and i == len(grads) - 1) else gr.clone()
        opts[0].step()
        fast_step.fast_step(opts[1])
    _same_params(*nets)


@pytest.mark.parametrize("optimizer", ["adam", "shift_adamax"])
def test_fast_step_is_the_optimizers_public_step(optimizer):
    """fast_step calls opt.step (no private flag set by hand): an LR scheduler sees the
    step and does not warn that it was called before the optimizer's."""
    import warnings

    net = tiny_net()
    opt = loop.make_optimizer(net, optimizer, 1e-3)
    sched = loop.make_scheduler(opt, 1e-3, 1e-4, 3, None)
    for p in net.parameters():
        p.grad = torch.ones_like(p)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fast_step.fast_step(opt)
        sched.step()
    assert opt.state  # it stepped


def test_a_step_schedule_run_may_be_extended_on_resume(tmp_path):
    # Torch7's schedule does not depend on the run's length: 3 epochs then 2 more equal 5.
    kw = {"lr_halve_every": 2, "optimizer": "shift_adamax_torch7", "glorot_scale": "torch7"}
    full = run(tiny_net(), epochs=5, lr_start=2.0**-6, **kw)
    ckpt = tmp_path / "c.pt"
    run(tiny_net(), epochs=3, lr_start=2.0**-6, checkpoint=ckpt, **kw)
    longer = run(tiny_net(), epochs=5, lr_start=2.0**-6, checkpoint=ckpt, resume=True, **kw)
    assert no_times(longer) == no_times(full)
    assert longer.config["num_epochs"] == 5
    ext = {"from_epochs": 3, "to_epochs": 5, "at_epoch": 3, "argv": None}  # argv: from the CLI
    assert longer.config["extended"] == [ext]
    # Fewer epochs, or more epochs of the exponential schedule, are still refused.
    with pytest.raises(ValueError, match="num_epochs"):
        run(tiny_net(), epochs=4, lr_start=2.0**-6, checkpoint=ckpt, resume=True, **kw)
    exp = tmp_path / "e.pt"
    run(tiny_net(), epochs=2, checkpoint=exp)
    with pytest.raises(ValueError, match="num_epochs"):
        run(tiny_net(), epochs=4, checkpoint=exp, resume=True)
