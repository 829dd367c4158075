"""bnnlib.train.recipes: the short-run recipe is chosen on validation error, never on test error."""

from __future__ import annotations

import json

import pytest
from test_train import write_tiny_npz

from bnnlib.train import recipes


def test_winner_is_the_lowest_validation_error_not_test():
    rows = [
        {"label": "a", "val_error": 0.02, "test_error_at_best": 0.01},
        {"label": "b", "val_error": 0.01, "test_error_at_best": 0.05},
        {"label": "c", "val_error": 0.01, "test_error_at_best": 0.00},
    ]
    assert recipes.winner(rows)["label"] == "b"  # ties: the first listed


def test_compare_trains_each_candidate_writes_json_and_resumes(tmp_path, monkeypatch):
    name = write_tiny_npz(tmp_path / "tiny.npz")
    base = ["--model", "mnist_mlp", "--dataset", name, "--hidden", "16", "--depth", "1"]
    base += ["--epochs", "2", "--batch-size", "30", "--seed", "0"]
    candidates = {"paper": [], "no hidden dropout": ["--dropout-hidden", "0"]}
    out = tmp_path / "cmp.json"
    table = recipes.compare(base, out, candidates)
    saved = json.loads(out.read_text())
    assert saved == json.loads(json.dumps(table))
    assert [r["label"] for r in saved["rows"]] == list(candidates)
    assert saved["chosen_on_validation"] == recipes.winner(saved["rows"])["label"]
    assert saved["machine"]["cpu_flags"] is not None and saved["base"] == base
    for row in saved["rows"]:
        assert 0 <= row["val_error"] <= 1 and 0 <= row["test_error_at_best"] <= 1
    # A second call trains nothing again: the rows are already there.
    monkeypatch.setattr(recipes, "train_main", lambda argv: pytest.fail("retrained"))
    assert recipes.compare(base, out, candidates)["rows"] == saved["rows"]
    with pytest.raises(ValueError, match="other flags"):
        recipes.compare([*base[:-1], "1"], out, candidates)
