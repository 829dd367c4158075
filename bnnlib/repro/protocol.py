"""The protocol of ``results/protocol.md``, read from ``results/protocol.json``: the verdicts.

The protocol was committed before its runs started (issue 28). This module does what it says,
and nothing it does not: for each experiment it finds the committed runs of its seeds, reads
each at its planned length (the epoch of lowest validation error over the first 100 epochs,
ties to the later epoch; the test error there), and, once every seed of the experiment is
published, computes the protocol's statistics and names the outcome in its words. A partial
set of seeds gets no verdict: its status is "not run yet", with how many seeds are done.

E1 (Table 1, Torch7 column, 1.40%): k = 5 seeds, mean m and standard deviation s; the 95%
interval m +- t(0.975, k-1) s / sqrt(k); two one-sided tests: the 90% interval of
(m - 1.40%) +- t(0.95, k-1) s / sqrt(k) inside (-0.20, +0.20) points is "reproduced"; else
"better than the paper" / "not reproduced" when the 95% interval lies below / above 1.40%;
else "consistent". The binomial noise of one run on the 10,000 test images is shown beside it.

E2 (the "no accuracy loss" of the shift-based parts): pairs by seed, d = E1 - E2 (shift minus
ordinary), k = 3; U = d + t(0.95, 2) s_d / sqrt(3) < 0.20 points is "reproduced" (no loss
shown); L = d - t(0.95, 2) s_d / sqrt(3) > 0 is "not reproduced" (a loss); else "consistent".
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

from bnnlib import results
from bnnlib.train.config import RunConfig, RunConfigFormatError

__all__ = [
    "Pair",
    "SeedResult",
    "Verdict",
    "load",
    "decided_claims",
    "seed_result",
    "e1",
    "e2",
    "pairs",
    "CAVEATS",
]

#: What results/protocol.md's Reporting section says every place showing its runs must say.
CAVEATS = (
    "The 100 epochs and the best-validation selection are this book's choices: the Torch7 code "
    "trains with no end and reports no selection. Its shift-based batch norm rounds in the "
    "backward pass too; ours passes the AP2 gradient straight through. Images 19,690-59,999 of "
    "the MNIST training file (part of our training split and all of our validation split) are "
    "rebuilt from a PNG copy, at most one grey level off on 2.7% of their pixels "
    "(../shared/data/README.md)."
)

PROTOCOL_FILE = "protocol.json"


def load() -> dict[str, Any] | None:
    """``results/protocol.json``; None where there is no results folder or no protocol."""
    folder = results.results_dir()
    if folder is None or not (folder / PROTOCOL_FILE).exists():
        return None
    return json.loads((folder / PROTOCOL_FILE).read_text())


def decided_claims(proto: dict[str, Any] | None) -> set[str]:
    """The summary rows (claim keys) whose status the protocol decides: E1's Table 1 cell."""
    if proto is None:
        return set()
    return {proto["experiments"]["E1"]["claim"]}


@dataclass(frozen=True)
class SeedResult:
    """One seed of an experiment, read at its planned length."""

    experiment: str
    seed: int
    run: str  # the folder under results/
    best_epoch: int
    val_error: float
    test_error: float
    test_errors: int  # of n_test images
    n_test: int
    packed_matches_history: bool | None  # None: the packed model is not this epoch's
    note: str = ""
    hardware: str = "?"  # the machine that trained it, as its run.json names it


@dataclass(frozen=True)
class Verdict:
    """An experiment's seeds and, once all are published, its statistics and outcome."""

    experiment: str
    planned_seeds: tuple[int, ...]
    seeds: tuple[SeedResult, ...]
    status: str  # the protocol's word, or "not run yet"
    stats: dict[str, float] = field(default_factory=dict)

    @property
    def done(self) -> str:
        return f"{len(self.seeds)} of {len(self.planned_seeds)} seeds"


@dataclass(frozen=True)
class Pair:
    """One seed of E2 beside its E1 partner: the shift-based run and the ordinary one (either
    None until published) and, once both are, the gap d = shift - ordinary (a fraction)."""

    seed: int
    shifted: SeedResult | None  # E1: shift-based batch norm and AdaMax
    ordinary: SeedResult | None  # E2: ordinary batch norm, AdaMax without AP2

    @property
    def gap(self) -> float | None:
        if self.shifted is None or self.ordinary is None:
            return None
        return self.shifted.test_error - self.ordinary.test_error


def _matches(run: results.CommittedRun, planned: dict[str, Any], epochs: int) -> bool:
    """The run was trained with the planned configuration (every setting that decides the
    result, as :class:`RunConfig` compares them, whatever form each was recorded in), for at
    least the planned length."""
    try:
        have, want = RunConfig.from_dict(run.config), RunConfig.from_dict(planned)
    except RunConfigFormatError:
        return False
    return have.epochs >= epochs and set(have.differences(want)) <= {"epochs"}


def seed_result(experiment: str, seed: int, run: results.CommittedRun, epochs: int) -> SeedResult:
    """The run read at ``epochs`` epochs: best validation over them, ties to the later."""
    first = [e for e in run.epochs if e["epoch"] <= epochs]
    if len(first) < epochs:
        raise ValueError(f"results/{run.name}: {len(first)} epochs, the protocol needs {epochs}")
    best = min(first, key=lambda e: (e["val_error"], -e["epoch"]))
    n = run.n_test
    check = run.run.get("packed_check") or {}
    packed = None
    if best["epoch"] == run.best_epoch and check:
        packed = check.get("errors_packed") == check.get("errors_history")
    note = ""
    if len(run.epochs) > epochs:
        note = (
            f"read at its first {epochs} of {len(run.epochs)} epochs; its {len(run.epochs)}-epoch "
            f"figure ({100 * run.test_error:.2f}%) was extended after the test error was seen"
        )
    return SeedResult(
        experiment, seed, run.name, best["epoch"], best["val_error"], best["test_error"],
        round(best["test_error"] * n), n, packed, note, str(run.run.get("hardware", "?")),
    )  # fmt: skip


def _seeds(protocol: dict[str, Any], experiment: str) -> list[SeedResult]:
    epochs = protocol["epochs"]
    found = []
    for planned in protocol["runs"]:
        if planned["experiment"] != experiment:
            continue
        name = planned.get("committed") or planned.get("publish_to")
        run = results.load_run(name.removeprefix("results/")) if name else None
        if run is not None and _matches(run, planned["run_config"], epochs):
            found.append(seed_result(experiment, planned["seed"], run, epochs))
    return found


def _t(q: float, df: int) -> float:
    from scipy.stats import t

    return float(t.ppf(q, df))


def _mean_sd(xs: list[float]) -> tuple[float, float]:
    m = sum(xs) / len(xs)
    return m, math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))


def e1(protocol: dict[str, Any]) -> Verdict:
    """Experiment E1: the Torch7 column's verdict (module docstring)."""
    spec = protocol["experiments"]["E1"]
    planned = tuple(spec["seeds"])
    seeds = tuple(sorted(_seeds(protocol, "E1"), key=lambda s: s.seed))
    if {s.seed for s in seeds} != set(planned):
        return Verdict("E1", planned, seeds, "not run yet")
    k, paper, margin = len(seeds), spec["paper"], protocol["margin"]
    m, s = _mean_sd([x.test_error for x in seeds])
    se = s / math.sqrt(k)
    lo95, hi95 = m - _t(0.975, k - 1) * se, m + _t(0.975, k - 1) * se
    lo90, hi90 = m - paper - _t(0.95, k - 1) * se, m - paper + _t(0.95, k - 1) * se
    if -margin < lo90 and hi90 < margin:
        status = "reproduced"
    elif hi95 < paper:
        status = "better than the paper"
    elif lo95 > paper:
        status = "not reproduced"
    else:
        status = "consistent"
    binomial = math.sqrt(m * (1 - m) / seeds[0].n_test)
    stats = {"mean": m, "sd": s, "low95": lo95, "high95": hi95, "diff_low90": lo90,
             "diff_high90": hi90, "margin": margin, "binomial_sd": binomial}  # fmt: skip
    return Verdict("E1", planned, seeds, status, stats)


def e2(protocol: dict[str, Any]) -> Verdict:
    """Experiment E2: the "no loss" verdict of the shift-based parts (module docstring)."""
    spec = protocol["experiments"]["E2"]
    planned = tuple(spec["seeds"])
    seeds = tuple(sorted(_seeds(protocol, "E2"), key=lambda s: s.seed))
    gaps = [p.gap for p in pairs(protocol)]
    if any(g is None for g in gaps):  # an E2 run, or its E1 partner, not published yet
        return Verdict("E2", planned, seeds, "not run yet")
    k, margin = len(gaps), protocol["margin"]
    d, sd = _mean_sd(gaps)
    half = _t(0.95, k - 1) * sd / math.sqrt(k)
    if d + half < margin:
        status = "reproduced"
    elif d - half > 0:
        status = "not reproduced"
    else:
        status = "consistent"
    stats = {"mean_gap": d, "sd_gap": sd, "upper95": d + half, "lower95": d - half,
             "margin": margin}  # fmt: skip
    return Verdict("E2", planned, seeds, status, stats)


def pairs(protocol: dict[str, Any]) -> list[Pair]:
    """E2's planned seeds, each with the published E1 and E2 runs of that seed (or None): what
    the book shows while the experiment is incomplete, and the pairs its verdict uses."""
    shifted = {s.seed: s for s in _seeds(protocol, "E1")}
    ordinary = {s.seed: s for s in _seeds(protocol, "E2")}
    return [Pair(seed, shifted.get(seed), ordinary.get(seed))
            for seed in protocol["experiments"]["E2"]["seeds"]]  # fmt: skip
