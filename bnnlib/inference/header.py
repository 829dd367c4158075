"""A packed model's header, checked before anything it sizes is allocated.

:func:`check_header` reads every layer's JSON object as a typed spec
(:mod:`bnnlib.inference.spec`), checks its shapes against the layer before, against sane
limits (:data:`MAX_SIDE`, :data:`MAX_ELEMENTS`, :data:`MAX_LAYERS`) and against the tensors
of the file, and returns the specs; :class:`bnnlib.inference.runtime.PackedNet` calls it first.
"""

from __future__ import annotations

import math

import torch

from bnnlib.inference.spec import (
    Conv2dSpec,
    LayerSpec,
    Pair,
    Window,
    check_ints,
    conv_layout,
    linear_layout,
)

__all__ = ["check_header", "MAX_SIDE", "MAX_ELEMENTS", "MAX_LAYERS", "MAX_CLASSES"]


#: The largest input image side a packed model may declare (pixels).
MAX_SIDE = 4096
#: The most values per image of the input or of any layer's output (channels x height x width):
#: the load-time tables (first-layer weight sums, padding corrections) are this large.
MAX_ELEMENTS = 1 << 26
MAX_LAYERS = 1024
#: The most classes a packed model may have (its scores are float64 per image and class).
MAX_CLASSES = 100_000


def _elements(n: int, what: str) -> None:
    if n > MAX_ELEMENTS:
        raise ValueError(
            f"{what} has {n:,} values per image, more than this reader's limit of "
            f"{MAX_ELEMENTS:,} (bnnlib.inference.runtime.MAX_ELEMENTS)"
        )


def _fits(hw: Pair, window: Window, what: str, pool: bool = False) -> Pair:
    """Output size of ``window`` over ``hw``, which must be at least 1 x 1 (and a pool's
    padding at most half its kernel, as torch's max-pooling requires)."""
    out = window.out_hw(hw)
    kernel, stride, padding = list(window.kernel), list(window.stride), list(window.padding)
    if min(out) < 1 or (pool and any(p > k // 2 for p, k in zip(padding, kernel, strict=True))):
        raise ValueError(
            f"{what}: kernel {kernel}, stride {stride}, padding {padding} do not fit a "
            f"{hw[0]} x {hw[1]} input (output at least 1 x 1; a pool's padding at most half "
            "its kernel)"
        )
    return out


def _check_layer(i: int, raw, n_layers: int, c: int, hw: Pair | None):
    """One layer's header object against the shape it receives: (its typed spec, its tensors,
    next c, next hw)."""
    where = f"layer {i}"
    if isinstance(raw, dict) and raw.get("kind") == "conv2d" and hw is None:
        # Said before the convolution's fields are read: what is wrong is its input.
        raise ValueError(f"{where}: a convolution needs an image, gets {c} features")
    spec = LayerSpec.from_header(raw, where)
    first, output = i == 0, "scores" if i == n_layers - 1 else "sign"
    if spec.name != f"layers.{i}" or spec.first is not first:
        raise ValueError(f"{where}: name {spec.name!r} / first {spec.first!r}")
    if spec.output != output:
        raise ValueError(f"{where}: output {spec.output!r}, expected {output!r}")
    if isinstance(spec, Conv2dSpec):
        if spec.in_channels != c or spec.in_hw != hw:
            raise ValueError(
                f"{where}: in_channels {spec.in_channels!r}, in_hw {list(spec.in_hw)!r}, "
                f"but the layer before gives {c} channels of {list(hw)}"
            )
        out_hw = _fits(hw, spec.window, where)
        if spec.out_hw != out_hw:
            raise ValueError(
                f"{where}: out_hw {list(spec.out_hw)!r}, its window gives {list(out_hw)}"
            )
        _elements(spec.out_channels * out_hw[0] * out_hw[1], f"{where}'s output")
        pooled = out_hw if spec.pool is None else _fits(out_hw, spec.pool, f"{where} pool", True)
        if spec.pooled_hw != pooled:
            raise ValueError(
                f"{where}: pooled_hw {list(spec.pooled_hw)!r}, expected {list(pooled)}"
            )
        layout = conv_layout(first, c, spec.window.kernel)
        c_next, hw_next = spec.out_channels, pooled
    else:
        n_in = c * hw[0] * hw[1] if hw is not None else c
        if spec.in_features != n_in:
            raise ValueError(
                f"{where}: in_features {spec.in_features!r}, the layer before gives {n_in}"
            )
        layout = linear_layout(first, n_in, (c, hw) if hw is not None else None)
        c_next, hw_next = spec.out_features, None
    for key, want in layout.to_header().items():
        got = getattr(spec.layout, key)
        if got != want:
            raise ValueError(f"{where}: {key} is {got!r}, its shapes give {want}")
    out, name = spec.out_size, spec.name
    want_tensors = {f"{name}.weight": ((out, layout.row_words), torch.int64)}
    if output == "sign":
        want_tensors[f"{name}.threshold"] = ((out,), torch.int64)
        want_tensors[f"{name}.flip"] = ((out,), torch.uint8)
    else:
        want_tensors.update({f"{name}.{t}": ((out,), torch.float64) for t in ("a", "mu", "beta")})
    return spec, want_tensors, c_next, hw_next


def check_header(header: dict, tensors: dict[str, torch.Tensor]) -> list[LayerSpec]:
    """Check a packed model's header before it sizes anything: every layer's fields
    (:meth:`~bnnlib.inference.spec.LayerSpec.from_header`), its shapes against the layer
    before, against sane limits (images up to :data:`MAX_SIDE` square, at most
    :data:`MAX_ELEMENTS` values per image of any layer) and against the tensors, which must be
    exactly those the header implies (names, shapes, dtypes). One ValueError names the problem.
    A checksum cannot stand in for this: whoever crafts a file can recompute it.

    Returns the layers' typed specs, in order."""
    if not isinstance(header, dict) or not isinstance(header.get("input"), dict):
        raise ValueError("the header is not a JSON object with an 'input' object")
    if not isinstance(header.get("metadata", {}), dict):
        raise ValueError(
            f"metadata must be a JSON object, got a {type(header['metadata']).__name__}"
        )
    shape = header["input"].get("shape")
    if not isinstance(shape, list) or len(shape) not in (1, 3):
        raise ValueError(f"input shape must be [features] or [C, H, W], got {shape!r}")
    shape = check_ints(shape, len(shape), "input shape", 1)
    if len(shape) == 3 and max(shape[1:]) > MAX_SIDE:
        raise ValueError(
            f"input images of {shape[1]} x {shape[2]} pixels; this reader takes images up to "
            f"{MAX_SIDE} x {MAX_SIDE} (bnnlib.inference.runtime.MAX_SIDE)"
        )
    _elements(math.prod(shape), "the input")
    layers = header.get("layers")
    if not isinstance(layers, list) or not 1 <= len(layers) <= MAX_LAYERS:
        raise ValueError(f"layers must be a list of 1 to {MAX_LAYERS} layer specs")
    c, hw = shape[0], ((shape[1], shape[2]) if len(shape) == 3 else None)
    expected: dict[str, tuple[tuple[int, ...], torch.dtype]] = {}
    specs = []
    for i, raw in enumerate(layers):
        spec, want, c, hw = _check_layer(i, raw, len(layers), c, hw)
        specs.append(spec)
        expected.update(want)
    if header.get("num_classes") != c:
        raise ValueError(f"num_classes is {header.get('num_classes')!r}, the last layer gives {c}")
    if c > MAX_CLASSES:
        raise ValueError(
            f"{c} classes; this reader takes models of up to {MAX_CLASSES} classes "
            "(bnnlib.inference.header.MAX_CLASSES)"
        )
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
    return specs
