"""Packed inference: a trained BNN as bits and integer thresholds (paper Sections 2.6 and 4).

After training only the binarized weights W_b = Sign(W) and the batch-norm statistics matter.
:func:`export` writes them as packed bits (64 weights to an int64 word, bit 1 = +1, LSB first,
as :func:`bnnlib.kernels.pack`), and :func:`load` returns a :class:`PackedNet` whose hidden
layers run with XNOR-popcount (:func:`bnnlib.kernels.xnor_gemm`) and integer compares only.
Its predictions equal those of the float simulation (:func:`simulate`) image for image.
Inputs are uint8 pixels or floats exactly as :func:`bnnlib.data.scale` gives them; anything else
(float pixels 0..255 or 0..1, NaN, inf) is refused by :func:`to_uint8`, never clamped.

One module per job:

* :mod:`~bnnlib.inference.fold`: batch norm + Sign folded into one integer threshold per neuron;
* :mod:`~bnnlib.inference.graph`: the model walked into units (binary layer, pooling, batch
  norm, Sign), the input's shape and scaling;
* :mod:`~bnnlib.inference.spec`: the typed, frozen layer specs (:class:`LinearSpec`,
  :class:`Conv2dSpec`) the package works on, read from and written to the file's JSON header;
* :mod:`~bnnlib.inference.format`: the versioned safetensors file, :func:`export` and
  :func:`load` (:class:`PackedModelError` for a bad file: corrupted, or a header whose shapes
  disagree with each other, the tensors or the limits of
  :func:`~bnnlib.inference.runtime.check_header`);
* :mod:`~bnnlib.inference.runtime`: :class:`PackedNet`, loading and checking its layers,
  running them;
* :mod:`~bnnlib.inference.layer`: a loaded layer (:class:`PackedLayer`) and the typed parts
  of its input and output sides;
* :mod:`~bnnlib.inference.backend`: its back ends, one interface (:class:`Backend`)
  implemented by :class:`CpuBackend` (numba) and :class:`CudaBackend`;
* :mod:`~bnnlib.inference.fused`: the small-batch CPU path :class:`PackedNet` takes by itself
  (a whole MLP in one compiled call; direct packed convolutions for ConvNets);
* :mod:`~bnnlib.inference.simulate`: the float simulation, the exact reference;
* :mod:`~bnnlib.inference.cli`: ``python -m bnnlib.inference MODEL --dataset NAME``, the test
  error of a packed model.
"""

from bnnlib.data.loaders import to_uint8
from bnnlib.inference.backend import Backend, CpuBackend, CudaBackend, backend
from bnnlib.inference.cli import main
from bnnlib.inference.fold import Affine, fold_batchnorm, integer_thresholds, kernel_thresholds
from bnnlib.inference.format import FORMAT, FORMAT_VERSION, PackedModelError, export, load
from bnnlib.inference.graph import INPUT_SCALING
from bnnlib.inference.runtime import PackedNet
from bnnlib.inference.simulate import float32_nbytes, simulate, simulate_scores
from bnnlib.inference.spec import Conv2dSpec, LayerSpec, LinearSpec

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "INPUT_SCALING",
    "PackedModelError",
    "PackedNet",
    "export",
    "load",
    "simulate",
    "simulate_scores",
    "float32_nbytes",
    "to_uint8",
    "fold_batchnorm",
    "integer_thresholds",
    "kernel_thresholds",
    "Affine",
    "LayerSpec",
    "LinearSpec",
    "Conv2dSpec",
    "Backend",
    "CpuBackend",
    "CudaBackend",
    "backend",
    "main",
]
