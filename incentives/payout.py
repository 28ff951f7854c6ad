"""Split a job's credit budget between cities by their contribution.

A city's score blends its share of the training rows with its share of the positive
leave-one-out gains (how much the pooled model lost when that city was left out).
Amounts are whole token units that add up to the budget exactly. Each city gets the
floor of its exact share, and the units left over go to the largest remainders. Ties
are broken by city id, so every party recomputes the same split.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass

from citymesh.errors import InvalidInput

__all__ = ["Payout", "blend_scores", "payout_memo", "split_budget"]


@dataclass(frozen=True)
class Payout:
    """One city's share of a settled budget."""

    city: str
    score: float
    amount: int


def _normalize(values: Mapping[str, float]) -> dict[str, float]:
    total = sum(values.values())
    if total <= 0:
        return {city: 0.0 for city in values}
    return {city: value / total for city, value in values.items()}


def blend_scores(
    rows: Mapping[str, int],
    loo_gain: Mapping[str, float] | None = None,
    size_weight: float = 0.5,
) -> dict[str, float]:
    """Return each city's contribution score; the scores sum to 1.

    ``rows`` is the number of training rows per city and ``loo_gain`` the drop in
    pooled AUC when the city is left out. Negative gains count as zero. When no city
    has a positive gain, the score is the row share alone.
    """
    if not rows:
        raise InvalidInput("a payout needs at least one city, got none")
    if not 0.0 <= size_weight <= 1.0:
        raise InvalidInput(f"size_weight must be within [0, 1], got {size_weight!r}")
    for city, count in rows.items():
        if count < 0:
            raise InvalidInput(f"row count of {city!r} must be >= 0, got {count!r}")
    size_share = _normalize({city: float(count) for city, count in rows.items()})
    if sum(size_share.values()) == 0:
        raise InvalidInput("a payout needs at least one city with training rows")

    gains = {city: max(0.0, float((loo_gain or {}).get(city, 0.0))) for city in rows}
    for city, gain in gains.items():
        if math.isnan(gain):
            raise InvalidInput(f"leave-one-out gain of {city!r} is NaN")
    loo_share = _normalize(gains)
    if sum(loo_share.values()) == 0:
        return size_share
    return {
        city: size_weight * size_share[city] + (1 - size_weight) * loo_share[city]
        for city in rows
    }


def split_budget(scores: Mapping[str, float], budget: int) -> list[Payout]:
    """Split ``budget`` token units by ``scores``; the amounts sum to ``budget``."""
    if budget < 0:
        raise InvalidInput(f"budget must be >= 0 token units, got {budget!r}")
    shares = _normalize({city: max(0.0, score) for city, score in scores.items()})
    if sum(shares.values()) == 0:
        raise InvalidInput(f"scores must have a positive total, got {dict(scores)!r}")

    exact = {city: share * budget for city, share in shares.items()}
    amounts = {city: math.floor(value) for city, value in exact.items()}
    left = budget - sum(amounts.values())
    by_remainder = sorted(
        exact, key=lambda city: (-(exact[city] - amounts[city]), city)
    )
    for city in by_remainder[:left]:
        amounts[city] += 1
    return [Payout(city, shares[city], amounts[city]) for city in sorted(scores)]


def payout_memo(job_id: str, model_hash: str, payouts: list[Payout]) -> bytes:
    """Return the SHA-256 digest that a settlement records for its split.

    The digest covers the job id, the model hash and every city's score and amount
    in canonical JSON (sorted keys, no spaces), so anyone holding them can recompute it.
    """
    body = {
        "job_id": job_id,
        "model_hash": model_hash,
        "payouts": [
            {"city": p.city, "score": round(p.score, 9), "amount": p.amount}
            for p in payouts
        ],
    }
    text = json.dumps(body, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).digest()
