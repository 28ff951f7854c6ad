"""``citymesh ledger``: the embedded chain and contract deployment."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from citymesh.errors import InvalidInput

app = typer.Typer(no_args_is_help=True)


def _parse_prefund(items: list[str]) -> dict[str, int]:
    funds = {}
    for item in items:
        address, _, amount = item.partition("=")
        if not address.startswith("0x") or len(address) != 42 or not amount.isdigit():
            raise InvalidInput(
                "--prefund takes ADDRESS=WEI with a 0x-prefixed 20-byte address, "
                f"got {item!r}"
            )
        funds[address] = int(amount)
    return funds


@app.command()
def serve(
    state: Annotated[
        Path, typer.Option(help="SQLite file that keeps the chain state.")
    ],
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[
        int, typer.Option(help="TCP port of the JSON-RPC endpoint.")
    ] = 8545,
    prefund: Annotated[
        list[str] | None,
        typer.Option(help="ADDRESS=WEI to fund in the genesis block; repeatable."),
    ] = None,
    chain_id: Annotated[int, typer.Option(help="EIP-155 chain id.")] = 1337,
    fsync: Annotated[
        bool,
        typer.Option(
            help="fsync the state file after each block; --no-fsync trades crash "
            "safety for speed."
        ),
    ] = True,
) -> None:
    """Run the embedded py-evm chain behind Ethereum JSON-RPC until stopped."""
    from citymesh.ledger.evm_server import serve as serve_chain

    funds = _parse_prefund(prefund or [])
    serve_chain(
        state, host=host, port=port, prefund=funds, chain_id=chain_id, durable=fsync
    )


@app.command()
def deploy(
    rpc_url: Annotated[str, typer.Option(help="JSON-RPC URL of the chain.")],
    admin_key_file: Annotated[
        Path, typer.Option(help="File holding the consortium admin's hex private key.")
    ],
    out: Annotated[Path, typer.Option(help="Where to write the deployment JSON.")],
) -> None:
    """Deploy the registry, anchor, credit and code-list contracts."""
    from citymesh.ledger.chain import deploy as deploy_contracts

    key = admin_key_file.read_text().strip()
    deployment = deploy_contracts(rpc_url, key)
    deployment.save(out)
    typer.echo(f"deployed contracts; addresses written to {out}")
