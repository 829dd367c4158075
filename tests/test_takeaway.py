"""Take-aways follow the numbers (bnnlib.book.takeaway): a gap is called worse or better only
when its 95% interval excludes 0, and a reduced run says so."""

from __future__ import annotations

from bnnlib.book import takeaway
from bnnlib.paper import Interval, gap_interval


def test_a_gap_whose_interval_excludes_zero_is_called_a_gap():
    # Notebook 04's small-profile run: shift AdaMax 2.62 points worse, interval +1.71 to +3.53.
    gap = Interval(0.0262, 0.0171, 0.0353, "unpaired")
    text = takeaway.gap_sentence(gap, "Shift-based AdaMax", "Adam", reduced=True, claim="E2")
    assert "ends 2.62 points worse than Adam in test error" in text and "excludes 0" in text
    assert "much as" not in text and "no difference" not in text
    assert "reduced run" in text and "which E2 decides" in text
    better = takeaway.gap_sentence(Interval(-0.02, -0.03, -0.01, "x"), "A", "B")
    assert "A ends 2.00 points better than B" in better and "reduced" not in better


def test_a_gap_whose_interval_contains_zero_shows_no_difference():
    gap = gap_interval(131, 128, 10_000)  # 1.31% vs 1.28%: well inside the test-set noise
    text = takeaway.gap_sentence(gap, "A", "B")
    assert gap.low < 0 < gap.high
    assert "no difference shown" in text and "worse" not in text and "better" not in text


def test_compare_and_the_paragraph():
    assert (
        takeaway.compare(0.2, 0.1, "A", "B", what="cost")
        == "A ends above B in cost (0.2 against 0.1)"
    )
    assert "ends below" in takeaway.compare(0.01, 0.02, "A", "B", what="error", unit="%")
    assert takeaway.text("One.", " ", "Two.") == "**What to take away.** One. Two."


def test_speed_words_a_slowdown_as_one():
    assert takeaway.speed(3.24, "XNOR", "float32") == "XNOR ran 3.2× faster than float32"
    assert takeaway.speed(0.5, "XNOR", "float32") == "XNOR ran 2.0× slower than float32"
