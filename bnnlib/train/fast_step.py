"""The fast path's optimizer step: the same update as ``opt.step()``, in one pass over memory.

The arithmetic of the update is :mod:`bnnlib.nn.optim`'s (the readable torch version, paper
Algorithm 4 and the Torch7 variant); this module only chooses how it is carried out.

On the CPU, :class:`FastStep` does each parameter's whole update in one pass over its memory
(:func:`bnnlib.kernels.update.adamax_step_`, numba, all cores): shift-based AdaMax (or AdaMax),
the clipping of binary weights (Algorithm 1) and Sign(W) of the updated weight, which it hands
to the binary layer (:meth:`bnnlib.nn.layers.BinaryLinear.use_weight_sign`), so the next
forward and backward passes use it instead of binarizing W again: the weights' Sign is computed
once per step. For :class:`bnnlib.nn.optim.Adam` it runs PyTorch's fused Adam, then clipping
and Sign(W) in one pass (:func:`bnnlib.kernels.update.clip_sign_`). With Sign(W) each binary
dense layer gets an :class:`bnnlib.train.fast_linear.XnorProduct`: its forward product by
XNOR-popcount wherever its input is ±1 (the hidden layers), the same float32 numbers as the
GEMM. The parameters are those of the plain ``opt.step()`` bit for bit
(``tests/test_fast_step.py``), so checkpoints of either path resume in the other.

On a GPU (or for tensors the kernels do not take: not float32, not contiguous; or where torch's
AP2 cannot be copied, :class:`bnnlib.kernels.update.AP2TableError`, with a warning), shift AdaMax
steps with ``foreach=True`` (multi-tensor torch operations) and the other optimizers with their
own ``step()``. The step is always the optimizer's, through its state and param groups, so an LR
scheduler sees it as it sees the plain path's. :func:`bnnlib.train.fit` takes it with
``fast=True`` (the default).
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

from bnnlib.nn.layers import BinaryLinear, clip_latent_, is_binary_layer
from bnnlib.nn.optim import Adam, ShiftAdaMax, adamax_step_size
from bnnlib.train.fast_linear import XnorProduct

__all__ = ["FastStep", "fast_step"]


def _kernel_ok(p: torch.Tensor) -> bool:
    return p.device.type == "cpu" and p.dtype == torch.float32 and p.is_contiguous()


class FastStep:
    """The optimizer step of the fast path for ``opt`` over ``net`` (module docstring).

    ``step()`` does what ``opt.step()`` does, bit for bit, and gives each binary layer whose
    weight it updated on the CPU the Sign of its new weight, and each dense one (without a
    bias) its :class:`XnorProduct` unless ``xnor=False``; ``products`` maps the layers'
    names in ``net`` to them.
    """

    def __init__(
        self, opt: torch.optim.Optimizer, net: nn.Module | None = None, *, xnor: bool = True
    ) -> None:
        self.opt = opt
        self.layers = {}  # id(weight) -> its binary layer
        self.products: dict[str, XnorProduct] = {}
        self._product_of: dict[int, XnorProduct] = {}  # id(weight) -> its layer's product
        if net is not None:
            for name, module in net.named_modules():
                if is_binary_layer(module) and not module.stochastic_weights:
                    self.layers[id(module.weight)] = module
                    if xnor and isinstance(module, BinaryLinear) and module.bias is None:
                        product = self.products[name] = XnorProduct()
                        self._product_of[id(module.weight)] = product
        self._signs: dict[int, torch.Tensor] = {}
        self._no_table = False  # torch's AP2 could not be copied here: torch's operations

    def _sign_buffer(self, p: torch.Tensor) -> torch.Tensor | None:
        """Where Sign(p) goes, when p is a binary layer's (deterministic) weight."""
        if id(p) not in self.layers or not _kernel_ok(p):
            return None
        buf = self._signs.get(id(p))
        if buf is None or buf.shape != p.shape:
            buf = self._signs[id(p)] = torch.empty_like(p, memory_format=torch.contiguous_format)
        return buf

    @torch.no_grad()
    def step(self) -> None:
        """``opt.step()``, bit for bit, through the optimizer's public ``step`` (an LR
        scheduler sees it): the CPU parameters in one pass each (module docstring)."""
        opt = self.opt
        if isinstance(opt, ShiftAdaMax):  # what the kernel does not take: multi-tensor ops
            opt.step(foreach=True, update=self._adamax)
        elif isinstance(opt, Adam):
            opt.step(clip=False)
            rest = [p for g in opt.param_groups if g.get("clip") for p in g["params"]
                    if not self._clip_sign(p)]  # fmt: skip
            clip_latent_(rest)
        else:
            fast_step(opt)

    def _clip_sign(self, p: torch.Tensor) -> bool:
        """Clip a binary layer's weight after a torch step and give the layer Sign(p), in one
        pass; False (nothing done) for a tensor the kernel does not take."""
        sign = self._sign_buffer(p)
        if sign is None:
            return False
        self._kernels().clip_sign_(p, sign)
        self.layers[id(p)].use_weight_sign(sign, self._product_of.get(id(p)))
        return True

    def _adamax(self, group: dict, p: torch.Tensor, step: int) -> bool:
        """:meth:`ShiftAdaMax.step`'s update of ``p`` at ``step`` in one kernel call (and
        Sign(p) for its layer); False for a tensor the kernel does not take."""
        if self._no_table or not (_kernel_ok(p) and _kernel_ok(p.grad)):
            return False
        kernels = self._kernels()
        if group.get("shift", True):
            try:
                kernels.ap2_thresholds()  # once per process (cached)
            except kernels.AP2TableError as e:
                warnings.warn(f"{e}", RuntimeWarning, stacklevel=2)
                self._no_table = True
                return False
        beta1, beta2 = group["betas"]
        variant, shift = group.get("variant", "paper"), group.get("shift", True)
        state = self.opt.state[p]
        sign = self._sign_buffer(p)
        kernels.adamax_step_(
            p, p.grad, state["exp_avg"], state["exp_inf"], beta1=beta1, beta2=beta2,
            eps=group["eps"], variant=variant, shift=shift, clip=bool(group.get("clip")),
            alpha=adamax_step_size(step, group["lr"], group["lr_scale"], beta1, variant, shift),
            sign_out=sign,
        )  # fmt: skip
        if sign is not None:
            self.layers[id(p)].use_weight_sign(sign, self._product_of.get(id(p)))
        return True

    def _kernels(self):
        """:mod:`bnnlib.kernels.update`, imported (numba) on the first CPU step."""
        from bnnlib.kernels import update

        return update


def fast_step(opt: torch.optim.Optimizer) -> None:
    """The multi-tensor step, for any device: :class:`bnnlib.nn.optim.ShiftAdaMax` with
    ``foreach=True``; any other optimizer, :class:`bnnlib.nn.optim.Adam` included, with its
    own ``step()``. The same update as ``opt.step()``."""
    if isinstance(opt, ShiftAdaMax):
        opt.step(foreach=True)
    else:
        opt.step()
