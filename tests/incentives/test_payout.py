import pytest

from citymesh.errors import InvalidInput
from citymesh.incentives import blend_scores, payout_memo, split_budget


def test_blend_scores_sum_to_one():
    scores = blend_scores(
        {"EWR": 100, "JFK": 100, "LGA": 200}, {"EWR": 0.02, "JFK": 0.0, "LGA": 0.02}
    )
    assert scores["EWR"] == pytest.approx(0.5 * 0.25 + 0.5 * 0.5)
    assert scores["JFK"] == pytest.approx(0.5 * 0.25)
    assert scores["LGA"] == pytest.approx(0.5 * 0.5 + 0.5 * 0.5)
    assert sum(scores.values()) == pytest.approx(1.0)


def test_blend_scores_negative_gain_counts_zero():
    scores = blend_scores({"A": 1, "B": 3}, {"A": -0.5, "B": -0.1})
    assert scores == {"A": 0.25, "B": 0.75}


def test_split_budget_sums_exactly():
    payouts = split_budget({"A": 1.0, "B": 1.0, "C": 1.0}, 100)
    assert [p.amount for p in payouts] == [34, 33, 33]
    assert sum(p.amount for p in payouts) == 100


def test_split_budget_rejects_negative_budget():
    with pytest.raises(InvalidInput, match=r"budget must be >= 0 token units, got -1"):
        split_budget({"A": 1.0}, -1)


def test_blend_scores_rejects_empty_rows():
    with pytest.raises(InvalidInput, match="at least one city with training rows"):
        blend_scores({"A": 0, "B": 0})


def test_payout_memo_changes_with_amounts():
    first = payout_memo("job-1", "ab" * 32, split_budget({"A": 1.0, "B": 2.0}, 30))
    second = payout_memo("job-1", "ab" * 32, split_budget({"A": 1.0, "B": 2.0}, 31))
    assert len(first) == 32
    assert first != second
