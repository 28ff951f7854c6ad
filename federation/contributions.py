"""Per-city contribution scores: data size, leave-one-out and Shapley values.

The value of a set of cities is the pooled test AUC of the model they train together
(same spec, same splits). The empty set is worth 0.5, the AUC of a constant guess.
Leave-one-out is the AUC lost when a city is left out. The Shapley value averages a
city's marginal gain over all orders in which cities could join: computed exactly
from all 2^n - 1 coalitions up to ``EXACT_SHAPLEY_MAX_CITIES`` cities, and estimated
from random permutations above that (Monte Carlo sampling, as in TMC-Shapley but
without truncation).
"""

from __future__ import annotations

import itertools
import logging
import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from citymesh.errors import InvalidInput

from .spec import JobSpec

if TYPE_CHECKING:
    from .runner import JobResult

log = logging.getLogger("citymesh.federation")

CONTRIBUTION_METHODS = ("none", "size", "loo", "shapley")
EMPTY_COALITION_AUC = 0.5
EXACT_SHAPLEY_MAX_CITIES = 5
SHAPLEY_PERMUTATIONS = 30


@dataclass(frozen=True)
class Contribution:
    """A city's contribution to a job.

    ``loo`` is the pooled-AUC drop when the city is left out, and ``shapley`` the
    city's Shapley value in AUC points (None when not computed). The Shapley values
    of all cities sum to the full model's AUC minus 0.5.
    """

    city: str
    rows: int
    size_share: float
    loo: float | None = None
    shapley: float | None = None


Retrain = Callable[[dict[str, Path]], float]


def score_contributions(
    spec: JobSpec,
    datasets: dict[str, Path],
    result: JobResult,
    *,
    method: str,
    retrain: Retrain,
) -> dict[str, Contribution]:
    """Score each city's contribution. ``retrain(subset)`` returns a subset's AUC."""
    if method not in CONTRIBUTION_METHODS:
        raise InvalidInput(
            f"contribution method {method!r} is unknown; use one of "
            f"{CONTRIBUTION_METHODS!r}"
        )
    if method == "none":
        return {}
    cities = sorted(datasets)
    rows = {city: result.rows_per_city.get(city, 0) for city in cities}
    total = sum(rows.values()) or 1
    values: dict[frozenset[str], float] = {
        frozenset(): EMPTY_COALITION_AUC,
        frozenset(cities): result.final_auc,
    }

    def value(coalition: frozenset[str]) -> float:
        if coalition not in values:
            subset = {city: datasets[city] for city in sorted(coalition)}
            values[coalition] = retrain(subset)
            log.info(
                "contribution: cities %s reach AUC %.4f",
                sorted(coalition),
                values[coalition],
            )
        return values[coalition]

    loo: dict[str, float | None] = dict.fromkeys(cities)
    if method in ("loo", "shapley"):
        full = frozenset(cities)
        for city in cities:
            loo[city] = value(full) - value(full - {city})

    shapley: dict[str, float | None] = dict.fromkeys(cities)
    if method == "shapley":
        shapley.update(shapley_values(cities, value, seed=spec.seed))

    return {
        city: Contribution(
            city=city,
            rows=rows[city],
            size_share=rows[city] / total,
            loo=loo[city],
            shapley=shapley[city],
        )
        for city in cities
    }


def shapley_values(
    cities: list[str],
    value: Callable[[frozenset[str]], float],
    *,
    seed: int = 0,
    permutations: int = SHAPLEY_PERMUTATIONS,
) -> dict[str, float]:
    """Return each city's Shapley value under the coalition value function."""
    count = len(cities)
    if count <= EXACT_SHAPLEY_MAX_CITIES:
        scores = dict.fromkeys(cities, 0.0)
        for city in cities:
            others = [c for c in cities if c != city]
            for size in range(count):
                weight = 1.0 / (count * math.comb(count - 1, size))
                for members in itertools.combinations(others, size):
                    coalition = frozenset(members)
                    gain = value(coalition | {city}) - value(coalition)
                    scores[city] += weight * gain
        return scores

    rng = random.Random(seed)
    totals = dict.fromkeys(cities, 0.0)
    for _ in range(permutations):
        order = list(cities)
        rng.shuffle(order)
        coalition: frozenset[str] = frozenset()
        previous = value(coalition)
        for city in order:
            coalition = coalition | {city}
            current = value(coalition)
            totals[city] += current - previous
            previous = current
    return {city: total / permutations for city, total in totals.items()}
