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
Numbers are checked as they are parsed (a batch size, hidden units, epochs: >= 1;
learning rates, width, time limit: finite and > 0; dropout in [0, 1)).
"""

from __future__ import annotations

import argparse
import errno
import sys
from pathlib import Path

from bnnlib import data as bdata
from bnnlib import paper
from bnnlib.cliargs import fraction, nonnegative_int, positive_float, positive_int
from bnnlib.errors import BadInput
from bnnlib.nn import models
from bnnlib.train.checkpoint import CheckpointError
from bnnlib.train.config import RunConfig
from bnnlib.train.history import History
from bnnlib.train.loop import OPTIMIZERS, FitSetupError, NonFiniteLossError
from bnnlib.train.run import DataError, RunOptions, train
from bnnlib.train.runfolder import RunConfigError, RunFolderError

__all__ = [
    "main",
    "build_parser",
    "resolve_settings",
    "config_from_argv",
    "PAPER_DEFAULTS",
    "PRESETS",
    "SHORT_RECIPE",
    "SHORT_RUN_EPOCHS",
]

# Runs shorter than this use the "short" recipe by default (module docstring).
SHORT_RUN_EPOCHS = 100
SHORT_RECIPE = {"lr_end_ratio": 1e-2, "dropout": 0.0}

# The paper's schedules (Theano code): epochs, batch size, LR start and end.
PAPER_DEFAULTS = paper.SCHEDULES

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


def _data_and_model_options(p: argparse.ArgumentParser) -> None:
    """The dataset and the model's shape."""
    p.add_argument("--model", choices=sorted(models.MODELS), help="required unless --preset")
    p.add_argument(
        "--dataset",
        help="mnist, fashion_mnist, cifar10, svhn or npz:<path> "
        "(default: mnist for mnist_mlp, cifar10 for cifar10_convnet, svhn for svhn_convnet)",
    )
    p.add_argument("--data-root", help=f"data folder (default: ${bdata.ENV_VAR}, else ~/.cache)")
    p.add_argument("--hidden", type=positive_int, help="MLP hidden units (paper: 4096)")
    p.add_argument("--depth", type=nonnegative_int, default=3, help="MLP hidden layers (paper: 3)")
    p.add_argument("--dropout-in", type=fraction, help="MLP input dropout (paper: 0.2)")
    p.add_argument(
        "--dropout-hidden",
        type=fraction,
        help="MLP hidden dropout (paper: 0.5; see --recipe)",
    )
    p.add_argument("--width", type=positive_float, default=1.0, help="ConvNet width multiplier")
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
        default="auto",
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
    p.add_argument("--optimizer", choices=OPTIMIZERS, help="default: adam")
    p.add_argument("--batchnorm", choices=("standard", "shift"), help="default: standard")
    p.add_argument(
        "--lr-halve-every", type=positive_int,
        help="halve the LR every N epochs (Torch7) instead of the exponential decay",
    )  # fmt: skip


def _variant_options(p: argparse.ArgumentParser) -> None:
    """Stochastic binarization, the float twin, the fast path, a time limit, a subset."""
    p.add_argument(
        "--stochastic", action="store_true", help="stochastic binarization of both the "
        "activations and the weights (training only)",
    )  # fmt: skip
    p.add_argument(
        "--stochastic-activations", action="store_true",
        help="stochastic binarization of the Sign activations (training only)",
    )  # fmt: skip
    p.add_argument(
        "--stochastic-weights", action="store_true",
        help="stochastic binarization of the weights (training only)",
    )  # fmt: skip
    p.add_argument(
        "--max-time", type=positive_float, help="seconds; stop cleanly at the last epoch boundary "
        "that fits (history.json says so)",
    )  # fmt: skip
    p.add_argument("--float", action="store_true", help="train the float twin (no binarization)")
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
    p.add_argument("--seed", type=nonnegative_int, default=0)
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
    """The run's :class:`RunConfig`, from the flags, then the preset, then the paper's defaults.

    The ``short`` recipe (module docstring) sets the LR end and the hidden dropout
    of runs under ``SHORT_RUN_EPOCHS`` epochs unless ``--recipe paper``.
    """
    preset = PRESETS.get(args.preset, {}) if args.preset else {}
    model = preset.get("model", args.model)
    if model is None:
        raise ValueError("choose a model with --model (or a --preset)")
    if args.model not in (None, model):
        raise ValueError(f"--preset {args.preset} trains {model}, not {args.model}")
    defaults = PAPER_DEFAULTS[model]

    def pick(flag: str, default):
        value = getattr(args, flag, None)
        return value if value is not None else preset.get(flag, default)

    epochs = pick("epochs", defaults["epochs"])
    lr_start = pick("lr_start", defaults["lr"][0])
    recipe = args.recipe
    if recipe == "auto":
        recipe = "short" if epochs < SHORT_RUN_EPOCHS and not args.preset else "paper"
    if recipe == "short":
        lr_end, drop = lr_start * SHORT_RECIPE["lr_end_ratio"], SHORT_RECIPE["dropout"]
    else:
        lr_end, drop = defaults["lr"][1], 0.5
    both = args.stochastic
    return RunConfig(
        model=model,
        dataset=args.dataset or defaults["dataset"],
        preset=args.preset,
        recipe="preset" if args.preset and args.recipe == "auto" else recipe,
        epochs=epochs,
        batch_size=pick("batch_size", defaults["batch_size"]),
        lr_start=lr_start,
        lr_end=pick("lr_end", lr_end),
        lr_halve_every=pick("lr_halve_every", None),
        dropout_hidden=pick("dropout_hidden", drop),
        dropout_in=pick("dropout_in", 0.2),
        hidden=pick("hidden", 4096),
        depth=args.depth,
        width=args.width,
        fc_width=args.fc_width,
        batchnorm=pick("batchnorm", "standard"),
        optimizer=pick("optimizer", "adam"),
        glorot_scale=preset.get("glorot_scale", True),
        stochastic_activations=bool(
            both or args.stochastic_activations or preset.get("stochastic_activations", False)
        ),
        stochastic_weights=bool(
            both or args.stochastic_weights or preset.get("stochastic_weights", False)
        ),
        last_batchnorm=preset.get("last_batchnorm"),
        bn_eps=preset.get("bn_eps"),
        bn_momentum=preset.get("bn_momentum"),
        binary=not args.float,
        seed=args.seed,
        train_size=args.train_size,
        eval_batch_size=args.eval_batch_size,
        fast=args.fast,
    )


def config_from_argv(argv: list[str]) -> RunConfig:
    """The :class:`RunConfig` that ``python -m bnnlib.train ARGV`` trains (flags resolved)."""
    return resolve_settings(build_parser().parse_args(argv))


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
    except (RunFolderError, RunConfigError, CheckpointError, FitSetupError, BadInput) as e:
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
