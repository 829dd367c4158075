"""results/protocol.md and its machine-readable copy, and the verdicts bnnlib.repro.protocol
draws from committed runs: every seed at its planned length, no verdict on a partial set, the
protocol's statistics and words."""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path

import pytest
from scipy.stats import t

from bnnlib import results
from bnnlib.book import claims
from bnnlib.repro import protocol
from bnnlib.train import cli as train_cli
from bnnlib.train.config import RunConfig

REPO = Path(__file__).resolve().parents[1]


def test_the_json_is_the_markdown_protocol():
    """Seeds, length, margin and commands agree between protocol.md and protocol.json, and each
    planned command builds exactly the planned run configuration."""
    text = (REPO / "results" / "protocol.md").read_text()
    p = json.loads((REPO / "results" / "protocol.json").read_text())
    assert p["epochs"] == 100 and "exactly 100 epochs" in text
    assert p["margin"] == 0.002 and "Delta = 0.20 points" in text
    assert p["experiments"]["E1"]["seeds"] == [0, 1, 2, 3, 4]
    assert p["experiments"]["E2"]["seeds"] == [0, 1, 2]
    for run in p["runs"]:
        if "argv" in run:
            argv = run["argv"][: run["argv"].index("--out")]
            assert train_cli.config_from_argv(argv) == RunConfig.from_dict(run["run_config"])
            shown = " ".join(argv).replace(f"--seed {run['seed']}", "--seed S")
            assert shown in text, shown
    assert re.search(r"--batchnorm standard --optimizer adamax_torch7", text)


def _runs_like_the_protocol(root: Path, outcomes: dict[tuple[str, int], int]) -> None:
    """A results folder holding the protocol and one committed run per (experiment, seed),
    whose test errors reach ``outcomes`` at epoch 100 (its best validation epoch)."""
    shutil.copy(REPO / "results" / "protocol.json", root / "protocol.json")
    p = json.loads((root / "protocol.json").read_text())
    for planned in p["runs"]:
        key = (planned["experiment"], planned["seed"])
        if key not in outcomes:
            continue
        name = (planned.get("committed") or planned["publish_to"]).removeprefix("results/")
        n = 10_000
        epochs = [
            {"epoch": e, "val_error": 0.02 - e * 1e-5, "test_error": (outcomes[key] + 7) / n}
            for e in range(1, 101)
        ]
        epochs[-1]["test_error"] = outcomes[key] / n
        epochs.append({"epoch": 101, "val_error": 0.0, "test_error": 0.0})  # past the plan
        hist = {"config": {"n_test": n, "run_config": dict(planned["run_config"], epochs=101)},
                "epochs": epochs}  # fmt: skip
        (root / name).mkdir()
        (root / name / "history.json").write_text(json.dumps(hist))
        (root / name / "run.json").write_text(json.dumps({"hardware": "CPU: test"}))


E1 = [("E1", s) for s in range(5)]


def test_a_partial_set_of_seeds_gets_no_verdict(tmp_path, monkeypatch):
    monkeypatch.setenv(results.ENV_VAR, str(tmp_path))
    _runs_like_the_protocol(tmp_path, {("E1", 0): 140, ("E1", 1): 141})
    v = protocol.e1(protocol.load())
    assert v.status == "not run yet" and v.done == "2 of 5 seeds" and not v.stats
    # each seed read at 100 epochs: epoch 101 (best validation, test 0.00%) does not count
    assert [(s.seed, s.best_epoch, s.test_errors) for s in v.seeds] == [
        (0, 100, 140),
        (1, 100, 141),
    ]
    assert "extended after the test error was seen" in v.seeds[0].note
    row = next(r for r in claims.committed_rows() if r.key == "table1_mnist_torch7")
    assert (
        row.status == "not run yet" and "2 of 5 seeds of the protocol: no verdict yet" in row.ours
    )


@pytest.mark.parametrize(
    "errors, word",
    [
        ([140, 141, 139, 142, 138], "reproduced"),  # tight around 1.40%: equivalence shown
        ([150, 110, 170, 130, 160], "consistent"),  # 1.40% inside, spread too wide for TOST
        ([171, 172, 170, 173, 169], "not reproduced"),
        ([101, 102, 100, 103, 99], "better than the paper"),
    ],
)
def test_e1_names_the_outcome_as_the_protocol_says(tmp_path, monkeypatch, errors, word):
    monkeypatch.setenv(results.ENV_VAR, str(tmp_path))
    _runs_like_the_protocol(tmp_path, dict(zip(E1, errors, strict=True)))
    v = protocol.e1(protocol.load())
    assert v.status == word
    rates = [e / 10_000 for e in errors]
    m = sum(rates) / 5
    s = math.sqrt(sum((r - m) ** 2 for r in rates) / 4)
    half90 = t.ppf(0.95, 4) * s / math.sqrt(5)
    assert v.stats["mean"] == pytest.approx(m) and v.stats["sd"] == pytest.approx(s)
    assert v.stats["diff_high90"] == pytest.approx(m - 0.014 + half90)
    assert v.stats["high95"] == pytest.approx(m + t.ppf(0.975, 4) * s / math.sqrt(5))


@pytest.mark.parametrize(
    "gaps, word",
    [
        ([1, 0, -1], "reproduced"),  # no loss beyond the margin
        ([30, 31, 32], "not reproduced"),  # a loss of 0.31 points, tight
        ([0, 40, -30], "consistent"),  # too noisy to tell
    ],
)
def test_e2_pairs_by_seed_and_bounds_the_loss(tmp_path, monkeypatch, gaps, word):
    monkeypatch.setenv(results.ENV_VAR, str(tmp_path))
    outcomes = {("E1", s): 140 + g for s, g in enumerate(gaps)}
    outcomes |= {("E2", s): 140 for s in range(3)}
    _runs_like_the_protocol(tmp_path, outcomes)
    v = protocol.e2(protocol.load())
    assert v.status == word
    d = [g / 10_000 for g in gaps]
    mean = sum(d) / 3
    sd = math.sqrt(sum((x - mean) ** 2 for x in d) / 2)
    assert v.stats["upper95"] == pytest.approx(mean + t.ppf(0.95, 2) * sd / math.sqrt(3))


def test_e2_waits_for_its_e1_partners(tmp_path, monkeypatch):
    monkeypatch.setenv(results.ENV_VAR, str(tmp_path))
    _runs_like_the_protocol(tmp_path, {("E2", s): 140 for s in range(3)} | {("E1", 0): 140})
    assert protocol.e2(protocol.load()).status == "not run yet"


def test_a_run_with_another_configuration_does_not_count(tmp_path, monkeypatch):
    monkeypatch.setenv(results.ENV_VAR, str(tmp_path))
    _runs_like_the_protocol(tmp_path, {("E1", 0): 140})
    path = tmp_path / "torch7_mnist" / "history.json"
    hist = json.loads(path.read_text())
    hist["config"]["run_config"]["batchnorm"] = "standard"
    path.write_text(json.dumps(hist))
    assert protocol.e1(protocol.load()).seeds == ()


def test_pairs_show_each_seed_as_published(tmp_path, monkeypatch):
    """Before E2 is complete the book shows its pairs as they are: a pair's gap only when both
    of its runs are published, each read at the protocol's 100 epochs."""
    monkeypatch.setenv(results.ENV_VAR, str(tmp_path))
    _runs_like_the_protocol(tmp_path, {("E1", 0): 146, ("E1", 1): 153, ("E2", 0): 139,
                                       ("E2", 2): 150})  # fmt: skip
    got = {p.seed: p for p in protocol.pairs(protocol.load())}
    assert sorted(got) == [0, 1, 2]
    assert got[0].gap == pytest.approx((146 - 139) / 10_000)
    assert got[1].ordinary is None and got[1].gap is None
    assert got[2].shifted is None and got[2].ordinary.test_errors == 150
    row = next(r for r in claims.committed_rows() if r.key == claims.E2_ROW)
    assert row.status == "not run yet" and "2 of 3 seeds" in row.ours
    assert "seed 0: +0.07 points" in row.ours and "seed 1" not in row.ours


@pytest.mark.parametrize(
    "errors, word, words",
    [
        # equivalent within the margin, yet 1.40% lies below the 95% interval: the row says both
        ([146, 153, 150, 140, 147], "reproduced",
         ("+0.07 points, 90% interval +0.03 to +0.12, inside the ±0.20 margin",
          "1.40% is below our 95% interval (ours is higher)")),
        ([150, 110, 170, 130, 160], "consistent", ("not inside the ±0.20 margin",)),
    ],
)  # fmt: skip
def test_the_row_states_the_equivalence_test(tmp_path, monkeypatch, errors, word, words):
    monkeypatch.setenv(results.ENV_VAR, str(tmp_path))
    _runs_like_the_protocol(tmp_path, dict(zip(E1, errors, strict=True)))
    row = next(r for r in claims.committed_rows() if r.key == "table1_mnist_torch7")
    assert row.status == word
    assert all(w in row.ours for w in words), row.ours
    assert ("below our 95% interval" in row.ours) == (word == "reproduced")


def test_the_rows_show_both_bounds_the_seeds_and_the_caveats(tmp_path, monkeypatch):
    monkeypatch.setenv(results.ENV_VAR, str(tmp_path))
    outcomes = {("E1", s): e for s, e in enumerate([141, 139, 140, 142, 138])}
    outcomes |= {("E2", s): e for s, e in enumerate([140, 141, 139])}
    _runs_like_the_protocol(tmp_path, outcomes)
    rows = {r.key: r for r in claims.committed_rows()}
    e1, e2 = rows["table1_mnist_torch7"], rows[claims.E2_ROW]
    # d = +0.01, -0.02, +0.01 points: mean 0.000, s_d 0.0173 points, t(0.95, 2) = 2.920
    half = t.ppf(0.95, 2) * 0.0173 / math.sqrt(3)
    assert f"L {-half:+.2f} points and U {half:+.2f} points" in e2.ours, e2.ours
    assert "mean gap +0.000 points" in e2.ours
    for row in (e1, e2):
        assert protocol.CAVEATS.rstrip(".") in row.details
        assert "best epoch 100, val 1.90%" in row.details  # 0.02 - 100e-5: the fake runs' val
    # Wilson's interval of 140 / 10,000 (the mean), from its formula: 1.19% to 1.65%
    z, p, n = 1.959963984540054, 0.014, 10_000
    centre, spread = p + z * z / (2 * n), z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    low, high = (centre - spread) / (1 + z * z / n), (centre + spread) / (1 + z * z / n)
    assert f"at the mean {100 * low:.2f}%–{100 * high:.2f}%" in e1.details
