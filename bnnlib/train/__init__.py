"""Training a BNN the paper's way, and the run folder that keeps it.

* :mod:`~bnnlib.train.loop`: :func:`fit` (square hinge, the LR schedules, best-validation
  selection, resume, DistributedDataParallel), :func:`evaluate`, :func:`predict`;
* :mod:`~bnnlib.train.optimizers`: the optimizers by name (a registry);
* :mod:`~bnnlib.train.fast_step`: the fused optimizer steps of the GPU fast path;
* :mod:`~bnnlib.train.checkpoint`: checkpoints written atomically with a SHA-256;
* :mod:`~bnnlib.train.history`: per-epoch records and the best-validation summary;
* :mod:`~bnnlib.train.runfolder`: one run per folder (lock, resume checks);
* :mod:`~bnnlib.train.config`: the run configuration, saved with every run, the one list of
  its settings;
* :mod:`~bnnlib.train.upgrade`: runs recorded by an older bnnlib, converted once;
* :mod:`~bnnlib.train.recipes`: the short-run recipe chosen on validation error;
* :mod:`~bnnlib.train.cli`: ``python -m bnnlib.train``.
"""

from bnnlib.train.checkpoint import (
    CHECKPOINT_FORMAT,
    CheckpointError,
    atomic_save,
    load_checkpoint,
    save_checkpoint,
)
from bnnlib.train.history import History
from bnnlib.train.loop import (
    NonFiniteLossError,
    evaluate,
    fit,
    make_optimizer,
    make_scheduler,
    predict,
)
from bnnlib.train.runfolder import RunConfigError, config_differences

__all__ = [
    "fit",
    "evaluate",
    "predict",
    "make_optimizer",
    "make_scheduler",
    "History",
    "NonFiniteLossError",
    "CHECKPOINT_FORMAT",
    "CheckpointError",
    "atomic_save",
    "load_checkpoint",
    "save_checkpoint",
    "RunConfigError",
    "config_differences",
]
