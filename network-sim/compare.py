"""Run every architecture on the same workload and check the usual claims.

Public reports on pooled city compute with edge nodes often claim that it
raises utilization by about half, cuts running cost by about 30%, keeps every
district within a 50 ms latency circle and real-time inference under 100 ms.
``check_claims`` tests each claim on the hub-plus-edge run against the
isolated-departments run. A claim of "about X" counts as supported when the
measured gain reaches 90% of X.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from .engine import resolve_architecture, simulate
from .metrics import RunResult
from .policies import Architecture, default_architectures
from .specs import Scenario

SUPPORT_FRACTION = 0.9
UTILIZATION_GAIN = 0.5
COST_CUT = 0.3
DISTRICT_CIRCLE_MS = 50.0
INFERENCE_LIMIT_MS = 100.0
INFERENCE_SHARE = 0.99


@dataclass
class ClaimCheck:
    """One claim, the figure measured for it and whether the figure supports it."""

    name: str
    claim: str
    measured: float | None
    required: str
    supported: bool


@dataclass
class Comparison:
    """The runs of every architecture on one scenario and seed, and the claims."""

    scenario: str
    seed: int
    hours: float
    results: list[RunResult]
    claims: list[ClaimCheck]

    def result(self, architecture: str) -> RunResult:
        for result in self.results:
            if result.architecture == architecture:
                return result
        raise KeyError(architecture)

    def to_dict(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario,
            "seed": self.seed,
            "hours": self.hours,
            "results": [result.to_dict() for result in self.results],
            "claims": [asdict(claim) for claim in self.claims],
        }


def compare(
    scenario: Scenario,
    architectures: list[Architecture | str] | None = None,
    *,
    seed: int | None = None,
    hours: float | None = None,
    on_progress: Callable[[str, float, float], None] | None = None,
) -> Comparison:
    """Run each architecture (by default isolated, hub, hub_edge) with one seed.

    ``on_progress(architecture, now_s, horizon_s)`` reports each run's progress.
    """
    chosen = [
        resolve_architecture(scenario, item)
        for item in (architectures or default_architectures(scenario))
    ]
    results = []
    for architecture in chosen:
        callback = None
        if on_progress is not None:
            name = architecture.name

            def callback(now: float, horizon: float, name: str = name) -> None:
                on_progress(name, now, horizon)

        results.append(
            simulate(
                scenario, architecture, seed=seed, hours=hours, on_progress=callback
            )
        )
    return Comparison(
        scenario=scenario.name,
        seed=results[0].seed if results else scenario.seed,
        hours=results[0].hours if results else scenario.hours,
        results=results,
        claims=check_claims(results),
    )


def check_claims(results: list[RunResult]) -> list[ClaimCheck]:
    """Check the four claims; needs the "isolated" and "hub_edge" runs."""
    by_name = {result.architecture: result for result in results}
    isolated = by_name.get("isolated")
    pooled = by_name.get("hub_edge")
    if isolated is None or pooled is None:
        return []

    checks = []
    gain = (
        pooled.utilization / isolated.utilization - 1 if isolated.utilization else None
    )
    checks.append(
        ClaimCheck(
            name="utilization_gain",
            claim="pooling with edge nodes raises mean utilization by about half",
            measured=gain,
            required=f">= {UTILIZATION_GAIN * SUPPORT_FRACTION:+.0%} vs isolated",
            supported=gain is not None and gain >= UTILIZATION_GAIN * SUPPORT_FRACTION,
        )
    )

    cut = (
        1 - pooled.cost_per_day / isolated.cost_per_day
        if isolated.cost_per_day
        else None
    )
    checks.append(
        ClaimCheck(
            name="cost_cut",
            claim="pooling with edge nodes cuts running cost by about 30%",
            measured=cut,
            required=f">= {COST_CUT * SUPPORT_FRACTION:.0%} lower cost per day",
            supported=cut is not None and cut >= COST_CUT * SUPPORT_FRACTION,
        )
    )

    district_p99 = [
        district.network_p99_ms
        for district in pooled.districts
        if district.network_p99_ms is not None
    ]
    worst = max(district_p99) if district_p99 else None
    checks.append(
        ClaimCheck(
            name="district_circle",
            claim="every district is within a 50 ms latency circle",
            measured=worst,
            required=f"worst district's p99 network time <= {DISTRICT_CIRCLE_MS:g} ms",
            supported=worst is not None and worst <= DISTRICT_CIRCLE_MS,
        )
    )

    # Dropped requests count as late, so a policy cannot pass by dropping.
    share = pooled.inference.realtime_within_100ms
    limit = f"{INFERENCE_LIMIT_MS:g} ms"
    checks.append(
        ClaimCheck(
            name="inference_under_100ms",
            claim="real-time inference stays under 100 ms",
            measured=share,
            required=f">= {INFERENCE_SHARE:.0%} of requests with a target of "
            f"{limit} or less completed within {limit}",
            supported=share is not None and share >= INFERENCE_SHARE,
        )
    )
    return checks
