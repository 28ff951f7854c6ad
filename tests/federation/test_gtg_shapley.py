"""GTG-Shapley from the rounds' updates: the algorithm, and inside a real job."""

from pathlib import Path

import numpy as np
import pytest

from citymesh.errors import InvalidInput
from citymesh.federation import JobSpec, run_job
from citymesh.federation.contributions import (
    GtgSettings,
    RoundUpdates,
    coalition_arrays,
    gtg_shapley,
    shapley_values,
)

NO_TRUNCATION = GtgSettings(within_round_truncation=0.0, between_round_truncation=0.0)


def one_hot_round(
    cities: list[str], weights: dict[str, float] | None = None
) -> RoundUpdates:
    """A round whose city models are one-hot vectors, so a FedAvg shows its members."""
    width = len(cities)
    city_arrays = {
        city: {"w": np.eye(width, dtype=np.float64)[i]} for i, city in enumerate(cities)
    }
    return RoundUpdates(
        round=1,
        global_arrays={"w": np.zeros(width)},
        city_arrays=city_arrays,
        weights=weights or dict.fromkeys(cities, 1.0),
    )


def additive_evaluate(cities: list[str], worth: dict[str, float]):
    """Score a model by the cities whose one-hot entry it contains."""
    calls: list[int] = []

    def evaluate(models):
        calls.append(len(models))
        return [
            0.5 + sum(worth[c] for i, c in enumerate(cities) if model["w"][i] > 0)
            for model in models
        ]

    return evaluate, calls


def test_coalition_arrays_weighted_fedavg() -> None:
    update = one_hot_round(["A", "B"], weights={"A": 3.0, "B": 1.0})
    both = coalition_arrays(update, frozenset({"A", "B"}))
    assert both["w"].tolist() == [0.75, 0.25]
    assert coalition_arrays(update, frozenset())["w"].tolist() == [0.0, 0.0]
    assert coalition_arrays(update, frozenset({"B"}))["w"].tolist() == [0.0, 1.0]


def test_gtg_exact_for_three_cities() -> None:
    cities = ["A", "B", "C"]
    update = RoundUpdates(
        round=1,
        global_arrays={"w": np.zeros(2)},
        city_arrays={
            "A": {"w": np.array([1.0, 0.0])},
            "B": {"w": np.array([0.0, 2.0])},
            "C": {"w": np.array([1.0, 1.0])},
        },
        weights={"A": 2.0, "B": 1.0, "C": 1.0},
    )

    def utility(model) -> float:
        # A non-additive metric: the coalitions interact through the average.
        return 0.5 + 0.1 * float(np.tanh(model["w"][0] * model["w"][1] + model["w"][0]))

    result = gtg_shapley(
        [update], lambda models: [utility(m) for m in models], settings=NO_TRUNCATION
    )
    exact = shapley_values(
        cities, lambda coalition: utility(coalition_arrays(update, coalition))
    )
    for city in cities:
        assert result.shapley[city] == pytest.approx(exact[city], abs=1e-12)
    assert result.rounds[0]["permutations"] == 6
    # The empty and full coalitions plus the three singletons and three pairs.
    assert result.evaluations == 8


def test_gtg_sums_to_metric_gain() -> None:
    cities = ["A", "B", "C"]
    evaluate, _ = additive_evaluate(cities, {"A": 0.05, "B": 0.02, "C": 0.01})
    first = one_hot_round(cities)
    second = RoundUpdates(2, first.global_arrays, first.city_arrays, first.weights)
    result = gtg_shapley([first, second], evaluate, settings=NO_TRUNCATION)
    assert sum(result.shapley.values()) == pytest.approx(2 * 0.08)
    assert result.shapley["A"] == pytest.approx(0.10)


def test_gtg_samples_guided_permutations_for_many_cities() -> None:
    cities = [f"city{i}" for i in range(7)]
    worth = {city: 0.01 * (i + 1) for i, city in enumerate(cities)}
    evaluate, calls = additive_evaluate(cities, worth)
    settings = GtgSettings(within_round_truncation=0.0, min_permutations=14)
    result = gtg_shapley([one_hot_round(cities)], evaluate, settings=settings)
    # In an additive game every permutation gives each city exactly its worth,
    # so the running means settle at the first check after the minimum.
    for city in cities:
        assert result.shapley[city] == pytest.approx(worth[city])
    assert result.rounds[0]["permutations"] == 14
    # One batch for the round's ends, then one per permutation position in two
    # waves of 7 guided permutations. The full coalition is always known, and
    # the second wave finds every singleton known from the first.
    assert len(calls) == 1 + 6 + 5
    assert result.batches == len(calls)


def test_gtg_truncation_skips_flat_round() -> None:
    cities = ["A", "B"]
    evaluate, calls = additive_evaluate(cities, {"A": 0.0004, "B": 0.0004})
    result = gtg_shapley([one_hot_round(cities)], evaluate)
    assert result.shapley == {"A": 0.0, "B": 0.0}
    assert result.rounds[0]["permutations"] == 0
    assert calls == [2]


def test_gtg_truncates_within_round() -> None:
    cities = [f"city{i}" for i in range(7)]
    # city0 alone brings the round's whole gain: once it joins a permutation,
    # the value equals the round's value and the rest of the walk is skipped.
    worth = dict.fromkeys(cities, 0.0) | {"city0": 0.2}
    evaluate, _ = additive_evaluate(cities, worth)
    truncated = gtg_shapley(
        [one_hot_round(cities)], evaluate, settings=GtgSettings(min_permutations=14)
    )
    full = gtg_shapley(
        [one_hot_round(cities)],
        evaluate,
        settings=GtgSettings(within_round_truncation=0.0, min_permutations=14),
    )
    assert truncated.shapley["city0"] == pytest.approx(0.2)
    assert truncated.shapley["city1"] == pytest.approx(0.0)
    assert truncated.evaluations < full.evaluations


def test_gtg_rejects_wrong_score_count() -> None:
    with pytest.raises(InvalidInput, match="evaluate returned 1 scores for 2 models"):
        gtg_shapley([one_hot_round(["A", "B"])], lambda models: [0.5])


def test_run_job_gtg_contributions(
    city_files: dict[str, Path], quick_spec: JobSpec
) -> None:
    result = run_job(quick_spec, city_files, contributions="gtg")
    record = result.gtg_shapley
    assert record is not None
    assert record["method"] == "gtg"
    assert [r["round"] for r in record["rounds"]] == [1, 2, 3]
    assert record["evaluations"] > 2 * quick_spec.rounds
    for city in ("EWR", "JFK", "LGA"):
        assert result.contributions[city].shapley == record["shapley"][city]
        assert result.contributions[city].loo is None
    total = sum(c.shapley for c in result.contributions.values())
    initial = record["rounds"][0]["value_before"]
    # Truncation moves each round's total by less than 0.001.
    assert total == pytest.approx(result.final_auc - initial, abs=3 * 0.001)
    assert record["rounds"][-1]["value_after"] == pytest.approx(result.final_auc)


def test_run_job_loo_and_gtg(city_files: dict[str, Path], quick_spec: JobSpec) -> None:
    result = run_job(quick_spec, city_files, contributions="loo+gtg")
    for city in ("EWR", "JFK", "LGA"):
        assert result.contributions[city].loo is not None
        assert result.contributions[city].shapley is not None


def test_gtg_unavailable_with_dp(
    city_files: dict[str, Path], quick_spec: JobSpec
) -> None:
    spec = JobSpec.from_dict(
        {
            **quick_spec.to_dict(),
            "rounds": 1,
            "privacy": {"mode": "dp", "noise_multiplier": 0.5, "clipping_norm": 5.0},
        }
    )
    result = run_job(spec, city_files, contributions="gtg")
    assert result.gtg_shapley is not None
    assert "not available in privacy mode 'dp'" in result.gtg_shapley["error"]
    assert all(c.shapley is None for c in result.contributions.values())
