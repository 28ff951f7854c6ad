"""``citymesh audit``: a regulator's checks of the usage ledger."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from citymesh.errors import InvalidInput

app = typer.Typer(no_args_is_help=True)


def _print_verdicts(verdicts: dict, output: str) -> None:
    if output == "json":
        typer.echo(json.dumps(verdicts, indent=2))
        return
    for name, verdict in sorted(verdicts["per_city"].items()):
        status = "pass" if verdict["ok"] else "FAIL"
        typer.echo(
            f"{name}: {status}: {verdict['events']} events, "
            f"{verdict['anchored']} anchored; {verdict['reason']}"
        )


def _check_format(output: str, allowed: tuple[str, ...]) -> None:
    if output not in allowed:
        raise InvalidInput(f"--format must be one of {allowed!r}, got {output!r}")


@app.command()
def verify(
    chain_url: Annotated[str, typer.Option(help="JSON-RPC URL of the chain.")],
    deployment: Annotated[Path, typer.Option(help="Deployment JSON of the contracts.")],
    keys: Annotated[
        Path, typer.Option(help="keys/ folder of the regulator's identity.")
    ],
    city: Annotated[
        list[str] | None, typer.Option(help="Only these cities; repeatable.")
    ] = None,
    bundle_dir: Annotated[
        Path | None,
        typer.Option(help="Keep each node's log segment here as <city>.jsonl."),
    ] = None,
    output: Annotated[str, typer.Option("--format", help="text or json.")] = "text",
) -> None:
    """Fetch every city node's log and check it against the roots anchored on chain.

    Prints a pass or FAIL line per node, naming the first bad event; exits 1 when any
    node fails.
    """
    from citymesh.audit import audit_nodes
    from citymesh.ledger.chain import ChainClient, Deployment
    from citymesh.node.identity import NodeIdentity

    _check_format(output, ("text", "json"))
    chain = ChainClient(chain_url, Deployment.load(deployment))
    result = audit_nodes(chain, NodeIdentity.load(keys), city or None, bundle_dir)
    _print_verdicts(result, output)
    if not result["ok"]:
        raise typer.Exit(1)


@app.command("verify-bundle")
def verify_bundle(
    bundle: Annotated[
        list[Path], typer.Argument(help="Segment files (.jsonl) exported from nodes.")
    ],
    chain_url: Annotated[
        str | None,
        typer.Option(help="Also check the anchors against this chain; else offline."),
    ] = None,
    deployment: Annotated[
        Path | None, typer.Option(help="Deployment JSON; needed with --chain-url.")
    ] = None,
    output: Annotated[str, typer.Option("--format", help="text or json.")] = "text",
) -> None:
    """Verify exported log segments, offline or against the chain's anchors.

    Offline, each file is checked against the anchor copies it contains: hash chain,
    sequence continuity, inclusion proofs and signatures. With --chain-url the anchor
    copies must also match the chain. Exits 1 when any file fails.
    """
    from citymesh.audit import verdict_dict
    from citymesh.ledger.audit import verify_segment
    from citymesh.ledger.segment import read_segment

    _check_format(output, ("text", "json"))
    chain = None
    if chain_url is not None:
        if deployment is None:
            raise InvalidInput("--chain-url needs --deployment, the contracts' JSON")
        from citymesh.ledger.chain import ChainClient, Deployment

        chain = ChainClient(chain_url, Deployment.load(deployment))
    per_file = {}
    for path in bundle:
        if not path.is_file():
            raise InvalidInput(f"segment file {str(path)!r} not found")
        anchors = None
        if chain is not None:
            segment, _ = read_segment(path)
            anchors = chain.anchors(segment.node)
        per_file[str(path)] = verdict_dict(verify_segment(path, anchors))
    result = {"ok": all(v["ok"] for v in per_file.values()), "per_city": per_file}
    _print_verdicts(result, output)
    if not result["ok"]:
        raise typer.Exit(1)


def _timestamp(text: str | None, option: str) -> float | None:
    if text is None:
        return None
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError as error:
        raise InvalidInput(
            f"{option} must be an ISO 8601 date or time such as 2026-12-01 or "
            f"2026-12-01T08:00:00+00:00, got {text!r}"
        ) from error


@app.command()
def report(
    bundle: Annotated[
        list[Path], typer.Argument(help="Verified segment files (.jsonl) of the nodes.")
    ],
    since: Annotated[
        str | None, typer.Option(help="Count events at or after this ISO time.")
    ] = None,
    until: Annotated[
        str | None, typer.Option(help="Count events before this ISO time.")
    ] = None,
    kind: Annotated[
        list[str] | None,
        typer.Option(help="Only these event kinds (ingest, query, ...); repeatable."),
    ] = None,
    output: Annotated[
        str, typer.Option("--format", help="table, csv or json.")
    ] = "table",
) -> None:
    """Report usage per dataset, consumer, city and purpose, with policy violations.

    Each file is verified first; a file that fails verification stops the report,
    because its totals could not be trusted.
    """
    from citymesh.audit import grade_policy
    from citymesh.ledger.audit import verify_segment
    from citymesh.ledger.report import (
        report_csv,
        report_json,
        report_table,
        usage_report,
    )
    from citymesh.ledger.segment import load_segment

    _check_format(output, ("table", "csv", "json"))
    entries = []
    for path in bundle:
        if not path.is_file():
            raise InvalidInput(f"segment file {str(path)!r} not found")
        verdict = verify_segment(path)
        if not verdict.ok:
            raise InvalidInput(
                f"segment {str(path)!r} failed verification at seq "
                f"{verdict.first_bad_seq!r}: {verdict.reason}; run "
                "`citymesh audit verify-bundle` for details"
            )
        entries.extend(load_segment(path).entries)
    result = usage_report(
        entries,
        since=_timestamp(since, "--since"),
        until=_timestamp(until, "--until"),
        kinds=kind or None,
        policy=grade_policy(),
    )
    if output == "csv":
        typer.echo(report_csv(result), nl=False)
        return
    if output == "json":
        typer.echo(report_json(result))
        return
    rows = report_table(result)
    table = Table(title="usage report")
    for column in rows[0]:
        table.add_column(column)
    for row in rows[1:]:
        table.add_row(*row)
    console = Console()
    console.print(table)
    for violation in result.violations:
        console.print(
            f"[red]violation[/red] {violation.city} seq {violation.seq}: "
            f"{violation.reason}"
        )
