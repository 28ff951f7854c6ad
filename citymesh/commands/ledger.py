"""``citymesh ledger``: the embedded chain and contract deployment."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from citymesh.errors import InvalidInput, NotFound

app = typer.Typer(no_args_is_help=True)


def _parse_prefund(items: list[str]) -> dict[str, int]:
    funds = {}
    for item in items:
        address, separator, amount = item.partition("=")
        if not separator:
            raise InvalidInput(f"--prefund takes ADDRESS=WEI, got {item!r} without '='")
        if not _is_address(address):
            raise InvalidInput(
                f"--prefund {item!r}: address {address!r} is invalid; give 0x and "
                "40 hex digits"
            )
        if not (amount.isascii() and amount.isdigit()):
            raise InvalidInput(
                f"--prefund {item!r}: amount {amount!r} is invalid; give a whole "
                "number of wei"
            )
        funds[address] = int(amount)
    return funds


def _is_address(text: str) -> bool:
    digits = text[2:]
    return (
        text.startswith("0x")
        and len(digits) == 40
        and all(c in "0123456789abcdefABCDEF" for c in digits)
    )


@app.command()
def serve(
    state: Annotated[
        Path, typer.Option(help="SQLite file that keeps the chain state.")
    ],
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[
        int, typer.Option(help="TCP port of the JSON-RPC endpoint.", min=1, max=65535)
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

    key = _read_key_file(admin_key_file)
    deployment = deploy_contracts(rpc_url, key)
    deployment.save(out)
    typer.echo(f"deployed contracts; addresses written to {out}")


def _read_key_file(path: Path) -> str:
    if not path.is_file():
        raise NotFound(
            f"admin key file {str(path)!r} not found; pass the file that holds the "
            "consortium admin's hex private key as --admin-key-file"
        )
    try:
        return path.read_text().strip()
    except (OSError, UnicodeDecodeError) as error:
        raise InvalidInput(
            f"admin key file {str(path)!r} cannot be read: {error}"
        ) from error
