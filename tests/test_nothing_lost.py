"""Nothing lost, nothing silently wrong (issue 32): one test per class of failure.

* the one writer (:func:`bnnlib.files.atomic_write`) and the one lock (:class:`FileLock`):
  a symbolic link, a device or a FIFO at the path is refused, never followed or replaced; a
  rewritten file keeps its permissions; a full disk surfaces as the ``OSError`` it is; the
  staging folders of a killed build are removed by the next one;
* the entry points: bad input, a full disk and Ctrl-C are one line (Ctrl-C: exit 130);
* bounded reads of packed models; checked npz layouts; bench's numbers refused as parsed;
* draw.js validates the weights it loads and shows an error instead of "Loading..." forever.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import nbformat
import numpy as np
import pytest
import torch

import bnnlib
from bnnlib import data, files, inference
from bnnlib.book import claims, draw, tags
from bnnlib.book import runner as book
from bnnlib.book import site as book_site
from bnnlib.book.notebooks import BookError
from bnnlib.book.results import Run
from bnnlib.errors import BadInput
from bnnlib.files import FileLock, UnsafePathError, atomic_write
from bnnlib.repro import publish
from bnnlib.train import cli as train_cli

ROOT = Path(__file__).resolve().parents[1]


def _no_traceback(err: str) -> None:
    assert "Traceback" not in err, err
    assert len(err.strip().splitlines()) == 1, err


# --------------------------------------------------------------- 1: symlinked lock files


def test_a_lock_that_is_a_symlink_is_refused_and_its_target_untouched(tmp_path, capsys):
    target = tmp_path / "precious.txt"
    target.write_text("keep me\n")
    link = tmp_path / ".lock"
    link.symlink_to(target)
    with pytest.raises(UnsafePathError, match="symbolic link"):
        FileLock(link).acquire()
    # train --out whose .lock is a link: one line, the target as it was
    out = tmp_path / "run"
    out.mkdir()
    (out / ".lock").symlink_to(target)
    with pytest.raises(SystemExit) as e:
        train_cli.main(["--model", "mnist_mlp", "--epochs", "1", "--out", str(out)])
    assert e.value.code == 2
    _no_traceback(capsys.readouterr().err)
    assert target.read_text() == "keep me\n"
    fifo = tmp_path / ".fifo.lock"
    os.mkfifo(fifo)
    with pytest.raises(UnsafePathError, match="FIFO"):
        FileLock(fifo).acquire()


# --------------------------------------------------------------- 2: writers replacing non-files


@pytest.fixture(scope="module")
def small_net(tmp_path_factory) -> inference.PackedNet:
    torch.manual_seed(0)
    model = bnnlib.mnist_mlp(hidden=32).eval()
    path = tmp_path_factory.mktemp("small") / "mlp.safetensors"
    return inference.load(inference.export(model, path))


def test_writers_refuse_links_devices_fifos_and_folders(tmp_path, small_net):
    target = tmp_path / "target.txt"
    target.write_text("keep")
    link = tmp_path / "link.json"
    link.symlink_to(target)
    fifo = tmp_path / "fifo.json"
    os.mkfifo(fifo)
    folder = tmp_path / "folder.json"
    folder.mkdir()
    dev = tmp_path / "null.json"
    dev.symlink_to("/dev/null")
    for path in (link, fifo, folder, dev):
        with pytest.raises(UnsafePathError, match="not a regular file"):
            atomic_write(path, b"new")
    assert link.is_symlink() and dev.is_symlink() and target.read_text() == "keep"
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode) and folder.is_dir()
    page = tmp_path / "page.html"
    page.symlink_to(target)
    with pytest.raises(UnsafePathError):
        draw.write_page(page, small_net)
    assert page.is_symlink() and target.read_text() == "keep"
    assert isinstance(UnsafePathError("x"), BadInput)


# --------------------------------------------------------------- 3: the book over its sources


def _tiny_book(folder: Path) -> Path:
    folder.mkdir()
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_markdown_cell("# Tiny"),
        nbformat.v4.new_code_cell("X = 1  # a number", metadata={"tags": ["parameters"]}),
    ]
    nbformat.write(nb, folder / "01_tiny.ipynb")
    return folder / "01_tiny.ipynb"


def test_the_book_refuses_to_write_over_its_source_notebooks(tmp_path, capsys):
    src = _tiny_book(tmp_path / "book")
    before = src.read_bytes()
    code = book.main(["--out", str(tmp_path / "book"), "--book-dir", str(tmp_path / "book")])
    assert code == 2
    assert "source notebooks" in capsys.readouterr().err
    assert src.read_bytes() == before
    assert sorted(p.name for p in (tmp_path / "book").iterdir()) == ["01_tiny.ipynb"]


# --------------------------------------------------------------- 4: permissions kept


def test_rewritten_files_keep_their_permissions(tmp_path, capsys):
    hist = tmp_path / "history.json"
    hist.write_text("{}")
    hist.chmod(0o600)
    atomic_write(hist, b'{"a": 1}')
    assert stat.S_IMODE(hist.stat().st_mode) == 0o600
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{claims.README_BEGIN}\nSTALE-BLOCK\n{claims.README_END}\nend\n")
    readme.chmod(0o640)
    assert book.main(["--readme", str(readme)]) == 0
    assert stat.S_IMODE(readme.stat().st_mode) == 0o640
    assert "STALE-BLOCK" not in readme.read_text()


# --------------------------------------------------------------- 7, 19: bench's numbers


@pytest.mark.parametrize(
    "argv",
    [
        ["--n-test", "-5"], ["--n-test", "0"], ["--repeats", "0"], ["--n-calib", "0"],
        ["--hidden", "0"], ["--hidden", "-1"], ["--batches", "0"], ["--sizes", "100000"],
        ["--train-repeats", "0"], ["--train-hidden", "0"],
    ],
)  # fmt: skip
def test_bench_refuses_bad_numbers_before_any_work(tmp_path, argv, capsys):
    from bnnlib.bench import cli as bench_cli

    skip = ["--skip", "gemm", "mlp", "train", "gpu", "--out", str(tmp_path / "b.json")]
    with pytest.raises(SystemExit) as e:
        bench_cli.main([*argv, *skip])
    assert e.value.code == 2
    assert argv[0] in capsys.readouterr().err
    assert not (tmp_path / "b.json").exists()


def test_bench_refuses_a_folder_as_out(tmp_path, capsys):
    from bnnlib.bench import cli as bench_cli

    with pytest.raises(SystemExit) as e:
        bench_cli.main(["--skip", "gemm", "mlp", "train", "gpu", "--out", str(tmp_path)])
    assert e.value.code == 2 and "--out" in capsys.readouterr().err


# --------------------------------------------------------------- 8, 14: draw.js validates


NODE = shutil.which("node")


def _node(tmp_path: Path, script: str) -> dict:
    shutil.copy(draw.JS_PATH, tmp_path / "draw.mjs")
    (tmp_path / "t.mjs").write_text(script)
    done = subprocess.run(
        [NODE, str(tmp_path / "t.mjs")], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def _tamper(blob: bytes, edit) -> bytes:
    n = int.from_bytes(blob[4:8], "little")
    head = json.loads(blob[8 : 8 + n])
    edit(head)
    text = json.dumps(head, sort_keys=True).encode()
    room = head["body_offset"] - 8  # the header may grow into its padding
    assert len(text) <= room
    text = text + b" " * (room - len(text))
    return blob[:4] + room.to_bytes(4, "little") + text + blob[8 + room :]


@pytest.mark.skipif(NODE is None, reason="node is not installed")
def test_draw_js_refuses_weights_whose_shapes_disagree(tmp_path, small_net):
    blob = draw.export_weights(small_net)

    def wider(h):
        h["layers"][1]["in"] = 64  # the layer before gives 32

    def rows(h):
        h["layers"][0]["row_words"] = 25  # 784 inputs are 13 words of 64 bits: 26

    def beyond(h):
        h["layers"][2]["weight"] = 99992  # past the end of the file

    assert draw.parse_weights(blob).hidden_sizes == [32, 32, 32]
    cases = {"ok": blob}
    cases.update({f.__name__: _tamper(blob, f) for f in (wider, rows, beyond)})
    for name, bad in cases.items():
        if name != "ok":
            with pytest.raises(ValueError):
                draw.parse_weights(bad)
    payload = json.dumps({k: list(v) for k, v in cases.items()})
    out = _node(
        tmp_path,
        "import { parseModel } from './draw.mjs';\n"
        f"const cases = {payload};\nconst res = {{}};\n"
        "for (const [k, v] of Object.entries(cases)) {\n"
        "  try { parseModel(new Uint8Array(v).buffer); res[k] = 'ok'; }\n"
        "  catch (e) { res[k] = String(e.message); }\n}\n"
        "console.log(JSON.stringify(res));\n",
    )
    assert out["ok"] == "ok"
    assert "layer" in out["wider"] and "64" in out["wider"]
    assert "row_words" in out["rows"]
    assert "outside" in out["beyond"]


@pytest.mark.skipif(NODE is None, reason="node is not installed")
def test_draw_page_shows_an_error_for_invalid_base64(tmp_path):
    script = textwrap.dedent(
        """
        const made = [];
        const node = () => {
          const e = { children: [], dataset: {}, style: {}, attrs: {}, textContent: "",
            setAttribute(k, v) { this.attrs[k] = v; },
            appendChild(c) { this.children.push(c); return c; },
            set innerHTML(v) { this.children = []; } };
          made.push(e);
          return e;
        };
        globalThis.document = { createElement: node, head: node() };
        globalThis.bnnDrawWeights = { k1: "!!not base64!!" };
        const { mountStatic } = await import("./draw.mjs");
        const root = node();
        mountStatic(root, { key: "k1", assetUrl: "bnn_draw_k1.js" });
        await new Promise((r) => setTimeout(r, 50));
        console.log(JSON.stringify({ error: root.dataset.error || null }));
        """
    )
    out = _node(tmp_path, script)
    assert out["error"] and "base64" in out["error"]


# --------------------------------------------------------------- 9: two marker blocks


def test_readme_with_two_marker_blocks_is_refused(tmp_path, capsys):
    block = f"{claims.README_BEGIN}\nSTALE-BLOCK\n{claims.README_END}\n"
    readme = tmp_path / "README.md"
    readme.write_text("a\n" + block + "b\n" + block)
    before = readme.read_bytes()
    assert book.main(["--readme", str(readme)]) != 0
    assert "twice" in capsys.readouterr().err
    assert readme.read_bytes() == before


# --------------------------------------------------------------- 11: channels-first npz


def test_a_channels_first_npz_is_refused(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (20, 3, 8, 8), dtype=np.uint8)  # N x C x H x W
    y = rng.integers(0, 4, 20)
    np.savez(tmp_path / "cf.npz", x_train=x, y_train=y, x_test=x[:5], y_test=y[:5])
    with pytest.raises(ValueError, match="channels-first"):
        data.load_splits(f"npz:{tmp_path / 'cf.npz'}")


# --------------------------------------------------------------- 13: bounded reads


def test_a_model_file_beyond_the_bound_is_refused_before_it_is_read(tmp_path, small_net):
    from bnnlib.inference import format as fmt

    path = tmp_path / "huge.safetensors"
    good = Path(small_net.source).read_bytes()
    with open(path, "wb") as f:
        f.write(good)
        f.truncate(fmt.MAX_FILE_BYTES + 1)  # sparse: no disk used
    with pytest.raises(inference.PackedModelError, match="larger than"):
        inference.load(path)
    with pytest.raises(inference.PackedModelError, match="not a regular file"):
        inference.load(tmp_path)


def test_a_header_whose_metadata_is_a_list_is_a_packed_model_error(tmp_path):
    torch.manual_seed(0)
    path = inference.export(bnnlib.mnist_mlp(hidden=32).eval(), tmp_path / "m.safetensors")
    header, tensors = inference.format.read_packed(path)
    header["metadata"] = [1, 2]
    inference.format.write_packed(path, header, tensors)
    with pytest.raises(inference.PackedModelError, match="metadata"):
        inference.load(path)


# --------------------------------------------------------------- 15: a full disk


_FULL = """
import resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))
"""


def test_a_full_disk_under_torch_save_is_the_oserror(tmp_path):
    code = _FULL + textwrap.dedent(
        """
        import errno, torch
        from bnnlib.files import atomic_write
        try:
            atomic_write(sys.argv[1], lambda f: torch.save(torch.zeros(1_000_000), f))
        except OSError as e:
            print("OSError", e.errno == errno.EFBIG)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "c.pt")],
        capture_output=True, text=True, cwd=ROOT, timeout=300,
    )  # fmt: skip
    assert done.stdout.strip() == "OSError True", done.stderr
    assert list(tmp_path.iterdir()) == []


def test_train_on_a_full_disk_is_one_line_without_a_traceback(tmp_path):
    from test_train import write_tiny_npz

    name = write_tiny_npz(tmp_path / "tiny.npz", n_train=120, n_test=60)
    argv = ["--model", "mnist_mlp", "--dataset", name, "--hidden", "2048", "--depth", "1"]
    argv += ["--epochs", "2", "--batch-size", "30", "--out", str(tmp_path / "run")]
    code = _FULL + f"from bnnlib.train import cli; cli.main({argv + ['--no-progress']!r})"
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=600
    )
    assert done.returncode == 1
    _no_traceback(done.stderr)
    assert "File too large" in done.stderr and "--resume" not in done.stderr
    assert "nothing" in done.stderr  # no checkpoint yet: no "intact ... --resume" advice


def test_disk_full_advice_names_resume_only_once_a_checkpoint_exists(tmp_path, monkeypatch, capsys):
    def full(config, options):
        raise OSError(errno.ENOSPC, "No space left on device", str(options.out / "x"))

    monkeypatch.setattr(train_cli, "train", full)
    argv = ["--model", "mnist_mlp", "--epochs", "1", "--out", str(tmp_path / "run")]
    with pytest.raises(SystemExit) as e:
        train_cli.main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 1 and "--resume" not in err and "free space" in err
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "checkpoint.pt").write_bytes(b"x")
    with pytest.raises(SystemExit):
        train_cli.main(argv)
    assert "free space and continue it with --resume" in capsys.readouterr().err


def test_the_book_on_an_unwritable_out_ends_in_one_line(tmp_path, capsys):
    _tiny_book(tmp_path / "book")
    (tmp_path / "file").write_text("a file, not a folder")
    code = book.main(
        ["--out", str(tmp_path / "file" / "out"), "--book-dir", str(tmp_path / "book")]
    )
    assert code == 1
    _no_traceback(capsys.readouterr().err)


# --------------------------------------------------------------- 20: one line, Ctrl-C 130


def test_tags_on_a_missing_or_broken_notebook_is_one_line(tmp_path, capsys):
    broken = tmp_path / "01_broken.ipynb"
    broken.write_text("{not json")
    for argv in ([str(tmp_path / "nope.ipynb")], [str(broken)], ["--check", str(broken)]):
        with pytest.raises(SystemExit) as e:
            tags.main(argv)
        assert e.value.code == 2
        _no_traceback(capsys.readouterr().err)


def test_build_site_with_a_missing_or_corrupt_executed_notebook_is_a_book_error(tmp_path):
    broken = tmp_path / "02_b.ipynb"
    broken.write_text('{"cells": [')
    for executed in (tmp_path / "01_a.ipynb", broken):
        run = Run(executed.stem, "T", executed, 1.0, {}, [])
        with pytest.raises(BookError, match=executed.name):
            book_site.build_site([run], tmp_path / "html", "small")
    assert not (tmp_path / "html").exists()


def test_ctrl_c_in_train_and_publish_is_one_line_and_exit_130(tmp_path, monkeypatch, capsys):
    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(train_cli, "train", interrupted)
    with pytest.raises(SystemExit) as e:
        train_cli.main(["--model", "mnist_mlp", "--epochs", "1", "--out", str(tmp_path / "r")])
    assert e.value.code == 130
    _no_traceback(capsys.readouterr().err)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "checkpoint.pt").write_bytes(b"x")
    monkeypatch.setattr(publish, "publish", interrupted)
    with pytest.raises(SystemExit) as e:
        publish.main([str(tmp_path / "run"), str(tmp_path / "dest")])
    assert e.value.code == 130
    _no_traceback(capsys.readouterr().err)


# --------------------------------------------------------------- cosmetic: leftovers cleaned


def test_staging_leftovers_of_a_killed_process_are_removed_by_the_next(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    me = files.staging_dir(tmp_path, "dest")  # a live one (this process): kept
    host = me.name.split("-")[1]
    left = [tmp_path / f".dest.staging-{host}-{dead}-abc", tmp_path / f".dest.old-{host}-{dead}-x"]
    other = tmp_path / f".other.staging-{host}-{dead}-abc"
    for p in (*left, other):
        p.mkdir()
        (p / "model.safetensors").write_bytes(b"big")
    again = files.staging_dir(tmp_path, "dest")
    assert not any(p.exists() for p in left)
    assert me.exists() and other.exists() and again.exists()


def test_sigint_mid_training_leaves_a_loadable_checkpoint_and_exits_130(tmp_path):
    """A real Ctrl-C (SIGINT) while a run trains: one line, exit 130, the checkpoint whole."""
    import signal
    import time

    from test_train import write_tiny_npz

    from bnnlib.train.checkpoint import load_checkpoint

    name = write_tiny_npz(tmp_path / "tiny.npz", n_train=120, n_test=60)
    out = tmp_path / "run"
    argv = ["--model", "mnist_mlp", "--dataset", name, "--hidden", "512", "--depth", "2"]
    argv += ["--epochs", "100000", "--batch-size", "30", "--out", str(out), "--no-progress"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "bnnlib.train", *argv],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 300
        while not (out / "checkpoint.pt").exists() and time.monotonic() < deadline:
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.2)
        time.sleep(1.0)  # well into a later epoch, or a save
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    _no_traceback(err)
    assert "interrupted" in err and "--resume" in err
    assert load_checkpoint(out / "checkpoint.pt")["epoch"] >= 1
    assert not (out / ".lock").exists()
