"""The record of a training run: per-epoch numbers and the paper's best-validation summary.

What each epoch records (:class:`History`, written by :func:`bnnlib.train.fit`; errors are
fractions in [0, 1]):

``loss``
    the mean training loss over the epoch's mini-batches;
``train_error``
    the error on the mini-batches *as they were trained on*: train mode, so with
    dropout and batch statistics, before each update. This is the training curve
    of the paper's Figure 1 and costs no extra pass; the error of the final
    weights on the training set in eval mode is lower;
``val_error``, ``test_error``
    eval mode (running batch-norm statistics, no dropout, deterministic Sign);
``lr``, ``time``
    the base LR of the epoch (binary layers use it times their Glorot scale)
    and the seconds of the training passes (``eval_time``: of the evaluation).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

from bnnlib.files import atomic_write

__all__ = ["History"]


@dataclass
class History:
    """Per-epoch records (``epoch`` counts from 1) and the paper's best-validation summary."""

    epochs: list[dict] = field(default_factory=list)
    config: dict = field(default_factory=dict)
    #: Why training ended before ``num_epochs`` (e.g. the time limit), else None.
    stopped: str | None = None
    #: The best-validation weights (CPU state dict) after :func:`fit`; not written to JSON.
    best_state: dict | None = field(default=None, repr=False, compare=False)

    @property
    def best_epoch(self) -> int | None:
        """The epoch of lowest validation error; on ties the *later* epoch (the Theano code's
        ``val_err <= best``), the last epoch if there is no validation set."""
        if not self.epochs:
            return None
        scored = [r for r in self.epochs if r.get("val_error") is not None]
        if not scored:
            return self.epochs[-1]["epoch"]
        return min(scored, key=lambda r: (r["val_error"], -r["epoch"]))["epoch"]

    def _at_best(self, key: str) -> float | None:
        best = self.best_epoch
        return None if best is None else next(r[key] for r in self.epochs if r["epoch"] == best)

    @property
    def best_val_error(self) -> float | None:
        return self._at_best("val_error")

    @property
    def test_error_at_best(self) -> float | None:
        """The test error at the best-validation epoch: the number the paper reports."""
        return self._at_best("test_error")

    def to_dict(self) -> dict:
        return {
            "config": dict(self.config),
            "epochs": [dict(r) for r in self.epochs],
            "best_epoch": self.best_epoch,
            "best_val_error": self.best_val_error,
            "test_error_at_best": self.test_error_at_best,
            "stopped": self.stopped,
        }

    @classmethod
    def from_dict(cls, d: dict) -> History:
        return cls(
            epochs=[dict(r) for r in d.get("epochs", [])],
            config=dict(d.get("config", {})),
            stopped=d.get("stopped"),
        )

    def to_json(self, path: str | os.PathLike) -> None:
        """Write :meth:`to_dict` as JSON, atomically."""
        text = json.dumps(self.to_dict(), indent=1)
        atomic_write(path, text.encode())

    def __str__(self) -> str:
        if not self.epochs:
            return "History(no epochs)"
        best = self.best_epoch
        return (
            f"{len(self.epochs)} epochs; best validation epoch {best}: "
            f"val error {pct(self.best_val_error)}, test error {pct(self.test_error_at_best)}"
        )


def pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}%"
