"""Daily load patterns and the arrival times of each workload.

Arrival rates are piecewise constant: one rate for each hour of the day, cut
again where a surge starts or ends. Within a piece the arrivals are a Poisson
process, drawn exactly: a Poisson count, then that many uniform times.
"""

from __future__ import annotations

import hashlib

import numpy as np

from .specs import SurgeSpec, WorkloadSpec

HOURS_PER_DAY = 24
SECONDS_PER_HOUR = 3600.0

# Multipliers for each hour of the day (0 = midnight to 1 am). A pattern's mean
# need not be 1: the rate in the scenario is the rate at multiplier 1.
BUILTIN_PATTERNS: dict[str, tuple[float, ...]] = {
    "flat": (1.0,) * 24,
    "office": (
        0.1,
        0.1,
        0.1,
        0.1,
        0.1,
        0.1,
        0.2,
        0.5,
        1.2,
        1.6,
        1.7,
        1.6,
        1.3,
        1.5,
        1.6,
        1.5,
        1.3,
        0.8,
        0.4,
        0.2,
        0.2,
        0.1,
        0.1,
        0.1,
    ),
    "commute": (
        0.2,
        0.1,
        0.1,
        0.1,
        0.2,
        0.5,
        1.2,
        2.0,
        2.2,
        1.4,
        1.0,
        1.0,
        1.1,
        1.0,
        1.0,
        1.2,
        1.6,
        2.1,
        2.0,
        1.3,
        0.8,
        0.6,
        0.4,
        0.3,
    ),
    "evening": (
        0.6,
        0.4,
        0.3,
        0.3,
        0.3,
        0.4,
        0.6,
        0.8,
        0.9,
        0.9,
        1.0,
        1.0,
        1.0,
        1.0,
        1.0,
        1.1,
        1.2,
        1.4,
        1.6,
        1.7,
        1.7,
        1.5,
        1.1,
        0.8,
    ),
    "night": (
        1.6,
        1.7,
        1.7,
        1.6,
        1.4,
        1.1,
        0.8,
        0.6,
        0.5,
        0.5,
        0.5,
        0.5,
        0.5,
        0.5,
        0.5,
        0.6,
        0.7,
        0.8,
        0.9,
        1.0,
        1.2,
        1.3,
        1.4,
        1.5,
    ),
}


def stream_seed(seed: int, stream: str) -> np.random.Generator:
    """Return a generator that depends only on the seed and the stream's name.

    A stream keeps its draws when other streams are added or removed, so every
    architecture run with the same seed gets the same arrivals.
    """
    digest = hashlib.sha256(stream.encode()).digest()
    words = [int.from_bytes(digest[i : i + 4], "little") for i in range(0, 16, 4)]
    return np.random.default_rng(np.random.SeedSequence([seed & 0xFFFFFFFF, *words]))


def rate_pieces(
    workload: WorkloadSpec,
    pattern: tuple[float, ...],
    surges: list[SurgeSpec],
    horizon_s: float,
    start_hour: float,
) -> list[tuple[float, float, float]]:
    """Cut [0, horizon_s) into pieces of constant rate: (start_s, end_s, rate_per_s).

    Time 0 is ``start_hour`` o'clock; a surge's ``start_hour`` counts from time 0.
    """
    cuts = {0.0, horizon_s}
    first_boundary = (np.ceil(start_hour) - start_hour) * SECONDS_PER_HOUR
    boundary = first_boundary
    while boundary < horizon_s:
        cuts.add(boundary)
        boundary += SECONDS_PER_HOUR
    for surge in surges:
        for edge in (surge.start_hour, surge.start_hour + surge.hours):
            edge_s = edge * SECONDS_PER_HOUR
            if 0.0 < edge_s < horizon_s:
                cuts.add(edge_s)
    ordered = sorted(cuts)

    pieces = []
    for start, end in zip(ordered, ordered[1:], strict=False):
        middle = (start + end) / 2
        hour = int((start_hour + middle / SECONDS_PER_HOUR) % HOURS_PER_DAY)
        rate = workload.rate_per_hour * pattern[hour] / SECONDS_PER_HOUR
        for surge in surges:
            surge_start = surge.start_hour * SECONDS_PER_HOUR
            surge_end = surge_start + surge.hours * SECONDS_PER_HOUR
            if surge_start <= middle < surge_end:
                rate *= surge.multiplier
        pieces.append((start, end, rate))
    return pieces


def arrival_times(
    workload: WorkloadSpec,
    pattern: tuple[float, ...],
    surges: list[SurgeSpec],
    horizon_s: float,
    start_hour: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """Draw the sorted arrival times (s) of one workload in [0, horizon_s)."""
    if workload.at_s is not None:
        times = np.array(sorted(workload.at_s), dtype=float)
        return times[times < horizon_s]

    chunks = []
    for start, end, rate in rate_pieces(
        workload, pattern, surges, horizon_s, start_hour
    ):
        if rate <= 0:
            continue
        count = rng.poisson(rate * (end - start))
        if count:
            chunks.append(np.sort(rng.uniform(start, end, count)))
    if not chunks:
        return np.empty(0)
    return np.concatenate(chunks)


def work_factors(count: int, cv: float, rng: np.random.Generator) -> np.ndarray:
    """Draw lognormal multipliers with mean 1 and coefficient of variation ``cv``."""
    if cv <= 0:
        return np.ones(count)
    sigma2 = np.log1p(cv * cv)
    return rng.lognormal(-sigma2 / 2, np.sqrt(sigma2), count)
