"""Tests of bnnlib.book.record: what notebooks record, in a file (the runner) or in memory."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from bnnlib import files, hardware
from bnnlib.book import record as rec


@pytest.fixture
def record_file(tmp_path, monkeypatch):
    path = tmp_path / "records" / "nb.json"
    monkeypatch.setenv(rec.ENV_VAR, str(path))
    return path


@pytest.fixture
def no_record_file(monkeypatch):
    monkeypatch.delenv(rec.ENV_VAR, raising=False)
    rec.clear()
    yield
    rec.clear()


def test_appends_to_the_file_with_every_field(record_file):
    rec.record("a", 0.5, paper=0.4, unit="fraction", data="MNIST", schedule="2 epochs", seed=3)
    rec.record("b", 7, note="n", hardware="GPU: X")
    entries = rec.read(record_file)
    assert [e["name"] for e in entries] == ["a", "b"]
    a, b = entries
    assert (a["value"], a["paper"], a["unit"], a["data"], a["schedule"], a["seed"]) == (
        0.5,
        0.4,
        "fraction",
        "MNIST",
        "2 epochs",
        3,
    )
    assert a["hardware"] == rec.hardware()  # the default: this machine's CPU
    assert (b["value"], b["note"], b["hardware"], b["paper"]) == (7, "n", "GPU: X", None)
    assert set(rec.FIELDS) <= set(a)
    assert json.loads(record_file.read_text()) == entries  # plain JSON, no temp files left
    assert list(record_file.parent.iterdir()) == [record_file]


def test_silent_when_writing_to_the_file(record_file, capsys):
    """The book's run writes to a file: the rendered page shows no "recorded ..." line."""
    rec.record("a", 0.5, unit="fraction")
    assert capsys.readouterr().out == ""
    assert rec.values(record_file) == {"a": 0.5}


def test_recording_a_name_again_replaces_it_in_place(record_file):
    for name, value in [("a", 1), ("b", 2), ("a", 3)]:
        rec.record(name, value)
    assert rec.values(record_file) == {"a": 3, "b": 2}
    assert [e["name"] for e in rec.read(record_file)] == ["a", "b"]


def test_tensors_and_numpy_become_plain_python(record_file):
    rec.record("t", torch.tensor(0.25))
    rec.record("v", torch.tensor([1.0, 2.0]))
    rec.record("n", np.float32(1.5))
    rec.record("i", np.int64(4))
    rec.record("d", {"x": torch.tensor(1), "y": [np.float64(2.5), True, "s", None]})
    got = rec.values(record_file)
    assert got == {
        "t": 0.25,
        "v": [1.0, 2.0],
        "n": 1.5,
        "i": 4,
        "d": {"x": 1, "y": [2.5, True, "s", None]},
    }
    assert type(got["i"]) is int and type(got["n"]) is float


def test_in_memory_and_printed_when_no_file(no_record_file, capsys, tmp_path):
    rec.record("x", 0.125, paper=0.1, unit="fraction")
    assert "recorded x = 0.125 fraction" in capsys.readouterr().out
    assert [(e["name"], e["value"], e["paper"]) for e in rec.recorded()] == [("x", 0.125, 0.1)]
    assert list(tmp_path.iterdir()) == []
    rec.clear()
    assert rec.recorded() == []


@pytest.mark.parametrize("bad", [math.nan, math.inf, torch.tensor(float("nan")), [1.0, math.inf]])
def test_non_finite_values_are_refused(no_record_file, bad):
    with pytest.raises(ValueError, match="diverged"):
        rec.record("loss", bad)
    assert rec.recorded() == []


def test_bad_names_and_types_are_refused(no_record_file):
    with pytest.raises(ValueError, match="name"):
        rec.record("", 1)
    with pytest.raises(TypeError, match="object"):
        rec.record("x", object())


def test_read_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.json"):
        rec.read(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="bad.json"):
        rec.read(bad)
    bad.write_text('{"name": "x"}')
    with pytest.raises(ValueError, match="list"):
        rec.read(bad)


def test_hardware_and_device(capsys):
    assert hardware.hardware().startswith("CPU: ")
    assert hardware.select_device("cpu").type == "cpu"
    assert "CPU path" in capsys.readouterr().out
    with pytest.raises(ValueError, match="auto"):
        hardware.select_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="no CUDA GPU"):
            hardware.select_device("cuda")
        assert hardware.select_device("auto").type == "cpu"
    else:
        assert hardware.hardware("cuda").startswith("GPU: ")


def test_cpu_flags_match_proc_cpuinfo():
    flags = set()
    with open("/proc/cpuinfo") as f:
        flags = set(next(line for line in f if line.startswith("flags")).split(":")[1].split())
    assert hardware.cpu_flags() == [f for f in hardware.POPCOUNT_FLAGS if f in flags]
    assert all(f in hardware.hardware() for f in hardware.cpu_flags())
    d = hardware.describe_machine()
    assert d["cpu_flags"] == hardware.cpu_flags() and d["cpu"] == hardware.cpu_model()


def test_atomic_write_keeps_the_old_file_when_the_writer_fails(tmp_path):
    path = tmp_path / "a" / "f.json"
    files.atomic_write(path, b"old")

    def broken(f):
        f.write(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        files.atomic_write(path, broken)
    assert path.read_bytes() == b"old"
    assert [p.name for p in path.parent.iterdir()] == ["f.json"]  # no temporary left
    files.atomic_write(path, lambda f: f.write(b"new"))
    assert path.read_bytes() == b"new"
