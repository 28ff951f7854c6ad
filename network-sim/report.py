"""Rich tables for a run and for a comparison of architectures."""

from __future__ import annotations

from rich.console import Console, Group
from rich.table import Table

from .compare import Comparison
from .metrics import RunResult, WorkloadReport


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:,.1f}"


def _duration(seconds: float | None, kind: str) -> str:
    """Format inference times in ms and batch work in s, min or h."""
    if seconds is None:
        return "-"
    if kind == "inference":
        return f"{seconds * 1000:,.1f}ms"
    if seconds < 120:
        return f"{seconds:,.1f}s"
    if seconds < 7200:
        return f"{seconds / 60:,.1f}min"
    return f"{seconds / 3600:,.2f}h"


def _dropped(workload: WorkloadReport) -> str:
    if not workload.dropped:
        return "0"
    return ", ".join(f"{count} {reason}" for reason, count in workload.dropped.items())


def run_tables(result: RunResult) -> Group:
    """Build the summary, pools, workloads and districts tables of one run."""
    summary = Table(
        title=f"{result.scenario}: {result.label} ({result.architecture}), "
        f"seed {result.seed}, {result.hours:g} h",
        show_header=False,
    )
    summary.add_column("figure")
    summary.add_column("value", justify="right")
    inference = result.inference
    rows = [
        ("mean utilization", _percent(result.utilization)),
        *(
            (f"  {kind} utilization", _percent(value))
            for kind, value in result.utilization_by_kind.items()
        ),
        (
            "inference p50 / p95 / p99 (ms)",
            " / ".join(
                _ms(value)
                for value in (inference.p50_ms, inference.p95_ms, inference.p99_ms)
            ),
        ),
        ("inference within 50 ms", _percent(inference.within_50ms)),
        ("inference within 100 ms", _percent(inference.within_100ms)),
        ("inference within its target", _percent(inference.within_target)),
        ("accuracy cost of compression (points)", f"{result.accuracy_cost_pct:.3f}"),
        ("energy (kWh)", f"{result.energy_kwh:,.1f}"),
        ("cost per day", f"{result.cost_per_day:,.2f}"),
        ("bulk data moved (GB)", f"{result.network_gb:,.1f}"),
        (
            "requests arrived / completed / dropped",
            f"{result.conservation.arrived:,} / {result.conservation.completed:,} / "
            f"{result.conservation.dropped:,}",
        ),
        (
            "in progress at the end (transit / queued / running)",
            f"{result.conservation.in_transit} / {result.conservation.queued} / "
            f"{result.conservation.running}",
        ),
        ("events / wall time", f"{result.events:,} / {result.wall_s:.2f} s"),
    ]
    for name, value in rows:
        summary.add_row(name, value)

    pools = Table(title="Pools")
    for column in ("pool", "units", "utilization", "busy unit-h", "energy kWh", "cost"):
        pools.add_column(column, justify="left" if column == "pool" else "right")
    for pool in result.pools:
        pools.add_row(
            pool.name,
            str(pool.units),
            _percent(pool.utilization),
            f"{pool.busy_unit_hours:,.2f}",
            f"{pool.energy_kwh:,.2f}",
            f"{pool.cost:,.2f}",
        )

    workloads = Table(title="Workloads, all departments (inference times in ms)")
    for column in (
        "workload",
        "arrived",
        "done",
        "dropped",
        "p50",
        "p95",
        "p99",
        "in target",
    ):
        workloads.add_column(
            column, justify="left" if column == "workload" else "right"
        )
    for group in result.workload_groups:
        workloads.add_row(
            group.name,
            f"{group.arrived:,}",
            f"{group.completed:,}",
            _dropped(group),
            _duration(group.p50_s, group.kind),
            _duration(group.p95_s, group.kind),
            _duration(group.p99_s, group.kind),
            _percent(group.within_target),
        )

    districts = Table(title="Inference by district of origin")
    for column in ("district", "requests", "p99 ms", "network p99 ms"):
        districts.add_column(
            column, justify="left" if column == "district" else "right"
        )
    for district in result.districts:
        districts.add_row(
            district.name,
            f"{district.requests:,}",
            _ms(district.p99_ms),
            _ms(district.network_p99_ms),
        )
    return Group(summary, pools, workloads, districts)


def comparison_tables(comparison: Comparison) -> Group:
    """Build the side-by-side table of architectures and the claims table."""
    table = Table(
        title=f"{comparison.scenario}: seed {comparison.seed}, {comparison.hours:g} h"
    )
    columns = (
        "architecture",
        "mean util",
        "p99 ms",
        "<=50 ms",
        "<=100 ms",
        "in target",
        "dropped",
        "kWh/day",
        "cost/day",
    )
    table.add_column(columns[0], no_wrap=True)
    for column in columns[1:]:
        table.add_column(column, justify="right")
    for result in comparison.results:
        per_day = 24 / result.hours
        table.add_row(
            result.architecture,
            _percent(result.utilization),
            _ms(result.inference.p99_ms),
            _percent(result.inference.within_50ms),
            _percent(result.inference.within_100ms),
            _percent(result.inference.within_target),
            f"{result.conservation.dropped:,}",
            f"{result.energy_kwh * per_day:,.1f}",
            f"{result.cost_per_day:,.0f}",
        )

    claims = Table(title="Claims: hub plus edge against isolated departments")
    for column in ("claim", "measured", "required", "supported"):
        claims.add_column(column)
    for claim in comparison.claims:
        if claim.measured is None:
            measured = "-"
        elif claim.name == "district_circle":
            measured = f"{claim.measured:.1f} ms"
        elif claim.name == "utilization_gain":
            measured = f"{claim.measured:+.0%}"
        else:
            measured = f"{claim.measured:.2%}"
        claims.add_row(
            claim.claim, measured, claim.required, "yes" if claim.supported else "no"
        )
    return Group(table, claims) if comparison.claims else Group(table)


def print_run(result: RunResult, console: Console | None = None) -> None:
    (console or Console()).print(run_tables(result))


def print_comparison(comparison: Comparison, console: Console | None = None) -> None:
    (console or Console()).print(comparison_tables(comparison))
