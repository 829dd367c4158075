"""The draw-a-digit weights file: the packed MLP as the page's JavaScript reads it.

:func:`export_weights` writes ``b"BNND"``, a little-endian uint32 header length, the JSON header
(layers with their sizes and byte offsets), zero padding to a multiple of 8, then the body: per
layer the packed rows as little-endian uint32 words (``row_words`` per output; bit ``i % 32`` of
word ``i // 32`` is input ``i``, bit 1 = +1, the 64-bit words of :func:`bnnlib.kernels.pack`
read as pairs of 32-bit words), then int32 thresholds and directions (hidden) or float64
``a, mu, beta`` (last layer). :func:`parse_weights` reads it back and checks it as ``draw.js``
does (:func:`check_layers`: the layers chain, each array lies inside the body).
:func:`reference` computes the network from the file with numpy, the arithmetic of the
JavaScript (paper Sections 1.6 and 3.2), to check the file against PackedNet without a browser.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from bnnlib.inference import PackedNet
from bnnlib.inference.fold import Affine
from bnnlib.inference.spec import LinearSpec

__all__ = [
    "MAGIC",
    "VERSION",
    "SIZE",
    "export_weights",
    "DrawModel",
    "check_layers",
    "parse_weights",
    "reference",
]


MAGIC = b"BNND"
VERSION = 1
SIZE = 28


def _align(n: int, to: int = 8) -> int:
    return -(-n // to) * to


def export_weights(net: PackedNet) -> bytes:
    """The packed MLP ``net`` as the weights file the JavaScript reads (module docstring).

    Only MLPs of 28 x 28 images (linear layers, a Sign after every hidden one) run in the page;
    anything else is a ValueError naming the layer.
    """
    if [int(v) for v in net.input_shape] not in ([784], [1, 28, 28], [28, 28]):
        raise ValueError(
            f"draw-a-digit takes models of 28 x 28 images, this one takes {net.input_shape}"
        )
    layers, body = [], bytearray()

    def put(arr: np.ndarray) -> int:
        body.extend(b"\0" * (_align(len(body)) - len(body)))
        offset = len(body)
        body.extend(np.ascontiguousarray(arr).tobytes())
        return offset

    for i, lay in enumerate(net.layers):
        spec = lay.spec
        if not isinstance(spec, LinearSpec) or spec.layout.groups != 1:
            raise ValueError(
                f"{spec.name}: draw-a-digit runs MLPs of linear layers only, not {spec.kind}"
            )
        last = i == len(net.layers) - 1
        if last != isinstance(lay.output, Affine):
            raise ValueError(f"{spec.name}: expected Sign on every hidden layer, scores last")
        words = lay.weight.contiguous().numpy().astype("<i8").view("<u4")  # LSB word first
        entry: dict[str, Any] = {
            "name": spec.name,
            "kind": "scores" if last else "sign",
            "first": spec.first,
            "in": spec.layout.k,
            "out": spec.out_size,
            "row_words": int(words.shape[1]),
            "weight": put(words),
        }
        if last:
            for t in ("a", "mu", "beta"):
                entry[t] = put(getattr(lay.output, t).double().numpy().astype("<f8"))
        else:
            entry["threshold"] = put(lay.output.threshold.numpy().astype("<i4"))
            entry["direction"] = put(lay.output.direction.numpy().astype("<i4"))
        layers.append(entry)
    head = {"version": VERSION, "source": str(net.source), "classes": net.num_classes}
    head["layers"] = layers
    # body_offset depends on the header's length, which holds it: fix it by iterating.
    offset = 0
    while True:
        head["body_offset"] = offset
        text = json.dumps(head, sort_keys=True).encode()
        need = _align(8 + len(text))
        if need == offset:
            break
        offset = need
    out = MAGIC + struct.pack("<I", len(text)) + text
    return out + b"\0" * (offset - len(out)) + bytes(body)


@dataclass(frozen=True)
class DrawModel:
    """A parsed weights file: its JSON ``header`` and per layer its numpy arrays."""

    header: dict
    layers: list[dict[str, Any]]

    @property
    def hidden_sizes(self) -> list[int]:
        """Units of each hidden layer."""
        return [L["out"] for L in self.layers if L["kind"] == "sign"]


def check_layers(header: Any, body_bytes: int) -> list[dict[str, Any]]:
    """The header's layers, checked as ``draw.js`` checks them (``checkModel``) before it runs
    anything: the first takes 784 pixels, each takes what the one before gives, ``row_words``
    fits ``in``, hidden layers are ``sign`` and the last ``scores``, every array lies inside
    the body (``body_bytes`` long) at an offset aligned for its type. ValueError naming the
    layer and the field otherwise."""
    layers = header.get("layers") if isinstance(header, dict) else None
    if not isinstance(layers, list) or not layers:
        raise ValueError("the weights file's header has no list of layers")
    prev = SIZE * SIZE
    for i, L in enumerate(layers):
        where = f"layer {i}"
        if not isinstance(L, dict):
            raise ValueError(f"{where} is not a JSON object")
        for key in ("in", "out", "row_words", "weight"):
            if not isinstance(L.get(key), int) or isinstance(L.get(key), bool) or L[key] < 0:
                raise ValueError(f"{where}: {key} must be an integer >= 0, got {L.get(key)!r}")
        last = i == len(layers) - 1
        if L.get("kind") != ("scores" if last else "sign") or L.get("first") is not (i == 0):
            raise ValueError(
                f"{where}: kind {L.get('kind')!r}, first {L.get('first')!r}; "
                "want sign layers, then one scores layer, the first one first"
            )
        if L["in"] != prev or L["out"] < 1:
            raise ValueError(f"{where} takes {L['in']} inputs, the layer before gives {prev}")
        if L["row_words"] != 2 * -(-L["in"] // 64):  # the 64-bit words of kernels.pack
            raise ValueError(
                f"{where}: row_words {L['row_words']} does not hold {L['in']} inputs "
                f"({2 * -(-L['in'] // 64)} words of 32 bits)"
            )
        arrays = {"weight": (4, L["out"] * L["row_words"])}
        names = ("a", "mu", "beta") if last else ("threshold", "direction")
        arrays.update({t: (8 if last else 4, L["out"]) for t in names})
        for key, (size, count) in arrays.items():
            off = L.get(key)
            if not isinstance(off, int) or isinstance(off, bool) or off < 0 or off % size:
                raise ValueError(f"{where}: offset {key} {off!r} is not aligned for its type")
            if off + size * count > body_bytes:
                raise ValueError(f"{where}: {key} lies outside the file (a truncated file?)")
        prev = L["out"]
    return layers


def parse_weights(blob: bytes) -> DrawModel:
    """The weights file ``blob`` (:func:`export_weights`) as numpy arrays, checked
    (:func:`check_layers`); ValueError if bad."""
    if blob[:4] != MAGIC or len(blob) < 8:
        raise ValueError(f"not a draw-a-digit weights file (starts {blob[:4]!r}, want {MAGIC!r})")
    (n,) = struct.unpack("<I", blob[4:8])
    try:
        header = json.loads(blob[8 : 8 + n].decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"the weights file's header is not JSON ({e})") from None
    if not isinstance(header, dict) or header.get("version") != VERSION:
        version = header.get("version") if isinstance(header, dict) else None
        raise ValueError(f"draw-a-digit weights version {version}, want {VERSION}")
    base = header.get("body_offset")
    if not isinstance(base, int) or not 8 + n <= base <= len(blob) or base % 8:
        raise ValueError(f"body_offset {base!r} is not an aligned offset inside the file")

    def arr(offset: int, dtype: str, count: int) -> np.ndarray:
        return np.frombuffer(blob, dtype=dtype, count=count, offset=base + offset)

    layers = []
    for L in check_layers(header, len(blob) - base):
        e = dict(L)
        e["w"] = arr(L["weight"], "<u4", L["out"] * L["row_words"]).reshape(L["out"], -1)
        if L["kind"] == "scores":
            for t in ("a", "mu", "beta"):
                e[t] = arr(L[t], "<f8", L["out"])
        else:
            e["thr"] = arr(L["threshold"], "<i4", L["out"]).astype(np.int64)
            e["dir"] = arr(L["direction"], "<i4", L["out"]).astype(np.int64)
        layers.append(e)
    return DrawModel(header, layers)


def _bits(words: np.ndarray, n: int) -> np.ndarray:
    """(N, W) uint32 words -> (N, n) 0/1, bit i % 32 of word i // 32."""
    b = np.unpackbits(words.astype("<u4").view(np.uint8), axis=-1, bitorder="little")
    return b[:, :n].astype(np.int64)


def _exact(v: np.ndarray) -> np.ndarray:
    """An integer-valued float32 product (sums below 2^24: exact) as int64."""
    return np.rint(v).astype(np.int64)


def reference(blob: bytes | DrawModel, X: Any) -> tuple[np.ndarray, np.ndarray]:
    """The network of a weights file on uint8 images ``X`` (N, 784): float64 scores (N,
    classes) and the +1 bits of each hidden layer, (N, hidden layers) ints. The arithmetic of
    the JavaScript (module docstring), in numpy: checks the file against PackedNet."""
    m = blob if isinstance(blob, DrawModel) else parse_weights(blob)
    x = np.asarray(torch.as_tensor(X).reshape(len(X), -1).numpy(), dtype=np.int64)
    if x.shape[1] != SIZE * SIZE or x.min(initial=0) < 0 or x.max(initial=0) > 255:
        raise ValueError(f"reference takes uint8 images of 784 pixels, got {tuple(x.shape)}")
    fires, act = [], None
    for L in m.layers:
        wpm = 2 * _bits(L["w"], L["in"]) - 1  # (out, in) +/-1
        w32 = wpm.T.astype(np.float32)  # float32 products of +/-1 and 0/1: exact integers
        if L["first"]:
            # the bit planes: sum_n 2^n (2 popcount(x^n & w) - popcount(x^n)) = W_b . x
            dot = sum(_exact(((x >> b) & 1).astype(np.float32) @ w32) << b for b in range(8))
            s = 2 * dot - 255 * wpm.sum(1)
        else:
            s = _exact((2 * act - 1).astype(np.float32) @ w32)  # k - 2 popcount(a XOR w)
        if L["kind"] == "scores":
            v = s.astype(np.float64) / 255.0 if L["first"] else s.astype(np.float64)
            return L["a"] * (v - L["mu"]) + L["beta"], np.stack(fires, 1)
        act = np.where(L["dir"] >= 0, s >= L["thr"], s <= L["thr"]).astype(np.int64)
        fires.append(act.sum(1))
    raise ValueError("the weights file has no scores layer")
