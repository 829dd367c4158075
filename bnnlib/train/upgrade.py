"""``python -m bnnlib.train.upgrade DIR``: give a run recorded before :class:`RunConfig` its
configuration, once.

Runs trained before :mod:`bnnlib.train.config` recorded only their command line
(``history.json``'s ``config["argv"]``). This reads that command line one last time with the
training CLI's parser (:func:`bnnlib.train.cli.config_from_argv`) and writes the resolved
:class:`~bnnlib.train.config.RunConfig` into ``history.json`` (and ``run.json`` when the
folder is a committed result), atomically. From then on the run is rebuilt from its
configuration only, whatever the flags and defaults become. A configuration of the older
form (an MLP's ``hidden`` and ``depth``) is rewritten in the current one (``widths``); one
already current is left as it is, so running it twice changes nothing. The configuration
must agree with what the history recorded (every setting it names:
:meth:`~bnnlib.train.config.RunConfig.record_differences`), and both files are read and
checked before either is written: a file that is not what a run writes (not JSON, not an
object, a command line that does not train) is an error naming it, and nothing is written.
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


def _config_of(history: dict, path: Path) -> RunConfig:
    """The configuration of a history: its own (read strictly), else its command line's."""
    config = history["config"]
    if CONFIG_KEY in config:
        return RunConfig.from_history(config)
    if not isinstance(config.get("argv"), list):
        raise ValueError(f"{path}: no config.argv to read the configuration from")
    try:
        run_config = config_from_argv([str(a) for a in config["argv"]])
    except ValueError as e:  # RunConfigFormatError: --help, an unknown flag, a bad value
        raise ValueError(f"{path}: {e}; nothing written") from None
    extended = config.get("extended") or []
    if extended:  # resumed with more epochs: the run's length is the last extension's
        run_config = run_config.replace(epochs=int(extended[-1]["to_epochs"]))
    return run_config


def _read(path: Path, what: str) -> dict:
    """The JSON object in ``path`` (a ``what``), else a ValueError naming the file."""
    value = read_json(path)
    if not isinstance(value, dict):
        raise ValueError(f"{path}: not a {what} (a JSON object), but {type(value).__name__}")
    return value


def upgrade(folder: str | Path) -> RunConfig:
    """Write the configuration of the run in ``folder`` (a run folder or a committed result)
    into its ``history.json`` (and ``run.json``); returns it. Both files are read and checked
    first: on any error nothing is written."""
    folder = Path(folder)
    path, run_json = folder / "history.json", folder / "run.json"
    history = _read(path, "training history")
    if not isinstance(history.get("config"), dict):
        raise ValueError(f"{path}: not a training history (no config object)")
    run = _read(run_json, "committed run") if run_json.exists() else None
    run_config = _config_of(history, path)
    mismatched = run_config.record_differences(history["config"])
    if mismatched:
        raise ValueError(
            f"{path}: the command line does not give the recorded settings {mismatched}; "
            "nothing written"
        )
    if (
        run is not None
        and "run_config" in run
        and RunConfig.from_dict(run["run_config"]) != run_config
    ):
        raise ValueError(f"{run_json}: its run_config is not the history's; nothing written")
    writes = []
    if history["config"].get(CONFIG_KEY) != run_config.to_dict():
        history["config"][CONFIG_KEY] = run_config.to_dict()
        writes.append((path, history))
    if run is not None and run.get("run_config") != run_config.to_dict():
        run["run_config"] = run_config.to_dict()
        writes.append((run_json, run))
    for target, value in writes:
        atomic_write(target, json.dumps(value, indent=1).encode())
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
