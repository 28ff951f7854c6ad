from pathlib import Path

import pytest

from citymesh.errors import InvalidInput
from citymesh.federation import JobResult, JobSpec
from citymesh.federation.contributions import score_contributions, shapley_values

CITIES = ["A", "B", "C"]


def additive_value(worth: dict[str, float]):
    def value(coalition: frozenset[str]) -> float:
        return 0.5 + sum(worth[c] for c in coalition)

    return value


def test_shapley_exact_additive_game() -> None:
    worth = {"A": 0.10, "B": 0.05, "C": 0.0}
    scores = shapley_values(CITIES, additive_value(worth))
    for city in CITIES:
        assert scores[city] == pytest.approx(worth[city])


def test_shapley_sums_to_grand_coalition() -> None:
    def value(coalition: frozenset[str]) -> float:
        # Cities only help together: A and B each add 0.1 only when both are in.
        return 0.5 + (0.2 if {"A", "B"} <= coalition else 0.0) + 0.01 * len(coalition)

    scores = shapley_values(CITIES, value)
    assert sum(scores.values()) == pytest.approx(value(frozenset(CITIES)) - 0.5)
    assert scores["A"] == pytest.approx(0.11)
    assert scores["B"] == pytest.approx(0.11)
    assert scores["C"] == pytest.approx(0.01)


def test_shapley_sampled_for_many_cities() -> None:
    cities = [f"city{i}" for i in range(8)]
    worth = {city: 0.01 * i for i, city in enumerate(cities)}
    scores = shapley_values(cities, additive_value(worth), permutations=5)
    # In an additive game every permutation gives each city exactly its worth.
    for city in cities:
        assert scores[city] == pytest.approx(worth[city])


def fake_result(auc: float, rows: dict[str, int]) -> JobResult:
    return JobResult(
        job_id="j",
        rounds=[],
        final_auc=auc,
        final_accuracy=0.8,
        model_state={},
        contributions={},
        encoding={},
        seconds=0.0,
        rows_per_city=rows,
    )


def test_leave_one_out_from_retrained_subsets() -> None:
    datasets = {city: Path(f"/data/{city}.parquet") for city in CITIES}
    rows = {"A": 600, "B": 300, "C": 100}
    subset_auc = {
        frozenset({"B", "C"}): 0.60,
        frozenset({"A", "C"}): 0.68,
        frozenset({"A", "B"}): 0.70,
    }
    retrained: list[frozenset[str]] = []

    def retrain(subset: dict[str, Path]) -> float:
        retrained.append(frozenset(subset))
        return subset_auc[frozenset(subset)]

    scores = score_contributions(
        JobSpec(), datasets, fake_result(0.70, rows), method="loo", retrain=retrain
    )
    assert scores["A"].loo == pytest.approx(0.10)
    assert scores["B"].loo == pytest.approx(0.02)
    assert scores["C"].loo == pytest.approx(0.0)
    assert scores["A"].size_share == pytest.approx(0.6)
    assert scores["C"].shapley is None
    assert len(retrained) == 3


def test_unknown_method_rejected() -> None:
    with pytest.raises(InvalidInput, match="contribution method 'vote'"):
        score_contributions(
            JobSpec(),
            {"A": Path("a")},
            fake_result(0.7, {"A": 1}),
            method="vote",
            retrain=lambda subset: 0.5,
        )
