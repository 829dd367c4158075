"""The printed table of :mod:`bnnlib.bench` and :mod:`bnnlib.gpucheck`: CPU sections, and
:func:`gpu_table` for the GPU figures (both timing views of the gemm, the MLP paths)."""

from __future__ import annotations

__all__ = ["cpu_table", "gpu_table", "section4_table"]


def cpu_table(res: dict) -> str:
    lines = ["", "=" * 72, "bnnlib.bench " + res["meta"]["date"], "=" * 72]
    lines += _gemm_cpu_lines(res.get("gemm_cpu", {}))
    lines += _mlp_cpu_lines(res.get("mnist_mlp_cpu"))
    lines += _train_step_lines(res.get("train_step_cpu", []))
    lines += _latency_lines(res.get("latency_cpu"))
    gpu = res.get("gpu", {})
    if "skipped" in gpu:
        lines.append(f"GPU: skipped ({gpu['skipped']})")
    elif gpu:
        lines += gpu_table(gpu.get("gemm"), gpu.get("mnist_mlp"))
    return "\n".join(lines)


def section4_table(res: dict) -> str:
    """``--section4``: the paper's three Section 4 comparisons on this CPU."""
    s4 = res.get("section4_cpu", {})
    lines = ["", "=" * 72, "bnnlib.bench --section4 " + res["meta"]["date"], "=" * 72]
    if s4.get("gemm"):
        lines.append("GEMM, M = N = K = n: ms (GMAC/s); ratios measured in this run")
        for g in s4["gemm"]:
            lines.append(f"  n = {g['n']}: {'kernel':<20} {'ms':>10} {'GMAC/s':>8}  exact")
            for k, t in g["seconds"].items():
                ex = g["exact"].get(k, "")
                lines.append(
                    f"  {'':8}{k:<20} {1e3 * t:10.1f} {g['macs_per_s'][k] / 1e9:8.1f}  {ex}"
                )
            r = g["ratios"]
            lines.append(
                f"  XNOR with packing / baseline {r['xnor_with_packing_over_baseline']:.1f}x "
                f"(like for like with the paper's 23x, GPU: its code packs both operands); "
                f"pre-packed {r['xnor_over_baseline']:.1f}x"
            )
            lines.append(
                f"  XNOR / torch float32 {r['xnor_over_torch_float32']:.2f}x (paper: 3.4x cuBLAS); "
                f"/ the best of torch float32, bf16, int8: {r.get('xnor_over_best_torch', 0):.2f}x"
            )
            if "libraries" in g:
                lib = g["libraries"]
                lines.append(
                    f"  torch: BLAS {lib['blas']} {lib['mkl']}, oneDNN {lib['onednn']} "
                    f"{lib['onednn_kernels']}, capability {lib['cpu_capability']}"
                )
    m = s4.get("mlp")
    if m:
        lines.append(f"MNIST MLP 784-{m['hidden']}x3-10, {m['n_images']:,} images at once:")
        for k, t in m["seconds"].items():
            ratio = m["ratios"].get(f"{k}_over_baseline")
            lines.append(
                f"  {k:<20} {1e3 * t:10.1f} ms  {m['ms_per_image'][k]:.4f} ms/image"
                + (f"  {ratio:5.1f}x the baseline kernels" if ratio else "")
            )
        lines.append(f"  predictions identical to the float simulation: {m['all_identical']} "
                     f"({m['identical_to_simulation']})")  # fmt: skip
    return "\n".join(lines)


def _gemm_cpu_lines(g: dict) -> list[str]:
    lines = []
    if "results" in g:
        lines.append("CPU GEMM, M = N = K = n, GMAC/s (multiply-accumulates per second):")
        lines.append("      n   float32     xnor   xnor/float32   +packing   exact")
        for r in g["results"]:
            lines.append(
                f"  {r['n']:5d}  {r['float32_macs'] / 1e9:8.1f} {r['xnor_macs'] / 1e9:8.1f}"
                f"   {r['ratio']:12.2f} {r['ratio_with_packing']:10.2f}   {r['exact']}"
            )
    elif g:
        lines.append(f"CPU GEMM: {g.get('skipped')}")
    return lines


def _mlp_cpu_lines(m: dict | None) -> list[str]:
    if not m:
        return []
    lines = [
        f"MNIST MLP (hidden {m['hidden']}), {m['n_images']} images, CPU:",
        f"  float32 model        {m['float32_s']:8.3f} s",
        f"  packed (real 1st)    {m['packed_s']:8.3f} s   x{m['speedup_packed_over_float32']:.2f}",
        f"  packed (bit planes)  {m['packed_bitplanes_s']:8.3f} s   "
        f"x{m['speedup_bitplanes_over_float32']:.2f}",
        f"  identical to the float simulation: {m['identical_packed_vs_simulation']}"
        f"/{m['n_images']} (bit planes vs real: {m['identical_bitplanes_vs_real']}); "
        f"to the float32 model: {m['identical_packed_vs_float32_model']}",
        f"  weights: float32 {m['weights_float32_bytes']:,} B, packed "
        f"{m['weights_packed_bytes']:,} B, ratio {m['weights_ratio']:.2f}x",
    ]
    if "error_packed" in m:
        lines.append(
            f"  test error: packed {100 * m['error_packed']:.2f}%, float32 model "
            f"{100 * m['error_float32_model']:.2f}%"
        )
    return lines


def _train_step_lines(steps: list[dict]) -> list[str]:
    return [
        f"Training step, MLP hidden {t['hidden']}, batch {t['batch']}: BNN "
        f"{t['bnn_step_s'] * 1e3:.1f} ms, float twin {t['float_step_s'] * 1e3:.1f} ms, "
        f"ratio {t['ratio_bnn_over_float']:.3f} (median of {t['repeats']} paired ratios; "
        f"ratio of medians {t['ratio_of_medians']:.3f})"
        for t in steps
    ]


def _latency_lines(lat: dict | None) -> list[str]:
    if not lat:
        return []
    f, r = lat["floor"], lat["ratios"]
    lines = [
        f"Latency, MNIST MLP, CPU, ms per image ({lat['model'].split(';')[0]}):",
        f"  weight-streaming floor {f['ms']:.4f} ms ({f['bytes']:,} B, {f['GB_per_s']:.1f} GB/s)",
    ]
    if "all_threads_ms" in f:
        lines.append(f"    ({f['threads']} thread(s), as the packed path at batch 1; all "
                     f"{f['numba_threads']} threads {f['all_threads_ms']:.4f} ms, one thread "
                     f"{f['one_thread_ms']:.4f} ms)")  # fmt: skip
    cb = lat.get("compute_bound")
    if cb:
        lines.append(
            f"  compute bound {cb['bound_macs_per_s'] / 1e9:.0f} GMAC/s: "
            f"{cb['macs_per_cycle_per_core']:.0f} binary MACs/cycle/core (XOR-popcount loop, "
            f"{cb.get('by', 'numba_loop')}) x {cb['clock']['measured_hz'] / 1e9:.2f} GHz "
            f"measured x {cb['threads']} threads"
        )
        variants = cb.get("variants_macs_per_cycle", {})
        if len(variants) > 1:
            lines.append(
                "    MACs/cycle/core: " + ", ".join(f"{k} {v:.0f}" for k, v in variants.items())
            )
        hw = cb.get("hand_written") or {}
        if hw and not hw.get("available"):
            lines.append(f"    hand-written C variants not timed: {hw.get('why')}")
        if hw.get("wrong"):
            lines.append(f"    hand-written C variants WRONG (left out): {', '.join(hw['wrong'])}")
    names = [k for k in next(iter(lat["ms_per_image"].values())) if k != "repeats"]
    names = [k for k in names if not k.startswith(("packed_", "float32_"))]
    lines.append("   batch" + "".join(f"{k:>15}" for k in names))
    for b, row in lat["ms_per_image"].items():
        lines.append(f"  {b:>6s}" + "".join(f"{row.get(k, float('nan')):15.4f}" for k in names))
    lines += [f"  {k}: {v:.2f}" for k, v in r.items()]
    same = lat.get("xnor_gemm_same_shape")
    if same:
        g = same["gmac_per_s"]
        lines.append(
            f"  batch {same['batch']:,}, timed in turn: packed {g['packed']:.0f} GMAC/s, "
            f"xnor_gemm {' x '.join(map(str, same['shape']))} {g['xnor_gemm']:.0f} GMAC/s "
            f"({same['xnor_gemm_over_packed']:.2f}x packed)"
        )
    if "libraries" in lat:
        lines.append(f"  torch libraries: {lat['libraries']}")
    e = lat["exactness"]
    lines.append(f"  identical to the simulation, all {e['n_images']} images: {e['all_identical']}")
    if "conv" in lat:
        c = lat["conv"]["batch1_ms"]
        lines.append(
            "CIFAR-10 ConvNet, batch 1, ms: " + ", ".join(f"{k} {v:.3f}" for k, v in c.items())
        )
    return lines


def _x(ratio: float | None, width: int) -> str:
    return " " * width if ratio is None else f"{ratio:{width - 1}.2f}x"


def gpu_table(gemm: dict | None, mlp: dict | None) -> list[str]:
    """Lines summarising the GPU figures: both timing views of the gemm, the MLP paths."""
    return (_gpu_gemm_lines(gemm) if gemm else []) + (_gpu_mlp_lines(mlp) if mlp else [])


def _gpu_gemm_lines(gemm: dict) -> list[str]:
    lines = [
        f"GPU GEMM {gemm.get('n')}^3 on {gemm.get('gpu')} (allow_tf32 as found: "
        f"{gemm.get('allow_tf32')}); ms, TMAC/s, x baseline, x cuBLAS fp32, exact:"
    ]
    names = [k[:-2] for k in gemm if k.endswith("_s") and not k.endswith("_times_s")]
    for name in names:
        t = gemm[f"{name}_s"]
        vb = gemm.get(f"speedup_{name}_vs_baseline")
        vc = gemm.get(f"speedup_{name}_vs_cublas_fp32")
        lines.append(
            f"  {name:32s} {t * 1e3:9.3f} {gemm[f'{name}_macs'] / 1e12:8.2f}"
            f" {_x(vb, 9)} {_x(vc, 9)}"
            f"  {gemm.get(f'{name}_exact', '')}"
        )
    lines += [f"  {k}: {v}" for k, v in gemm.items() if k.endswith("_error")]
    return lines


def _gpu_mlp_lines(mlp: dict) -> list[str]:
    n = mlp.get("n_images")
    lines = [f"GPU MNIST MLP (hidden {mlp.get('hidden')}), {n} images; ms, x baseline:"]
    for name, v in mlp.items():
        if isinstance(v, dict) and "total_s" in v:
            sp = mlp.get(f"speedup_{name}_vs_baseline")
            stages = ", ".join(f"{k} {t * 1e3:.2f}" for k, t in v["stages_s"].items())
            lines.append(
                f"  {name:22s} {v['total_s'] * 1e3:9.2f} {_x(sp, 8)}"
                f"  same as baseline {mlp.get(f'identical_{name}_vs_baseline', '-')}/{n},"
                f" as simulation {mlp.get(f'identical_{name}_vs_simulation', '-')}/{n}"
                f"  [{stages}]"
            )
        elif name.startswith("packed_predict") and name.endswith("_s"):
            key = name[:-2]
            lines.append(
                f"  {key:38s} {v * 1e3:9.2f} ms end to end, as simulation "
                f"{mlp.get(f'identical_{key}_vs_simulation', '-')}/{n}"
            )
    lines += [f"  {k}: {v}" for k, v in mlp.items() if k.endswith("_error")]
    return lines
