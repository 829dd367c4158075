"""The run configuration: one typed object that says everything a training run did.

:class:`RunConfig` holds every setting that decides a run's result (the model and its shape,
the data set, the schedule, the optimizer, batch norm, what is stochastic, the seed), fully
resolved: no "default" left to look up later. ``python -m bnnlib.train`` builds one from its
flags (the paper's defaults, the preset, the short recipe: :mod:`bnnlib.train.cli`), and
:func:`bnnlib.train.run.train` trains from it. It is written with every run
(``history.json``'s ``config["run_config"]``, copied to ``run.json`` by publish), and read back
by :meth:`RunConfig.from_dict` to rebuild the model of a finished run
(:meth:`RunConfig.build_model`): renaming a command-line flag or changing a default never
changes how an old run is rebuilt (nanoGPT's way: the configuration object, not the command
line, is the record).

Runs recorded before this module (their history holds only the command line, ``argv``) are
converted once by ``python -m bnnlib.train.upgrade RUN_DIR``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from bnnlib import data as bdata
from bnnlib.nn import models

__all__ = ["RunConfig", "RunConfigFormatError", "CONFIG_KEY"]

#: Where :func:`bnnlib.train.run.train` stores the configuration in ``history.config``.
CONFIG_KEY = "run_config"

_OPTIMIZERS = ("adam", "shift_adamax", "shift_adamax_torch7", "adamax_torch7")
_BATCHNORMS = ("standard", "shift")


class RunConfigFormatError(ValueError):
    """A stored run configuration that cannot be read (unknown keys, wrong types, bad values)."""


@dataclass(frozen=True)
class RunConfig:
    """Every setting of a training run that decides its result (see the module docstring).

    ``dataset`` is a name of :mod:`bnnlib.data` (``mnist``, ``npz:<path>`` ...); ``train_size``
    keeps only the first N training images (a reduced run). ``lr_halve_every`` selects the
    Torch7 step schedule (else exponential decay from ``lr_start`` to ``lr_end``).
    ``binary=False`` trains the float twin. ``glorot_scale`` is True, False or ``"torch7"``.
    """

    model: str
    dataset: str
    epochs: int
    batch_size: int
    lr_start: float
    lr_end: float
    lr_halve_every: int | None = None
    optimizer: str = "adam"
    glorot_scale: bool | str = True
    recipe: str = "paper"
    preset: str | None = None
    hidden: int = 4096
    depth: int = 3
    width: float = 1.0
    fc_width: float | None = None
    dropout_in: float = 0.2
    dropout_hidden: float = 0.5
    batchnorm: str = "standard"
    last_batchnorm: str | None = None
    bn_eps: float | None = None
    bn_momentum: float | None = None
    stochastic_activations: bool = False
    stochastic_weights: bool = False
    binary: bool = True
    seed: int = 0
    train_size: int | None = None
    eval_batch_size: int | None = None
    fast: bool | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        problems = []
        if self.model not in models.MODELS:
            problems.append(f"model {self.model!r} (one of {', '.join(sorted(models.MODELS))})")
        for name in ("epochs", "batch_size", "hidden"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                problems.append(f"{name} {getattr(self, name)!r} (an integer >= 1)")
        if not isinstance(self.depth, int) or self.depth < 0:
            problems.append(f"depth {self.depth!r} (an integer >= 0)")
        for name in ("lr_start", "lr_end", "width"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
                problems.append(f"{name} {v!r} (a finite number > 0)")
        if self.fc_width is not None:
            v = self.fc_width
            if not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
                problems.append(f"fc_width {v!r} (None or a finite number > 0)")
            elif self.model != "cifar10_convnet":
                problems.append(f"fc_width {v!r} (only cifar10_convnet has a separate dense width)")
        for name in ("dropout_in", "dropout_hidden"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or not 0 <= v < 1:
                problems.append(f"{name} {v!r} (in [0, 1))")
        if self.optimizer not in _OPTIMIZERS:
            problems.append(f"optimizer {self.optimizer!r} (one of {', '.join(_OPTIMIZERS)})")
        if self.batchnorm not in _BATCHNORMS:
            problems.append(f"batchnorm {self.batchnorm!r} (standard or shift)")
        for name in ("lr_halve_every", "train_size", "eval_batch_size"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, int) or v < 1):
                problems.append(f"{name} {v!r} (None or an integer >= 1)")
        if not isinstance(self.seed, int) or self.seed < 0:
            problems.append(f"seed {self.seed!r} (an integer >= 0)")
        if problems:
            raise RunConfigFormatError("bad run configuration: " + "; ".join(problems))

    # ------------------------------------------------------------------ storage

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON values; :meth:`from_dict` reads them back to an equal object."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunConfig:
        """The configuration stored by :meth:`to_dict`; unknown keys are an error (a newer
        bnnlib wrote it), missing ones take their defaults (an older one did)."""
        if not isinstance(d, dict):
            raise RunConfigFormatError(f"a run configuration is a JSON object, not {d!r}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise RunConfigFormatError(
                f"unknown run configuration keys {unknown}: written by a newer bnnlib? "
                "Update bnnlib to read it"
            )
        required = [f.name for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING]
        missing = [k for k in required if k not in d]
        if missing:
            raise RunConfigFormatError(f"run configuration without {missing}")
        return cls(**d)

    @classmethod
    def from_history(cls, config: dict[str, Any]) -> RunConfig:
        """The configuration a run recorded in its ``history.json`` (``config`` section)."""
        if CONFIG_KEY not in config:
            raise RunConfigFormatError(
                "this run's history.json holds no run configuration (a run from before "
                "bnnlib.train.config): convert it once with python -m bnnlib.train.upgrade RUN_DIR"
            )
        return cls.from_dict(config[CONFIG_KEY])

    def replace(self, **changes: Any) -> RunConfig:
        """A copy with ``changes`` (checked like a new one)."""
        return dataclasses.replace(self, **changes)

    # ------------------------------------------------------------------ what it builds

    def model_options(self) -> dict[str, Any]:
        """Keyword arguments of :func:`bnnlib.nn.models.for_data` for this run."""
        kw: dict[str, Any] = {
            "hidden": self.hidden,
            "width": self.width,
            "binary": self.binary,
            "batchnorm": self.batchnorm,
            "stochastic_activations": self.stochastic_activations,
            "stochastic_weights": self.stochastic_weights,
        }
        if self.fc_width is not None:
            kw["fc_width"] = self.fc_width
        if self.model == "mnist_mlp":
            kw.update(depth=self.depth, dropout_in=self.dropout_in)
            kw.update(dropout_hidden=self.dropout_hidden)
            for key in ("last_batchnorm", "bn_eps", "bn_momentum"):
                if getattr(self, key) is not None:
                    kw[key] = getattr(self, key)
        return kw

    def build_model(self, shape: tuple[int, ...], num_classes: int) -> nn.Module:
        """The run's network, freshly initialised (the caller seeds torch first), for samples
        of ``shape`` and ``num_classes`` classes."""
        return models.for_data(self.model, shape, num_classes, **self.model_options())

    def load_data(self, root: Any = None) -> tuple[bdata.Dataset, ...]:
        """(train, val, test) of :attr:`dataset` under ``root``, ``train_size`` applied."""
        train, val, test = bdata.load_splits(self.dataset, root)
        if self.train_size is not None:
            train = train.head(self.train_size)
        return train, val, test

    def describe(self, dataset_name: str | None = None) -> str:
        """One line: model, data (``dataset_name``, else :attr:`dataset`), recipe, schedule."""
        lr = (
            f"LR {self.lr_start:g} halved every {self.lr_halve_every} epochs"
            if self.lr_halve_every
            else f"LR {self.lr_start:g} -> {self.lr_end:g}"
        )
        drop = ""
        if self.model == "mnist_mlp":
            drop = (
                f", {self.hidden} hidden units, dropout {self.dropout_in:g}/{self.dropout_hidden:g}"
            )
        stoch = [k for k in ("activations", "weights") if getattr(self, f"stochastic_{k}")]
        kind = "" if self.binary else " (float twin)"
        return (
            f"{self.model}{kind} on {dataset_name or self.dataset}: recipe {self.recipe}: "
            f"{self.epochs} epochs, batch {self.batch_size}, {lr}, {self.optimizer}, "
            f"{self.batchnorm} batch norm{drop}, "
            f"stochastic {' and '.join(stoch) or 'nothing'}"
        )
