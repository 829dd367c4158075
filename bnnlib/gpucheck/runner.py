"""Running commands for ``python -m bnnlib.gpucheck``: a step in its own process group,
its output streamed line by line, killed at its timeout; short tool calls for ``env``."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable

from bnnlib.gpucheck.config import REPO

ABORT_HINT = (
    "aborted (SIGABRT, exit code 134): a PyCUDA context left on its stack at exit is the "
    "usual cause (bnnlib.kernels.cuda.close() pops it)"
)


def quick_run(cmd: list[str], timeout: float = 20) -> tuple[int | None, str]:
    """(exit code, stdout + stderr) of a short command; (None, why) when it cannot run."""
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=REPO)
    except (OSError, subprocess.SubprocessError) as e:
        return None, f"{type(e).__name__}: {e}"
    return r.returncode, (r.stdout + r.stderr).strip()


def child_env(extra: dict | None = None) -> dict:
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    if str(REPO) not in paths:
        paths.append(str(REPO))
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env.update(extra or {})
    return env


def _start_reader(proc: subprocess.Popen, lines: list[str], log) -> threading.Thread:
    """A thread that copies ``proc``'s output to ``lines`` and ``log``, line by line."""

    def pump():
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            log(line)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    return reader


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGTERM to ``proc``'s whole process group, then SIGKILL 5 s later if still running."""
    for sig, grace in ((signal.SIGTERM, 5), (signal.SIGKILL, 5)):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=grace)
            break
        except subprocess.TimeoutExpired:
            continue


def run_step_process(
    cmd: list[str],
    timeout_s: float,
    log: Callable[[str], None],
    env: dict | None = None,
) -> dict:
    """Run ``cmd`` in its own process group, streaming its output to ``log`` line by line.

    Returns rc (None when killed), timed_out, seconds, output, and ``note`` for a SIGABRT.
    At the timeout the whole group is sent SIGTERM, then SIGKILL 5 s later.
    """
    t0 = time.monotonic()
    lines: list[str] = []
    try:
        proc = subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            errors="replace",
            bufsize=1,
            cwd=REPO,
            env=env,
            start_new_session=True,
        )
    except OSError as e:
        msg = f"cannot start {cmd[0]}: {type(e).__name__}: {e}"
        log(msg + "\n")
        return {"rc": None, "timed_out": False, "seconds": 0.0, "output": msg, "note": msg}
    reader = _start_reader(proc, lines, log)
    timed_out = False
    try:
        proc.wait(timeout=max(timeout_s, 1))
    except subprocess.TimeoutExpired:
        timed_out = True
        _kill_group(proc)
    reader.join(timeout=5)
    rc = None if timed_out else proc.returncode
    res = {
        "rc": rc,
        "timed_out": timed_out,
        "seconds": round(time.monotonic() - t0, 2),
        "output": "".join(lines),
    }
    if rc in (134, -signal.SIGABRT):
        res["note"] = ABORT_HINT
    if timed_out:
        res["note"] = f"killed at its timeout of {timeout_s:.0f} s"
    return res
