""":func:`main` of ``python -m bnnlib.gpucheck``: the plan, the ``env`` step in process, then
every other step in its own process, in order, within the budget; ``gpucheck.json`` rewritten
after every step and ``gpucheck.log`` written as output comes."""

from __future__ import annotations

import contextlib
import json
import shlex
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from bnnlib.gpucheck.config import now_iso, parse_args, plan, write_json
from bnnlib.gpucheck.env import env_step
from bnnlib.gpucheck.report import (
    acceptance,
    judge_pytest,
    judge_sanitizer,
    result_line,
    summary_lines,
)
from bnnlib.gpucheck.runner import child_env, run_step_process
from bnnlib.gpucheck.steps import worker


class _Log:
    """Output to the terminal and to ``gpucheck.log`` at once, from any thread; ``header``
    lines carry the seconds since the start."""

    def __init__(self, path: Path, t_start: float):
        self.fh = open(path, "a", encoding="utf-8")  # noqa: SIM115 (closed at the end)
        self.lock = threading.Lock()
        self.t_start = t_start

    def __call__(self, text: str) -> None:
        with self.lock:
            sys.stdout.write(text)
            sys.stdout.flush()
            self.fh.write(text)
            self.fh.flush()

    def header(self, msg: str) -> None:
        self(f"=== [{time.monotonic() - self.t_start:6.1f}s] {msg}\n")

    def close(self) -> None:
        self.fh.close()


def _skeleton(args, argv: list[str], steps_plan: list[dict]) -> dict:
    """``gpucheck.json`` before anything runs: command, date, plan, every step pending."""
    return {
        "tool": "bnnlib.gpucheck",
        "command": shlex.join([sys.executable, "-m", "bnnlib.gpucheck", *argv]),
        "cwd": str(Path.cwd()),
        "date": now_iso(),
        "dry_run": args.dry_run,
        "out": str(args.out),
        "budget_s": args.budget,
        "plan": steps_plan,
        "steps": {
            s["step"]: {"status": "planned" if args.dry_run else "pending"} for s in steps_plan
        },
        "env": {},
        "bench": {},
        "result": "running",
    }


def _log_plan(args, steps_plan: list[dict], log: _Log) -> None:
    mode = " --dry-run" if args.dry_run else ""
    log.header(f"bnnlib.gpucheck{mode}: out {args.out}, budget {args.budget:.0f} s")
    for st in steps_plan:
        line = f"  {st['step']:11s} timeout {st['timeout_s']:4.0f} s  {st['what']}"
        log(f"{line}\n      {st['command']}\n")
    total = sum(s["timeout_s"] for s in steps_plan if not s["skip"])
    log(f"  sum of timeouts {total:.0f} s (budget {args.budget:.0f} s)\n")


def _env_problems(env: dict, dry_run: bool) -> list[str]:
    """What the GPU run needs and the machine lacks (PyCUDA and the GPU only when not dry)."""
    problems = []
    if not env["mnist"]["found"]:
        problems.append("MNIST not found")
    if not dry_run:
        if not env.get("pycuda", {}).get("imports"):
            problems.append("PyCUDA does not import")
        if not env["gpu"].get("name"):
            problems.append("no GPU in nvidia-smi")
    return problems


def _run_env_step(args, doc: dict, log: _Log) -> None:
    """The ``env`` step, in process; the figures a results file needs go to the top."""
    log.header("step env")
    t0 = time.monotonic()
    try:
        env = env_step(args, log)
        doc["env"] = env
        doc["gpu"] = env["gpu"].get("name")
        doc["driver"] = env["gpu"].get("driver")
        doc["allow_tf32"] = env["allow_tf32"]
        problems = _env_problems(env, args.dry_run)
        doc["steps"]["env"] = {
            "status": "fail" if problems else "ok",
            "seconds": round(time.monotonic() - t0, 2),
            "detail": "; ".join(problems),
        }
    except Exception as e:
        doc["steps"]["env"] = {"status": "fail", "detail": f"{type(e).__name__}: {e}"}
        doc["gpu"] = doc["driver"] = doc["allow_tf32"] = None


def _collect_bench(name: str, out: Path, doc: dict) -> None:
    """A benchmark step's figures, from the file it wrote, into ``doc["bench"]``."""
    key, file = (
        ("gemm", "bench_gemm.json") if name == "bench_gemm" else ("mnist_mlp", "bench_mlp.json")
    )
    with contextlib.suppress(OSError, json.JSONDecodeError):
        part = json.loads((out / file).read_text())
        doc["bench"][key] = part.get(key)
        doc["bench"].setdefault("meta", part.get("meta"))


def _judge_step(name: str, p: dict, r: dict, out: Path, doc: dict) -> tuple[bool, list[str]]:
    """Whether a finished step passed, and the notes on it (``r`` gains its figures)."""
    notes = [p["note"]] if p.get("note") else []
    ok = p["rc"] == 0 and not p["timed_out"]
    result = result_line(p["output"])
    if result is not None:
        r["result"] = result
    if name == "pytest":
        ok = judge_pytest(p, r, out / "pytest.xml", notes) and ok
    elif name == "sanitizer":
        ok = judge_sanitizer(p, r, result, notes)
    elif name in ("bench_gemm", "bench_mlp"):
        _collect_bench(name, out, doc)
    elif name == "pycuda" and result is not None and result.get("error"):
        notes.insert(0, result["error"])
    if result is not None and not result.get("ok", True):
        ok = False
        if result.get("error") and name != "pycuda":
            notes.append(result["error"])
    return ok, notes


def _run_step(st: dict, timeout: float, args, doc: dict, log: _Log, env: dict) -> dict:
    """One step in its own process, judged; returns its entry of ``doc["steps"]``."""
    name = st["step"]
    r: dict = {"command": st["command"], "timeout_s": st["timeout_s"]}
    log.header(f"step {name} (timeout {timeout:.0f} s): {st['command']}")
    if name == "sanitizer":  # every tensor its own allocation: out-of-bounds is visible
        env = child_env({"PYTORCH_NO_CUDA_MEMORY_CACHING": "1"})
    if name == "pytest":
        with contextlib.suppress(OSError):
            (args.out / "pytest.xml").unlink()
    p = run_step_process(st["argv"], timeout, log, env=env)
    r.update(rc=p["rc"], seconds=p["seconds"], timed_out=p["timed_out"])
    ok, notes = _judge_step(name, p, r, args.out, doc)
    r["status"] = "ok" if ok else ("timeout" if p["timed_out"] else "fail")
    r["detail"] = "; ".join(notes)
    return r


def _run_steps(args, doc: dict, save: Callable[[], None], log: _Log) -> None:
    """Every step but ``env``, in order, each saved as soon as it is done."""
    deadline = log.t_start + args.budget
    env_child = child_env()
    for st in doc["plan"]:
        name = st["step"]
        if name == "env":
            continue
        r: dict = {"command": st["command"], "timeout_s": st["timeout_s"]}
        if st["skip"]:
            doc["steps"][name] = {**r, "status": "skipped", "detail": "--skip"}
            save()
            continue
        left = deadline - time.monotonic()
        if left < 10:
            doc["steps"][name] = {**r, "status": "fail", "detail": "no time left in the budget"}
            save()
            continue
        r = _run_step(st, min(st["timeout_s"], left), args, doc, log, env_child)
        doc["steps"][name] = r
        doc["acceptance"] = acceptance(doc["bench"].get("gemm"), doc["bench"].get("mnist_mlp"))
        save()
        log.header(f"step {name}: {r['status']} {r['detail']}")


def _finish(doc: dict, result: str, save: Callable[[], None], log: _Log) -> None:
    doc["result"] = result
    save()
    log("\n".join(summary_lines(doc)) + "\n")
    log.close()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    if args.step:
        return worker(args.step, args)
    t_start = time.monotonic()
    try:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / ".write-test").touch()
        (args.out / ".write-test").unlink()
    except OSError as e:
        print(f"python -m bnnlib.gpucheck: cannot write to --out {args.out}: {e.strerror or e}",
              file=sys.stderr)  # fmt: skip
        return 2
    log = _Log(args.out / "gpucheck.log", t_start)
    doc = _skeleton(args, argv, plan(args))

    def save() -> None:
        write_json(args.out / "gpucheck.json", doc)

    save()  # the skeleton, before anything can fail
    _log_plan(args, doc["plan"], log)
    _run_env_step(args, doc, log)
    save()
    if args.dry_run:
        env_step = doc["steps"]["env"]
        ok = env_step["status"] == "ok"
        _finish(doc, "dry run: ready" if ok else "dry run: " + env_step["detail"], save, log)
        return 0 if ok else 1
    _run_steps(args, doc, save, log)
    failed = [n for n, r in doc["steps"].items() if r.get("status") not in ("ok", "skipped")]
    doc["seconds"] = round(time.monotonic() - t_start, 1)
    doc["date_end"] = now_iso()
    _finish(doc, "ok" if not failed else "FAILED: " + ", ".join(failed), save, log)
    return 0 if not failed else 1
