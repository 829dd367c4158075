"""The short-run recipe, chosen on validation error: ``python -m bnnlib.train.recipes``.

Runs of a few epochs do not profit from the paper's 1000-epoch regularization
(LR decayed to 1/10,000 of its start, hidden dropout 0.5). This command trains
the MNIST MLP once per candidate recipe, with the same data, seed and length,
and picks the recipe of lowest *validation* error at the best-validation epoch;
the test error is reported beside it, never used to choose. The table is
written (atomically, after every run, so an interrupted comparison resumes
where it stopped) to ``--out``, e.g. ``results/recipe_comparison.json``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from pathlib import Path

from bnnlib.files import atomic_write, read_json
from bnnlib.hardware import describe_machine
from bnnlib.train.cli import main as train_main

__all__ = ["CANDIDATES", "compare", "winner", "main"]

# label -> extra flags on top of --recipe paper (the paper's LR 3e-3 -> 3e-7, dropout 0.5).
CANDIDATES = {
    "LR 3e-3 -> 3e-7, hidden dropout 0.5 (the paper's)": [],
    "LR 3e-3 -> 3e-5, hidden dropout 0.5": ["--lr-end", "3e-5"],
    "LR 3e-3 -> 3e-4, hidden dropout 0.5": ["--lr-end", "3e-4"],
    "LR 1e-2 -> 1e-4, hidden dropout 0.5": ["--lr-start", "1e-2", "--lr-end", "1e-4"],
    "LR 3e-3 -> 3e-7, no hidden dropout": ["--dropout-hidden", "0"],
    "LR 3e-3 -> 3e-5, no hidden dropout (short recipe)": [
        "--lr-end", "3e-5", "--dropout-hidden", "0",
    ],
}  # fmt: skip


def winner(rows: list[dict]) -> dict:
    """The row of lowest validation error (ties: the first listed)."""
    return min(rows, key=lambda r: r["val_error"])


def compare(base: list[str], out: Path, candidates: dict[str, list[str]] = CANDIDATES) -> dict:
    """Train every candidate with ``base`` flags; returns (and writes) the table."""
    table = read_json(out) if out.exists() else {}
    if table.get("base") not in (None, base):
        raise ValueError(f"{out} holds a comparison with other flags; choose another --out")
    table.update(
        {
            "base": base,
            "command": "python -m bnnlib.train.recipes " + " ".join(sys.argv[1:]),
            "machine": describe_machine(),
        }
    )
    rows = {r["label"]: r for r in table.get("rows", [])}
    for label, extra in candidates.items():
        if label in rows:
            continue
        argv = [*base, "--recipe", "paper", *extra, "--no-progress"]
        print(f"{label}: python -m bnnlib.train {' '.join(argv)}", flush=True)
        h = train_main(argv)
        times = sorted(r["time"] for r in h.epochs)
        rows[label] = {
            "label": label,
            "argv": argv,
            "best_epoch": h.best_epoch,
            "val_error": h.best_val_error,
            "test_error_at_best": h.test_error_at_best,
            "median_epoch_seconds": times[len(times) // 2],
            "date": datetime.date.today().isoformat(),
        }
        table["rows"] = [rows[k] for k in candidates if k in rows]
        atomic_write(out, json.dumps(table, indent=1).encode())
    table["rows"] = [rows[k] for k in candidates]
    best = winner(table["rows"])
    table["chosen_on_validation"] = best["label"]
    atomic_write(out, json.dumps(table, indent=1).encode())
    return table


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m bnnlib.train.recipes", description=__doc__)
    p.add_argument("--out", required=True, help="JSON table, e.g. results/recipe_comparison.json")
    p.add_argument("--hidden", default="1024", help="MLP hidden units (default 1024)")
    p.add_argument("--epochs", default="10", help="epochs per run (default 10)")
    p.add_argument("--seed", default="0")
    p.add_argument("--dataset", default="mnist")
    args = p.parse_args(argv)
    base = ["--model", "mnist_mlp", "--dataset", args.dataset, "--hidden", args.hidden]
    base += ["--epochs", args.epochs, "--seed", args.seed]
    table = compare(base, Path(args.out))
    for r in table["rows"]:
        print(
            f"{r['label']:52s} val {100 * r['val_error']:.2f}%  "
            f"test {100 * r['test_error_at_best']:.2f}%  (epoch {r['best_epoch']})"
        )
    print(f"chosen on validation error: {table['chosen_on_validation']}")
    return table


if __name__ == "__main__":
    main()
