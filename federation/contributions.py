"""Per-city contribution scores: data size, leave-one-out and Shapley values.

The value of a set of cities is the pooled test AUC of the model they train together
(same spec, same splits). The empty set is worth 0.5, the AUC of a constant guess.
Leave-one-out is the AUC lost when a city is left out. The Shapley value averages a
city's marginal gain over all orders in which cities could join: computed exactly
from all 2^n - 1 coalitions up to ``EXACT_SHAPLEY_MAX_CITIES`` cities, and estimated
from random permutations above that (Monte Carlo sampling, as in TMC-Shapley but
without truncation). Both retrain the job once per coalition.

``gtg_shapley`` estimates Shapley values without retraining, with GTG-Shapley
(Liu et al., "GTG-Shapley: Efficient and Accurate Participant Contribution
Evaluation in Federated Learning", ACM TIST 13(4), 2022). In each round, the
model of a coalition is rebuilt as the FedAvg of its members' updates to that
round's global model, so a coalition costs one evaluation instead of a training
run. A round's Shapley values average the marginal gains over permutations of the
round's cities. Guided sampling puts each city first in turn. Truncation skips a
round whose model barely changed, and stops walking a permutation once its
coalition's value is within ``within_round_truncation`` of the whole round's
value. A city's score is the sum of its per-round values.
"""

from __future__ import annotations

import itertools
import logging
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from citymesh.errors import InvalidInput

from .spec import JobSpec

if TYPE_CHECKING:
    from .runner import JobResult

log = logging.getLogger("citymesh.federation")

# "gtg" is GTG-Shapley from the rounds' updates, "loo+gtg" adds leave-one-out.
CONTRIBUTION_METHODS = ("none", "size", "loo", "shapley", "gtg", "loo+gtg")
GTG_METHODS = ("gtg", "loo+gtg")
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
    """Score each city's contribution. ``retrain(subset)`` returns a subset's AUC.

    For the GTG methods the Shapley values come from ``result.gtg_shapley``,
    which the ServerApp computed from the rounds' updates. They are None when
    that record contains an error instead.
    """
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
    if method in ("loo", "shapley", "loo+gtg"):
        full = frozenset(cities)
        for city in cities:
            loo[city] = value(full) - value(full - {city})

    shapley: dict[str, float | None] = dict.fromkeys(cities)
    if method == "shapley":
        shapley.update(shapley_values(cities, value, seed=spec.seed))
    if method in GTG_METHODS:
        shapley.update(_recorded_gtg(result, cities))

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


def _recorded_gtg(result: JobResult, cities: list[str]) -> dict[str, float | None]:
    record = result.gtg_shapley or {}
    values = record.get("shapley")
    if not isinstance(values, dict):
        log.warning(
            "job %s has no GTG-Shapley values: %s",
            result.job_id,
            record.get("error", "the ServerApp recorded none"),
        )
        return dict.fromkeys(cities)
    return {city: float(values.get(city, 0.0)) for city in cities}


# GTG-Shapley from the rounds' updates ------------------------------------------------

ModelArrays = dict[str, np.ndarray]
BatchEvaluate = Callable[[list[ModelArrays]], list[float]]


@dataclass(frozen=True)
class RoundUpdates:
    """One round's global model and the city models that FedAvg averaged into it.

    ``weights`` are FedAvg's weights: training rows, or 1 per city under
    differential privacy.
    """

    round: int
    global_arrays: ModelArrays
    city_arrays: dict[str, ModelArrays]
    weights: dict[str, float]


def coalition_arrays(update: RoundUpdates, coalition: frozenset[str]) -> ModelArrays:
    """Return the FedAvg of the coalition's city models; the global model if empty."""
    if not coalition:
        return update.global_arrays
    total = sum(update.weights[city] for city in coalition)
    members = sorted(coalition)
    return {
        name: sum(
            (update.weights[city] / total) * update.city_arrays[city][name]
            for city in members
        )
        for name in update.global_arrays
    }


@dataclass(frozen=True)
class GtgSettings:
    """Truncation and stopping rules of GTG-Shapley.

    The defaults follow the settings of the GTG-Shapley authors' reference code:
    truncation at 0.001 of the metric and at least max(30, cities) permutations
    per round. Sampling stops once the running means of the last 10 permutations
    differ from the latest by at most 5 % on average. Rounds with at most
    ``exact_permutations_max`` permutations (5 cities or fewer) walk every
    permutation once instead of sampling.
    """

    within_round_truncation: float = 0.001
    between_round_truncation: float = 0.001
    min_permutations: int = 30
    max_permutations: int = 500
    convergence_window: int = 10
    convergence_tolerance: float = 0.05
    exact_permutations_max: int = 120


@dataclass
class GtgResult:
    """GTG-Shapley values per city and how much work they took."""

    shapley: dict[str, float]
    rounds: list[dict[str, object]]
    evaluations: int
    batches: int
    seconds: float

    def to_dict(self) -> dict[str, object]:
        """Return the result as JSON-compatible data."""
        return {
            "method": "gtg",
            "shapley": dict(self.shapley),
            "rounds": list(self.rounds),
            "evaluations": self.evaluations,
            "batches": self.batches,
            "seconds": self.seconds,
        }


@dataclass
class _RoundWalk:
    """The permutations walked so far in one round and their marginal gains."""

    index: int
    cities: list[str]
    before: float
    after: float
    marginals: list[dict[str, float]] = field(default_factory=list)
    done: bool = False

    def shapley(self) -> dict[str, float]:
        if not self.marginals:
            return dict.fromkeys(self.cities, 0.0)
        count = len(self.marginals)
        return {
            city: sum(m[city] for m in self.marginals) / count for city in self.cities
        }


def gtg_shapley(
    rounds: Sequence[RoundUpdates],
    evaluate: BatchEvaluate,
    *,
    seed: int = 0,
    settings: GtgSettings | None = None,
) -> GtgResult:
    """Estimate each city's Shapley value from the rounds' updates, without retraining.

    ``evaluate(models)`` returns the validation metric (pooled AUC) of each model.
    It is called with batches: all rounds advance together, one permutation
    position at a time, so a federation pays one exchange per position instead
    of one per coalition.
    """
    settings = settings or GtgSettings()
    started = time.perf_counter()
    rng = random.Random(seed)
    values: dict[tuple[int, frozenset[str]], float] = {}
    batches = 0

    def fill(keys: list[tuple[int, frozenset[str]]]) -> None:
        nonlocal batches
        pending = list(dict.fromkeys(k for k in keys if k not in values))
        if not pending:
            return
        models = [coalition_arrays(rounds[i], coalition) for i, coalition in pending]
        scores = evaluate(models)
        if len(scores) != len(pending):
            raise InvalidInput(
                f"evaluate returned {len(scores)} scores for {len(pending)} models"
            )
        values.update(zip(pending, (float(s) for s in scores), strict=True))
        batches += 1

    # The value of each round's global model and of the model FedAvg made from it.
    ends = []
    for i, update in enumerate(rounds):
        ends += [(i, frozenset()), (i, frozenset(update.city_arrays))]
    fill(ends)

    walks = []
    for i, update in enumerate(rounds):
        walk = _RoundWalk(
            index=i,
            cities=sorted(update.city_arrays),
            before=values[(i, frozenset())],
            after=values[(i, frozenset(update.city_arrays))],
        )
        gain = walk.after - walk.before
        walk.done = not walk.cities or abs(gain) <= settings.between_round_truncation
        walks.append(walk)

    while any(not walk.done for walk in walks):
        cursors = [
            _Cursor(walk, order, walk.before)
            for walk in walks
            if not walk.done
            for order in _next_permutations(walk, rng, settings)
        ]
        _walk_permutations(cursors, values, fill, settings)
        for walk in walks:
            if not walk.done:
                walk.done = _exact(walk, settings) or _converged(walk, settings)

    all_cities = sorted({city for update in rounds for city in update.city_arrays})
    totals = dict.fromkeys(all_cities, 0.0)
    summary: list[dict[str, object]] = []
    for walk, update in zip(walks, rounds, strict=True):
        per_round = walk.shapley()
        for city, score in per_round.items():
            totals[city] += score
        summary.append(
            {
                "round": update.round,
                "value_before": walk.before,
                "value_after": walk.after,
                "permutations": len(walk.marginals),
                "shapley": per_round,
            }
        )
    return GtgResult(
        shapley=totals,
        rounds=summary,
        evaluations=len(values),
        batches=batches,
        seconds=time.perf_counter() - started,
    )


def _exact(walk: _RoundWalk, settings: GtgSettings) -> bool:
    """Return whether the round walks every permutation instead of sampling."""
    return math.factorial(len(walk.cities)) <= settings.exact_permutations_max


def _next_permutations(
    walk: _RoundWalk, rng: random.Random, settings: GtgSettings
) -> list[list[str]]:
    """Return the round's next permutations: all of them, or one per city first."""
    if _exact(walk, settings):
        return [list(p) for p in itertools.permutations(walk.cities)]
    plans = []
    for first in walk.cities:
        rest = [city for city in walk.cities if city != first]
        rng.shuffle(rest)
        plans.append([first, *rest])
    return plans


@dataclass
class _Cursor:
    """A permutation being walked: its round, its order and the value so far."""

    walk: _RoundWalk
    order: list[str]
    previous: float
    marginal: dict[str, float] = field(default_factory=dict)

    def open(self, settings: GtgSettings) -> bool:
        """Return whether joining cities can still change the value (no truncation)."""
        gap = abs(self.walk.after - self.previous)
        return gap >= settings.within_round_truncation


def _walk_permutations(
    cursors: list[_Cursor],
    values: dict[tuple[int, frozenset[str]], float],
    fill: Callable[[list[tuple[int, frozenset[str]]]], None],
    settings: GtgSettings,
) -> None:
    """Walk every permutation, evaluating one position of all of them at a time."""
    longest = max(len(cursor.order) for cursor in cursors)
    for position in range(longest):
        active = [c for c in cursors if position < len(c.order)]
        needed = [
            (c.walk.index, frozenset(c.order[: position + 1]))
            for c in active
            if c.open(settings)
        ]
        fill(needed)
        for cursor in active:
            current = cursor.previous
            if cursor.open(settings):
                current = values[
                    (cursor.walk.index, frozenset(cursor.order[: position + 1]))
                ]
            cursor.marginal[cursor.order[position]] = current - cursor.previous
            cursor.previous = current
    for cursor in cursors:
        cursor.walk.marginals.append(cursor.marginal)


def _converged(walk: _RoundWalk, settings: GtgSettings) -> bool:
    count = len(walk.marginals)
    minimum = max(settings.min_permutations, len(walk.cities))
    if count >= settings.max_permutations:
        return True
    if count < minimum:
        return False
    matrix = np.array([[m[c] for c in walk.cities] for m in walk.marginals])
    running = np.cumsum(matrix, axis=0) / np.arange(1, count + 1)[:, None]
    window = running[-settings.convergence_window :]
    latest = running[-1]
    errors = np.mean(np.abs(window - latest) / (np.abs(latest) + 1e-12), axis=1)
    return bool(np.max(errors) <= settings.convergence_tolerance)
