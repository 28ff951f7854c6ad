"""``citymesh catalog``: search and inspect city catalogs over signed HTTP."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(no_args_is_help=True)


@app.command()
def search(
    node: Annotated[list[str], typer.Option(help="Base URL of a node; repeatable.")],
    keys: Annotated[
        Path, typer.Option(help="keys/ folder of the identity that signs.")
    ],
    code: Annotated[
        str | None, typer.Option(help="Classification code prefix, e.g. 04.5.")
    ] = None,
    keyword: Annotated[
        str | None, typer.Option(help="Word in title, description or keywords.")
    ] = None,
    city: Annotated[str | None, typer.Option(help="City id.")] = None,
    grade: Annotated[str | None, typer.Option(help="Sensitivity grade.")] = None,
    limit: Annotated[int, typer.Option(help="Results per node.")] = 50,
    output: Annotated[str, typer.Option("--format", help="table or json.")] = "table",
) -> None:
    """Search one or more nodes' catalogs."""
    from citymesh.node.client import NodeClient
    from citymesh.node.identity import NodeIdentity

    signer = NodeIdentity.load(keys)
    items = []
    for url in node:
        with NodeClient(url, signer=signer) as client:
            page = client.search(
                code=code, keyword=keyword, city=city, grade=grade, limit=limit
            )
        items.extend(page["items"])
    if output == "json":
        typer.echo(json.dumps(items, indent=2))
        return
    table = Table()
    for column in ("id", "city", "code", "grade", "rows", "title"):
        table.add_column(column)
    for item in items:
        table.add_row(
            *(
                str(item.get(c, ""))
                for c in ("id", "city", "code", "grade", "rows", "title")
            )
        )
    Console().print(table)
