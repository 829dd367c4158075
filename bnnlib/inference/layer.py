"""A loaded layer of a :class:`~bnnlib.inference.PackedNet`: its spec, packed weights, and the
typed parts of its input and output sides.

:class:`PackedLayer` holds them; its input side is :class:`ImageInput` for the first layer
(which reads 8-bit pixels, paper Section 1.6) or :class:`BinaryInput` for a hidden one (packed
+/-1 activations); its output side :class:`SignOutput` (batch norm + Sign as one integer compare
per neuron, :mod:`bnnlib.inference.fold`) or the float64 :class:`~bnnlib.inference.fold.Affine`
of the last layer's batch norm. :mod:`bnnlib.inference.runtime` builds and checks them at load.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from bnnlib.inference.fold import Affine
from bnnlib.inference.spec import LayerSpec

__all__ = ["PackedLayer", "ImageInput", "BinaryInput", "SignOutput"]


@dataclass(frozen=True)
class ImageInput:
    """The input side of the first layer, which reads the 8-bit image, not packed bits.

    ``wb``: its +/-1 weights as float32 (out, k), for the ``"real"`` product and the int8 rows;
    ``wsum``: int32 sums of W_b over the valid (non-padded) inputs, (out,) for a linear layer
    or (Ho * Wo, out) for a convolution (``t = 2 W_b . x - 255 wsum``, module docstring).
    """

    wb: torch.Tensor
    wsum: torch.Tensor


@dataclass(frozen=True)
class BinaryInput:
    """The input side of a hidden layer, which reads packed +/-1 activations.

    ``pad_fix``: for a convolution, the int32 (Ho * Wo, out) sums of W_b over the zero-padded
    positions of each output position (the padding correction, module docstring); None for a
    linear layer.
    """

    pad_fix: torch.Tensor | None = None


@dataclass(frozen=True)
class SignOutput:
    """The output side of a hidden layer: batch norm + Sign as the kernels' integer compare.

    ``threshold`` and ``direction`` are int32 (out,): a neuron fires for ``s >= threshold``
    (direction +1) or ``s <= threshold`` (-1), from the file's (T, flip) by
    :func:`~bnnlib.inference.fold.kernel_thresholds`.
    """

    threshold: torch.Tensor
    direction: torch.Tensor

    @property
    def flip(self) -> torch.Tensor:
        """bool (out,): the neurons whose compare flips (gamma < 0)."""
        return self.direction < 0


@dataclass(eq=False)
class PackedLayer:
    """One layer of a :class:`PackedNet`, as loaded and checked.

    * ``spec``: its typed spec (:mod:`bnnlib.inference.spec`);
    * ``weight``: the packed int64 words (out, groups * words_per_group);
    * ``input``: :class:`ImageInput` for the first layer, else :class:`BinaryInput`;
    * ``output``: :class:`SignOutput` for a hidden layer (``spec.output == "sign"``), the
      float64 :class:`~bnnlib.inference.fold.Affine` of the last layer's batch norm
      (``"scores"``);
    * ``cache``: its tensors copied to other devices (:meth:`Backend.get`).
    """

    spec: LayerSpec
    weight: torch.Tensor
    input: ImageInput | BinaryInput
    output: SignOutput | Affine
    cache: dict = field(default_factory=dict)

    @property
    def flip(self) -> torch.Tensor | None:
        """bool (out,): the neurons whose compare flips (gamma < 0); None for the last layer."""
        return self.output.flip if isinstance(self.output, SignOutput) else None
