"""Judging a ``python -m bnnlib.gpucheck`` run: pytest's and compute-sanitizer's output, the
steps' result lines, the benchmarks' exactness and speed targets, and the final summary."""

from __future__ import annotations

import contextlib
import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path

from bnnlib.gpucheck.config import BEGIN_TAG, END_TAG, RESULT_TAG
from bnnlib.gpucheck.sanitize import SANITIZE_CASES


def pytest_counts(junit_xml: Path | None, output: str = "") -> dict:
    """passed / failed / errors / skipped from pytest's JUnit XML, else from its summary line."""
    counts = {"passed": 0, "failed": 0, "errors": 0, "skipped": 0, "source": None}
    if junit_xml is not None and Path(junit_xml).is_file():
        with contextlib.suppress(ET.ParseError, OSError, ValueError):
            root = ET.parse(junit_xml).getroot()
            suites = [root] if root.tag == "testsuite" else root.findall("testsuite")
            tot = {k: 0 for k in ("tests", "failures", "errors", "skipped")}
            for s in suites:
                for k in tot:
                    tot[k] += int(s.get(k, 0))
            counts.update(
                passed=tot["tests"] - tot["failures"] - tot["errors"] - tot["skipped"],
                failed=tot["failures"],
                errors=tot["errors"],
                skipped=tot["skipped"],
                source="junit",
            )
            return counts
    summary = [ln for ln in output.splitlines() if re.search(r"\d+ (passed|failed|skipped)", ln)]
    if summary:
        line = summary[-1]
        for key, pat in (
            ("passed", r"(\d+) passed"),
            ("failed", r"(\d+) failed"),
            ("errors", r"(\d+) errors?\b"),
            ("skipped", r"(\d+) skipped"),
        ):
            m = re.search(pat, line)
            counts[key] = int(m.group(1)) if m else 0
        counts["source"] = "summary line"
    return counts


def sanitizer_report(output: str, kernels: list[str]) -> dict:
    """compute-sanitizer's output -> errors per kernel, unattributed ones, the error summary.

    An error block (a ``========= `` line that is not indented, and its indented lines) is
    given to the kernel whose name it mentions; else to the kernel whose BEGIN/END markers of
    the driver it falls between; else to ``other`` (API errors, torch's own kernels).
    """
    per = {k: 0 for k in kernels}
    other, blocks, current = 0, [], None
    section = None
    names = sorted(kernels, key=len, reverse=True)
    for line in output.splitlines():
        if line.startswith(BEGIN_TAG):
            section = line[len(BEGIN_TAG) :].split()[0]
            continue
        if line.startswith(END_TAG):
            section = None
            continue
        if not line.startswith("========="):
            continue
        body = line[len("=========") :]
        if body.startswith("     ") or body.startswith("\t"):  # detail of the current block
            if current is not None:
                current["text"] += "\n" + body
            continue
        text = body.strip()
        if not text or text.startswith(("ERROR SUMMARY", "COMPUTE-SANITIZER", "LEAK SUMMARY")):
            current = None
            continue
        current = {"text": text, "section": section}  # an access, API or launch error
        blocks.append(current)
    samples: dict[str, list[str]] = {}
    for b in blocks:
        who = next((n for n in names if re.search(rf"\b{re.escape(n)}\b", b["text"])), None)
        who = who or b["section"]
        if who in per:
            per[who] += 1
        else:
            other += 1
            who = "other"
        samples.setdefault(who, [])
        if len(samples[who]) < 3:
            samples[who].append(b["text"][:600])
    m = re.findall(r"ERROR SUMMARY: (\d+) errors?", output)
    return {
        "errors_per_kernel": per,
        "errors_other": other,
        "error_summary": int(m[-1]) if m else None,
        "samples": samples,
    }


def result_line(output: str) -> dict | None:
    for line in reversed(output.splitlines()):
        if line.startswith(RESULT_TAG):
            with contextlib.suppress(json.JSONDecodeError):
                return json.loads(line[len(RESULT_TAG) :])
    return None


def judge_pytest(p: dict, r: dict, junit_xml: Path, notes: list[str]) -> bool:
    """The pytest step passes with tests passed and 0 failed, 0 errors, 0 skipped (a module
    skipped for "no GPU" still exits 0); ``r`` gains the counts, ``notes`` a summary."""
    c = pytest_counts(junit_xml, p["output"])
    r["counts"] = c
    ok = c["failed"] == 0 and c["errors"] == 0 and c["skipped"] == 0
    ok = ok and c["passed"] > 0
    notes.insert(
        0,
        f"{c['passed']} passed, {c['failed']} failed, {c['errors']} errors, {c['skipped']} skipped",
    )
    if c["skipped"]:
        notes.append("skips count as failures on the GPU")
    return ok


def judge_sanitizer(p: dict, r: dict, result: dict | None, notes: list[str]) -> bool:
    """The sanitizer step passes with no memcheck error in our kernels, every case run and
    exact, and an error summary found; ``r`` gains the report, ``notes`` a summary."""
    rep = sanitizer_report(p["output"], list(SANITIZE_CASES))
    r["report"] = rep
    kern = (result or {}).get("kernels", {})
    bad = [k for k, n in rep["errors_per_kernel"].items() if n]
    wrong = [k for k, v in kern.items() if v.get("ok") is False]
    missing = [k for k in SANITIZE_CASES if k not in kern]
    ok = (p["rc"] in (0, 86)) and not p["timed_out"] and not bad and not wrong
    ok = ok and not missing and rep["error_summary"] is not None
    notes.insert(
        0,
        f"errors: {rep['error_summary']} ({', '.join(bad) or 'no kernel'}"
        f"{'; other ' + str(rep['errors_other']) if rep['errors_other'] else ''})"
        + (f"; not exact: {wrong}" if wrong else "")
        + (f"; not run: {missing}" if missing else ""),
    )
    if rep["errors_other"] and not bad:
        notes.append("errors outside our kernels: see samples in gpucheck.json")
    return ok


# --------------------------------------------------------------------------- judging results


def gemm_ok(g: dict) -> bool:
    """Every figure measured without error and exact (bf16 output rounding excepted)."""
    if not g or any(k.endswith("_error") for k in g) or "kernels_unavailable" in g:
        return False
    return all(v for k, v in g.items() if k.endswith("_exact") and "bf16" not in k)


def mlp_ok(m: dict) -> bool:
    """No path failed; the XNOR paths (first layer on the baseline kernel) predict as the
    baseline path; the library's PackedNet.predict on the GPU equals the simulation."""
    if not m or any(k.endswith("_error") for k in m) or "kernels_unavailable" in m:
        return False
    n = m.get("n_images")
    same = [m.get(f"identical_{p}_vs_baseline") == n for p in ("xnor_paper", "xnor_fast")]
    return all(same) and bool(m.get("packed_predict_identical_to_simulation"))


def acceptance(gemm: dict | None, mlp: dict | None) -> dict:
    """The issue's speed targets, as figures and pass/fail (reported; not in the exit code)."""
    gemm, mlp = gemm or {}, mlp or {}
    out: dict = {}
    v = gemm.get("speedup_xnor_paper_with_packing_vs_baseline")
    out["paper_xnor_with_packing_vs_baseline"] = {"x": v, "target": 20, "pass": _ge(v, 20)}
    v = gemm.get("speedup_xnor_paper_vs_baseline")
    out["paper_xnor_prepacked_vs_baseline"] = {"x": v, "target": 20, "pass": _ge(v, 20)}
    fastest = gemm.get("fastest_xnor")
    for view, suffix in (("prepacked", ""), ("with_packing", "_with_packing")):
        v = gemm.get(f"speedup_{fastest}{suffix}_vs_cublas_fp32") if fastest else None
        out[f"fastest_xnor_{view}_vs_cublas_fp32"] = {
            "kernel": fastest,
            "x": v,
            "target": 3,
            "pass": _ge(v, 3),
        }
    n = mlp.get("n_images")
    for path in ("xnor_paper", "xnor_fast", "xnor_fast_bitplanes"):
        v = mlp.get(f"speedup_{path}_vs_baseline")
        same = mlp.get(f"identical_{path}_vs_baseline")
        out[f"mlp_{path}_vs_baseline"] = {
            "x": v,
            "target": 7,
            "identical": same,
            "of": n,
            "pass": _ge(v, 7) and same == n,
        }
    return out


def _ge(v, target) -> bool | None:
    return None if v is None else bool(v >= target)


# --------------------------------------------------------------------------- summary


def summary_lines(doc: dict) -> list[str]:
    from bnnlib.bench.report import gpu_table

    lines = [
        "",
        "=" * 78,
        f"bnnlib.gpucheck {doc['date']}  GPU {doc['env'].get('gpu', {}).get('name')}",
    ]
    lines.append("=" * 78)
    for st in doc["plan"]:
        r = doc["steps"].get(st["step"], {})
        extra = r.get("detail", "")
        lines.append(
            f"  {st['step']:11s} {r.get('status', '?'):8s} {r.get('seconds', 0):7.1f} s "
            f"(timeout {st['timeout_s']:.0f} s)  {extra}"
        )
    bench = doc.get("bench", {})
    lines += gpu_table(bench.get("gemm"), bench.get("mnist_mlp"))
    if doc.get("acceptance"):
        lines.append("Acceptance (speed targets; reported, not in the exit code):")
        for k, v in doc["acceptance"].items():
            x = v.get("x")
            xs = "-" if x is None else f"{x:.2f}x"
            lines.append(f"  {k:44s} {xs:>9} (target {v['target']}x) {v['pass']}")
    lines.append(f"RESULT: {doc['result']}  (files in {doc['out']})")
    return lines
