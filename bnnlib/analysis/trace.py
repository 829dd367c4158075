"""One forward pass of one sample, recording what each layer saw: the shared model tracer.

:mod:`~bnnlib.analysis.summary` (output shapes and MACs), :mod:`~bnnlib.analysis.energy`
(operation and memory counts) and :mod:`~bnnlib.analysis.filters` (each convolution's output
positions) all need the same thing: run one input through a model and note, for each layer it
calls, the shapes going in and out. :func:`trace` does that with forward hooks, in evaluation mode
and without gradients, and restores the model's mode afterwards::

    >>> import bnnlib
    >>> calls = trace(bnnlib.mnist_mlp(hidden=8, depth=1), (1, 28, 28))
    >>> [(type(c.module).__name__, c.output_shape) for c in calls][:4]
    [('Flatten', (784,)), ('Dropout', (784,)), ('BinaryLinear', (8,)), ('BatchNorm1d', (8,))]

Shapes are of one sample, without the batch dimension. A module called twice is recorded
twice, in call order. Which modules are hooked is a predicate on the module; by default
the *layers* of :func:`layers`: leaf modules and modules that own parameters.

:func:`guess_input_shape` is the input a model most likely reads when none is given: a
model that starts with ``Flatten`` and a 784-input linear layer reads MNIST images
(1, 28, 28); one that starts with a convolution reads the square images of
:func:`image_side` (32 x 32 for the CIFAR-10 and SVHN ConvNet), or 32 x 32 when no side fits;
one that starts with a linear layer reads vectors of its input width; otherwise None.

:func:`image_side` is the shape walk behind it, shared with :func:`bnnlib.inference.export`:
the smallest square image that a model's convolutions and pools turn into exactly the inputs
of its first linear layer, computed from the layers' sizes without running the model.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["Call", "layers", "guess_input_shape", "image_side", "pair", "window_out", "trace"]


@dataclass(frozen=True)
class Call:
    """One call of a hooked module during :func:`trace`.

    ``name`` is the module's name in ``model.named_modules()`` (``""`` for the model
    itself); shapes are of one sample (no batch dimension), ``input_shape`` None when the
    first positional input is not a tensor; ``input_pm1`` says whether every entry of that
    input is exactly +1 or -1 (a binary activation), observed when the call happened.
    """

    name: str
    module: nn.Module
    input_shape: tuple[int, ...] | None
    output_shape: tuple[int, ...]
    input_pm1: bool


def _is_layer(m: nn.Module) -> bool:
    return not list(m.children()) or bool(list(m.parameters(recurse=False)))


def layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, module) of the leaf modules and the modules that own parameters, in
    registration order; an unnamed module (the model itself) is named by its type."""
    return [(name or type(m).__name__, m) for name, m in model.named_modules() if _is_layer(m)]


def pair(v) -> tuple[int, int]:
    """An int or a pair (a layer's kernel, stride, padding) as a pair of ints."""
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


def window_out(hw, kernel, stride, padding, dilation=(1, 1)) -> list[int]:
    """Output height and width of a convolution or pooling window over an ``hw`` input."""
    return [
        (hw[d] + 2 * padding[d] - dilation[d] * (kernel[d] - 1) - 1) // stride[d] + 1
        for d in range(2)
    ]


def _window(m: nn.Module, hw) -> list[int]:
    """Output size of a Conv2d, MaxPool2d or AvgPool2d ``m`` on an ``hw`` input (floor mode)."""
    kernel = pair(m.kernel_size)
    stride = pair(m.stride if m.stride is not None else m.kernel_size)
    dilation = pair(getattr(m, "dilation", 1))
    if m.padding == "same":
        return list(hw)
    padding = (0, 0) if m.padding == "valid" else pair(m.padding)
    return window_out(hw, kernel, stride, padding, dilation)


def _feeds_first_linear(leaves: list[nn.Module], c: int, side: int) -> bool:
    """Whether a side x side image flows through the convolutions and pools into exactly the
    inputs of the first linear layer (other layers keep the shape)."""
    hw = [side, side]
    for m in leaves:
        if isinstance(m, nn.Linear):
            return m.in_features == c * hw[0] * hw[1]
        if isinstance(m, (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)):
            hw = _window(m, hw)
            c = m.out_channels if isinstance(m, nn.Conv2d) else c
            if min(hw) < 1:
                return False
    return False


def image_side(model: nn.Module, max_side: int = 1024) -> int | None:
    """The smallest side of a square image that ``model``'s convolutions and pools (in
    registration order) turn into exactly its first linear layer's inputs (32 for the paper's
    CIFAR-10 ConvNet); None when the model does not start with a convolution followed by a
    linear layer, or no side up to ``max_side`` fits."""
    leaves = [m for _, m in layers(model)]
    first = next((m for m in leaves if isinstance(m, (nn.Conv2d, nn.Linear))), None)
    if not isinstance(first, nn.Conv2d):
        return None
    sides = range(1, max_side + 1)
    return next((s for s in sides if _feeds_first_linear(leaves, first.in_channels, s)), None)


def guess_input_shape(model: nn.Module) -> tuple[int, ...] | None:
    """One sample's input shape for ``model``, guessed from its first layers (module doc)."""
    leaves = [m for _, m in layers(model)]
    if not leaves:
        return None
    if isinstance(leaves[0], nn.Conv2d):
        side = image_side(model) or 32
        return (leaves[0].in_channels, side, side)
    first_linear = next((m for m in leaves if isinstance(m, (nn.Linear, nn.Conv2d))), None)
    if isinstance(leaves[0], nn.Flatten) and isinstance(first_linear, nn.Linear):
        n = first_linear.in_features
        return (1, 28, 28) if n == 784 else (n,)
    if isinstance(leaves[0], nn.Linear):
        return (leaves[0].in_features,)
    return None


@torch.no_grad()
def trace(
    model: nn.Module,
    input_shape: Sequence[int],
    include: Callable[[nn.Module], bool] = _is_layer,
    random: bool = False,
) -> list[Call]:
    """Forward one sample of ``input_shape`` through ``model``; a :class:`Call` per hooked call.

    ``include(module)`` chooses the modules to hook among ``model.modules()`` (default:
    the layers of :func:`layers`). The sample is zeros, or with ``random=True`` standard
    normal values drawn from a generator seeded with 0; it goes to the device of the
    model's first parameter (the CPU without one). The model runs in evaluation mode and
    gets its mode back. Raises ValueError naming the shape when the model cannot run on it.
    """
    shape = tuple(input_shape)
    names = {m: n for n, m in model.named_modules()}
    calls: list[Call] = []

    def hook(m, inputs, out):
        if not isinstance(out, torch.Tensor):
            return
        x = inputs[0] if inputs and isinstance(inputs[0], torch.Tensor) else None
        calls.append(
            Call(
                names.get(m, ""),
                m,
                None if x is None else tuple(x.shape[1:]),
                tuple(out.shape[1:]),
                x is not None and bool(torch.all(x.abs() == 1)),
            )
        )

    p = next(model.parameters(), None)
    device = p.device if p is not None else torch.device("cpu")
    if random:
        x = torch.randn((1, *shape), generator=torch.Generator().manual_seed(0)).to(device)
    else:
        x = torch.zeros((1, *shape), device=device)
    handles = [m.register_forward_hook(hook) for m in model.modules() if include(m)]
    was_training = model.training
    model.eval()
    try:
        model(x)
    except Exception as e:
        raise ValueError(
            f"the model cannot run on an input of shape {shape} (one sample, no batch "
            f"dimension): {e}"
        ) from e
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return calls
