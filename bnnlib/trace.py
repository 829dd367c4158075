"""One forward pass of one sample, recording what each layer saw: the shared model tracer.

:mod:`bnnlib.summary` (output shapes and MACs), :mod:`bnnlib.energy` (operation and
memory counts) and :mod:`bnnlib.filters` (each convolution's output positions) all need
the same thing: run one input through a model and note, for each layer it calls, the
shapes going in and out. :func:`trace` does that with forward hooks, in evaluation mode
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
(1, 28, 28); one that starts with a convolution reads 32 x 32 images (CIFAR-10, SVHN);
one that starts with a linear layer reads vectors of its input width; otherwise None.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["Call", "layers", "guess_input_shape", "trace"]


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


def guess_input_shape(model: nn.Module) -> tuple[int, ...] | None:
    """One sample's input shape for ``model``, guessed from its first layers (module doc)."""
    leaves = [m for _, m in layers(model)]
    if not leaves:
        return None
    if isinstance(leaves[0], nn.Conv2d):
        return (leaves[0].in_channels, 32, 32)
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
