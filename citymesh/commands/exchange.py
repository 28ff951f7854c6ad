"""``citymesh exchange``: approve extracts as a provider, request them as a consumer."""

from __future__ import annotations

import json
import os
import uuid
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from citymesh.commands.remote import check_node_url, reaching_node
from citymesh.errors import InvalidInput, NotFound

app = typer.Typer(no_args_is_help=True)

HEALTH_TIMEOUT_S = 2.0


def _check_format(output: str) -> None:
    if output not in ("table", "json"):
        raise InvalidInput(f"--format must be 'table' or 'json', got {output!r}")


def _settings(home: Path):  # noqa: ANN202
    from citymesh.node.settings import CONFIG_FILE, load_settings

    if not (home / CONFIG_FILE).is_file():
        raise NotFound(
            f"{str(home / CONFIG_FILE)!r} not found: give the node home made by "
            "`citymesh node init` as --home"
        )
    return load_settings(home)


def _running_client(settings):  # noqa: ANN001, ANN202
    """Return an operator NodeClient if the node at its endpoint responds, else None.

    The node must also report this home's account, so a different node on the
    same port is not mistaken for it.
    """
    import httpx

    from citymesh.node.client import NodeClient
    from citymesh.node.identity import NodeIdentity, load_operator_token

    endpoint = settings.endpoint or f"http://{settings.host}:{settings.port}"
    client = NodeClient(
        endpoint,
        operator_token=load_operator_token(settings.keys_dir),
        timeout=HEALTH_TIMEOUT_S,
    )
    try:
        identity = client.identity()
    except httpx.HTTPError:
        client.close()
        return None
    own = NodeIdentity.load(settings.keys_dir).account
    if str(identity.get("account", "")).lower() != own.lower():
        client.close()
        raise InvalidInput(
            f"the node responding at {endpoint!r} has account "
            f"{identity.get('account')!r}, not this home's {own!r}: stop that "
            "process or fix endpoint in node.toml"
        )
    return client


def _local_context(settings):  # noqa: ANN001, ANN202
    from citymesh.node.context import NodeContext
    from citymesh.node.signing import reject_all_resolver

    # Local commands verify no signed requests, so no registry is needed.
    return NodeContext(settings, resolve_signer=reject_all_resolver)


def _expiry(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        raise InvalidInput(
            f"--expires must be an ISO 8601 time such as 2027-01-01T00:00:00+00:00, "
            f"got {text!r}"
        ) from None


@app.command()
def approve(
    home: Annotated[Path, typer.Option(help="The provider's node home.")],
    dataset: Annotated[str, typer.Option(help="Dataset id, e.g. ewr:flights.")],
    consumer: Annotated[
        str, typer.Option(help="Consumer node's ledger account (0x + 40 hex digits).")
    ],
    purpose: Annotated[str, typer.Option(help="The purpose the approval allows.")],
    expires: Annotated[
        str | None, typer.Option(help="ISO 8601 expiry time; default: none.")
    ] = None,
    output: Annotated[str, typer.Option("--format", help="table or json.")] = "table",
) -> None:
    """Approve extracts of an important dataset for one consumer and purpose.

    Goes through the node's HTTP API with the operator token when the node at
    the endpoint in node.toml is running. Otherwise it writes the approval to
    the node database directly. Both ways log an approval usage event.
    """
    _check_format(output)
    expires_at = _expiry(expires)
    settings = _settings(home)
    client = _running_client(settings)
    if client is not None:
        with client:
            approval = client.approve(dataset, consumer, purpose, expires_at)
        via = f"node API at {client.base_url}"
    else:
        context = _local_context(settings)
        try:
            approval = context.approve(dataset, consumer, purpose, expires_at)
            approval = approval.model_dump()
        finally:
            context.close()
        via = "node database (node not running)"
    if output == "json":
        typer.echo(json.dumps({**approval, "via": via}, indent=2))
        return
    typer.echo(
        f"approved {approval['id']}: {approval['consumer']} may extract "
        f"{approval['dataset_id']} for {approval['purpose']!r}; written through {via}"
    )


@app.command()
def revoke(
    home: Annotated[Path, typer.Option(help="The provider's node home.")],
    approval: Annotated[
        str, typer.Option(help="Id of the approval to revoke (see `approvals`).")
    ],
) -> None:
    """Revoke an approval, so its consumer's next extract is rejected.

    Goes through the node's HTTP API when the node is running, else the node
    database directly. Both ways log a revocation usage event.
    """
    settings = _settings(home)
    client = _running_client(settings)
    if client is not None:
        with client:
            revoked = client.revoke_approval(approval)
        via = f"node API at {client.base_url}"
    else:
        context = _local_context(settings)
        try:
            revoked = context.revoke_approval(approval).model_dump()
        finally:
            context.close()
        via = "node database (node not running)"
    typer.echo(
        f"revoked {revoked['id']}: {revoked['consumer']} may no longer extract "
        f"{revoked['dataset_id']} for {revoked['purpose']!r}; written through {via}"
    )


@app.command()
def policy(
    home: Annotated[Path, typer.Option(help="The provider's node home.")],
    dataset: Annotated[str, typer.Option(help="Dataset id, e.g. ewr:flights.")],
    file: Annotated[
        Path | None,
        typer.Option(
            help="JSON policy to set: purposes, cities, deid, quasi_identifiers, "
            "k. Without it, print the current policy."
        ),
    ] = None,
) -> None:
    """Show or set a dataset's policy for extracts.

    Showing reads the node database. Setting checks the policy against the
    dataset's columns, logs a policy usage event and prepares the
    whole-dataset extract again. It goes through the node's HTTP API when the
    node is running, else the node database.
    """
    new_policy = None
    if file is not None:
        try:
            new_policy = json.loads(file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise NotFound(f"policy file {str(file)!r} does not exist") from None
        except (ValueError, UnicodeError) as error:
            raise InvalidInput(
                f"policy file {str(file)!r} is not JSON: {error}"
            ) from None
    settings = _settings(home)
    if new_policy is None:
        from citymesh.catalog.store import CatalogStore

        store = CatalogStore(settings.database)
        try:
            current = store.get(dataset).policy or {}
        finally:
            store.close()
        typer.echo(json.dumps(current, indent=2))
        return
    client = _running_client(settings)
    if client is not None:
        with client:
            entry = client.set_policy(dataset, new_policy)
        via = f"node API at {client.base_url}"
    else:
        context = _local_context(settings)
        try:
            entry = context.set_policy(dataset, new_policy).public()
        finally:
            context.close()
        via = "node database (node not running)"
    typer.echo(json.dumps(entry.get("policy") or {}, indent=2))
    typer.echo(f"policy of {dataset} set through {via}", err=True)


@app.command()
def approvals(
    home: Annotated[Path, typer.Option(help="The provider's node home.")],
    output: Annotated[str, typer.Option("--format", help="table or json.")] = "table",
) -> None:
    """List the node's approvals, newest first.

    Reads through the node's HTTP API when the node is running, else the node
    database directly.
    """
    _check_format(output)
    settings = _settings(home)
    client = _running_client(settings)
    if client is not None:
        with client:
            items = client.approvals()
    else:
        from citymesh.catalog.store import CatalogStore
        from citymesh.node.approvals import ApprovalStore

        store = CatalogStore(settings.database)
        try:
            records = ApprovalStore(store.engine, store.write_engine).all()
            items = [record.model_dump() for record in records]
        finally:
            store.close()
    if output == "json":
        typer.echo(json.dumps(items, indent=2))
        return
    table = Table(title="approvals")
    columns = ("id", "dataset_id", "consumer", "purpose", "expires_at", "revoked")
    for column in columns:
        table.add_column(column)
    for item in items:
        table.add_row(*(str(item.get(column)) for column in columns))
    Console().print(table)


def parse_filter(text: str) -> list[Any]:
    """Parse 'COLUMN OP VALUE' into a [column, operator, value] condition.

    OP is one of ==, !=, <, <=, >, >=, in, not in. VALUE is read as JSON when
    it parses (numbers, true, lists for in) and as a plain string otherwise.
    """
    from citymesh.catalog.policy import FILTER_OPERATORS

    # Longest operators first, so '<=' is not read as '<' followed by '=1'.
    for operator in sorted(FILTER_OPERATORS, key=len, reverse=True):
        padded = f" {operator} " if operator.isalpha() or " " in operator else operator
        column, found, value = text.partition(padded)
        if found and column.strip() and value.strip():
            value = value.strip()
            try:
                parsed = json.loads(value)
            except json.JSONDecodeError:
                parsed = value
            return [column.strip(), operator, parsed]
    raise InvalidInput(
        f"invalid --filter {text!r}: write COLUMN OP VALUE, e.g. 'month == 1' or "
        f'\'carrier in ["UA", "AA"]\', with OP one of {", ".join(FILTER_OPERATORS)}'
    )


def write_arrow_atomic(table: Any, destination: Path) -> int:
    """Write ``table`` as an Arrow IPC file through a temporary file and a rename.

    Returns the file size in bytes. A reader of ``destination`` sees the old
    file or the complete new one, never a partial write.
    """
    import pyarrow as pa

    destination = destination.resolve()
    temporary = destination.with_name(f".{destination.name}.{uuid.uuid4().hex}.tmp")
    try:
        with pa.OSFile(str(temporary), "wb") as sink:
            with pa.ipc.new_file(sink, table.schema) as writer:
                writer.write_table(table)
        with open(temporary, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(temporary, destination)
    finally:
        temporary.unlink(missing_ok=True)
    return destination.stat().st_size


@app.command()
def request(
    node: Annotated[str, typer.Option(help="Provider node's base URL.")],
    keys: Annotated[Path, typer.Option(help="keys/ folder of the consumer node.")],
    dataset: Annotated[str, typer.Option(help="Dataset id, e.g. ewr:flights.")],
    purpose: Annotated[str, typer.Option(help="Purpose of the extract.")],
    out: Annotated[Path, typer.Option(help="Arrow IPC file to write (.arrow).")],
    column: Annotated[
        list[str] | None, typer.Option(help="Column to extract; repeatable.")
    ] = None,
    filter_: Annotated[
        list[str] | None,
        typer.Option(
            "--filter",
            help="Row condition 'COLUMN OP VALUE'; repeatable, all must hold.",
        ),
    ] = None,
    timeout: Annotated[
        float, typer.Option(help="HTTP timeout per request, in seconds.")
    ] = 120.0,
) -> None:
    """Request a signed extract from a provider node and write it as Arrow IPC.

    The extract comes de-identified per the provider's policy. The receipt is
    checked against the rows, bytes and SHA-256 received, then countersigned.
    """
    from citymesh.node.client import NodeClient
    from citymesh.node.identity import NodeIdentity

    conditions = [parse_filter(text) for text in filter_ or []]
    check_node_url(node)
    if timeout <= 0:
        raise InvalidInput(f"--timeout {timeout!r} is not above 0: give seconds")
    if out.is_dir():
        raise InvalidInput(f"--out {str(out)!r} is a folder: give a file name")
    if not out.parent.is_dir():
        raise NotFound(f"folder {str(out.parent)!r} of --out does not exist")
    signer = NodeIdentity.load(keys)
    with (
        reaching_node(node),
        NodeClient(node, signer=signer, timeout=timeout) as client,
    ):
        result = client.extract(
            dataset, purpose=purpose, columns=column or None, row_filter=conditions
        )
    size = write_arrow_atomic(result.table, out)
    typer.echo(
        f"wrote {result.table.num_rows} rows, {result.table.num_columns} columns "
        f"({size} bytes) to {out}; exchange {result.exchange_id}, receipt signed"
    )
