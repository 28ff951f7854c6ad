"""``citymesh node``: create and run a city node."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(no_args_is_help=True)


@app.command()
def init(
    home: Annotated[Path, typer.Option(help="Folder of the new node home.")],
    city: Annotated[str, typer.Option(help="City id, e.g. EWR; letters, digits, '-'.")],
    chain_url: Annotated[
        str | None, typer.Option(help="JSON-RPC URL of the chain.")
    ] = None,
    deployment: Annotated[
        Path | None, typer.Option(help="Deployment JSON written by `ledger deploy`.")
    ] = None,
    port: Annotated[
        int, typer.Option(help="TCP port the node serves on.", min=1, max=65535)
    ] = 8700,
    endpoint: Annotated[
        str | None,
        typer.Option(help="Base URL peers use; default http://127.0.0.1:PORT."),
    ] = None,
    db_url: Annotated[
        str | None, typer.Option(help="SQLAlchemy URL of the catalog; default SQLite.")
    ] = None,
) -> None:
    """Create a node home: config, keys, operator token and data folder."""
    from citymesh.node.home import init_home
    from citymesh.node.identity import NodeIdentity

    settings = init_home(
        home, city, chain_url, deployment, port=port, endpoint=endpoint, db_url=db_url
    )
    identity = NodeIdentity.load(settings.keys_dir)
    typer.echo(f"node home created at {settings.home}")
    typer.echo(f"ledger account: {identity.account}")
    typer.echo(f"Ed25519 public key: {identity.public_key.hex()}")
    typer.echo("register the account and key in the on-chain registry before serving")


@app.command()
def serve(
    home: Annotated[Path, typer.Option(help="The node home made by `node init`.")],
    host: Annotated[
        str | None,
        typer.Option(
            help="Address to listen on; default: host in node.toml, which "
            "`node init` sets to 127.0.0.1.",
            show_default=False,
        ),
    ] = None,
    port: Annotated[
        int | None,
        typer.Option(
            help="TCP port; default: port in node.toml.",
            min=1,
            max=65535,
            show_default=False,
        ),
    ] = None,
    chain_url: Annotated[
        str | None, typer.Option(help="Override the chain URL in node.toml.")
    ] = None,
) -> None:
    """Run the node's HTTP service until stopped."""
    import os

    from citymesh.node.service import serve as serve_node

    if chain_url:
        os.environ["CITYMESH_CHAIN_URL"] = chain_url
    serve_node(home, host=host, port=port)
