"""``citymesh audit``: a regulator's checks of the usage ledger."""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
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


OFFLINE_WARNING = (
    "offline: the files were checked only for internal consistency (hash chain, "
    "sequence, proofs against the anchor copies in the file, signatures); anyone "
    "can recompute the hashes and roots of a forged file, so this does not show "
    "that the entries are a registered node's log"
)
CHAIN_OR_OFFLINE = (
    "pass --chain-url and --deployment to verify against the chain's registry and "
    "anchors, or --offline to accept an internal consistency check only"
)


def _reader_chain(
    chain_url: str | None, deployment: Path | None, offline: bool
) -> object | None:
    """Return a ChainClient for --chain-url, or None when --offline is given."""
    if chain_url is not None and offline:
        raise InvalidInput("pass either --chain-url or --offline, not both")
    if chain_url is None:
        if deployment is not None and not offline:
            raise InvalidInput("--deployment needs --chain-url, the chain's RPC URL")
        return None
    if deployment is None:
        raise InvalidInput("--chain-url needs --deployment, the contracts' JSON")
    from citymesh.ledger.chain import ChainClient, Deployment

    return ChainClient(chain_url, Deployment.load(deployment))


def _check_paths(bundle: list[Path]) -> None:
    for path in bundle:
        if not path.is_file():
            raise InvalidInput(f"segment file {str(path)!r} not found")


def _verify_files(
    bundle: list[Path], chain: object | None, from_seq: int, allow_unanchored: bool
) -> dict[str, dict]:
    """Verify each file against the chain, or offline when ``chain`` is None."""
    from citymesh.audit import verdict_dict, verify_bundle_on_chain
    from citymesh.ledger.audit import verify_segment

    per_file = {}
    for path in bundle:
        if chain is None:
            per_file[str(path)] = verdict_dict(verify_segment(path))
        else:
            per_file[str(path)] = verify_bundle_on_chain(
                path, chain, from_seq=from_seq, allow_unanchored=allow_unanchored
            )
    return per_file


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


BundleChainOption = Annotated[
    str | None,
    typer.Option(help="JSON-RPC URL of the chain to verify the files against."),
]
BundleDeploymentOption = Annotated[
    Path | None, typer.Option(help="Deployment JSON; needed with --chain-url.")
]
FromSeqOption = Annotated[
    int,
    typer.Option(
        min=1,
        help="First seq the segments must contain (with --chain-url); default 1, "
        "the start of the log.",
    ),
]
AllowUnanchoredOption = Annotated[
    bool,
    typer.Option(
        help="Accept entries after the node's last anchored seq, which the chain "
        "cannot prove yet (with --chain-url)."
    ),
]
OfflineOption = Annotated[
    bool,
    typer.Option(
        help="Without --chain-url: accept a check of internal consistency only, "
        "which a forged file can pass."
    ),
]


@app.command("verify-bundle")
def verify_bundle(
    bundle: Annotated[
        list[Path], typer.Argument(help="Segment files (.jsonl) exported from nodes.")
    ],
    chain_url: BundleChainOption = None,
    deployment: BundleDeploymentOption = None,
    from_seq: FromSeqOption = 1,
    allow_unanchored: AllowUnanchoredOption = False,
    offline: OfflineOption = False,
    output: Annotated[str, typer.Option("--format", help="text or json.")] = "text",
) -> None:
    """Verify exported log segments against the chain, or offline.

    With --chain-url, each file's node must be a registered city node, the file must
    start at seq 1 (or --from-seq) and contain every entry up to the node's last
    anchored seq, each proven under the chain's anchors. Entries after that seq fail
    unless --allow-unanchored. Offline, a file is checked only against itself, so
    the command exits 1 unless --offline is given. Exits 1 when any file fails.
    """
    _check_format(output, ("text", "json"))
    _check_paths(bundle)
    chain = _reader_chain(chain_url, deployment, offline)
    per_file = _verify_files(bundle, chain, from_seq, allow_unanchored)
    result = {
        "ok": all(v["ok"] for v in per_file.values()),
        "checked_against": "offline" if chain is None else "chain",
        "per_city": per_file,
    }
    if chain is None:
        result["warning"] = OFFLINE_WARNING
        if output == "text":
            typer.echo(f"warning: {OFFLINE_WARNING}")
    _print_verdicts(result, output)
    if not result["ok"]:
        raise typer.Exit(1)
    if chain is None and not offline:
        typer.echo(
            f"error: not verified against the chain; {CHAIN_OR_OFFLINE}", err=True
        )
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


def _check_kinds(kinds: list[str] | None) -> None:
    from citymesh.ledger.events import KINDS

    for kind in kinds or ():
        if kind not in KINDS:
            raise InvalidInput(
                f"unknown event kind {kind!r} for --kind; known kinds: "
                f"{', '.join(sorted(KINDS))}"
            )


def _load_verified_entries(
    bundle: list[Path], chain: object | None, from_seq: int, allow_unanchored: bool
) -> list:
    """Verify each file, then return all their entries; reject any failed file."""
    from citymesh.ledger.segment import load_segment

    per_file = _verify_files(bundle, chain, from_seq, allow_unanchored)
    entries = []
    nodes: dict[str, str] = {}
    for path in bundle:
        verdict = per_file[str(path)]
        if not verdict["ok"]:
            raise InvalidInput(
                f"segment {str(path)!r} failed verification at seq "
                f"{verdict['first_bad_seq']!r}: {verdict['reason']}; run "
                "`citymesh audit verify-bundle` for details"
            )
        segment = load_segment(path)
        # Two files of one node would count its events twice.
        if segment.node in nodes:
            raise InvalidInput(
                f"segments {nodes[segment.node]!r} and {str(path)!r} are both of "
                f"node {segment.node!r}; pass one segment per node"
            )
        nodes[segment.node] = str(path)
        entries.extend(segment.entries)
    return entries


def _iso_utc(unix_seconds: float) -> str:
    moment = datetime.fromtimestamp(unix_seconds, tz=UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _print_table(result: object, warning: str | None) -> None:
    """Print the report rows with ISO 8601 UTC times and ids in full.

    On a terminal, the rows form a rich table whose cells fold instead of being cut.
    Otherwise they are tab-separated lines, one per row, for other programs.
    """
    from citymesh.ledger.report import REPORT_FIELDS

    header = list(REPORT_FIELDS)
    rows = []
    for row in result.rows:
        values = {name: str(getattr(row, name)) for name in header}
        values["first_time"] = _iso_utc(row.first_time)
        values["last_time"] = _iso_utc(row.last_time)
        rows.append([values[name] for name in header])
    violations = [
        f"violation {v.city} seq {v.seq}: {v.reason}" for v in result.violations
    ]
    if not sys.stdout.isatty():
        if warning:
            typer.echo(f"warning: {warning}")
        for line in [header, *rows]:
            typer.echo("\t".join(line))
        for line in violations:
            typer.echo(line)
        return
    console = Console()
    if warning:
        console.print(f"[yellow]warning:[/yellow] {escape(warning)}", soft_wrap=True)
    table = Table(title="usage report")
    for column in header:
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(*(escape(cell) for cell in row))
    console.print(table)
    for line in violations:
        console.print(f"[red]{escape(line)}[/red]", soft_wrap=True)


@app.command()
def report(
    bundle: Annotated[
        list[Path], typer.Argument(help="Segment files (.jsonl) of the nodes.")
    ],
    chain_url: BundleChainOption = None,
    deployment: BundleDeploymentOption = None,
    from_seq: FromSeqOption = 1,
    allow_unanchored: AllowUnanchoredOption = False,
    offline: OfflineOption = False,
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

    Each file is first verified as by `audit verify-bundle`, against the chain with
    --chain-url, and a file that fails stops the report because its totals could
    not be trusted. Without --chain-url the report is refused unless --offline is
    given, and then it starts with a warning (on stderr for csv and json, which
    also carries it in a "warning" key).
    """
    from citymesh.audit import grade_policy
    from citymesh.ledger.report import report_csv, report_json, usage_report

    _check_format(output, ("table", "csv", "json"))
    _check_kinds(kind)
    since_time = _timestamp(since, "--since")
    until_time = _timestamp(until, "--until")
    _check_paths(bundle)
    chain = _reader_chain(chain_url, deployment, offline)
    if chain is None and not offline:
        raise InvalidInput(f"the report counts only verified files; {CHAIN_OR_OFFLINE}")
    warning = OFFLINE_WARNING if chain is None else None
    entries = _load_verified_entries(bundle, chain, from_seq, allow_unanchored)
    result = usage_report(
        entries,
        since=since_time,
        until=until_time,
        kinds=kind or None,
        policy=grade_policy(),
    )
    if output == "table":
        _print_table(result, warning)
        return
    if warning:
        typer.echo(f"warning: {warning}", err=True)
    if output == "csv":
        typer.echo(report_csv(result), nl=False)
        return
    data = json.loads(report_json(result))
    if warning:
        data["warning"] = warning
    typer.echo(json.dumps(data, indent=2, sort_keys=True))
