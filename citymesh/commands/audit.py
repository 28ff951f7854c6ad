"""``citymesh audit``: a regulator's checks of the usage ledger."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(no_args_is_help=True)


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
    output: Annotated[str, typer.Option("--format", help="text or json.")] = "text",
) -> None:
    """Check every city node's log against the Merkle roots anchored on chain.

    Exits 1 when any node fails.
    """
    from citymesh.audit import audit_nodes
    from citymesh.ledger.chain import ChainClient, Deployment
    from citymesh.node.identity import NodeIdentity

    chain = ChainClient(chain_url, Deployment.load(deployment))
    result = audit_nodes(chain, NodeIdentity.load(keys), city or None)
    if output == "json":
        typer.echo(json.dumps(result, indent=2))
    else:
        for name, verdict in sorted(result["per_city"].items()):
            status = "pass" if verdict["ok"] else "FAIL"
            typer.echo(
                f"{name}: {status}: {verdict['events']} events, "
                f"{verdict['anchored']} anchored; {verdict['reason']}"
            )
    if not result["ok"]:
        raise typer.Exit(1)
