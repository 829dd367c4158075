"""``python -m bnnlib.train``: the command line of :func:`bnnlib.train.fit`.

Run it as ``python -m bnnlib.train`` (``--help`` lists everything). The flags resolve into one
:class:`~bnnlib.train.config.RunConfig` (:func:`resolve_settings`), which
:func:`bnnlib.train.run.train` trains and records with the run::

    python -m bnnlib.train --model mnist_mlp --hidden 1024 --epochs 10 --out runs/mlp

Unset options take the paper's values for the model (epochs, batch size, LR
start and end: mnist_mlp 1000, 100, 3e-3 -> 3e-7; cifar10_convnet 500, 50,
1e-3 -> 3e-7; svhn_convnet 200, 50, 1e-3 -> 1e-6) with one documented
exception, the *short recipe* (``--recipe``), used by default for runs of fewer
than 100 epochs: the LR ends at ``lr_start / 100`` instead of the paper's
1/10,000, and the MLP has no hidden dropout (input dropout 0.2 stays). Both
regularize a 1000-epoch run but only slow a 10-epoch one. Chosen on *validation*
error at the best-validation epoch (``python -m bnnlib.train.recipes --out
results/recipe_comparison.json``: six candidate recipes on the 3 x 1024 MLP, 10 epochs; the
table, its machine and date are in that file and in the book's notebook 05); the test error
is shown there, never used to choose.

``--recipe paper`` (or ``--lr-end``/``--dropout-hidden``) restores the paper's
values for any length. The short recipe was tuned on the MLP only; for the
ConvNets it changes just the LR end.

The run folder (``--out``, :mod:`bnnlib.train.runfolder`). A folder that holds a run
(``checkpoint.pt`` or ``history.json``) is refused unless ``--resume`` (continue it: every setting
that matters must be the same, :func:`bnnlib.train.config_differences`) or
``--overwrite`` (remove that run's files and start again); ``--resume`` needs
the checkpoint. While a run uses the folder it holds ``--out/.lock`` (its PID and
host, created exclusively, removed at exit): a second run on the folder is
refused; a lock left by a process that no longer runs (SIGKILL, a power cut) is
taken over with a message. The folder is created and the lock written before
any data are loaded, so an unwritable ``--out`` fails at once; temporary files
of an interrupted write (``.checkpoint.pt.*.tmp`` ...) are removed then.
Numbers are checked as they are parsed (hidden units, epochs: >= 1; learning rates, width,
time limit: finite and > 0; dropout in [0, 1)), then as the :class:`RunConfig` they resolve
into (a batch of at least 2 for batch norm, at most ``MAX_DEPTH`` hidden layers, a model
whose training state fits in this machine's memory), and ``--device`` before the folder is
claimed: each a one-line error. ``--hidden 2048,1024,512`` gives an MLP one width per hidden
layer; ``--model``, ``--estimator``, ``--optimizer`` and ``--batchnorm`` offer the names of
their registries (:mod:`bnnlib.registry`).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import errno
import io
import sys
from pathlib import Path
from typing import Any

from bnnlib import data as bdata
from bnnlib.cliargs import fraction, nonnegative_int, positive_float, positive_int
from bnnlib.errors import BadInput
from bnnlib.nn import models, ste
from bnnlib.train.checkpoint import CheckpointError
from bnnlib.train.config import MAX_DEPTH, RunConfig, RunConfigFormatError
from bnnlib.train.history import History
from bnnlib.train.loop import FitSetupError, NonFiniteLossError
from bnnlib.train.optimizers import OPTIMIZERS
from bnnlib.train.run import DataError, RunOptions, check_device, train
from bnnlib.train.runfolder import RunConfigError, RunFolderError

__all__ = [
    "main",
    "build_parser",
    "resolve_settings",
    "config_from_argv",
    "PAPER_DEFAULTS",
    "PRESETS",
    "PRESET_ONLY",
    "SHORT_RECIPE",
    "SHORT_RUN_EPOCHS",
]

# Runs shorter than this use the "short" recipe by default (module docstring).
SHORT_RUN_EPOCHS = 100
SHORT_RECIPE = {"lr_end_ratio": 1e-2, "dropout": 0.0}

# The paper's schedules (Theano code) of the registered models: epochs, batch size, LR start
# and end (bnnlib.nn.models.MODELS, from bnnlib.paper.SCHEDULES).
PAPER_DEFAULTS = {name: spec.schedule for name, spec in models.MODELS.items()}
#: RunConfig fields that only a preset sets (every other field has its flag; ``widths`` has two,
#: --hidden and --depth).
PRESET_ONLY = ("glorot_scale", "last_batchnorm", "bn_eps", "bn_momentum")

# The Torch7 code's MNIST setup (itayhubara/BinaryNet: Main_BinaryNet_MNIST.lua,
# Models/BinaryNet_MNIST_Model.lua, adaMax_binary_clip_shift.lua,
# BatchNormalizationShiftPow2.lua), Table 1's 1.40%. What we do differently, on purpose:
# the biases of its BinaryLinear layers are left out (batch norm follows each one and
# cancels them exactly); its input normalization (mean/std) is our 2x/255 - 1. With an
# ordinary first batch norm the two would be equivalent (binary weights: an affine input map
# only shifts and scales each unit's pre-activation, which the batch norm removes); with shift
# batch norm only approximately, as AP2 rounds each unit's scale to a power of two and the
# rounding falls differently for the two input scalings; shift batch norm keeps a running variance
# (rounded by AP2 at evaluation) where Torch7 averages the inverse standard deviation.
PRESETS = {
    "torch7": {
        "model": "mnist_mlp", "hidden": 2048, "dropout_in": 0.0, "dropout_hidden": 0.0,
        "batchnorm": "shift", "last_batchnorm": "standard", "bn_eps": 1e-5,
        "bn_momentum": 0.125, "stochastic_activations": True, "stochastic_weights": False,
        "optimizer": "shift_adamax_torch7", "glorot_scale": "torch7", "lr_start": 2.0**-6,
        "lr_halve_every": 20, "batch_size": 100, "epochs": 100,
    },
}  # fmt: skip


# ------------------------------------------------------------------ checked numbers


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bnnlib.train",
        description="Train one of the paper's BNNs. Unset options take the paper's values for "
        "the model (mnist_mlp: 1000 epochs, batch 100, LR 3e-3 -> 3e-7; cifar10_convnet: 500, "
        "50, 1e-3 -> 3e-7; svhn_convnet: 200, 50, 1e-3 -> 1e-6). Run under "
        "`torchrun --nproc_per_node=N` for data-parallel training.",
    )
    _data_and_model_options(p)
    _schedule_options(p)
    _method_options(p)
    _variant_options(p)
    _run_options(p)
    return p


def widths_arg(text: str) -> int | tuple[int, ...]:
    """``--hidden``: one width (``2048``) or one per hidden layer (``2048,1024,512``)."""
    parts = [positive_int(t.strip()) for t in text.split(",")]
    if len(parts) > MAX_DEPTH:
        raise argparse.ArgumentTypeError(f"at most {MAX_DEPTH} hidden widths, got {len(parts)}")
    return parts[0] if len(parts) == 1 and "," not in text else tuple(parts)


def _data_and_model_options(p: argparse.ArgumentParser) -> None:
    """The dataset and the model's shape."""
    p.add_argument("--model", choices=list(models.MODELS), help="required unless --preset")
    p.add_argument(
        "--dataset",
        help="mnist, fashion_mnist, cifar10, svhn or npz:<path> (default: the dataset of the "
        "model's paper schedule: mnist for mnist_mlp, cifar10 for cifar10_convnet, svhn for "
        "svhn_convnet)",
    )
    p.add_argument("--data-root", help=f"data folder (default: ${bdata.ENV_VAR}, else ~/.cache)")
    p.add_argument(
        "--hidden", type=widths_arg, help="MLP hidden units (paper: 4096), or one width per "
        "hidden layer: 2048,1024,512",
    )  # fmt: skip
    p.add_argument(
        "--depth", type=nonnegative_int, help=f"MLP hidden layers (paper: 3; at most {MAX_DEPTH})"
    )
    p.add_argument("--dropout-in", type=fraction, help="MLP input dropout (paper: 0.2)")
    p.add_argument(
        "--dropout-hidden",
        type=fraction,
        help="MLP hidden dropout (paper: 0.5; see --recipe)",
    )
    p.add_argument("--width", type=positive_float, help="ConvNet width multiplier (default: 1)")
    p.add_argument(
        "--fc-width",
        type=positive_float,
        help="cifar10_convnet: width multiplier of the two 1024-unit dense layers "
        "(default: --width; e.g. --width 0.5 --fc-width 1 keeps them at 1024)",
    )


def _schedule_options(p: argparse.ArgumentParser) -> None:
    """Epochs, batch and learning rates, and which defaults they take."""
    p.add_argument("--epochs", type=positive_int, help="number of epochs (default: the paper's)")
    p.add_argument(
        "--batch-size",
        type=positive_int,
        help="global mini-batch size (default: the paper's)",
    )
    p.add_argument(
        "--lr-start", type=positive_float, help="first epoch's LR (default: the paper's)"
    )
    p.add_argument("--lr-end", type=positive_float, help="LR after the last epoch (see --recipe)")
    p.add_argument(
        "--recipe",
        choices=("auto", "paper", "short"),
        help="defaults of --lr-end and --dropout-hidden. paper: the paper's; short: "
        f"LR end = LR start / {1 / SHORT_RECIPE['lr_end_ratio']:g} and no hidden dropout, "
        f"for runs of a few epochs; auto (default): short below {SHORT_RUN_EPOCHS} epochs, "
        "else paper",
    )


def _method_options(p: argparse.ArgumentParser) -> None:
    """The preset, optimizer, batch norm and LR schedule."""
    p.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        help="torch7: the Torch7 code's MNIST setup (Table 1, 1.40%%): 3 x 2048 MLP, no "
        "dropout, shift batch norm (ordinary on the output), stochastic activations, "
        "deterministic weights, Torch7's shift AdaMax with its Glorot scales, LR 2^-6 halved "
        "every 20 epochs, batch 100. Options given explicitly still win.",
    )
    p.add_argument("--optimizer", choices=list(OPTIMIZERS), help="default: adam")
    p.add_argument("--batchnorm", choices=list(models.BATCHNORMS), help="default: standard")
    p.add_argument(
        "--estimator", choices=list(ste.ESTIMATORS),
        help=f"the straight-through estimator of the Sign activations (default: "
        f"{ste.PAPER_ESTIMATOR}, the paper's)",
    )  # fmt: skip
    p.add_argument(
        "--lr-halve-every", type=positive_int,
        help="halve the LR every N epochs (Torch7) instead of the exponential decay",
    )  # fmt: skip


def _variant_options(p: argparse.ArgumentParser) -> None:
    """Stochastic binarization, the float twin, the fast path, a time limit, a subset."""
    p.add_argument(
        "--stochastic", action="store_true", default=None,
        help="stochastic binarization of both the activations and the weights (training only)",
    )  # fmt: skip
    p.add_argument(
        "--stochastic-activations", action="store_true", default=None,
        help="stochastic binarization of the Sign activations (training only)",
    )  # fmt: skip
    p.add_argument(
        "--stochastic-weights", action="store_true", default=None,
        help="stochastic binarization of the weights (training only)",
    )  # fmt: skip
    p.add_argument(
        "--max-time", type=positive_float, help="seconds; stop cleanly at the last epoch boundary "
        "that fits (history.json says so)",
    )  # fmt: skip
    p.add_argument(
        "--float", dest="binary", action="store_false", default=None,
        help="train the float twin (no binarization)",
    )  # fmt: skip
    p.add_argument(
        "--fast", action=argparse.BooleanOptionalAction, help="the fast path: multi-tensor "
        "optimizer step and clipping, evaluation in batches of 10,000; the same parameters "
        "(default: on with a GPU)",
    )  # fmt: skip
    p.add_argument(
        "--eval-batch-size", type=positive_int, help="default: 1000 (10,000 with --fast)"
    )
    p.add_argument(
        "--train-size", type=positive_int, help="train on the first N training images only "
        "(a reduced run, labelled so in the history's data line)",
    )  # fmt: skip


def _run_options(p: argparse.ArgumentParser) -> None:
    """Seed, device, and the run folder."""
    p.add_argument("--seed", type=nonnegative_int, help="default: 0")
    p.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument("--out", help="folder for history.json, checkpoint.pt, model.pt, best_model.pt")
    p.add_argument(
        "--resume", action="store_true", help="continue the run in --out (its checkpoint.pt), "
        "with the same settings",
    )  # fmt: skip
    p.add_argument(
        "--overwrite", action="store_true", help="replace the run in --out: its checkpoint, "
        "history and models are removed first (without it, a folder holding a run is refused)",
    )  # fmt: skip
    p.add_argument("--no-progress", action="store_true", help="no progress bars or epoch lines")


def resolve_settings(args: argparse.Namespace) -> RunConfig:
    """The run's :class:`RunConfig`: the flags given (a flag whose value is None was not
    given; each has the name of its field), then the preset, then the defaults of the model's
    :class:`~bnnlib.nn.models.ModelSpec` (its paper schedule) and of the recipe, then the
    fields' defaults.

    The ``short`` recipe (module docstring) sets the LR end and the hidden dropout
    of runs under ``SHORT_RUN_EPOCHS`` epochs unless ``--recipe paper``.
    """
    preset = dict(PRESETS[args.preset]) if args.preset else {}
    given = {
        f.name: getattr(args, f.name)
        for f in dataclasses.fields(RunConfig)
        if getattr(args, f.name, None) is not None
    }
    given.pop("recipe", None)  # resolved below
    if args.stochastic:
        given.update(stochastic_activations=True, stochastic_weights=True)
    model = preset.get("model", args.model)
    if model is None:
        raise ValueError("choose a model with --model (or a --preset)")
    if args.model not in (None, model):
        raise ValueError(f"--preset {args.preset} trains {model}, not {args.model}")
    schedule = models.MODELS[model].schedule
    settings: dict[str, Any] = {"dataset": schedule["dataset"]}
    settings.update(epochs=schedule["epochs"], batch_size=schedule["batch_size"])
    settings.update(lr_start=schedule["lr"][0])
    settings.update(preset)
    settings.update(_recipe({**settings, **given}, args, schedule), **given)
    settings["widths"] = _widths(args.hidden, args.depth, preset.get("hidden"))
    settings.pop("hidden", None)
    return RunConfig(**settings)


def _recipe(settings: dict, args: argparse.Namespace, schedule: dict) -> dict[str, Any]:
    """The recipe's name, LR end and hidden dropout (module docstring)."""
    recipe = args.recipe or "auto"
    if recipe == "auto":
        recipe = "short" if settings["epochs"] < SHORT_RUN_EPOCHS and not args.preset else "paper"
    if recipe == "short":
        lr_end, drop = settings["lr_start"] * SHORT_RECIPE["lr_end_ratio"], SHORT_RECIPE["dropout"]
    else:
        lr_end, drop = schedule["lr"][1], 0.5
    label = "preset" if args.preset and args.recipe in (None, "auto") else recipe
    return {
        "recipe": label,
        "lr_end": settings.get("lr_end", lr_end),
        "dropout_hidden": settings.get("dropout_hidden", drop),
    }


def _widths(hidden, depth: int | None, preset_hidden: int | None) -> tuple[int, ...]:
    """An MLP's widths from --hidden (one width, or one per layer), --depth and the preset."""
    if isinstance(hidden, tuple):
        if depth is not None and depth != len(hidden):
            raise ValueError(f"--depth {depth} but --hidden gives {len(hidden)} widths")
        return hidden
    return models.mlp_widths(hidden or preset_hidden or 4096, depth)


def config_from_argv(argv: list[str]) -> RunConfig:
    """The :class:`RunConfig` that ``python -m bnnlib.train ARGV`` trains (flags resolved).

    A command line that is not a training one (``--help``, an unknown flag, a bad value) is
    a :class:`RunConfigFormatError` naming it, never an exit: the parser's output is kept."""
    parser = build_parser()
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            args = parser.parse_args(argv)
    except SystemExit:
        said = out.getvalue().strip().splitlines()
        why = (
            said[-1]
            if said and not any(a in ("-h", "--help") for a in argv)
            else "it asks for the help"
        )
        raise RunConfigFormatError(
            f"the command line {argv} is not one that trains a run: {why}"
        ) from None
    return resolve_settings(args)


def _fail(parser: argparse.ArgumentParser, message: str, status: int = 2):
    """Exit with ``prog: error: message`` (no usage text: the flags were fine)."""
    parser.exit(status, f"{parser.prog}: error: {message}\n")


def main(argv: list[str] | None = None) -> History:
    """``python -m bnnlib.train``: parse the flags into a :class:`RunConfig`, then
    :func:`bnnlib.train.run.train` it."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.resume and not args.out:
        parser.error("--resume needs --out (the folder that holds checkpoint.pt)")
    if args.overwrite and not args.out:
        parser.error("--overwrite needs --out")
    if args.out is not None and not args.out.strip():
        parser.error("--out is empty (an unset variable?): give a folder, or leave --out out")
    if args.out is not None:
        try:
            args.out.encode("utf-8")
        except UnicodeEncodeError:
            parser.error(f"--out {args.out!r} is not valid UTF-8: choose another folder name")
    try:
        config = resolve_settings(args)
        check_device(args.device)
    except ValueError as e:
        parser.error(str(e))
    if args.out is None:
        print(
            "note: no --out: the history, checkpoints and models of this run are not saved",
            file=sys.stderr,
        )
    options = RunOptions(
        out=Path(args.out) if args.out else None,
        resume=args.resume,
        overwrite=args.overwrite,
        max_time=args.max_time,
        device=args.device,
        data_root=args.data_root,
        progress=not args.no_progress,
        command=list(sys.argv[1:] if argv is None else argv),
    )
    try:
        return train(config, options)
    except DataError as e:  # the flags were fine: no usage text above the message
        _fail(parser, str(e))
    except (RunFolderError, RunConfigError, RunConfigFormatError, CheckpointError, BadInput) as e:
        _fail(parser, str(e))
    except FitSetupError as e:  # the flags were fine, the data too small for them
        _fail(parser, str(e))
    except NonFiniteLossError as e:
        _fail(parser, str(e), status=1)
    except KeyboardInterrupt:
        _fail(parser, f"interrupted (Ctrl-C); {_after_stop(options.out, 'run it again')}", 130)
    except OSError as e:  # a full disk, a folder gone, a permission, while the run went on
        where = f" {e.filename}" if e.filename else ""
        fix = "free space and" if e.errno in (errno.ENOSPC, errno.EDQUOT) else "fix that and"
        _fail(
            parser,
            f"{where.strip() or 'the run'}: {e.strerror or e}; {_after_stop(options.out, fix)}",
            status=1,
        )


def _after_stop(out: Path | None, fix: str) -> str:
    """What a stopped run left, and what to do: "--resume" only once a checkpoint exists."""
    if out is not None and (out / "checkpoint.pt").is_file():
        return f"the run stopped, its last checkpoint is intact: {fix} continue it with --resume"
    what = "run it again" if fix == "run it again" else f"{fix} run it again"
    return f"no checkpoint was written yet, nothing is lost: {what}"
