"""The run configuration: one typed object that says everything a training run did.

:class:`RunConfig` holds every setting that decides a run's result (the model and its shape,
the data set, the schedule, the optimizer, batch norm, the estimator, what is stochastic, the
seed), fully resolved: no "default" left to look up later. It is the one list of a run's
settings: ``python -m bnnlib.train`` builds one from its flags (a flag per field, ``None``
meaning "not given": :mod:`bnnlib.train.cli`), ``--resume`` compares the checkpoint's with
the new one field by field (:meth:`RunConfig.differences`), a checkpoint or record written
before a field existed reads it as the field's default, and publish and
``bnnlib.train.upgrade`` read it with the same checks. Adding a setting is one field here
(and its flag).

It is written with every run (``history.json``'s ``config["run_config"]``, copied to
``run.json`` by publish) and read back by :meth:`RunConfig.from_dict` to rebuild the model of
a finished run (:meth:`RunConfig.build_model`): renaming a command-line flag or changing a
default never changes how an old run is rebuilt (nanoGPT's way: the configuration object, not
the command line, is the record).

Reading is strict (:class:`RunConfigFormatError` names every problem): a boolean is ``true``
or ``false`` (not ``1``, not ``"false"``), an integer is not a boolean, a number is finite,
a name is one of its registry's (:data:`bnnlib.nn.models.MODELS`,
:data:`bnnlib.nn.ste.ESTIMATORS`, :data:`bnnlib.train.optimizers.OPTIMIZERS`,
:data:`bnnlib.nn.models.BATCHNORMS`), and the sizes are bounded: at most :data:`MAX_DEPTH`
hidden layers, and a model whose parameters, gradients and optimizer state
(:data:`BYTES_PER_PARAMETER`) would not fit in this machine's memory is refused before it is
allocated (:meth:`RunConfig.check_fits`).

Runs recorded before this module (their history holds only the command line, ``argv``), and
configurations of the older form (``hidden`` and ``depth`` instead of ``widths``), are
converted once by ``python -m bnnlib.train.upgrade RUN_DIR`` (:meth:`RunConfig.from_dict`
still reads the older form).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import types
import typing
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from bnnlib import data as bdata
from bnnlib.nn import models, ste
from bnnlib.train.optimizers import OPTIMIZERS

__all__ = ["RunConfig", "RunConfigFormatError", "CONFIG_KEY", "RECORD", "MAX_DEPTH"]
__all__ += ["BYTES_PER_PARAMETER"]

#: Where :func:`bnnlib.train.run.train` stores the configuration in ``history.config``.
CONFIG_KEY = "run_config"
#: The most hidden layers an MLP may have (the paper's has 3; a deep plain MLP does not train).
MAX_DEPTH = 1024
#: Bytes a float32 parameter takes while training: itself, its gradient and two optimizer moments.
BYTES_PER_PARAMETER = 16
_GLOROT = ("torch7",)  # glorot_scale: True, False or one of these


class RunConfigFormatError(ValueError):
    """A run configuration that cannot be used (unknown keys, wrong types, bad values, a model
    too big for this machine): the message names each problem."""


@dataclass(frozen=True)
class RunConfig:
    """Every setting of a training run that decides its result (see the module docstring).

    ``dataset`` is a name of :mod:`bnnlib.data` (``mnist``, ``npz:<path>`` ...); ``train_size``
    keeps only the first N training images (a reduced run). ``lr_halve_every`` selects the
    Torch7 step schedule (else exponential decay from ``lr_start`` to ``lr_end``).
    ``binary=False`` trains the float twin. ``glorot_scale`` is True, False or ``"torch7"``.
    ``widths`` are an MLP's hidden widths, one per layer (:attr:`hidden` and :attr:`depth`
    read them); ``width`` (and ``fc_width``) scale a ConvNet's units. ``eval_batch_size`` and
    ``fast`` change how fast a run goes, not its result: they are not compared.
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
    widths: tuple[int, ...] = (4096, 4096, 4096)
    width: float = 1.0
    fc_width: float | None = None
    dropout_in: float = 0.2
    dropout_hidden: float = 0.5
    batchnorm: str = "standard"
    last_batchnorm: str | None = None
    bn_eps: float | None = None
    bn_momentum: float | None = None
    estimator: str = ste.PAPER_ESTIMATOR
    stochastic_activations: bool = False
    stochastic_weights: bool = False
    binary: bool = True
    seed: int = 0
    train_size: int | None = None
    eval_batch_size: int | None = field(default=None, compare=False)
    fast: bool | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        problems = _type_problems(self)
        if not problems:  # the values, once their types are right
            problems = _value_problems(self)
        if problems:
            raise RunConfigFormatError("bad run configuration: " + "; ".join(problems))

    @property
    def hidden(self) -> int | tuple[int, ...] | None:
        """An MLP's hidden width (the widths when they differ; None without hidden layers)."""
        if not self.widths:
            return None
        return self.widths[0] if len(set(self.widths)) == 1 else self.widths

    @property
    def depth(self) -> int:
        """An MLP's number of hidden layers."""
        return len(self.widths)

    # ------------------------------------------------------------------ storage

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON values; :meth:`from_dict` reads them back to an equal object."""
        return {
            k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunConfig:
        """The configuration stored by :meth:`to_dict`; unknown keys are an error (a newer
        bnnlib wrote it), missing ones take their defaults (an older one did). The older form
        of an MLP's shape (``hidden`` and ``depth``) reads as ``widths``."""
        if not isinstance(d, dict):
            raise RunConfigFormatError(f"a run configuration is a JSON object, not {d!r}")
        d = _widths_of_older_form(d)
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
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})

    @classmethod
    def from_history(cls, config: dict[str, Any]) -> RunConfig:
        """The configuration a run recorded in its ``history.json`` (``config`` section)."""
        if not isinstance(config, dict) or CONFIG_KEY not in config:
            raise RunConfigFormatError(
                "this run's history.json holds no run configuration (a run from before "
                "bnnlib.train.config): convert it once with python -m bnnlib.train.upgrade RUN_DIR"
            )
        return cls.from_dict(config[CONFIG_KEY])

    def replace(self, **changes: Any) -> RunConfig:
        """A copy with ``changes`` (checked like a new one)."""
        return dataclasses.replace(self, **changes)

    # ------------------------------------------------------------------ comparing

    def differences(self, other: RunConfig) -> dict[str, tuple[Any, Any]]:
        """``{field: (mine, other's)}`` for every compared field (all that decide the result)
        whose values differ."""
        return {
            f.name: (getattr(self, f.name), getattr(other, f.name))
            for f in dataclasses.fields(self)
            if f.compare and getattr(self, f.name) != getattr(other, f.name)
        }

    def record(self) -> dict[str, Any]:
        """The settings as ``history.json``'s ``config`` has always named them beside the
        configuration (:data:`RECORD`: for its readers, and to compare runs recorded before
        it)."""
        return {
            key: (getattr(self, name) if get is None else get(self))
            for key, (name, get) in RECORD.items()
        }

    def record_differences(self, recorded: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
        """``{key: (recorded, mine)}`` for each setting ``recorded`` (a history's ``config``)
        names with another value than this configuration's (:meth:`record`)."""
        mine = self.record()
        return {k: (recorded[k], v) for k, v in mine.items() if k in recorded and recorded[k] != v}

    @staticmethod
    def record_defaults() -> dict[str, Any]:
        """The :meth:`record` values of the fields' defaults (what a record written before a
        setting existed counts it as); ``dropout_hidden``, recorded for an MLP only, has none."""
        fields = {f.name: f for f in dataclasses.fields(RunConfig)}
        required = {k for k, f in fields.items() if f.default is dataclasses.MISSING}
        base = RunConfig.__new__(RunConfig)  # the defaults, unchecked: no model to check
        object.__setattr__(base, "__dict__", {k: f.default for k, f in fields.items()})
        return {
            key: getattr(base, name) if get is None else get(base)
            for key, (name, get) in RECORD.items()
            if name not in required and key != "dropout_hidden"
        }

    # ------------------------------------------------------------------ what it builds

    def model_options(self) -> dict[str, Any]:
        """Keyword arguments of :func:`bnnlib.nn.models.for_data` for this run: those every
        model takes, and the options of its :class:`~bnnlib.nn.models.ModelSpec` that are set."""
        kw: dict[str, Any] = {
            "binary": self.binary,
            "batchnorm": self.batchnorm,
            "estimator": self.estimator,
            "stochastic_activations": self.stochastic_activations,
            "stochastic_weights": self.stochastic_weights,
        }
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        values["hidden"] = self.widths
        for key in models.MODELS[self.model].options:
            if values[key] is not None:
                kw[key] = values[key]
        return kw

    def check_fits(self, shape: tuple[int, ...], num_classes: int) -> None:
        """Refuse (:class:`RunConfigFormatError`) a model whose training state would not fit in
        this machine's memory, before anything is allocated (it is built on the meta device)."""
        with torch.device("meta"):
            net = models.for_data(self.model, shape, num_classes, **self.model_options())
        n = sum(p.numel() for p in net.parameters())
        need, have = n * BYTES_PER_PARAMETER, _memory_bytes()
        if need > have:
            raise RunConfigFormatError(
                f"bad run configuration: {self.model} with {self.describe_shape()} has "
                f"{n:,} parameters: training needs about {need / 2**30:,.1f} GiB, this machine "
                f"has {have / 2**30:,.1f} GiB; choose smaller widths or fewer layers"
            )

    def build_model(self, shape: tuple[int, ...], num_classes: int) -> nn.Module:
        """The run's network, freshly initialised (the caller seeds torch first), for samples
        of ``shape`` and ``num_classes`` classes (refused first if it cannot fit:
        :meth:`check_fits`)."""
        self.check_fits(shape, num_classes)
        return models.for_data(self.model, shape, num_classes, **self.model_options())

    def load_data(self, root: Any = None) -> tuple[bdata.Dataset, ...]:
        """(train, val, test) of :attr:`dataset` under ``root``, ``train_size`` applied."""
        train, val, test = bdata.load_splits(self.dataset, root)
        if self.train_size is not None:
            train = train.head(self.train_size)
        return train, val, test

    def describe_shape(self) -> str:
        """The model's size: an MLP's hidden units, a ConvNet's width."""
        if models.MODELS[self.model].kind == "mlp":
            if isinstance(self.hidden, tuple):
                return f"hidden widths {'-'.join(map(str, self.widths))}"
            return f"{self.depth} x {self.hidden} hidden units"
        return f"width {self.width:g}"

    def describe(self, dataset_name: str | None = None) -> str:
        """One line: model, data (``dataset_name``, else :attr:`dataset`), recipe, schedule."""
        lr = (
            f"LR {self.lr_start:g} halved every {self.lr_halve_every} epochs"
            if self.lr_halve_every
            else f"LR {self.lr_start:g} -> {self.lr_end:g}"
        )
        drop = ""
        if "dropout_hidden" in models.MODELS[self.model].options:
            drop = f", {self.describe_shape()}, dropout {self.dropout_in:g}/{self.dropout_hidden:g}"
        stoch = [k for k in ("activations", "weights") if getattr(self, f"stochastic_{k}")]
        kind = "" if self.binary else " (float twin)"
        est = "" if self.estimator == ste.PAPER_ESTIMATOR else f", {self.estimator} STE"
        return (
            f"{self.model}{kind} on {dataset_name or self.dataset}: recipe {self.recipe}: "
            f"{self.epochs} epochs, batch {self.batch_size}, {lr}, {self.optimizer}, "
            f"{self.batchnorm} batch norm{drop}{est}, "
            f"stochastic {' and '.join(stoch) or 'nothing'}"
        )


def _dropout_hidden(c: RunConfig) -> float | None:
    return c.dropout_hidden if "dropout_hidden" in models.MODELS[c.model].options else None


#: history.json's flat keys: {key: (the field, how its value is read; None: the field's value)}.
RECORD: dict[str, tuple[str, Any]] = {
    "num_epochs": ("epochs", None), "batch_size": ("batch_size", None),
    "lr_start": ("lr_start", None), "lr_end": ("lr_end", None),
    "optimizer": ("optimizer", None), "glorot_scale": ("glorot_scale", None),
    "lr_halve_every": ("lr_halve_every", None), "seed": ("seed", None),
    "model": ("model", None), "recipe": ("recipe", None), "preset": ("preset", None),
    "hidden": ("widths", lambda c: list(c.widths) if isinstance(c.hidden, tuple) else c.hidden),
    "dropout_in": ("dropout_in", None),
    "batchnorm": ("batchnorm", None),
    "stochastic_activations": ("stochastic_activations", None),
    "stochastic_weights": ("stochastic_weights", None),
    "dropout_hidden": ("dropout_hidden", _dropout_hidden),
    "depth": ("widths", lambda c: c.depth), "width": ("width", None),
    "float": ("binary", lambda c: not c.binary),
}  # fmt: skip


# ------------------------------------------------------------------ strict reading


def _is(value: Any, tp: Any) -> bool:
    """``value`` is of the annotated type ``tp`` (strictly: a bool is not an int, an int
    stands for a float, a tuple[int, ...] holds ints)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return any(_is(value, t) for t in typing.get_args(tp))
    if tp is type(None):
        return value is None
    if tp is bool:
        return type(value) is bool
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if origin is tuple:
        return isinstance(value, tuple) and all(_is(v, typing.get_args(tp)[0]) for v in value)
    return isinstance(value, tp)


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _type_problems(c: RunConfig) -> list[str]:
    hints = _hints(type(c))
    return [
        f"{f.name} {getattr(c, f.name)!r} (not {_type_name(hints[f.name])})"
        for f in dataclasses.fields(c)
        if not _is(getattr(c, f.name), hints[f.name])
    ]


def _type_name(tp: Any) -> str:
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return " or ".join(_type_name(t) for t in typing.get_args(tp))
    if tp is type(None):
        return "null"
    if typing.get_origin(tp) is tuple:
        return "a list of integers"
    return names.get(tp, str(tp))


def _value_problems(c: RunConfig) -> list[str]:
    """The bounds of the values (their types are right)."""
    problems = []
    registries = {"model": models.MODELS, "optimizer": OPTIMIZERS}
    registries.update(batchnorm=models.BATCHNORMS, estimator=ste.ESTIMATORS)
    for name, registry in registries.items():
        if getattr(c, name) not in registry:
            problems.append(f"{name} {getattr(c, name)!r} (one of {registry.names()})")
    if c.last_batchnorm is not None and c.last_batchnorm not in models.BATCHNORMS:
        problems.append(f"last_batchnorm {c.last_batchnorm!r} (None or one of standard, shift)")
    for name in ("epochs", "seed", "lr_halve_every", "train_size", "eval_batch_size"):
        v = getattr(c, name)
        if v is not None and v < (0 if name == "seed" else 1):
            problems.append(f"{name} {v!r} (an integer >= {0 if name == 'seed' else 1})")
    if c.batch_size < 2:
        problems.append(
            f"batch_size {c.batch_size} (at least 2: batch norm normalizes over the batch)"
        )
    if len(c.widths) > MAX_DEPTH or any(w < 1 for w in c.widths):
        problems.append(f"widths of {len(c.widths)} layers (at most {MAX_DEPTH}, each >= 1)")
    for name in ("lr_start", "lr_end", "width", "fc_width", "bn_eps", "bn_momentum"):
        v = getattr(c, name)
        if v is not None and not (math.isfinite(v) and v > 0):
            problems.append(f"{name} {v!r} (a finite number > 0)")
    spec = models.MODELS.get(c.model)
    if c.fc_width is not None and spec is not None and "fc_width" not in spec.options:
        problems.append(
            f"fc_width {c.fc_width!r} (only cifar10_convnet has a separate dense width)"
        )
    for name in ("dropout_in", "dropout_hidden"):
        v = getattr(c, name)
        if not 0 <= v < 1:
            problems.append(f"{name} {v!r} (in [0, 1))")
    if isinstance(c.glorot_scale, str) and c.glorot_scale not in _GLOROT:
        problems.append(f"glorot_scale {c.glorot_scale!r} (true, false or torch7)")
    return problems


def _widths_of_older_form(d: dict[str, Any]) -> dict[str, Any]:
    """A stored configuration with ``hidden`` and ``depth`` (before ``widths``) in the
    current form; others unchanged."""
    if "widths" in d or not ({"hidden", "depth"} & set(d)):
        return d
    d = dict(d)
    hidden, depth = d.pop("hidden", 4096), d.pop("depth", 3)
    if not _is(hidden, int) or not _is(depth, int) or not 0 <= depth <= MAX_DEPTH:
        raise RunConfigFormatError(
            f"bad run configuration: hidden {hidden!r} and depth {depth!r} (integers, depth "
            f"at most {MAX_DEPTH})"
        )
    d["widths"] = [hidden] * depth
    return d


def _memory_bytes() -> int:
    """This machine's physical memory."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # not POSIX: no bound
        return 2**62
