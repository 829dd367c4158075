"""``python -m bnnlib.train.upgrade DIR``: give a run recorded before :class:`RunConfig` its
configuration, once.

Runs trained before :mod:`bnnlib.train.config` recorded only their command line
(``history.json``'s ``config["argv"]``). This reads that command line one last time with the
training CLI's parser (:func:`bnnlib.train.cli.config_from_argv`) and writes the resolved
:class:`~bnnlib.train.config.RunConfig` into ``history.json`` (and ``run.json`` when the
folder is a committed result), atomically. From then on the run is rebuilt from its
configuration only, whatever the flags and defaults become. A folder that already holds a
configuration is left as it is, so running it twice changes nothing; the configuration must
agree with what the history recorded (model, dataset, epochs, batch size, LR, seed), or
nothing is written.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from bnnlib.files import atomic_write, read_json
from bnnlib.train.cli import config_from_argv
from bnnlib.train.config import CONFIG_KEY, RunConfig

__all__ = ["upgrade", "main"]

#: history.config keys that must agree with the configuration read from the command line.
_CHECKED = {
    "model": "model",
    "num_epochs": "epochs",
    "batch_size": "batch_size",
    "lr_start": "lr_start",
    "lr_end": "lr_end",
    "lr_halve_every": "lr_halve_every",
    "optimizer": "optimizer",
    "seed": "seed",
    "hidden": "hidden",
    "batchnorm": "batchnorm",
}


def _config_of(history: dict, path: Path) -> RunConfig:
    config = history.get("config")
    if not isinstance(config, dict) or not isinstance(config.get("argv"), list):
        raise ValueError(f"{path}: no config.argv to read the configuration from")
    run_config = config_from_argv([str(a) for a in config["argv"]])
    extended = config.get("extended") or []
    if extended:  # resumed with more epochs: the run's length is the last extension's
        run_config = run_config.replace(epochs=int(extended[-1]["to_epochs"]))
    mismatched = {
        key: (config[key], getattr(run_config, attr))
        for key, attr in _CHECKED.items()
        if key in config and config[key] != getattr(run_config, attr)
    }
    if mismatched:
        raise ValueError(
            f"{path}: the command line does not give the recorded settings {mismatched}; "
            "nothing written"
        )
    return run_config


def upgrade(folder: str | Path) -> RunConfig:
    """Write the configuration of the run in ``folder`` (a run folder or a committed result)
    into its ``history.json`` (and ``run.json``); returns it."""
    folder = Path(folder)
    path = folder / "history.json"
    history = read_json(path)
    if CONFIG_KEY in history.get("config", {}):
        run_config = RunConfig.from_history(history["config"])
    else:
        run_config = _config_of(history, path)
        history["config"][CONFIG_KEY] = run_config.to_dict()
        atomic_write(path, json.dumps(history, indent=1).encode())
    run_json = folder / "run.json"
    if run_json.exists():
        run = read_json(run_json)
        if "run_config" not in run:
            run["run_config"] = run_config.to_dict()
            atomic_write(run_json, json.dumps(run, indent=1).encode())
    return run_config


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bnnlib.train.upgrade", description=__doc__)
    p.add_argument("folders", nargs="+", help="run folders or committed results")
    args = p.parse_args(argv)
    for folder in args.folders:
        try:
            config = upgrade(folder)
        except (OSError, ValueError) as e:
            p.exit(2, f"{p.prog}: error: {e}\n")
        print(f"{folder}: {config.describe()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
