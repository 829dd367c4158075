"""A packed model's header, checked before anything it sizes is allocated.

:func:`check_header` checks every layer's shapes against the layer before, against sane
limits (:data:`MAX_SIDE`, :data:`MAX_ELEMENTS`, :data:`MAX_LAYERS`) and against the tensors
of the file; :class:`bnnlib.inference.runtime.PackedNet` calls it first.
"""

from __future__ import annotations

import math

import torch

from bnnlib.analysis.trace import window_out

__all__ = ["check_header", "MAX_SIDE", "MAX_ELEMENTS", "MAX_LAYERS"]


#: The largest input image side a packed model may declare (pixels).
MAX_SIDE = 4096
#: The most values per image of the input or of any layer's output (channels x height x width):
#: the load-time tables (first-layer weight sums, padding corrections) are this large.
MAX_ELEMENTS = 1 << 26
MAX_LAYERS = 1024


def _int(v, what: str, low: int) -> int:
    if type(v) is not int or v < low:  # JSON true/false are no sizes
        raise ValueError(f"{what} must be an integer >= {low}, got {v!r}")
    return v


def _ints(v, n: int, what: str, low: int) -> list[int]:
    if not isinstance(v, list) or len(v) != n:
        raise ValueError(f"{what} must be a list of {n} integers, got {v!r}")
    return [_int(i, what, low) for i in v]


def _elements(n: int, what: str) -> None:
    if n > MAX_ELEMENTS:
        raise ValueError(
            f"{what} has {n:,} values per image, more than this reader's limit of "
            f"{MAX_ELEMENTS:,} (bnnlib.inference.runtime.MAX_ELEMENTS)"
        )


def _window(hw: list[int], spec: dict, what: str, pool: bool = False) -> list[int]:
    """Output size of a conv or pool window ``spec`` over ``hw``, its fields checked (a pool's
    padding is at most half its kernel, as torch's max-pooling requires)."""
    kernel = _ints(spec.get("kernel"), 2, f"{what} kernel", 1)
    stride = _ints(spec.get("stride"), 2, f"{what} stride", 1)
    padding = _ints(spec.get("padding"), 2, f"{what} padding", 0)
    out = window_out(hw, kernel, stride, padding)
    if min(out) < 1 or (pool and any(p > k // 2 for p, k in zip(padding, kernel, strict=True))):
        raise ValueError(
            f"{what}: kernel {kernel}, stride {stride}, padding {padding} do not fit a "
            f"{hw[0]} x {hw[1]} input (output at least 1 x 1; a pool's padding at most half "
            "its kernel)"
        )
    return out


def _check_layer(i: int, spec, n_layers: int, c: int, hw):
    """One layer's spec against the shape it receives: (its tensors, next c, next hw)."""
    where = f"layer {i}"
    if not isinstance(spec, dict):
        raise ValueError(f"{where}: not a JSON object")
    first, output = i == 0, "scores" if i == n_layers - 1 else "sign"
    if spec.get("name") != f"layers.{i}" or spec.get("first") is not first:
        raise ValueError(f"{where}: name {spec.get('name')!r} / first {spec.get('first')!r}")
    if spec.get("output") != output:
        raise ValueError(f"{where}: output {spec.get('output')!r}, expected {output!r}")
    kind = spec.get("kind")
    if kind == "conv2d":
        if hw is None:
            raise ValueError(f"{where}: a convolution needs an image, gets {c} features")
        if spec.get("in_channels") != c or spec.get("in_hw") != hw:
            raise ValueError(
                f"{where}: in_channels {spec.get('in_channels')!r}, in_hw {spec.get('in_hw')!r}, "
                f"but the layer before gives {c} channels of {hw}"
            )
        out = _int(spec.get("out_channels"), f"{where} out_channels", 1)
        out_hw = _window(hw, spec, where)
        if spec.get("out_hw") != out_hw:
            raise ValueError(f"{where}: out_hw {spec.get('out_hw')!r}, its window gives {out_hw}")
        _elements(out * out_hw[0] * out_hw[1], f"{where}'s output")
        kh, kw = spec["kernel"]
        k = c * kh * kw
        groups, group_size = (1, k) if first else (kh * kw, c)
        pooled = out_hw
        if spec.get("pool") is not None:
            pool = spec["pool"]
            if not isinstance(pool, dict) or not isinstance(pool.get("after_bn"), bool):
                raise ValueError(f"{where}: bad pool spec {pool!r}")
            pooled = _window(out_hw, pool, f"{where} pool", pool=True)
        if spec.get("pooled_hw") != pooled:
            raise ValueError(f"{where}: pooled_hw {spec.get('pooled_hw')!r}, expected {pooled}")
        c_next, hw_next = out, pooled
    elif kind == "linear":
        n_in = c * hw[0] * hw[1] if hw is not None else c
        if spec.get("in_features") != n_in:
            raise ValueError(
                f"{where}: in_features {spec.get('in_features')!r}, the layer before gives {n_in}"
            )
        out = _int(spec.get("out_features"), f"{where} out_features", 1)
        k = n_in
        groups, group_size = (hw[0] * hw[1], c) if hw is not None and not first else (1, n_in)
        c_next, hw_next = out, None
    else:
        raise ValueError(f"{where}: unknown kind {kind!r}")
    words = -(-group_size // 64)
    layout = {"k": k, "groups": groups, "group_size": group_size, "words_per_group": words}
    layout["packed_bits"] = groups * words * 64
    for key, want in layout.items():
        if spec.get(key) != want:
            raise ValueError(f"{where}: {key} is {spec.get(key)!r}, its shapes give {want}")
    name = spec["name"]
    want_tensors = {f"{name}.weight": ((out, groups * words), torch.int64)}
    if output == "sign":
        want_tensors[f"{name}.threshold"] = ((out,), torch.int64)
        want_tensors[f"{name}.flip"] = ((out,), torch.uint8)
    else:
        want_tensors.update({f"{name}.{t}": ((out,), torch.float64) for t in ("a", "mu", "beta")})
    return want_tensors, c_next, hw_next


def check_header(header: dict, tensors: dict[str, torch.Tensor]) -> None:
    """Check a packed model's header before it sizes anything: every layer's shapes against the
    layer before, against sane limits (images up to :data:`MAX_SIDE` square, at most
    :data:`MAX_ELEMENTS` values per image of any layer) and against the tensors, which must be
    exactly those the header implies (names, shapes, dtypes). One ValueError names the problem.
    A checksum cannot stand in for this: whoever crafts a file can recompute it."""
    if not isinstance(header, dict) or not isinstance(header.get("input"), dict):
        raise ValueError("the header is not a JSON object with an 'input' object")
    shape = header["input"].get("shape")
    if not isinstance(shape, list) or len(shape) not in (1, 3):
        raise ValueError(f"input shape must be [features] or [C, H, W], got {shape!r}")
    shape = _ints(shape, len(shape), "input shape", 1)
    if len(shape) == 3 and max(shape[1:]) > MAX_SIDE:
        raise ValueError(
            f"input images of {shape[1]} x {shape[2]} pixels; this reader takes images up to "
            f"{MAX_SIDE} x {MAX_SIDE} (bnnlib.inference.runtime.MAX_SIDE)"
        )
    _elements(math.prod(shape), "the input")
    layers = header.get("layers")
    if not isinstance(layers, list) or not 1 <= len(layers) <= MAX_LAYERS:
        raise ValueError(f"layers must be a list of 1 to {MAX_LAYERS} layer specs")
    c, hw = shape[0], (shape[1:] if len(shape) == 3 else None)
    expected: dict[str, tuple[tuple[int, ...], torch.dtype]] = {}
    for i, spec in enumerate(layers):
        want, c, hw = _check_layer(i, spec, len(layers), c, hw)
        expected.update(want)
    if header.get("num_classes") != c:
        raise ValueError(f"num_classes is {header.get('num_classes')!r}, the last layer gives {c}")
    extra, missing = sorted(set(tensors) - set(expected)), sorted(set(expected) - set(tensors))
    if extra or missing:
        raise ValueError(f"tensors not in the header: {extra[:5]}; missing: {missing[:5]}")
    for name, (want_shape, dtype) in expected.items():
        t = tensors[name]
        if tuple(t.shape) != want_shape or t.dtype != dtype:
            raise ValueError(
                f"tensor {name} is {t.dtype} {tuple(t.shape)}, the header implies "
                f"{dtype} {want_shape}"
            )
